"""Your own conv G and D on your own image tensor, with minibatch discrimination and PacGAN.

The data: 16×16 images of one bright bar, horizontal or vertical, at one of 8 positions: 16
modes. Passing the 16 clean bars as ``modes`` makes every evaluation count the bars G draws.

    python examples/conv_images.py            # GANCORE_EXAMPLE_STEPS=20 for a quick look

Measured (600 steps, seed 0, CPU, torch 2.13.0, about 30 s): "step 600: 16/16 bars drawn,
24.6% of samples near a bar"; the same script with ``plugins=[]``: 0/16 and 0.0% at every
evaluation. One seed, so an illustration, not a benchmark.
"""
import os

import torch
from torch import nn

import gancore
from gancore.models import Discriminator

STEPS = int(os.environ.get("GANCORE_EXAMPLE_STEPS", "600"))


def bars(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy bar images (n, 1, 16, 16) in [-1, 1], and the 16 clean bars (the modes)."""
    clean = -torch.ones(16, 1, 16, 16)
    for k in range(8):
        clean[k, 0, 2 * k : 2 * k + 2, :] = 1.0  # horizontal bars
        clean[8 + k, 0, :, 2 * k : 2 * k + 2] = 1.0  # vertical bars
    which = torch.randint(16, (n,), generator=generator)
    return (clean[which] + 0.05 * torch.randn(n, 1, 16, 16, generator=generator)).clamp(-1, 1), clean


class ConvGenerator(nn.Module):
    z_dim = 32  # gancore.fit reads z_dim from here

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(self.z_dim, 64 * 4 * 4), nn.Unflatten(1, (64, 4, 4)), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),  # 8×8
            nn.ConvTranspose2d(32, 1, 4, 2, 1), nn.Tanh(),  # 16×16
        )

    def forward(self, z):
        return self.net(z)


def conv_discriminator() -> Discriminator:
    # body -> features, head -> one logit: minibatch discrimination widens the head, PacGAN the first conv
    body = nn.Sequential(
        nn.Conv2d(1, 32, 4, 2, 1), nn.LeakyReLU(0.2),  # 8×8
        nn.Conv2d(32, 64, 4, 2, 1), nn.LeakyReLU(0.2),  # 4×4
        nn.Flatten(),
    )
    return Discriminator(body, nn.Linear(64 * 4 * 4, 1))


if __name__ == "__main__":
    torch.manual_seed(0)
    images, modes = bars(4000, torch.Generator().manual_seed(0))
    result = gancore.fit(
        ConvGenerator(), conv_discriminator(), images,
        plugins=["minibatch-discrimination", ("pacgan", {"m": 2})],
        modes=modes, radius=3.0,  # an image within L2 distance 3 of a clean bar draws that bar
        steps=STEPS, batch_size=64, lr_g=1e-3, lr_d=4e-4, eval_every=max(STEPS // 4, 1), eval_samples=500,
        device="cpu", progress=False,
    )
    for metrics in result.history:
        print(f"step {metrics['step']}: {metrics['modes_captured']}/16 bars drawn, {metrics['hq_percent']:.1f}% of samples near a bar")
