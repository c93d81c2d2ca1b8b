"""Overhead of the core: a vanilla step through the trainer (all hook points, no plugin) against
the same networks and optimizers in a hand-written loop. Goal: at most 5% slower.

    pytest benchmarks/bench_core.py --benchmark-enable --benchmark-group-by=group
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.functional import softplus

from gancore.manager import Catalog
from gancore.trainer import Trainer

# ring8 at the core's defaults (Metz et al.'s setup): 2x128 MLPs, z 256, batch 512
SETTINGS = {"dataset": "ring8", "device": "cpu", "eval_every": 0}


@pytest.fixture
def trainer() -> Trainer:
    return Trainer(Catalog.installed().resolve([], {"train": SETTINGS}), progress=False)


def hand_written_step(G, D, opt_g, opt_d, points, generator, batch, z_dim):
    real = points[torch.randint(len(points), (batch,), generator=generator)]
    with torch.no_grad():
        fake = G(torch.randn(batch, z_dim, generator=generator))
    loss_d = softplus(-D(real).logits).mean() + softplus(D(fake).logits).mean()
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    fake = G(torch.randn(batch, z_dim, generator=generator))
    loss_g = softplus(-D(fake).logits).mean()
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()


@pytest.mark.benchmark(group="vanilla-step", warmup=True)
def test_core_step(benchmark, trainer):
    benchmark(trainer.train_step)


@pytest.mark.benchmark(group="vanilla-step", warmup=True)
def test_hand_written_step(benchmark, trainer):
    models, train = trainer.models, trainer.train
    args = (models.G, models.D, trainer.optimizers["G"], trainer.optimizers["D"], trainer.dataset.points, trainer.generator, train.batch_size, train.z_dim)
    benchmark(hand_written_step, *args)
