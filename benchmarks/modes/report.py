"""The report: RESULTS.md and results.json from every stored run, beside the papers' rows."""
from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import tomli_w

from gancore import __version__
from gancore.config import CORE, core_options
from gancore.data import DATASET_NAMES
from gancore.recipes import RecipeBook

from benchmarks.modes.pictures import draw_dataset
from benchmarks.modes.rows import Row, display_order, duration, has_hq, kl_cell, kl_key, mean_std, pm
from benchmarks.modes.verdicts import remedy_verdicts
from benchmarks.modes.plan import run_values
from benchmarks.modes.presets import (
    COMMAND, PUBLISHED, VANILLA, BenchmarkError, Goal, Presets, is_whole_recipe, recipe_row, remedy_name, same_core_vanilla,
    whole_recipe_values,
)
from benchmarks.modes.records import (
    UNKNOWN_BUILD, dump_json, normalized, read_invocations, record_build, relative_path, request_key, stored_records, write_text,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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
        cells = [f"{key} {pm(*mean_std(row.values(key)), 3)}" for key in names]
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
    return {dataset: sorted(rows.values(), key=lambda row: display_order(row.remedy)) for dataset, rows in by_dataset.items()}


def dataset_order(names: Iterable[str], presets: Presets | None) -> list[str]:
    preferred = list(presets.datasets) if presets else []
    preferred += [name for name in DATASET_NAMES if name not in preferred]
    return sorted(names, key=lambda name: (preferred.index(name) if name in preferred else len(preferred), name))


def write_report(out: Path, presets: Presets, goals: dict[str, Goal | float], argv: list[str], notes: list[str],
                 scores: Path | None = None, builtins: Iterable[str] = ()) -> Path:
    """Regenerate RESULTS.md, results.json and samples_<dataset>.png in ``out`` from every stored run;
    with ``scores``, write there what each recipe's rows measured (gancore/recipes/scores.toml).
    ``builtins``: the built-in plugins, each given a verdict against vanilla (also those with no row)."""
    records = stored_records(out)
    rows_by_dataset = build_rows(records)
    book = RecipeBook.installed()
    recipes = recipe_rows(book, rows_by_dataset, presets)
    datasets = dataset_order(rows_by_dataset, presets)
    published = load_published()
    formats = load_published_datasets()
    failed = [r for r in records if r.get("status") == "failed"]
    invocations = read_invocations(out)
    command = " ".join([COMMAND, *map(shlex.quote, argv)])

    lines = [
        "# Does the remedy recover the modes? Mode coverage of every remedy, with the papers' figures",
        "",
        f"> **Generated file: do not edit by hand.** Produced by `{command}` (gancore {__version__}) from the "
        f"runs stored in `{relative_path(out / 'runs')}/`; rerun the command to regenerate it.",
        "",
        "Protocol (VEEGAN; `../shared/PROTOCOLS.md`): each run draws 2500 samples of its final generator. A sample is high "
        "quality (HQ) if it lies within 3 std of its nearest mode (ring8: 0.06, grid25: 0.15, L2); for hd1200 we read "
        "VEEGAN's \"10 std\" as *every coordinate within 10 of the nearest mean* (L∞; nearest mean by L2), a reading no "
        "public code states. A mode is captured if it is the nearest mode of at least one HQ sample. Reverse KL: "
        "KL(histogram of HQ samples over modes ‖ uniform), nats (0 is perfect; n/a when no sample is HQ). "
        "Our rows: mean ± std over seeds (std with n − 1); wall time: building and training one run and its final "
        "evaluation, on one CPU thread. Published rows are the papers' means (PacGAN: 10 runs).",
        "",
        "Fidelity: `PAPERS.md` compares each remedy's plugin with its paper's official code line by line, and the paper "
        "recipes (source \"paper: ...\" in `gancore recipes`) hold the official settings. The rows named `veegan` and "
        "`unrolled` below run the plugins' defaults, which depart from the official code (veegan.scale=learned, "
        "veegan.extra_noise=0, D 2x128; unrolled.objective=core, ReLU nets), and the shared optimizer: they are not "
        "reproductions of the published rows. The paper recipes' own runs, and whether they meet the published rows, are in PAPERS.md.",
        "",
    ]
    if not datasets:
        lines += ["No run is stored yet.", ""]
    lines += _recipe_tables(book, datasets, rows_by_dataset, recipes, published, formats)
    lines += remedy_verdicts(rows_by_dataset, recipes, builtins)
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
            # a row is named by its recipe; vanilla keeps its name, the one every note compares with
            label = row.remedy if row.remedy == VANILLA else recipes.get((dataset, row.remedy), row.remedy)
            name = label + (f" ({diverged} diverged‡)" if diverged else "")
            hq_cell = pm(*hq, 1) if hq_metric else "—"
            steps_cell = f" {row.steps} |" if steps_column else ""
            lines.append(f"| {name} | {pm(*modes, 1)} | {hq_cell} | {kl_cell(row, with_std=not hq_metric)} |{steps_cell} {row.wall:.1f} | {len(row.records)} |")
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
        named = [f"{recipes[(dataset, row.remedy)]} = {row.remedy}" for row in rows if (dataset, row.remedy) in recipes and not is_whole_recipe(row.remedy)]
        if named:
            lines += ["", f"Rows named by recipe (`gancore recipes NAME` shows one; `gancore train --recipe NAME` runs it): {'; '.join(named)}."]
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
    lines += _build_lines(ok, {dataset: rows_by_dataset[dataset] for dataset in datasets})
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
        {key: record.get(key) for key in ("dataset", "remedy", "plugins", "seed", "request", "settings", "metrics", "wall_seconds", "cpu_seconds", "gancore", "build")
         if key in record or key != "cpu_seconds"}  # records made before CPU time was recorded have none
        for record in sorted(ok, key=lambda r: (datasets.index(r["dataset"]), display_order(r["remedy"]), r["seed"]))
    ]
    write_text(out / "results.json", dump_json(results))
    if scores is not None:
        write_text(scores, recipe_scores_toml(rows_by_dataset, recipes, " ".join([COMMAND, *map(shlex.quote, argv)])))
    return out / "RESULTS.md"


