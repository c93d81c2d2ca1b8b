"""Resume a run that gancore.fit wrote: the same call with ``resume=True`` (and a new total).

The run directory holds config.toml, metrics.jsonl, checkpoints and pictures, as the command
line writes them; Ctrl-C during training writes a checkpoint too. A resumed run continues
bit-identically (on CPU) to one that was never stopped.

    python examples/resume.py [RUN_DIR]       # GANCORE_EXAMPLE_STEPS=20 for a quick look
"""
import os
import sys
from pathlib import Path

import torch
from torch import nn

import gancore

STEPS = int(os.environ.get("GANCORE_EXAMPLE_STEPS", "1000"))


def train(run_dir: Path, steps: int, resume: bool) -> gancore.Result:
    torch.manual_seed(0)  # the same initial networks every time: a resume must be given the same
    G = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
    D = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 1))
    points = torch.randn(5000, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 0.2])
    return gancore.fit(
        G, D, points, plugins=["ema"], run_dir=run_dir, resume=resume,
        steps=steps, z_dim=8, batch_size=128, eval_every=max(STEPS // 2, 1), checkpoint_every=max(STEPS // 2, 1),
        device="cpu", progress=False,
    )


if __name__ == "__main__":
    run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/example-resume")
    first = train(run_dir, STEPS, resume=run_dir.exists())
    print(f"trained to step {first.summary['step']} in {first.run_dir}")
    longer = train(run_dir, first.summary["step"] + STEPS, resume=True)
    print(f"resumed to step {longer.summary['step']}; evaluations at steps {[m['step'] for m in longer.history]}")
