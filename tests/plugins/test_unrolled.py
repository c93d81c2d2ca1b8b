"""Unrolled GAN: G's gradient through the unroll, checked in float64 against a reference written
out here and against finite differences; D left untouched; any D; D's optimizer rule reproduced."""
import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.func import functional_call

from gancore import GancoreError, hookimpl
from gancore.data import load_dataset
from gancore.models import Discriminator
from gancore.plugins import pacgan  # its pack wrapper: D reads pairs of consecutive samples
from gancore.plugins.unrolled import _AdamStep, unroll
from gancore.trainer import Batch
from tests.conftest import TINY

# smooth nets (tanh: finite differences see no kinks), a D learning rate large enough that the
# unrolled steps move D visibly, and a few steps so that D's optimizer state is not trivial
SMOOTH = {"activation": "tanh", "batch_size": 16, "z_dim": 3, "g_width": 8, "d_width": 8, "lr_d": 0.05}


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def build(make_trainer, plugins=("unrolled",), steps=2, warmup=2, extra=None, train=None, unrolled=None):
    data = load_dataset("ring8", "", TINY["n_train"], 0)
    data.points = data.points.to(torch.get_default_dtype())  # from the start: plugins' model checks run on it
    trainer = make_trainer(list(plugins), extra=extra, train={**SMOOTH, **(train or {})}, options={"unrolled": {"steps": steps, **(unrolled or {})}} if "unrolled" in plugins else None, dataset=data)
    for _ in range(warmup):
        trainer.train_step()
    return trainer


def g_batch(trainer, G_params=None):
    """A G-phase batch of fixed noise; G evaluated at ``G_params`` (default: its own)."""
    z = torch.randn(trainer.train.batch_size, trainer.train.z_dim, generator=torch.Generator().manual_seed(7))
    G = trainer.models.G
    fake = G(z) if G_params is None else functional_call(G, G_params, (z,))
    return Batch("G", trainer.step, z, fake)


def plugin_objective(trainer, batch, **kwargs):
    """loss_G(critic(fake)) with the plugin's critic; the real batch it draws is replayed by ``real_of``."""
    state = trainer.generator.get_state()
    critic = unroll(trainer, batch, **kwargs)
    trainer.generator.set_state(state)
    return trainer.loss.generator(critic(batch.fake).logits)


def real_of(trainer):
    """The real batch the next unroll draws (without consuming it)."""
    state = trainer.generator.get_state()
    real = trainer.real_batch()
    trainer.generator.set_state(state)
    return real


def reference_objective(trainer, batch, steps, backprop=True, saddle=False):
    """The unrolled objective written out: per-parameter Adam as in torch.optim.Adam's docs, plain autograd;
    ``saddle``: −L_D(θₖ) on the unroll's real batch and the fake one, instead of G's loss on the fake one."""
    D, opt = trainer.models.D, trainer.optimizers["D"]
    group = opt.param_groups[0]
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    real, fake = real_of(trainer), batch.fake
    params = {name: p.detach().clone().requires_grad_() for name, p in D.named_parameters()}
    buffers = {name: b.clone() for name, b in D.named_buffers()}
    m = {name: opt.state[p]["exp_avg"].clone() for name, p in D.named_parameters()}
    v = {name: opt.state[p]["exp_avg_sq"].clone() for name, p in D.named_parameters()}
    t0 = int(opt.state[next(D.parameters())]["step"])
    for i in range(steps):
        x = fake if backprop else fake.detach()
        loss = trainer.loss.discriminator(functional_call(D, {**params, **buffers}, (real,)).logits, functional_call(D, {**params, **buffers}, (x,)).logits)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=backprop)
        t = t0 + i + 1
        new = {}
        for (name, p), g in zip(params.items(), grads):
            m[name] = beta1 * m[name] + (1 - beta1) * g
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            m_hat, v_hat = m[name] / (1 - beta1**t), v[name] / (1 - beta2**t)
            new[name] = p - lr * m_hat / (v_hat.sqrt() + eps)
        params = new if backprop else {name: p.detach().requires_grad_() for name, p in new.items()}
    fake_logits = functional_call(D, {**params, **buffers}, (fake,)).logits
    if saddle:
        return -trainer.loss.discriminator(functional_call(D, {**params, **buffers}, (real,)).logits, fake_logits)
    return trainer.loss.generator(fake_logits)


