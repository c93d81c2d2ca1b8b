import copy
import math

import pytest
import torch

from gancore import GancoreError, hookimpl
from gancore.losses import LOSSES
from gancore.models import Critique


class Recorder:
    """Records the hook calls of a step and what they saw."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def gancore_step_start(self, step):
        self.calls.append(("step_start", step))

    @hookimpl
    def gancore_discriminator_batch(self, batch):
        self.calls.append(("batch", batch.phase, batch.fake.requires_grad, batch.real is None))

    @hookimpl
    def gancore_discriminator_loss(self, terms):
        self.calls.append(("d_loss", sorted(terms)))

    @hookimpl
    def gancore_generator_loss(self, terms, critic, trainer):
        self.calls.append(("g_loss", sorted(terms), critic is trainer.models.D))

    @hookimpl
    def gancore_after_optimizer_step(self, player):
        self.calls.append(("updated", player))

    @hookimpl
    def gancore_step_end(self, step, logs):
        self.calls.append(("step_end", step, sorted(logs)))


def test_one_step_calls_the_hooks_in_the_documented_order(make_trainer):
    trainer = make_trainer(["recorder"], extra={"recorder": Recorder}, train={"n_critic": 2})
    recorder = trainer.run.manager.get_plugin("recorder")
    trainer.train_step()
    d_update = [("batch", "D", False, False), ("d_loss", ["adversarial"]), ("updated", "D")]
    g_update = [("batch", "G", True, True), ("g_loss", ["adversarial"], True), ("updated", "G")]
    logs = ["loss_D/adversarial", "loss_G/adversarial"]
    assert recorder.calls == [("step_start", 0), *d_update, *d_update, *g_update, ("step_end", 0, logs)]
    assert trainer.step == 1


class Schedule:
    @hookimpl
    def gancore_step_schedule(self, step):
        return (0, 1) if step % 2 else (3, 0)


def test_the_step_schedule_hook_sets_the_number_of_updates(make_trainer):
    trainer = make_trainer(["schedule", "recorder"], extra={"schedule": Schedule, "recorder": Recorder})
    recorder = trainer.run.manager.get_plugin("recorder")
    for _ in range(4):
        trainer.train_step()
    updates = [call[1] for call in recorder.calls if call[0] == "updated"]
    assert updates == ["D", "D", "D", "G", "D", "D", "D", "G"]


def test_simultaneous_updates_call_the_hooks_of_one_batch_then_step_both(make_trainer):
    trainer = make_trainer(["recorder"], extra={"recorder": Recorder}, train={"update_order": "simultaneous"})
    recorder = trainer.run.manager.get_plugin("recorder")
    trainer.train_step()
    assert recorder.calls == [
        ("step_start", 0), ("batch", "D", False, False), ("d_loss", ["adversarial"]),
        ("batch", "G", True, True), ("g_loss", ["adversarial"], True),
        ("updated", "D"), ("updated", "G"), ("step_end", 0, ["loss_D/adversarial", "loss_G/adversarial"]),
    ]


class LeaksIntoG:
    """A D loss term that also depends on G's parameters: only D may learn from it."""

    @hookimpl
    def gancore_discriminator_loss(self, trainer, batch, terms):
        terms["leak"] = trainer.models.G(batch.z).pow(2).mean()


def test_simultaneous_updates_take_both_gradients_at_the_same_parameters(make_trainer):
    trainer = make_trainer(["leak"], extra={"leak": LeaksIntoG}, train={"update_order": "simultaneous", "lr_g": 0.05, "lr_d": 0.05})
    G, D = copy.deepcopy(trainer.models.G), copy.deepcopy(trainer.models.D)
    stream = trainer.generator.get_state()
    trainer.train_step()
    # the reference: the same draws, each player's gradient of its own loss before either moves
    trainer.generator.set_state(stream)
    z = trainer.noise()
    real = trainer.real_batch()
    loss = LOSSES["non-saturating"]
    fake = G(z)
    d_loss = loss.discriminator(D(real).logits, D(fake.detach()).logits) + G(z).pow(2).mean()
    g_loss = loss.generator(D(fake).logits)
    for net, objective in ((D, d_loss), (G, g_loss)):
        parameters = list(net.parameters())
        for parameter, gradient in zip(parameters, torch.autograd.grad(objective, parameters)):
            parameter.grad = gradient
    for net, lr in ((D, 0.05), (G, 0.05)):
        torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999)).step()
    for reference, trained in ((D, trainer.models.D), (G, trainer.models.G)):
        for expected, actual in zip(reference.parameters(), trained.parameters()):
            torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


def test_simultaneous_updates_refuse_more_than_one_update_per_player(make_trainer):
    with pytest.raises(GancoreError, match=r"update_order = simultaneous .* train.n_critic = 3; set train.n_critic = 1"):
        make_trainer(train={"update_order": "simultaneous", "n_critic": 3})
    trainer = make_trainer(["schedule"], extra={"schedule": Schedule}, train={"update_order": "simultaneous"})
    with pytest.raises(GancoreError, match="step 0 asks for 3 D and 0 G updates"):
        trainer.train_step()


