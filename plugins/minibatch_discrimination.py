"""Minibatch discrimination: D sees how close each sample is to the rest of its minibatch.

Salimans et al. (2016), "Improved Techniques for Training GANs", Sec. 3.2 (openai/improved-gan).
A collapsed generator emits minibatches of near-identical samples; a D that judges one sample at
a time cannot tell, a D that sees the whole minibatch can. For D's features f(x_i) ∈ R^A (the
output of ``D.body``) and a learned tensor T ∈ R^{A×B×C}:

    M_i      = f(x_i) · T                          ∈ R^{B×C}
    c_b(i,j) = exp(−‖M_{i,b} − M_{j,b}‖₁)
    o_b(i)   = Σ_{j≠i} c_b(i,j)                    (j = i kept if exclude_self is false: +1)
    logit_i  = w · [f(x_i), o(x_i)] + w₀           (a linear head over A + B inputs)

o is computed by ``gancore.kernels.minibatch_l1`` (fused: Triton on CUDA, compiled C on CPU; never
the N×N×B×C tensor). The core calls D on the real and the fake batch separately, so real and
fake samples are discriminated as separate minibatches, as in the paper.

Initialization: T ~ N(0, 0.05²) as in improved-gan; the wider head copies the old head's
weights on f and starts with zero weights on o, so D starts as the plain D and learns to use
the minibatch features (a spectral norm on the old head is kept on the new one). The
Critique's ``features`` stay f.

Needs of the networks: D is (or wraps) a :class:`gancore.models.Discriminator` whose ``head`` is
one ``nn.Linear(A, 1)`` (optionally spectral-normed); f = ``D.body(x)`` has shape (N, A).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from gancore import GancoreError, hookimpl
from gancore.kernels import minibatch_l1
from gancore.models import Discriminator


class MinibatchFeatures(nn.Module):
    """f (N, A) -> [f, o(f)] (N, A + B), with o_b(i) = Σ_{j(≠i)} exp(−‖M_{i,b} − M_{j,b}‖₁), M = f·T."""

    def __init__(self, in_features: int, kernels: int, kernel_dim: int, exclude_self: bool = True):
        super().__init__()
        self.in_features, self.kernels, self.kernel_dim, self.exclude_self = in_features, kernels, kernel_dim, exclude_self
        self.T = nn.Parameter(torch.empty(in_features, kernels * kernel_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.T, std=0.05)  # improved-gan's initialization

    def minibatch_features(self, f: torch.Tensor) -> torch.Tensor:
        """o(f), shape (N, B)."""
        M = (f @ self.T).view(len(f), self.kernels, self.kernel_dim)
        if self.exclude_self and len(f) < 2:
            return M.new_zeros(len(f), self.kernels)  # Σ over j ≠ i of a one-sample batch is empty
        return minibatch_l1(M, exclude_self=self.exclude_self)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.cat([f, self.minibatch_features(f)], dim=1)

    def extra_repr(self) -> str:
        return f"A={self.in_features}, B={self.kernels}, C={self.kernel_dim}, exclude_self={self.exclude_self}"


def find_discriminator(module: nn.Module) -> Discriminator | None:
    """The first :class:`gancore.models.Discriminator` in ``module`` (itself, or one a plugin wrapped)."""
    return next((m for m in module.modules() if isinstance(m, Discriminator)), None)


class MinibatchDiscrimination:
    """Minibatch discrimination: D's head also reads L1-kernel similarities to the rest of the minibatch (Salimans et al. 2016)."""

    data_parallel = ("local", "D compares the samples within each rank's minibatch of train.batch_size / ranks")

    def __init__(self) -> None:
        self.kernels, self.kernel_dim, self.exclude_self = 16, 5, True

    @hookimpl
    def gancore_add_options(self, options):
        options.add(
            "kernels", int, 16,
            "B, kernels added to D's head (paper: 100 over CIFAR's A=192 features; 16 suffices for 2-D mixtures and keeps the O(N²BC) cost low)",
            min=1,
        )
        options.add("kernel_dim", int, 5, "C, the dimension of each kernel's projection (paper: 5 on CIFAR)", min=1)
        options.add("exclude_self", bool, True, "leave the pair j = i out of o_b(i) (improved-gan's code; otherwise it adds a constant 1)")

    @hookimpl
    def gancore_configure(self, config, options):
        self.kernels, self.kernel_dim, self.exclude_self = options.kernels, options.kernel_dim, options.exclude_self

    @hookimpl
    def gancore_build_models(self, models):
        D = find_discriminator(models.D)
        if D is None:
            raise GancoreError(f"minibatch-discrimination needs a gancore.models.Discriminator (body + head) in D, not {type(models.D).__name__}")
        if not isinstance(D.head, nn.Linear) or D.head.out_features != 1:
            raise GancoreError("minibatch-discrimination replaces D's head and needs it to be one Linear(A, 1) layer")
        old = D.head
        spectral = parametrize.is_parametrized(old)
        if spectral and [type(p).__name__ for name in old.parametrizations for p in old.parametrizations[name]] != ["_SpectralNorm"]:
            raise GancoreError("minibatch-discrimination can replace a head with spectral norm, but not other parametrizations")
        layer = MinibatchFeatures(old.in_features, self.kernels, self.kernel_dim, self.exclude_self)
        head = nn.Linear(old.in_features + self.kernels, 1, bias=old.bias is not None)
        with torch.no_grad():
            head.weight.zero_()
            head.weight[:, : old.in_features] = old.parametrizations.weight.original if spectral else old.weight
            if old.bias is not None:
                head.bias.copy_(old.bias)
        D.head = nn.Sequential(layer, spectral_norm(head) if spectral else head)  # a spectral-normed D keeps a spectral-normed head
