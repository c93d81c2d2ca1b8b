"""Each built-in remedy against vanilla: the verdict section of RESULTS.md."""
from __future__ import annotations

import math
from typing import Iterable

from benchmarks.modes.presets import VANILLA, same_core_vanilla
from benchmarks.modes.rows import Row


VERDICT_DATASETS = ("ring8", "grid25")  # issue 23: a remedy's best settings must beat vanilla's on both
VERDICT_HQ_SLACK = 5.0  # HQ points a remedy may lose while it gains modes


def remedy_verdicts(rows_by_dataset: dict[str, list[Row]], recipes: dict[tuple[str, str], str], builtins: Iterable[str] = ()) -> list[str]:
    """Per built-in remedy, a plain verdict: does one of its rows, the remedy alone (core settings of
    its own allowed) on at least vanilla's number of seeds, have more modes than vanilla on every
    verdict dataset while losing at most VERDICT_HQ_SLACK HQ points, and more modes than its core settings
    have without it where that row is stored? Its best such row per dataset, or its best row where none does."""
    datasets = [name for name in VERDICT_DATASETS if any(row.remedy == VANILLA for row in rows_by_dataset.get(name, []))]
    if not datasets:
        return []
    names = sorted(set(builtins) | {plugin for name in datasets for row in rows_by_dataset[name] for plugin in row.plugins})
    vanilla = {name: next(row for row in rows_by_dataset[name] if row.remedy == VANILLA) for name in datasets}
    lines = ["## Each remedy against vanilla", "",
             f"A remedy beats vanilla when one of its rows (the remedy alone, with core settings of its own allowed: "
             f"`NAME+train[...]` rows count, combinations with other plugins do not) has more modes than vanilla's row "
             f"(the recipe `benchmark-vanilla`) on {' and '.join(datasets)}, losing at most {VERDICT_HQ_SLACK:g} HQ points, on at least as many seeds as vanilla's row; "
             "a row with core settings of its own must also have more modes than those settings without the plugin, where that row is stored "
             "(else the gain is the settings', not the remedy's). "
             "A win whose gain in mean modes is not larger than its standard error over seeds (sqrt(sd²/n + sd_vanilla²/n_vanilla)) "
             "says \"within the spread\": the seeds cannot tell it from vanilla. "
             "Each cell shows its best row that does (else its best row: most modes, then HQ), mean over the seeds stored, "
             "and, for a row with core settings of its own, vanilla with those settings where it is stored: "
             "what the plugin adds over them. Rows whose settings neither a preset nor a recipe names (e.g. `train[activation=tanh]`, "
             "`NAME+train[steps=...]`, `instance-noise[std=0.3]`, `minibatch-discrimination[init=data]`) "
             "come from the per-remedy search (candidates chosen on seeds 0-1, the closest run once on seeds 2-4; "
             "benchmarks/README.md, \"The per-remedy search\", which gives each candidate's reason); the others are rows of the "
             "tables below, with the settings benchmarks/README.md gives the reasons for.", "",
             "| remedy | " + " | ".join(f"{name} (vanilla {vanilla[name].modes[0]:.1f} / {vanilla[name].hq[0]:.1f}%)" for name in datasets)
             + " | rows tried | verdict |",
             "|---|" + "---|" * len(datasets) + "---|---|"]
    for plugin in names:
        cells, beaten, tried, winners, unclear = [], [], 0, [], []
        for name in datasets:
            own = [row for row in rows_by_dataset[name] if row.plugins == [plugin]]
            tried += len(own)
            base_modes, base_hq = vanilla[name].modes[0], vanilla[name].hq[0]
            def beats(row: Row) -> bool:
                # a probe on fewer seeds than vanilla's row shows its numbers but cannot win; nor can a
                # row whose core settings alone (stored without the plugin) have as many modes: the gain is theirs
                alone = core_alone(rows_by_dataset[name], row.remedy)
                return (row.modes[0] > base_modes and row.hq[0] >= base_hq - VERDICT_HQ_SLACK
                        and len(row.records) >= len(vanilla[name].records)
                        and (alone is None or row.modes[0] > alone.modes[0]))

            wins = [row for row in own if beats(row)]
            best = max(wins or own, key=lambda row: (row.modes[0], row.hq[0]), default=None)
            if best is None:
                cells.append("no row")
                continue
            label = recipes.get((name, best.remedy), best.remedy)
            mark = "no"
            if wins:
                gain, error = mode_gain(best, vanilla[name])
                clear = error is None or gain > error
                mark = f"{'**yes**' if clear else 'yes, within the spread'} (+{gain:.1f}" + (f" ± {error:.1f} modes)" if error is not None else " modes)")
                if not clear:
                    unclear.append(name)
            cell = f"{mark}: {label} {best.modes[0]:.1f} / {best.hq[0]:.1f}% ({len(best.records)} seeds, {best.steps} steps)"
            core_only = core_alone(rows_by_dataset[name], best.remedy)
            if core_only is not None:
                cell += f"; {core_only.remedy} alone: {core_only.modes[0]:.1f} / {core_only.hq[0]:.1f}% ({len(core_only.records)} seeds)"
            cells.append(cell)
            if wins:
                beaten.append(name)
                winners.append({row.remedy for row in wins})
        if not tried:
            verdict = "not run"
        elif len(beaten) == len(datasets) and unclear:
            verdict = f"beats vanilla on the means, by less than the spread over seeds on {' and '.join(unclear)}"
        elif len(beaten) == len(datasets):
            # one setting that wins everywhere, or only settings of each dataset's own
            verdict = "**beats vanilla**" + ("" if set.intersection(*winners) else f" (with other settings on {' and '.join(datasets)})")
        else:
            verdict = "does not beat vanilla" + (f" (only on {', '.join(beaten)})" if beaten else "")
        lines.append(f"| {plugin} | {' | '.join(cells)} | {tried} | {verdict} |")
    return lines + [""]


def mode_gain(row: Row, base: Row) -> tuple[float, float | None]:
    """Mean modes ``row`` gains over ``base`` and the standard error of that difference of means,
    sqrt(sd²/n + sd_base²/n_base) over their seeds (None where either has one seed)."""
    (mean, sd), (base_mean, base_sd) = row.modes, base.modes
    if sd is None or base_sd is None:
        return mean - base_mean, None
    return mean - base_mean, math.sqrt(sd ** 2 / len(row.records) + base_sd ** 2 / len(base.records))


def core_alone(rows: list[Row], remedy: str) -> Row | None:
    """The stored row of ``remedy``'s own core settings without its plugins (``a+train[k=v]`` ->
    ``train[k=v]``); None for a remedy on the shared settings, or where that row is not stored."""
    return next((row for row in rows if row.remedy == same_core_vanilla(remedy) != VANILLA), None)
