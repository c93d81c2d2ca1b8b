"""Experience replay: D also sees the generator's past, so G cannot escape by hopping modes.

Pfau & Vinyals (2016), "Connecting Generative Adversarial Networks and Actor-Critic Methods",
and Shrivastava et al. (2017), "Learning from Simulated and Unsupervised Images through
Adversarial Training" (the history buffer; TF-GAN's ``tensor_pool_fn``). A G that hops to
another mode is punished there by a D that has forgotten the old mode; replay makes D remember.

Buffer (every D update, ``fraction > 0``):

    x̃ = G(z), a batch of N fresh fakes
    k = round(fraction · N)
    replace k random positions of (z, x̃) by k pairs drawn uniformly (with replacement) from the buffer
    push the N fresh pairs: append while fewer than ``capacity`` are held, then overwrite random slots

Snapshots (``period > 0``): every ``period`` steps, from step 2·period on, one of the ``snapshots``
past versions of the player ``snapshot_of`` (G, or D; with every network trained by that
player), drawn uniformly, is swapped in for ``duration`` steps, so the other player trains
against an old opponent; then the live weights come back. A snapshot of the live player is
taken at every multiple of ``period`` (after drawing), the oldest dropped beyond ``snapshots``.

Details: the snapshot is frozen while swapped in (its own updates are undone after each of its
optimizer steps) and the live player is paused: its weights and optimizer state are restored
exactly at the end of every swapped step, so between steps (evaluations, checkpoints, the end
of the run) the live networks are always in place. All randomness comes from
``trainer.generator``. The buffer runs early in the ``gancore_discriminator_batch`` chain
(``tryfirst``; among other ``tryfirst`` plugins, in ``--plugin`` order): it holds G's samples, not
what later plugins (noise, pairs) make of them, and it replaces ``batch.z`` together with
``batch.fake``, so that z is still the noise that made each fake.
Buffer, snapshots and the current swap are checkpointed: a resumed run continues identically.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from gancore import GancoreError, hookimpl


def _clone(state: dict) -> dict:
    return {key: value.detach().clone() for key, value in state.items()}


class Replay:
    """Experience replay: a buffer of past fakes mixed into D's batches, and old G or D snapshots swapped in (Pfau & Vinyals 2016)."""

    data_parallel = ("refused", "its buffer holds each rank's own fake samples and a checkpoint keeps rank 0's only, so a resumed run would not continue the same")

    def __init__(self) -> None:
        self.fraction, self.capacity = 0.5, 5120
        self.period, self.duration, self.keep, self.player = 0, 1, 5, "G"
        self.x: torch.Tensor | None = None  # (capacity, *shape) fakes
        self.z: torch.Tensor | None = None  # (capacity, z_dim) the noise that made them
        self.size = 0
        self.snapshots: list[dict] = []  # {network name: state dict}, oldest first
        self.active: dict | None = None  # the snapshot swapped in, until step ``until`` (excluded)
        self.until = 0
        self._live: dict | None = None  # the live player while a snapshot is swapped in (within one step)

    # --- options ---------------------------------------------------------------------------------

    @hookimpl
    def gancore_add_options(self, options):
        options.add("fraction", float, 0.5, "share of each D-phase fake batch drawn from the buffer (Shrivastava et al.: 0.5; 0 disables the buffer)", min=0)
        options.add("capacity", int, 5120, "past fake samples kept in the buffer (10 batches of 512)", min=1)
        options.add("period", int, 0, "every period steps swap an old snapshot in (0 disables snapshots)", min=0)
        options.add("duration", int, 1, "steps a snapshot stays swapped in (at most period)", min=1)
        options.add("snapshots", int, 5, "past snapshots kept, one taken every period steps; the swapped one is drawn uniformly", min=1)
        options.add("snapshot_of", str, "G", "the player whose old snapshot is swapped in", choices=("G", "D"))

    @hookimpl
    def gancore_configure(self, options):
        if options.fraction > 1:
            raise GancoreError(f"replay.fraction={options.fraction:g} must be between 0 and 1")
        if options.period and options.duration > options.period:
            raise GancoreError(f"replay.duration={options.duration} must be at most replay.period={options.period}")
        self.fraction, self.capacity = options.fraction, options.capacity
        self.period, self.duration, self.keep, self.player = options.period, options.duration, options.snapshots, options.snapshot_of

    # --- the buffer --------------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def gancore_discriminator_batch(self, trainer, batch):
        if batch.phase != "D" or self.fraction == 0:
            return
        fresh_x, fresh_z = batch.fake, batch.z
        k = round(self.fraction * len(fresh_x))
        if self.size and k:
            g = trainer.generator
            where = torch.randperm(len(fresh_x), generator=g, device=g.device)[:k].to(fresh_x.device)
            which = torch.randint(self.size, (k,), generator=g, device=g.device).to(fresh_x.device)
            batch.fake, batch.z = fresh_x.clone(), fresh_z.clone()
            batch.fake[where], batch.z[where] = self.x[which], self.z[which]
        self._push(fresh_x, fresh_z, trainer.generator)

    def _push(self, x: torch.Tensor, z: torch.Tensor, g: torch.Generator) -> None:
        if self.x is None:
            self.x = x.new_empty((self.capacity, *x.shape[1:]))
            self.z = z.new_empty((self.capacity, *z.shape[1:]))
        x, z = x[-self.capacity:], z[-self.capacity:]
        n = min(len(x), self.capacity - self.size)  # append while there is room
        self.x[self.size : self.size + n], self.z[self.size : self.size + n] = x[:n], z[:n]
        self.size += n
        if n < len(x):  # then overwrite distinct random slots
            slots = torch.randperm(self.capacity, generator=g, device=g.device)[: len(x) - n].to(x.device)
            self.x[slots], self.z[slots] = x[n:], z[n:]

    # --- snapshots ---------------------------------------------------------------------------------

    def _networks(self, trainer) -> dict[str, nn.Module]:
        return {name: module for name, module in trainer.models.modules.items() if trainer.models.players[name] == self.player}

    def _load(self, trainer, snapshot: dict) -> None:
        for name, module in self._networks(trainer).items():
            module.load_state_dict(snapshot[name])

    @hookimpl
    def gancore_step_start(self, trainer, step):
        if not self.period:
            return
        if step and step % self.period == 0:
            if self.snapshots:
                pick = torch.randint(len(self.snapshots), (1,), generator=trainer.generator, device=trainer.generator.device)
                self.active, self.until = self.snapshots[int(pick)], step + self.duration
            self.snapshots.append({name: _clone(module.state_dict()) for name, module in self._networks(trainer).items()})
            del self.snapshots[: -self.keep]
        if self.active is not None and step < self.until:
            self._live = {
                "networks": {name: _clone(module.state_dict()) for name, module in self._networks(trainer).items()},
                "optimizer": copy.deepcopy(trainer.optimizers[self.player].state_dict()),
            }
            self._load(trainer, self.active)

    @hookimpl
    def gancore_after_optimizer_step(self, trainer, player):
        if self._live is not None and player == self.player:
            self._load(trainer, self.active)  # the snapshot stays frozen

    @hookimpl
    def gancore_step_end(self, trainer, step, logs):
        if not self.period:
            return
        logs["replay/swapped"] = torch.tensor(float(self._live is not None))
        if self._live is None:
            return
        self._load(trainer, self._live["networks"])
        trainer.optimizers[self.player].load_state_dict(self._live["optimizer"])
        self._live = None
        if step + 1 >= self.until:
            self.active = None

    # --- state ---------------------------------------------------------------------------------

    @hookimpl
    def gancore_state_dict(self):
        return {
            "x": self.x[: self.size].clone() if self.x is not None else torch.empty(0),
            "z": self.z[: self.size].clone() if self.z is not None else torch.empty(0),
            "snapshots": self.snapshots,
            "active": self.active if self.active is not None else {},
            "until": self.until,
        }

    @hookimpl
    def gancore_load_state_dict(self, state):
        x, z = state["x"][: self.capacity], state["z"][: self.capacity]
        self.size = len(x)
        self.x = self.z = None
        if self.size:
            self.x = x.new_empty((self.capacity, *x.shape[1:]))
            self.z = z.new_empty((self.capacity, *z.shape[1:]))
            self.x[: self.size], self.z[: self.size] = x, z
        self.snapshots = [{name: _clone(net) for name, net in snap.items()} for snap in state["snapshots"]]
        self.active = {name: _clone(net) for name, net in state["active"].items()} or None
        self.until = state["until"]
        self._live = None
