"""Minibatch discrimination with an L1 kernel (Salimans et al., 2016), fused.

For projected features M of shape (N, B, C)::

    o[i, b] = sum_{j (!= i if exclude_self)} exp(-sum_c |M[i,b,c] - M[j,b,c]|)

Written naively this is an (N, N, B, C) tensor (8.4e9 elements at N=4096, B=100, C=5). The
kernels tile over (i, j) blocks flash-attention style and recompute K in every pass, so nothing
of size N^2 reaches memory; each program owns a block of rows i for one b and sums over every j
itself, so no atomics are needed. The torch reference does the same math in chunks of rows:
torch.cdist for the L1 distances and cdist's own fused backward for the first-order gradient
(the distances are kept from the forward when one chunk holds them all); the second order one
channel at a time.

Derivatives, with d_ijbc = M[i,b,c] - M[j,b,c], s = sign(d) (0 at exact ties),
K_ijb = exp(-sum_c |d_ijbc|), and masked pairs (i == j under exclude_self) dropped:

* first order, upstream g on o (K is symmetric and s antisymmetric, so the i-side and j-side
  terms merge)::

      dM[i,b,c] = -sum_j (g[i,b] + g[j,b]) K_ijb s_ijbc

* second order, upstream V on dM, with W_ijb = K_ijb sum_c s_ijbc (V[i,b,c] - V[j,b,c])::

      dg[i,b]   = -sum_j W_ijb
      dM[i,b,e] =  sum_j (g[i,b] + g[j,b]) W_ijb s_ijbe

  (s is piecewise constant, so its derivative is 0 almost everywhere.)

Both orders run as Triton kernels on the Triton path and as chunked torch on the reference
path. On CPU the forward and first order run as compiled C (``_cpu.py``, ``minibatch_l1_cpu.c``:
each pair visited once; K kept for the backward up to 16 MB, else recomputed) and the second
order as the reference's.
Third order is not implemented (asking for it raises).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from . import _cpu
from ._triton import BACKENDS, acc_dtype, tl, triton, use_triton

# Register tile (elements of BLOCK_I x BLOCK_J x BLOCK_C) per program. The backward kernels keep
# more tiles alive, so they get smaller ones. Picked from ptxas register counts on sm_90 (C=5:
# 72 / 167 / 128 registers, no spills, 4 warps), not tuned by timings (H200 figures: benchmarks/KERNELS.md).
_FWD_TILE = 8192
_BWD_TILE = 4096
_BWD2_TILE = 2048
# Elements of one (B, chunk, N) temporary in the torch reference (16 MB in fp32).
_CHUNK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _load_rows(ptr, offs_n, mask_n, offs_c, mask_c, row_stride, ACC: tl.constexpr):
    """Zero-padded (rows, BLOCK_C) tile of a row-major (N, ..., C) slice, in ACC."""
    tile = tl.load(
        ptr + offs_n[:, None] * row_stride + offs_c[None, :],
        mask=mask_n[:, None] & mask_c[None, :],
        other=0.0,
    )
    return tile.to(ACC)


@triton.jit
def _pair_tile(x_i, x_j, offs_i, offs_j, N, EXCLUDE_SELF: tl.constexpr):
    """d_ijc for the tile, and K_ij with masked pairs (padding j; i == j if excluded) zeroed.

    Padded i rows are not masked here: they are never stored.
    """
    d = x_i[:, None, :] - x_j[None, :, :]
    k = tl.exp(-tl.sum(tl.abs(d), axis=2))
    keep = (offs_j < N)[None, :]
    if EXCLUDE_SELF:
        keep = keep & (offs_i[:, None] != offs_j[None, :])
    return d, tl.where(keep, k, 0.0)


@triton.jit
def _sign(d):
    # 0 at exact ties, like torch.sign and the subgradient autograd uses for |x| at 0.
    return (d > 0).to(d.dtype) - (d < 0).to(d.dtype)


@triton.jit
def _mbd_fwd_kernel(
    M, O, N, B, C,
    EXCLUDE_SELF: tl.constexpr, ACC: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    b = tl.program_id(1)
    offs_c = tl.arange(0, BLOCK_C)
    mask_i = offs_i < N
    mask_c = offs_c < C
    M_b = M + b * C
    x_i = _load_rows(M_b, offs_i, mask_i, offs_c, mask_c, B * C, ACC)
    acc = tl.zeros([BLOCK_I], dtype=ACC)
    for j0 in range(0, N, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        x_j = _load_rows(M_b, offs_j, offs_j < N, offs_c, mask_c, B * C, ACC)
        _, k = _pair_tile(x_i, x_j, offs_i, offs_j, N, EXCLUDE_SELF)
        acc += tl.sum(k, axis=1)
    tl.store(O + offs_i * B + b, acc.to(O.dtype.element_ty), mask=mask_i)


@triton.jit
def _mbd_bwd_kernel(
    M, G, DM, N, B, C,
    EXCLUDE_SELF: tl.constexpr, ACC: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    b = tl.program_id(1)
    offs_c = tl.arange(0, BLOCK_C)
    mask_i = offs_i < N
    mask_c = offs_c < C
    M_b = M + b * C
    x_i = _load_rows(M_b, offs_i, mask_i, offs_c, mask_c, B * C, ACC)
    g_i = tl.load(G + offs_i * B + b, mask=mask_i, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_I, BLOCK_C], dtype=ACC)
    for j0 in range(0, N, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = offs_j < N
        x_j = _load_rows(M_b, offs_j, mask_j, offs_c, mask_c, B * C, ACC)
        g_j = tl.load(G + offs_j * B + b, mask=mask_j, other=0.0).to(ACC)
        d, k = _pair_tile(x_i, x_j, offs_i, offs_j, N, EXCLUDE_SELF)
        w = (g_i[:, None] + g_j[None, :]) * k
        acc -= tl.sum(w[:, :, None] * _sign(d), axis=1)
    tl.store(
        DM + b * C + offs_i[:, None] * (B * C) + offs_c[None, :],
        acc.to(DM.dtype.element_ty),
        mask=mask_i[:, None] & mask_c[None, :],
    )


@triton.jit
def _mbd_bwd2_kernel(
    M, G, V, DG, DM, N, B, C,
    EXCLUDE_SELF: tl.constexpr, ACC: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    b = tl.program_id(1)
    offs_c = tl.arange(0, BLOCK_C)
    mask_i = offs_i < N
    mask_c = offs_c < C
    M_b = M + b * C
    V_b = V + b * C
    x_i = _load_rows(M_b, offs_i, mask_i, offs_c, mask_c, B * C, ACC)
    v_i = _load_rows(V_b, offs_i, mask_i, offs_c, mask_c, B * C, ACC)
    g_i = tl.load(G + offs_i * B + b, mask=mask_i, other=0.0).to(ACC)
    acc_g = tl.zeros([BLOCK_I], dtype=ACC)
    acc_m = tl.zeros([BLOCK_I, BLOCK_C], dtype=ACC)
    for j0 in range(0, N, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = offs_j < N
        x_j = _load_rows(M_b, offs_j, mask_j, offs_c, mask_c, B * C, ACC)
        v_j = _load_rows(V_b, offs_j, mask_j, offs_c, mask_c, B * C, ACC)
        g_j = tl.load(G + offs_j * B + b, mask=mask_j, other=0.0).to(ACC)
        d, k = _pair_tile(x_i, x_j, offs_i, offs_j, N, EXCLUDE_SELF)
        s = _sign(d)
        w = k * tl.sum(s * (v_i[:, None, :] - v_j[None, :, :]), axis=2)
        acc_g -= tl.sum(w, axis=1)
        acc_m += tl.sum(((g_i[:, None] + g_j[None, :]) * w)[:, :, None] * s, axis=1)
    tl.store(DG + offs_i * B + b, acc_g.to(DG.dtype.element_ty), mask=mask_i)
    tl.store(
        DM + b * C + offs_i[:, None] * (B * C) + offs_c[None, :],
        acc_m.to(DM.dtype.element_ty),
        mask=mask_i[:, None] & mask_c[None, :],
    )


# ----------------------------------------------------------------------------- host launchers


def _blocks(N: int, C: int, tile: int) -> dict:
    """Square-ish power-of-two (BLOCK_I, BLOCK_J) filling `tile` with the whole of C per pair."""
    block_c = triton.next_power_of_2(max(C, 1))
    pairs = max(1, tile // block_c)
    rows = triton.next_power_of_2(N)
    block_j = min(rows, 1 << (pairs.bit_length() - 1) // 2)
    block_i = min(rows, max(1, pairs // block_j))
    return dict(BLOCK_I=block_i, BLOCK_J=block_j, BLOCK_C=block_c, num_warps=4)


def _launch(kernel, tile: int, M: torch.Tensor, *args: torch.Tensor, exclude_self: bool):
    N, B, C = M.shape
    if M.dtype == torch.float64:
        tile //= 2  # fp64 values take two registers each; keeps the backward kernels unspilled
    blocks = _blocks(N, C, tile)
    grid = (triton.cdiv(N, blocks["BLOCK_I"]), B)
    kernel[grid](M, *args, N, B, C, EXCLUDE_SELF=exclude_self, ACC=acc_dtype(M.dtype), **blocks)


def _fwd_triton(M: torch.Tensor, exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    M = M.contiguous()
    o = M.new_empty(M.shape[:2])
    if o.numel():
        _launch(_mbd_fwd_kernel, _FWD_TILE, M, o, exclude_self=exclude_self)
    return o, M.new_empty(0)  # the kernels keep nothing for the backward: it recomputes K in registers


def _bwd_triton(g: torch.Tensor, M: torch.Tensor, exclude_self: bool, kept: torch.Tensor) -> torch.Tensor:
    M, g = M.contiguous(), g.contiguous()
    dM = torch.empty_like(M)
    if dM.numel():
        _launch(_mbd_bwd_kernel, _BWD_TILE, M, g, dM, exclude_self=exclude_self)
    return dM


def _bwd2_triton(V, g, M, exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    M, g, V = M.contiguous(), g.contiguous(), V.contiguous()
    dg, dM = torch.empty_like(g), torch.empty_like(M)
    if dM.numel():
        _launch(_mbd_bwd2_kernel, _BWD2_TILE, M, g, V, dg, dM, exclude_self=exclude_self)
    return dg, dM


# ----------------------------------------------------------------------------- torch reference


def _by_b(x: torch.Tensor) -> torch.Tensor:
    """(N, B, ...) -> contiguous (B, N, ...) in the kernels' accumulation precision (fp32, or
    fp64 for fp64 inputs), so that each step below is one batched op over b."""
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    return x.transpose(0, 1).contiguous()


def _chunks(N: int, B: int, chunk: int | None):
    step = chunk or max(1, _CHUNK_ELEMENTS // max(1, N * B))
    return ((i0, min(i0 + step, N)) for i0 in range(0, N, step))


def _masked_exp(dist: torch.Tensor, i0: int, exclude_self: bool) -> torch.Tensor:
    """exp(-dist) for a (B, rows, N) distance block of rows i0:, self pairs zeroed."""
    k = dist.neg().exp_()
    if exclude_self:
        r = torch.arange(k.shape[1], device=k.device)
        k[:, r, r + i0] = 0
    return k


def _k_torch(Mb, i0: int, i1: int, exclude_self: bool) -> torch.Tensor:
    """K for rows i0:i1 against every j, shape (B, i1-i0, N), masked pairs zeroed."""
    # p=1 is summed directly (no matmul expansion): exact
    return _masked_exp(torch.cdist(Mb[:, i0:i1], Mb, p=1), i0, exclude_self)


def _diff_torch(xb, i0: int, i1: int, c: int) -> torch.Tensor:
    """x[i,b,c] - x[j,b,c] for rows i0:i1 and one channel c, shape (B, i1-i0, N); one channel
    at a time keeps every temporary free of the C factor."""
    return xb[:, i0:i1, None, c] - xb[:, None, :, c]


def _fwd_torch(M, exclude_self: bool, chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """o, and the (B, N, N) L1 distances when one chunk holds them all (else an empty tensor):
    the backward reuses them instead of recomputing, within the same memory bound."""
    N, B, _ = M.shape
    Mb = _by_b(M)
    o = Mb.new_empty(B, N)
    chunks = list(_chunks(N, B, chunk))
    kept = Mb.new_empty(0)
    for i0, i1 in chunks:
        dist = torch.cdist(Mb[:, i0:i1], Mb, p=1)  # p=1 is summed directly (no matmul expansion): exact
        o[:, i0:i1] = _masked_exp(dist, i0, exclude_self).sum(2)
        if len(chunks) == 1:
            kept = dist
    return o.t().contiguous().to(M.dtype), kept


def _bwd_torch(g, M, exclude_self: bool, chunk: int | None, kept: torch.Tensor) -> torch.Tensor:
    N, B, C = M.shape
    Mb, gb = _by_b(M), _by_b(g)
    dM = torch.empty_like(Mb)
    for i0, i1 in _chunks(N, B, chunk):
        rows = Mb[:, i0:i1].contiguous()
        dist = kept if kept.numel() else torch.cdist(rows, Mb, p=1)
        w = (gb[:, i0:i1, None] + gb[:, None]) * _masked_exp(dist, i0, exclude_self)
        # dM[i] = sum_j w_ij sign(M_i - M_j) is the derivative of sum_ij w_ij ||M_i - M_j||_1
        # with respect to the rows i alone: torch.cdist's own backward (the op autograd runs for
        # cdist) computes it in one fused pass, ~6x faster on CPU than sign(d) channel by channel.
        dM[:, i0:i1] = torch.ops.aten._cdist_backward(w.neg_(), rows, Mb, 1.0, dist)
    return dM.transpose(0, 1).contiguous().to(M.dtype)


def _bwd2_torch(V, g, M, exclude_self: bool, chunk: int | None):
    N, B, C = M.shape
    Mb, gb, Vb = _by_b(M), _by_b(g), _by_b(V)
    dg, dM = torch.empty_like(gb), torch.empty_like(Mb)
    for i0, i1 in _chunks(N, B, chunk):
        w = _k_torch(Mb, i0, i1, exclude_self)
        w *= sum(
            _diff_torch(Mb, i0, i1, c).sign_() * _diff_torch(Vb, i0, i1, c) for c in range(C)
        )
        dg[:, i0:i1] = -w.sum(2)
        w *= gb[:, i0:i1, None] + gb[:, None]
        for c in range(C):
            dM[:, i0:i1, c] = (_diff_torch(Mb, i0, i1, c).sign_() * w).sum(2)
    return dg.t().contiguous().to(g.dtype), dM.transpose(0, 1).contiguous().to(M.dtype)


# ----------------------------------------------------------------------------- autograd


class _Impl(NamedTuple):
    fwd: Callable
    bwd: Callable
    bwd2: Callable


_TRITON = _Impl(_fwd_triton, _bwd_triton, _bwd2_triton)


def _cpu_impl(keep: bool) -> _Impl:
    """The C kernels for forward and first order (``keep``: the forward stores K for the
    backward); the second order is the reference's."""
    return _Impl(
        lambda M, ex: _cpu.forward(M, ex, keep),
        lambda g, M, ex, kept: _cpu.backward(g, M, kept),
        lambda V, g, M, ex: _bwd2_torch(V, g, M, ex, None),
    )


