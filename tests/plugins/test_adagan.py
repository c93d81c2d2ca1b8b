"""AdaGAN: the data-weight formula, the β schedule and mixture sampling, reweighting towards a
missed mode, and state: resuming from any checkpoint equals the uninterrupted run."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from checkpoint_helpers import through_disk
from gancore import GancoreError, hookimpl
from gancore.cli.main import main
from gancore.plugins.adagan import adagan_data_weights
from gancore.rundir import RunDirectory


def brute_force_lambda(h: np.ndarray, beta: float) -> float:
    """λ with Σ max(λ − (1−β)h_i, 0) / (βN) = 1, by bisection on the increasing left-hand side."""
    a, n = (1 - beta) * h, len(h)
    low, high = a.min(), a.max() + beta * n
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if np.maximum(mid - a, 0).sum() / (beta * n) < 1 else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize("beta", [0.5, 1 / 3, 0.1, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_data_weights_match_the_formula_and_a_brute_force_lambda(beta, seed):
    rng = np.random.default_rng(seed)
    h = np.exp(rng.normal(0, 1.5, size=997))  # density ratios spanning orders of magnitude
    weights, lam = adagan_data_weights(torch.from_numpy(h), beta)
    w = weights.numpy()
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
    assert lam == pytest.approx(brute_force_lambda(h, beta), rel=1e-10)
    np.testing.assert_allclose(w, np.maximum(lam - (1 - beta) * h, 0) / (beta * len(h)), rtol=0, atol=1e-15)
    assert 0 < (w == 0).sum() < len(h)  # the best-covered points are dropped, the rest reweighted
    assert np.all(np.diff(w[np.argsort(h)]) <= 1e-18)  # larger h (better covered) never gets more weight


def test_data_weights_edge_cases():
    weights, lam = adagan_data_weights(torch.zeros(10), 0.25)  # nothing covered: uniform
    assert torch.allclose(weights, torch.full((10,), 0.1, dtype=torch.float64)) and lam == pytest.approx(0.25)
    # the model puts all its mass on half of the points: dP_model/dP_data = 2 there, 0 elsewhere;
    # with β = 1/2 the covered half gets weight zero and the other half all of it (Lemma 5's λ* = 1)
    h = torch.tensor([0.0] * 5 + [2.0] * 5)
    weights, lam = adagan_data_weights(h, 0.5)
    assert lam == pytest.approx(1.0) and torch.equal(weights, torch.tensor([0.2] * 5 + [0.0] * 5, dtype=torch.float64))
    with pytest.raises(GancoreError):
        adagan_data_weights(h, 1.0)


class Constant(nn.Module):
    """A 'generator' that always outputs ``value`` (to tell mixture components apart)."""

    def __init__(self, value: float, dim: int):
        super().__init__()
        self.value, self.dim = value, dim

    def forward(self, z):
        return torch.full((len(z), self.dim), self.value)


def component_shares(trainer, n: int, k: int) -> np.ndarray:
    samples = trainer.sample(n, torch.Generator().manual_seed(5))
    return np.bincount(samples[:, 0].round().long().numpy(), minlength=k) / n


def assert_binomial(shares: np.ndarray, expected: list[float], n: int) -> None:
    for share, p in zip(shares, expected):
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n), (shares, expected)


TINY_ADAGAN = {"classifier_steps": 5}


@pytest.mark.parametrize("beta, expected", [(0.0, [1 / 3, 1 / 3, 1 / 3]), (0.5, [0.25, 0.25, 0.5])])
def test_mixture_weights_follow_the_beta_schedule_and_sampling_follows_them(make_trainer, beta, expected):
    trainer = make_trainer(["adagan"], train={"steps": 7, "eval_every": 0}, options={"adagan": {**TINY_ADAGAN, "rounds": 3, "beta": beta}})
    trainer.fit()
    plugin = trainer.run.manager.get_plugin("adagan")
    assert plugin.mixture_weights == pytest.approx(expected, abs=1e-12) and len(plugin.generators) == 3
    rounds = [(m["step"], m["adagan_round"], m["adagan_mixture_weights"]) for m in trainer.history]
    second = 0.5 if beta == 0 else beta
    assert rounds == [(2, 1, [1.0]), (4, 2, pytest.approx([1 - second, second], abs=1e-6)), (7, 3, pytest.approx(expected, abs=1e-6))]
    assert trainer.step == 7  # steps // rounds = 2 per round, the last round also gets the remainder
    plugin.generators = [Constant(index, 2) for index in range(3)]
    n = 40000
    assert_binomial(component_shares(trainer, n, 3), expected, n)


def test_a_round_in_progress_counts_its_generator_with_its_beta(make_trainer):
    trainer = make_trainer(["adagan"], options={"adagan": {"rounds": 4}})
    plugin = trainer.run.manager.get_plugin("adagan")
    plugin.generators, plugin.mixture_weights, plugin.round = [Constant(0, 2), Constant(1, 2)], [0.5, 0.5], 2
    trainer.models.G = Constant(2, 2)  # the live generator of round 3: β = 1/3
    n = 30000
    assert_binomial(component_shares(trainer, n, 3), [1 / 3, 1 / 3, 1 / 3], n)
    assert trainer.evaluate()["adagan_mixture_weights"] == pytest.approx([1 / 3] * 3, abs=1e-6)


class RightMode(nn.Module):
    """A mixture that covers only bimodal1d's right mode: N(5, 1)."""

    def forward(self, z):
        return 5.0 + z[:, :1]


