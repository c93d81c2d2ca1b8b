"""A report's rows: one remedy on one dataset over its stored seeds, and how their numbers are written."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from gancore.config import CORE

from benchmarks.modes.presets import VANILLA


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def mean_std(values: list[float]) -> tuple[float, float | None]:
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
        return mean_std(self.values("modes_captured"))

    @property
    def hq(self) -> tuple[float, float | None]:
        return mean_std(self.values("hq_percent"))

    @property
    def kl(self) -> tuple[float, float | None]:
        """Mean and std of reverse KL over the seeds that have one (NaN when none has)."""
        return mean_std(self.values("reverse_kl"))

    @property
    def steps(self) -> str:
        """Training steps of the seeds ("a/b" if they differ)."""
        return "/".join(str(n) for n in sorted({record["settings"][CORE]["steps"] for record in self.records}))

    @property
    def wall(self) -> float:
        return statistics.fmean(record["wall_seconds"] for record in self.records)

    @property
    def core_seconds(self) -> float:
        """One-core cost of a run (each runs on one torch thread): its CPU time where the record has
        one, else its wall time, which also counts time spent waiting for a core or stopped."""
        return statistics.fmean(record.get("cpu_seconds", record["wall_seconds"]) for record in self.records)


def pm(mean: float, std: float | None, digits: int) -> str:
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def kl_cell(row: Row, with_std: bool = False) -> str:
    kls = row.values("reverse_kl")
    if not kls:
        return "n/a"
    text = pm(*row.kl, 3) if with_std else f"{statistics.fmean(kls):.3f}"
    return text if len(kls) == len(row.records) else f"{text} ({len(kls)} of {len(row.records)}†)"


def has_hq(rows: list[Row]) -> bool:
    """Whether the dataset's protocol scores high quality (the mixtures); if not, modes and KL are its metrics (stacked-digits)."""
    return any("hq_percent" in record["metrics"] for row in rows for record in row.records)


def kl_key(row: Row) -> float:
    """Reverse KL for ranking: lower is better, none is worst."""
    kl = row.kl[0]
    return math.inf if math.isnan(kl) else kl


def display_order(remedy: str) -> tuple:
    return (remedy != VANILLA, remedy.count("+"), remedy)
