"""Adopting runs: a finished ``gancore train --recipe NAME`` run directory stored as the benchmark's
run of the row that recipe is, so that long rows (checkpointed, resumable, run in parts) count.

A run is adopted only when it is that row's run: its resolved settings are the row's, except
:data:`UNOBSERVED` ones (when it was evaluated, how many checkpoints it kept: the core draws
evaluations from their own random stream, so they do not change what is trained) and, where
neither rolls back on a NaN, when it was checkpointed; it reached its
last step without being extended (``--steps``: a schedule over the total steps would differ); its
checkpoint holds the final evaluation that summary.json reports, and this build
scores the same samples to the same numbers; every session ran in one process. Its build is what
run.json's segments name (several: "unknown build", mixed); a run whose segments do not cover its
steps (its run.json predates them) is adopted only when this build replays its last checkpoint
interval bit for bit, and then as this build's.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from gancore.checkpoint import checkpoint_step, list_checkpoints, load_checkpoint
from gancore.config import CORE, read_toml
from gancore.errors import GancoreError
from gancore.manager import Catalog
from gancore.provenance import build_info, build_key
from gancore.recipes import RecipeBook
from gancore.rundir import open_trainer

from benchmarks.modes.plan import Task, make_plan
from benchmarks.modes.presets import BenchmarkError, Presets
from benchmarks.modes.run import base_record, store_finished

UNOBSERVED = ("eval_every", "keep_checkpoints")
# when checkpoints are written matters only to a rollback (its target); a run that stops on a NaN never rolls back
UNOBSERVED_WITHOUT_ROLLBACK = ("checkpoint_every",)
SCORES = ("modes_captured", "hq_percent", "reverse_kl", "mode_counts")  # what the final evaluation must reproduce


def adopt(run_dir: Path, catalog: Catalog, presets: Presets, out: Path) -> tuple[dict, str]:
    """Store the run in ``run_dir`` as its row's run; return the record and a one-line account of
    how its build is known. A run that is not one of the benchmark's rows is a BenchmarkError."""
    def refuse(why: str) -> BenchmarkError:
        return BenchmarkError(f"--adopt {run_dir}: {why}")

    if not (run_dir / "config.toml").is_file():
        raise refuse("not a gancore run directory (no config.toml)")
    config = read_toml(run_dir / "config.toml")
    recipe_name = config.get("recipe", {}).get("name")
    if not recipe_name:
        raise refuse("it was not run from a recipe; only `gancore train --recipe NAME` runs are rows of the benchmark")
    dataset, seed = config.get(CORE, {}).get("dataset"), config.get(CORE, {}).get("seed")
    if dataset not in presets.datasets or not isinstance(seed, int):
        raise refuse(f"its config.toml names dataset {dataset!r} and seed {seed!r}; adopted runs are of a dataset with a table in {presets.path}")
    plan = make_plan(catalog, presets, out, [dataset], [], [seed], [RecipeBook.installed().get(recipe_name)])
    if not plan.tasks:
        raise refuse(f"recipe {recipe_name} is no row on {dataset} ({'; '.join(plan.skipped) or 'not made for it'})")
    (task,) = plan.tasks
    meta = _run_meta(run_dir, refuse)
    _check_same_training(task, config, meta, catalog, refuse)

    trainer = open_trainer(run_dir, catalog)
    if trainer.step != trainer.train.steps:
        raise refuse(f"it stopped at step {trainer.step} of {trainer.train.steps}; finish it with `gancore train --resume {run_dir}`")
    segments = meta.get("segments", [])
    extended = next((segment["of"] for segment in segments if segment["of"] != trainer.train.steps), None)
    if extended is not None:
        raise refuse(f"it was run for {extended} steps, then extended to {trainer.train.steps} with --steps; what is scheduled over "
                     f"train.steps (lr_decay, instance-noise's annealing, adagan's rounds) ran on {extended} in that part, so it is not the row's run")
    try:
        reported = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        raise refuse(f"no readable summary.json; finish the run with `gancore train --resume {run_dir}`") from None
    last = trainer.history[-1] if trainer.history else {}
    summary = {"dataset": trainer.dataset.name, "plugins": list(trainer.config.plugins), "seed": trainer.train.seed, **last}
    if last.get("step") != trainer.step or summary != reported:
        raise refuse("its last checkpoint does not hold the final evaluation summary.json reports")
    with trainer.run.reporting_plugin_faults():
        rescored = trainer.dataset.score(trainer.sample(trainer.eval_samples, trainer.evaluation_generator()))
    differ = [key for key in SCORES if key in summary and _as_logged(rescored.get(key)) != _as_logged(summary[key])]
    if differ:
        raise refuse(f"this build scores its final samples differently ({', '.join(differ)}): it was evaluated on another build; run the row here instead")

    build, account = _build_of(run_dir, segments, trainer.step, catalog, refuse)
    elapsed, timed = _elapsed(meta, segments, trainer.step)
    account += timed
    base = base_record(task)
    if build:
        base["build"] = build
    else:
        del base["build"]  # record_build: "unknown build"
    if task.record.is_file():
        account += f"; replaced the stored {task.record.name}"
    record = store_finished(task, base, trainer, summary, elapsed, adopted_from=str(run_dir.resolve()), segments=segments)
    return record, account


