"""Does this remedy recover the modes, and how does it compare with the papers?

    python -m benchmarks.modes              # the full table -> benchmarks/RESULTS.md, results.json, samples_*.png
    python -m benchmarks.modes --quick      # ring8, one seed, few steps -> benchmarks/quick/
    python -m benchmarks.modes --dry-run    # the plan and its estimated time; runs nothing
    python -m benchmarks.modes --datasets stacked-digits   # the 1000-mode stacked digits (not in the full table)

Runs vanilla, every built-in remedy (installed plugins of the package gancore, found through
the catalog) and the preset's combinations on each dataset and seed of ``presets.toml``, each
run a core :class:`~gancore.trainer.Trainer` scored with its dataset's protocol (VEEGAN's for
the mixtures; the digit classifier's for stacked-digits, run only with ``--datasets
stacked-digits``), in parallel worker processes. Every finished run is stored under
``OUT/runs/`` and never redone while its settings stay the same; the report is regenerated
from every stored run. See README.md here.
"""
from __future__ import annotations

import argparse
import heapq
import io
import json
import math
import multiprocessing
import os
import re
import shlex
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm import tqdm

from gancore import __version__
from gancore.checkpoint import atomic_write
from gancore.config import CORE, core_options
from gancore.data import DATASET_NAMES, Dataset, load_dataset
from gancore.errors import GancoreError
from gancore.manager import ENTRY_POINT_GROUP, Catalog
from gancore.metrics import nearest_modes
from gancore.provenance import build_info

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
DEFAULT_PRESETS = HERE / "presets.toml"
PUBLISHED = HERE / "published.toml"
DEFAULT_OUT = HERE
QUICK_OUT = HERE / "quick"
COMMAND = "python -m benchmarks.modes"
VANILLA = "vanilla"
BUILTIN_PACKAGE = "gancore"
PICTURE_SEED = 0
PICTURE_IMAGES = 64  # samples kept per run of an image dataset, for its panel of samples_<dataset>.png
WORKER_START_SECONDS = 3.0  # spawn + import torch, once per worker (for the estimate)


class BenchmarkError(Exception):
    """A one-line user error (bad preset, bad flag)."""


# ------------------------------------------------------------------------------------- presets


@dataclass
class DatasetPreset:
    """Settings of one dataset: core settings shared by every remedy, plugin options, combinations."""

    name: str
    train: dict[str, Any]
    plugins: dict[str, dict[str, Any]]
    combinations: list[tuple[str, ...]]
    goal_hq_percent: float | None = None
    goal_modes: int | None = None  # at least this many modes (unset: all of them, when another goal is set)
    goal_kl: float | None = None  # reverse KL at most this
    seeds: list[int] | None = None  # this dataset's own seeds (unset: the top-level `seeds`)
    remedy_train: dict[str, dict[str, Any]] = field(default_factory=dict)  # remedy name -> its own core settings here

    @property
    def goal(self) -> "Goal | None":
        if self.goal_hq_percent is None and self.goal_modes is None and self.goal_kl is None:
            return None
        return Goal(self.goal_modes, self.goal_hq_percent, self.goal_kl)


@dataclass
class Goal:
    """What the best remedy of a dataset should reach; the notes of RESULTS.md check it."""

    modes: int | None = None  # None: all of the dataset's modes
    hq_percent: float | None = None
    kl: float | None = None

    def target(self, n_modes: int) -> str:
        text = f"all {n_modes} modes" if self.modes is None or self.modes >= n_modes else f"at least {self.modes} of {n_modes} modes"
        conditions = ([] if self.hq_percent is None else [f"at least {self.hq_percent:g}% HQ"]) + ([] if self.kl is None else [f"reverse KL ≤ {self.kl:g}"])
        return text + (f" with {' and '.join(conditions)}" if conditions else "")

    def met(self, n_modes: int, modes: float, hq: float | None, kl: float | None) -> bool:
        if modes < min(n_modes, self.modes if self.modes is not None else n_modes):
            return False
        if self.hq_percent is not None and (hq is None or not hq >= self.hq_percent):
            return False
        return self.kl is None or (kl is not None and kl <= self.kl)


@dataclass
class Presets:
    path: Path
    seeds: list[int]
    exclude: list[str]
    datasets: dict[str, DatasetPreset]  # every dataset table, in file order
    default: list[str] = field(default_factory=list)  # what a run without --datasets runs

    def seeds_of(self, preset: DatasetPreset) -> list[int]:
        return preset.seeds if preset.seeds is not None else self.seeds


_TOP_KEYS = {"seeds", "datasets", "exclude", "combinations", "train", "plugins", "quick", "remedy_train"}
_DATASET_KEYS = {"train", "plugins", "combinations", "more_combinations", "seeds", "goal_hq_percent", "goal_modes", "goal_kl", "remedy_train"}
_QUICK_KEYS = {"datasets", "seeds", "train", "plugins"}
_SET_BY_BENCHMARK = {"dataset", "data", "seed"}


def load_presets(path: Path, quick: bool = False) -> Presets:
    """Read and check a presets file; with ``quick``, apply its ``[quick]`` overrides."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BenchmarkError(f"presets file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"presets file {path} is not valid TOML: {exc}") from None
    where = f"presets file {path}"
    seeds = _int_list(data.get("seeds", [0]), f"{where}: seeds")
    exclude = _str_list(data.get("exclude", []), f"{where}: exclude")
    default_combinations = _combinations(data.get("combinations", []), f"{where}: combinations")
    shared_train = _train_table(data.get("train", {}), f"{where}: [train]")
    shared_plugins = _plugin_tables(data.get("plugins", {}), f"{where}: [plugins]")
    shared_remedy_train = _remedy_train(data.get("remedy_train", {}), f"{where}: [remedy_train]")
    quick_table = _table(data.get("quick", {}), f"{where}: [quick]")
    unknown = sorted(set(quick_table) - _QUICK_KEYS)
    if unknown:
        raise BenchmarkError(f"{where}: unknown key quick.{unknown[0]} (use {', '.join(sorted(_QUICK_KEYS))})")
    datasets: dict[str, DatasetPreset] = {}
    for name, table in data.items():
        if name in _TOP_KEYS:
            continue
        if name not in DATASET_NAMES:
            raise BenchmarkError(f"{where}: [{name}] is not a built-in dataset ({', '.join(DATASET_NAMES)}) nor one of {', '.join(sorted(_TOP_KEYS))}")
        table = _table(table, f"{where}: [{name}]")
        unknown = sorted(set(table) - _DATASET_KEYS)
        if unknown:
            raise BenchmarkError(f"{where}: unknown key {name}.{unknown[0]} (use {', '.join(sorted(_DATASET_KEYS))})")
        for key in ("goal_hq_percent", "goal_kl"):
            goal = table.get(key)
            if goal is not None and (isinstance(goal, bool) or not isinstance(goal, (int, float)) or goal < 0):
                raise BenchmarkError(f"{where}: {name}.{key} must be a number >= 0")
        goal_modes = table.get("goal_modes")
        if goal_modes is not None and (isinstance(goal_modes, bool) or not isinstance(goal_modes, int) or goal_modes < 1):
            raise BenchmarkError(f"{where}: {name}.goal_modes must be an integer >= 1")
        plugins = _merge_tables(shared_plugins, _plugin_tables(table.get("plugins", {}), f"{where}: [{name}.plugins]"))
        datasets[name] = DatasetPreset(
            name=name,
            train={**shared_train, **_train_table(table.get("train", {}), f"{where}: [{name}.train]")},
            plugins=plugins,
            combinations=(_combinations(table["combinations"], f"{where}: {name}.combinations") if "combinations" in table else default_combinations)
            + _combinations(table.get("more_combinations", []), f"{where}: {name}.more_combinations"),
            goal_hq_percent=None if table.get("goal_hq_percent") is None else float(table["goal_hq_percent"]),
            goal_modes=goal_modes,
            goal_kl=None if table.get("goal_kl") is None else float(table["goal_kl"]),
            seeds=_int_list(table["seeds"], f"{where}: {name}.seeds") if "seeds" in table else None,
            remedy_train=_merge_tables(shared_remedy_train, _remedy_train(table.get("remedy_train", {}), f"{where}: [{name}.remedy_train]")),
        )
    if not datasets:
        raise BenchmarkError(f"{where}: no dataset table (e.g. [ring8])")
    default = _str_list(data["datasets"], f"{where}: datasets") if "datasets" in data else list(datasets)
    for name in default:
        if name not in datasets:
            raise BenchmarkError(f"{where}: datasets names {name!r}, which has no [{name}] table")
    if quick:
        quick_train = _train_table(quick_table.get("train", {}), f"{where}: [quick.train]")
        quick_plugins = _plugin_tables(quick_table.get("plugins", {}), f"{where}: [quick.plugins]")
        names = _str_list(quick_table.get("datasets", ["ring8"]), f"{where}: quick.datasets")
        for name in names:
            if name not in datasets:
                raise BenchmarkError(f"{where}: quick.datasets names {name!r}, which has no [{name}] table")
        datasets = {name: datasets[name] for name in names}
        seeds = _int_list(quick_table.get("seeds", seeds[:1]), f"{where}: quick.seeds")
        for preset in datasets.values():
            for train in (preset.train, *preset.remedy_train.values()):
                train.update(quick_train)
            preset.plugins = _merge_tables(preset.plugins, quick_plugins)
            preset.seeds = None  # --quick runs its own seeds on every dataset
        default = names
    return Presets(Path(path), seeds, exclude, datasets, default)


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise BenchmarkError(f"{where} must be a table")
    return value


def _train_table(value: Any, where: str) -> dict:
    table = dict(_table(value, where))
    for key in sorted(set(table) & _SET_BY_BENCHMARK):
        raise BenchmarkError(f"{where}: train.{key} is set by the benchmark (datasets are tables, seeds are `seeds`)")
    return table


def _remedy_train(value: Any, where: str) -> dict[str, dict]:
    """``{"REMEDY": {train settings}}``, keyed by the remedy's canonical name."""
    tables = {}
    for text, train in _table(value, where).items():
        tables[remedy_name(parse_remedy(text, where))] = _train_table(train, f"{where[:-1]}.{text}]")
    return tables