def _torch_impl(chunk: int | None) -> _Impl:
    return _Impl(
        lambda M, ex: _fwd_torch(M, ex, chunk),
        lambda g, M, ex, kept: _bwd_torch(g, M, ex, chunk, kept),
        lambda V, g, M, ex: _bwd2_torch(V, g, M, ex, chunk),
    )


# forward + setup_context (rather than forward(ctx, ...)) lets torch.func transforms run these.
class _MinibatchL1(torch.autograd.Function):
    """Outputs (o, kept): ``kept`` is what the implementation saves for its backward (possibly
    empty), an output so that setup_context can save it; it has no gradient."""

    @staticmethod
    def forward(M, exclude_self: bool, impl: _Impl):
        return impl.fwd(M, exclude_self)

    @staticmethod
    def setup_context(ctx, inputs, output):
        M, ctx.exclude_self, ctx.impl = inputs
        ctx.mark_non_differentiable(output[1])
        # no B x N x N zeros for kept's (absent) gradient; g itself is None when o is unused
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(M, output[1])

    @staticmethod
    def backward(ctx, g, _):
        if g is None:
            return None, None, None
        M, kept = ctx.saved_tensors
        return _MinibatchL1Grad.apply(g, M, kept, ctx.exclude_self, ctx.impl), None, None


