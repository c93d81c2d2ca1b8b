"""One G step of the unrolled GAN at k = 0, 1, 5, 10 unrolled D steps, on ring8 at the core's
defaults (2×128 MLPs, z 256, batch 512), one CPU thread:

* ``exact``: the plugin's G step, G's gradient through the k updates (second order);
* ``first-order``: the plugin's first-order variant (the unrolled D is a constant);
* ``baseline``: the same exact unroll written by hand with torch.func: ``functional_call``,
  ``autograd.grad(create_graph=True)`` and an Adam loop over the parameter dict;
* ``vanilla``: the core's G step against D itself.

Goals: exact no slower than baseline; first-order at most 1.2·(k+1)× vanilla. On a CPU shared
with other work, time with the process's CPU time (wall-clock minima of the long cases are
inflated by preemption):

    pytest benchmarks/bench_unrolled.py --benchmark-enable --benchmark-timer=time.process_time \
        --benchmark-min-rounds=15 --benchmark-columns=min,median,rounds

pytest-benchmark times one case after another, so a machine whose speed drifts (a shared VM)
biases exact against baseline. ``python -m benchmarks.bench_unrolled [K ...]`` times the two
alternately, round by round, in one process and prints their medians.
"""
from __future__ import annotations

import statistics
import sys
import time

import pytest
import torch
from torch.func import functional_call
from torch.nn.functional import softplus

from gancore import hookimpl
from gancore.manager import Catalog
from gancore.trainer import Trainer

SETTINGS = {"dataset": "ring8", "device": "cpu", "eval_every": 0, "cpu_threads": 1}


class GOnly:
    """Step 0 trains D once (so that its optimizer has state); every later step is one G update."""

    @hookimpl
    def gancore_step_schedule(self, step):
        return (1, 1) if step == 0 else (0, 1)


def make_trainer(plugins: list[str], options: dict | None = None) -> Trainer:
    catalog = Catalog.installed()
    catalog.add("g-only", GOnly, "benchmarks", "0")
    trainer = Trainer(catalog.resolve(plugins + ["g-only"], {"train": SETTINGS, **(options or {})}), progress=False)
    trainer.train_step()
    return trainer


def hand_written_unrolled_g_step(G, D, opt_g, opt_d, points, generator, batch, z_dim, k):
    """The exact unroll, plainly: k Adam steps of D on one (real, G(z)) batch, G's loss through them."""
    real = points[torch.randint(len(points), (batch,), generator=generator)]
    fake = G(torch.randn(batch, z_dim, generator=generator))
    group = opt_d.param_groups[0]
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    params = {name: p.detach().requires_grad_() for name, p in D.named_parameters()}
    m = {name: opt_d.state[p]["exp_avg"] for name, p in D.named_parameters()}
    v = {name: opt_d.state[p]["exp_avg_sq"] for name, p in D.named_parameters()}
    t0 = int(opt_d.state[next(D.parameters())]["step"])
    for i in range(k):
        loss_d = softplus(-functional_call(D, params, (real,)).logits).mean() + softplus(functional_call(D, params, (fake,)).logits).mean()
        grads = torch.autograd.grad(loss_d, list(params.values()), create_graph=True)
        t = t0 + i + 1
        for (name, p), g in zip(list(params.items()), grads):
            m[name] = beta1 * m[name] + (1 - beta1) * g
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            params[name] = p - lr / (1 - beta1**t) * m[name] / ((v[name] / (1 - beta2**t)).sqrt() + eps)
    loss_g = softplus(-functional_call(D, params, (fake,)).logits).mean()
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    for p in G.parameters():  # √v at v = 0 (a dead D unit) makes this plain unroll's gradient NaN;
        p.grad.nan_to_num_(0.0)  # keep G finite so that later rounds time finite arithmetic
    opt_g.step()


KS = [0, 1, 5, 10]


@pytest.mark.benchmark(group="unrolled-g-step", warmup=True)
def test_vanilla(benchmark):
    benchmark(make_trainer([]).train_step)


@pytest.mark.parametrize("k", KS)
@pytest.mark.benchmark(group="unrolled-g-step", warmup=True)
def test_exact(benchmark, k):
    benchmark(make_trainer(["unrolled"], {"unrolled": {"steps": k}}).train_step)


@pytest.mark.parametrize("k", KS)
@pytest.mark.benchmark(group="unrolled-g-step", warmup=True)
def test_first_order(benchmark, k):
    benchmark(make_trainer(["unrolled"], {"unrolled": {"steps": k, "backprop": False}}).train_step)


@pytest.mark.parametrize("k", KS)
@pytest.mark.benchmark(group="unrolled-g-step", warmup=True)
def test_baseline(benchmark, k):
    trainer = make_trainer([])
    models, train = trainer.models, trainer.train
    args = (models.G, models.D, trainer.optimizers["G"], trainer.optimizers["D"], trainer.dataset.points, trainer.generator, train.batch_size, train.z_dim, k)
    benchmark(hand_written_unrolled_g_step, *args)


def compare_alternately(k: int, rounds: int = 40) -> tuple[float, float]:
    """Median process time (s) of the exact G step and of the baseline at ``k``, timed in turns."""
    exact = make_trainer(["unrolled"], {"unrolled": {"steps": k}})
    plain = make_trainer([])
    args = (plain.models.G, plain.models.D, plain.optimizers["G"], plain.optimizers["D"], plain.dataset.points,
            plain.generator, plain.train.batch_size, plain.train.z_dim, k)
    steps = {"exact": exact.train_step, "baseline": lambda: hand_written_unrolled_g_step(*args)}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(rounds + 3):  # the first 3 rounds warm up
        for name, step in steps.items():
            start = time.process_time()
            step()
            if round_ >= 3:
                times[name].append(time.process_time() - start)
    return statistics.median(times["exact"]), statistics.median(times["baseline"])


if __name__ == "__main__":
    for k in [int(arg) for arg in sys.argv[1:]] or [5, 10]:
        exact_s, baseline_s = compare_alternately(k)
        print(f"k={k}: exact {exact_s * 1e3:.1f} ms, baseline {baseline_s * 1e3:.1f} ms (median), exact/baseline {exact_s / baseline_s:.2f}")