def _plugin_tables(value: Any, where: str) -> dict[str, dict]:
    tables = _table(value, where)
    for name, options in tables.items():
        _table(options, f"{where[:-1]}.{name}]")
    return {name: dict(options) for name, options in tables.items()}


def _merge_tables(base: dict[str, dict], over: dict[str, dict]) -> dict[str, dict]:
    """Tables by name (plugins, or remedies), ``over``'s values winning key by key."""
    merged = {name: dict(options) for name, options in base.items()}
    for name, options in over.items():
        merged.setdefault(name, {}).update(options)
    return merged


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise BenchmarkError(f"{where} must be a list of names")
    return list(value)


def _int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise BenchmarkError(f"{where} must be a non-empty list of seeds (integers >= 0)")
    return list(dict.fromkeys(value))


def _combinations(value: Any, where: str) -> list[tuple[str, ...]]:
    if not isinstance(value, list):
        raise BenchmarkError(f"{where} must be a list of plugin lists, e.g. [[\"pacgan\", \"minibatch-discrimination\"]]")
    combinations = []
    for index, item in enumerate(value):
        parts = tuple(_str_list(item, f"{where} entry {index}"))
        combinations.append(parse_remedy("+".join(parts), f"{where} entry {index}"))
    return combinations


# ---------------------------------------------------------------------------------------- plan


# A remedy is a tuple of parts, one per plugin in enable order: "NAME", or "NAME[OPTION=VALUE,...]"
# for a variant with its own options (e.g. "unrolled[steps=10]"), which win over the presets'.
# A part "train[OPTION=VALUE,...]" is no plugin: it sets core options of this remedy alone, e.g. a
# bigger generator, "pacgan+train[g_width=400,g_depth=4]" (its vanilla: "train[g_width=400,g_depth=4]").
_PART = re.compile(r"([A-Za-z0-9_.-]+)(?:\[([^\[\]]*)\])?")


def remedy_name(parts: Iterable[str]) -> str:
    return "+".join(parts) or VANILLA


def parse_remedy(text: str, where: str = "--plugins") -> tuple[str, ...]:
    """``vanilla`` -> (), ``a+b[k=v]`` -> ("a", "b[k=v]"), with spaces removed and options checked."""
    text = "".join(text.split())
    if text == VANILLA:
        return ()
    parts = tuple(text.split("+"))
    for part in parts:
        try:
            name, options = part_options(part)
            if name == CORE and not options:
                raise ValueError(part)
        except ValueError:
            raise BenchmarkError(
                f"{where}: {text!r} is not a remedy name (write vanilla, NAME, NAME+NAME, NAME[OPTION=VALUE,...] for a variant,"
                f" or +{CORE}[OPTION=VALUE,...] for core options of this remedy alone)"
            ) from None
    return parts


def part_options(part: str) -> tuple[str, dict[str, Any]]:
    """``"unrolled[steps=10]"`` -> ("unrolled", {"steps": 10}); values are read as TOML (else text)."""
    match = _PART.fullmatch(part)
    if not match:
        raise ValueError(part)
    options: dict[str, Any] = {}
    for assignment in filter(None, (match.group(2) or "").split(",")):
        key, sep, value = assignment.partition("=")
        if not sep or not key or not value:
            raise ValueError(part)
        try:
            options[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            options[key] = value
    if match.group(2) is not None and not options:
        raise ValueError(part)
    return match.group(1), options


def plugin_names(parts: Iterable[str]) -> tuple[str, ...]:
    return tuple(name for name in (part_options(part)[0] for part in parts) if name != CORE)


@dataclass
class Task:
    """One run: a remedy on a dataset with a seed, and where its record is stored."""

    dataset: str
    remedy: str
    plugins: tuple[str, ...]  # plugin names, in enable order (the remedy's options are in values)
    seed: int
    values: dict[str, dict[str, Any]]
    record: Path
    estimate: float | None = None

    @property
    def samples(self) -> Path:
        return self.record.with_suffix(".samples.npy")


@dataclass
class Plan:
    tasks: list[Task]  # every run of the plan, stored or not
    remedies: dict[str, list[tuple[str, ...]]]  # per dataset, in display order
    skipped: list[str] = field(default_factory=list)  # one note per remedy not run
    not_default: list[str] = field(default_factory=list)  # dataset tables left out: not in the presets' `datasets`


def run_values(preset: DatasetPreset, parts: tuple[str, ...], seed: int) -> dict[str, dict[str, Any]]:
    """The ``values`` of Catalog.resolve for one run of the remedy ``parts``."""
    train = {**preset.train, **preset.remedy_train.get(remedy_name(parts), {})}
    values: dict[str, dict[str, Any]] = {CORE: train}
    for part in parts:
        name, options = part_options(part)
        if name == CORE:
            values[CORE] = {**values[CORE], **options}
        elif name in preset.plugins or options:
            values[name] = {**preset.plugins.get(name, {}), **options}
    values[CORE] = {**values[CORE], "dataset": preset.name, "seed": seed}
    return values


def discover_remedies(catalog: Catalog, preset: DatasetPreset, exclude: list[str]) -> list[tuple[str, ...]]:
    """vanilla, every built-in plugin not excluded, then the preset's combinations."""
    builtins = [(name,) for name, info in sorted(catalog.plugins.items()) if info.package == BUILTIN_PACKAGE and name not in exclude]
    return list(dict.fromkeys([(), *builtins, *preset.combinations]))


def broken_builtins(catalog: Catalog) -> dict[str, str]:
    """Built-in plugins that failed to import: name -> error."""
    broken = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in catalog.broken and point.dist is not None and point.dist.name == BUILTIN_PACKAGE:
            broken[point.name] = catalog.broken[point.name]
    return broken


def make_plan(catalog: Catalog, presets: Presets, out: Path, datasets: list[str] | None, remedies: list[str] | None, seeds: list[int] | None) -> Plan:
    for name in datasets or ():
        if name not in presets.datasets:
            raise BenchmarkError(f"--datasets: {name!r} has no table in {presets.path} (there: {', '.join(presets.datasets)})")
    requested = None if remedies is None else list(dict.fromkeys(parse_remedy(text) for text in remedies))
    plan = Plan([], {})
    for name, error in broken_builtins(catalog).items():
        plan.skipped.append(f"built-in plugin {name} failed to import and was not run ({error})")
    if not datasets:
        plan.not_default = [name for name in presets.datasets if name not in presets.default]
    for preset in (presets.datasets[name] for name in (datasets or presets.default)):
        chosen = requested if requested is not None else discover_remedies(catalog, preset, presets.exclude)
        runnable = []
        for parts in chosen:
            problem = _check_remedy(catalog, preset, parts)
            if problem:
                plan.skipped.append(f"{preset.name} {remedy_name(parts)}: {problem}")
                continue
            runnable.append(parts)
        plan.remedies[preset.name] = runnable
        for parts in runnable:
            name = remedy_name(parts)
            for seed in seeds or presets.seeds_of(preset):
                path = out / "runs" / preset.name / name / f"seed{seed}.json"
                plan.tasks.append(Task(preset.name, name, plugin_names(parts), seed, run_values(preset, parts, seed), path))
    return plan


def _check_remedy(catalog: Catalog, preset: DatasetPreset, parts: tuple[str, ...]) -> str | None:
    """Why this remedy cannot run on this dataset, or None (its settings resolve)."""
    for name in plugin_names(parts):
        if name not in catalog.plugins:
            return f"plugin {name} failed to import ({catalog.broken[name]})" if name in catalog.broken else f"plugin {name} is not installed"
    try:
        catalog.resolve(list(plugin_names(parts)), run_values(preset, parts, 0))
    except GancoreError as exc:
        return f"not run: {exc}"
    return None


# ------------------------------------------------------------------------------------ storage


def normalized(value: Any) -> Any:
    """JSON round trip: what a stored record holds (tuples become lists)."""
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=_json_default) + "\n"


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def request_key(request: dict) -> str:
    """A run's requested settings without its seed: equal for the seeds of one remedy."""
    request = normalized(request)
    request[CORE] = {key: value for key, value in request.get(CORE, {}).items() if key != "seed"}
    return json.dumps(request, sort_keys=True)


