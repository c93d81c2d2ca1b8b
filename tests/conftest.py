"""Shared fixtures: tiny, fast runs through the real catalog and trainer."""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # Triton kernels run through Triton's CPU interpreter; this is fixed when triton and
    # gancore.kernels are imported, so it is set before anything imports them
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from gancore.manager import Catalog  # noqa: E402
from gancore.trainer import Trainer  # noqa: E402

TINY = {
    "steps": 20,
    "batch_size": 64,
    "z_dim": 4,
    "g_width": 16,
    "d_width": 16,
    "n_train": 2000,
    "eval_every": 0,
    "eval_samples": 500,
    "device": "cpu",
}


# the tests' networks are tiny: one thread each avoids oversubscribing CI's two cores
torch.set_num_threads(1)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog.installed()


@pytest.fixture
def make_trainer(catalog):
    """Build a trainer of a tiny run: ``make_trainer(plugins, extra={name: cls}, train={...}, options={...})``."""

    def build(plugins=(), extra=None, train=None, options=None, **kwargs) -> Trainer:
        for name, cls in (extra or {}).items():
            catalog.add(name, cls, "tests", "0")
        values = {"train": {**TINY, **(train or {})}, **(options or {})}
        return Trainer(catalog.resolve(list(plugins), values), progress=False, **kwargs)

    return build
