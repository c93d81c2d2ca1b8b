"""Networks: MLPs for vectors (and flattened images) and DCGAN-style conv nets for images,
and the adapters that let a user's own networks in (``gancore.fit``).

Any D must return :class:`Critique` so that plugins can read its features. A user's D that
returns plain logits is wrapped in :class:`LogitsOnly` (a Critique without features); a
``body`` + ``head`` pair becomes a D as :class:`Discriminator`.

The contract for a user's networks (README, "Your own networks"): G maps noise (n, z_dim) to
samples (n, *shape); D maps samples (n, *shape) to one logit per sample, as a
:class:`Discriminator` (body -> features, head -> logit), a module returning a
:class:`Critique`, or a module returning plain logits (:class:`LogitsOnly`). A plugin that needs
more (features, a head to replace, a functional form) says so under "Needs of the networks" in
its module docstring and refuses other nets before training, in ``gancore_check_models``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator, NamedTuple

import torch
from torch import nn

from gancore.errors import GancoreError, one_line

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh, "elu": nn.ELU}


class Critique(NamedTuple):
    """What a discriminator returns: one logit per sample and the features its head reads
    (None when D does not expose them: :class:`LogitsOnly`)."""

    logits: torch.Tensor
    features: torch.Tensor | None


class LogitsOnly(nn.Module):
    """Adapts a D that returns plain logits, shape (n,) or (n, 1), to the Critique contract:
    ``Critique(logits of shape (n,), features=None)``. Plugins that need D's features refuse it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> Critique:
        logits = self.inner(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() not in (1, 2) or (logits.dim() == 2 and logits.shape[1] != 1):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise GancoreError(f"the discriminator must return one logit per sample, shape (n,) or (n, 1), or a gancore.models.Critique; it returned {shape}")
        return Critique(logits.reshape(len(logits)), None)


def has_features(D: nn.Module) -> bool:
    """Whether ``D`` (however plugins wrapped it) returns features in its Critique."""
    return not any(isinstance(module, LogitsOnly) for module in D.modules())


@contextmanager
def probing(*modules: nn.Module) -> Iterator[None]:
    """Run ``modules`` without changing them: eval mode (no batch-norm statistics or spectral-norm
    power iterations move) and no gradients; every submodule's own mode is restored afterwards."""
    modes = [(module, module.training) for root in modules for module in root.modules()]
    for root in modules:
        root.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


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


INIT_SCHEMES = ("torch", "xavier-uniform", "he-uniform", "orthogonal", "normal")  # train.init; documented in gancore.config
_INIT_PARAMETER = {"orthogonal": 1.0, "normal": 0.02}
_WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def parse_init(text: str) -> tuple[str, float | None]:
    """``train.init`` as (scheme, parameter): ``"orthogonal:1.4"`` -> ("orthogonal", 1.4), ``"torch"`` -> ("torch", None)."""
    scheme, sep, parameter = text.partition(":")
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: choose one of {', '.join(INIT_SCHEMES)} (orthogonal and normal take :NUMBER)")
    if scheme not in _INIT_PARAMETER:
        if sep:
            raise ValueError(f"{scheme} takes no parameter")
        return scheme, None
    if not sep:
        return scheme, _INIT_PARAMETER[scheme]
    try:
        value = float(parameter)
    except ValueError:
        raise ValueError(f"expected a number after the colon, e.g. {scheme}:{_INIT_PARAMETER[scheme]}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"the number after the colon must be positive, e.g. {scheme}:{_INIT_PARAMETER[scheme]}")
    return scheme, value


def check_init(text: str) -> str | None:
    """The option rule of ``train.init``: None when :func:`parse_init` accepts ``text``, else why not."""
    try:
        parse_init(text)
    except ValueError as error:
        return str(error)
    return None


@torch.no_grad()
def initialize(network: nn.Module, init: str) -> None:
    """Draw the weights of ``network``'s linear and convolution layers as ``init`` (``train.init``)
    says, with zero biases, from torch's global generator; ``"torch"`` leaves the network alone.
    Normalization layers keep scale 1 and shift 0 (PyTorch's, TF's and Blocks' default alike).
    The output layer is the last weighted layer in module order (only ``he-uniform`` treats it apart).
    A spectrally normalized layer's underlying weight is drawn."""
    scheme, parameter = parse_init(init)
    if scheme == "torch":
        return
    layers = [layer for layer in network.modules() if isinstance(layer, _WEIGHTED)]
    for layer in layers:
        parametrized = nn.utils.parametrize.is_parametrized(layer, "weight")
        weight = layer.parametrizations.weight.original if parametrized else layer.weight
        if scheme == "xavier-uniform" or (scheme == "he-uniform" and layer is layers[-1]):
            nn.init.xavier_uniform_(weight)
        elif scheme == "he-uniform":
            nn.init.kaiming_uniform_(weight, nonlinearity="relu")
        elif scheme == "orthogonal":
            nn.init.orthogonal_(weight, gain=parameter)
        else:
            nn.init.normal_(weight, 0.0, parameter)
        if layer.bias is not None:
            layer.bias.zero_()


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


def adopt_generator(G: nn.Module, z_dim: int, sample_shape: tuple[int, ...], device: torch.device) -> nn.Module:
    """A user's ``G``, moved to ``device``, once it maps noise (n, z_dim) to samples (n, *sample_shape)."""
    if not isinstance(G, nn.Module):
        raise GancoreError(f"the generator must be a torch.nn.Module, not {type(G).__name__}")
    G.to(device)
    noise = torch.zeros(2, z_dim, device=device)
    with probing(G):
        try:
            out = G(noise)
        except Exception as error:
            raise GancoreError(f"the generator fails on noise of shape (2, {z_dim}) ({one_line(error, 160)}); set z_dim to G's input size (or give G a z_dim attribute)") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, *sample_shape):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise GancoreError(f"the generator maps noise (2, {z_dim}) to {shape}, but the data's samples have shape {sample_shape}: it must return (n, {', '.join(map(str, sample_shape))})")
    return G


def adopt_discriminator(D: nn.Module, real: torch.Tensor) -> nn.Module:
    """A user's ``D`` as the core needs it, on ``real``'s device: itself if it returns a :class:`Critique` on ``real``,
    wrapped in :class:`LogitsOnly` if it returns plain logits; anything else is refused."""
    if not isinstance(D, nn.Module):
        raise GancoreError(f"the discriminator must be a torch.nn.Module, not {type(D).__name__}")
    D.to(real.device)
    with probing(D):
        try:
            out = D(real)
        except GancoreError:
            raise
        except Exception as error:
            raise GancoreError(f"the discriminator fails on training samples of shape {tuple(real.shape)}: {one_line(error, 160)}") from None
    if isinstance(out, Critique):
        if out.logits.shape != (len(real),):
            raise GancoreError(f"the discriminator's Critique has logits of shape {tuple(out.logits.shape)}; it needs one per sample, ({len(real)},)")
        return D
    adapted = LogitsOnly(D)
    with probing(adapted):
        adapted(real)  # refuses any other output
    return adapted
