"""What produced a number: the build of gancore, PyTorch and the CPU path that ran it.

Training on CPU is deterministic for one build, but a different CPU capability (AVX2 against
AVX-512), BLAS or thread count rounds differently, and GAN trajectories amplify rounding: a
stored result is only reproducible on the build it names.
"""
from __future__ import annotations

import platform
import re
import subprocess
import time
from functools import lru_cache
from pathlib import Path

import torch

from gancore import __version__


# The tracked files whose local changes can change what runs; generated results (benchmark
# tables, stored runs, the recipes' scores.toml) and docs cannot, and a benchmark rewrites them
# after every invocation, which would otherwise mark each later run "+dirty".
CODE_PATHS = (":(glob)**/*.py", ":(glob)**/*.c", ":(glob)**/*.toml", ":(exclude,glob)**/recipes/scores.toml")


@lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The git commit of the gancore source tree in use (with ``+dirty`` for local changes to
    its code), or None when gancore is not run from a git checkout (an installed wheel)."""
    return checkout_commit(Path(__file__).resolve().parent.parent)


def checkout_commit(root: Path) -> str | None:
    """HEAD of the git checkout at ``root``, ``+dirty`` when a tracked file of :data:`CODE_PATHS`
    differs from it; None when ``root`` is no checkout or git cannot answer."""
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _blas() -> str:
    match = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return match.group(1) if match else "unknown"


def build_info() -> dict:
    """The build that produces a result: versions, commit, CPU capability, BLAS and threads."""
    return {
        "gancore": __version__,
        "commit": source_commit(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": _blas(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def build_key(info: dict) -> str:
    """The parts of :func:`build_info` that change CPU arithmetic, as one short label."""
    return f"torch {info.get('torch', '?')}, {info.get('cpu_capability', '?')}, {info.get('blas', '?')}, {info.get('threads', '?')} thread(s)"


class Stopwatch:
    """Time since it was made: wall clock, and this process's CPU time (all its threads). For a run
    on one thread the CPU time is its one-core cost, without the time it waited for a core or was
    stopped (SIGSTOP), which the wall clock also counts."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> dict[str, float]:
        """``{"wall_seconds": ..., "cpu_seconds": ...}``, rounded to milliseconds."""
        return {"wall_seconds": round(time.perf_counter() - self._wall, 3), "cpu_seconds": round(time.process_time() - self._cpu, 3)}