def g_grad(loss, trainer):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(trainer.models.G.parameters()))])


def test_g_gradient_flows_through_the_unroll(make_trainer, float64):
    trainer = build(make_trainer, steps=3)
    batch = g_batch(trainer)
    exact = g_grad(plugin_objective(trainer, batch, steps=3), trainer)
    reference = g_grad(reference_objective(trainer, g_batch(trainer), 3), trainer)
    torch.testing.assert_close(exact, reference, rtol=1e-9, atol=1e-13)

    # central finite differences along a random direction of G's parameters
    names = [name for name, _ in trainer.models.G.named_parameters()]
    base = {name: p.detach() for name, p in trainer.models.G.named_parameters()}
    direction = {name: torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) for name, p in base.items()}

    def objective(h):
        moved = {name: base[name] + h * direction[name] for name in names}
        return plugin_objective(trainer, g_batch(trainer, moved), steps=3).item()

    h = 1e-5
    numeric = (objective(h) - objective(-h)) / (2 * h)
    analytic = (exact * torch.cat([direction[name].reshape(-1) for name in names])).sum().item()
    assert analytic == pytest.approx(numeric, rel=1e-6)

    # the first-order variant is a different gradient (D's reaction to G is not differentiated)
    first_order = g_grad(plugin_objective(trainer, g_batch(trainer), steps=3, backprop=False), trainer)
    torch.testing.assert_close(first_order, g_grad(reference_objective(trainer, g_batch(trainer), 3, backprop=False), trainer), rtol=1e-9, atol=1e-13)
    assert (first_order - exact).norm() > 0.05 * exact.norm()


def test_d_parameters_buffers_and_optimizer_state_are_untouched(make_trainer, float64):
    class GOnly:  # D trains in step 0 only (so its optimizer has state), then only G steps
        @hookimpl
        def gancore_step_schedule(self, step):
            return (1, 1) if step == 0 else (0, 1)

    class BatchNormHead:  # D with buffers (running statistics)
        @hookimpl
        def gancore_build_models(self, models):
            models.D.head = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 1))

    trainer = build(make_trainer, ("unrolled", "g-only", "bn-head"), warmup=1, extra={"g-only": GOnly, "bn-head": BatchNormHead})
    D, opt = trainer.models.D, trainer.optimizers["D"]
    before = copy.deepcopy((D.state_dict(), opt.state_dict()))
    G_before = [p.detach().clone() for p in trainer.models.G.parameters()]
    for _ in range(2):
        trainer.train_step()
    after = (D.state_dict(), opt.state_dict())
    for name, tensor in before[0].items():
        assert torch.equal(tensor, after[0][name]), name
    for key, state in before[1]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, after[1]["state"][key][name]), (key, name)
    assert before[1]["param_groups"] == after[1]["param_groups"]
    assert not all(torch.equal(a, b) for a, b in zip(G_before, trainer.models.G.parameters()))  # G did learn


def test_zero_steps_is_the_vanilla_g_step(make_trainer):
    unrolled = make_trainer(["unrolled"], options={"unrolled": {"steps": 0}})
    vanilla = make_trainer([])
    for _ in range(3):
        unrolled.train_step()
        vanilla.train_step()
    for name in ("G", "D"):
        for a, b in zip(unrolled.models[name].parameters(), vanilla.models[name].parameters()):
            assert torch.equal(a, b)


class MLPHead:
    @hookimpl
    def gancore_build_models(self, models):
        models.D.head = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))


class Packed:
    @hookimpl
    def gancore_build_models(self, models, dataset):
        models.D = pacgan.Packed(Discriminator.mlp(2 * dataset.dim, 8, 2, "tanh"), m=2)


class BatchNormBody:
    @hookimpl
    def gancore_build_models(self, models):
        models.D.body = nn.Sequential(models.D.body, nn.BatchNorm1d(8))


class SpectralNormHead:  # a parametrized weight (and power-iteration buffers)
    @hookimpl
    def gancore_build_models(self, models):
        models.D.head = nn.utils.parametrizations.spectral_norm(models.D.head)


