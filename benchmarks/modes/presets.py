"""The presets file (presets.toml): datasets, seeds, shared settings, the remedies each dataset runs, and how a remedy is named."""
from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable


from gancore.config import CORE
from gancore.data import DATASET_NAMES
from gancore.recipes import Recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
DEFAULT_PRESETS = HERE / "presets.toml"
PUBLISHED = HERE / "published.toml"
DEFAULT_OUT = HERE
QUICK_OUT = HERE / "quick"
RECIPE_SCORES = HERE.parent / "gancore" / "recipes" / "scores.toml"  # the report writes it when --out is the default
COMMAND = "python -m benchmarks.modes"
VANILLA = "vanilla"
BUILTIN_PACKAGE = "gancore"
PICTURE_SEED = 0
PICTURE_IMAGES = 64  # samples kept per run of an image dataset, for its panel of samples_<dataset>.png
WORKER_START_SECONDS = 3.0  # spawn + import torch, once per worker (for the estimate)


class BenchmarkError(Exception):
    """A one-line user error (bad preset, bad flag)."""


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
    fixed: dict[str, Any] = field(default_factory=dict)  # core settings no remedy or recipe changes ([quick.train] with --quick)

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
    recipes: list[str] = field(default_factory=list)  # recipes run on the datasets they name, as rows named by them

    def seeds_of(self, preset: DatasetPreset) -> list[int]:
        return preset.seeds if preset.seeds is not None else self.seeds


_TOP_KEYS = {"seeds", "datasets", "exclude", "combinations", "recipes", "train", "plugins", "quick", "remedy_train"}
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
    recipes = _str_list(data.get("recipes", []), f"{where}: recipes")
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
            preset.fixed = quick_train
        default = names
    return Presets(Path(path), seeds, exclude, datasets, default, recipes)


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


# A remedy is a tuple of parts, one per plugin in enable order: "NAME", or "NAME[OPTION=VALUE,...]"
# for a variant with its own options (e.g. "unrolled[steps=10]"), which win over the presets'.
# A part "train[OPTION=VALUE,...]" is no plugin: it sets core options of this remedy alone, e.g. a
# bigger generator, "pacgan+train[g_width=400,g_depth=4]" (its vanilla: "train[g_width=400,g_depth=4]").
# A value may be a TOML array ("train[betas_d=[0.0,0.999]]"): options split at the commas outside brackets.
_PART = re.compile(r"([A-Za-z0-9_.-]+)(?:\[(.*)\])?")


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
    for assignment in _assignments(match.group(2) or "", part):
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


def split_outside_brackets(text: str) -> list[str]:
    """Split at the commas outside brackets: ``"a[x=1,y=[2,3]],b"`` -> ["a[x=1,y=[2,3]]", "b"]."""
    pieces, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            pieces.append(text[start:index])
            start = index + 1
    return [*pieces, text[start:]]


def _assignments(text: str, part: str) -> list[str]:
    """``"a=1,b=[2,3]"`` -> ["a=1", "b=[2,3]"]; unbalanced brackets are no remedy name."""
    depths = list(itertools.accumulate({"[": 1, "]": -1}.get(char, 0) for char in text))
    if depths and (min(depths) < 0 or depths[-1] != 0):
        raise ValueError(part)
    return [piece for piece in split_outside_brackets(text) if piece]


