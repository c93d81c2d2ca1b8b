"""minibatch_l1: Triton kernels, the compiled CPU kernels and the chunked torch reference against
a float64 naive formula, forward, backward and double backward (on CPU the Triton kernels run in
Triton's interpreter)."""
import os
import subprocess
import sys
import textwrap

import warnings

import pytest
import torch

from gancore.kernels import _cpu, minibatch_l1, minibatch_l1_reference
from gancore.kernels._triton import HAS_TRITON, use_triton

HAS_CPU_KERNELS = _cpu.library() is not None  # compiled once per test session (and cached on disk)
BACKENDS = [
    "reference",
    pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")),
    pytest.param("cpu", marks=pytest.mark.skipif(
        not HAS_CPU_KERNELS or torch.cuda.is_available(), reason="no C compiler, or tests on CUDA")),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # tests/conftest.py sets the CPU interpreter
SHAPES = [(n, b, c) for n in (2, 7, 33) for b in (1, 3, 5) for c in (1, 3, 5)]


def naive(M, exclude_self=True):
    """The materialized (N, N, B, C) formula, differentiated by plain autograd."""
    k = torch.exp(-(M[:, None] - M[None]).abs().sum(-1))
    if exclude_self:
        k = k * (1 - torch.eye(M.shape[0], dtype=M.dtype, device=M.device))[:, :, None]
    return k.sum(1)


def run(fn, M, g, V):
    """o, dM = d<g, o>/dM, and the double backward d<V, dM>/d(M, g)."""
    M = M.detach().requires_grad_(True)
    g = g.detach().requires_grad_(True)
    o = fn(M)
    (dM,) = torch.autograd.grad(o, M, g, create_graph=True)
    ddM, ddg = torch.autograd.grad(dM, (M, g), V)
    return o, dM, ddM, ddg


def assert_all_close(got, want, **tol):
    for name, a, b in zip(("o", "dM", "d2M", "d2g"), got, want):
        torch.testing.assert_close(a.double(), b.double(), **tol, msg=lambda m: f"{name}: {m}")


def inputs(N, B, C, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((N, B, C), (N, B), (N, B, C))
    return tuple(torch.randn(s, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
                 for s in shapes)


def op(backend, exclude_self):
    if backend == "reference":
        return lambda M: minibatch_l1_reference(M, exclude_self)
    return lambda M: minibatch_l1(M, exclude_self, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("exclude_self", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_naive_fp64(backend, exclude_self, shape):
    M, g, V = inputs(*shape, torch.float64)
    got = run(op(backend, exclude_self), M, g, V)
    assert_all_close(got, run(lambda M: naive(M, exclude_self), M, g, V), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    # M as a strided view (C and B interleaved differently, every other sample) of a larger tensor
    base, _, V = inputs(37, 4, 10, torch.float64, seed=9)
    M = base.transpose(1, 2)[::2, ::2, :3]
    assert not M.is_contiguous()
    g, V = base[:19, 0, :5], V.transpose(1, 2)[::2, :5, :3]
    got = run(op(backend, True), M, g, V)
    assert_all_close(got, run(naive, M.contiguous(), g, V), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(7, 3, 5), (33, 5, 3)], ids=lambda s: "x".join(map(str, s)))
def test_fp32_accumulation(backend, shape):
    M, g, V = inputs(*shape, torch.float32, seed=1)
    got = run(op(backend, True), M, g, V)
    assert got[0].dtype == torch.float32
    assert_all_close(got, run(naive, M.double(), g.double(), V.double()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)], ids=str)
def test_low_precision(backend, dtype, tol):
    # Inputs rounded to dtype, math in fp32, output rounded to dtype: compare with the exact
    # result on the rounded inputs at about one output ulp.
    M, g, _ = inputs(33, 3, 5, dtype, seed=2)
    M.requires_grad_(True)
    o = op(backend, True)(M)
    (dM,) = torch.autograd.grad(o, M, g)
    assert o.dtype == dM.dtype == dtype
    M64 = M.detach().double().requires_grad_(True)
    o64 = naive(M64)
    (dM64,) = torch.autograd.grad(o64, M64, g.double())
    torch.testing.assert_close(o.double(), o64, rtol=tol, atol=tol)
    torch.testing.assert_close(dM.double(), dM64, rtol=tol, atol=tol * dM64.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("exclude_self", [True, False])
def test_exact_ties(backend, exclude_self):
    # Small integers: many equal coordinates across samples, plus two identical samples.
    gen = torch.Generator().manual_seed(3)
    M = torch.randint(-2, 3, (9, 3, 5), generator=gen).double()
    M[4] = M[1]
    _, g, V = inputs(9, 3, 5, torch.float64, seed=3)
    M = M.to(DEVICE)
    got = run(op(backend, exclude_self), M, g, V)
    assert_all_close(got, run(lambda M: naive(M, exclude_self), M, g, V), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("exclude_self", [True, False])
def test_gradcheck_and_gradgradcheck(backend, exclude_self):
    M, _, _ = inputs(5, 2, 3, torch.float64, seed=4)
    M.requires_grad_(True)
    fn = op(backend, exclude_self)
    assert torch.autograd.gradcheck(fn, (M,))
    assert torch.autograd.gradgradcheck(fn, (M,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_transforms(backend):
    # torch.func.grad, first order and nested (a functional unroll would use these).
    M, _, V = inputs(6, 2, 3, torch.float64, seed=8)
    f = lambda fn: lambda M: (fn(M) ** 2).sum()
    ours, want = f(op(backend, True)), f(naive)
    torch.testing.assert_close(torch.func.grad(ours)(M), torch.func.grad(want)(M))
    hvp = lambda f: torch.func.grad(lambda M: (torch.func.grad(f)(M) * V).sum())
    torch.testing.assert_close(hvp(ours)(M), hvp(want)(M))


def test_third_order_is_refused():
    M, _, _ = inputs(5, 2, 3, torch.float64)
    M.requires_grad_(True)
    (dM,) = torch.autograd.grad(minibatch_l1(M).sum(), M, create_graph=True)
    (d2M,) = torch.autograd.grad((dM**2).sum(), M, create_graph=True)
    with pytest.raises(RuntimeError, match="third-order"):
        d2M.sum().backward()


@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_reference_chunks_agree(chunk):
    M, g, V = inputs(11, 2, 3, torch.float64, seed=5)
    got = run(lambda M: minibatch_l1_reference(M, chunk=chunk), M, g, V)
    assert_all_close(got, run(naive, M, g, V), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_including_self_adds_one(backend):
    M, _, _ = inputs(6, 2, 3, torch.float32, seed=6)
    torch.testing.assert_close(op(backend, False)(M), op(backend, True)(M) + 1)


def test_backend_dispatch(monkeypatch):
    M, _, _ = inputs(6, 2, 3, torch.float32, seed=7)
    want = minibatch_l1_reference(M)
    torch.testing.assert_close(minibatch_l1(M, backend="torch"), want, rtol=0, atol=0)
    # "auto": the Triton kernels on CUDA, the C kernels on CPU (bit-identical to backend="cpu").
    if DEVICE == "cpu" and HAS_CPU_KERNELS:
        torch.testing.assert_close(minibatch_l1(M), minibatch_l1(M, backend="cpu"), rtol=0, atol=0)
        assert not torch.equal(minibatch_l1(M), want)  # another summation order: really the C path
    torch.testing.assert_close(minibatch_l1(M), want)
    # GANCORE_CPU_KERNELS=0: "auto" is the reference on CPU, silently
    monkeypatch.setenv(_cpu.DISABLE_VARIABLE, "0")
    _cpu.library.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = minibatch_l1(M.cpu())
    finally:
        monkeypatch.undo()
        _cpu.library.cache_clear()
    torch.testing.assert_close(got, minibatch_l1_reference(M.cpu()), rtol=0, atol=0)


@pytest.mark.skipif(not HAS_CPU_KERNELS, reason="no C compiler")
@pytest.mark.parametrize("keep_elements", [0, 10**9], ids=["recomputed", "kept"])
def test_cpu_backward_with_k_kept_or_recomputed(monkeypatch, keep_elements):
    # The forward keeps K for the backward only up to _cpu.KEEP_ELEMENTS; both ways are exact.
    monkeypatch.setattr(_cpu, "KEEP_ELEMENTS", keep_elements)
    M, g, V = inputs(23, 3, 4, torch.float64, seed=11)
    M = M.cpu().requires_grad_(True)
    o = minibatch_l1(M, backend="cpu")
    assert o.grad_fn is not None
    kept = o.grad_fn.saved_tensors[1]
    assert kept.numel() == (3 * 23 * 22 // 2 if keep_elements else 0)
    got = run(lambda M: minibatch_l1(M, backend="cpu"), M, g.cpu(), V.cpu())
    assert_all_close(got, run(naive, M, g.cpu(), V.cpu()), rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not HAS_CPU_KERNELS, reason="no C compiler")
def test_cpu_threads_split_the_kernels_bit_identically():
    # B is split across torch.get_num_threads() threads; each b is summed by one thread in one
    # order, so the result does not depend on the thread count.
    M, g, _ = inputs(19, 5, 3, torch.float32, seed=12)
    M, g = M.cpu().requires_grad_(True), g.cpu()
    results = []
    threads = torch.get_num_threads()
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        try:
            o = minibatch_l1(M, backend="cpu")
            results.append((o, *torch.autograd.grad(o, M, g)))
        finally:
            torch.set_num_threads(threads)
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            assert torch.equal(a, b)


def test_without_a_compiler_falls_back_to_the_reference(monkeypatch, tmp_path):
    # What `pip install gancore` gets on a machine without cc: the same numbers, one warning.
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no library cached by an earlier run
    _cpu.library.cache_clear()
    try:
        M, g, V = inputs(7, 3, 2, torch.float64, seed=10)
        with pytest.warns(RuntimeWarning, match="could not be compiled .*no C compiler.*torch reference"):
            got = run(lambda M: minibatch_l1(M.cpu()), M.cpu(), g.cpu(), V.cpu())
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per process
            minibatch_l1(M.cpu())
        with pytest.raises(RuntimeError, match="could not be compiled.*backend='torch'"):
            minibatch_l1(M.cpu(), backend="cpu")
    finally:
        monkeypatch.undo()
        _cpu.library.cache_clear()
    want = run(minibatch_l1_reference, M.cpu(), g.cpu(), V.cpu())
    assert_all_close(got, want, rtol=0, atol=0)


def test_unused_output_costs_no_n_by_n_zeros():
    # The reference's backward must not materialize a (B, N, N) zero gradient for the kept
    # distances (ctx.set_materialize_grads(False)).
    M = torch.randn(64, 3, 2, requires_grad=True)
    loss = minibatch_l1_reference(M).sum()
    with torch.profiler.profile(record_shapes=True) as prof:
        loss.backward()
    filled = [e.input_shapes for e in prof.events() if e.name in ("aten::zero_", "aten::zeros", "aten::fill_")]
    assert [3, 64, 64] not in [shape for shapes in filled for shape in shapes], filled


def test_errors():
    with pytest.raises(ValueError, match=r"shape \(N, B, C\)"):
        minibatch_l1(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="floating-point"):
        minibatch_l1(torch.zeros(4, 3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="N >= 2"):
        minibatch_l1(torch.zeros(1, 3, 2))
    assert minibatch_l1(torch.zeros(1, 3, 2), exclude_self=False).tolist() == [[1.0] * 3]
    with pytest.raises(ValueError, match="backend must be one of .*'cpu'"):
        minibatch_l1(torch.zeros(4, 3, 2), backend="cuda")
    with pytest.raises(ValueError, match="backend='cpu' needs a CPU tensor, got one on meta"):
        minibatch_l1(torch.zeros(4, 3, 2, device="meta"), backend="cpu")
    with pytest.raises(ValueError, match="positive"):
        minibatch_l1_reference(torch.zeros(4, 3, 2), chunk=0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        minibatch_l1([[[0.0]]])


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_forced_triton_on_cpu_needs_interpreter():
    compiled_kernel = object()  # anything that is not an interpreted kernel
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        use_triton("triton", compiled_kernel, torch.zeros(2, 1, 1))
    assert not use_triton("auto", compiled_kernel, torch.zeros(2, 1, 1))


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_reference_memory_is_bounded():
    # N=1024, B=100, C=5: the naive (N, N, B, C) difference alone is 2 GiB in fp32. The peak RSS
    # of a fresh process (high-water mark reset first: ru_maxrss is inherited from this one)
    # shows the reference's forward + backward stays far below. A small call first loads the
    # code pages; what is left varies with the allocator (160-275 MiB seen on one machine), so
    # the bound is a quarter of the naive difference tensor, not a tight fit.
    script = textwrap.dedent(
        """
        import torch
        from gancore.kernels import minibatch_l1_reference

        def status_mib(field):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024

        minibatch_l1_reference(torch.randn(64, 4, 5, requires_grad=True)).sum().backward()
        M = torch.randn(1024, 100, 5, requires_grad=True)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status_mib("VmRSS")
        minibatch_l1_reference(M).sum().backward()
        print(status_mib("VmHWM") - before)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak_mib = float(out.stdout.split()[-1])
    assert peak_mib < 512, f"reference used {peak_mib:.0f} MiB over baseline"
