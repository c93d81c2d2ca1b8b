"""``gancore bench``: time the fused kernels against every other way to compute the same thing.

Ops and sizes:

* ``mbd`` — :func:`minibatch_l1` on M of shape (N, B, C); a size is ``NxBxC``.
* ``gp`` — the fused part of the WGAN-GP penalty, ``weight * mean((||g_i|| - 1)^2)`` on a given
  critic gradient g of shape (N, D); a size is ``NxD``.

Modes: ``fwd`` (under no_grad), ``fwd+bwd`` (``out.sum().backward()``) and ``bwd2`` (the double
backward a gradient penalty or an unrolled step runs: ``d<V, d<u, out>/dx>/dx``).

Providers (those that cannot run here are listed with the reason): ``cpu`` (the compiled C
kernels, mbd on CPU), ``reference`` (the torch reference), ``naive`` (the textbook formula,
skipped where its temporaries would not fit in 40% of the memory), ``compile``
(``torch.compile`` of the naive formula), ``keops`` (a pykeops reduction, when installed) and
``triton`` (on CUDA, or anywhere under ``TRITON_INTERPRET=1``); for gp also ``copy``
(``torch.clone`` of g, fwd only: the memory bandwidth the fused norm is measured against).

Method: every provider of one (mode, size) runs once untimed (warm-up, compilation), then
``rounds`` times, the providers interleaved and their order rotated each round, so that drift
of a shared machine cannot favour one. Reported: median, interquartile range, peak memory of
one extra untimed call (CUDA: ``torch.cuda.max_memory_allocated`` over the allocation before
it; CPU on Linux: the growth of the peak resident set over the resident set before it, the
high-water mark reset through ``/proc/self/clear_refs``, with glibc told to serve every block
over 64 KiB by mmap so that freed tensors leave the resident set and cannot hide the next call's
temporaries; it includes code pages an op touches for the first time), model FLOP/s (mbd, formulas in :func:`_mbd_flops`) or bytes/s (gp), and the ratio
``reference median / median``.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from gancore.errors import GancoreError, one_line

from . import _cpu
from .gradient_penalty import _GradPenalty
from .minibatch_l1 import minibatch_l1, minibatch_l1_reference

OPS = ("mbd", "gp")
MODES = ("fwd", "fwd+bwd", "bwd2")
PROVIDERS = ("cpu", "reference", "naive", "compile", "keops", "triton", "copy")
DEFAULT_SIZES = {"mbd": ("256x16x5", "512x16x5", "1024x16x5"), "gp": ("256x1200", "256x3072", "64x12288")}
GP_WEIGHT = 10.0
NAIVE_MEMORY_SHARE = 0.4
FORMAT = "gancore-bench/1"


class Skip(Exception):
    """A provider that cannot run this case here; the message says why."""


@dataclass
class Result:
    op: str
    provider: str
    mode: str
    size: str
    skipped: str | None = None
    times_s: list[float] = field(default_factory=list)
    median_s: float | None = None
    iqr_s: float | None = None
    peak_mib: float | None = None
    work_per_s: float | None = None  # FLOP/s (mbd) or bytes/s (gp)
    vs_reference: float | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.op, self.provider, self.mode, self.size


def parse_size(op: str, text: str) -> tuple[int, ...]:
    parts = text.lower().split("x")
    want = 3 if op == "mbd" else 2
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != want or min(dims) < 1 or (op == "mbd" and dims[0] < 2):
        form = "NxBxC with N >= 2, e.g. 512x16x5" if op == "mbd" else "NxD, e.g. 256x1200"
        raise GancoreError(f"--sizes {text!r}: a {op} size is {form} (positive integers)")
    return dims


# ----------------------------------------------------------------------------- the formulas


def naive_minibatch_l1(M: torch.Tensor) -> torch.Tensor:
    """The textbook formula: materializes the (N, N, B, C) differences (K_ii = 1 subtracted)."""
    return torch.exp(-(M[:, None] - M[None]).abs().sum(-1)).sum(1) - 1


def naive_gp_norm(g: torch.Tensor) -> torch.Tensor:
    return GP_WEIGHT * ((g.norm(dim=1) - 1) ** 2).mean()


def _keops_minibatch_l1(M: torch.Tensor) -> torch.Tensor:
    from pykeops.torch import LazyTensor

    x = M.transpose(0, 1).contiguous()  # (B, N, C): B is a batch dimension for KeOps
    k = (-(LazyTensor(x[:, :, None, :]) - LazyTensor(x[:, None, :, :])).abs().sum(-1)).exp()
    return (k.sum(dim=2) - 1).squeeze(-1).t()


def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=False)


def _naive_bytes(dims: tuple[int, ...], mode: str) -> int:
    N, B, C = dims
    live = {"fwd": 2, "fwd+bwd": 6, "bwd2": 10}[mode]  # live (N, N, B, C) fp32 tensors, roughly
    return live * N * N * B * C * 4


def _memory_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _mbd_flops(dims: tuple[int, ...], mode: str) -> int:
    """Model FLOPs over all N*N*B pairs: forward 3C+2 (C subs, abs, adds; exp; add); the
    backward recomputes K and adds 2 for the weight and 3 per channel (sign, multiply, add);
    the second order recomputes K and d again, 3C for W, 1 for dg and 3C+2 for dM."""
    N, B, C = dims
    per_pair = {"fwd": 3 * C + 2, "fwd+bwd": 9 * C + 6, "bwd2": 18 * C + 11}[mode]
    return N * N * B * per_pair


def _function(op: str, provider: str, dims: tuple[int, ...], mode: str, device: str) -> Callable:
    """The op as this provider computes it, or Skip."""
    if provider == "triton":
        from ._triton import use_triton
        from .minibatch_l1 import _mbd_fwd_kernel

        try:
            use_triton("triton", _mbd_fwd_kernel, torch.empty(0, device=device))
        except ValueError:
            raise Skip("Triton runs on CUDA (on CPU only under TRITON_INTERPRET=1, for tests)") from None
        except RuntimeError:
            raise Skip("triton not installed") from None
        if op == "mbd":
            return lambda M: minibatch_l1(M, backend="triton")
        scale = torch.full((), GP_WEIGHT / dims[0], device=device)
        return lambda g: _GradPenalty.apply(g, scale)
    if op == "mbd":
        if provider == "cpu":
            if device != "cpu":
                raise Skip("the C kernels run on CPU tensors")
            if _cpu.library() is None:
                raise Skip("no C compiler: the C kernels could not be built")
            return lambda M: minibatch_l1(M, backend="cpu")
        if provider == "reference":
            return minibatch_l1_reference
        if provider in ("naive", "compile"):
            need, have = _naive_bytes(dims, mode), _memory_bytes(device)
            if need > NAIVE_MEMORY_SHARE * have:
                raise Skip(f"needs ~{need / 2**30:.1f} GiB of (N, N, B, C) temporaries, over "
                           f"{NAIVE_MEMORY_SHARE:.0%} of {have / 2**30:.0f} GiB")
            return naive_minibatch_l1 if provider == "naive" else _compiled(naive_minibatch_l1)
        if provider == "keops":
            try:
                import pykeops  # noqa: F401
            except ImportError:
                raise Skip("pykeops not installed") from None
            return _keops_minibatch_l1
    if op == "gp":
        if provider == "reference":
            return naive_gp_norm  # the reference is the plain formula: plain autograd
        if provider == "compile":
            return _compiled(naive_gp_norm)
        if provider == "copy":
            if mode != "fwd":
                raise Skip("a bandwidth yardstick: fwd only")
            return torch.clone
    raise Skip(f"no {provider} version of {op}")


def make_step(op: str, provider: str, mode: str, dims: tuple[int, ...], device: str):
    """(step, work): one call of the case as a closure, and its FLOPs (mbd) or bytes (gp)."""
    fn = _function(op, provider, dims, mode, device)
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(dims, generator=gen, device=device, requires_grad=mode != "fwd")
    if op == "mbd":
        work = _mbd_flops(dims, mode)
    elif provider == "copy":  # g read and written once
        work = 2 * x.numel() * x.element_size()
    else:  # g read (fwd); read twice and dg written (fwd+bwd); about twice that for bwd2
        work = x.numel() * x.element_size() * {"fwd": 1, "fwd+bwd": 3, "bwd2": 6}[mode]
    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(x)
    elif mode == "fwd+bwd":
        def step():
            x.grad = None
            fn(x).sum().backward()
    else:
        out = fn(x.detach())
        u = torch.randn(out.shape, generator=gen, device=device)
        v = torch.randn(dims, generator=gen, device=device)

        def step():
            x.grad = None
            (dx,) = torch.autograd.grad(fn(x), x, u, create_graph=True)
            (dx * v).sum().backward()
    return step, work


# ----------------------------------------------------------------------------- measuring


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _status_mib(field_name: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field_name)) / 1024


def _return_large_blocks_to_the_os() -> None:
    """glibc raises its mmap threshold (up to 32 MiB) after large frees, then keeps such blocks
    in the heap: the resident set would no longer show a call's temporaries. Fix it at 64 KiB."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the figure may read low
        ctypes.CDLL(None).mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD


def peak_mib(step: Callable, device: str) -> float | None:
    """Peak memory of one call over what was in use before it (see the module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_mib("VmRSS")
    except OSError:
        return None  # not Linux: no resettable high-water mark
    step()
    return max(0.0, _status_mib("VmHWM") - before)


def _quartiles(times: list[float]) -> tuple[float, float, float]:
    if len(times) < 2:
        return times[0], times[0], times[0]
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, median, q3


def run(op: str, sizes: list[str], device: str, modes: list[str], providers: list[str],
        rounds: int, progress: Callable | None = None) -> list[Result]:
    """Every (mode, size, provider), interleaved per (mode, size). ``progress(n)`` is called
    after each timed or warm-up call."""
    results = []
    if device == "cpu":
        _return_large_blocks_to_the_os()
    for size in sizes:
        dims = parse_size(op, size)
        for mode in modes:
            group = {p: Result(op, p, mode, size) for p in providers}
            steps = {}
            for provider, result in group.items():
                try:
                    step, work = make_step(op, provider, mode, dims, device)
                    step()  # warm-up: compilation, first-touch of memory
                    _sync(device)
                    steps[provider] = (step, work)
                except Skip as why:
                    result.skipped = str(why)
                except Exception as error:  # noqa: BLE001 - e.g. torch.compile refusing double backward
                    result.skipped = f"fails here: {one_line(error, 140)}"
                if progress:
                    progress(1 + (0 if result.skipped is None else rounds))
            order = list(steps)
            for r in range(rounds):
                shift = r % max(1, len(order))
                for provider in order[shift:] + order[:shift]:
                    step = steps[provider][0]
                    _sync(device)
                    t0 = time.perf_counter()
                    step()
                    _sync(device)
                    group[provider].times_s.append(time.perf_counter() - t0)
                    if progress:
                        progress(1)
            for provider, (step, work) in steps.items():
                result = group[provider]
                q1, result.median_s, q3 = _quartiles(result.times_s)
                result.iqr_s = q3 - q1
                result.work_per_s = work / result.median_s
                result.peak_mib = peak_mib(step, device)
            reference = group.get("reference")
            if reference is not None and reference.median_s:
                for result in group.values():
                    if result.median_s:
                        result.vs_reference = reference.median_s / result.median_s
            results.extend(group.values())
    return results


def machine(device: str) -> dict:
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": platform.processor() or platform.machine(),
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- reporting


def _si(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f} {prefix}{unit}"
    return f"{value:.1f} {unit}"


def table(results: list[Result]) -> str:
    unit = "FLOP/s" if results and results[0].op == "mbd" else "B/s"
    head = ("size", "mode", "provider", "median", "IQR", "peak MiB", unit, "vs reference")
    rows = []
    for r in results:
        if r.skipped is not None:
            rows.append((r.size, r.mode, r.provider, f"skipped: {r.skipped}"))
            continue
        rows.append((
            r.size, r.mode, r.provider, f"{r.median_s * 1e3:.2f} ms", f"{r.iqr_s * 1e3:.2f} ms",
            "" if r.peak_mib is None else f"{r.peak_mib:.1f}", _si(r.work_per_s, ""),
            "" if r.vs_reference is None else f"{r.vs_reference:.2f}x",
        ))
    full = [head, *(row for row in rows if len(row) == len(head))]
    widths = [max(len(row[i]) for row in full) for i in range(len(head))]
    for row in rows:  # a skipped row: size, mode, provider, then the reason across the rest
        widths[:3] = [max(w, len(cell)) for w, cell in zip(widths, row[:3])]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [head, *rows]]
    return "\n".join(lines)


def to_json(results: list[Result], device: str) -> dict:
    return {"format": FORMAT, "machine": machine(device), "results": [asdict(r) for r in results]}


def read_baseline(path: str) -> dict[tuple, dict]:
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as error:
        raise GancoreError(f"--compare {path}: {error.strerror or error}") from None
    except ValueError:
        raise GancoreError(f"--compare {path}: not a JSON file; give a file written by gancore bench --json") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GancoreError(f"--compare {path}: not a gancore bench result ({FORMAT}); give a file written by gancore bench --json")
    return {(r["op"], r["provider"], r["mode"], r["size"]): r for r in data["results"]}


def regressions(results: list[Result], baseline: dict[tuple, dict]) -> list[str]:
    """Cases slower than the baseline beyond the noise both runs measured: the new median
    exceeds the baseline's by more than both interquartile ranges together (and by 5% at
    least, so two unusually quiet runs do not flag each other)."""
    found = []
    for r in results:
        old = baseline.get(r.key)
        if r.median_s is None or not old or old.get("median_s") is None:
            continue
        allowed = max(r.iqr_s + old["iqr_s"], 0.05 * old["median_s"])
        if r.median_s - old["median_s"] > allowed:
            found.append(f"{' '.join(r.key)}: {r.median_s * 1e3:.2f} ms vs {old['median_s'] * 1e3:.2f} ms "
                         f"(+{(r.median_s / old['median_s'] - 1):.0%}, noise {allowed * 1e3:.2f} ms)")
    return found
