"""Stored runs: one JSON record (and its samples) per finished run under OUT/runs/, keyed by its settings; the log of invocations."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gancore.checkpoint import atomic_write
from gancore.config import CORE
from gancore.provenance import build_key

from benchmarks.modes.plan import Task


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


UNKNOWN_BUILD = "unknown build"


def record_build(record: dict) -> str:
    """The build that produced ``record`` (:func:`gancore.provenance.build_key`), or "unknown build"
    for a record stored before records named their build."""
    return build_key(record["build"]) if isinstance(record.get("build"), dict) else UNKNOWN_BUILD


def is_done(task: Task, build: str | None = None) -> bool:
    """A stored, successful run of exactly this task's settings (and its samples); with ``build``,
    only one that this build produced (another CPU capability, BLAS or thread count rounds otherwise)."""
    record = read_record(task.record)
    return (bool(record) and record.get("status") == "ok" and record.get("request") == normalized(task.values) and task.samples.is_file()
            and (build is None or record_build(record) == build))


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


def relative_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_invocations(out: Path) -> list[dict]:
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


def log_invocation(out: Path, argv: list[str], workers: int, ran: int, elapsed: float, cpus: int) -> None:
    entry = {"argv": argv, "workers": workers, "ran": ran, "elapsed_seconds": round(elapsed, 1), "cpus": cpus,
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = out / "runs" / "invocations.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
