"""Recipes: named, documented settings files (core settings, plugins and their options).

A recipe is ``NAME.toml``::

    [recipe]
    description = "one line"           # what `gancore recipes` shows
    source = "paper: ..."              # or "found by the benchmark"
    datasets = ["ring8"]               # where it is meant to be run / was measured
    notes = "optional longer text"
    [train]                            # core settings, as in a config file (no dataset, no seed)
    [plugins.NAME]                     # one table per enabled plugin, in enable order

gancore ships its own in this package; a third-party distribution ships more through the
entry-point group ``gancore.recipes``, whose value names a package holding ``*.toml`` files. A
broken one is skipped with a warning, and none may take a built-in recipe's name.

``gancore train --recipe NAME`` layers settings as: core defaults < plugins' suggestions <
the recipe < ``--config`` < ``--set`` and flags. ``scores.toml`` beside the built-in recipes holds
what the mode benchmark measured with them (its report writes it).
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import entry_points
from typing import Any

from gancore.config import CORE, MAX_CONFIG_BYTES
from gancore.errors import GancoreError, one_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENTRY_POINT_GROUP = "gancore.recipes"
BUILTIN_PACKAGE = "gancore"
SCORES_FILE = "scores.toml"
SET_PER_RUN = ("dataset", "data", "seed")  # what a run chooses, not a recipe
_HEADER_TEXT = ("description", "source", "notes")


@dataclass(frozen=True)
class Recipe:
    """One recipe: its ``[recipe]`` header, its settings, and where it came from."""

    name: str
    description: str
    source: str
    datasets: tuple[str, ...]
    notes: str
    train: dict[str, Any]
    plugins: dict[str, dict[str, Any]]  # in enable order
    origin: str  # the distribution that ships it: "gancore", or "NAME VERSION"
    file: str  # where it was read, for messages
    text: str  # the file as written, for `gancore recipes NAME`

    def layers(self) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """The plugins it enables and the ``{owner: {option: value}}`` it sets (copies)."""
        values = {CORE: dict(self.train), **{name: dict(options) for name, options in self.plugins.items()}}
        return list(self.plugins), values

    def warn_if_not_made_for(self, train: Any) -> None:
        """Warn when a run takes this recipe to a built-in dataset outside ``datasets``: it runs as
        written there, with settings chosen and measured elsewhere. A file or data of the user's own
        is theirs to judge: no warning."""
        from gancore.data import DATASET_NAMES

        if self.datasets and not train.data and train.dataset in DATASET_NAMES and train.dataset not in self.datasets:
            warnings.warn(f"recipe {self.name} is made for {', '.join(self.datasets)}, not {train.dataset}: "
                          "it runs unchanged, on settings chosen and measured elsewhere", stacklevel=2)


def parse_recipe(name: str, text: str, file: str, origin: str) -> Recipe:
    """Read a recipe's TOML, checking its layout (the option names and values are checked when a
    run resolves it, against the installed plugins); a problem is one line naming ``file`` and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GancoreError(f"recipe file {file} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"recipe", CORE, "plugins"})
    if unknown:
        raise GancoreError(f"recipe file {file}: unknown table [{unknown[0]}] (a recipe has [recipe], [train] and [plugins.NAME])")
    header = data.get("recipe")
    if not isinstance(header, dict):
        raise GancoreError(f"recipe file {file}: no [recipe] table (description, source, datasets, notes)")
    unknown = sorted(set(header) - {*_HEADER_TEXT, "datasets"})
    if unknown:
        raise GancoreError(f"recipe file {file}: unknown key recipe.{unknown[0]} (use description, source, datasets, notes)")
    for key in _HEADER_TEXT:
        if not isinstance(header.get(key, ""), str):
            raise GancoreError(f"recipe file {file}: recipe.{key} must be a string")
    for key in ("description", "source"):
        if not header.get(key, "").strip():
            raise GancoreError(f"recipe file {file}: recipe.{key} is missing; say it in one line")
    datasets = header.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(item, str) for item in datasets):
        raise GancoreError(f"recipe file {file}: recipe.datasets must be a list of dataset names")
    train = data.get(CORE, {})
    plugins = data.get("plugins", {})
    if not isinstance(train, dict):
        raise GancoreError(f"recipe file {file}: {CORE} must be a table [{CORE}]")
    if not isinstance(plugins, dict):
        raise GancoreError(f"recipe file {file}: plugins must be tables [plugins.NAME]")
    for key in SET_PER_RUN:
        if key in train:
            raise GancoreError(f"recipe file {file}: {CORE}.{key} is chosen per run, not by a recipe; remove it")
    for plugin, options in plugins.items():
        if not isinstance(options, dict):
            raise GancoreError(f"recipe file {file}: plugins.{plugin} must be a table [plugins.{plugin}] of its options")
    return Recipe(
        name=name,
        description=header["description"].strip(),
        source=header["source"].strip(),
        datasets=tuple(datasets),
        notes=header.get("notes", "").strip(),
        train=train,
        plugins=plugins,
        origin=origin,
        file=file,
        text=text,
    )


def _read_folder(folder: Any, origin: str) -> tuple[list[Recipe], dict[str, str]]:
    """The recipes in ``folder`` (a resources Traversable), and why each other ``*.toml`` is unreadable."""
    recipes, problems = [], {}
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if not entry.name.endswith(".toml") or entry.name == SCORES_FILE or not entry.is_file():
            continue
        name, file = entry.name[: -len(".toml")], f"{origin}:{entry.name}"
        try:
            raw = entry.read_bytes()
            if len(raw) > MAX_CONFIG_BYTES:
                raise GancoreError(f"recipe file {file} is {len(raw)} bytes; the limit is {MAX_CONFIG_BYTES}")
            recipes.append(parse_recipe(name, raw.decode(), file, origin))
        except (GancoreError, OSError, UnicodeDecodeError) as error:
            problems[name] = str(error) if isinstance(error, GancoreError) else f"recipe file {file}: {one_line(error)}"
    return recipes, problems


