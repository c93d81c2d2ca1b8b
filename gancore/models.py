"""Networks: MLPs for vectors (and flattened images) and DCGAN-style conv nets for images.

Any D must return :class:`Critique` so that plugins can read its features.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import NamedTuple

import torch
from torch import nn

from gancore.errors import GancoreError

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


class Maxout(nn.Module):
    """``fan_out`` maxout units (Goodfellow et al., 2013): each the max of ``pieces`` affine maps of the input.

    PacGAN's 2-D discriminator is built of these (3 layers of 200 units, 5 pieces). A maxout
    unit is its own nonlinearity, so no activation follows it.
    """

    def __init__(self, fan_in: int, fan_out: int, pieces: int):
        super().__init__()
        self.pieces = pieces
        self.linear = nn.Linear(fan_in, fan_out * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).unflatten(-1, (-1, self.pieces)).amax(-1)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


class Generator(nn.Module):
    """An MLP from ``z_dim`` noise to samples of ``shape`` (an int for vectors).

    ``norm="batch"`` batch-normalizes every hidden layer before its activation, as PacGAN's
    2-D generator does (those layers then need no bias).
    """

    def __init__(self, z_dim: int, shape: int | tuple[int, ...], width: int, depth: int, activation: str, norm: str = "none"):
        super().__init__()
        self.z_dim = z_dim
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        sizes = [z_dim] + [width] * depth
        self.batch_normed = norm == "batch"
        if self.batch_normed:
            layers: list[nn.Module] = []
            for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
                layers += [nn.Linear(fan_in, fan_out, bias=False), nn.BatchNorm1d(fan_out), ACTIVATIONS[activation]()]
            self.net = nn.Sequential(*layers, nn.Linear(width, math.prod(self.shape)))
        else:
            self.net = mlp(sizes + [math.prod(self.shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.training and len(z) < 2 and self.batch_normed:
            raise GancoreError("a batch-normed generator (train.g_mlp_norm=batch) draws at least 2 samples at a time")
        out = self.net(z)
        return out if len(self.shape) == 1 else out.view(len(z), *self.shape)


class ConvGenerator(nn.Module):
    """DCGAN generator: z -> 4×4 feature map -> transposed convs doubling the side -> tanh image."""

    def __init__(self, z_dim: int, shape: tuple[int, int, int], width: int, norm: str):
        super().__init__()
        self.z_dim = z_dim
        channels_out, side = shape[0], shape[1]
        upsamplings = int(math.log2(side)) - 2
        channels = width * 2 ** (upsamplings - 1)
        Norm = nn.BatchNorm2d if norm == "batch" else (lambda c: nn.Identity())
        layers: list[nn.Module] = [nn.Linear(z_dim, channels * 16), nn.Unflatten(1, (channels, 4, 4)), Norm(channels), nn.ReLU()]
        for _ in range(upsamplings - 1):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1), Norm(channels // 2), nn.ReLU()]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, channels_out, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

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
    def mlp(cls, data_dim: int, width: int, depth: int, activation: str, maxout: int = 1) -> "Discriminator":
        """An MLP D; inputs with more than one dimension per sample (images) are flattened.

        ``maxout`` > 1 makes every hidden layer a :class:`Maxout` layer of that many pieces
        (``activation`` is then unused).
        """
        sizes = [data_dim] + [width] * depth
        if maxout > 1:
            hidden = [Maxout(fan_in, fan_out, maxout) for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]
        else:
            hidden = [mlp(sizes, activation), ACTIVATIONS[activation]()]
        return cls(nn.Sequential(nn.Flatten(), *hidden), nn.Linear(width, 1))

    @classmethod
    def conv(cls, shape: tuple[int, int, int], width: int, norm: str) -> "Discriminator":
        """DCGAN D: strided convs halving the side down to 4×4; the flattened map is the features."""
        channels_in, side = shape[0], shape[1]
        wrap = nn.utils.parametrizations.spectral_norm if norm == "spectral" else (lambda layer: layer)
        layers: list[nn.Module] = [wrap(nn.Conv2d(channels_in, width, 4, 2, 1)), nn.LeakyReLU(0.2)]
        channels = width
        for _ in range(int(math.log2(side)) - 3):
            layers += [wrap(nn.Conv2d(channels, channels * 2, 4, 2, 1))]
            layers += [nn.BatchNorm2d(channels * 2)] if norm == "batch" else []
            layers += [nn.LeakyReLU(0.2)]
            channels *= 2
        layers.append(nn.Flatten())
        return cls(nn.Sequential(*layers), wrap(nn.Linear(channels * 16, 1)))

    def forward(self, x: torch.Tensor) -> Critique:
        features = self.body(x)
        return Critique(self.head(features).squeeze(-1), features)


def network_family(train: SimpleNamespace, shape: tuple[int, ...]) -> str:
    """``train.model``, with ``auto`` resolved: dcgan for (C, H, W) samples, mlp otherwise."""
    if train.model == "auto":
        return "dcgan" if len(shape) == 3 else "mlp"
    if train.model == "dcgan" and len(shape) != 3:
        raise GancoreError(f"train.model=dcgan needs image data (C, H, W); this data has samples of shape {shape}")
    return train.model


def build_generator(train: SimpleNamespace, shape: tuple[int, ...]) -> nn.Module:
    """A freshly initialized G of the configured family and size for samples of ``shape``."""
    if network_family(train, shape) == "dcgan":
        _refuse_mlp_option(train, "g_mlp_norm", "none")
        return ConvGenerator(train.z_dim, shape, train.g_width, train.g_norm)
    return Generator(train.z_dim, shape, train.g_width, train.g_depth, train.activation, train.g_mlp_norm)


def build_discriminator(train: SimpleNamespace, shape: tuple[int, ...]) -> Discriminator:
    """A freshly initialized D of the configured family and size for samples of ``shape``."""
    if network_family(train, shape) == "dcgan":
        _refuse_mlp_option(train, "d_maxout", 1)
        return Discriminator.conv(shape, train.d_width, train.d_norm)
    return Discriminator.mlp(math.prod(shape), train.d_width, train.d_depth, train.activation, train.d_maxout)


def _refuse_mlp_option(train: SimpleNamespace, name: str, default: object) -> None:
    """An MLP-only option set on a run of DCGAN nets is a mistake to report, not to ignore."""
    if getattr(train, name) != default:
        raise GancoreError(f"train.{name} shapes the MLP nets, but this run uses the DCGAN nets (images); set train.model=mlp or leave train.{name} out")