def recipe_rows(book: RecipeBook, rows_by_dataset: dict[str, list[Row]], presets: Presets) -> dict[tuple[str, str], str]:
    """``{(dataset, remedy): recipe name}`` for the rows that are an installed recipe run on a dataset it
    names, with the settings the recipe gives there today (not a --quick row of the same name, run with
    fewer steps, nor the runs of an older version of the recipe)."""
    named = {}
    for recipe in book.recipes.values():
        for dataset in recipe.datasets:
            if dataset in presets.datasets and dataset in rows_by_dataset:
                preset = presets.datasets[dataset]
                try:
                    parts = recipe_row(recipe, preset, layered=recipe.name in presets.recipes)
                except BenchmarkError:  # settings no remedy name can hold: no stored row is this recipe
                    continue
                values = whole_recipe_values(recipe, preset, 0) if is_whole_recipe(remedy_name(parts)) else run_values(preset, parts, 0)
                wanted = request_key(values)
                for row in rows_by_dataset[dataset]:
                    if row.remedy == remedy_name(parts) and all(request_key(record["request"]) == wanted for record in row.records):
                        named.setdefault((dataset, row.remedy), recipe.name)
    return named


def _recipe_tables(book: RecipeBook, datasets: list[str], rows_by_dataset: dict[str, list[Row]], recipes: dict[tuple[str, str], str],
                   published: list[dict], formats: dict[str, dict]) -> list[str]:
    """The opening tables: per dataset, every recipe run on it beside the papers' rows."""
    lines = []
    for dataset in datasets:
        rows = sorted((row for row in rows_by_dataset[dataset] if (dataset, row.remedy) in recipes), key=lambda row: recipes[(dataset, row.remedy)])
        if not rows:
            continue
        if not lines:
            lines += ["## Recipes beside the papers", "",
                      "Per dataset, every recipe run on it (`gancore recipes` lists them, `gancore train --recipe NAME` runs one) "
                      "beside the papers' rows: mean ± std over seeds, and the one-core cost of one run (one torch thread: "
                      "building, training and the final evaluation; the run's CPU time where its record has one, else its wall "
                      "time, which also counts time it waited for a core or was stopped). Probes and controls are in the full tables below.", ""]
        hq_metric = has_hq(rows)
        lines += [f"### {dataset}", "", f"| recipe | source | modes (of {rows[0].n_modes}) | HQ % | reverse KL | one-core min / run | seeds |",
                  "|---|---|---|---|---|---|---|"]
        for row in rows:
            name = recipes[(dataset, row.remedy)]
            hq_cell = pm(*row.hq, 1) if hq_metric else "—"
            lines.append(f"| {name} | {book.recipes[name].source} | {pm(*row.modes, 1)} | {hq_cell} | {kl_cell(row, with_std=True)} | "
                         f"{row.core_seconds / 60:.1f} | {len(row.records)} |")
        for paper in published:
            numbers = published_values(paper, dataset, formats)
            if numbers is not None:
                cells = [f"{numbers[key]:g}" if key in numbers else "—" for key in PUBLISHED_VALUES]
                lines.append(f"| *paper:* {paper['method']} | {paper['source']} | {' | '.join(cells)} | — | {paper.get('runs', '—')} |")
        lines.append("")
        shown = {recipes[(dataset, row.remedy)] for row in rows}
        not_run = sorted(recipe.name for recipe in book.recipes.values() if dataset in recipe.datasets and recipe.name not in shown)
        if not_run:  # a gap in the table must read as "not run", not as "left out"
            lines += [f"Not run on {dataset} yet (the recipe names it, no stored run has its settings): {', '.join(not_run)}. "
                      f"`python -m benchmarks.modes --recipes {' '.join(not_run)} --datasets {dataset} --dry-run` estimates their time.", ""]
    return lines


