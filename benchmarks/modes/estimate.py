"""The time estimate: the stored wall times of the same settings, or a few timed steps."""
from __future__ import annotations

import heapq
import os
import statistics
import time
from typing import Any

from tqdm import tqdm

from gancore.config import CORE
from gancore.data import load_dataset
from gancore.manager import Catalog

from benchmarks.modes.plan import Task
from benchmarks.modes.presets import WORKER_START_SECONDS
from benchmarks.modes.records import request_key
from benchmarks.modes.rows import display_order, duration
from benchmarks.modes.run import usable_cpus


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
    # keyed by remedy too: a plugin run at its defaults requests the same settings as vanilla
    measured: dict[tuple[str, str], list[float]] = {}
    for record in stored:
        if record.get("status") == "ok":
            measured.setdefault((record["remedy"], request_key(record["request"])), []).append(record["wall_seconds"])
    groups: dict[tuple[str, str], list[Task]] = {}
    for task in pending:
        groups.setdefault((task.dataset, task.remedy), []).append(task)
    datasets: dict = {}
    notes = []
    bar = tqdm(groups.items(), desc="timing steps", unit="remedy", leave=False, disable=not probe)
    for (dataset, remedy), tasks in bar:
        known = measured.get((remedy, request_key(tasks[0].values)))
        if known:
            seconds, source = statistics.fmean(known), "stored"
        elif probe:
            bar.set_postfix_str(f"{dataset} {remedy}")
            try:
                seconds, own_fit = probe_seconds(catalog, tasks[0], datasets)
            except Exception as exc:  # the run itself will fail and say why
                notes.append(f"{dataset} {remedy}: could not time a step ({type(exc).__name__}: {exc})")
                continue
            if own_fit:
                notes.append(f"{dataset} {remedy}: runs its own fit loop; its estimate assumes `steps` steps in all")
            source = "timed"
        else:
            continue
        for task in tasks:
            task.estimate, task.estimated_from = seconds, source
    return notes


def makespan(seconds: list[float], lanes: int) -> float:
    """Elapsed time of running jobs longest first, ``lanes`` at a time (the order the pool gets them)."""
    finish = [WORKER_START_SECONDS] * max(1, min(lanes, len(seconds)))
    for job in sorted(seconds, reverse=True):
        heapq.heappush(finish, heapq.heappop(finish) + job)
    return max(finish) if seconds else 0.0


def print_estimate(pending: list[Task], workers: int, notes: list[str]) -> None:
    known = [task.estimate for task in pending if task.estimate is not None]
    if not known:
        print(f"  estimated time: unknown (no step timed); {len(pending)} runs")
        return
    unknown = len(pending) - len(known)
    cpus = usable_cpus()
    # the presets give each run one thread: workers beyond the CPUs share them and add no throughput
    lanes = min(workers, cpus)
    sources = []
    stored = sum(1 for task in pending if task.estimated_from == "stored")
    timed = sum(1 for task in pending if task.estimated_from == "timed")
    if stored:
        sources.append(f"{stored} runs from the wall times of stored runs of the same settings")
    if timed:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        sources.append(f"{timed} runs from timed steps x steps, timed at load average {load:.1f} on {cpus} usable CPUs: a busier machine times slower")
    if unknown:
        sources.append(f"{unknown} runs not estimated")
    print(f"  estimated time: {duration(makespan(known, lanes))} on {workers} workers "
          f"(sum of run times {duration(sum(known))}; {'; '.join(sources)})")
    per: dict[str, dict[str, tuple[float, Any]]] = {}
    for task in pending:
        if task.estimate is not None:
            per.setdefault(task.dataset, {})[task.remedy] = (task.estimate, task.values[CORE].get("steps", "default"))
    for dataset, remedies in per.items():
        # the dataset's usual steps in the heading; a remedy with a budget of its own says its steps
        usual = statistics.mode(steps for _, steps in remedies.values())
        listing = ", ".join(f"{remedy} {duration(seconds)}" + ("" if steps == usual else f" ({steps} steps)")
                            for remedy, (seconds, steps) in sorted(remedies.items(), key=lambda kv: display_order(kv[0])))
        print(f"  per run, {dataset} ({usual} steps): {listing}")
    for note in notes:
        print(f"  note: {note}")