class _MinibatchL1Grad(torch.autograd.Function):
    """The first-order backward as its own op, so that a gradient penalty or an unrolled step
    can differentiate through it (stylegan2-ada bias_act pattern)."""

    @staticmethod
    def forward(g, M, kept, exclude_self: bool, impl: _Impl):
        return impl.bwd(g, M, exclude_self, kept)

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, M, _, ctx.exclude_self, ctx.impl = inputs
        ctx.save_for_backward(g, M)

    @staticmethod
    def backward(ctx, V):
        g, M = ctx.saved_tensors
        return *_MinibatchL1Grad2.apply(V, g, M, ctx.exclude_self, ctx.impl), None, None, None


class _MinibatchL1Grad2(torch.autograd.Function):
    """The second-order pass, (dg, dM). An op of its own rather than a plain call so that
    torch.func transforms hand it unwrapped tensors; it has no derivative itself."""

    @staticmethod
    def forward(V, g, M, exclude_self: bool, impl: _Impl):
        return impl.bwd2(V, g, M, exclude_self)

    @staticmethod
    def setup_context(ctx, inputs, output):
        """Nothing to save: this op has no derivative."""

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("minibatch_l1: third-order derivatives are not implemented")


def _check(M, exclude_self: bool) -> None:
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"minibatch_l1 expects a torch.Tensor M, got {type(M).__name__}")
    if M.ndim != 3:
        raise ValueError(f"minibatch_l1 expects M of shape (N, B, C), got shape {tuple(M.shape)}")
    if not M.is_floating_point():
        raise TypeError(f"minibatch_l1 expects a floating-point M, got {M.dtype}")
    if exclude_self and M.shape[0] < 2:
        raise ValueError(
            f"minibatch_l1 with exclude_self=True needs N >= 2 samples, got N={M.shape[0]}"
        )