def recipe_scores_toml(rows_by_dataset: dict[str, list[Row]], recipes: dict[tuple[str, str], str], command: str) -> str:
    """What each recipe's rows measured, as gancore/recipes/scores.toml (read by `gancore recipes`)."""
    scores: dict[str, dict[str, dict]] = {}
    for dataset, rows in rows_by_dataset.items():
        for row in rows:
            if (dataset, row.remedy) not in recipes:
                continue
            entry: dict[str, Any] = {"n_modes": row.n_modes, "seeds": row.seeds}
            for key, (mean, std) in (("modes", row.modes), ("hq_percent", row.hq), ("reverse_kl", row.kl)):
                if not math.isnan(mean):
                    entry[key] = round(mean, 4)
                    if std is not None and not math.isnan(std):
                        entry[f"{key}_sd"] = round(std, 4)
            entry["core_seconds_per_run"] = round(row.core_seconds, 1)
            entry["steps"] = row.steps
            entry["build"] = " + ".join(sorted({record_build(record) for record in row.records}))
            entry["row"] = row.remedy
            scores.setdefault(recipes[(dataset, row.remedy)], {})[dataset] = entry
    header = f"# Generated by `{command}` from benchmarks/runs/: do not edit by hand. Read by `gancore recipes`.\n"
    return header + tomli_w.dumps(dict(sorted(scores.items())))


def _build_lines(ok: list[dict], rows_by_dataset: dict[str, list[Row]]) -> list[str]:
    """Which builds produced the stored runs, and the rows whose seeds mix builds: a number is only
    reproducible on the build that made it (GAN trajectories amplify rounding)."""
    builds: dict[str, int] = {}
    for record in ok:
        builds[record_build(record)] = builds.get(record_build(record), 0) + 1
    unknown = f" ({UNKNOWN_BUILD}: stored before records named their build)" if UNKNOWN_BUILD in builds else ""
    if builds.keys() == {UNKNOWN_BUILD}:
        return ["- Every run by an unknown build: stored before records named their build, so a rerun on this machine may differ."]
    if len(builds) == 1:
        return [f"- Every run by one build: {label}." for label in builds]
    mixed = [f"{dataset} {row.remedy}" for dataset, rows in rows_by_dataset.items() for row in rows
             if len({record_build(record) for record in row.records}) > 1]
    counts = "; ".join(f"{count} by {label}" for label, count in sorted(builds.items(), key=lambda item: -item[1]))
    return [f"- **The runs mix builds**: {counts}{unknown}."
            + (f" Rows whose seeds come from more than one build: {', '.join(mixed)}." if mixed else " No row mixes them.")]


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
        return mean_std(row.values(self.key))

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
        (v_modes, _), (v_value, _) = vanilla.modes, metric.of(vanilla)
        notes.append(f"- vanilla: {v_modes:.1f}/{n_modes} modes, {metric.phrase.format(metric.text(v_value))}.")
        groups: dict[str, list[str]] = {"both": [], "modes": [], "metric": [], "neither": []}
        by_name = {row.remedy: row for row in rows}
        for row in others:
            # a remedy with core options of its own (a train[...] part) is compared with the vanilla of
            # the same options where that is stored: the same nets, only the plugins differ
            own = same_core_vanilla(row.remedy)
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
            if goal.kl is not None and not kl_key(best) <= goal.kl:
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
