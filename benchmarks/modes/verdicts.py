"""Each built-in remedy against vanilla: the verdict section of RESULTS.md."""
from __future__ import annotations

from typing import Iterable

from benchmarks.modes.presets import VANILLA, same_core_vanilla
from benchmarks.modes.rows import Row


VERDICT_DATASETS = ("ring8", "grid25")  # issue 23: a remedy's best settings must beat vanilla's on both
VERDICT_HQ_SLACK = 5.0  # HQ points a remedy may lose while it gains modes


def remedy_verdicts(rows_by_dataset: dict[str, list[Row]], recipes: dict[tuple[str, str], str], builtins: Iterable[str] = ()) -> list[str]:
    """Per built-in remedy, a plain verdict: does one of its rows, the remedy alone (core settings of
    its own allowed) on at least vanilla's number of seeds, have more modes than vanilla on every
    verdict dataset while losing at most VERDICT_HQ_SLACK HQ points? Its best such row per dataset, or its best row where none does."""
    datasets = [name for name in VERDICT_DATASETS if any(row.remedy == VANILLA for row in rows_by_dataset.get(name, []))]
    if not datasets:
        return []
    names = sorted(set(builtins) | {plugin for name in datasets for row in rows_by_dataset[name] for plugin in row.plugins})
    vanilla = {name: next(row for row in rows_by_dataset[name] if row.remedy == VANILLA) for name in datasets}
    lines = ["## Each remedy against vanilla", "",
             f"A remedy beats vanilla when one of its rows (the remedy alone, with core settings of its own allowed: "
             f"`NAME+train[...]` rows count, combinations with other plugins do not) has more modes than vanilla's row "
             f"(the recipe `benchmark-vanilla`) on {' and '.join(datasets)}, losing at most {VERDICT_HQ_SLACK:g} HQ points, on at least as many seeds as vanilla's row. "
             "Each cell shows its best row that does (else its best row: most modes, then HQ), mean over the seeds stored, "
             "and, for a row with core settings of its own, vanilla with those settings where it is stored: "
             "what the plugin adds over them. The rows with `train[activation=tanh]` and `feature-matching[adversarial_weight=1.0]` "
             "come from a per-remedy search (candidates chosen on seeds 0-1, the closest run once on seeds 2-4; "
             "benchmarks/README.md, \"The per-remedy search\"); the others are rows of the tables below, with the settings "
             "benchmarks/README.md gives the reasons for.", "",
             "| remedy | " + " | ".join(f"{name} (vanilla {vanilla[name].modes[0]:.1f} / {vanilla[name].hq[0]:.1f}%)" for name in datasets)
             + " | rows tried | verdict |",
             "|---|" + "---|" * len(datasets) + "---|---|"]
    for plugin in names:
        cells, beaten, tried, winners = [], [], 0, []
        for name in datasets:
            own = [row for row in rows_by_dataset[name] if row.plugins == [plugin]]
            tried += len(own)
            base_modes, base_hq = vanilla[name].modes[0], vanilla[name].hq[0]
            # a probe on fewer seeds than vanilla's row shows its numbers but cannot win
            wins = [row for row in own if row.modes[0] > base_modes and row.hq[0] >= base_hq - VERDICT_HQ_SLACK
                    and len(row.records) >= len(vanilla[name].records)]
            best = max(wins or own, key=lambda row: (row.modes[0], row.hq[0]), default=None)
            if best is None:
                cells.append("no row")
                continue
            label = recipes.get((name, best.remedy), best.remedy)
            cell = f"{'**yes**' if wins else 'no'}: {label} {best.modes[0]:.1f} / {best.hq[0]:.1f}% ({len(best.records)} seeds, {best.steps} steps)"
            core_only = next((row for row in rows_by_dataset[name] if row.remedy == same_core_vanilla(best.remedy) != VANILLA), None)
            if core_only is not None:
                cell += f"; {core_only.remedy} alone: {core_only.modes[0]:.1f} / {core_only.hq[0]:.1f}% ({len(core_only.records)} seeds)"
            cells.append(cell)
            if wins:
                beaten.append(name)
                winners.append({row.remedy for row in wins})
        if not tried:
            verdict = "not run"
        elif len(beaten) == len(datasets):
            # one setting that wins everywhere, or only settings of each dataset's own
            verdict = "**beats vanilla**" + ("" if set.intersection(*winners) else f" (with other settings on {' and '.join(datasets)})")
        else:
            verdict = "does not beat vanilla" + (f" (only on {', '.join(beaten)})" if beaten else "")
        lines.append(f"| {plugin} | {' | '.join(cells)} | {tried} | {verdict} |")
    return lines + [""]
