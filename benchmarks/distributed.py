"""Throughput of data-parallel training: 1 vs N processes (torchrun, gloo on CPU, one thread each).

    .venv/bin/python -m benchmarks.distributed --dataset ring8 --nproc 1 2
    .venv/bin/python -m benchmarks.distributed --dataset stacked-digits --batch-size 256 --steps 40 200

Each case runs ``torchrun --nproc-per-node N -m gancore.cli train`` twice, for the two step
counts, and reports (difference in steps × batch) / (difference in wall time): samples per
second of training alone, without process start-up, the final evaluation and the pictures.
It also prints the bytes each rank sends per step for the gradient all-reduce (ring algorithm:
2(N-1)/N × parameters × 4 bytes per update). See benchmarks/DISTRIBUTED.md.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def wall_seconds(nproc: int, dataset: str, batch_size: int, steps: int, out: str) -> float:
    command = [
        *TORCHRUN, "--nproc-per-node", str(nproc), "-m", "gancore.cli", "train", "--dataset", dataset,
        "--steps", str(steps), "--batch-size", str(batch_size), "--device", "cpu", "-q", "--out", out,
        "-s", "train.eval_every=0", "-s", "train.checkpoint_every=0", "-s", "train.eval_samples=500",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def parameters(dataset: str) -> dict[str, int]:
    from gancore.manager import Catalog
    from gancore.trainer import Trainer

    run = Catalog.installed().resolve([], {"train": {"dataset": dataset, "device": "cpu", "n_train": 1000}})
    trainer = Trainer(run, progress=False)
    return {player: sum(p.numel() for p in trainer.models.parameters(player)) for player in ("G", "D")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ring8")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, nargs=2, default=(100, 600), metavar=("SHORT", "LONG"))
    parser.add_argument("--nproc", type=int, nargs="+", default=(1, 2))
    args = parser.parse_args()
    counts = parameters(args.dataset)
    print(f"{args.dataset}: G {counts['G']} parameters, D {counts['D']}; batch {args.batch_size} (global); steps {args.steps[0]} vs {args.steps[1]}")
    print("| processes | samples/s | speed-up | all-reduce bytes sent per rank per step |")
    print("|---|---|---|---|")
    base = None
    for nproc in args.nproc:
        with tempfile.TemporaryDirectory() as out:
            short, long = (wall_seconds(nproc, args.dataset, args.batch_size, steps, out) for steps in args.steps)
        rate = (args.steps[1] - args.steps[0]) * args.batch_size / (long - short)
        base = base or rate
        sent = 2 * (nproc - 1) / nproc * 4 * (counts["G"] + counts["D"])  # n_critic = 1: one D and one G update
        print(f"| {nproc} | {rate:,.0f} | {rate / base:.2f} | {sent:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
