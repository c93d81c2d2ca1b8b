"""Adopting runs: a finished ``gancore train --recipe NAME`` run directory stored as the benchmark's
run of the row that recipe is, so that long rows (checkpointed, resumable, run in parts) count.

A run is adopted only when it is that row's run: its resolved settings are the row's, except
:data:`UNOBSERVED` ones (when it was evaluated, how many checkpoints it kept: the core draws
evaluations from their own random stream, so they do not change what is trained); it reached its
last step without being extended (``--steps``: a schedule over the total steps would differ); its
checkpoint holds the final evaluation that summary.json reports, and this build
scores the same samples to the same numbers. Its build is what run.json's segments name; a run
whose run.json predates them, or names more than one build, gets this build only when this build
replays its last checkpoint interval bit for bit, and is stored as of an unknown build otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from gancore.checkpoint import checkpoint_step, list_checkpoints, load_checkpoint
from gancore.config import CORE, read_toml
from gancore.manager import Catalog
from gancore.provenance import build_info, build_key
from gancore.recipes import RecipeBook
from gancore.rundir import open_trainer

from benchmarks.modes.plan import Task, make_plan
from benchmarks.modes.presets import BenchmarkError, Presets
from benchmarks.modes.run import base_record, store_finished

UNOBSERVED = ("eval_every", "keep_checkpoints")
SCORES = ("modes_captured", "hq_percent", "reverse_kl", "mode_counts")  # what the final evaluation must reproduce


def adopt(run_dir: Path, catalog: Catalog, presets: Presets, out: Path) -> tuple[dict, str]:
    """Store the run in ``run_dir`` as its row's run; return the record and a one-line account of
    how its build is known. A run that is not one of the benchmark's rows is a BenchmarkError."""
    config = read_toml(run_dir / "config.toml") if (run_dir / "config.toml").is_file() else None
    if config is None:
        raise BenchmarkError(f"--adopt {run_dir}: not a gancore run directory (no config.toml)")
    recipe_name = config.get("recipe", {}).get("name")
    if not recipe_name:
        raise BenchmarkError(f"--adopt {run_dir}: it was not run from a recipe; only `gancore train --recipe NAME` runs are rows of the benchmark")
    dataset, seed = config[CORE]["dataset"], config[CORE]["seed"]
    if dataset not in presets.datasets:
        raise BenchmarkError(f"--adopt {run_dir}: dataset {dataset!r} has no table in {presets.path}")
    plan = make_plan(catalog, presets, out, [dataset], [], [seed], [RecipeBook.installed().get(recipe_name)])
    if not plan.tasks:
        raise BenchmarkError(f"--adopt {run_dir}: recipe {recipe_name} is no row on {dataset} ({'; '.join(plan.skipped) or 'not made for it'})")
    (task,) = plan.tasks
    _check_same_training(run_dir, task, config, catalog)

    trainer = open_trainer(run_dir, catalog)
    if trainer.step != trainer.train.steps:
        raise BenchmarkError(f"--adopt {run_dir}: it stopped at step {trainer.step} of {trainer.train.steps}; finish it with `gancore train --resume {run_dir}`")
    meta = json.loads((run_dir / "run.json").read_text())
    extended = next((segment["of"] for segment in meta.get("segments", []) if segment.get("of", trainer.train.steps) != trainer.train.steps), None)
    if extended is not None:
        raise BenchmarkError(f"--adopt {run_dir}: it was run for {extended} steps, then extended to {trainer.train.steps} with --steps; what is "
                             f"scheduled over train.steps (lr_decay, instance-noise's annealing, adagan's rounds) ran on {extended} in that part, "
                             "so it is not the row's run")
    summary = {"dataset": trainer.dataset.name, "plugins": list(trainer.config.plugins), "seed": trainer.train.seed, **trainer.history[-1]}
    try:
        reported = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        raise BenchmarkError(f"--adopt {run_dir}: no readable summary.json; finish the run with `gancore train --resume {run_dir}`") from None
    if trainer.history[-1]["step"] != trainer.step or summary != reported:
        raise BenchmarkError(f"--adopt {run_dir}: its last checkpoint does not hold the final evaluation summary.json reports")
    rescored = trainer.dataset.score(trainer.sample(trainer.eval_samples, trainer.evaluation_generator()))
    differ = [key for key in SCORES if key in summary and _plain(rescored.get(key)) != _plain(summary[key])]
    if differ:
        raise BenchmarkError(f"--adopt {run_dir}: this build scores its final samples differently ({', '.join(differ)}): "
                             "it was evaluated on another build; run the row here instead")

    build, account = _build_of(run_dir, meta, catalog)
    base = {**base_record(task), "build": build} if build else {key: value for key, value in base_record(task).items() if key != "build"}
    record = store_finished(task, base, trainer, summary, meta.get("wall_seconds", float("nan")), adopted_from=str(run_dir.resolve()),
                            segments=meta.get("segments", []))
    return record, account


