"""Fused Triton kernels for GAN remedies, each with an exact torch reference.

* :func:`minibatch_l1` — minibatch discrimination features (Salimans et al., 2016) without the
  N x N x B x C tensor; differentiable twice (unrolled GANs, gradient penalties on D).
* :func:`gradient_penalty` — the WGAN-GP penalty (Gulrajani et al., 2017) with fused
  interpolation and per-sample norm.

Both run their Triton kernels on CUDA tensors and their torch reference elsewhere; pass
``backend="torch"`` or ``backend="triton"`` to choose (on CPU the latter needs
``TRITON_INTERPRET=1`` set before this package is imported). See ../shared/DESIGN.md "Kernels".
"""
from .gradient_penalty import gradient_penalty, gradient_penalty_reference
from .minibatch_l1 import minibatch_l1, minibatch_l1_reference

__all__ = [
    "gradient_penalty",
    "gradient_penalty_reference",
    "minibatch_l1",
    "minibatch_l1_reference",
]
