"""WGAN-GP: the penalty (value and gradient w.r.t. D) against a float64 reference, λ, and the suggested settings."""
import pytest
import torch

from gancore import GancoreError, hookimpl
from gancore.data import load_dataset
from gancore.models import Discriminator
from gancore.plugins import pacgan  # its pack wrapper: D reads pairs of consecutive samples
from tests.conftest import TINY


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def reference_penalty(D, real, fake, weight, rng, group=1):
    """λ · mean_i (‖∇_x̂ D(x̂)_i‖₂ − 1)², x̂_i = ε_i real_i + (1 − ε_i) fake_i, one ε_i ~ U[0, 1) per
    sample (per pack of ``group`` samples) from the training RNG, drawn in float32 as
    gancore.kernels.gradient_penalty documents; returns the penalty and its gradient w.r.t. D."""
    n = len(real) // group
    eps = torch.rand(n, generator=torch.Generator().set_state(rng), dtype=torch.float32)
    eps = eps.to(real.dtype).repeat_interleave(group)[:, None]
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_()
    (g,) = torch.autograd.grad(D(x_hat).logits.sum(), x_hat, create_graph=True)
    penalty = weight * ((g.reshape(n, -1).norm(dim=1) - 1) ** 2).mean()
    return penalty, torch.autograd.grad(penalty, list(D.parameters()), materialize_grads=True)


class Before:
    """Runs before wgan-gp in every D update: remembers the training RNG it draws ε from."""

    @hookimpl(tryfirst=True)
    def gancore_discriminator_loss(self, trainer):
        self.rng = trainer.generator.get_state()


class After:
    """Runs after wgan-gp: the penalty and its gradient w.r.t. D's parameters, with the reference's."""

    group = 1

    def __init__(self):
        self.seen = []

    @hookimpl(trylast=True)
    def gancore_discriminator_loss(self, trainer, batch, terms):
        D = trainer.models.D
        penalty = terms["gradient_penalty"]
        grads = torch.autograd.grad(penalty, list(D.parameters()), retain_graph=True, materialize_grads=True)
        rng = trainer.run.manager.get_plugin("before").rng
        expected, expected_grads = reference_penalty(D, batch.real, batch.fake, trainer.config.plugins["wgan-gp"].weight, rng, self.group)
        self.seen.append((penalty.detach(), expected.detach(), grads, expected_grads))


class Packed:
    @hookimpl
    def gancore_build_models(self, models, dataset):
        models.D = pacgan.Packed(Discriminator.mlp(2 * dataset.dim, 16, 2, "relu"), m=2)


class AfterPacked(After):
    group = 2


@pytest.mark.parametrize("packed", [False, True], ids=["per-sample", "pacgan-packs"])
def test_penalty_and_its_gradient_match_a_float64_reference(make_trainer, float64, packed):
    extra = {"before": Before, "after": AfterPacked if packed else After, **({"packed": Packed} if packed else {})}
    data = load_dataset("ring8", "", TINY["n_train"], 0)
    data.points = data.points.double()  # float64 data for the float64 nets, from the start (their checks run on it)
    trainer = make_trainer((["packed"] if packed else []) + ["before", "wgan-gp", "after"], extra=extra, options={"wgan-gp": {"weight": 3.0}}, dataset=data)
    for _ in range(2):
        trainer.train_step()
    seen = trainer.run.manager.get_plugin("after").seen
    assert len(seen) == 10  # n_critic = 5 per step
    for penalty, expected, grads, expected_grads in seen:
        torch.testing.assert_close(penalty, expected, rtol=1e-12, atol=0)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-14)
    assert all(penalty > 0 for penalty, *_ in seen)


class Penalties:
    def __init__(self):
        self.values = []

    @hookimpl(trylast=True)
    def gancore_discriminator_loss(self, terms):
        self.values.append(terms["gradient_penalty"].item())


def test_weight_scales_the_penalty(make_trainer):
    values = {}
    for weight in (10.0, 0.1):
        extra = {"penalties": Penalties} if not values else None
        trainer = make_trainer(["wgan-gp", "penalties"], extra=extra, options={"wgan-gp": {"weight": weight}})
        trainer.train_step()
        values[weight] = trainer.run.manager.get_plugin("penalties").values[0]  # same D, batches and ε
    assert values[10.0] > 0
    assert values[10.0] / values[0.1] == pytest.approx(100, rel=1e-5)
    assert "loss_D/gradient_penalty" in trainer.last_logs


class CountUpdates:
    def __init__(self):
        self.updates = []

    @hookimpl
    def gancore_after_optimizer_step(self, player):
        self.updates.append(player)


def test_suggested_settings_and_critic_iterations(make_trainer):
    trainer = make_trainer(["wgan-gp", "count"], extra={"count": CountUpdates})
    train = trainer.train
    assert (train.loss, train.n_critic, train.lr_d, train.lr_g) == ("wasserstein", 5, 1e-4, 1e-4)
    assert tuple(train.betas_d) == tuple(train.betas_g) == (0.5, 0.9)
    assert tuple(trainer.optimizers["D"].param_groups[0]["betas"]) == (0.5, 0.9)
    for _ in range(2):
        trainer.train_step()
    assert trainer.run.manager.get_plugin("count").updates == (["D"] * 5 + ["G"]) * 2


def test_explicit_settings_win(make_trainer):
    trainer = make_trainer(["wgan-gp", "count"], extra={"count": CountUpdates}, train={"n_critic": 2, "loss": "hinge", "lr_d": 3e-4})
    train = trainer.train
    assert (train.loss, train.n_critic, train.lr_d, train.lr_g) == ("hinge", 2, 3e-4, 1e-4)
    trainer.train_step()
    assert trainer.run.manager.get_plugin("count").updates == ["D", "D", "G"]


def test_minibatch_discrimination_warns_once(make_trainer):
    with pytest.warns(UserWarning, match="minibatch") as record:
        make_trainer(["minibatch-discrimination", "wgan-gp"])
    assert len(record) == 1 and "\n" not in str(record[0].message)


def test_incompatible_with_weight_clipping(make_trainer):
    with pytest.raises(GancoreError, match="wgan") as error:
        make_trainer(["wgan-gp", "wgan"])
    assert "wgan-gp" in str(error.value) and "\n" not in str(error.value)
