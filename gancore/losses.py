"""Adversarial loss families: each gives D's loss from (real, fake) logits and G's from fake logits."""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch.nn.functional import relu, softplus


class LossFamily(NamedTuple):
    discriminator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    generator: Callable[[torch.Tensor], torch.Tensor]


LOSSES: dict[str, LossFamily] = {
    # Goodfellow et al.'s practical G loss: -log D(G(z))
    "non-saturating": LossFamily(
        lambda real, fake: softplus(-real).mean() + softplus(fake).mean(),
        lambda fake: softplus(-fake).mean(),
    ),
    # the original game: G minimizes log(1 - D(G(z)))
    "minimax": LossFamily(
        lambda real, fake: softplus(-real).mean() + softplus(fake).mean(),
        lambda fake: -softplus(fake).mean(),
    ),
    "wasserstein": LossFamily(
        lambda real, fake: fake.mean() - real.mean(),
        lambda fake: -fake.mean(),
    ),
    "hinge": LossFamily(
        lambda real, fake: relu(1 - real).mean() + relu(1 + fake).mean(),
        lambda fake: -fake.mean(),
    ),
}