def is_done(task: Task) -> bool:
    """A stored, successful run of exactly this task's settings (and its samples)."""
    record = read_record(task.record)
    return bool(record) and record.get("status") == "ok" and record.get("request") == normalized(task.values) and task.samples.is_file()


def unstored_notes(tasks: list[Task], unstored: list[Task]) -> list[str]:
    """One note per row of the plan (``tasks``) with seeds in ``unstored``, so that a missing or thinner row says so."""
    planned: dict[tuple[str, str], int] = {}
    for task in tasks:
        planned[(task.dataset, task.remedy)] = planned.get((task.dataset, task.remedy), 0) + 1
    missing: dict[tuple[str, str], list[int]] = {}
    for task in unstored:
        missing.setdefault((task.dataset, task.remedy), []).append(task.seed)
    return [f"not run yet: {dataset} {remedy}, seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, sorted(seeds)))} "
            f"({'no row' if len(seeds) == planned[(dataset, remedy)] else 'its row has the other seeds'})"
            for (dataset, remedy), seeds in missing.items()]


def stored_records(out: Path) -> list[dict]:
    records = []
    for path in sorted((out / "runs").glob("*/*/seed*.json")):
        record = read_record(path)
        if record and {"dataset", "remedy", "seed", "status"} <= set(record):
            record["_path"] = str(path)
            records.append(record)
    return records


# ------------------------------------------------------------------------------- one run (worker)


_WORKER_CATALOG: Catalog | None = None


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    torch.set_num_threads(1)


def picture_view(points: torch.Tensor, modes: torch.Tensor | None, hq_norm: str) -> torch.Tensor:
    """What a panel of samples_<dataset>.png shows of points: themselves up to 2-D; above, two numbers.

    For hd1200 (every mode is one shift of all coordinates): x = the mean coordinate (which mode),
    y = the distance to the nearest mode in the HQ norm (L-inf there; HQ means y <= radius).
    """
    points = points.detach().float().cpu()
    if points.shape[1] <= 2 or modes is None:
        return points
    modes = modes.float().cpu()
    offsets = points - modes[nearest_modes(points, modes)]
    distance = offsets.abs().amax(dim=1) if hq_norm == "linf" else offsets.norm(dim=1)
    return torch.stack([points.mean(dim=1), distance], dim=1)


def execute(task: Task, catalog: Catalog | None = None) -> dict:
    """Run one task with the core trainer, store its record and samples, and return the record.

    A run whose loss or parameters become non-finite is a result, not a failure: it is stored
    with ``diverged`` (the core's message) and the metrics of its generator where it stopped
    (a diverged generator scores 0), so that it is not redone (it would diverge again).
    A run that raises anything else is stored as failed and retried on the next invocation.
    """
    from gancore.trainer import NonFiniteError, Trainer

    global _WORKER_CATALOG
    if catalog is None:
        _WORKER_CATALOG = _WORKER_CATALOG or Catalog.installed()
        catalog = _WORKER_CATALOG
    base = {"dataset": task.dataset, "remedy": task.remedy, "plugins": list(task.plugins), "seed": task.seed,
            "request": normalized(task.values), "gancore": __version__, "build": build_info()}
    started = time.perf_counter()
    try:
        run = catalog.resolve(list(task.plugins), task.values)
        diverged = None
        with run.reporting_plugin_faults():
            trainer = Trainer(run, output=None, progress=False)
            try:
                summary = trainer.fit()
            except NonFiniteError as exc:
                diverged = str(exc)
                summary = {"dataset": trainer.dataset.name, "plugins": list(run.config.plugins), "seed": trainer.train.seed, **trainer.evaluate()}
            wall = time.perf_counter() - started
            samples = trainer.sample(trainer.eval_samples, trainer.evaluation_generator())  # those the final evaluation scored
        samples = samples[torch.isfinite(samples.reshape(len(samples), -1)).all(dim=1)]
        if samples.dim() == 4:  # images: the first samples, as images, for a grid
            view = samples[:PICTURE_IMAGES].detach().float().cpu().numpy()
        else:
            view = picture_view(samples.reshape(len(samples), -1), trainer.dataset.modes, trainer.dataset.hq_norm).numpy().astype(np.float32)
        atomic_write(task.samples, lambda handle: np.save(handle, view))
        record = {**base, "status": "ok", "settings": run.config.to_toml_dict(), "metrics": summary,
                  "history": trainer.history, "wall_seconds": round(wall, 3)}
        if diverged:
            record["diverged"] = diverged
    except Exception as exc:  # a broken plugin must not stop the other runs
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        record = {**base, "status": "failed", "error": f"{type(exc).__name__}: {message}"[:500],
                  "wall_seconds": round(time.perf_counter() - started, 3)}
    write_text(task.record, dump_json(record))
    return record


# ----------------------------------------------------------------------------------- estimate


