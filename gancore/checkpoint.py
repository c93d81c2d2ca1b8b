"""Checkpoints: written atomically, loaded with ``weights_only=True`` so they can never run code."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from gancore.errors import GancoreError

PATTERN = "step-{:08d}.pt"


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any moment leaves either the old ``path`` or the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from collaborators
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def save_checkpoint(directory: Path, step: int, state: dict, keep: int) -> Path:
    """Write ``state`` as ``directory/step-XXXXXXXX.pt`` and delete all but the ``keep`` newest."""
    path = directory / PATTERN.format(step)
    atomic_write(path, lambda handle: torch.save(state, handle))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first."""
    return sorted(directory.glob("step-*.pt"))


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint safely; a corrupt or foreign file is a one-line GancoreError."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise GancoreError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # torch.load raises many types on damaged bytes; all mean the same to the user
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GancoreError(f"checkpoint {path} is corrupt or not a gancore checkpoint ({first_line[:120]})") from None
    if not isinstance(state, dict) or "step" not in state or "models" not in state:
        raise GancoreError(f"checkpoint {path} is not a gancore checkpoint")
    return state


def latest_checkpoint(directory: Path) -> Path:
    checkpoints = list_checkpoints(directory)
    if not checkpoints:
        raise GancoreError(f"no checkpoint in {directory}; was the run started with `gancore train`?")
    return checkpoints[-1]
