"""gradient_penalty: the Triton and torch paths against a float64 plain-autograd reference,
value and gradient w.r.t. every critic parameter (on CPU, Triton runs in its interpreter)."""
import copy

import pytest
import torch
from torch import nn

from gancore.kernels import gradient_penalty, gradient_penalty_reference
from gancore.kernels._triton import HAS_TRITON
from gancore.kernels.gradient_penalty import _GradPenalty

BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # tests/conftest.py sets the CPU interpreter


def mlp(dim, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, 1)).to(DEVICE)


def convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 6 * 6, 1)
    ).to(DEVICE)


def batch(shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=gen).to(DEVICE, dtype) for _ in range(2))


def penalty_and_grads(fn, critic, real, fake, weight=10.0, adapt=lambda f: f):
    """The penalty and its gradient w.r.t. every parameter of the critic module."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    p = fn(adapt(critic), real, fake, weight, gen)
    grads = torch.autograd.grad(p, list(critic.parameters()), materialize_grads=True)
    return p, grads


def check_against_fp64(backend, critic, real, fake, tol=1e-5, adapt=lambda f: f):
    ours = lambda *a: gradient_penalty(*a, backend=backend)
    p, grads = penalty_and_grads(ours, critic, real, fake, adapt=adapt)
    critic64 = copy.deepcopy(critic).double()
    p64, grads64 = penalty_and_grads(
        gradient_penalty_reference, critic64, real.double(), fake.double(), adapt=adapt
    )
    assert p.dtype == real.dtype and p.ndim == 0
    torch.testing.assert_close(p.double(), p64, rtol=tol, atol=tol)
    for g, g64 in zip(grads, grads64):
        torch.testing.assert_close(g.double(), g64, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n, dim", [(1, 2), (7, 2), (33, 5), (6, 123)])
def test_mlp_matches_fp64(backend, n, dim):
    check_against_fp64(backend, mlp(dim), *batch((n, dim)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_critic_and_flat_output(backend):
    # (N, 3, 6, 6) images; the critic returns shape (N,) instead of (N, 1).
    flat = lambda critic: lambda x: critic(x)[:, 0]
    check_against_fp64(backend, convnet(), *batch((5, 3, 6, 6)), adapt=flat)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp64_is_exact(backend):
    critic = mlp(3).double()
    real, fake = batch((9, 3), torch.float64)
    check_against_fp64(backend, critic, real, fake, tol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)], ids=str)
def test_low_precision(backend, dtype, tol):
    # A linear critic in fp32 on low-precision inputs: g = w (cast to dtype), so the expected
    # penalty is exact to compute; norms accumulate in fp32, so fp16 gradients cannot overflow.
    w = torch.randn(4, 5, generator=torch.Generator().manual_seed(1)).to(DEVICE) * 30
    critic = lambda x: (x.float() * w).flatten(1).sum(1)
    real, fake = batch((6, 4, 5), dtype)
    p = gradient_penalty(critic, real, fake, 2.0, backend=backend)
    norm = torch.linalg.vector_norm(w.to(dtype).double())
    assert p.dtype == dtype
    torch.testing.assert_close(p.double(), 2.0 * (norm - 1) ** 2, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_and_generator_honoured(backend):
    critic, (real, fake) = mlp(4), batch((8, 4))
    def run(weight, seed):
        gen = torch.Generator(device=DEVICE).manual_seed(seed)
        return gradient_penalty(critic, real, fake, weight, gen, backend=backend)
    torch.testing.assert_close(run(7.5, 0), 7.5 * run(1.0, 0))
    assert run(1.0, 0) == run(1.0, 0)
    assert run(1.0, 0) != run(1.0, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_eps_per_sample(backend):
    seen = []
    critic = lambda x: seen.append(x.detach()) or x.flatten(1).sum(1)
    real, fake = batch((5, 2, 3, 3))
    gradient_penalty(critic, real, fake, 1.0, backend=backend)
    ratio = ((seen[0] - fake) / (real - fake)).flatten(1)  # eps_i for every element of sample i
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    assert ((ratio >= 0) & (ratio < 1)).all() and ratio[:, 0].unique().numel() == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_gradient_has_no_nan(backend):
    critic = mlp(3)
    nn.init.zeros_(critic[0].weight)  # critic(x) is constant in x, so g = 0 exactly
    real, fake = batch((4, 3))
    ours = lambda *a: gradient_penalty(*a, backend=backend)
    p, grads = penalty_and_grads(ours, critic, real, fake)
    assert p.item() == 10.0  # (0 - 1)^2 per sample
    assert all(torch.isfinite(g).all() for g in grads)
    p = gradient_penalty(lambda x: x.sum(1) * 0, real, fake, 3.0, backend=backend)
    assert p.item() == 3.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_reaches_real_and_fake(backend):
    critic = mlp(3)
    real, fake = (x.double().requires_grad_(True) for x in batch((4, 3)))
    critic = critic.double()
    grads = {}
    for name, fn in (("ours", lambda *a: gradient_penalty(*a, backend=backend)),
                     ("reference", gradient_penalty_reference)):
        p = fn(critic, real, fake, 10.0, torch.Generator(device=DEVICE).manual_seed(0))
        grads[name] = torch.autograd.grad(p, (real, fake))
    for a, b in zip(grads["ours"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_order_through_the_penalty(backend):
    # d^2 penalty / d W^2, as an unrolled critic step needs: uses the penalty's double backward.
    real, fake = batch((5, 3), torch.float64)
    torch.manual_seed(0)
    W1 = torch.randn(6, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    W2 = torch.randn(1, 6, dtype=torch.float64, device=DEVICE, requires_grad=True)
    def penalty(W1, W2):
        critic = lambda x: torch.tanh(x @ W1.T) @ W2.T
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        return gradient_penalty(critic, real, fake, 10.0, gen, backend=backend)
    assert torch.autograd.gradcheck(penalty, (W1, W2))
    assert torch.autograd.gradgradcheck(penalty, (W1, W2))


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_fused_penalty_gradgradcheck():
    g = torch.randn(4, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    scale = torch.tensor(2.5 / 4, dtype=torch.float64, device=DEVICE)
    assert torch.autograd.gradcheck(_GradPenalty.apply, (g, scale))
    assert torch.autograd.gradgradcheck(_GradPenalty.apply, (g, scale))


def test_errors():
    critic, (real, fake) = mlp(3), batch((4, 3))
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(critic, real, fake[:3], 1.0)
    with pytest.raises(ValueError, match="cast both"):
        gradient_penalty(critic, real, fake.double(), 1.0)
    with pytest.raises(ValueError, match="move both"):
        gradient_penalty(critic, real, fake.to("meta"), 1.0)
    with pytest.raises(TypeError, match="floating point"):
        gradient_penalty(critic, real.long(), fake.long(), 1.0)
    with pytest.raises(ValueError, match=r"shape \(4,\) or \(4, 1\)"):
        gradient_penalty(lambda x: x, real, fake, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        gradient_penalty(critic, real[:0], fake[:0], 1.0)
