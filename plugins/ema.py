"""EMA: samples come from an exponential moving average of G's weights.

Yazıcı et al. (2019), "The Unusual Effectiveness of Averaging in GAN Training". GAN training
cycles around its equilibrium instead of settling: a generator drops a mode, D follows, G
comes back. Averaging G's weights over time shrinks the cycle's amplitude without changing
the game: G and D train exactly as without the plugin; only what is sampled changes.

    θ̄ ← θ after step ``start`` (G's weights and buffers)
    after every later step t:  θ̄ ← β θ̄ + (1 − β) θ_t        (β = ``decay``)
    evaluations, ``gancore eval``, ``gancore sample`` and plots draw G_θ̄(z); before ``start``
    they draw the live G(z). Evaluations also score the live G on the same noise, as
    ``live_modes_captured``, ``live_hq_percent``, ... (every number the dataset's score has).

The average's horizon is about 1 / (1 − β) steps (1000 for the default 0.999). Buffers (batch
norm's running statistics) are copied from the live G, not averaged. The update runs last in
``gancore_step_end`` so that it sees the live G even when another plugin swapped an old
snapshot in for the step (replay). Samples use the same noise draws as the core's G(z).
The average is checkpointed: a resumed run continues identically.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from gancore import GancoreError, hookimpl


class Ema:
    """Sample from an exponential moving average of G's weights (Yazıcı et al. 2019)."""

    data_parallel = ("exact", "the average of parameters that are identical on every rank is identical on every rank")

    def __init__(self) -> None:
        self.decay, self.start = 0.999, 0
        self.average: nn.Module | None = None  # G with the averaged weights, from step ``start`` on

    @hookimpl
    def gancore_add_options(self, options):
        options.add("decay", float, 0.999, "β: the average's weight on its past at each step; the horizon is about 1/(1-β) steps", min=0)
        options.add("start", int, 0, "the step after which averaging starts; until then samples come from the live G", min=0)

    @hookimpl
    def gancore_configure(self, options):
        if options.decay >= 1:
            raise GancoreError(f"ema.decay={options.decay:g} must be below 1 (1 would never move from the starting weights)")
        self.decay, self.start = options.decay, options.start

    @hookimpl(trylast=True)
    def gancore_step_end(self, trainer, step):
        if step < self.start:
            return
        live = trainer.models.G
        if self.average is None:
            self.average = self._copy_of(live)
            return
        with torch.no_grad():
            for mean, value in zip(self.average.parameters(), live.parameters()):
                mean.lerp_(value, 1.0 - self.decay)
            for mean, value in zip(self.average.buffers(), live.buffers()):
                mean.copy_(value)

    @staticmethod
    def _copy_of(generator: nn.Module) -> nn.Module:
        return copy.deepcopy(generator).requires_grad_(False)

    @hookimpl
    def gancore_sample(self, trainer, n, generator):
        if self.average is None:
            return None
        self.average.train(trainer.models.G.training)  # batch norm behaves as in the live G
        return self.average(trainer.noise(n, generator))

    @hookimpl
    def gancore_evaluate(self, trainer, metrics):
        if self.average is None:
            return
        # the live G scored on the evaluation's own noise: what averaging changed
        with torch.no_grad():
            scores = trainer.dataset.score(trainer.models.G(trainer.noise(trainer.eval_samples, trainer.evaluation_generator())))
        metrics.update({f"live_{name}": value for name, value in scores.items() if value is None or isinstance(value, (int, float))})

    @hookimpl
    def gancore_state_dict(self):
        # an empty state before ``start`` too: a rollback to it must drop a later average
        return {"average": self.average.state_dict() if self.average is not None else {}}

    @hookimpl
    def gancore_load_state_dict(self, trainer, state):
        self.average = None
        if state["average"]:
            self.average = self._copy_of(trainer.models.G)
            self.average.load_state_dict(state["average"])