def probe_seconds(catalog: Catalog, task: Task, datasets: dict, budget: float = 0.3) -> tuple[float, bool]:
    """Estimated wall seconds of ``task``'s run from a few timed steps; and whether a plugin runs its own fit loop."""
    from gancore.trainer import Trainer

    started = time.perf_counter()
    run = catalog.resolve(list(task.plugins), task.values)
    build_seconds = time.perf_counter() - started
    train = run.config.train
    key = (task.dataset, train.n_train, task.seed, train.image_size)
    if key not in datasets:
        started = time.perf_counter()
        datasets[key] = (load_dataset(task.dataset, "", train.n_train, task.seed, train.image_size), time.perf_counter() - started)
    dataset, data_seconds = datasets[key]
    started = time.perf_counter()
    trainer = Trainer(run, dataset=dataset, output=None, progress=False)
    build_seconds += time.perf_counter() - started
    trainer.train_step()  # warm-up
    steps, spent = 0, 0.0
    while steps < 5 and (steps < 1 or spent < budget):
        started = time.perf_counter()
        trainer.train_step()
        spent += time.perf_counter() - started
        steps += 1
    started = time.perf_counter()
    trainer.evaluate()
    eval_seconds = time.perf_counter() - started
    total, every = run.config.train.steps, run.config.train.eval_every
    evaluations = (total // every if every else 0) + 1
    own_fit = bool(run.hook.gancore_fit.get_hookimpls())
    return data_seconds + build_seconds + total * spent / steps + evaluations * eval_seconds, own_fit


def estimate(catalog: Catalog, pending: list[Task], stored: list[dict], probe: bool) -> list[str]:
    """Set ``task.estimate`` (seconds) on pending tasks; return notes on how some were estimated.

    A remedy with stored runs of the same settings is estimated by their mean wall time; the
    others by timing a few of their steps (and one evaluation) in this process.
    """
    measured: dict[str, list[float]] = {}
    for record in stored:
        if record.get("status") == "ok":
            measured.setdefault(request_key(record["request"]), []).append(record["wall_seconds"])
    groups: dict[tuple[str, str], list[Task]] = {}
    for task in pending:
        groups.setdefault((task.dataset, task.remedy), []).append(task)
    datasets: dict = {}
    notes = []
    bar = tqdm(groups.items(), desc="timing steps", unit="remedy", leave=False, disable=not probe)
    for (dataset, remedy), tasks in bar:
        known = measured.get(request_key(tasks[0].values))
        if known:
            seconds = statistics.fmean(known)
        elif probe:
            bar.set_postfix_str(f"{dataset} {remedy}")
            try:
                seconds, own_fit = probe_seconds(catalog, tasks[0], datasets)
            except Exception as exc:  # the run itself will fail and say why
                notes.append(f"{dataset} {remedy}: could not time a step ({type(exc).__name__}: {exc})")
                continue
            if own_fit:
                notes.append(f"{dataset} {remedy}: runs its own fit loop; its estimate assumes `steps` steps in all")
        else:
            continue
        for task in tasks:
            task.estimate = seconds
    return notes


def makespan(seconds: list[float], lanes: int) -> float:
    """Elapsed time of running jobs longest first, ``lanes`` at a time (the order the pool gets them)."""
    finish = [WORKER_START_SECONDS] * max(1, min(lanes, len(seconds)))
    for job in sorted(seconds, reverse=True):
        heapq.heappush(finish, heapq.heappop(finish) + job)
    return max(finish) if seconds else 0.0


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


# ------------------------------------------------------------------------------------- running


def run_tasks(tasks: list[Task], workers: int, catalog: Catalog) -> tuple[list[dict], bool]:
    """Run tasks (longest estimate first) with a progress bar over finished runs; return (records, interrupted)."""
    tasks = sorted(tasks, key=lambda task: -(task.estimate or 0.0))
    records: list[dict] = []
    bar = tqdm(total=len(tasks), desc="runs", unit="run", dynamic_ncols=True)

    def finished(record: dict) -> None:
        records.append(record)
        bar.update(1)
        if record["status"] == "ok":
            metrics = record["metrics"]
            quality = (f"HQ {metrics['hq_percent']:.1f}%" if "hq_percent" in metrics
                       else f"KL {metrics['reverse_kl']:.3f}" if metrics.get("reverse_kl") is not None else "KL n/a")
            bar.set_postfix_str(
                f"last: {record['dataset']} {record['remedy']} s{record['seed']} "
                f"{metrics.get('modes_captured', '?')}/{metrics.get('n_modes', '?')} modes "
                f"{quality} {record['wall_seconds']:.0f}s"
            )
        else:
            bar.write(f"failed: {record['dataset']} {record['remedy']} seed {record['seed']}: {record['error']}")

    try:
        with bar:
            if workers == 1:
                torch.set_num_threads(1)
                for task in tasks:
                    finished(execute(task, catalog))
            else:
                context = multiprocessing.get_context("spawn")
                pool = context.Pool(workers, initializer=_init_worker)
                try:
                    for record in pool.imap_unordered(execute, tasks, chunksize=1):
                        finished(record)
                    pool.close()
                except BaseException:
                    pool.terminate()
                    raise
                finally:
                    pool.join()
    except KeyboardInterrupt:
        return records, True
    return records, False


# ------------------------------------------------------------------------------------- report


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    if not values:
        return math.nan, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Row:
    """One remedy on one dataset, over its stored seeds."""

    remedy: str
    plugins: list[str]
    records: list[dict]

    def values(self, key: str) -> list[float]:
        return [record["metrics"][key] for record in self.records if record["metrics"].get(key) is not None]

    @property
    def seeds(self) -> list[int]:
        return sorted(record["seed"] for record in self.records)

    @property
    def n_modes(self) -> int:
        return self.records[0]["metrics"]["n_modes"]

    @property
    def modes(self) -> tuple[float, float | None]:
        return _mean_std(self.values("modes_captured"))

    @property
    def hq(self) -> tuple[float, float | None]:
        return _mean_std(self.values("hq_percent"))

    @property
    def kl(self) -> tuple[float, float | None]:
        """Mean and std of reverse KL over the seeds that have one (NaN when none has)."""
        return _mean_std(self.values("reverse_kl"))

    @property
    def steps(self) -> str:
        """Training steps of the seeds ("a/b" if they differ)."""
        return "/".join(str(n) for n in sorted({record["settings"][CORE]["steps"] for record in self.records}))

    @property
    def wall(self) -> float:
        return statistics.fmean(record["wall_seconds"] for record in self.records)


def _pm(mean: float, std: float | None, digits: int) -> str:
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _kl_cell(row: Row, with_std: bool = False) -> str:
    kls = row.values("reverse_kl")
    if not kls:
        return "n/a"
    text = _pm(*row.kl, 3) if with_std else f"{statistics.fmean(kls):.3f}"
    return text if len(kls) == len(row.records) else f"{text} ({len(kls)} of {len(row.records)}†)"


def has_hq(rows: list[Row]) -> bool:
    """Whether the dataset's protocol scores high quality (the mixtures); if not, modes and KL are its metrics (stacked-digits)."""
    return any("hq_percent" in record["metrics"] for row in rows for record in row.records)


def _kl_key(row: Row) -> float:
    """Reverse KL for ranking: lower is better, none is worst."""
    kl = row.kl[0]
    return math.inf if math.isnan(kl) else kl


def _order(remedy: str) -> tuple:
    return (remedy != VANILLA, remedy.count("+"), remedy)


def load_published(path: Path = PUBLISHED) -> list[dict]:
    try:
        return tomllib.loads(path.read_text()).get("row", [])
    except (OSError, tomllib.TOMLDecodeError):
        return []


PUBLISHED_VALUES = ("modes", "hq_percent", "reverse_kl")
DEFAULT_PUBLISHED_VALUES = ["modes", "hq_percent"]


def load_published_datasets(path: Path = PUBLISHED) -> dict[str, dict]:
    """published.toml's optional ``[datasets.NAME]`` tables: ``values`` (what a row's numbers for NAME
    are, default ``["modes", "hq_percent"]``), ``label`` (shown in each published row of NAME) and
    ``note`` (printed under NAME's table)."""
    try:
        tables = tomllib.loads(path.read_text()).get("datasets", {})
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    formats = {}
    for name, table in (tables.items() if isinstance(tables, dict) else ()):
        if not isinstance(table, dict):
            continue
        values = table.get("values", DEFAULT_PUBLISHED_VALUES)
        if not isinstance(values, list) or not values or not all(value in PUBLISHED_VALUES for value in values):
            values = DEFAULT_PUBLISHED_VALUES
        formats[name] = {"values": list(values), "label": str(table.get("label", "")), "note": str(table.get("note", ""))}
    return formats


def published_values(paper: dict, dataset: str, formats: dict[str, dict]) -> dict[str, float] | None:
    """A published row's numbers for ``dataset`` by name (modes, hq_percent, reverse_kl), or None if it has none."""
    numbers = paper.get(dataset)
    if not isinstance(numbers, list):
        return None
    names = formats.get(dataset, {}).get("values", DEFAULT_PUBLISHED_VALUES)
    return dict(zip(names, numbers))


def _settings_lines(rows: list[Row]) -> tuple[str, list[str]]:
    """The core settings shared by every row, and per remedy what its resolved settings change."""
    def flat(record: dict) -> dict[str, Any]:
        settings = record.get("settings", {})
        items = {f"train.{k}": v for k, v in settings.get(CORE, {}).items() if k not in ("seed", "dataset", "data")}
        for plugin, options in settings.get("plugins", {}).items():
            items.update({f"{plugin}.{k}": v for k, v in options.items()})
        return items

    shared_request = None
    for row in rows:
        for record in row.records:
            request = {k: v for k, v in record["request"].get(CORE, {}).items() if k not in ("seed", "dataset")}
            shared_request = request if shared_request is None else {k: v for k, v in shared_request.items() if request.get(k) == v}
    base = next((flat(row.records[0]) for row in rows if row.remedy == VANILLA), {})
    if base:
        # a core option added after vanilla's runs had, for them, the value it defaults to
        base = {**{f"{CORE}.{name}": normalized(option.default) for name, option in core_options().options.items()}, **base}
    lines = []
    for row in rows:
        if row.remedy != VANILLA:
            settings = flat(row.records[0])
            changed = {k: v for k, v in settings.items() if base.get(k) != v}
            text = ", ".join(f"{k}={_show(v)}" for k, v in sorted(changed.items(), key=lambda kv: (not kv[0].startswith("train."), kv[0])))
            lines.append(f"- {row.remedy}: {text or 'no option, no change'}")
        elif len({request_key(record["request"]) for record in row.records}) > 1:
            lines.append(f"- {row.remedy}:")
        if len({request_key(record["request"]) for record in row.records}) > 1:
            lines.append("  - **its seeds were run with different settings**: rerun the benchmark to make them uniform")
    shared = ", ".join(f"{k}={_show(v)}" for k, v in sorted((shared_request or {}).items()))
    return shared, lines


def _plugin_metric_lines(rows: list[Row]) -> list[str]:
    """Per remedy, the scalar metrics its plugins added to the final evaluation (``gancore_evaluate``).

    A metric every row reports is the core's (modes, HQ, ...); losses are training logs, not evaluations.
    """
    core = set.intersection(*(set(record["metrics"]) for row in rows for record in row.records))
    lines = []
    for row in rows:
        names = sorted({
            key for record in row.records for key, value in record["metrics"].items()
            if key not in core and not key.startswith("loss_") and isinstance(value, (int, float)) and not isinstance(value, bool)
        })
        cells = [f"{key} {_pm(*_mean_std(row.values(key)), 3)}" for key in names]
        if cells:
            lines.append(f"- {row.remedy}: {', '.join(cells)}")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _protocol_without_hq(dataset: str, rows: list[Row]) -> str:
    """The protocol of a dataset scored by a classifier (gancore.images.digit_mode_coverage), not by distance to modes."""
    n_modes = rows[0].n_modes
    samples = sorted({record["metrics"].get("n_samples") for row in rows for record in row.records} - {None})
    drawn = "/".join(f"{n:,}" for n in samples) or "the protocol's number of"
    return (f"Protocol (`gancore.images.digit_mode_coverage`): each run draws {drawn} samples of its final generator; every "
            f"channel of a sample is classified by gancore's digit classifier (a small CNN trained once on the training split "
            f"of scikit-learn's digits and cached), and a sample's mode is the tuple of its channels' classes ({n_modes} modes). "
            f"A mode is captured if at least one sample falls in it. Reverse KL: KL(histogram of samples over modes ‖ uniform), "
            f"nats (0 is perfect). There is no high-quality (HQ) measure: the HQ column is \"—\". "
            f"Our rows: mean ± std over seeds (std with n − 1), reverse KL included.")


def build_rows(records: list[dict]) -> dict[str, list[Row]]:
    by_dataset: dict[str, dict[str, Row]] = {}
    for record in records:
        if record.get("status") != "ok":
            continue
        rows = by_dataset.setdefault(record["dataset"], {})
        rows.setdefault(record["remedy"], Row(record["remedy"], record["plugins"], [])).records.append(record)
    return {dataset: sorted(rows.values(), key=lambda row: _order(row.remedy)) for dataset, rows in by_dataset.items()}


def dataset_order(names: Iterable[str], presets: Presets | None) -> list[str]:
    preferred = list(presets.datasets) if presets else []
    preferred += [name for name in DATASET_NAMES if name not in preferred]
    return sorted(names, key=lambda name: (preferred.index(name) if name in preferred else len(preferred), name))


def write_report(out: Path, presets: Presets, goals: dict[str, Goal | float], argv: list[str], notes: list[str]) -> Path:
    """Regenerate RESULTS.md, results.json and samples_<dataset>.png in ``out`` from every stored run."""
    records = stored_records(out)
    rows_by_dataset = build_rows(records)
    datasets = dataset_order(rows_by_dataset, presets)
    published = load_published()
    formats = load_published_datasets()
    failed = [r for r in records if r.get("status") == "failed"]
    invocations = _read_invocations(out)
    command = " ".join([COMMAND, *map(shlex.quote, argv)])
    rel_out = _relative(out)

    lines = [
        "# Does the remedy recover the modes? Mode coverage of every remedy, with the papers' figures",
        "",
        f"> **Generated file: do not edit by hand.** Produced by `{command}` (gancore {__version__}) from the "
        f"runs stored in `{_relative(out / 'runs')}/`; rerun the command to regenerate it.",
        "",
        "Protocol (VEEGAN; `../shared/PROTOCOLS.md`): each run draws 2500 samples of its final generator. A sample is high "
        "quality (HQ) if it lies within 3 std of its nearest mode (ring8: 0.06, grid25: 0.15, L2); for hd1200 we read "
        "VEEGAN's \"10 std\" as *every coordinate within 10 of the nearest mean* (L∞; nearest mean by L2), a reading no "
        "public code states. A mode is captured if it is the nearest mode of at least one HQ sample. Reverse KL: "
        "KL(histogram of HQ samples over modes ‖ uniform), nats (0 is perfect; n/a when no sample is HQ). "
        "Our rows: mean ± std over seeds (std with n − 1); wall time: building and training one run and its final "
        "evaluation, on one CPU thread. Published rows are the papers' means (PacGAN: 10 runs).",
        "",
    ]
    if not datasets:
        lines += ["No run is stored yet.", ""]
    for dataset in datasets:
        rows = rows_by_dataset[dataset]
        n_modes = rows[0].n_modes
        shared, remedy_settings = _settings_lines(rows)
        hq_metric = has_hq(rows)
        lines += [f"## {dataset}", ""]
        if not hq_metric:
            lines += [_protocol_without_hq(dataset, rows), ""]
        lines += [f"Settings shared by every remedy: {shared or 'core defaults'}.", ""]
        # steps differ where a preset's remedy_train gives a remedy its own budget: then they get a column
        steps_column = len({row.steps for row in rows}) > 1
        lines += [f"| remedy | modes (of {n_modes}) | HQ % | reverse KL |{' steps |' if steps_column else ''} wall s / run | seeds |",
                  "|---|---|---|---|" + ("---|" if steps_column else "") + "---|---|"]
        for row in rows:
            modes, hq = row.modes, row.hq
            diverged = sum(1 for record in row.records if record.get("diverged"))
            name = row.remedy + (f" ({diverged} diverged‡)" if diverged else "")
            hq_cell = _pm(*hq, 1) if hq_metric else "—"
            steps_cell = f" {row.steps} |" if steps_column else ""
            lines.append(f"| {name} | {_pm(*modes, 1)} | {hq_cell} | {_kl_cell(row, with_std=not hq_metric)} |{steps_cell} {row.wall:.1f} | {len(row.records)} |")
        note, label = formats.get(dataset, {}).get("note", ""), formats.get(dataset, {}).get("label", "")
        label = f"*published ({label}):*" if label else "*published:*"
        any_published = False
        for paper in published:
            numbers = published_values(paper, dataset, formats)
            if numbers is not None:
                any_published = True
                cells = [f"{numbers[key]:g}" if key in numbers else "—" for key in PUBLISHED_VALUES]
                cells += ["—"] * steps_column
                lines.append(f"| {label} {paper['method']} ({paper['source']}) | {' | '.join(cells)} | — | {paper.get('runs', '—')} |")
        if any(len(row.values("reverse_kl")) < len(row.records) for row in rows):
            lines += ["", "† reverse KL averaged over the seeds with at least one HQ sample." if hq_metric
                      else "† reverse KL averaged over the seeds with at least one finite sample."]
        if note and any_published:
            lines += ["", f"*Published* rows: {note}"]
        if any(record.get("diverged") for row in rows for record in row.records):
            lines += ["", "‡ seeds whose loss became NaN/Inf (the core stops them, `train.on_nonfinite = \"stop\"`); "
                      "they count with the metrics of their generator where training stopped."]
        if remedy_settings:
            lines += ["", "What each remedy's resolved settings change from vanilla's (plugin options; core settings a plugin suggested):", "", *remedy_settings]
        plugin_metrics = _plugin_metric_lines(rows)
        if plugin_metrics:
            lines += ["", "What the plugins add to the final evaluation (mean ± std over seeds; meanings in each plugin's docs, `gancore plugins`):", "", *plugin_metrics]
        picture = out / f"samples_{dataset}.png"
        if draw_dataset(picture, dataset, rows):
            lines += ["", f"![samples of every remedy on {dataset}]({picture.name})"]
        lines.append("")

    lines += ["## Notes", "", "Generated from the numbers above.", ""]
    for dataset in datasets:
        lines += [f"### {dataset}", "", *_dataset_notes(dataset, rows_by_dataset[dataset], goals.get(dataset), published, formats), ""]
    lines += ["### Runs and time", ""]
    ok = [r for r in records if r.get("status") == "ok"]
    total = sum(r["wall_seconds"] for r in ok)
    per_dataset = ", ".join(f"{d} {duration(sum(r['wall_seconds'] for r in ok if r['dataset'] == d))}" for d in datasets)
    lines.append(f"- {len(ok)} runs stored; sum of their wall times {duration(total)}" + (f" ({per_dataset})" if per_dataset else "") + ".")
    if invocations:
        last = invocations[-1]
        lines.append(
            f"- Elapsed time of the invocations that ran them: {duration(sum(i['elapsed_seconds'] for i in invocations))} in all "
            f"({len(invocations)} invocation{'s' if len(invocations) != 1 else ''}); the last ran {last['ran']} runs in "
            f"{duration(last['elapsed_seconds'])} with {last['workers']} workers on a machine with {last.get('cpus', '?')} CPUs."
        )
    for record in ok:
        if record.get("diverged"):
            lines.append(f"- diverged: {record['dataset']} {record['remedy']} seed {record['seed']}: {record['diverged']}")
    for record in failed:
        lines.append(f"- **failed**: {record['dataset']} {record['remedy']} seed {record['seed']}: {record['error']} (retried on the next invocation)")
    for note in notes:
        lines.append(f"- {note}")
    lines.append("")
    write_text(out / "RESULTS.md", "\n".join(lines))

    results = [
        {key: record.get(key) for key in ("dataset", "remedy", "plugins", "seed", "request", "settings", "metrics", "wall_seconds", "gancore", "build")}
        for record in sorted(ok, key=lambda r: (datasets.index(r["dataset"]), _order(r["remedy"]), r["seed"]))
    ]
    write_text(out / "results.json", dump_json(results))
    return out / "RESULTS.md"


@dataclass(frozen=True)
class _SecondMetric:
    """What the notes weigh against modes captured: HQ % on the mixtures, reverse KL where the protocol
    scores no HQ (stacked-digits)."""

    name: str  # short, in the group labels: "Beat vanilla on NAME only"
    title: str  # in "Ours vs the papers (modes / TITLE)"
    key: str  # in a record's metrics and in a paper's published values
    higher_is_better: bool
    digits: int
    unit: str  # after our values and the papers'
    phrase: str  # a value in a sentence; {} is the value with its unit
    difference_unit: str  # after a remedy's difference from vanilla
    both_label: str  # the group of remedies better on modes and on this metric

    def of(self, row: Row) -> tuple[float, float | None]:
        return _mean_std(row.values(self.key))

    def rank(self, row: Row) -> float:
        """Higher ranks better; a row without the metric ranks last."""
        mean = self.of(row)[0]
        return -math.inf if math.isnan(mean) else mean if self.higher_is_better else -mean

    def text(self, value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.{self.digits}f}{self.unit}"

    def difference(self, value: float) -> str:
        return f"{self.name} n/a" if math.isnan(value) else f"{value:+.{self.digits}f} {self.difference_unit}"


_HQ = _SecondMetric(name="HQ", title="HQ", key="hq_percent", higher_is_better=True, digits=1, unit="%", phrase="{} HQ",
                    difference_unit="HQ points", both_label="Beat vanilla on modes and HQ")
_REVERSE_KL = _SecondMetric(name="KL", title="reverse KL", key="reverse_kl", higher_is_better=False, digits=3, unit="", phrase="reverse KL {}",
                            difference_unit="KL", both_label="Beat vanilla on modes and KL (more modes, lower reverse KL)")


def _dataset_notes(dataset: str, rows: list[Row], goal: Goal | float | None, published: list[dict], formats: dict[str, dict] | None = None) -> list[str]:
    """The notes of a dataset: remedies against vanilla by modes and the dataset's second metric, the goal, the papers."""
    if isinstance(goal, (int, float)):
        goal = Goal(hq_percent=float(goal))
    formats = formats or {}
    metric = _HQ if has_hq(rows) else _REVERSE_KL
    notes = []
    n_modes = rows[0].n_modes
    vanilla = next((row for row in rows if row.remedy == VANILLA), None)
    others = [row for row in rows if row.remedy != VANILLA]
    if vanilla is None:
        notes.append("- No vanilla run is stored: nothing to compare the remedies with.")
    else:
        (v_modes, v_modes_std), (v_value, v_std) = vanilla.modes, metric.of(vanilla)
        notes.append(f"- vanilla: {v_modes:.1f}/{n_modes} modes, {metric.phrase.format(metric.text(v_value))}.")
        groups: dict[str, list[str]] = {"both": [], "modes": [], "metric": [], "neither": []}
        by_name = {row.remedy: row for row in rows}
        for row in others:
            # a remedy with core options of its own (a train[...] part) is compared with the vanilla of
            # the same options where that is stored: the same nets, only the plugins differ
            own = remedy_name(part for part in parse_remedy(row.remedy) if part_options(part)[0] == CORE)
            baseline = by_name.get(own, vanilla) if own != row.remedy else vanilla
            (m, m_std), (value, std) = row.modes, metric.of(row)
            (b_modes_mean, b_modes_std), (b_value, b_std) = baseline.modes, metric.of(baseline)
            dm, dv = m - b_modes_mean, value - b_value  # dv is NaN when either lacks the metric
            better = metric.rank(row) > metric.rank(baseline)
            close = lambda diff, a, b: abs(diff) <= max(a or 0.0, b or 0.0)  # noqa: E731
            flag = " (within one std)" if (dm > 0 and close(dm, m_std, b_modes_std)) or (better and close(dv, std, b_std)) else ""
            against = "" if baseline is vanilla else f" against {baseline.remedy}"
            text = f"{row.remedy} ({dm:+.1f} modes, {metric.difference(dv)}{against}){flag}"
            groups["both" if dm > 0 and better else "modes" if dm > 0 else "metric" if better else "neither"].append(text)
        labels = {"both": metric.both_label, "modes": "Beat vanilla on modes only",
                  "metric": f"Beat vanilla on {metric.name} only", "neither": "No better than vanilla on either"}
        for key, label in labels.items():
            if groups[key]:
                notes.append(f"- {label}: {'; '.join(groups[key])}.")
        if not others:
            notes.append("- No remedy besides vanilla is stored.")
    best = max(rows, key=lambda row: (row.modes[0], metric.rank(row)))
    b_modes, b_value = best.modes[0], metric.of(best)[0]
    b_text = metric.phrase.format(metric.text(b_value))
    if goal is not None:
        target = goal.target(n_modes)
        known = lambda mean: None if math.isnan(mean) else mean  # noqa: E731  (NaN: no seed measured it)
        meets = [row for row in rows if goal.met(n_modes, row.modes[0], known(row.hq[0]), known(row.kl[0]))]
        per_seed = sum(1 for r in best.records
                       if goal.met(n_modes, r["metrics"]["modes_captured"], r["metrics"].get("hq_percent"), r["metrics"].get("reverse_kl")))
        if meets:
            # a row with fewer seeds than the others has met it on a smaller sample: say so
            full = max(len(row.records) for row in rows)
            named = [row.remedy + ("" if len(row.records) == full else f" (on {len(row.records)} of {full} seeds only)")
                     for row in meets]
            notes.append(f"- Goal ({target}) **met** by: {', '.join(named)}.")
        else:
            misses = []
            needed = n_modes if goal.modes is None else min(goal.modes, n_modes)
            if b_modes < needed:
                misses.append(f"{needed - b_modes:.1f} modes short")
            # a goal names HQ and KL whichever metric the notes rank by; NaN: not measured, a miss
            b_hq, b_kl = best.hq[0], best.kl[0]
            if goal.hq_percent is not None and not b_hq >= goal.hq_percent:
                misses.append("no HQ measure on this dataset" if math.isnan(b_hq) else f"{goal.hq_percent - b_hq:.1f} HQ points short")
            if goal.kl is not None and not _kl_key(best) <= goal.kl:
                misses.append("no reverse KL" if math.isnan(b_kl) else f"reverse KL {b_kl - goal.kl:.3f} above")
            notes.append(f"- Goal ({target}) **not met**. Best remedy: {best.remedy}, {b_modes:.1f}/{n_modes} modes and {b_text}: "
                         f"{' and '.join(misses)}; {per_seed} of its {len(best.records)} seeds meet the goal.")
            # the best by modes may trade the second metric away: name the best by that metric within one mode of it
            close = [row for row in rows if row.modes[0] >= b_modes - 1 and metric.rank(row) > metric.rank(best)]
            if close:
                runner = max(close, key=metric.rank)
                notes.append(f"  - Best {metric.name} within one mode of it: {runner.remedy}, {runner.modes[0]:.1f}/{n_modes} modes and "
                             f"{metric.phrase.format(metric.text(metric.of(runner)[0]))}.")
    else:
        notes.append(f"- Best remedy: {best.remedy}, {b_modes:.1f}/{n_modes} modes and {b_text} (no goal set for {dataset}).")
    comparisons = []
    for paper, numbers in _comparable_papers(dataset, published, formats, metric):
        counterparts = paper.get("remedy", [])
        counterparts = [counterparts] if isinstance(counterparts, str) else counterparts
        for row in (row for row in rows if row.remedy in counterparts):
            comparisons.append(f"{row.remedy} {row.modes[0]:.1f} / {metric.text(metric.of(row)[0])} vs {paper['method']} "
                               f"{numbers['modes']:g} / {numbers[metric.key]:g}{metric.unit} ({paper['source']})")
    label = formats.get(dataset, {}).get("label", "")  # the papers' dataset, where it is not ours
    if comparisons:
        notes.append(f"- Ours vs the papers (modes / {metric.title}): {'; '.join(comparisons)}. Settings differ from the papers' (steps, nets, "
                     f"batch): see above{f'; and the papers measured {label}, not this dataset' if label else ''}.")
    beaten = _published_rows_beaten(dataset, rows, published, formats, metric)
    if beaten:
        better = "higher HQ" if metric.higher_is_better else f"lower {metric.title}"
        notes.append(f"- Published rows and the remedies that beat them on both columns (more modes than the paper's, or all {n_modes}, "
                     f"and {better}; means){f'; the papers measured {label}' if label else ''}:")
        notes += [f"  - {line}" for line in beaten]
    return notes


def _comparable_papers(dataset: str, published: list[dict], formats: dict[str, dict], metric: _SecondMetric):
    """(paper, its numbers) for each published row that reports modes and ``metric`` on ``dataset``."""
    for paper in published:
        numbers = published_values(paper, dataset, formats)
        if numbers is not None and "modes" in numbers and metric.key in numbers:
            yield paper, numbers


def _published_rows_beaten(dataset: str, rows: list[Row], published: list[dict], formats: dict[str, dict], metric: _SecondMetric) -> list[str]:
    """Per published row of ``dataset``: which of ours beat it on modes and on ``metric``, or "none".
    Modes tie only at full coverage, where no row can have more."""
    n_modes = rows[0].n_modes
    lines = []
    for paper, numbers in _comparable_papers(dataset, published, formats, metric):
        paper_value = numbers[metric.key]
        winners = []
        for row in rows:
            modes_mean, value = row.modes[0], metric.of(row)[0]
            more_modes = modes_mean > numbers["modes"] or modes_mean == n_modes
            if more_modes and not math.isnan(value) and (value > paper_value if metric.higher_is_better else value < paper_value):
                winners.append(row.remedy)
        lines.append(f"{paper['method']} {numbers['modes']:g} / {paper_value:g}{metric.unit} ({paper['source']}): {', '.join(winners) or 'none'}.")
    return lines


def draw_dataset(path: Path, dataset: str, rows: list[Row]) -> bool:
    """One panel per remedy: samples of one seed (0 if stored) over the data, or for images a grid of
    the first samples. False if nothing to draw."""
    import matplotlib.pyplot as plt

    from gancore.report import draw_samples

    panels = []
    for row in rows:
        record = next((r for r in row.records if r["seed"] == PICTURE_SEED), None) or min(row.records, key=lambda r: r["seed"])
        samples_path = Path(record["_path"]).with_suffix(".samples.npy")
        if samples_path.is_file():
            panels.append((row, record, torch.from_numpy(np.load(samples_path, allow_pickle=False))))
    if not panels:
        return False
    if panels[0][2].dim() == 4:
        return _draw_image_panels(path, dataset, panels)
    columns = min(4, len(panels))
    rows_n = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows_n, columns, figsize=(3.4 * columns, 3.5 * rows_n), squeeze=False)
    cache: dict = {}
    for index, (row, record, samples) in enumerate(panels):
        axis = axes[index // columns][index % columns]
        view = _dataset_view(record, cache)
        metrics = record["metrics"]
        title = f"{_panel_name(row, record, panels)}\n{metrics['modes_captured']}/{metrics['n_modes']} modes, HQ {metrics['hq_percent']:.1f}%"
        if len(samples):
            draw_samples(axis, samples, view, title, legend=index == 0)
        else:
            axis.set_title(title + "\nno finite sample", fontsize=9)
        if _load_cached(record, cache).dim > 2:
            axis.axhline(view.radius, color="grey", lw=0.8, ls=":")
            axis.set_xlabel("mean coordinate (which mode)")
            axis.set_ylabel(f"{'L∞' if view.hq_norm == 'linf' else 'L2'} distance to nearest mean")
    for index in range(len(panels), rows_n * columns):
        axes[index // columns][index % columns].axis("off")
    extra = "; dotted line: the HQ radius" if any(_load_cached(record, cache).dim > 2 for _, record, _ in panels) else ""
    figure.suptitle(f"{dataset}: samples of each remedy {_steps_phrase(panels)} (orange) over the data (blue){extra}", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / figure.get_figheight()))  # the suptitle's line, clear of the first titles
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    return True


def _panel_steps(record: dict) -> Any:
    return record.get("settings", {}).get(CORE, {}).get("steps", "?")


def _steps_phrase(panels: list[tuple[Row, dict, torch.Tensor]]) -> str:
    steps = {_panel_steps(record) for _, record, _ in panels}
    return f"after {steps.pop()} steps" if len(steps) == 1 else "after the steps in its title"


PANEL_NAME_CHARS = 24  # a longer remedy name puts its seed on the next line, clear of the next panel's title
PANEL_LINE_CHARS = 44  # what one line of a panel's title holds at its font size, clear of the next panel


def _panel_name(row: Row, record: dict, panels: list[tuple[Row, dict, torch.Tensor]]) -> str:
    """Remedy and seed; and its steps when the panels' steps differ."""
    steps = "" if len({_panel_steps(r) for _, r, _ in panels}) == 1 else f", {_panel_steps(record)} steps"
    gap = "\n" if len(row.remedy) > PANEL_NAME_CHARS else " "
    return f"{_wrapped(row.remedy)}{gap}(seed {record['seed']}{steps})"


def _wrapped(remedy: str) -> str:
    """``remedy`` in lines of at most PANEL_LINE_CHARS, broken after a ``+`` or ``,`` (names have no spaces)."""
    lines = [""]
    for piece in re.findall(r"[^+,]*[+,]?", remedy):
        if lines[-1] and len(lines[-1]) + len(piece) > PANEL_LINE_CHARS:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _draw_image_panels(path: Path, dataset: str, panels: list[tuple[Row, dict, torch.Tensor]]) -> bool:
    """samples_<dataset>.png of an image dataset: per remedy a grid of its stored samples (up to PICTURE_IMAGES)."""
    import matplotlib.pyplot as plt

    from gancore.report import draw_samples

    columns = min(4, len(panels))
    rows_n = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows_n, columns, figsize=(3.4 * columns, 3.7 * rows_n), squeeze=False)
    for index, (row, record, samples) in enumerate(panels):
        axis = axes[index // columns][index % columns]
        metrics = record["metrics"]
        kl = metrics.get("reverse_kl")
        title = f"{_panel_name(row, record, panels)}\n{metrics['modes_captured']}/{metrics['n_modes']} modes, KL {'n/a' if kl is None else f'{kl:.2f}'}"
        if len(samples):
            draw_samples(axis, samples, Dataset(dataset, samples[:1]), title, legend=False)
        else:
            axis.set_title(title + "\nno finite sample", fontsize=9)
            axis.axis("off")
    for index in range(len(panels), rows_n * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle(f"{dataset}: the first {PICTURE_IMAGES} samples of each remedy {_steps_phrase(panels)}", fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    return True


def _load_cached(record: dict, cache: dict) -> Dataset:
    train = record.get("settings", {}).get(CORE, {})
    key = (record["dataset"], train.get("n_train", 20000), record["seed"])
    if key not in cache:
        cache[key] = load_dataset(record["dataset"], "", key[1], record["seed"])
    return cache[key]


def _dataset_view(record: dict, cache: dict) -> Dataset:
    """The dataset as :func:`picture_view` shows it (itself up to 2-D)."""
    data = _load_cached(record, cache)
    if data.dim <= 2 or data.modes is None:
        return data
    points = picture_view(data.points[:5000], data.modes, data.hq_norm)
    modes = torch.stack([data.modes.mean(dim=1), torch.zeros(len(data.modes))], dim=1)
    return Dataset(data.name, points, modes, data.radius, data.hq_norm)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_invocations(out: Path) -> list[dict]:
    path = out / "runs" / "invocations.jsonl"
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def _log_invocation(out: Path, argv: list[str], workers: int, ran: int, elapsed: float) -> None:
    entry = {"argv": argv, "workers": workers, "ran": ran, "elapsed_seconds": round(elapsed, 1), "cpus": os.cpu_count(),
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = out / "runs" / "invocations.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


# ------------------------------------------------------------------------------------------ CLI


def _names(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    # commas inside a variant's brackets separate its options, not names: unrolled[steps=10,backprop=false]
    return [name.strip() for value in values for name in re.split(r",(?![^\[]*\])", value) if name.strip()]


def _seeds(values: list[str] | None) -> list[int] | None:
    if values is None:
        return None
    seeds = []
    for text in _names(values):
        low, dash, high = text.partition("-")
        try:
            seeds += list(range(int(low), int(high) + 1)) if dash else [int(text)]
        except ValueError:
            raise BenchmarkError(f"--seeds: {text!r} is not a seed or a range like 0-4") from None
    if not seeds or min(seeds) < 0:
        raise BenchmarkError("--seeds: give seeds >= 0, e.g. --seeds 0,1 or --seeds 0-4")
    return list(dict.fromkeys(seeds))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=COMMAND,
        description="Mode coverage of vanilla and every built-in remedy (VEEGAN protocol), with the papers' figures.",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: the preset's [quick] overrides (ring8, one seed, few steps), into benchmarks/quick/")
    p.add_argument("--datasets", nargs="+", metavar="NAME", help="only these datasets (comma- or space-separated)")
    p.add_argument("--plugins", nargs="+", metavar="REMEDY", help="only these remedies: vanilla, NAME, NAME+NAME for a combination, NAME[OPTION=VALUE,...] for a variant (quote it in a shell)")
    p.add_argument("--seeds", nargs="+", metavar="SEED", help="only these seeds, e.g. 0,1 or 0-4 (default: the preset's)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: the number of CPUs; 1 runs in this process)")
    p.add_argument("--presets", type=Path, default=DEFAULT_PRESETS, help="presets file (default: benchmarks/presets.toml)")
    p.add_argument("--out", type=Path, help="output directory (default: benchmarks/, or benchmarks/quick/ with --quick)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time, run nothing, write nothing")
    p.add_argument("--report-only", action="store_true", help="run nothing: rewrite RESULTS.md, results.json and the pictures from the stored runs")
    p.add_argument("--no-timing", action="store_true", help="do not time a few steps of every remedy before starting (no time estimate)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        return _main(args, argv)
    except (BenchmarkError, GancoreError) as exc:
        print(f"benchmarks.modes: error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    started = time.perf_counter()
    if args.workers < 1:
        raise BenchmarkError("--workers must be at least 1")
    presets = load_presets(args.presets, quick=args.quick)
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    catalog = Catalog.installed()
    plan = make_plan(catalog, presets, out, _names(args.datasets), _names(args.plugins), _seeds(args.seeds))
    unstored = [task for task in plan.tasks if not is_done(task)]
    pending = [] if args.report_only else unstored
    stored = stored_records(out)
    workers = max(1, min(args.workers, len(pending) or 1))

    shape = " + ".join(f"{name} {len(remedies)} remedies" for name, remedies in plan.remedies.items())
    print(f"{COMMAND}: {len(plan.tasks)} runs ({shape}; seeds {','.join(map(str, _seeds_of(plan)))}), "
          f"{len(plan.tasks) - len(unstored)} already stored in {_relative(out / 'runs')}/, "
          + (f"{len(unstored)} not stored (report only: not run, listed in the report's notes)" if args.report_only
             else f"{len(pending)} to run on {workers} workers"))
    for note in plan.skipped:
        print(f"  skipped: {note}")
    for name in plan.not_default:
        print(f"  not run by default: {name} (not in the presets' `datasets`; run it with --datasets {name})")
    torch.set_num_threads(1)
    estimate_notes = estimate(catalog, pending, stored, probe=not args.no_timing) if pending else []
    if pending:
        _print_estimate(pending, workers, estimate_notes)
    if args.dry_run:
        return 0

    records, interrupted = run_tasks(pending, workers, catalog) if pending else ([], False)
    elapsed = time.perf_counter() - started
    if records:
        _log_invocation(out, argv, workers, len(records), elapsed)
    full = load_presets(args.presets)  # goals and dataset order of every stored run, not only --quick's
    goals = {name: preset.goal for name, preset in full.datasets.items() if preset.goal is not None}
    still_unstored = [task for task in unstored if not is_done(task)]  # only these can have failed or been interrupted
    notes = [f"skipped: {note}" for note in plan.skipped] + unstored_notes(plan.tasks, still_unstored)
    report = write_report(out, full, goals, argv, notes)
    failed = sum(1 for record in records if record["status"] != "ok")
    print(f"ran {len(records)} runs ({failed} failed) in {duration(elapsed)}; wrote {_relative(report)}, results.json and the pictures")
    if interrupted:
        print("interrupted: finished runs are stored; run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if failed else 0


def _seeds_of(plan: Plan) -> list[int]:
    return sorted({task.seed for task in plan.tasks})


def _print_estimate(pending: list[Task], workers: int, notes: list[str]) -> None:
    known = [task.estimate for task in pending if task.estimate is not None]
    if not known:
        print(f"  estimated time: unknown (no step timed); {len(pending)} runs")
        return
    unknown = len(pending) - len(known)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    # the presets give each run one thread: workers beyond the CPUs share them and add no throughput
    lanes = min(workers, os.cpu_count() or workers)
    print(f"  estimated time: {duration(makespan(known, lanes))} on {workers} workers "
          f"(sum of run times {duration(sum(known))}, from timed steps x steps"
          + (f"; {unknown} runs not estimated" if unknown else "")
          + f"; timed at load average {load:.1f} on {os.cpu_count()} CPUs: a busier machine times slower)")
    per: dict[str, dict[str, tuple[float, Any]]] = {}
    for task in pending:
        if task.estimate is not None:
            per.setdefault(task.dataset, {})[task.remedy] = (task.estimate, task.values[CORE].get("steps", "default"))
    for dataset, remedies in per.items():
        # the dataset's usual steps in the heading; a remedy with a budget of its own says its steps
        usual = statistics.mode(steps for _, steps in remedies.values())
        listing = ", ".join(f"{remedy} {duration(seconds)}" + ("" if steps == usual else f" ({steps} steps)")
                            for remedy, (seconds, steps) in sorted(remedies.items(), key=lambda kv: _order(kv[0])))
        print(f"  per run, {dataset} ({usual} steps): {listing}")
    for note in notes:
        print(f"  note: {note}")


if __name__ == "__main__":
    # import under the package name so that spawned workers unpickle tasks from benchmarks.modes
    from benchmarks.modes import main as _package_main

    sys.exit(_package_main())
