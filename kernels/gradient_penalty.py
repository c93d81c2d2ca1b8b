"""WGAN-GP gradient penalty (Gulrajani et al., 2017), fused.

::

    x_hat_i = eps_i real_i + (1 - eps_i) fake_i          eps_i ~ U[0, 1), one per sample
    g       = d sum_i critic(x_hat)_i / d x_hat          (create_graph=True)
    penalty = weight * mean_i (||g_i||_2 - 1)^2          norm over every non-batch dim

The critic's input gradient comes from ``torch.autograd.grad(create_graph=True)``, so the
penalty's gradient reaches the critic's parameters through autograd's double backward of the
critic; the fused parts are the interpolation (one kernel) and the per-sample norm + weighted
mean (one kernel, which also saves the norms) with its gradient w.r.t. g (one elementwise pass).

Norm at zero: ||g_i|| is not differentiable at g_i = 0. No eps is added inside the sqrt (the
value stays exact); its gradient there is taken as 0, the convention torch uses for
``vector_norm``, so a critic with zero input gradient gives penalty = weight and finite
gradients, never NaN. Squares are summed in fp32 (fp64 for fp64), so fp16 gradients under
mixed precision cannot overflow the norm either.

Order of differentiation: penalty.backward() only needs the first derivative of the penalty
w.r.t. g (autograd already holds g's graph back to the parameters). That runs as a Triton
kernel inside an autograd.Function whose own backward (torch ops, differentiable again) serves
callers that differentiate through the penalty's gradient, e.g. an unrolled critic step.
"""
from __future__ import annotations

from typing import Callable

import torch

from ._triton import acc_dtype, tl, triton, use_triton

_ELEMENTWISE_BLOCK = 1024
_NORM_TILE = 4096  # elements of BLOCK_N x BLOCK_D per program in the norm kernel
_NORM_MAX_BLOCK_D = 1024


# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _lerp_kernel(R, F, EPS, X, numel, per_sample, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    eps = tl.load(EPS + offs // per_sample, mask=mask, other=0.0)
    r = tl.load(R + offs, mask=mask, other=0.0).to(eps.dtype)
    f = tl.load(F + offs, mask=mask, other=0.0).to(eps.dtype)
    tl.store(X + offs, (eps * r + (1.0 - eps) * f).to(X.dtype.element_ty), mask=mask)


