"""Triton import shared by the kernel modules.

Triton ships for Linux only, so on other platforms the kernel modules still import (their
torch references work everywhere) and asking for ``backend="triton"`` fails with a clear error.
Whether a kernel runs under Triton's CPU interpreter is fixed when it is decorated: Triton's
own @jit helpers (``tl.sum``, ...) when triton is imported, ours when ``gancore.kernels`` is.
So ``TRITON_INTERPRET=1`` must be set before either import.
"""
from __future__ import annotations

import types

import torch

try:
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where Triton is not installed
    HAS_TRITON = False
    InterpretedFunction = ()  # isinstance(x, ()) is always False
    # Stand-ins so that `@triton.jit` and `x: tl.constexpr` still evaluate at import time.
    triton = types.SimpleNamespace(jit=lambda fn: fn)
    tl = types.SimpleNamespace(constexpr=None)

BACKENDS = ("auto", "torch", "triton")


def use_triton(backend: str, kernel, *tensors: torch.Tensor) -> bool:
    """Decide whether to launch `kernel` on `tensors` for the requested backend.

    ``"auto"`` picks Triton for CUDA tensors and the torch reference elsewhere; ``"triton"``
    forces the kernel, which on CPU needs the interpreter; ``"torch"`` forces the reference.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "torch":
        return False
    if backend == "auto":
        return HAS_TRITON and on_cuda
    if not HAS_TRITON:
        raise RuntimeError("backend='triton' needs the triton package; use backend='torch'")
    if not on_cuda and not (
        isinstance(kernel, InterpretedFunction) and isinstance(tl.sum, InterpretedFunction)
    ):
        raise ValueError(
            "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton and "
            "gancore.kernels are imported; move the tensors to CUDA or use backend='torch'"
        )
    return True


def acc_dtype(dtype: torch.dtype):
    """Accumulation type inside kernels: fp32, or fp64 for fp64 inputs (exact gradchecks)."""
    return tl.float64 if dtype == torch.float64 else tl.float32
