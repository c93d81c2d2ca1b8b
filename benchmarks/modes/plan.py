"""The plan: every run (dataset, remedy, seed) that the presets and the command line ask for, with its settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any


from gancore.config import CORE
from gancore.errors import GancoreError
from gancore.manager import ENTRY_POINT_GROUP, Catalog
from gancore.recipes import Recipe

from benchmarks.modes.presets import (
    BUILTIN_PACKAGE, BenchmarkError, DatasetPreset, Presets, parse_remedy, part_options, plugin_names, recipe_row, remedy_name,
    whole_recipe_values,
)


@dataclass
class Task:
    """One run: a remedy on a dataset with a seed, and where its record is stored."""

    dataset: str
    remedy: str
    plugins: tuple[str, ...]  # plugin names, in enable order (the remedy's options are in values)
    seed: int
    values: dict[str, dict[str, Any]]
    record: Path
    estimate: float | None = None  # wall seconds expected
    estimated_from: str | None = None  # "stored" (the mean wall time of stored runs of these settings) or "timed" (a few timed steps)

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


def make_plan(catalog: Catalog, presets: Presets, out: Path, datasets: list[str] | None, remedies: list[str] | None, seeds: list[int] | None,
              recipes: list[Recipe] | None = None) -> Plan:
    """The runs asked for: ``remedies`` (None: vanilla, the built-ins and the presets' combinations)
    and ``recipes``, each as a row on the datasets it names (``recipe.datasets``)."""
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
        chosen = list(chosen)
        whole: dict[tuple[str, ...], Recipe] = {}  # rows "@NAME": the recipe NAME whole
        for recipe in recipes or ():
            if preset.name in recipe.datasets:
                try:
                    parts = recipe_row(recipe, preset, layered=recipe.name in presets.recipes)
                except BenchmarkError as error:
                    plan.skipped.append(f"{preset.name} {error}")
                    continue
                chosen.append(parts)
                if recipe.name not in presets.recipes:
                    whole[parts] = recipe

        def settings(parts: tuple[str, ...], seed: int) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
            if parts in whole:
                return tuple(whole[parts].plugins), whole_recipe_values(whole[parts], preset, seed)
            return plugin_names(parts), run_values(preset, parts, seed)

        chosen = list(dict.fromkeys(chosen))
        runnable = []
        for parts in chosen:
            problem = _check_remedy(catalog, *settings(parts, 0))
            if problem:
                plan.skipped.append(f"{preset.name} {remedy_name(parts)}: {problem}")
                continue
            runnable.append(parts)
        plan.remedies[preset.name] = runnable
        for parts in runnable:
            name = remedy_name(parts)
            for seed in seeds or presets.seeds_of(preset):
                path = out / "runs" / preset.name / name / f"seed{seed}.json"
                plugins, values = settings(parts, seed)
                plan.tasks.append(Task(preset.name, name, plugins, seed, values, path))
    for recipe in recipes or ():
        if not set(recipe.datasets) & set(plan.remedies):
            plan.skipped.append(f"recipe {recipe.name}: made for {', '.join(recipe.datasets) or 'no dataset'}, none of which this plan runs")
    return plan


def _check_remedy(catalog: Catalog, plugins: tuple[str, ...], values: dict[str, dict[str, Any]]) -> str | None:
    """Why a row of these plugins and settings cannot run, or None (its settings resolve)."""
    for name in plugins:
        if name not in catalog.plugins:
            return f"plugin {name} failed to import ({catalog.broken[name]})" if name in catalog.broken else f"plugin {name} is not installed"
    try:
        catalog.resolve(list(plugins), values)
    except GancoreError as exc:
        return f"not run: {exc}"
    return None
