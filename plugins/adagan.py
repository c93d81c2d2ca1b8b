"""AdaGAN: boosting GANs into a mixture, each new one trained on the data the mixture misses.

Tolstikhin et al. (2017), tolstikhin/adagan (``AdaGan.make_step``, the ``theory_star`` weights).
With P_d the data and N training points x_1..x_N::

    round 1:  train an ordinary GAN G_1;  mixture P_1 = G_1 (weight 1)
    round t = 2..T, with β_t = 1/t (i.e. β = 1/(k+1) for k generators already mixed: a uniform
    mixture; or a fixed β with option ``beta``):
        1. train a classifier D(x) ∈ (0, 1) of data (label 1) vs samples of P_{t−1} (label 0)
        2. h_i = (1 − D(x_i)) / D(x_i)  ≈ dP_{t−1}/dP_d (x_i)            for every training point
        3. w_i = max(λ* − (1 − β) h_i, 0) / (β N),  λ* such that Σ_i w_i = 1      (exact, by sorting)
        4. train a fresh GAN G_t on the data sampled with probabilities w (``trainer.data_weights``)
        5. P_t = (1 − β) P_{t−1} + β G_t:  mixture weights ← (1 − β)·old, append β

Points the mixture already covers (large h) get weight zero; the missed modes get all of it.
λ* is exact: with a_i = (1 − β) h_i sorted increasingly, λ_k = (βN + Σ_{j≤k} a_j) / k, and λ* = λ_k
for the largest k with λ_k > a_k (the first k points are the ones with w > 0).

Schedule: ``train.steps`` is split into ``rounds`` rounds of ``train.steps // rounds`` steps each;
the last round also gets the remainder, so a run still ends at ``train.steps``. Every GAN starts
fresh: ``trainer.reinitialize("G")`` (new weights and optimizer for G) and, with ``fresh_discriminator``
(default), ``trainer.reinitialize("D")``. With ``train.lr_decay = "linear"`` every round decays its
learning rates over its own steps (``trainer.restart_lr_decay``): each GAN trains as a whole run would,
rather than the last rounds' fresh GANs starting near a learning rate of 0. The start of every round after the first is marked as
the last good state (``trainer.mark_good()``), so a rollback never crosses back into the previous
round. Any other remedy can train the inner GANs (``--plugin adagan --plugin unrolled``).

Evaluations, ``gancore eval`` and ``gancore sample`` score the mixture through
``gancore_sample``: a component is chosen per sample with the given ``torch.Generator`` in
proportion to the weights. While a round is in progress its generator is counted in with its
weight β (the mixture as if the round stopped now). Each round ends with an evaluation;
every evaluation carries ``adagan_round`` (1-based), ``adagan_components`` and
``adagan_mixture_weights``, and, from round 2, ``adagan_lambda`` and ``adagan_weight_ess`` (effective
sample size of the data weights, 1 / (N Σ w²), a share of N).

Known limit: when the classifier tells every data point from the mixture (hd1200, whose 500
constant coordinates no generator reproduces exactly, or stacked digits), h_i ≈ 0 for all i and
the weights stay uniform (``adagan_weight_ess`` 1.0). That is the formula's answer to a mixture
that misses everything, not a bug: each later round is then an ordinary GAN on all the data, and
if those collapse onto the same mode (hd1200, 5 seeds: 1/10 modes) so does the mixture. A weaker
classifier (``classifier_steps=20``) did not change that on hd1200 seed 0.

State (checkpoints): the mixed generators' state dicts, the mixture weights, the round whose
generator is live, λ* and the data weights. A resumed run (or a rollback) runs the rest of its
round: the round's end step comes from the schedule, the progress from ``trainer.step``. The
round index itself is stored because the step alone is ambiguous at a boundary: at the last
step of round t the checkpoint may hold G_t not yet mixed in (from the step loop) or the fresh
G_{t+1} (from the round start); the number of mixed generators tells which, and a resumed run
finishes round t (mix in, evaluate) or continues round t+1 accordingly.

Needs of the networks: every layer of G and D that holds parameters has ``reset_parameters()``
(checked before training), and G can be deep-copied.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.functional import softplus
from torch.nn.utils.parametrize import ParametrizationList

from gancore import GancoreError, hookimpl
from gancore.models import Discriminator


def adagan_data_weights(h: torch.Tensor, beta: float) -> tuple[torch.Tensor, float]:
    """AdaGAN's data weights w_i = max(λ* − (1 − β) h_i, 0) / (β N) with Σ w_i = 1 (float64).

    :param h: (N,) estimates of dP_model / dP_data at the training points, all ≥ 0 and finite.
    :param beta: the new component's mixture weight, 0 < β < 1.
    :return: the weights and λ*.
    """
    if not 0 < beta < 1:
        raise GancoreError(f"AdaGAN's β must be strictly between 0 and 1, got {beta}")
    a = (1.0 - beta) * h.detach().double().flatten()
    n = a.numel()
    a_sorted = torch.sort(a).values
    k = torch.arange(1, n + 1, dtype=torch.float64, device=a.device)
    lambdas = (beta * n + torch.cumsum(a_sorted, 0)) / k
    # λ_1 = βN + a_1 > a_1, so the set is never empty; its largest k gives a_k < λ* ≤ a_{k+1}
    last = int(torch.nonzero(lambdas > a_sorted).max())
    lam = float(lambdas[last])
    weights = (lam - a).clamp(min=0.0) / (beta * n)
    return weights, lam


def choose_components(weights: list[float], n: int, generator: torch.Generator) -> torch.Tensor:
    """Index of the mixture component of each of ``n`` samples, drawn in proportion to ``weights``."""
    probabilities = torch.tensor(weights, dtype=torch.float64, device=generator.device)
    return torch.multinomial(probabilities, n, replacement=True, generator=generator)


class AdaGan:
    """AdaGAN: boosting — T GANs, each on data reweighted towards what the mixture misses (Tolstikhin et al. 2017)."""

    data_parallel = ("local", "every rank runs the same rounds, data weights and mixture (computed from the shared training stream and identical parameters); each GAN trains on the global batch split across ranks")

    def __init__(self) -> None:
        self.rounds = 5
        self.beta = 0.0
        self.generators: list[nn.Module] = []  # mixed-in components (frozen copies)
        self.mixture_weights: list[float] = []
        self.round = 0  # 0-based round whose generator is trainer.models.G
        self.lam: float | None = None

    # --- options ---------------------------------------------------------------------------------

    @hookimpl
    def gancore_add_options(self, options):
        options.add("rounds", int, 5, "boosting rounds T; each trains a GAN for train.steps // rounds steps (the last also the remainder)", min=1)
        options.add("beta", float, 0.0, "fixed mixture weight β of each new generator, 0 < β < 1 (0: β = 1/(t+1), a uniform mixture)", min=0)
        options.add("classifier_steps", int, 400, "Adam steps of the data-vs-mixture classifier before each round after the first", min=1)
        options.add("classifier_width", int, None, "the classifier's hidden width (default: train.d_width)", min=1)
        options.add("classifier_depth", int, 2, "the classifier's hidden layers", min=1)
        options.add("classifier_lr", float, 1e-3, "the classifier's Adam learning rate", min=0)
        options.add("fresh_discriminator", bool, True, "re-initialize D (and its optimizer state) at the start of every round, as in the paper")

    @hookimpl
    def gancore_configure(self, config, options):
        if options.beta >= 1:
            raise GancoreError(f"adagan.beta={options.beta:g}: a mixture weight must be below 1 (0 for the 1/(t+1) schedule)")
        if config.train.steps < options.rounds:
            raise GancoreError(f"adagan.rounds={options.rounds} needs train.steps >= {options.rounds} (steps per round = steps // rounds)")
        self.options = options
        self.rounds = options.rounds
        self.beta = options.beta

    @hookimpl
    def gancore_check_models(self, trainer):
        # every round starts from fresh weights: trainer.reinitialize resets layers that can reset
        for name, module in trainer.models.modules.items():
            for layer_name, layer in module.named_modules():
                has_own = any(True for _ in layer.parameters(recurse=False))
                if has_own and not hasattr(layer, "reset_parameters") and not isinstance(layer, ParametrizationList):
                    raise GancoreError(
                        f"adagan starts every round from fresh weights, but {name}'s layer {layer_name or '(the network itself)'} "
                        f"({type(layer).__name__}) holds parameters and has no reset_parameters() method; give it one"
                    )

    # --- the schedule ----------------------------------------------------------------------------

    def round_beta(self, k: int) -> float:
        """Mixture weight of the generator of 0-based round ``k``: 1 for the first, then β or 1/(k+1)."""
        if k == 0:
            return 1.0
        return self.beta or 1.0 / (k + 1)

    def round_start(self, trainer, k: int) -> int:
        """The step at which 0-based round ``k`` starts."""
        return k * (trainer.train.steps // self.rounds)

    def round_end(self, trainer, k: int) -> int:
        """The step at which 0-based round ``k`` ends (the last round ends at ``train.steps``)."""
        return trainer.train.steps if k == self.rounds - 1 else self.round_start(trainer, k + 1)

    @property
    def pending(self) -> bool:
        """Whether the live generator (this round's) is trained or in training but not yet mixed in."""
        return len(self.generators) == self.round

    # --- the outer loop --------------------------------------------------------------------------

    @hookimpl
    def gancore_fit(self, trainer):
        if len(self.generators) not in (self.round, self.round + 1):
            raise GancoreError(f"adagan state is inconsistent: {len(self.generators)} generators mixed in round {self.round + 1}")
        first = self.round
        if not self.pending:  # that round is finished and mixed: go on with the next one
            first += 1
        for k in range(first, self.rounds):
            if k != self.round:
                self.start_round(trainer, k)
            trainer.restart_lr_decay(self.round_start(trainer, k), self.round_end(trainer, k))
            trainer.run_steps(max(0, self.round_end(trainer, k) - trainer.step))
            self.finish_round(trainer)
        return True

    def start_round(self, trainer, k: int) -> None:
        """Reweight the data against the current mixture, then start a fresh GAN for round ``k``."""
        beta = self.round_beta(k)
        h = self.density_ratios(trainer)
        weights, self.lam = adagan_data_weights(h, beta)
        trainer.data_weights = weights.to(device=trainer.dataset.points.device, dtype=torch.float32)
        trainer.reinitialize("G")
        if self.options.fresh_discriminator:
            trainer.reinitialize("D")
        self.round = k
        # the new round's start is the last good state: a rollback never crosses back
        trainer.mark_good()

    def finish_round(self, trainer) -> None:
        """Mix the live generator in with weight β and score the mixture (once per step)."""
        if self.pending:
            beta = self.round_beta(self.round)
            component = copy.deepcopy(trainer.models.G).requires_grad_(False)
            self.mixture_weights = [(1.0 - beta) * weight for weight in self.mixture_weights] + [beta]
            self.generators.append(component)
        if not trainer.history or trainer.history[-1]["step"] != trainer.step:
            trainer.evaluate()

    # --- the classifier and the weights ----------------------------------------------------------

    def density_ratios(self, trainer) -> torch.Tensor:
        """h_i = (1 − D(x_i)) / D(x_i) = exp(−logit_i) of a classifier of data vs the current mixture."""
        train, options = trainer.train, self.options
        dim = math.prod(trainer.dataset.points.shape[1:])  # images are read as flat vectors
        classifier = Discriminator.mlp(dim, options.classifier_width or train.d_width, options.classifier_depth, train.activation).to(trainer.device)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=options.classifier_lr, betas=(0.5, 0.999))
        for _ in range(options.classifier_steps):
            real = trainer.dataset.sample(train.batch_size, trainer.generator)  # uniform: P_d itself
            fake = trainer.sample(train.batch_size, trainer.generator)
            loss = softplus(-classifier(real.flatten(1)).logits).mean() + softplus(classifier(fake.flatten(1)).logits).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = torch.cat([classifier(part.flatten(1)).logits for part in trainer.dataset.points.split(8192)])
        return torch.exp(-logits.double().clamp(-50.0, 50.0))

    # --- the mixture -----------------------------------------------------------------------------

    def components(self, trainer) -> tuple[list[nn.Module], list[float]]:
        """The mixture's generators and weights, counting an unmixed live generator in with its β."""
        if not self.pending:
            return list(self.generators), list(self.mixture_weights)
        beta = self.round_beta(self.round)
        return [*self.generators, trainer.models.G], [(1.0 - beta) * w for w in self.mixture_weights] + [beta]

    @hookimpl
    def gancore_sample(self, trainer, n, generator):
        generators, weights = self.components(trainer)
        device = trainer.device
        if len(generators) == 1:  # the same draws as the core's G(z)
            return generators[0](trainer.noise(n, generator))
        which = choose_components(weights, n, generator).to(device)
        samples = torch.empty(n, *trainer.dataset.points.shape[1:], device=device)
        for index, component in enumerate(generators):
            chosen = which == index
            count = int(chosen.sum())
            if count:
                samples[chosen] = component(trainer.noise(count, generator)).to(samples.dtype)
        return samples

    @hookimpl
    def gancore_evaluate(self, trainer, metrics):
        _, weights = self.components(trainer)
        metrics["adagan_round"] = self.round + 1
        metrics["adagan_components"] = len(weights)
        metrics["adagan_mixture_weights"] = [round(weight, 6) for weight in weights]
        if self.lam is not None and trainer.data_weights is not None:
            w = trainer.data_weights.double()
            metrics["adagan_lambda"] = round(self.lam, 6)
            metrics["adagan_weight_ess"] = round(float(1.0 / (len(w) * (w * w).sum())), 6)

    # --- state -----------------------------------------------------------------------------------

    @hookimpl
    def gancore_state_dict(self, trainer):
        state = {
            "round": self.round,
            "generators": [component.state_dict() for component in self.generators],
            "mixture_weights": list(self.mixture_weights),
        }
        if self.lam is not None:
            state["lambda"] = self.lam
        if trainer.data_weights is not None:
            state["data_weights"] = trainer.data_weights
        return state

    @hookimpl
    def gancore_load_state_dict(self, trainer, state):
        if len(state["generators"]) != len(state["mixture_weights"]) or state["round"] >= self.rounds:
            raise GancoreError(f"adagan state does not match adagan.rounds={self.rounds}")
        self.round = int(state["round"])
        self.mixture_weights = [float(weight) for weight in state["mixture_weights"]]
        self.generators = []
        for weights in state["generators"]:
            component = copy.deepcopy(trainer.models.G).requires_grad_(False)  # G's architecture; no RNG drawn
            component.load_state_dict(weights)
            self.generators.append(component)
        self.lam = state.get("lambda")
        data_weights = state.get("data_weights")
        trainer.data_weights = None if data_weights is None else data_weights.to(trainer.dataset.points.device)


