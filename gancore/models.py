"""Vector-data networks. Any D must return :class:`Critique` so that plugins can read features."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh, "elu": nn.ELU}


class Critique(NamedTuple):
    """What a discriminator returns: one logit per sample and the features its head reads."""

    logits: torch.Tensor
    features: torch.Tensor


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers[:-1])


class Generator(nn.Module):
    """An MLP from ``z_dim`` noise to ``data_dim`` points."""

    def __init__(self, z_dim: int, data_dim: int, width: int, depth: int, activation: str):
        super().__init__()
        self.z_dim = z_dim
        self.net = mlp([z_dim] + [width] * depth + [data_dim], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    """``body`` maps inputs to features, ``head`` maps features to one logit per sample.

    Plugins reshape D by replacing ``body`` or ``head`` (e.g. a minibatch layer before the
    head) or by wrapping the whole module, as long as the result still returns a Critique.
    """

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body = body
        self.head = head

    @classmethod
    def mlp(cls, data_dim: int, width: int, depth: int, activation: str) -> "Discriminator":
        body = nn.Sequential(mlp([data_dim] + [width] * depth, activation), ACTIVATIONS[activation]())
        return cls(body, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> Critique:
        features = self.body(x)
        return Critique(self.head(features).squeeze(-1), features)
