"""Data-parallel training on torch.distributed, launched by ``torchrun`` (gloo on CPU, NCCL on CUDA).

Without torchrun's environment (``WORLD_SIZE`` unset or 1) the trainer runs as in one process:
:class:`World` ``()`` and none of its collectives.

Under ``torchrun --nproc-per-node N``, every rank builds the same trainer (same seed: same
initial networks) and trains on its share of the global batch ``train.batch_size``:

* **Data and noise.** All ranks draw from one training stream seeded by the seed: every draw
  of the training stream (``trainer.noise()``, ``trainer.real_batch()``) draws the rows of all
  ranks and keeps the rank's share (rows ``rank*n … (rank+1)*n``). Rank r thus trains on the
  r-th slice of the very batch one process would draw, which makes a run reproducible for a
  given world size and, for losses that are means over samples, equal to the one-process run
  (up to the order of float sums). The extra cost is drawing N times the random numbers, not
  moving N times the data: real points are indexed after slicing.
* **Gradients.** After each update's backward pass, each player's gradients (all of its
  networks, including those plugins add) are averaged over the ranks with one all-reduce
  (which also carries the loss terms, see below),
  so the optimizers take identical steps and the parameters stay identical on every rank.
  This is the all-reduce DistributedDataParallel performs; gancore calls it explicitly because
  a GAN step is not DDP's one-forward-one-backward pattern (D runs on real and fake before one
  backward; G's loss backpropagates through D, whose gradients are discarded; plugins unroll D
  functionally), and because wrapping would hide the networks' attributes from plugins and
  rename their checkpoint keys.
* **Losses.** The loss terms are averaged over the ranks before they are checked and logged,
  so every rank sees the same (global) losses and a non-finite one stops all ranks together.
* **Stopping.** A stop request (SIGINT/SIGTERM) is agreed on after each step (one 1-value
  all-reduce), so all ranks stop after the same step and rank 0 writes the one checkpoint.
* **Files.** Rank 0 alone writes the run directory; every rank evaluates (identical samples:
  the parameters and the evaluation seed are the same) so plugins see the same metrics.

A rank that dies (or stops answering for ``GANCORE_DIST_TIMEOUT`` seconds, default 300) makes the
others' next collective fail; they stop with a one-line :class:`RankLost` error.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator

import torch

from gancore.errors import GancoreError, one_line

TIMEOUT_VARIABLE = "GANCORE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300
# what a plugin's ``data_parallel`` declaration may say (see gancore.hookspecs)
EXACT, LOCAL, REFUSED = "exact", "local", "refused"


class RankLost(GancoreError):
    """Another rank died or stopped answering; this rank stops too."""


@dataclass(frozen=True)
class World:
    """The processes training together: this one's ``rank`` among ``size`` (``local_rank``
    on its machine). ``World()`` is one process alone: ``share``, ``drawing_share``,
    ``mean`` and ``largest`` change nothing then, and the trainer calls :meth:`average` only when ``parallel``."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Whether this rank writes files and prints (rank 0)."""
        return self.rank == 0

    def share(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's slice of ``rows`` drawn for all ranks (all of it in one process)."""
        if not self.parallel:
            return rows
        n = len(rows) // self.size
        return rows[self.rank * n : (self.rank + 1) * n]

    @contextmanager
    def drawing_share(self, generator: torch.Generator, n: int) -> Iterator[None]:
        """Around code that draws ``n`` float32 U[0, 1) numbers (one per sample of this rank's
        batch) from the shared ``generator``: skip the draws of the ranks before and after this
        one, so that the code gets this rank's slice of one draw for all ranks (on CPU, where
        draws split exactly; on CUDA each rank still gets its own numbers, in another order)."""
        if self.parallel and self.rank:
            torch.rand(self.rank * n, generator=generator, device=generator.device)
        yield
        if self.parallel and self.size - self.rank - 1:
            torch.rand((self.size - self.rank - 1) * n, generator=generator, device=generator.device)

    def local_batch_size(self, batch_size: int) -> int:
        if batch_size % self.size:
            raise GancoreError(f"train.batch_size={batch_size} does not divide among {self.size} processes; give a multiple of {self.size}")
        return batch_size // self.size

    def device(self, device: torch.device) -> torch.device:
        """The CUDA device of this rank (``cuda:LOCAL_RANK``); other devices unchanged."""
        if not self.parallel or device.type != "cuda":
            return device
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def average(self, parameters: Iterable[torch.nn.Parameter], terms: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
        """Replace each gradient by its mean over the ranks and return the loss ``terms``
        (detached) averaged over the ranks: one all-reduce per gradient dtype, the terms
        riding along with the float32 gradients. The ranks run the same code, so the same
        parameters have gradients on every rank (the flattened buffers match)."""
        values = torch.stack([value.detach().float().reshape(()) for value in terms.values()])
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {torch.float32: []}
        for parameter in parameters:
            if parameter.grad is not None:
                by_dtype.setdefault(parameter.grad.dtype, []).append(parameter.grad)
        for dtype, grads in by_dtype.items():
            flat = torch.cat([grad.reshape(-1) for grad in grads] + ([values] if dtype == torch.float32 else []))
            with self._collective(what):
                torch.distributed.all_reduce(flat)
            flat /= self.size
            offset = 0
            for grad in grads:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()
            if dtype == torch.float32:
                values = flat[offset:]
        return dict(zip(terms, values))

    def mean(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """``tensor`` averaged over the ranks (``tensor`` itself in one process): for state a plugin
        derives from its rank's data that must stay identical on every rank."""
        if not self.parallel:
            return tensor
        total = tensor.detach().clone()
        with self._collective(what):
            torch.distributed.all_reduce(total)
        return total / self.size

    def largest(self, number: int, device: torch.device, what: str) -> int:
        """The largest of the ranks' ``number``s."""
        if not self.parallel:
            return number
        value = torch.tensor([number], device=device)
        with self._collective(what):
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return int(value.item())

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as error:  # gloo and NCCL raise DistBackendError (a RuntimeError) or RuntimeError
            raise RankLost(
                f"rank {self.rank} of {self.size}: another rank died or stopped answering during {what} ({one_line(error, 120)}); "
                "all ranks stop; resume from the last checkpoint"
            ) from None

    def check_plugins(self, plugins: Iterable) -> None:
        """Refuse, under more than one process, a plugin that refuses data parallelism or does
        not declare what it does under it (``data_parallel``, see gancore.hookspecs)."""
        if not self.parallel:
            return
        for info in plugins:
            declared = getattr(info.cls, "data_parallel", None)
            mode = declared[0] if isinstance(declared, tuple) and len(declared) == 2 else None
            if mode == REFUSED:
                raise GancoreError(f"plugin {info.name} cannot train on {self.size} processes: {declared[1]}; run it in one process")
            if mode not in (EXACT, LOCAL):
                raise GancoreError(
                    f"plugin {info.label} does not declare what it does on {self.size} processes (a class attribute "
                    f"data_parallel = ('exact' or 'local' or 'refused', 'why')); run it in one process or ask its author"
                )


def timeout_seconds() -> float:
    value = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise GancoreError(f"{TIMEOUT_VARIABLE}={value!r} must be a positive number of seconds")
    return seconds


def launched_rank() -> int:
    """This process's rank as torchrun's environment gives it (0 without torchrun), before joining."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else 0


def join(device: torch.device) -> World:
    """The world this process trains in: from torchrun's environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), joining its process group on first use;
    one process alone without it."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    world = World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))
    dist = torch.distributed
    if not dist.is_available():
        raise GancoreError("WORLD_SIZE > 1 but this torch build has no torch.distributed; train in one process")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(world.local_rank)
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()))
        except (RuntimeError, ValueError) as error:
            raise GancoreError(f"rank {world.rank} of {size} could not join the other processes ({one_line(error, 160)}); launch with torchrun") from None
    elif dist.get_world_size() != size or dist.get_rank() != world.rank:
        raise GancoreError(f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, the environment says {world.rank} of {size}")
    return world


def leave() -> None:
    """Destroy the process group, if this process joined one (at the end of ``gancore train``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
