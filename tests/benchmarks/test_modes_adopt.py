"""`python -m benchmarks.modes --adopt RUN_DIR`: a finished `gancore train --recipe` run stored as its row's run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

import gancore  # noqa: E402
from benchmarks import modes  # noqa: E402
from benchmarks.modes import run as modes_run  # noqa: E402
from gancore.checkpoint import list_checkpoints  # noqa: E402
from gancore.manager import Catalog  # noqa: E402
from gancore.provenance import build_info, build_key  # noqa: E402
from gancore.recipes import RecipeBook  # noqa: E402
from gancore.trainer import Trainer  # noqa: E402

PRESETS = """
seeds = [0]
exclude = []
combinations = []

[train]
device = "cpu"
lr_decay = "linear"

[ring8]
"""

RECIPE = """
[recipe]
description = "instance noise, tiny nets"
source = "found by a test"
datasets = ["ring8"]
[train]
steps = 40
batch_size = 64
z_dim = 4
g_width = 16
d_width = 16
n_train = 2000
eval_every = 20
eval_samples = 500
checkpoint_every = 10
[plugins.instance-noise]
std = 0.3
"""

ADAGAN_RECIPE = RECIPE.replace('description = "instance noise, tiny nets"', 'description = "adagan, tiny nets"').replace(
    "[plugins.instance-noise]\nstd = 0.3", "[plugins.adagan]\nrounds = 3\nclassifier_steps = 5")


@pytest.fixture
def setting(tmp_path, monkeypatch):
    from plugin_packages import fake_recipe_distribution

    site = tmp_path / "site"
    site.mkdir()
    fake_recipe_distribution(site, "adopt-recipes", "1.0", "adopt_recipes_for_the_benchmark", {"tiny-adopt.toml": RECIPE, "tiny-adagan.toml": ADAGAN_RECIPE})
    monkeypatch.syspath_prepend(str(site))
    presets = tmp_path / "presets.toml"
    presets.write_text(PRESETS)
    return presets, tmp_path / "out"


def train(run_dir: Path, steps: int | None = None, resume: bool = False, **settings) -> None:
    gancore.fit(recipe="tiny-adopt", dataset="ring8", seed=1, run_dir=run_dir, resume=resume, progress=False,
                **({"steps": steps} if steps else {}), **settings)


def adopt(presets: Path, out: Path, *run_dirs: Path) -> int:
    return modes.main(["--presets", str(presets), "--out", str(out), "--adopt", *map(str, run_dirs)])


def test_a_run_made_in_parts_is_adopted_as_the_rows_own_run(setting, tmp_path, capsys, monkeypatch):
    presets, out = setting
    run_dir = tmp_path / "long"
    step = Trainer.train_step

    def stopped_at_20(trainer):  # as a Ctrl-C at step 20
        step(trainer)
        if trainer.step == 20:
            trainer.stop_requested = "SIGINT"

    monkeypatch.setattr(Trainer, "train_step", stopped_at_20)
    with pytest.raises(gancore.GancoreError, match="SIGINT at step 20: checkpoint written"):
        train(run_dir, eval_every=5, checkpoint_every=15)  # evaluated and checkpointed at other steps, run in two parts: the same training
    monkeypatch.setattr(Trainer, "train_step", step)
    train(run_dir, resume=True, eval_every=5, checkpoint_every=15)
    assert adopt(presets, out, run_dir) == 0
    printed = capsys.readouterr().out
    assert "as ring8 @tiny-adopt seed 1: " in printed and f"build {build_key(build_info())} (run.json's segments)" in printed
    record = json.loads((out / "runs" / "ring8" / "@tiny-adopt" / "seed1.json").read_text())
    assert record["build"] == build_info() and record["adopted_from"] == str(run_dir.resolve())
    assert [segment["steps"] for segment in record["segments"]] == [[0, 20], [20, 40]]
    assert all(segment["of"] == 40 and segment["world_size"] == 1 and segment["device"] == "cpu" for segment in record["segments"])
    meta = json.loads((run_dir / "run.json").read_text())
    assert (record["wall_seconds"], record["cpu_seconds"]) == (meta["wall_seconds"], meta["cpu_seconds"])

    # the benchmark's own run of the row ends on the same numbers and samples
    (task,) = modes.make_plan(Catalog.installed(), modes.load_presets(presets), tmp_path / "own", None, [], [1],
                              [RecipeBook.installed().get("tiny-adopt")]).tasks
    own = modes_run.execute(task, Catalog.installed())
    assert own["status"] == "ok" and own["request"] == record["request"]
    assert own["metrics"] == record["metrics"]
    assert np.array_equal(np.load(task.samples), np.load(out / "runs" / "ring8" / "@tiny-adopt" / "seed1.samples.npy"))

    # stored: the benchmark does not run it again, and the report names the row by its recipe
    assert modes.main(["--presets", str(presets), "--out", str(out), "--recipes", "tiny-adopt", "--seeds", "1", "--dry-run"]) == 0
    assert "1 already stored" in capsys.readouterr().out
    assert "\n| tiny-adopt | found by a test | " in (out / "RESULTS.md").read_text()


def edit_run_json(run_dir: Path, change) -> None:
    meta = json.loads((run_dir / "run.json").read_text())
    change(meta)
    (run_dir / "run.json").write_text(json.dumps(meta))


def test_a_run_without_segments_is_adopted_only_when_this_build_replays_its_last_interval(setting, tmp_path, capsys):
    presets, out = setting
    run_dir = tmp_path / "old"
    train(run_dir)
    edit_run_json(run_dir, lambda meta: meta.pop("segments"))  # as run.json was before it recorded them
    assert adopt(presets, out, run_dir) == 0
    assert "run.json names no build (an extension with --steps cannot be seen either); this build replays steps 30-40 bit for bit" in capsys.readouterr().out
    assert json.loads((out / "runs" / "ring8" / "@tiny-adopt" / "seed1.json").read_text())["build"] == build_info()

    last = list_checkpoints(run_dir / "checkpoints")[-1]  # an optimizer state this build does not reach from step 30
    state = torch.load(last, weights_only=True)
    state["optimizers"]["G"]["state"][0]["exp_avg"] += 1e-6
    torch.save(state, last)
    assert adopt(presets, out, run_dir) == 2
    assert capsys.readouterr().err == (f"benchmarks.modes: error: --adopt {run_dir}: run.json names no build (an extension with --steps cannot be seen "
                                       "either), and this build does not replay its last checkpoint interval bit for bit: nothing shows which build "
                                       "(or how many processes) trained it; run the row here instead\n")


def test_a_run_without_segments_of_a_remedy_that_runs_its_own_training_loop_replays_through_it(setting, tmp_path, capsys):
    presets, out = setting
    run_dir = tmp_path / "boosted"
    # 3 rounds of 40 steps start at steps 0, 13 and 26; the last interval, 25-40, crosses into the third
    gancore.fit(recipe="tiny-adagan", dataset="ring8", seed=1, run_dir=run_dir, progress=False, checkpoint_every=25)
    edit_run_json(run_dir, lambda meta: meta.pop("segments"))
    assert adopt(presets, out, run_dir) == 0  # adagan's gancore_fit starts the rounds: a replay must go through it
    assert "this build replays steps 25-40 bit for bit" in capsys.readouterr().out


def test_the_wall_time_of_a_run_whose_first_session_was_killed_is_scaled_to_all_its_steps(setting, tmp_path, capsys):
    presets, out = setting
    run_dir = tmp_path / "killed"
    train(run_dir)

    def second_half_only(meta):  # as after a SIGKILL at step 20 and a resume: the first session wrote no segment
        (whole,) = meta["segments"]
        meta["segments"] = [{**whole, "steps": [20, 40], "wall_seconds": 10.0, "cpu_seconds": 8.0}]
        meta["wall_seconds"], meta["cpu_seconds"] = 10.0, 8.0

    edit_run_json(run_dir, second_half_only)
    assert adopt(presets, out, run_dir) == 0
    assert "wall time scaled from the 20 of 40 steps its segments timed" in capsys.readouterr().out
    record = json.loads((out / "runs" / "ring8" / "@tiny-adopt" / "seed1.json").read_text())
    assert (record["wall_seconds"], record["cpu_seconds"]) == (20.0, 16.0)


def test_a_run_with_a_session_that_recorded_no_cpu_time_is_adopted_without_one(setting, tmp_path):
    presets, out = setting
    run_dir = tmp_path / "older"
    train(run_dir)
    edit_run_json(run_dir, lambda meta: [segment.pop("cpu_seconds") for segment in meta["segments"]])
    assert adopt(presets, out, run_dir) == 0
    record = json.loads((out / "runs" / "ring8" / "@tiny-adopt" / "seed1.json").read_text())
    assert "cpu_seconds" not in record and record["wall_seconds"] > 0


def test_segments_of_two_builds_make_an_unknown_build_and_of_two_processes_a_refusal(setting, tmp_path, capsys):
    presets, out = setting
    run_dir = tmp_path / "mixed"
    train(run_dir, steps=40)

    def split(meta, **second):
        (whole,) = meta["segments"][:1]
        meta["segments"] = [{**whole, "steps": [0, 20]}, {**whole, "steps": [20, 40], **second}]

    edit_run_json(run_dir, lambda meta: split(meta, build={**build_info(), "cpu_capability": "not this CPU's"}))
    assert adopt(presets, out, run_dir) == 0
    assert "its segments ran on torch" in capsys.readouterr().out
    record = json.loads((out / "runs" / "ring8" / "@tiny-adopt" / "seed1.json").read_text())
    assert modes.records.record_build(record) == "unknown build" and len(record["segments"]) == 2

    edit_run_json(run_dir, lambda meta: split(meta, world_size=2))
    assert adopt(presets, out, run_dir) == 2
    assert capsys.readouterr().err.endswith("steps 20-40 ran on 2 processes; the benchmark's rows run in one\n")
    (run_dir / "run.json").write_text("{not json")
    assert adopt(presets, out, run_dir) == 2
    assert capsys.readouterr().err == f"benchmarks.modes: error: --adopt {run_dir}: no readable run.json\n"


def test_runs_that_are_not_the_rows_runs_are_refused_in_one_line_each(setting, tmp_path, capsys):
    presets, out = setting
    other = tmp_path / "other"
    train(other, lr_d=1e-3)  # not the recipe's setting
    unfinished = tmp_path / "unfinished"
    train(unfinished)
    list_checkpoints(unfinished / "checkpoints")[-1].unlink()  # as a run stopped at step 30
    extended = tmp_path / "extended"
    train(extended, steps=20)
    train(extended, steps=40, resume=True)
    no_recipe = tmp_path / "no-recipe"
    gancore.fit(dataset="ring8", steps=10, batch_size=64, run_dir=no_recipe, progress=False)
    assert adopt(presets, out, other, unfinished, extended, no_recipe, tmp_path / "missing") == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"benchmarks.modes: error: --adopt {other}: it ran train.lr_d = 0.001, its row @tiny-adopt on ring8 runs 0.0001",
        f"benchmarks.modes: error: --adopt {unfinished}: it stopped at step 30 of 40; finish it with `gancore train --resume {unfinished}`",
        f"benchmarks.modes: error: --adopt {extended}: it was run for 20 steps, then extended to 40 with --steps; what is scheduled over "
        "train.steps (lr_decay, instance-noise's annealing, adagan's rounds) ran on 20 in that part, so it is not the row's run",
        f"benchmarks.modes: error: --adopt {no_recipe}: it was not run from a recipe; only `gancore train --recipe NAME` runs are rows of the benchmark",
        f"benchmarks.modes: error: --adopt {tmp_path / 'missing'}: not a gancore run directory (no config.toml)",
    ]
    assert not (out / "runs" / "ring8" / "@tiny-adopt").exists()
    assert modes.main(["--presets", str(presets), "--out", str(out), "--adopt", str(other), "--seeds", "1"]) == 2
    assert "--adopt takes run directories alone" in capsys.readouterr().err


def test_a_run_checkpointed_at_other_steps_is_its_rows_run_only_where_nothing_rolls_back(setting, tmp_path, capsys):
    presets, out = setting
    run_dir = tmp_path / "rollback"
    train(run_dir, checkpoint_every=15, on_nonfinite="rollback")  # the row's run would roll back to step 10 or 20, this one to 15
    assert adopt(presets, out, run_dir) == 2
    assert capsys.readouterr().err == (f"benchmarks.modes: error: --adopt {run_dir}: it ran train.checkpoint_every = 15, "
                                       "its row @tiny-adopt on ring8 runs 10\n")


def test_a_run_this_build_scores_differently_is_refused(setting, tmp_path, capsys):
    presets, out = setting
    run_dir = tmp_path / "elsewhere"
    train(run_dir)
    last = list_checkpoints(run_dir / "checkpoints")[-1]  # as another build's evaluation of the same samples
    state = torch.load(last, weights_only=True)
    state["history"][-1]["hq_percent"] += 0.5
    torch.save(state, last)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["hq_percent"] += 0.5
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert adopt(presets, out, run_dir) == 2
    assert capsys.readouterr().err == (f"benchmarks.modes: error: --adopt {run_dir}: this build scores its final samples differently "
                                       "(hq_percent): it was evaluated on another build; run the row here instead\n")
    assert not (out / "runs" / "ring8" / "@tiny-adopt").exists()


def test_a_run_with_a_missing_or_contradicting_record_is_refused_in_one_line(setting, tmp_path, capsys):
    presets, out = setting
    run_dir = tmp_path / "damaged"
    train(run_dir)

    def refusal() -> str:
        assert adopt(presets, out, run_dir) == 2
        return capsys.readouterr().err.removeprefix(f"benchmarks.modes: error: --adopt {run_dir}: ").rstrip("\n")

    summary = (run_dir / "summary.json").read_text()
    (run_dir / "summary.json").write_text(summary.replace('"seed": 1', '"seed": 2'))
    assert refusal() == "its last checkpoint does not hold the final evaluation summary.json reports"
    (run_dir / "summary.json").unlink()
    assert refusal() == f"no readable summary.json; finish the run with `gancore train --resume {run_dir}`"
    (run_dir / "summary.json").write_text(summary)
    segments = json.loads((run_dir / "run.json").read_text())["segments"]
    edit_run_json(run_dir, lambda meta: meta["segments"][0].pop("wall_seconds"))  # its time would be left out of the run's
    assert refusal() == "its run.json's segments are malformed"
    edit_run_json(run_dir, lambda meta: meta.update(segments=segments))
    edit_run_json(run_dir, lambda meta: meta["segments"][0].pop("build"))
    assert refusal() == "its run.json's segments are malformed"
    edit_run_json(run_dir, lambda meta: meta.pop("wall_seconds"))
    assert refusal() == "its run.json records no wall time (was the run finished?)"
    assert not (out / "runs" / "ring8" / "@tiny-adopt").exists()


def test_a_run_with_another_plugin_or_dataset_is_refused_in_one_line(setting, tmp_path, capsys):
    presets, out = setting
    more = tmp_path / "more"
    train(more, plugins=["instance-noise", "ema"])  # the recipe's plugin and one more
    elsewhere = tmp_path / "elsewhere"
    gancore.fit(recipe="tiny-adopt", dataset="grid25", seed=1, run_dir=elsewhere, progress=False)  # no [grid25] table in the presets
    assert adopt(presets, out, more, elsewhere) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"benchmarks.modes: error: --adopt {more}: it enables plugins ['instance-noise', 'ema'], its row @tiny-adopt on ring8 ['instance-noise']",
        f"benchmarks.modes: error: --adopt {elsewhere}: its config.toml names dataset 'grid25' and seed 1; adopted runs are of a dataset "
        f"with a table in {presets}",
    ]