class CountingCritic:
    """G's step is taken against a critic of its own."""

    def __init__(self):
        self.inputs = []

    @hookimpl
    def gancore_generator_critic(self, trainer, batch):
        def critic(x):
            self.inputs.append(x)
            return Critique(-x.sum(dim=1), x)

        return critic


def test_the_generator_critic_replaces_d_in_gs_step(make_trainer):
    trainer = make_trainer(["counting-critic"], extra={"counting-critic": CountingCritic})
    plugin = trainer.run.manager.get_plugin("counting-critic")
    trainer.train_step()
    assert len(plugin.inputs) == 1 and plugin.inputs[0].requires_grad
    # non-saturating G loss against logits -sum(x): the loss is softplus(sum x) averaged
    expected = torch.nn.functional.softplus(plugin.inputs[0].sum(1)).mean()
    assert trainer.last_logs["loss_G/adversarial"].item() == pytest.approx(expected.item(), rel=1e-6)


class DropAdversarial:
    @hookimpl
    def gancore_generator_loss(self, terms):
        terms["adversarial"] = terms["adversarial"] * 0.0


def test_loss_terms_are_what_the_player_minimizes(make_trainer):
    trainer = make_trainer(["drop"], extra={"drop": DropAdversarial})
    before = [p.detach().clone() for p in trainer.models.G.parameters()]
    trainer.train_step()
    # a zero loss gives zero gradients, and Adam moves nothing on zero gradients
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.models.G.parameters()))


class AddsReconstructor:
    @hookimpl
    def gancore_build_models(self, models, dataset):
        models.add("F", torch.nn.Linear(dataset.dim, 4), player="G")

    @hookimpl
    def gancore_generator_loss(self, trainer, batch, terms):
        terms["reconstruction"] = (trainer.models["F"](batch.fake) - batch.z).pow(2).mean()


def test_networks_added_to_a_player_are_trained_by_its_optimizer(make_trainer):
    trainer = make_trainer(["adds-f"], extra={"adds-f": AddsReconstructor})
    f_before = trainer.models["F"].weight.detach().clone()
    trainer.train_step()
    assert not torch.equal(f_before, trainer.models["F"].weight)
    assert "loss_G/reconstruction" in trainer.last_logs
    assert set(trainer.state_dict()["models"]) == {"G", "D", "F"}


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_families_at_known_points(name):
    family = LOSSES[name]
    zero = torch.zeros(4)
    expected_d = {"non-saturating": 2 * math.log(2), "minimax": 2 * math.log(2), "wasserstein": 0.0, "hinge": 2.0}
    expected_g = {"non-saturating": math.log(2), "minimax": -math.log(2), "wasserstein": 0.0, "hinge": 0.0}
    assert family.discriminator(zero, zero).item() == pytest.approx(expected_d[name])
    assert family.generator(zero).item() == pytest.approx(expected_g[name])
    # every G loss decreases as D finds fakes more real
    assert family.generator(torch.ones(4)) < family.generator(zero)


def test_same_seed_same_numbers_and_another_seed_differs(make_trainer):
    def run(seed):
        trainer = make_trainer(train={"seed": seed, "steps": 30})
        return trainer.fit()

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_evaluation_does_not_disturb_training(make_trainer):
    quiet = make_trainer(train={"steps": 20})
    busy = make_trainer(train={"steps": 20, "eval_every": 3})
    quiet.fit(), busy.fit()
    assert len(busy.history) == 7
    for a, b in zip(quiet.models.G.parameters(), busy.models.G.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("order", ["alternating", "simultaneous"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(make_trainer, order):
    train = {"steps": 20, "update_order": order}
    straight = make_trainer(train=train)
    straight.run_steps(20)
    first = make_trainer(train=train)
    first.run_steps(10)
    state = first.state_dict()
    second = make_trainer(train=train)
    second.load_state_dict(state)
    second.run_steps(10)
    for a, b in zip(straight.models.D.parameters(), second.models.D.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(straight.noise(3), second.noise(3))


def test_restart_lr_decay_decays_over_the_given_span_and_rejects_an_empty_one(make_trainer):
    trainer = make_trainer(train={"steps": 100, "lr_g": 1e-3, "lr_d": 2e-3, "lr_decay": "linear"})
    trainer.restart_lr_decay(40, 60)
    for step, factor in [(30, 1.0), (40, 1.0), (50, 0.5), (60, 0.0), (80, 0.0)]:
        trainer.step = step
        trainer._set_learning_rates()
        assert trainer.optimizers["G"].param_groups[0]["lr"] == pytest.approx(1e-3 * factor)
        assert trainer.optimizers["D"].param_groups[0]["lr"] == pytest.approx(2e-3 * factor)
    with pytest.raises(GancoreError, match="0 <= start < end"):
        trainer.restart_lr_decay(5, 5)
