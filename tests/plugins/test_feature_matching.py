import pytest
import torch
from torch import nn

from gancore import GancoreError, hookimpl
from gancore.losses import LOSSES
from gancore.models import Discriminator


def tiny_nets():
    torch.manual_seed(1)
    G = nn.Linear(3, 2).double()
    D = Discriminator(nn.Sequential(nn.Linear(2, 4), nn.Tanh()), nn.Linear(4, 1)).double()
    return G, D


def analytic_gradient(G, D, z, real, norm):
    """dL/dW, dL/db of L = ‖mean f(real) − mean f(Wz + b)‖ with f = tanh(A x + c), by hand, float64."""
    A, c = D.body[0].weight.detach(), D.body[0].bias.detach()
    W, b = G.weight.detach(), G.bias.detach()
    x = z @ W.T + b
    h = torch.tanh(x @ A.T + c)
    gap = torch.tanh(real @ A.T + c).mean(0) - h.mean(0)
    d_mean_fake = -2 * gap if norm == "l2" else -torch.sign(gap)  # dL/d(mean fake features)
    d_h = d_mean_fake / len(z) * (1 - h**2)  # (N, 4): through the mean and tanh
    d_x = d_h @ A  # (N, 2)
    return d_x.T @ z, d_x.sum(0)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_generators_gradient_is_the_analytic_one(make_trainer, norm):
    trainer = make_trainer(["feature-matching"], options={"feature-matching": {"norm": norm}})
    plugin = trainer.run.manager.get_plugin("feature-matching")
    G, D = tiny_nets()
    z, real = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    fake = D(G(z))
    terms = {"adversarial": LOSSES["non-saturating"].generator(fake.logits)}
    plugin.gancore_generator_loss(trainer=type("T", (), {"real_batch": lambda self: real})(), fake=fake, critic=D, terms=terms)
    assert set(terms) == {"adversarial", "feature_matching"}
    assert terms["adversarial"].item() == 0.0  # pure feature matching by default
    grad_W, grad_b = torch.autograd.grad(sum(terms.values()), [G.weight, G.bias])
    expected_W, expected_b = analytic_gradient(G, D, z, real, norm)
    torch.testing.assert_close(grad_W, expected_W, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_b, expected_b, rtol=1e-12, atol=1e-12)
    # the real features are a target: D gets no gradient through them
    assert all(p.grad is None for p in D.parameters())


def test_l1_and_l2_distances():
    from gancore.plugins.feature_matching import FeatureMatching

    plugin = FeatureMatching()
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean (2, 3)
    plugin.norm = "l2"
    assert plugin.distance(real, torch.tensor([[0.0, 0.0], [2.0, 6.0]])).item() == 1.0  # mean (1, 3)
    fake = torch.tensor([[-1.0, 5.0]])  # gap (3, -2)
    assert plugin.distance(real, fake).item() == 13.0
    plugin.norm = "l1"
    assert plugin.distance(real, fake).item() == 5.0


class Recorder:
    """Sees G's terms after feature matching changed them, and the real batches drawn in the hook."""

    def __init__(self):
        self.seen, self.reals = [], []

    @hookimpl(trylast=True)
    def gancore_generator_loss(self, trainer, fake, critic, terms):
        with torch.no_grad():
            real_features = critic(self.reals[-1]).features
        self.seen.append(({k: v.detach().clone() for k, v in terms.items()}, fake.logits.detach(), fake.features.detach(), real_features))


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_hybrid_weighting_is_honoured_in_training(make_trainer, norm):
    options = {"feature-matching": {"weight": 0.5, "adversarial_weight": 0.25, "norm": norm}}
    trainer = make_trainer(["feature-matching", "recorder"], extra={"recorder": Recorder}, options=options)
    recorder = trainer.run.manager.get_plugin("recorder")
    draw = trainer.real_batch
    trainer.real_batch = lambda n=None: recorder.reals.append(draw(n)) or recorder.reals[-1]
    for _ in range(3):
        trainer.train_step()
    assert len(recorder.seen) == 3
    for terms, logits, fake_features, real_features in recorder.seen:
        torch.testing.assert_close(terms["adversarial"], 0.25 * LOSSES["non-saturating"].generator(logits))
        gap = real_features.mean(0) - fake_features.mean(0)
        distance = gap.pow(2).sum() if norm == "l2" else gap.abs().sum()
        torch.testing.assert_close(terms["feature_matching"], 0.5 * distance)
    assert {"loss_G/adversarial", "loss_G/feature_matching"} <= set(trainer.last_logs)
    # the D phase draws one real batch per step, the feature-matching term another
    assert len(recorder.reals) == 6


def test_bad_options_are_one_line_errors(make_trainer):
    with pytest.raises(GancoreError, match="feature-matching.norm"):
        make_trainer(["feature-matching"], options={"feature-matching": {"norm": "l3"}})
    with pytest.raises(GancoreError, match="feature-matching.weight"):
        make_trainer(["feature-matching"], options={"feature-matching": {"weight": -1}})
