"""Start test processes as torchrun would: one per rank, with WORLD_SIZE, RANK, LOCAL_RANK and
MASTER_ADDR/MASTER_PORT set (plain subprocesses, so a test can signal or kill one rank)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("worker.py")
REPOSITORY = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_environment(rank: int, size: int, port: int) -> dict:
    path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))  # the ranks import tests.*
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GANCORE_DIST_TIMEOUT": "30", "PYTHONPATH": path}
    if size > 1:
        env.update(WORLD_SIZE=str(size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


def start(argv: list[str], size: int, cwd: Path, **variables: str) -> list[subprocess.Popen]:
    """``size`` processes running ``python argv`` as the ranks of one world (with ``variables``
    added to their environment)."""
    port = free_port()
    return [
        subprocess.Popen([sys.executable, *argv], cwd=cwd, env={**rank_environment(rank, size, port), **variables}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(size)
    ]


def fit_in_processes(runs: list[dict], size: int, where: Path, timeout: float = 240) -> list[dict]:
    """Run gancore.fit for each of ``runs`` (``label``, ``plugins``, ``settings``) on ``size``
    ranks; each rank's results by label."""
    where.mkdir(parents=True, exist_ok=True)
    spec = where / f"runs-{size}.json"
    spec.write_text(json.dumps(runs))
    outputs = [where / f"rank{rank}-of-{size}.pt" for rank in range(size)]
    processes = [subprocess.Popen([sys.executable, str(WORKER), str(spec), str(out)], cwd=where, env=rank_environment(rank, size, port), stderr=subprocess.PIPE, text=True)
                 for port in [free_port()] for rank, out in enumerate(outputs)]
    for process in processes:
        _, stderr = process.communicate(timeout=timeout)
        assert process.returncode == 0, stderr[-2000:]
    return [torch.load(out, weights_only=True) for out in outputs]
