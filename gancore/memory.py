"""Sizes a user typed that cannot fit: refused before allocating, with the setting to lower.

The estimates are lower bounds (the tensors a step or a draw cannot do without), so a refusal
is never wrong; what they miss, an allocation failure caught by :func:`is_out_of_memory`
reports in one line too.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import torch

from gancore.errors import GancoreError

FLOAT_BYTES = 4


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` (None when unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError


def require(nbytes: float, device: torch.device, what: str, fix: str) -> None:
    """Refuse ``what`` when it needs more than ``device`` has free."""
    free = available_bytes(device)
    if free is not None and nbytes > free:
        raise GancoreError(f"{what} needs at least {_size(nbytes)} but {device.type} memory has {_size(free)} free; {fix}")


def _activations_per_sample(train: SimpleNamespace, dim: int) -> int:
    """Values one sample carries through G and D (inputs, outputs, hidden layers)."""
    return train.z_dim + 2 * dim + train.g_width * train.g_depth + train.d_width * train.d_depth * train.d_maxout


def _parameters(train: SimpleNamespace, dim: int) -> int:
    g = train.z_dim * train.g_width + train.g_width**2 * (train.g_depth - 1) + train.g_width * dim
    d = (dim * train.d_width + train.d_width**2 * (train.d_depth - 1)) * train.d_maxout + train.d_width
    return g + d


def check_training_fits(train: SimpleNamespace, dim: int, eval_samples: int, device: torch.device) -> None:
    """Refuse settings whose networks, one batch or one evaluation cannot fit on ``device``."""
    parameters = _parameters(train, dim) * FLOAT_BYTES * 4  # weights, gradients, Adam's two moments
    require(parameters, device, "the networks (g_width, d_width, z_dim)", "lower train.g_width, train.d_width or train.z_dim")
    batch = train.batch_size * _activations_per_sample(train, dim) * FLOAT_BYTES * 2  # forward values and their gradients
    require(parameters + batch, device, f"a training step at train.batch_size={train.batch_size}", "lower train.batch_size (or the widths)")
    require(sampling_bytes(train, dim, eval_samples), device, f"an evaluation of {eval_samples} samples", "lower train.eval_samples")


def sampling_bytes(train: SimpleNamespace, dim: int, n: int) -> int:
    """What drawing ``n`` samples at once holds: noise, G's widest layer and the samples."""
    return n * (train.z_dim + train.g_width + dim) * FLOAT_BYTES


def check_dataset_fits(n: int, dim: int, device: torch.device, what: str) -> None:
    """Refuse drawing ``n`` built-in training points of ``dim`` values (made in float64, kept in float32)."""
    require(n * dim * (8 + FLOAT_BYTES), device, what, "lower train.n_train")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CPU or GPU)."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())