@pytest.mark.parametrize("wrapper", [MLPHead, Packed, BatchNormBody, SpectralNormHead], ids=lambda c: c.__name__)
def test_any_discriminator(make_trainer, float64, wrapper):
    trainer = build(make_trainer, ("wrap", "unrolled"), extra={"wrap": wrapper})
    exact = g_grad(plugin_objective(trainer, g_batch(trainer), steps=2), trainer)
    reference = g_grad(reference_objective(trainer, g_batch(trainer), 2), trainer)
    torch.testing.assert_close(exact, reference, rtol=1e-9, atol=1e-13)


def d_loss_of(trainer, real, fake, D=None):
    D = D or trainer.models.D
    return trainer.loss.discriminator(D(real).logits, D(fake).logits)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda ps: torch.optim.Adam(ps, lr=0.05, betas=(0.5, 0.9), eps=1e-6),
        lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.1, maximize=True),
        lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        lambda ps: torch.optim.SGD(ps, lr=0.1),
    ],
    ids=["adam", "adam-l2-maximize", "adamw", "sgd-momentum", "sgd-nesterov", "sgd"],
)
@pytest.mark.parametrize("fresh", [False, True], ids=["with-state", "no-state"])
def test_the_unroll_is_d_s_own_optimizer_rule(make_trainer, float64, make_optimizer, fresh):
    trainer = build(make_trainer, warmup=1)
    D = trainer.models.D
    trainer.optimizers["D"] = opt = make_optimizer(D.parameters())
    batch = g_batch(trainer)
    for _ in range(0 if fresh else 2):  # fill the optimizer's state
        opt.zero_grad()
        d_loss_of(trainer, trainer.real_batch(), batch.fake.detach()).backward()
        opt.step()
    real = real_of(trainer)
    expected_D, expected_opt = copy.deepcopy((D, opt))
    for _ in range(2):
        expected_opt.zero_grad()
        d_loss_of(trainer, real, batch.fake.detach(), expected_D).backward()
        expected_opt.step()
    for backprop in (False, True):  # the exact unroll's values are the same
        state = trainer.generator.get_state()
        critic = unroll(trainer, batch, 2, backprop=backprop)
        trainer.generator.set_state(state)
        for name, p in expected_D.named_parameters():
            torch.testing.assert_close(critic.params[name].detach(), p.detach(), rtol=1e-12, atol=1e-14)


def test_other_plugins_d_terms_are_unrolled_with_d(make_trainer, float64):
    class LogitPenalty:  # a D term that reads trainer.models.D, like wgan-gp's penalty
        @hookimpl
        def gancore_discriminator_loss(self, trainer, batch, terms):
            terms["logit_penalty"] = 0.5 * trainer.models.D(batch.real).logits.pow(2).mean()

    trainer = build(make_trainer, ("unrolled", "penalty"), extra={"penalty": LogitPenalty})
    D, opt = trainer.models.D, trainer.optimizers["D"]
    batch = g_batch(trainer)
    real = real_of(trainer)
    for plugin_terms in (True, False):
        expected_D, expected_opt = copy.deepcopy((D, opt))
        expected_opt.zero_grad()
        loss = d_loss_of(trainer, real, batch.fake.detach(), expected_D)
        if plugin_terms:
            loss = loss + 0.5 * expected_D(real).logits.pow(2).mean()
        loss.backward()
        expected_opt.step()
        state = trainer.generator.get_state()
        critic = unroll(trainer, batch, 1, backprop=False, plugin_terms=plugin_terms)
        trainer.generator.set_state(state)
        for name, p in expected_D.named_parameters():
            torch.testing.assert_close(critic.params[name], p.detach(), rtol=1e-12, atol=1e-14)