@triton.jit
def _gp_fwd_kernel(
    G, NORM, SCALE, OUT, N, D,
    ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = rows < N
    sq = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        g = tl.load(
            G + rows[:, None] * D + cols[None, :],
            mask=mask_n[:, None] & (cols < D)[None, :],
            other=0.0,
        ).to(ACC)
        sq += g * g
    norm = tl.sqrt(tl.sum(sq, axis=1))
    tl.store(NORM + rows, norm, mask=mask_n)
    dev = tl.where(mask_n, norm - 1.0, 0.0)
    # One atomic per program: the order of these adds (so the last bits) may vary on a GPU.
    tl.atomic_add(OUT, tl.load(SCALE) * tl.sum(dev * dev, axis=0))


@triton.jit
def _gp_bwd_kernel(G, NORM, SCALE, GRAD_OUT, DG, numel, D, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    norm = tl.load(NORM + offs // D, mask=mask, other=1.0)
    g = tl.load(G + offs, mask=mask, other=0.0).to(norm.dtype)
    # g / ||g|| is bounded by 1 even for tiny norms; at norm == 0 the gradient is defined as 0.
    unit = tl.where(norm > 0, g / tl.where(norm > 0, norm, 1.0), 0.0)
    coef = 2.0 * tl.load(SCALE) * tl.load(GRAD_OUT).to(norm.dtype)
    tl.store(DG + offs, (coef * (norm - 1.0) * unit).to(DG.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host launchers


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _lerp_triton(real, fake, eps) -> torch.Tensor:
    real, fake = real.contiguous(), fake.contiguous()
    x = torch.empty_like(real)
    numel = x.numel()
    grid = (triton.cdiv(numel, _ELEMENTWISE_BLOCK),)
    _lerp_kernel[grid](real, fake, eps, x, numel, numel // x.shape[0], BLOCK=_ELEMENTWISE_BLOCK)
    return x


def _penalty_triton(g: torch.Tensor, scale: torch.Tensor):
    g2 = g.reshape(g.shape[0], -1).contiguous()
    N, D = g2.shape
    norms = g2.new_empty(N, dtype=scale.dtype)
    out = torch.zeros((), dtype=scale.dtype, device=g.device)
    block_d = min(triton.next_power_of_2(max(D, 1)), _NORM_MAX_BLOCK_D)
    block_n = min(triton.next_power_of_2(N), max(1, _NORM_TILE // block_d))
    _gp_fwd_kernel[(triton.cdiv(N, block_n),)](
        g2, norms, scale, out, N, D, ACC=acc_dtype(g.dtype), BLOCK_N=block_n, BLOCK_D=block_d
    )
    return out.to(g.dtype), norms


def _penalty_grad_triton(grad_out, g, norms, scale) -> torch.Tensor:
    g2 = g.reshape(g.shape[0], -1).contiguous()
    dg = torch.empty_like(g2)
    numel = g2.numel()
    grid = (triton.cdiv(numel, _ELEMENTWISE_BLOCK),)
    _gp_bwd_kernel[grid](
        g2, norms, scale, grad_out.contiguous(), dg, numel, g2.shape[1], BLOCK=_ELEMENTWISE_BLOCK
    )
    return dg.view(g.shape)


# ----------------------------------------------------------------------------- autograd


class _Lerp(torch.autograd.Function):
    """x_hat = eps real + (1 - eps) fake, one eps per sample; Triton forward."""

    @staticmethod
    def forward(ctx, real, fake, eps):
        ctx.save_for_backward(eps)
        return _lerp_triton(real, fake, eps)

    @staticmethod
    def backward(ctx, grad):
        # Rarely run (real and fake usually carry no grad): plain torch, differentiable again.
        (eps,) = ctx.saved_tensors
        eps = eps.view(-1, *[1] * (grad.ndim - 1))
        d_real = (grad * eps).to(grad.dtype) if ctx.needs_input_grad[0] else None
        d_fake = (grad * (1 - eps)).to(grad.dtype) if ctx.needs_input_grad[1] else None
        return d_real, d_fake, None


class _GradPenalty(torch.autograd.Function):
    """scale * sum_i (||g_i|| - 1)^2 (scale = weight / N) with the norms saved for backward."""

    @staticmethod
    def forward(ctx, g, scale):
        out, norms = _penalty_triton(g, scale)
        ctx.save_for_backward(g, norms, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        g, norms, scale = ctx.saved_tensors
        return _GradPenaltyGrad.apply(grad_out, g, norms, scale), None


class _GradPenaltyGrad(torch.autograd.Function):
    """dP/dg_i = 2 scale grad_out (||g_i|| - 1) g_i / ||g_i|| as its own op (bias_act pattern)."""

    @staticmethod
    def forward(ctx, grad_out, g, norms, scale):
        ctx.save_for_backward(grad_out, g, scale)
        return _penalty_grad_triton(grad_out, g, norms, scale)

    @staticmethod
    def backward(ctx, u):
        # Differentiate <u, dP/dg>, using d(g/n)/dg = I/n - g g^T/n^3: torch ops on the inputs,
        # with n recomputed from g, so even higher orders stay correct.
        grad_out, g, scale = ctx.saved_tensors
        g2 = g.reshape(g.shape[0], -1).to(scale.dtype)
        u2 = u.reshape(g.shape[0], -1).to(scale.dtype)
        n = torch.linalg.vector_norm(g2, dim=1)
        inv = torch.where(n > 0, 1 / torch.where(n > 0, n, 1), 0)
        gu = (g2 * u2).sum(1)
        coef = 2 * scale
        d_grad_out = (coef * ((n - 1) * inv * gu).sum()).to(grad_out.dtype)
        d_g = coef * grad_out * (((n - 1) * inv)[:, None] * u2 + g2 * (gu * inv**3)[:, None])
        return d_grad_out.reshape(grad_out.shape), d_g.to(g.dtype).reshape(g.shape), None, None


# ----------------------------------------------------------------------------- public API


def _check(real, fake) -> None:
    for name, x in (("real", real), ("fake", fake)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"gradient_penalty: {name} must be a torch.Tensor, got {type(x).__name__}"
            )
        if not x.is_floating_point():
            raise TypeError(f"gradient_penalty: {name} must be floating point, got {x.dtype}")
    if real.shape != fake.shape:
        raise ValueError(
            f"gradient_penalty: real and fake must have the same shape, got {tuple(real.shape)} "
            f"and {tuple(fake.shape)}; pass batches of equal size and sample shape"
        )
    if real.ndim < 1 or real.numel() == 0:
        raise ValueError(
            f"gradient_penalty: need a non-empty batch (N, ...), got shape {tuple(real.shape)}"
        )
    if real.device != fake.device:
        raise ValueError(
            f"gradient_penalty: real is on {real.device} but fake on {fake.device}; "
            "move both to one device"
        )
    if real.dtype != fake.dtype:
        raise ValueError(
            f"gradient_penalty: real is {real.dtype} but fake is {fake.dtype}; "
            "cast both to one dtype"
        )


def _draw_eps(real: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Drawn in fp32 whatever the input dtype, so one seed gives the same eps at every precision.
    device = generator.device if generator is not None else real.device
    eps = torch.rand(real.shape[0], generator=generator, device=device, dtype=torch.float32)
    return eps.to(device=real.device, dtype=_compute_dtype(real.dtype))


def _critic_grad(critic: Callable, x_hat: torch.Tensor) -> torch.Tensor:
    out = critic(x_hat)
    N = x_hat.shape[0]
    if not isinstance(out, torch.Tensor) or tuple(out.shape) not in ((N,), (N, 1)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"gradient_penalty: critic(x) must return shape ({N},) or ({N}, 1), got {shape}"
        )
    # allow_unused + materialize_grads: a critic that ignores x gets g = 0, not an error.
    (g,) = torch.autograd.grad(
        out, x_hat, torch.ones_like(out),
        create_graph=True, allow_unused=True, materialize_grads=True,
    )
    return g


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float,
    generator: torch.Generator | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """WGAN-GP penalty ``weight * mean_i (||grad critic(x_hat)_i||_2 - 1)^2``.

    Args:
        critic: maps a batch (N, ...) to scores of shape (N,) or (N, 1).
        real, fake: batches of one shape (N, ...), device and floating dtype; vectors or images.
        weight: the penalty coefficient (lambda; 10 in the paper).
        generator: optional torch.Generator for the per-sample eps ~ U[0, 1).
        backend: ``"auto"`` (Triton for CUDA tensors, the torch reference elsewhere),
            ``"triton"`` (also on CPU under ``TRITON_INTERPRET=1``) or ``"torch"``.

    Returns:
        A scalar in the inputs' dtype whose gradient flows into the critic's parameters (and
        into real/fake if they require grad). The gradient of ||g_i|| at g_i = 0 is taken as 0.
    """
    _check(real, fake)
    if not use_triton(backend, _gp_fwd_kernel, real):
        return gradient_penalty_reference(critic, real, fake, weight, generator)
    eps = _draw_eps(real, generator)
    x_hat = _Lerp.apply(real, fake, eps)
    if not x_hat.requires_grad:
        x_hat.requires_grad_(True)
    g = _critic_grad(critic, x_hat)
    scale = torch.full((), float(weight) / real.shape[0], dtype=eps.dtype, device=real.device)
    return _GradPenalty.apply(g, scale)


def gradient_penalty_reference(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Plain-autograd :func:`gradient_penalty`; the same generator state gives the same eps."""
    _check(real, fake)
    eps = _draw_eps(real, generator).view(-1, *[1] * (real.ndim - 1))
    x_hat = (eps * real + (1 - eps) * fake).to(real.dtype)
    if not x_hat.requires_grad:
        x_hat.requires_grad_(True)
    g = _critic_grad(critic, x_hat)
    norms = torch.linalg.vector_norm(g.reshape(g.shape[0], -1).to(eps.dtype), dim=1)
    return (float(weight) * ((norms - 1) ** 2).mean()).to(real.dtype)