def test_a_mode_the_mixture_misses_gets_the_data_weight(make_trainer):
    trainer = make_trainer(["adagan"], train={"dataset": "bimodal1d", "d_width": 32}, options={"adagan": {"classifier_steps": 300}})
    plugin = trainer.run.manager.get_plugin("adagan")
    plugin.generators, plugin.mixture_weights, plugin.round = [RightMode()], [1.0], 0  # round 1 done, mixed in
    old_g = [p.detach().clone() for p in trainer.models.G.parameters()]
    plugin.start_round(trainer, 1)  # classifier, weights with β = 1/2, fresh G and D
    points, w = trainer.dataset.points[:, 0], trainer.data_weights.double()
    left = points < 0
    assert w.sum().item() == pytest.approx(1.0, abs=1e-5) and (w >= 0).all()
    # ideal h is 0 on the left mode and 2 on the right one, giving all the weight to the left mode
    assert w[left].sum().item() > 0.9
    assert w[left].mean() > 10 * w[~left].mean()
    assert trainer.real_batch(2000).lt(0).double().mean().item() > 0.85  # the core's sampler uses the weights
    assert plugin.round == 1 and not all(torch.equal(a, b) for a, b in zip(old_g, trainer.models.G.parameters()))


class RecordingRunDirectory(RunDirectory):
    """A run directory that also keeps every checkpointed state in memory."""

    def __init__(self, path, lock=None):
        super().__init__(path, lock)
        self.states = []

    def save_checkpoint(self, step, state, keep):
        self.states.append(copy.deepcopy(state))
        return super().save_checkpoint(step, state, keep)


def test_resuming_from_every_checkpoint_equals_the_uninterrupted_run(make_trainer, tmp_path):
    settings = dict(train={"steps": 9, "checkpoint_every": 1, "keep_checkpoints": 100, "eval_every": 4, "eval_samples": 200},
                    options={"adagan": {**TINY_ADAGAN, "rounds": 3}})
    straight = make_trainer(["adagan"], **settings)
    straight.output = RecordingRunDirectory.create(tmp_path, "straight", straight.run)
    straight.fit()
    plugin = straight.run.manager.get_plugin("adagan")
    states = straight.output.states
    # one per step; a round's last step is checkpointed before its generator is mixed in
    assert [s["step"] for s in states] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [s["plugins"]["adagan"]["round"] for s in states] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [len(s["plugins"]["adagan"]["generators"]) for s in states] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for state in states:
        resumed = make_trainer(["adagan"], **settings)
        resumed.load_state_dict(through_disk(state))
        resumed.fit()
        again = resumed.run.manager.get_plugin("adagan")
        where = f"resumed at step {state['step']}, round {state['plugins']['adagan']['round']}"
        assert resumed.step == 9 and again.round == 2 and again.mixture_weights == plugin.mixture_weights, where
        for a, b in zip([straight.models.G, *plugin.generators], [resumed.models.G, *again.generators]):
            assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())), where
        assert torch.equal(straight.data_weights, resumed.data_weights), where
        assert json.dumps(resumed.history) == json.dumps(straight.history), where
    assert [(m["step"], m["adagan_round"]) for m in straight.history] == [(3, 1), (4, 2), (6, 2), (8, 3), (9, 3)]


class PoisonOnce:
    """Makes G's loss NaN once, at step 4 (in round 2 of 3, before any regular checkpoint)."""

    def __init__(self):
        self.done = False

    @hookimpl
    def gancore_generator_loss(self, batch, terms):
        if batch.step == 4 and not self.done:
            self.done = True
            terms["poison"] = torch.tensor(float("nan"))


