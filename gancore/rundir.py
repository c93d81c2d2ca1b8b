"""A run directory: resolved config, metrics.jsonl, summary.json, checkpoints and pictures.

Run directories are never overwritten: a new run gets a fresh name, and every file is written
atomically (or appended line by line), so an interrupted run leaves nothing half-written.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

from gancore import __version__
from gancore.checkpoint import PATTERN, atomic_write, save_checkpoint
from gancore.config import RunConfig
from gancore.errors import GancoreError
from gancore.report import plot_mode_shares, plot_samples

if TYPE_CHECKING:
    from gancore.trainer import Trainer


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def dump_json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


class RunDirectory:
    """The files of one run under ``path``."""

    def __init__(self, path: Path):
        self.path = path
        self.checkpoints = path / "checkpoints"

    @classmethod
    def create(cls, root: Path, name: str, config: RunConfig) -> "RunDirectory":
        """Make a new, uniquely named run directory under ``root`` and write its config."""
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GancoreError(f"cannot create output directory {root}: {exc.strerror}") from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise GancoreError(f"output directory {root} is not writable; choose another with --out")
        for attempt in range(1, 10_000):
            path = root / (name if attempt == 1 else f"{name}-{attempt}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        run = cls(path)
        _write_text(path / "config.toml", tomli_w.dumps(config.to_toml_dict()))
        _write_text(path / "run.json", dump_json({"gancore": __version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        return run

    def append_metrics(self, metrics: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(metrics, sort_keys=True) + "\n")

    def has_checkpoint(self, step: int) -> bool:
        return (self.checkpoints / PATTERN.format(step)).is_file()

    def save_checkpoint(self, step: int, state: dict, keep: int) -> Path:
        return save_checkpoint(self.checkpoints, step, state, keep)

    def finish(self, trainer: Trainer, summary: dict, seconds: float) -> None:
        """Write summary.json (deterministic: no times or paths), the pictures, and the wall time in run.json."""
        _write_text(self.path / "summary.json", dump_json(summary))
        self.write_pictures(trainer)
        meta = json.loads((self.path / "run.json").read_text())
        meta.update(wall_seconds=round(seconds, 3), device=str(trainer.device), steps=trainer.step)
        _write_text(self.path / "run.json", dump_json(meta))

    def write_pictures(self, trainer: Trainer) -> None:
        label = f"{trainer.dataset.name}, {'+'.join(trainer.config.plugins) or 'vanilla'}, seed {trainer.train.seed}, step {trainer.step}"
        samples = trainer.sample(trainer.eval_samples)
        plot_samples(self.path / "samples.png", samples, trainer.dataset, label)
        plot_mode_shares(self.path / "modes.png", trainer.history, label)


def open_trainer(path: Path, catalog, progress: bool = False, steps: int | None = None) -> "Trainer":
    """Rebuild the trainer of the run at ``path`` from its config.toml and load its latest checkpoint.

    :param steps: a new total number of steps (to extend a finished run); written to config.toml.
    """
    from gancore.checkpoint import latest_checkpoint, load_checkpoint
    from gancore.config import CORE, read_toml
    from gancore.trainer import Trainer

    if not (path / "config.toml").is_file():
        raise GancoreError(f"{path} is not a gancore run directory (no config.toml)")
    data = read_toml(path / "config.toml")
    values = {CORE: {**data.get(CORE, {}), **({} if steps is None else {"steps": steps})}, **data.get("plugins", {})}
    run = catalog.resolve(list(data.get("plugins", {})), values)
    trainer = Trainer(run, progress=progress)
    checkpoint = latest_checkpoint(path / "checkpoints")
    state = load_checkpoint(checkpoint, trainer.device)
    with run.reporting_plugin_faults():
        try:
            trainer.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise GancoreError(f"checkpoint {checkpoint} does not match the run's config.toml ({type(error).__name__}: {str(error).splitlines()[0][:120]})") from None
    trainer.output = RunDirectory(path)
    return trainer


def resume_run(path: Path, catalog, progress: bool, steps: int | None) -> "Trainer":
    """Open a run to continue training: metrics logged after its last checkpoint are dropped
    (they are recomputed), and leftovers of an interrupted checkpoint write are removed."""
    trainer = open_trainer(path, catalog, progress, steps)
    if steps is not None:
        _write_text(path / "config.toml", tomli_w.dumps(trainer.config.to_toml_dict()))
    for leftover in trainer.output.checkpoints.glob(".*.tmp"):
        leftover.unlink()
    lines = "".join(json.dumps(metrics, sort_keys=True) + "\n" for metrics in trainer.history)
    _write_text(path / "metrics.jsonl", lines)
    return trainer