def test_dead_relu_units_do_not_make_g_gradient_nan(make_trainer):
    trainer = make_trainer(["unrolled"])
    with torch.no_grad():  # unit 0 of D's first layer never fires: its gradients are exactly zero
        first = next(m for m in trainer.models.D.modules() if isinstance(m, nn.Linear))
        first.weight[0] = 0
        first.bias[0] = -1
    trainer.train_step()
    assert trainer.optimizers["D"].state[first.weight]["exp_avg_sq"][0].eq(0).all()
    batch = g_batch(trainer)
    grad = g_grad(trainer.loss.generator(unroll(trainer, batch, 3)(batch.fake).logits), trainer)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_adam_step_gradient(float64):
    gen = torch.Generator().manual_seed(0)
    for weight_decay, decoupled, maximize in [(0.0, False, False), (0.1, False, True), (0.1, True, False)]:
        h = SimpleNamespace(lr=0.1, beta1=0.5, beta2=0.9, eps=1e-3, weight_decay=weight_decay, step_size=0.1 / (1 - 0.5**3), bc2_sqrt=(1 - 0.9**3) ** 0.5, maximize=maximize, decoupled=decoupled)
        inputs = [torch.randn(6, generator=gen), torch.randn(6, generator=gen), 0.1 * torch.randn(6, generator=gen), 0.01 + 0.1 * torch.rand(6, generator=gen)]
        assert torch.autograd.gradcheck(lambda *x: _AdamStep.apply(*x, h), [x.requires_grad_() for x in inputs])


def test_unsupported_optimizer_is_a_one_line_error(make_trainer):
    trainer = make_trainer(["unrolled"])
    trainer.optimizers["D"] = torch.optim.RMSprop(trainer.models.D.parameters())
    with pytest.raises(GancoreError, match="RMSprop") as error:
        trainer.train_step()
    assert "\n" not in str(error.value)


def test_the_saddle_objective_is_d_s_whole_unrolled_loss_real_term_included(make_trainer, float64):
    """objective = "saddle": G minimizes −L_D(θₖ; x, G(z)), as poolio/unrolled_gan's −unrolled_loss; the real
    term reaches G through θₖ, so G's gradient differs from the minimax G loss on the fake batch alone."""
    trainer = build(make_trainer, steps=3, unrolled={"objective": "saddle"})
    plugin = trainer.run.manager.get_plugin("unrolled")

    def saddle(batch):
        state = trainer.generator.get_state()
        critic = unroll(trainer, batch, 3)
        trainer.generator.set_state(state)
        fake = critic(batch.fake)
        terms = {"adversarial": trainer.loss.generator(fake.logits)}
        plugin.gancore_generator_loss(trainer=trainer, fake=fake, critic=critic, terms=terms)
        return terms["adversarial"]

    exact = g_grad(saddle(g_batch(trainer)), trainer)
    torch.testing.assert_close(exact, g_grad(reference_objective(trainer, g_batch(trainer), 3, saddle=True), trainer), rtol=1e-9, atol=1e-13)
    core = g_grad(reference_objective(trainer, g_batch(trainer), 3), trainer)
    assert (exact - core).norm() > 0.05 * core.norm()
    # without the real term: the minimax G loss −softplus(ℓ_fake) at θₖ, also a different gradient
    batch, state = g_batch(trainer), trainer.generator.get_state()
    critic = unroll(trainer, batch, 3)
    trainer.generator.set_state(state)
    fake_only = g_grad(-torch.nn.functional.softplus(critic(batch.fake).logits).mean(), trainer)
    assert (exact - fake_only).norm() > 0.05 * exact.norm()


class SeesTheBatches:
    """Records the real batch D's update reads and the one the unroll was taken on."""

    @hookimpl(trylast=True)
    def gancore_discriminator_batch(self, batch):
        if batch.phase == "D":
            self.d_real = batch.real

    @hookimpl
    def gancore_generator_loss(self, critic):
        self.unrolled_real = critic.real


@pytest.mark.parametrize("order", ["simultaneous", "alternating"])
def test_with_simultaneous_updates_the_unroll_reads_ds_real_batch_of_the_step(make_trainer, order):
    """poolio/unrolled_gan's demo: D's step, the unroll and the unrolled loss share one real batch.
    Alternating updates keep a fresh batch for the unroll (D's batch belongs to an update already taken)."""
    trainer = make_trainer(["unrolled", "sees"], extra={"sees": SeesTheBatches},
                           train={"update_order": order}, options={"unrolled": {"steps": 2}})
    sees = trainer.run.manager.get_plugin("sees")
    for _ in range(2):
        trainer.train_step()
        assert (sees.unrolled_real is sees.d_real) == (order == "simultaneous")
        assert torch.equal(sees.unrolled_real, sees.d_real) == (order == "simultaneous")