def _run_meta(run_dir: Path, refuse) -> dict:
    """run.json, checked: its wall time and (where recorded) well-formed segments."""
    try:
        meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        raise refuse("no readable run.json") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("wall_seconds"), (int, float)):
        raise refuse("its run.json records no wall time (was the run finished?)")
    segments = meta.get("segments", [])
    well_formed = isinstance(segments, list) and all(
        isinstance(segment, dict) and isinstance(segment.get("build"), dict) and isinstance(segment.get("of"), int)
        and isinstance(segment.get("wall_seconds"), (int, float))
        and isinstance(segment.get("steps"), list) and len(segment["steps"]) == 2 and all(isinstance(step, int) for step in segment["steps"])
        for segment in segments)
    if not well_formed:
        raise refuse("its run.json's segments are malformed")
    for segment in segments:
        if segment.get("world_size", 1) != 1:
            raise refuse(f"steps {segment['steps'][0]}-{segment['steps'][1]} ran on {segment['world_size']} processes; the benchmark's rows run in one")
    return meta


def _elapsed(meta: dict, segments: list[dict], final_step: int) -> tuple[dict[str, float], str]:
    """The run's one-run wall time (and CPU time, where every segment recorded one) and, where it
    is not simply measured, how it was had: a session killed outright recorded no segment, so the
    timed segments' times are scaled to all the steps."""
    timed = sum(segment["steps"][1] - segment["steps"][0] for segment in segments)
    if not segments:
        return {"wall_seconds": meta["wall_seconds"]}, "; its wall time is run.json's, which predates segments and may be its last session's only"
    keys = [key for key in ("wall_seconds", "cpu_seconds") if all(isinstance(segment.get(key), (int, float)) for segment in segments)]
    scale, account = 1.0, ""
    if 0 < timed != final_step:
        scale, account = final_step / timed, f"; wall time scaled from the {timed} of {final_step} steps its segments timed"
    return {key: round(sum(segment[key] for segment in segments) * scale, 3) for key in keys}, account


def _as_logged(value):
    """A score to 6 digits: what the summary states, not the last bits of a float."""
    return round(float(value), 6) if isinstance(value, (float, int)) and not isinstance(value, bool) else value


def _check_same_training(task: Task, config: dict, meta: dict, catalog: Catalog, refuse) -> None:
    row = catalog.resolve(list(task.plugins), task.values).config.to_toml_dict()
    ran = catalog.resolve(list(config.get("plugins", {})), {CORE: config[CORE], **config.get("plugins", {})}).config.to_toml_dict()
    unobserved = UNOBSERVED + (UNOBSERVED_WITHOUT_ROLLBACK if row[CORE]["on_nonfinite"] == ran[CORE]["on_nonfinite"] == "stop" else ())
    for settings in (row, ran):
        for key in unobserved:
            settings[CORE].pop(key, None)
    devices = {segment["device"] for segment in meta.get("segments", []) if "device" in segment} or {meta.get("device", "auto")}
    if ran[CORE].get("device") == "auto" and len(devices) == 1:  # the device it chose is in run.json
        ran[CORE]["device"] = devices.pop()
    if list(ran.get("plugins", {})) != list(row.get("plugins", {})):
        raise refuse(f"it enables plugins {list(ran.get('plugins', {}))}, its row {task.remedy} on {task.dataset} {list(row.get('plugins', {}))}")
    if ran != row:
        owner, key = next((owner, key) for owner in sorted(set(row) | set(ran)) for key in sorted(set(row.get(owner, {})) | set(ran.get(owner, {})))
                          if row.get(owner, {}).get(key) != ran.get(owner, {}).get(key))
        raise refuse(f"it ran {owner}.{key} = {ran.get(owner, {}).get(key)!r}, its row {task.remedy} on {task.dataset} runs {row.get(owner, {}).get(key)!r}")


def _build_of(run_dir: Path, segments: list[dict], final_step: int, catalog: Catalog, refuse) -> tuple[dict | None, str]:
    """The build the run's numbers rest on, and how that is known."""
    trained = [segment for segment in segments if segment["steps"][1] > segment["steps"][0]]  # a resume of a finished run trains nothing
    builds = {build_key(segment["build"]) for segment in trained}
    covered = bool(trained) and trained[0]["steps"][0] == 0 and trained[-1]["steps"][1] == final_step and all(
        a["steps"][1] == b["steps"][0] for a, b in zip(trained, trained[1:]))
    if covered and len(builds) == 1:
        return trained[-1]["build"], f"build {builds.pop()} (run.json's segments)"
    if covered:
        return None, f"its segments ran on {' and '.join(sorted(builds))}: stored as of an unknown build (mixed)"
    why = "run.json names no build (an extension with --steps cannot be seen either)" if not segments else "run.json's segments cover only part of its steps"
    replayed = _replays_last_interval(run_dir, catalog)
    if not replayed:
        raise refuse(f"{why}, and this build does not replay its last checkpoint interval bit for bit: nothing shows which build "
                     "(or how many processes) trained it; run the row here instead")
    return build_info(), f"{why}; this build replays steps {replayed} bit for bit: stored as this build's ({build_key(build_info())})"


def _replays_last_interval(run_dir: Path, catalog: Catalog) -> str | None:
    """"A-B" when training from the run's second-last checkpoint (step A) to its last (B, the final
    step: the run is finished) here gives the last checkpoint's networks and optimizers exactly;
    None when it does not or cannot be tried. The replay finishes the run as ``fit`` does, so that a
    plugin running its own loop (``gancore_fit``: adagan's rounds) runs it."""
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if len(checkpoints) < 2:
        return None
    start, end = checkpoint_step(checkpoints[-2]), checkpoint_step(checkpoints[-1])
    try:
        trainer = open_trainer(run_dir, catalog, checkpoint=checkpoints[-2])
        if trainer.train.steps != end:
            return None
        trainer.output = None  # nothing is written: the run directory stays as it is
        with trainer.run.reporting_plugin_faults():
            trainer.fit()
        state, last = trainer.state_dict(), load_checkpoint(checkpoints[-1])
    except GancoreError:  # a damaged checkpoint, a plugin fault: no replay
        return None
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
