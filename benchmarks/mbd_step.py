"""A training step with minibatch discrimination (defaults: 16 kernels x 5) against a vanilla
step, ring8 at the core's defaults (batch 512), one thread, interleaved, medians.

    python benchmarks/mbd_step.py [ROUNDS]

The third column runs the same MBD step on the torch reference (GANCORE_CPU_KERNELS=0), to
show what the fused CPU path changed.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

from gancore.kernels import _cpu
from gancore.manager import Catalog
from gancore.trainer import Trainer

SETTINGS = {"dataset": "ring8", "device": "cpu", "eval_every": 0}


def trainer(plugins: list[str]) -> Trainer:
    return Trainer(Catalog.installed().resolve(plugins, {"train": dict(SETTINGS)}), progress=False)


def use_reference(yes: bool) -> None:
    os.environ[_cpu.DISABLE_VARIABLE] = "0" if yes else "1"
    _cpu.library.cache_clear()


def main(rounds: int) -> None:
    torch.set_num_threads(1)
    cases = {
        "vanilla": (trainer([]), False),
        "mbd (fused CPU)": (trainer(["minibatch-discrimination"]), False),
        "mbd (reference)": (trainer(["minibatch-discrimination"]), True),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds + 1):
        for name, (t, reference) in cases.items():
            use_reference(reference)
            t0 = time.perf_counter()
            t.train_step()
            if r:  # round 0 is the warm-up
                times[name].append(time.perf_counter() - t0)
    vanilla = statistics.median(times["vanilla"])
    print(f"load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}, {rounds} rounds")
    for name, ts in times.items():
        q1, med, q3 = statistics.quantiles(ts, n=4, method="inclusive")
        print(f"{name:18s} median {med * 1e3:7.2f} ms  IQR {(q3 - q1) * 1e3:6.2f} ms  {med / vanilla:5.2f}x vanilla")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