def _plain(value):
    return round(float(value), 6) if isinstance(value, (float, int)) and not isinstance(value, bool) else value


def _check_same_training(run_dir: Path, task: Task, config: dict, catalog: Catalog) -> None:
    row = catalog.resolve(list(task.plugins), task.values).config.to_toml_dict()
    ran = catalog.resolve(list(config.get("plugins", {})), {CORE: config[CORE], **config.get("plugins", {})}).config.to_toml_dict()
    for settings in (row, ran):
        for key in UNOBSERVED:
            settings[CORE].pop(key, None)
    if ran[CORE].get("device") == "auto":  # the device it chose is in run.json
        ran[CORE]["device"] = json.loads((run_dir / "run.json").read_text()).get("device", "auto")
    if ran != row:
        owner, key = next((owner, key) for owner in sorted(set(row) | set(ran)) for key in sorted(set(row.get(owner, {})) | set(ran.get(owner, {})))
                          if row.get(owner, {}).get(key) != ran.get(owner, {}).get(key))
        raise BenchmarkError(f"--adopt {run_dir}: it ran {owner}.{key} = {ran.get(owner, {}).get(key)!r}, its row "
                             f"{task.remedy} on {task.dataset} runs {row.get(owner, {}).get(key)!r}")


def _build_of(run_dir: Path, meta: dict, catalog: Catalog) -> tuple[dict | None, str]:
    """The build the run's numbers rest on, and how that is known."""
    segments = meta.get("segments", [])
    builds = {build_key(segment["build"]) for segment in segments}
    covered = segments and segments[0]["steps"][0] == 0 and all(a["steps"][1] == b["steps"][0] for a, b in zip(segments, segments[1:]))
    if covered and len(builds) == 1:
        return segments[-1]["build"], f"build {builds.pop()} (run.json's segments)"
    replayed = _replays_last_interval(run_dir, catalog)
    why = "run.json names no build" if not segments else "run.json's segments name " + (" and ".join(sorted(builds)) if len(builds) > 1 else "only part of its steps")
    if replayed:
        return build_info(), f"{why}; this build replays steps {replayed} bit for bit: stored as this build's ({build_key(build_info())})"
    return None, f"{why}, and this build does not replay its last checkpoint interval bit for bit: stored as of an unknown build"


def _replays_last_interval(run_dir: Path, catalog: Catalog) -> str | None:
    """"A-B" when training from the run's second-last checkpoint (step A) to its last (B) here gives
    the last checkpoint's networks and optimizers exactly; None when it does not or cannot be tried."""
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if len(checkpoints) < 2:
        return None
    start, end = checkpoint_step(checkpoints[-2]), checkpoint_step(checkpoints[-1])
    trainer = open_trainer(run_dir, catalog, checkpoint=checkpoints[-2])
    trainer.output = None  # nothing is written: the run directory stays as it is
    with trainer.run.reporting_plugin_faults():
        trainer.run_steps(end - start)
    state, last = trainer.state_dict(), load_checkpoint(checkpoints[-1])
    same = all(torch.equal(state["models"][name][key], tensor) for name, module in last["models"].items() for key, tensor in module.items())
    same = same and _same_tensors(state["optimizers"], last["optimizers"])
    return f"{start}-{end}" if same else None


def _same_tensors(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_tensors(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    return a == b
