"""Checkpoints: written atomically, loaded with ``weights_only=True`` so they can never run code."""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from gancore.errors import GancoreError, one_line

PATTERN = "step-{:08d}.pt"
_STEP = re.compile(r"step-(\d+)\.pt")
# what torch.load(weights_only=True) reads back, besides containers: anything else makes a
# checkpoint that cannot be resumed, so it is refused when written
_STORABLE_LEAVES = (torch.Tensor, int, float, bool, str, bytes, type(None), torch.Size, torch.dtype, torch.device)


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any moment leaves either the old ``path`` or the new one, never half of one. A
    file system error (disk full, read-only) is a one-line GancoreError naming ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise GancoreError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from collaborators
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise GancoreError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint file is named after, or None for other files."""
    match = _STEP.fullmatch(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first: by step number, not by name (which sorts
    ``step-100000000.pt`` before ``step-99999999.pt``)."""
    found = [(checkpoint_step(path), path) for path in directory.glob("step-*.pt")]
    return [path for step, path in sorted((step, path) for step, path in found if step is not None)]


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint safely; a corrupt or foreign file is a one-line GancoreError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on odd pickles: a bad file is reported below, in one line
            state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise GancoreError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # torch.load raises many types on damaged bytes; all mean the same to the user
        raise GancoreError(f"checkpoint {path} is corrupt or not a gancore checkpoint ({one_line(exc, 160)})") from None
    if not isinstance(state, dict) or "step" not in state or "models" not in state:
        raise GancoreError(f"checkpoint {path} is not a gancore checkpoint")
    problem = _malformed_field(state)
    if problem:
        raise GancoreError(f"checkpoint {path} is damaged: {problem}")
    return state


# the top-level fields of a checkpoint (Trainer.state_dict) and the types they must have
_FIELDS = {
    "step": int, "models": dict, "optimizers": dict, "generator": torch.Tensor, "torch_rng": torch.Tensor,
    "numpy_rng": dict, "python_rng": dict, "lr_scale": float, "history": list, "last_logs": dict, "plugins": dict,
}


def _malformed_field(state: dict) -> str | None:
    for name, kind in _FIELDS.items():
        value = state.get(name)
        if name not in state or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"field {name!r} is {'missing' if name not in state else 'a ' + type(value).__name__}, expected {kind.__name__}"
    if state["step"] < 0:
        return f"field 'step' is {state['step']}"
    rollbacks = state.get("rollbacks", 0)  # optional: older checkpoints lack it
    if type(rollbacks) is not int or rollbacks < 0:
        return f"field 'rollbacks' is {rollbacks!r}, expected a count >= 0"
    for name, module_state in state["models"].items():
        if not isinstance(module_state, dict) or not all(isinstance(v, torch.Tensor) for v in module_state.values()):
            return f"network {name!r} holds something other than tensors"
    if not all(isinstance(entry, dict) for entry in state["history"]):
        return "field 'history' holds something other than metric tables"
    return None


def latest_checkpoint(directory: Path) -> Path:
    checkpoints = list_checkpoints(directory)
    if not checkpoints:
        raise GancoreError(f"no checkpoint in {directory}; was the run started with `gancore train`?")
    return checkpoints[-1]


def unstorable_part(value, where: str = "state") -> str | None:
    """Where in ``value`` something lies that ``torch.load(weights_only=True)`` cannot read back
    (e.g. ``"state['buffer'][2]: a Foo"``), or None when all of it can be checkpointed."""
    if isinstance(value, (dict, OrderedDict)):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                return f"{where}: a key of type {type(key).__name__}"
            found = unstorable_part(item, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        for index, item in enumerate(value):
            found = unstorable_part(item, f"{where}[{index}]")
            if found:
                return found
        return None
    if type(value) in _STORABLE_LEAVES or isinstance(value, torch.Tensor):
        return None
    return f"{where}: a {type(value).__module__}.{type(value).__qualname__}"