def _option_text(value: Any) -> str:
    """A value as a remedy name writes it, read back by :func:`part_options` (TOML, else text)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_option_text(item) if not isinstance(item, str) else f"'{item}'" for item in value) + "]"
    return str(value)


def plugin_names(parts: Iterable[str]) -> tuple[str, ...]:
    return tuple(name for name in (part_options(part)[0] for part in parts) if name != CORE)


def _part_options(recipe: Recipe, owner: str, options: dict[str, Any]) -> str:
    """``OPTION=VALUE,...`` as a ``NAME[...]`` part writes them (read back as TOML, else as text)."""
    for key, value in options.items():
        if isinstance(value, dict):
            raise BenchmarkError(f"recipe {recipe.name}: {owner}.{key} = {value} differs from the presets' and a table cannot be written "
                                 f"in a remedy name; set it in the presets' [DATASET.train] too, or leave it out of the recipe")
    return ",".join(f"{key}={_option_text(value)}" for key, value in options.items())


# The row "@NAME" runs the recipe NAME whole (recipe_row); no plugin or variant name starts with "@".
WHOLE_RECIPE = "@"
# Core settings of the presets that a whole recipe runs with too: the benchmark measures every row on one device.
PINNED_BY_PRESETS = ("device",)


def recipe_row(recipe: Recipe, preset: DatasetPreset, layered: bool) -> tuple[str, ...]:
    """The remedy that runs ``recipe`` on ``preset``'s dataset.

    ``layered`` (the presets' own ``recipes``, measured on the shared settings and repeating them):
    the bracket-string row of what it changes (:func:`recipe_parts`), so its stored runs keep
    counting. Any other recipe (a paper's, a third party's) is the row ``@NAME``: the recipe whole,
    as ``gancore train --recipe NAME`` runs it over the core defaults (:func:`whole_recipe_values`),
    so that no shared setting leaks in where the recipe is silent (layered, wgan-gp-paper, which
    sets no lr_decay, would decay its rates linearly as the presets do).
    """
    return recipe_parts(recipe, preset) if layered else (WHOLE_RECIPE + recipe.name,)


def is_whole_recipe(remedy: str) -> bool:
    return remedy.startswith(WHOLE_RECIPE)


def same_core_vanilla(remedy: str) -> str:
    """The row of no plugin with ``remedy``'s own core settings (``a+train[k=v]`` -> ``train[k=v]``;
    vanilla where it has none): the same nets and optimizer, only the plugins differ."""
    if is_whole_recipe(remedy):
        return VANILLA
    return remedy_name(part for part in parse_remedy(remedy) if part_options(part)[0] == CORE)


def whole_recipe_values(recipe: Recipe, preset: DatasetPreset, seed: int) -> dict[str, dict[str, Any]]:
    """The ``values`` of Catalog.resolve for one run of the row ``@NAME``: the recipe's settings, the
    presets' PINNED_BY_PRESETS and, with --quick, [quick.train] (a smoke test keeps its own steps)."""
    _, values = recipe.layers()
    pinned = {key: preset.train[key] for key in PINNED_BY_PRESETS if key in preset.train}
    values[CORE] = {**values[CORE], **pinned, **preset.fixed, "dataset": preset.name, "seed": seed}
    return values


def recipe_parts(recipe: Recipe, preset: DatasetPreset) -> tuple[str, ...]:
    """The remedy that runs ``recipe`` on ``preset``'s dataset: its plugins (with the options that
    differ from the preset's), then ``train[...]`` with its core settings that differ from the
    dataset's settings for those plugins (the shared ones and the plugins' own [remedy_train]),
    except those the preset fixes (--quick's). A recipe that repeats them is the remedy the presets
    name by bracket string, so its stored runs keep counting (they are found by name and
    settings). Precedence in the benchmark: the dataset's shared settings < the recipe <
    [quick.train] with --quick."""
    parts = []
    for name, options in recipe.plugins.items():
        own = {key: value for key, value in options.items() if preset.plugins.get(name, {}).get(key) != value}
        parts.append(name + (f"[{_part_options(recipe, name, own)}]" if own else ""))
    shared = {**preset.train, **preset.remedy_train.get(remedy_name(parts), {})}
    own = {key: value for key, value in recipe.train.items() if key not in preset.fixed and shared.get(key) != value}
    if own:
        parts.append(f"{CORE}[{_part_options(recipe, CORE, own)}]")
    return tuple(parts)
