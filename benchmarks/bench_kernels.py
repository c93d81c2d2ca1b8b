"""Benchmarks of gancore.kernels: Triton kernel, C kernel (CPU), torch reference, naive formulation.

The mbd and gp_norm cases are those of `gancore bench` (gancore.kernels.bench.make_step).

    pytest benchmarks/bench_kernels.py --benchmark-enable [-k mbd] [--benchmark-json out.json]

Every case records in ``extra_info``: peak memory of one step (``peak_mib``: the CUDA
allocator's high-water mark on GPU; on CPU, Linux only, the peak RSS of a fresh process running
the step, over its RSS before it), a throughput (model FLOP/s, bytes/s or samples/s) and the
speedup against the torch reference of the same group. Triton cases run on CUDA only. Cases
and figures: KERNELS.md.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from gancore.kernels import bench, gradient_penalty, gradient_penalty_reference
from gancore.kernels._triton import HAS_TRITON

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MBD_B, MBD_C = 100, 5
GP_WEIGHT = 10.0
_REFERENCE_MEDIAN: dict[str, float] = {}  # group -> seconds, for the speedup column


def _critic(name: str, device: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The critics of the GP cases and their batch shapes."""
    torch.manual_seed(0)
    act = lambda: nn.LeakyReLU(0.2)
    if name == "conv3x32x32":
        critic = nn.Sequential(
            nn.Conv2d(3, 64, 4, 2, 1), act(), nn.Conv2d(64, 128, 4, 2, 1), act(),
            nn.Conv2d(128, 256, 4, 2, 1), act(), nn.Flatten(), nn.Linear(256 * 4 * 4, 1),
        )
        return critic.to(device), (64, 3, 32, 32)
    dim = int(name.removeprefix("mlp"))
    critic = nn.Sequential(
        nn.Linear(dim, 512), act(), nn.Linear(512, 512), act(), nn.Linear(512, 1)
    )
    return critic.to(device), (256, dim)


def make_step(op: str, provider: str, mode: str, size: str, device: str):
    """One benchmark step as a closure, plus its work: (step, flops, bytes, samples)."""
    torch.manual_seed(0)
    if op == "mbd":  # the cases of `gancore bench mbd`, at B=100, C=5
        step, flops = bench.make_step("mbd", provider, mode, (int(size), MBD_B, MBD_C), device)
        return step, flops, None, None
    if op == "gp":
        critic, shape = _critic(size, device)
        real, fake = torch.randn(shape, device=device), torch.randn(shape, device=device)
        fn = {
            "triton": lambda *a: gradient_penalty(*a, backend="triton"),
            "reference": gradient_penalty_reference,
        }[provider]

        def step():
            penalty = fn(critic, real, fake, GP_WEIGHT)
            if mode != "fwd":
                critic.zero_grad(set_to_none=True)
                penalty.backward()
        return step, None, None, shape[0]

    if op == "gp_norm":  # the fused norm + mean alone: the cases of `gancore bench gp`
        step, nbytes = bench.make_step("gp", provider, mode, tuple(map(int, size.split("x"))), device)
        return step, None, nbytes, None
    raise ValueError(op)


def _cpu_peak_mib(*case: str) -> float:
    """Peak RSS of one step of `case` in a fresh process, over the process's baseline."""
    out = subprocess.run(
        [sys.executable, __file__, *case], capture_output=True, text=True, check=True,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    return float(out.stdout.split()[-1])


def _peak_mib(step, case: tuple[str, ...], device: str) -> float:
    if device != "cuda":
        return _cpu_peak_mib(*case)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def run_case(benchmark, op: str, provider: str, mode: str, size: str, device: str = DEVICE):
    step, flops, nbytes, samples = make_step(op, provider, mode, size, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed():
        step()
        sync()

    t0 = time.perf_counter()
    timed()  # warm-up: Triton compiles here
    rounds = max(1, min(20, int(3.0 / max(time.perf_counter() - t0, 1e-6))))
    group = f"{op}-{mode}-{size}"
    benchmark.group = group
    benchmark.pedantic(timed, rounds=rounds, iterations=1)
    info = benchmark.extra_info
    info.update(device=torch.cuda.get_device_name() if device == "cuda" else "cpu")
    info["peak_mib"] = round(_peak_mib(step, (op, provider, mode, size), device), 1)
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    median = benchmark.stats.stats.median
    for key, work in (("flop_per_s", flops), ("bytes_per_s", nbytes), ("samples_per_s", samples)):
        if work is not None:
            info[key] = work / median
    if provider == "reference":
        _REFERENCE_MEDIAN[group] = median
    elif group in _REFERENCE_MEDIAN:
        info["speedup_vs_reference"] = _REFERENCE_MEDIAN[group] / median


def _providers(*names: str):
    """Reference first, so that later providers of a group can report their speedup."""
    no_cuda = pytest.mark.skipif(
        DEVICE != "cuda" or not HAS_TRITON,
        reason="Triton kernels are timed on CUDA only (the CPU interpreter is for correctness)",
    )
    return [pytest.param(n, marks=no_cuda) if n == "triton" else n for n in names]


MODES = ["fwd", "fwd+bwd"]


@pytest.mark.parametrize("N", [256, 1024, 4096])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", _providers("reference", "cpu", "naive", "triton"))
def test_mbd(benchmark, provider, mode, N):
    """minibatch_l1 at (N, B=100, C=5)."""
    try:
        run_case(benchmark, "mbd", provider, mode, str(N))
    except bench.Skip as why:
        pytest.skip(str(why))


@pytest.mark.parametrize("critic", ["mlp2", "mlp1200", "conv3x32x32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", _providers("reference", "triton"))
def test_gp(benchmark, provider, mode, critic):
    """gradient_penalty with a whole critic (the reference is the plain, naive formulation)."""
    run_case(benchmark, "gp", provider, mode, critic)


@pytest.mark.parametrize("shape", ["256x1200", "256x3072", "64x12288"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", _providers("reference", "triton"))
def test_gp_norm(benchmark, provider, mode, shape):
    """The fused norm + weighted mean (and its backward) alone, on a given gradient (N x D)."""
    run_case(benchmark, "gp_norm", provider, mode, shape)


def test_mbd_reference_memory_cpu(benchmark):
    """The torch reference at N=4096, B=100, C=5 on CPU stays far below 1 GB, forward and
    forward+backward (the naive formulation would need 33 GB for the differences alone)."""
    run_case(benchmark, "mbd", "reference", "fwd", "4096", device="cpu")
    peak_fwd_bwd = _cpu_peak_mib("mbd", "reference", "fwd+bwd", "4096")
    benchmark.extra_info["peak_mib_fwd+bwd"] = round(peak_fwd_bwd, 1)
    assert max(benchmark.extra_info["peak_mib"], peak_fwd_bwd) < 1000


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


if __name__ == "__main__":  # `python bench_kernels.py OP PROVIDER MODE SIZE`: CPU peak, in MiB
    step = make_step(*sys.argv[1:], "cpu")[0]
    # Linux: reset the RSS high-water mark to the current RSS (getrusage's ru_maxrss cannot be
    # reset and survives fork + exec), run the step, read the mark again.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mib("VmRSS")
    step()
    print(_status_mib("VmHWM") - before)
