"""`python -m benchmarks.modes` end to end on a tiny preset: outputs are well formed (not the numbers)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import modes  # noqa: E402
from benchmarks.modes import estimate as modes_estimate, pictures as modes_pictures, presets as modes_presets, report as modes_report  # noqa: E402
from benchmarks.modes import verdicts as modes_verdicts  # noqa: E402
from gancore.manager import Catalog  # noqa: E402

TINY = """
seeds = [0]
exclude = []
combinations = []

[train]
device = "cpu"
steps = 30
batch_size = 64
z_dim = 4
g_width = 16
d_width = 16
n_train = 2000
eval_every = 0
eval_samples = 500

[ring8]
goal_hq_percent = 97.0

[plugins.instance-noise]
std = 0.2
"""


TINY_STACKED = """
seeds = [0]
datasets = ["ring8"]            # stacked-digits runs only when named
exclude = []
combinations = []

[train]
device = "cpu"
steps = 4
batch_size = 16
z_dim = 8
g_width = 8
d_width = 8
n_train = 200
eval_every = 0
eval_samples = 300

[ring8]

[stacked-digits]
seeds = [0, 1]
goal_modes = 1000
goal_kl = 0.05

[stacked-digits.train]
image_size = 8
"""


def ring8_row(remedy: str, modes_hq: list[tuple[int, float]]) -> "modes.Row":
    """A report row of ring8 runs with these (modes, HQ %) per seed."""
    records = [{"seed": seed, "metrics": {"modes_captured": m, "hq_percent": hq, "n_modes": 8}} for seed, (m, hq) in enumerate(modes_hq)]
    return modes.Row(remedy, modes.plugin_names(modes.parse_remedy(remedy)), records)


def published_ring8_rows() -> int:
    return sum(1 for row in modes.load_published() if "ring8" in row)


def test_tiny_benchmark_writes_tables_results_and_picture_and_resumes(tmp_path, capsys):
    presets = tmp_path / "presets.toml"
    presets.write_text(TINY)
    out = tmp_path / "out"
    argv = ["--presets", str(presets), "--out", str(out), "--plugins", "vanilla,instance-noise"]

    assert modes.main([*argv, "--workers", "2"]) == 0  # spawned worker processes
    progress = capsys.readouterr().err  # one bar over the steps of all runs, the workers' steps counted
    assert "runs 2/2" in progress and "60/60" in progress  # 2 runs of 30 steps

    report = (out / "RESULTS.md").read_text()
    assert "do not edit by hand" in report and "python -m benchmarks.modes --presets" in report
    assert "## ring8" in report and "| remedy | modes (of 8) | HQ % | reverse KL | wall s / run | seeds |" in report
    assert "\n| vanilla | " in report and "\n| instance-noise | " in report
    assert report.count("| *published:* ") == published_ring8_rows() > 0
    assert "## Notes" in report and "Goal (all 8 modes with at least 97% HQ)" in report
    assert "instance-noise.std=0.2" in report  # the preset's plugin option reached the run

    results = json.loads((out / "results.json").read_text())
    assert [(r["dataset"], r["remedy"], r["seed"]) for r in results] == [("ring8", "vanilla", 0), ("ring8", "instance-noise", 0)]
    for record in results:
        assert {"plugins", "settings", "metrics", "wall_seconds"} <= set(record)
        assert record["settings"]["train"]["steps"] == 30 and record["wall_seconds"] > 0 and record["cpu_seconds"] > 0
        assert record["metrics"]["n_modes"] == 8 and 0 <= record["metrics"]["hq_percent"] <= 100
    assert results[1]["plugins"] == ["instance-noise"] and results[1]["settings"]["plugins"]["instance-noise"]["std"] == 0.2

    picture = out / "samples_ring8.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "runs" / "ring8" / "vanilla").iterdir()) == ["seed0.json", "seed0.samples.npy"]

    # resumable: stored runs are not redone, and the report comes back the same
    capsys.readouterr()
    assert modes.main([*argv, "--workers", "1"]) == 0
    assert "2 already stored" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text()) == results

    # --report-only rewrites the report from the stored runs and runs nothing, even what is not stored
    (out / "RESULTS.md").unlink()
    assert modes.main([*argv, "--report-only", "--plugins", "vanilla,instance-noise,pacgan"]) == 0
    printed = capsys.readouterr().out
    assert "2 already stored in " in printed and "1 not stored (report only: not run, listed in the report's notes)" in printed
    report = (out / "RESULTS.md").read_text()
    assert "\n| vanilla | " in report and not (out / "runs" / "ring8" / "pacgan").exists()
    assert "- not run yet: ring8 pacgan, seed 0 (no row)" in report

    # reproducible: the same runs in this process give the numbers the workers gave
    again = tmp_path / "again"
    assert modes.main(["--presets", str(presets), "--out", str(again), "--plugins", "vanilla,instance-noise", "--workers", "1", "--no-timing"]) == 0
    progress = capsys.readouterr().err
    assert "runs 2/2" in progress and "60/60" in progress  # in this process, the same bar
    assert [r["metrics"] for r in json.loads((again / "results.json").read_text())] == [r["metrics"] for r in results]


def test_tiny_stacked_digits_benchmark_reports_modes_and_kl_without_hq(tmp_path, capsys, monkeypatch):
    from gancore import images

    monkeypatch.setenv("GANCORE_CACHE", str(tmp_path / "cache"))  # a private digit classifier (trained once, ~5 s)
    images.digit_classifier.cache_clear()
    presets = tmp_path / "presets.toml"
    presets.write_text(TINY_STACKED)
    out = tmp_path / "out"
    argv = ["--presets", str(presets), "--out", str(out), "--plugins", "vanilla,pacgan", "--workers", "1", "--no-timing"]
    try:
        assert modes.main([*argv, "--dry-run"]) == 0  # not in the presets' `datasets`: not run by default
        printed = capsys.readouterr().out
        assert "2 runs (ring8 2 remedies; seeds 0)" in printed
        assert "not run by default: stacked-digits (not in the presets' `datasets`; run it with --datasets stacked-digits)" in printed

        assert modes.main([*argv, "--datasets", "stacked-digits"]) == 0
        assert "4 runs (stacked-digits 2 remedies; seeds 0,1)" in capsys.readouterr().out
    finally:
        images.digit_classifier.cache_clear()  # later tests load the usual cache
    assert (tmp_path / "cache" / f"digit-classifier-v{images.CLASSIFIER_VERSION}.pt").is_file()

    report = (out / "RESULTS.md").read_text()
    section = report[report.index("## stacked-digits"):report.index("## Notes")]
    assert "| remedy | modes (of 1000) | HQ % | reverse KL | wall s / run | seeds |" in section
    assert "`gancore.images.digit_mode_coverage`" in section and "300 samples" in section
    for remedy in ("vanilla", "pacgan"):
        cells = next(line for line in section.splitlines() if line.startswith(f"| {remedy} |")).split(" | ")
        assert " ± " in cells[1] and cells[2] == "—" and " ± " in cells[3] and cells[5] == "2 |"  # mean ± std over 2 seeds
    published = [row for row in modes.load_published() if "stacked-digits" in row]
    assert section.count("| *published (Stacked MNIST):* ") == len(published) >= 6
    assert "| *published (Stacked MNIST):* PacDCGAN2 (PacGAN Table 2) | 1000 | — | 0.06 | — | — |" in section
    assert "not MNIST" in section and "8×8 digits upsampled to 16×16" in section
    assert "![samples of every remedy on stacked-digits](samples_stacked-digits.png)" in section

    notes = report[report.index("### stacked-digits"):report.index("### Runs and time")]
    assert "- vanilla: " in notes and "/1000 modes, reverse KL " in notes and "HQ" not in notes
    assert any(label in notes for label in ("Beat vanilla on modes and KL", "Beat vanilla on modes only", "Beat vanilla on KL only", "No better than vanilla on either"))
    assert "Goal (all 1000 modes with reverse KL ≤ 0.05) **not met**" in notes  # 4 steps: far from it
    assert "Ours vs the papers (modes / reverse KL): vanilla " in notes and "vs DCGAN 99 / 3.4 (VEEGAN Table 2)" in notes

    results = json.loads((out / "results.json").read_text())
    assert [(r["dataset"], r["remedy"], r["seed"]) for r in results] == [
        ("stacked-digits", "vanilla", 0), ("stacked-digits", "vanilla", 1), ("stacked-digits", "pacgan", 0), ("stacked-digits", "pacgan", 1)]
    for record in results:
        metrics = record["metrics"]
        assert metrics["n_modes"] == 1000 and metrics["n_samples"] == 300 and "hq_percent" not in metrics
        assert 1 <= metrics["modes_captured"] <= 300 and metrics["reverse_kl"] >= 0
        assert record["settings"]["train"]["image_size"] == 8 and record["settings"]["train"]["model"] in ("auto", "dcgan")

    import numpy as np

    samples = np.load(out / "runs" / "stacked-digits" / "vanilla" / "seed0.samples.npy")
    assert samples.shape == (modes_presets.PICTURE_IMAGES, 3, 8, 8) and samples.min() >= -1 and samples.max() <= 1  # a grid, not 300 flat samples
    assert (out / "samples_stacked-digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_remedies_that_cannot_run_are_skipped_with_a_note(tmp_path, capsys):
    presets = tmp_path / "presets.toml"
    presets.write_text(TINY + "\n[ring8.plugins.instance-noise]\nno_such_option = 1\n")
    argv = ["--presets", str(presets), "--out", str(tmp_path / "out"), "--dry-run", "--no-timing"]
    assert modes.main([*argv, "--plugins", "vanilla,instance-noise,not-a-plugin,instance-noise+not-a-plugin"]) == 0
    printed = capsys.readouterr().out
    assert "1 to run" in printed  # vanilla only
    assert "skipped: ring8 not-a-plugin: plugin not-a-plugin is not installed" in printed
    assert "skipped: ring8 instance-noise: not run: unknown option instance-noise.no_such_option" in printed
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_bad_presets_and_flags_are_one_line_errors(tmp_path, capsys):
    presets = tmp_path / "presets.toml"
    presets.write_text("[ring8.train]\nseed = 3\n")
    assert modes.main(["--presets", str(presets), "--dry-run"]) == 2
    assert "train.seed is set by the benchmark" in capsys.readouterr().err
    presets.write_text(TINY)
    assert modes.main(["--presets", str(presets), "--datasets", "grid25", "--dry-run"]) == 2
    assert "'grid25' has no table" in capsys.readouterr().err
    presets.write_text('datasets = ["grid25"]\n' + TINY)
    assert modes.main(["--presets", str(presets), "--dry-run"]) == 2
    assert "datasets names 'grid25', which has no [grid25] table" in capsys.readouterr().err
    presets.write_text(TINY_STACKED.replace("goal_modes = 1000", "goal_modes = 0"))
    assert modes.main(["--presets", str(presets), "--dry-run"]) == 2
    assert "stacked-digits.goal_modes must be an integer >= 1" in capsys.readouterr().err


def test_variants_and_per_remedy_budgets_reach_the_runs_and_the_table(tmp_path, capsys):
    presets = tmp_path / "presets.toml"
    presets.write_text(TINY.replace("combinations = []", 'combinations = [["instance-noise[std=0.5]"]]')
                       + '\n[remedy_train."instance-noise[std=0.5]"]\nsteps = 25\nbatch_size = 32\n'
                       + '\n[ring8.remedy_train."instance-noise[std=0.5]"]\nsteps = 20\n')
    out = tmp_path / "out"
    argv = ["--presets", str(presets), "--out", str(out), "--workers", "1", "--no-timing"]
    assert modes.main([*argv, "--plugins", "vanilla,instance-noise[ std=0.5 ],instance-noise[std=0.1,anneal_steps=10]"]) == 0
    results = {r["remedy"]: r for r in json.loads((out / "results.json").read_text())}
    assert list(results) == ["vanilla", "instance-noise[std=0.1,anneal_steps=10]", "instance-noise[std=0.5]"]
    assert results["instance-noise[std=0.5]"]["plugins"] == ["instance-noise"]
    assert results["instance-noise[std=0.5]"]["settings"]["plugins"]["instance-noise"]["std"] == 0.5  # beats the preset's 0.2
    assert results["instance-noise[std=0.5]"]["settings"]["train"]["steps"] == 20  # its own budget on ring8 ...
    assert results["instance-noise[std=0.5]"]["settings"]["train"]["batch_size"] == 32  # ... over its shared settings
    assert results["instance-noise[std=0.1,anneal_steps=10]"]["settings"]["plugins"]["instance-noise"]["anneal_steps"] == 10
    assert results["vanilla"]["settings"]["train"]["steps"] == 30
    report = (out / "RESULTS.md").read_text()
    assert "| remedy | modes (of 8) | HQ % | reverse KL | steps | wall s / run | seeds |" in report
    assert "\n| instance-noise[std=0.5] | " in report and " | 20 | " in report and "train.steps=20" in report

    # the presets' combinations run the variant by default, and --quick's steps beat its budget
    plan = modes.make_plan(Catalog.installed(), modes.load_presets(presets), out, None, None, None)
    assert ("instance-noise[std=0.5]",) in plan.remedies["ring8"]
    presets.write_text(presets.read_text() + "\n[quick.train]\nsteps = 5\n")
    quick = modes.load_presets(presets, quick=True)
    assert quick.datasets["ring8"].remedy_train["instance-noise[std=0.5]"]["steps"] == 5
    for bad in ("instance-noise[]", "instance-noise[std]", "a++b", "x[y=1", "instance-noise+train"):
        assert modes.main([*argv, "--dry-run", "--plugins", bad]) == 2
        assert "is not a remedy name" in capsys.readouterr().err


def test_a_remedy_name_can_hold_a_list_value_such_as_adams_betas(tmp_path, capsys):
    presets = tmp_path / "presets.toml"
    presets.write_text(TINY)
    out = tmp_path / "out"
    argv = ["--presets", str(presets), "--out", str(out), "--workers", "1", "--no-timing"]
    # the commas inside the list belong to the value, those between names and options do not
    assert modes.main([*argv, "--plugins", "vanilla,train[betas_d=[0.0,0.99],g_width=24]"]) == 0
    results = {r["remedy"]: r for r in json.loads((out / "results.json").read_text())}
    assert list(results) == ["vanilla", "train[betas_d=[0.0,0.99],g_width=24]"]
    train = results["train[betas_d=[0.0,0.99],g_width=24]"]["settings"]["train"]
    assert train["betas_d"] == [0.0, 0.99] and train["g_width"] == 24
    for bad in ("train[betas_d=[0.0,0.99]", "train[betas_d=0.0,0.99]]", "train[betas_d=]0.0,0.99[]"):
        assert modes.main([*argv, "--dry-run", "--plugins", bad]) == 2
        assert "is not a remedy name" in capsys.readouterr().err


def test_a_train_part_sets_core_options_of_its_remedy_alone(tmp_path):
    presets = tmp_path / "presets.toml"
    presets.write_text(TINY.replace("combinations = []", 'combinations = [["train[g_width=24,g_depth=3]"], ["instance-noise", "train[g_width=24]"]]')
                       + '\n[ring8.remedy_train."instance-noise+train[g_width=24]"]\nsteps = 20\ng_width = 12\n')
    plan = modes.make_plan(Catalog.installed(), modes.load_presets(presets), tmp_path / "out", None, ["vanilla", "train[g_width=24,g_depth=3]", "instance-noise+train[g_width=24]"], None)
    tasks = {task.remedy: task for task in plan.tasks}
    assert tasks["vanilla"].values["train"]["g_width"] == 16 and "g_depth" not in tasks["vanilla"].values["train"]
    bigger = tasks["train[g_width=24,g_depth=3]"]
    assert bigger.plugins == () and (bigger.values["train"]["g_width"], bigger.values["train"]["g_depth"]) == (24, 3)
    combined = tasks["instance-noise+train[g_width=24]"]
    assert combined.plugins == ("instance-noise",)
    # the part's own value beats the remedy's budget table, which still sets the rest
    assert (combined.values["train"]["g_width"], combined.values["train"]["steps"]) == (24, 20)
    # a core option that does not exist is named when the plan is made
    plan = modes.make_plan(Catalog.installed(), modes.load_presets(presets), tmp_path / "out", None, ["train[g_widht=24]"], None)
    assert plan.tasks == [] and "unknown option train.g_widht" in plan.skipped[0]


def test_metrics_a_plugin_adds_to_the_evaluation_are_reported_per_remedy():
    def record(seed: int, **extra) -> dict:
        core = {"modes_captured": 8, "hq_percent": 90.0, "n_modes": 8, "loss_D/adversarial": 0.7}
        return {"seed": seed, "metrics": {**core, **extra}}

    rows = [
        modes.Row("vanilla", [], [record(0), record(1)]),
        modes.Row("veegan", ["veegan"], [record(0, reconstruction_error=250.0, **{"loss_G/reconstruction": 1.0}),
                                         record(1, reconstruction_error=254.0)]),
        modes.Row("adagan", ["adagan"], [record(0, adagan_weight_ess=0.5, adagan_mixture_weights=[0.5, 0.5], adagan_done=True)]),
    ]
    # core metrics (reported by every row), losses, lists and flags are left out
    assert modes_report._plugin_metric_lines(rows) == [
        "- veegan: reconstruction_error 252.000 ± 2.828",
        "- adagan: adagan_weight_ess 0.500",
    ]


def test_a_remedy_with_its_own_core_options_is_compared_with_the_vanilla_of_those_options():
    big = "train[g_width=400]"
    rows = [ring8_row("vanilla", [(6, 95.0), (6, 95.0)]), ring8_row("pacgan", [(8, 90.0), (8, 92.0)]),
            ring8_row(big, [(4, 99.0), (4, 97.0)]), ring8_row(f"pacgan+{big}", [(8, 98.0), (8, 99.0)])]
    published = [{"method": "PacGAN2", "source": "PacGAN Table 1", "remedy": ["pacgan", f"pacgan+{big}"], "ring8": [7.9, 95.6]}]
    notes = "\n".join(modes_report._dataset_notes("ring8", rows, 97.0, published))
    # its own vanilla, not the 2x128 one
    assert f"Beat vanilla on modes and HQ: pacgan+{big} (+4.0 modes, +0.5 HQ points against {big})" in notes
    assert "pacgan (+2.0 modes, -4.0 HQ points)" in notes and f"{big} (-2.0 modes, +3.0 HQ points)" in notes
    # a published row names every counterpart of ours
    assert "pacgan 8.0 / 91.0% vs PacGAN2 7.9 / 95.6%" in notes and f"pacgan+{big} 8.0 / 98.5% vs PacGAN2" in notes


def test_the_notes_name_the_remedies_that_beat_each_published_row_on_both_columns():
    rows = [ring8_row("vanilla", [(6, 95.0), (7, 95.0)]), ring8_row("pacgan", [(8, 60.0), (8, 50.0)]),
            ring8_row("adagan", [(8, 40.0), (8, 70.0)]), ring8_row("veegan", [(8, 20.0), (7, 99.0)])]
    published = [{"method": "VEEGAN", "source": "VEEGAN Table 1", "ring8": [8, 52.9]},
                 {"method": "Unrolled", "source": "VEEGAN Table 1", "ring8": [6.5, 35.6]},
                 {"method": "GAN", "source": "VEEGAN Table 1", "ring8": [1, 99.3]}]
    notes = "\n".join(modes_report._dataset_notes("ring8", rows, 97.0, published))
    # all 8 modes tie the paper's 8 (no row can have more); HQ means 55.0 and 55.0 beat 52.9, veegan's 59.5 comes with 7.5 modes
    assert "  - VEEGAN 8 / 52.9% (VEEGAN Table 1): pacgan, adagan.\n" in notes
    # below full coverage a tie is not a win: vanilla's 6.5 modes do not beat the paper's 6.5
    assert "  - Unrolled 6.5 / 35.6% (VEEGAN Table 1): pacgan, adagan, veegan.\n" in notes
    assert "  - GAN 1 / 99.3% (VEEGAN Table 1): none." in notes
    # the goal is missed; the best by modes (8.0 at 55.0%) is followed by the best HQ within one mode of it (not vanilla's 6.5)
    assert "Best remedy: pacgan, 8.0/8 modes and 55.0% HQ" in notes
    assert "  - Best HQ within one mode of it: veegan, 7.5/8 modes and 59.5% HQ." in notes


def test_more_combinations_extend_a_datasets_list_after_the_shared_ones(tmp_path):
    presets = tmp_path / "presets.toml"
    presets.write_text(TINY.replace("combinations = []", 'combinations = [["instance-noise[std=0.5]"]]')
                       .replace("[ring8]\n", '[ring8]\nmore_combinations = [["instance-noise", "train[g_width=24]"]]\n'))
    loaded = modes.load_presets(presets)
    assert loaded.datasets["ring8"].combinations == [("instance-noise[std=0.5]",), ("instance-noise", "train[g_width=24]")]
    presets.write_text(presets.read_text().replace('more_combinations = [["instance-noise"', 'more_combinations = [["instance-noise[]"'))
    with pytest.raises(modes.BenchmarkError, match="more_combinations"):
        modes.load_presets(presets)


def test_a_long_remedy_name_is_wrapped_after_plus_or_comma_in_its_picture_title():
    remedy = "pacgan+train[g_width=400,g_depth=4,batch_size=1024,d_width=200,d_depth=3,d_maxout=5]"
    lines = modes_pictures._wrapped(remedy).split("\n")
    assert "".join(lines) == remedy
    assert len(lines) == 3 and all(len(line) <= modes_pictures.PANEL_LINE_CHARS for line in lines)
    assert all(line.endswith(("+", ",")) for line in lines[:-1])
    assert modes_pictures._wrapped("pacgan+unrolled") == "pacgan+unrolled"


def test_the_estimate_counts_workers_beyond_the_cpus_as_sharing_them(tmp_path, capsys, monkeypatch):
    def task(seed):
        return modes.Task("grid25", "pacgan", ("pacgan",), seed, {modes_presets.CORE: {"steps": 100}},
                          tmp_path / f"seed{seed}.json", estimate=1800.0)

    monkeypatch.setattr(modes_estimate, "usable_cpus", lambda: 2)
    modes_estimate.print_estimate([task(seed) for seed in range(4)], workers=4, notes=[])
    # four 30-minute runs on 2 CPUs take an hour whether 2 or 4 workers run them
    assert "estimated time: 1 h 00 min on 4 workers" in capsys.readouterr().out


def test_a_goal_met_on_fewer_seeds_than_the_other_rows_says_on_how_many():
    rows = [ring8_row("vanilla", [(6, 95.0), (7, 95.0), (8, 98.0)]), ring8_row("pacgan", [(8, 98.0), (8, 97.5), (8, 99.0)]),
            ring8_row("adagan", [(8, 98.0), (8, 99.0)])]
    notes = "\n".join(modes_report._dataset_notes("ring8", rows, 97.0, []))
    assert "- Goal (all 8 modes with at least 97% HQ) **met** by: pacgan, adagan (on 2 of 3 seeds only)." in notes


def test_the_report_notes_name_the_planned_seeds_not_stored(tmp_path):
    tasks = [modes.Task("grid25", remedy, (remedy,), seed, {}, tmp_path / f"{remedy}{seed}.json") for remedy in ("ema", "pacgan") for seed in range(3)]
    unstored = [task for task in tasks if task.remedy == "ema" or task.seed == 2]
    assert modes.unstored_notes(tasks, unstored) == ["not run yet: grid25 ema, seeds 0,1,2 (no row)",
                                           "not run yet: grid25 pacgan, seed 2 (its row has the other seeds)"]


def test_a_core_option_newer_than_vanillas_runs_is_not_reported_as_a_change_at_its_default():
    def record(core, plugins):
        return {"seed": 0, "request": {"train": core}, "settings": {"train": core, "plugins": plugins},
                "metrics": {"modes_captured": 8, "hq_percent": 95.0, "n_modes": 8}}

    rows = [modes.Row("vanilla", (), [record({"steps": 10}, {})]),  # stored before d_maxout existed
            modes.Row("ema", ("ema",), [record({"steps": 10, "d_maxout": 1}, {"ema": {"decay": 0.999}})]),
            modes.Row("train[d_maxout=5]", (), [record({"steps": 10, "d_maxout": 5}, {})])]
    assert modes_report._settings_lines(rows)[1] == ["- ema: ema.decay=0.999", "- train[d_maxout=5]: train.d_maxout=5"]


def test_a_run_stored_by_another_or_an_unknown_build_runs_again_unless_reuse_is_asked(tmp_path, capsys):
    presets = tmp_path / "presets.toml"
    presets.write_text(TINY)
    out = tmp_path / "out"
    argv = ["--presets", str(presets), "--out", str(out), "--plugins", "vanilla", "--workers", "1", "--no-timing"]
    assert modes.main(argv) == 0
    torch.set_num_threads(2)  # the caller's threads are not the runs': the same build still counts as this one
    capsys.readouterr()
    assert modes.main([*argv, "--dry-run"]) == 0
    assert "1 already stored in " in capsys.readouterr().out
    path = out / "runs" / "ring8" / "vanilla" / "seed0.json"
    record = json.loads(path.read_text())
    for build in ({**record["build"], "cpu_capability": "not this CPU's"}, None):  # another build, then none recorded
        if build is None:
            del record["build"]
        else:
            record["build"] = build
        path.write_text(json.dumps(record))
        capsys.readouterr()
        assert modes.main([*argv, "--dry-run"]) == 0
        printed = capsys.readouterr().out
        assert "0 already stored in " in printed and "1 to run on 1 workers" in printed
        assert "1 of the runs to run are stored from another or an unknown build; they run again on this one (torch " in printed
        assert modes.main([*argv, "--dry-run", "--reuse-other-builds"]) == 0
        assert "1 already stored in " in capsys.readouterr().out
    assert modes.main([*argv, "--report-only"]) == 0  # the report still counts it, and says whose it is
    assert "- Every run by an unknown build: stored before records named their build, so a rerun on this machine may differ." in (out / "RESULTS.md").read_text()


def test_the_report_says_which_rows_mix_builds():
    def record(seed, capability):
        return {"seed": seed, "build": {"torch": "2.13.0", "cpu_capability": capability, "blas": "mkl", "threads": 1}}

    rows = {"ring8": [modes.Row("pacgan", ["pacgan"], [record(0, "AVX2"), record(1, "AVX512")]),
                      modes.Row("vanilla", [], [record(0, "AVX2")])]}
    (line,) = modes_report._build_lines([r for row in rows["ring8"] for r in row.records], rows)
    assert line == ("- **The runs mix builds**: 2 by torch 2.13.0, AVX2, mkl, 1 thread(s); 1 by torch 2.13.0, AVX512, mkl, 1 thread(s)."
                    " Rows whose seeds come from more than one build: ring8 pacgan.")


def test_the_estimate_says_when_it_reused_stored_wall_times(tmp_path, capsys, monkeypatch):
    def task(seed, source):
        return modes.Task("ring8", "pacgan", ("pacgan",), seed, {modes_presets.CORE: {"steps": 100}},
                          tmp_path / f"seed{seed}.json", estimate=60.0, estimated_from=source)

    monkeypatch.setattr(modes_estimate, "usable_cpus", lambda: 2)
    modes_estimate.print_estimate([task(0, "stored"), task(1, "stored")], workers=2, notes=[])
    printed = capsys.readouterr().out
    assert "(sum of run times 2 min; 2 runs from the wall times of stored runs of the same settings)" in printed and "timed" not in printed
    modes_estimate.print_estimate([task(0, "stored"), task(1, "timed")], workers=2, notes=[])
    printed = capsys.readouterr().out
    assert "1 runs from the wall times of stored runs of the same settings; 1 runs from timed steps x steps, timed at load average" in printed
    assert "on 2 usable CPUs" in printed


def test_a_rows_one_core_cost_is_its_runs_cpu_time_where_recorded_else_their_wall_time():
    # a run stopped (SIGSTOP) or sharing its core for a while: 300 s on the clock, 100 s of computing
    measured = {"seed": 0, "wall_seconds": 300.0, "cpu_seconds": 100.0}
    older = {"seed": 1, "wall_seconds": 120.0}  # stored before records had CPU time
    row = modes.Row("vanilla", [], [measured, older])
    assert row.core_seconds == 110.0 and row.wall == 210.0


def test_the_estimate_reuses_only_the_same_remedys_wall_times():
    # a plugin at its defaults requests the same settings as vanilla; vanilla's times must not stand for it
    request = {modes_presets.CORE: {"steps": 100, "dataset": "ring8"}}
    stored = [{"status": "ok", "remedy": "vanilla", "request": {**request, modes_presets.CORE: {**request[modes_presets.CORE], "seed": 0}},
               "wall_seconds": 10.0},
              {"status": "ok", "remedy": "pacgan", "request": {**request, modes_presets.CORE: {**request[modes_presets.CORE], "seed": 1}},
               "wall_seconds": 30.0}]
    pending = [modes.Task("ring8", remedy, plugins, 2, {modes_presets.CORE: {**request[modes_presets.CORE], "seed": 2}}, Path(f"{remedy}.json"))
               for remedy, plugins in (("vanilla", ()), ("pacgan", ("pacgan",)), ("ema", ("ema",)))]
    modes_estimate.estimate(Catalog(), pending, stored, probe=False)
    assert [(task.estimate, task.estimated_from) for task in pending] == [(10.0, "stored"), (30.0, "stored"), (None, None)]


def test_each_remedy_gets_a_verdict_against_vanilla_from_its_own_rows():
    def row(dataset, remedy, modes_hq):
        records = [{"seed": seed, "metrics": {"modes_captured": m, "hq_percent": hq, "n_modes": 8}, "settings": {"train": {"steps": 100}}}
                   for seed, (m, hq) in enumerate(modes_hq)]
        return modes.Row(remedy, list(modes.plugin_names(modes.parse_remedy(remedy))), records)

    rows = {"ring8": [row("ring8", "vanilla", [(6, 95.0), (7, 95.0)]),
                      row("ring8", "pacgan", [(8, 91.0), (8, 91.0)]),        # +1.5 modes, -4 HQ points: beats
                      row("ring8", "ema", [(8, 50.0), (8, 50.0)]),           # more modes, -45 HQ points: does not
                      row("ring8", "ema[decay=0.9]", [(8, 99.0)]),           # better, but a probe on 1 seed of vanilla's 2
                      row("ring8", "adagan+pacgan", [(8, 99.0), (8, 99.0)])],  # a combination counts for neither
            "grid25": [row("grid25", "vanilla", [(17, 86.0)]),
                       row("grid25", "pacgan", [(20, 80.0)]),                # -6 HQ points: does not ...
                       row("grid25", "pacgan+train[g_width=400]", [(19, 85.0)]),  # ... but its own nets do
                       row("grid25", "adagan+pacgan", [(25, 99.0)]),
                       row("grid25", "train[g_width=400]", [(18, 84.0)])]}  # vanilla with pacgan's own nets, shown beside it
    lines = modes_verdicts.remedy_verdicts(rows, {("ring8", "pacgan"): "ring8-best"}, builtins=["adagan", "pacgan", "ema"])
    table = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "remedy" not in line}
    assert "| ring8 (vanilla 6.5 / 95.0%) | grid25 (vanilla 17.0 / 86.0%) |" in lines[4]
    assert table["pacgan"] == ("| pacgan | **yes** (+1.5 ± 0.5 modes): ring8-best 8.0 / 91.0% (2 seeds, 100 steps) | **yes** (+2.0 modes): pacgan+train[g_width=400] 19.0 / 85.0% "
                               "(1 seeds, 100 steps); train[g_width=400] alone: 18.0 / 84.0% (1 seeds) | 3 | **beats vanilla** (with other settings on ring8 and grid25) |")
    assert table["ema"] == "| ema | no: ema[decay=0.9] 8.0 / 99.0% (1 seeds, 100 steps) | no row | 2 | does not beat vanilla |"
    # a gain in mean modes no larger than its standard error over seeds (here 0.5 against 1.1) is no evidence
    rows["ring8"].append(row("ring8", "ema[decay=0.5]", [(8, 95.0), (6, 95.0)]))
    rows["grid25"].append(row("grid25", "ema", [(18, 86.0)]))
    spread = {line.split(" | ")[0].lstrip("| "): line for line in modes_verdicts.remedy_verdicts(rows, {}, ["ema"]) if line.startswith("| ema")}
    assert spread["ema"] == ("| ema | yes, within the spread (+0.5 ± 1.1 modes): ema[decay=0.5] 7.0 / 95.0% (2 seeds, 100 steps) | **yes** (+1.0 modes): ema "
                            "18.0 / 86.0% (1 seeds, 100 steps) | 4 | beats vanilla on the means, by less than the spread over seeds on ring8 |")
    rows["ring8"].pop()
    rows["grid25"].pop()
    assert table["adagan"] == "| adagan | no row | no row | 0 | not run |"
    rows["ring8"].append(row("ring8", "pacgan+train[g_width=400]", [(8, 92.0), (8, 92.0)]))  # now one setting wins on both
    table = {line.split(" | ")[0].lstrip("| "): line for line in modes_verdicts.remedy_verdicts(rows, {}, ["pacgan"]) if line.startswith("| pacgan")}
    assert table["pacgan"].endswith("| 4 | **beats vanilla** |")
    rows["ring8"].pop()
    rows["grid25"][4] = row("grid25", "train[g_width=400]", [(19, 84.0)])  # the nets alone find as many modes ...
    table = {line.split(" | ")[0].lstrip("| "): line for line in modes_verdicts.remedy_verdicts(rows, {}, ["pacgan"]) if line.startswith("| pacgan")}
    assert "| no: pacgan 20.0 / 80.0% (1 seeds, 100 steps) | 3 | does not beat vanilla (only on ring8) |" in table["pacgan"]  # ... so the gain is theirs
    rows["grid25"].pop(2)
    table = {line.split(" | ")[0].lstrip("| "): line for line in modes_verdicts.remedy_verdicts(rows, {}, ["pacgan"]) if line.startswith("| pacgan")}
    assert table["pacgan"].endswith("| 2 | does not beat vanilla (only on ring8) |")
    assert modes_verdicts.remedy_verdicts({"hd1200": rows["ring8"]}, {}, ["pacgan"]) == []  # no verdict dataset


def test_the_default_workers_are_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(modes_estimate.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert modes.parser().parse_args([]).workers == 1


def test_builtin_recipes_are_the_rows_the_presets_name_by_settings():
    """A best recipe repeats the shared settings, so on its dataset it is the stored bracket-string row."""
    from gancore.recipes import RecipeBook

    presets = modes.load_presets(modes_presets.DEFAULT_PRESETS)
    book = RecipeBook.installed()
    parts = {name: modes.remedy_name(modes_presets.recipe_parts(book.get(name), presets.datasets[dataset]))
             for name, dataset in (("ring8-best", "ring8"), ("grid25-best", "grid25"), ("hd1200-best", "hd1200"), ("benchmark-vanilla", "hd1200"),
                                   ("adagan-ring8", "ring8"), ("adagan-grid25", "grid25"))}
    assert parts == {
        "ring8-best": "pacgan+train[g_width=400,g_depth=4]",
        "grid25-best": "pacgan+train[g_width=400,g_depth=4,batch_size=1024,d_width=200,d_depth=3,d_maxout=5,loss=hinge]",
        "hd1200-best": "pacgan+train[g_width=400,g_depth=4]",
        "benchmark-vanilla": "vanilla",
        "adagan-ring8": "adagan",  # its steps are the presets' [remedy_train] for adagan: the stored row
        "adagan-grid25": "adagan",
    }


def test_a_recipe_runs_as_a_row_named_by_it_and_its_scores_are_written(tmp_path, capsys, monkeypatch):
    from plugin_packages import fake_recipe_distribution

    site = tmp_path / "site"
    site.mkdir()
    fake_recipe_distribution(site, "tiny-recipes", "1.0", "tiny_recipes_for_the_benchmark", {"tiny-noise.toml": """
        [recipe]
        description = "instance noise on a wider G"
        source = "found by a test"
        datasets = ["ring8"]
        [train]
        steps = 30
        batch_size = 64
        z_dim = 4
        g_width = 24
        d_width = 16
        n_train = 2000
        eval_every = 0
        eval_samples = 500
        [plugins.instance-noise]
        std = 0.5
    """})
    monkeypatch.syspath_prepend(str(site))
    presets = tmp_path / "presets.toml"
    presets.write_text(TINY)
    out = tmp_path / "out"
    argv = ["--presets", str(presets), "--out", str(out), "--recipes", "tiny-noise", "--workers", "1", "--no-timing"]
    assert modes.main(argv) == 0
    assert "1 runs (ring8 1 remedies; seeds 0)" in capsys.readouterr().out  # the recipe alone
    # not one of the presets' recipes: it runs whole (its settings over the core defaults), in a row named "@NAME"
    (record,) = [json.loads(path.read_text()) for path in (out / "runs" / "ring8" / "@tiny-noise").glob("seed*.json")]
    assert record["settings"]["train"]["g_width"] == 24 and record["settings"]["train"]["lr_decay"] == "none"  # not TINY's, not the presets'
    assert record["settings"]["plugins"]["instance-noise"]["std"] == 0.5
    report = (out / "RESULTS.md").read_text()
    assert "\n| tiny-noise | " in report
    opening = report[report.index("## Recipes beside the papers"):report.index("\n## ring8")]  # the opening table, before the full one
    assert "| recipe | source | modes (of 8) | HQ % | reverse KL | one-core min / run | seeds |" in opening
    assert "\n| tiny-noise | found by a test | " in opening and opening.count("| *paper:* ") == published_ring8_rows()
    assert "Rows named by recipe" not in report  # "@tiny-noise" needs no key
    (not_run,) = [line for line in opening.splitlines() if line.startswith("Not run on ring8 yet")]
    assert "ring8-best" in not_run and "veegan-paper" in not_run  # installed recipes naming ring8, without a run here
    assert "tiny-noise" not in not_run and "grid25-best" not in not_run  # run; names only grid25

    scores = tmp_path / "scores.toml"
    modes.write_report(out, modes.load_presets(presets), {}, argv, [], scores=scores)
    (result,) = json.loads((out / "results.json").read_text())
    written = modes_presets.tomllib.loads(scores.read_text())
    entry = written["tiny-noise"]["ring8"]
    assert entry["modes"] == result["metrics"]["modes_captured"] and entry["hq_percent"] == round(result["metrics"]["hq_percent"], 4)
    assert entry["seeds"] == [0] and entry["n_modes"] == 8 and entry["row"] == "@tiny-noise"
    assert entry["core_seconds_per_run"] == round(result["cpu_seconds"], 1) and entry["build"].startswith("torch ")
    assert "modes_sd" not in entry  # one seed: no spread


def test_an_unknown_recipe_is_a_one_line_error(tmp_path, capsys):
    assert modes.main(["--recipes", "ring9-best", "--out", str(tmp_path), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("benchmarks.modes: error: unknown recipe 'ring9-best' (available: ")


def test_the_presets_recipes_join_the_default_rows_and_quick_keeps_its_own_steps(tmp_path, capsys):
    from gancore.recipes import RecipeBook

    presets = modes.load_presets(modes_presets.DEFAULT_PRESETS, quick=True)
    assert "ring8-best" in presets.recipes
    assert modes.remedy_name(modes_presets.recipe_parts(RecipeBook.installed().get("ring8-best"), presets.datasets["ring8"])) == \
        "pacgan+train[g_width=400,g_depth=4]"  # not the recipe's 10000 steps: --quick fixes them
    assert modes.main(["--quick", "--out", str(tmp_path), "--dry-run", "--no-timing", "--plugins", "vanilla"]) == 0
    assert "1 runs (ring8 1 remedies" in capsys.readouterr().out  # --plugins alone: no recipe rows
    assert modes.main(["--quick", "--out", str(tmp_path), "--dry-run", "--no-timing", "--plugins", "vanilla", "--recipes", "ring8-best"]) == 0
    assert "2 runs (ring8 2 remedies" in capsys.readouterr().out


def test_a_presets_recipe_whose_list_setting_differs_from_the_presets_is_a_row_that_names_the_list(tmp_path):
    from gancore.recipes import RecipeBook

    presets_file = tmp_path / "presets.toml"
    presets_file.write_text('recipes = ["benchmark-vanilla"]\n' + TINY)  # layered on the presets' shared settings
    presets = modes.load_presets(presets_file)
    recipe = RecipeBook.installed().get("benchmark-vanilla")  # betas (0.5, 0.9) against the tiny presets' defaults
    (part,) = modes_presets.recipe_parts(recipe, presets.datasets["ring8"])
    assert "betas_d=[0.5,0.9]" in part and "betas_g=[0.5,0.9]" in part
    plan = modes.make_plan(Catalog.installed(), presets, tmp_path, None, [], None, [recipe])
    assert not plan.skipped and {task.remedy for task in plan.tasks} == {part}
    assert all(task.values[modes_presets.CORE]["betas_d"] == [0.5, 0.9] for task in plan.tasks)


def test_a_paper_recipe_row_runs_exactly_what_gancore_train_recipe_runs(tmp_path):
    """Rows "@NAME" resolve to the settings of `gancore train --recipe NAME --dataset D --seed S` on the
    presets' device: no shared setting of the presets leaks in (wgan-gp-paper sets no lr_decay; the
    presets decay linearly), and recipes with list settings (Adam's betas) are rows, not skipped."""
    from gancore.recipes import RecipeBook, settings_layers

    catalog, book = Catalog.installed(), RecipeBook.installed()
    presets = modes.load_presets(modes_presets.DEFAULT_PRESETS)
    papers = [recipe for recipe in book.recipes.values() if recipe.name.endswith("-paper")]
    assert {recipe.name for recipe in papers} >= {"veegan-paper", "unrolled-paper", "wgan-gp-paper", "pacgan2-paper"}
    plan = modes.make_plan(catalog, presets, tmp_path, None, [], [3], papers)
    assert not plan.skipped
    expected = {(dataset, f"@{recipe.name}") for recipe in papers for dataset in recipe.datasets}
    assert {(task.dataset, task.remedy) for task in plan.tasks} == expected
    for task in plan.tasks:
        enabled, values = settings_layers(book.get(task.remedy[1:]), catalog, {})
        values["train"].update(dataset=task.dataset, seed=3, device="cpu")
        assert catalog.resolve(list(task.plugins), task.values).config == catalog.resolve(enabled, values).config, task.remedy
    wgan_gp = next(task for task in plan.tasks if task.remedy == "@wgan-gp-paper")
    assert catalog.resolve(list(wgan_gp.plugins), wgan_gp.values).config.train.lr_decay == "none" != presets.datasets["ring8"].train["lr_decay"]


def test_a_run_whose_settings_no_longer_resolve_is_stored_as_failed_not_stopping_the_others(tmp_path, capsys):
    """The progress bar's step count resolves every task first: one that cannot resolve counts 0 steps
    and fails alone, as in execute."""
    from benchmarks.modes.run import run_tasks

    bad = modes.Task("ring8", "ema", ("ema",), 0, {"ema": {"no_such_option": 1}}, tmp_path / "ema" / "seed0.json")
    records, interrupted = run_tasks([bad], 1, Catalog.installed())
    assert not interrupted and [record["status"] for record in records] == ["failed"]
    assert "no_such_option" in records[0]["error"] and json.loads(bad.record.read_text())["status"] == "failed"
    assert "runs 1/1" in capsys.readouterr().err