def test_a_rollback_in_a_round_never_crosses_back_into_the_previous_one(make_trainer):
    trainer = make_trainer(["adagan", "poison"], extra={"poison": PoisonOnce},
                           train={"steps": 9, "on_nonfinite": "rollback", "checkpoint_every": 0}, options={"adagan": {**TINY_ADAGAN, "rounds": 3}})
    trainer.fit()
    plugin = trainer.run.manager.get_plugin("adagan")
    assert trainer.rollbacks == 1 and trainer.step == 9  # rolled back to the start of round 2 (step 3), not to step 0
    assert plugin.mixture_weights == pytest.approx([1 / 3] * 3, abs=1e-12) and len(plugin.generators) == 3
    assert [(m["step"], m["adagan_round"]) for m in trainer.history] == [(3, 1), (6, 2), (9, 3)]


def test_state_round_trip(make_trainer):
    settings = dict(train={"steps": 6}, options={"adagan": {**TINY_ADAGAN, "rounds": 2}})
    trainer = make_trainer(["adagan"], **settings)
    trainer.fit()
    state = through_disk(trainer.state_dict())
    own = state["plugins"]["adagan"]
    assert own["round"] == 1 and own["mixture_weights"] == [0.5, 0.5] and len(own["generators"]) == 2
    assert torch.equal(own["data_weights"], trainer.data_weights) and isinstance(own["lambda"], float)
    copy_ = make_trainer(["adagan"], **settings)
    copy_.load_state_dict(state)
    plugin = copy_.run.manager.get_plugin("adagan")
    assert plugin.round == 1 and plugin.mixture_weights == [0.5, 0.5] and torch.equal(copy_.data_weights, trainer.data_weights)
    assert torch.equal(trainer.sample(300, torch.Generator().manual_seed(1)), copy_.sample(300, torch.Generator().manual_seed(1)))


def test_invalid_settings_are_one_line_errors(make_trainer):
    with pytest.raises(GancoreError, match=r"^adagan\.beta=1: a mixture weight must be below 1"):
        make_trainer(["adagan"], options={"adagan": {"beta": 1}})
    with pytest.raises(GancoreError, match=r"^adagan\.rounds=30 needs train\.steps >= 30"):
        make_trainer(["adagan"], options={"adagan": {"rounds": 30}})


def test_eval_and_sample_commands_score_the_final_mixture(capsys, tmp_path):
    argv = ["train", "--steps", "8", "--batch-size", "32", "-q", "--device", "cpu", "--plugin", "adagan", "--out", str(tmp_path),
            "--set", "train.z_dim=4", "--set", "train.g_width=16", "--set", "train.d_width=16", "--set", "train.n_train=300",
            "--set", "train.eval_samples=300", "--set", "adagan.rounds=2", "--set", "adagan.classifier_steps=5"]
    for args in (argv, ["eval", str(tmp_path / "ring8-adagan-s0")]):
        capsys.readouterr()
        try:
            main(args)
        except SystemExit as exit_:
            assert exit_.code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "ring8-adagan-s0" / "summary.json").read_text())
    assert summary["adagan_round"] == 2 and summary["adagan_mixture_weights"] == [0.5, 0.5]
    assert f"modes captured {summary['modes_captured']}/8, high quality {summary['hq_percent']:.1f}%" in out


class RecordLearningRates:
    """Records G's learning rate at the start of every step (after the trainer has set it)."""

    def __init__(self):
        self.lrs: list[float] = []

    @hookimpl
    def gancore_step_start(self, trainer):
        self.lrs.append(trainer.optimizers["G"].param_groups[0]["lr"])


def test_with_linear_decay_every_round_decays_its_learning_rate_from_the_full_value(make_trainer):
    trainer = make_trainer(["adagan", "lrs"], extra={"lrs": RecordLearningRates},
                           train={"steps": 9, "lr_g": 1e-3, "lr_decay": "linear"}, options={"adagan": {**TINY_ADAGAN, "rounds": 2}})
    trainer.fit()
    lrs = trainer.run.manager.get_plugin("lrs").lrs
    # round 1: steps 0..3 of 4; round 2 (the remainder): steps 4..8 of 5; each from 1e-3 towards 0
    assert lrs == pytest.approx([1e-3 * (1 - k / 4) for k in range(4)] + [1e-3 * (1 - k / 5) for k in range(5)])