MBD_BACKENDS = (*BACKENDS, "cpu")


def _will_differentiate(M: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and M.requires_grad


def _select(backend: str, M: torch.Tensor) -> _Impl:
    if backend not in MBD_BACKENDS:
        raise ValueError(f"backend must be one of {MBD_BACKENDS}, got {backend!r}")
    if backend == "cpu":
        if M.device.type != "cpu":
            raise ValueError(f"backend='cpu' needs a CPU tensor, got one on {M.device}")
        if _cpu.library() is None:
            raise RuntimeError("backend='cpu': the fused CPU kernels could not be compiled (see the warning); use backend='torch'")
        return _cpu_impl(_will_differentiate(M))
    if use_triton(backend, _mbd_fwd_kernel, M):
        return _TRITON
    if backend == "auto" and M.device.type == "cpu" and _cpu.library() is not None:
        return _cpu_impl(_will_differentiate(M))
    return _torch_impl(None)


def minibatch_l1(
    M: torch.Tensor, exclude_self: bool = True, *, backend: str = "auto"
) -> torch.Tensor:
    """Minibatch-discrimination features ``o[i, b] = sum_j exp(-||M[i,b,:] - M[j,b,:]||_1)``.

    Args:
        M: (N, B, C) projected features of one minibatch (fp32, bf16, fp16 or fp64).
        exclude_self: leave out j == i (which would add the constant 1).
        backend: ``"auto"`` (Triton kernels for CUDA tensors, the compiled C kernels for CPU
            tensors, the torch reference where neither is available or with
            ``GANCORE_CPU_KERNELS=0``), ``"triton"`` (also on CPU under ``TRITON_INTERPRET=1``),
            ``"cpu"`` (the C kernels) or ``"torch"`` (the reference).

    Returns:
        (N, B) tensor in M's dtype, accumulated in fp32 (fp64 for fp64). Differentiable twice,
        with both orders fused in Triton on the Triton path; memory is O(N B C) throughout.
    """
    _check(M, exclude_self)
    return _MinibatchL1.apply(M, exclude_self, _select(backend, M))[0]


def minibatch_l1_reference(
    M: torch.Tensor, exclude_self: bool = True, chunk: int | None = None
) -> torch.Tensor:
    """Exact torch version of :func:`minibatch_l1` for any device.

    Works on `chunk` rows i at a time (default: as many as keep one (B, chunk, N) temporary at
    2**22 elements) and one channel c at a time, so memory stays O(N B C + B chunk N) at any N,
    forward and backward alike.
    Differentiable twice through the same autograd.Function pair as the kernels.
    """
    _check(M, exclude_self)
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive number of rows, got {chunk}")
    return _MinibatchL1.apply(M, exclude_self, _torch_impl(chunk))[0]
