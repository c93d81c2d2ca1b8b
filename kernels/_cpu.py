"""The fused CPU path of :func:`minibatch_l1`: a small C file compiled on first use.

Why plain C, compiled with the system's ``cc`` and loaded with :mod:`ctypes`, rather than the
alternatives the design weighed:

* install weight: nothing to install. numba pulls in llvmlite (~100 MB, pinned to narrow numpy
  ranges), pykeops a CUDA/C++ toolchain and its own build cache; a torch C++ extension
  (``torch.utils.cpp_extension.load_inline``) needs ninja and the torch headers.
* compile time: about one second, once per machine (the library is cached under
  ``~/.cache/gancore`` by a hash of the source, the flags and the CPU); a torch extension
  spends 30-60 s parsing torch's headers.
* threads: ctypes releases the GIL during the call, so a pool of ``torch.get_num_threads()``
  Python threads runs disjoint ranges of the B kernels in parallel; no OpenMP runtime of our
  own to clash with torch's.
* double backward: the C code does the forward and the first-order backward (all a training
  step runs). The second order, needed only by a gradient penalty or an unrolled step through
  D, goes to the differentiable torch reference (``_bwd2_torch``), exact and as memory-bounded.

Without a working compiler (or with ``GANCORE_CPU_KERNELS=0``) nothing changes for the user but
speed: :func:`library` returns None, the op uses the torch reference, and a one-line warning
says why, once per process.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("minibatch_l1_cpu.c")
DISABLE_VARIABLE = "GANCORE_CPU_KERNELS"  # "0": always use the torch reference on CPU
# Flag sets tried in order. The first announces glibc's vector exp (libmvec) so that the exp
# loops vectorize; -ffast-math is avoided on purpose: its -shared link switches the whole
# process to flush-to-zero. The reassociation flags let the sums vectorize.
_COMMON = ["-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math",
           "-fassociative-math", "-fno-signed-zeros"]
_FLAG_SETS = (
    ["-march=native", "-DMINIBATCH_L1_LIBMVEC", *_COMMON, "-lmvec", "-lm"],
    ["-march=native", *_COMMON, "-lm"],
    [*_COMMON, "-lm"],
)
_ARGS = {
    "fwd": (*[ctypes.c_void_p] * 3, *[ctypes.c_long] * 3, ctypes.c_int, *[ctypes.c_long] * 2),
    "bwd": (*[ctypes.c_void_p] * 4, *[ctypes.c_long] * 5),
}
# The forward keeps K (its upper triangle) for the backward when that takes at most this many
# elements (16 MB in fp32, the reference's chunk); beyond, the backward recomputes K: memory
# stays O(N B C + this) at any N.
KEEP_ELEMENTS = 1 << 22
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def compiler() -> str:
    return os.environ.get("CC", "cc")


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "gancore"


def _cpu_model() -> str:
    """The CPU's model and instruction-set flags: a home directory shared by machines with
    different CPUs must not hand one a library built with -march=native for another."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(lines[:2])
    except OSError:
        return platform.processor()


def _compile(flags: list[str]) -> Path:
    """The cached library for these flags, compiled now if missing (atomically: a concurrent
    process either sees the whole file or none)."""
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), compiler(), *flags, platform.machine(), _cpu_model()]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"minibatch_l1_cpu-{key}.so"
    if not target.exists():
        if shutil.which(compiler()) is None:
            raise OSError(f"no C compiler {compiler()!r} on PATH")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            subprocess.run([compiler(), str(SOURCE), "-o", partial, *flags],
                           check=True, capture_output=True, text=True, timeout=120)
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (with a one-time warning) where they cannot be built."""
    if os.environ.get(DISABLE_VARIABLE) == "0":
        return None
    errors = []
    for flags in _FLAG_SETS:
        try:
            lib = ctypes.CDLL(str(_compile(flags)))
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or str(error)
            errors.append(detail.strip().splitlines()[0] if detail.strip() else type(error).__name__)
            continue
        for suffix in _SUFFIX.values():
            for name, args in _ARGS.items():
                fn = getattr(lib, f"minibatch_l1_{name}_{suffix}")
                fn.argtypes, fn.restype = args, ctypes.c_int
        return lib
    warnings.warn(
        f"gancore: the fused CPU minibatch_l1 could not be compiled ({errors[-1]}); using the "
        f"slower torch reference (set {DISABLE_VARIABLE}=0 to silence this)",
        RuntimeWarning,
        stacklevel=2,
    )
    return None


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="gancore-mbd")


def _run(name: str, *tensors: torch.Tensor, B: int, N: int, C: int, extra: tuple = ()) -> None:
    """Call ``minibatch_l1_{name}`` on contiguous CPU tensors (an empty one is passed as NULL),
    the B kernels split across torch.get_num_threads() threads."""
    fn = getattr(library(), f"minibatch_l1_{name}_{_SUFFIX[tensors[0].dtype]}")
    pointers = [t.data_ptr() if t.numel() else None for t in tensors]
    call = lambda b0, b1: fn(*pointers, B, N, C, *extra, b0, b1)
    workers = min(B, torch.get_num_threads())
    if workers <= 1:
        status = [call(0, B)]
    else:
        bounds = [B * w // workers for w in range(workers + 1)]
        status = list(_pool(workers).map(call, bounds[:-1], bounds[1:]))
    if any(status):
        raise MemoryError(f"minibatch_l1: could not allocate {2 * N} scratch values")


def _by_channel(x: torch.Tensor) -> torch.Tensor:
    """(N, B, C) -> contiguous (B, C, N) in fp32 (fp64 for fp64): one vector over j per (b, c)."""
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    return x.permute(1, 2, 0).contiguous()


def forward(M: torch.Tensor, exclude_self: bool, keep: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """o (N, B), and with ``keep`` (a backward will follow) K's upper triangle for it, unless
    that is over KEEP_ELEMENTS (then an empty tensor: the backward recomputes K)."""
    N, B, C = M.shape
    x = _by_channel(M)
    o = x.new_empty(B, N)
    pairs = B * (N * (N - 1) // 2)
    kept = x.new_empty(pairs if keep and pairs <= KEEP_ELEMENTS else 0)
    _run("fwd", x, o, kept, B=B, N=N, C=C, extra=(int(exclude_self),))
    return o.t().contiguous().to(M.dtype), kept


def backward(g: torch.Tensor, M: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """dM (N, B, C) for the upstream gradient g (N, B); self pairs have sign 0 either way."""
    N, B, C = M.shape
    x = _by_channel(M)
    gb = g.to(x.dtype).t().contiguous()
    dx = torch.empty_like(x)
    _run("bwd", x, gb, kept, dx, B=B, N=N, C=C)
    return dx.permute(2, 0, 1).contiguous().to(M.dtype)