@dataclass
class RecipeBook:
    """Every installed recipe by name, what could not be read, and the built-ins' measured scores."""

    recipes: dict[str, Recipe] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # recipe name -> why it cannot be used
    warnings: list[str] = field(default_factory=list)  # one line per thing skipped
    scores: dict[str, dict[str, dict]] = field(default_factory=dict)  # recipe -> dataset -> scores

    @classmethod
    def installed(cls) -> "RecipeBook":
        """gancore's recipes, then those of every distribution in the ``gancore.recipes`` group."""
        book = cls()
        builtin = resources.files(__name__)
        book._add_folder(builtin, BUILTIN_PACKAGE)
        book.scores = read_scores(builtin / SCORES_FILE)
        points = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: (point.dist.name if point.dist else "?", point.name))
        for point in points:
            origin = f"{point.dist.name} {point.dist.version}" if point.dist else point.value
            try:
                module = point.load()
                folder = resources.files(module)
            except Exception as exc:  # a broken third-party package must not break gancore
                book.warnings.append(f"recipes of {origin} ({point.value}) cannot be read: {one_line(exc)}; they are skipped")
                continue
            book._add_folder(folder, origin)
        return book

    def _add_folder(self, folder: Any, origin: str) -> None:
        recipes, problems = _read_folder(folder, origin)
        for name, problem in problems.items():
            self.warnings.append(f"{problem}; it is skipped")
            if name not in self.recipes:
                self.broken.setdefault(name, problem)
        for recipe in recipes:
            if recipe.name in self.recipes:
                kept = self.recipes[recipe.name].origin
                self.warnings.append(f"recipe {recipe.name} of {origin} is skipped: {kept} ships a recipe of that name already")
                continue
            self.recipes[recipe.name] = recipe
            self.broken.pop(recipe.name, None)

    def get(self, name: str) -> Recipe:
        """The recipe ``name``, or a one-line error listing the available names."""
        if name in self.recipes:
            return self.recipes[name]
        if name in self.broken:
            raise GancoreError(f"recipe {name} cannot be used: {self.broken[name]}")
        available = ", ".join(sorted(self.recipes)) or "none installed"
        raise GancoreError(f"unknown recipe {name!r} (available: {available}); see `gancore recipes`")


def read_scores(file: Any) -> dict[str, dict[str, dict]]:
    """``scores.toml``: ``{recipe: {dataset: {modes, modes_sd, ...}}}``; none when absent."""
    try:
        return tomllib.loads(file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise GancoreError(f"gancore's recipe scores {SCORES_FILE} cannot be read ({one_line(error)}); reinstall gancore") from None


def score_line(scores: dict[str, Any]) -> str:
    """``25.0 ± 0.0/25 modes, 95.4 ± 0.4% HQ, KL 0.008 ± 0.001 (5 seeds, 12000 steps, 40.3 core-min/run, BUILD)``."""
    def cell(key: str, digits: int) -> str:
        sd = scores.get(f"{key}_sd")
        return f"{scores[key]:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")

    parts = [f"{cell('modes', 1)}/{scores['n_modes']} modes"]
    if "hq_percent" in scores:
        parts.append(f"{cell('hq_percent', 1)}% HQ")
    if "reverse_kl" in scores:
        parts.append(f"KL {cell('reverse_kl', 3)}")
    extra = [f"{len(scores.get('seeds', []))} seeds"]
    if "steps" in scores:
        extra.append(f"{scores['steps']} steps")
    if "core_seconds_per_run" in scores:
        extra.append(f"{scores['core_seconds_per_run'] / 60:.1f} core-min/run")
    if scores.get("build"):
        extra.append(scores["build"])
    return ", ".join(parts) + f" ({', '.join(extra)})"


def check_recipe(recipe: Recipe, catalog: Any) -> None:
    """Resolve ``recipe`` alone against the installed plugins: an unknown plugin or option, or a
    value of the wrong type, is a one-line error naming the recipe's file."""
    enabled, values = recipe.layers()
    try:
        catalog.resolve(enabled, values)
    except GancoreError as error:
        raise GancoreError(f"recipe file {recipe.file}: {error}") from None


def chosen_recipe(flag: str | None, config: dict) -> str | None:
    """The recipe a run starts from: ``--recipe`` (``flag``) or a config file's ``[recipe] name``
    (as a run's config.toml records it); giving both, they must agree."""
    in_file = config.get("recipe", {}).get("name") or None
    if flag and in_file and flag != in_file:
        raise GancoreError(f"--recipe {flag} and the config file's [recipe] name = {in_file!r} disagree; give one")
    return flag or in_file


def settings_layers(recipe: Recipe | None, catalog: Any, config: dict) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The plugins and ``{owner: {option: value}}`` of ``recipe`` (checked first) with a config
    file's tables (``config``, from :func:`gancore.config.read_toml`) over it, key by key."""
    enabled: list[str] = []
    values: dict[str, dict[str, Any]] = {CORE: {}}
    if recipe is not None:
        check_recipe(recipe, catalog)
        enabled, values = recipe.layers()
    for owner, options in [(CORE, config.get(CORE, {})), *config.get("plugins", {}).items()]:
        values[owner] = {**values.get(owner, {}), **options}
    return [*enabled, *config.get("plugins", {})], values
