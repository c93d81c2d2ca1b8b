"""Running: one run in a worker process, and the pool that runs the pending ones."""
from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from gancore import __version__, hookimpl
from gancore.checkpoint import atomic_write
from gancore.manager import Catalog
from gancore.metrics import nearest_modes
from gancore.provenance import Stopwatch, build_info

from benchmarks.modes.plan import Task
from benchmarks.modes.presets import PICTURE_IMAGES
from benchmarks.modes.records import dump_json, normalized, write_text


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or `taskset`'s share), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_WORKER_CATALOG: Catalog | None = None
_WORKER_STEPS_DONE = None  # a worker's handle on the pool's shared step count (multiprocessing.Value)


def _init_worker(steps_done) -> None:
    global _WORKER_STEPS_DONE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    torch.set_num_threads(1)
    _WORKER_STEPS_DONE = steps_done


def _count_into(steps_done) -> Callable[[], None]:
    def count() -> None:
        with steps_done.get_lock():
            steps_done.value += 1
    return count


class StepCounter:
    """Calls ``on_step`` after every training step of a run, for the steps progress bar: registered
    on the run's plugin manager beside its plugins, it is no remedy (no option, no state, not in the
    record) and reads nothing."""

    def __init__(self, on_step: Callable[[], None]):
        self.on_step = on_step

    @hookimpl
    def gancore_step_end(self, trainer, step):
        self.on_step()


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


def base_record(task: Task) -> dict:
    """What every record of ``task`` holds, whatever its outcome."""
    return {"dataset": task.dataset, "remedy": task.remedy, "plugins": list(task.plugins), "seed": task.seed,
            "request": normalized(task.values), "gancore": __version__, "build": build_info()}


def store_finished(task: Task, base: dict, trainer, summary: dict, elapsed: dict[str, float], **extra) -> dict:
    """Store the record of a finished run of ``task`` and the samples its final evaluation scored (a
    picture's view of them); return the record."""
    with trainer.run.reporting_plugin_faults():
        samples = trainer.sample(trainer.eval_samples, trainer.evaluation_generator())  # those the final evaluation scored
    samples = samples[torch.isfinite(samples.reshape(len(samples), -1)).all(dim=1)]
    if samples.dim() == 4:  # images: the first samples, as images, for a grid
        view = samples[:PICTURE_IMAGES].detach().float().cpu().numpy()
    else:
        view = picture_view(samples.reshape(len(samples), -1), trainer.dataset.modes, trainer.dataset.hq_norm).numpy().astype(np.float32)
    atomic_write(task.samples, lambda handle: np.save(handle, view))
    record = {**base, "status": "ok", "settings": trainer.config.to_toml_dict(), "metrics": summary,
              "history": trainer.history, **elapsed, **extra}
    write_text(task.record, dump_json(record))
    return record


def execute(task: Task, catalog: Catalog | None = None, on_step: Callable[[], None] | None = None) -> dict:
    """Run one task with the core trainer, store its record and samples, and return the record.
    ``on_step`` is called after every training step (in a worker: the pool's shared step count).

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
    if on_step is None and _WORKER_STEPS_DONE is not None:
        on_step = _count_into(_WORKER_STEPS_DONE)
    base = base_record(task)
    started = Stopwatch()
    try:
        run = catalog.resolve(list(task.plugins), task.values)
        if on_step is not None:
            run.manager.register(StepCounter(on_step), name="benchmarks.modes step counter")
        with run.reporting_plugin_faults():
            trainer = Trainer(run, output=None, progress=False)
            try:
                return store_finished(task, base, trainer, trainer.fit(), started.elapsed())
            except NonFiniteError as exc:
                summary = {"dataset": trainer.dataset.name, "plugins": list(run.config.plugins), "seed": trainer.train.seed, **trainer.evaluate()}
                return store_finished(task, base, trainer, summary, started.elapsed(), diverged=str(exc))
    except Exception as exc:  # a broken plugin must not stop the other runs
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        record = {**base, "status": "failed", "error": f"{type(exc).__name__}: {message}"[:500],
                  **started.elapsed()}
    write_text(task.record, dump_json(record))
    return record


def _planned_steps(task: Task, catalog: Catalog) -> int:
    """The steps ``task`` trains, for the progress bar; 0 for one that cannot resolve (it is stored as failed)."""
    try:
        return catalog.resolve(list(task.plugins), task.values).config.train.steps
    except Exception:  # a broken plugin must not stop the other runs (execute stores the failure)
        return 0


def run_tasks(tasks: list[Task], workers: int, catalog: Catalog) -> tuple[list[dict], bool]:
    """Run tasks (longest estimate first) with a progress bar over the training steps of all of them
    (a run of hours moves it too), finished runs counted in its label; return (records, interrupted)."""
    tasks = sorted(tasks, key=lambda task: -(task.estimate or 0.0))
    records: list[dict] = []
    bar = tqdm(total=sum(_planned_steps(task, catalog) for task in tasks), desc=f"runs 0/{len(tasks)}", unit="step", dynamic_ncols=True)

    def finished(record: dict) -> None:
        records.append(record)
        bar.set_description_str(f"runs {len(records)}/{len(tasks)}", refresh=False)
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
                    finished(execute(task, catalog, on_step=lambda: bar.update(1)))
            else:
                context = multiprocessing.get_context("spawn")
                steps_done = context.Value("q", 0)
                pool = context.Pool(workers, initializer=_init_worker, initargs=(steps_done,))
                try:
                    results = pool.imap_unordered(execute, tasks, chunksize=1)
                    while len(records) < len(tasks):
                        try:
                            record = results.next(timeout=1.0)
                        except multiprocessing.TimeoutError:
                            record = None
                        bar.update(steps_done.value - bar.n)
                        if record is not None:
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
