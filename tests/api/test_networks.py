"""The contract for user networks: each built-in plugin trains on user nets that meet it and
refuses, before training, those that do not (README: "Your own networks")."""
import pytest
import torch
from torch import nn

import gancore
from gancore import GancoreError
from gancore.models import Critique, Discriminator, LogitsOnly

SETTINGS = {"steps": 3, "batch_size": 16, "device": "cpu", "z_dim": 4, "eval_every": 0, "eval_samples": 64, "progress": False}
DATA = torch.randn(64, 2)


def mlp_generator():
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))


def plain_d():
    """Returns plain logits (n, 1): no features."""
    return nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))


def body_head_d():
    return Discriminator(nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2)), nn.Linear(16, 1))


class HeadFirst(nn.Module):
    """Registers its head before its body: its first Linear is not its input layer."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 1)
        self.body = nn.Sequential(nn.Linear(2, 16), nn.ReLU())

    def forward(self, x):
        return Critique(self.head(self.body(x)).squeeze(-1), self.body(x))


class Scale(nn.Module):
    """A layer with a parameter and no reset_parameters."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.scale * x


class ReadsDetached(nn.Module):
    """Reads its last layer's weight outside autograd: not a function of its parameters."""

    def __init__(self):
        super().__init__()
        self.hidden, self.out = nn.Linear(2, 16), nn.Linear(16, 1)

    def forward(self, x):
        return nn.functional.linear(torch.relu(self.hidden(x)), self.out.weight.detach(), self.out.bias)


class InputFree(nn.Module):
    """Logits that do not depend differentiably on the input (a quantizing D)."""

    def __init__(self):
        super().__init__()
        self.net = plain_d()

    def forward(self, x):
        return self.net(x.detach())


# plugin -> (nets that meet the contract, nets that do not and the refusal), each (G, D) factories
CASES = {
    "minibatch-discrimination": ((mlp_generator, body_head_d), (mlp_generator, plain_d, r"^minibatch-discrimination needs a gancore.models.Discriminator \(body \+ head\) in D, not LogitsOnly$")),
    "feature-matching": ((mlp_generator, body_head_d), (mlp_generator, plain_d, r"^feature-matching needs D's features: return gancore.models.Critique\(logits, features\)")),
    "pacgan": ((mlp_generator, plain_d), (mlp_generator, HeadFirst, r"^pacgan widened D's first Linear or convolution \(Linear head\) to read packs of 2, and D then fails .*: D's input layer must be its first registered Linear or convolution$")),
    "unrolled": ((mlp_generator, plain_d), (mlp_generator, ReadsDetached, r"^unrolled needs D's logits to be a differentiable function of its parameters under torch.func.functional_call, but they do not depend on inner.out.weight: ")),
    "veegan": ((mlp_generator, None), (mlp_generator, plain_d, r"^veegan builds its own critic of \(z, x\) pairs and cannot use a given discriminator; pass discriminator=None")),
    "wgan-gp": ((mlp_generator, plain_d), (mlp_generator, InputFree, r"^wgan-gp penalizes the gradient of D's logits with respect to its input, but D's logits do not depend differentiably on its input$")),
    "adagan": ((mlp_generator, plain_d), (lambda: nn.Sequential(mlp_generator(), Scale()), plain_d, r"^adagan starts every round from fresh weights, but G's layer 1 \(Scale\) holds parameters and has no reset_parameters\(\) method; give it one$")),
    # no requirement beyond the core's: they run with the least a D can give (plain logits)
    "wgan": ((mlp_generator, plain_d), None),
    "replay": ((mlp_generator, plain_d), None),
    "ema": ((mlp_generator, plain_d), None),
    "instance-noise": ((mlp_generator, plain_d), None),
}


OPTIONS = {"adagan": {"rounds": 2, "classifier_steps": 2}}


def test_every_builtin_plugin_has_a_case(catalog):
    assert set(CASES) == {name for name, info in catalog.plugins.items() if info.package == "gancore"}


@pytest.mark.parametrize("plugin", sorted(CASES))
def test_plugin_trains_user_nets_that_meet_the_contract(plugin):
    (make_g, make_d), _ = CASES[plugin]
    torch.manual_seed(0)
    G, D = make_g(), make_d() if make_d else None
    before = [p.detach().clone() for p in G.parameters()]
    result = gancore.fit(G, D, DATA, plugins=[(plugin, OPTIONS.get(plugin, {}))], **SETTINGS)
    assert result.summary["step"] == 3
    assert all(torch.isfinite(v).all() for m in result.models.values() for v in m.state_dict().values() if v.is_floating_point())
    trained = list(result.models["G"].parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, trained))  # G trained ...
    assert all(torch.equal(b, p) for b, p in zip(before, G.parameters()))  # ... a copy: the user's module is untouched


@pytest.mark.parametrize("plugin", sorted(name for name, case in CASES.items() if case[1]))
def test_plugin_refuses_user_nets_that_do_not_meet_it_before_training(plugin, tmp_path):
    make_g, make_d, message = CASES[plugin][1]
    with pytest.raises(GancoreError, match=message) as error:
        gancore.fit(make_g(), make_d(), DATA, plugins=[(plugin, OPTIONS.get(plugin, {}))], run_dir=tmp_path / "run", **SETTINGS)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_plain_logits_d_is_adapted_and_a_body_head_d_kept():
    result = gancore.fit(mlp_generator(), plain_d(), DATA, **SETTINGS)
    assert isinstance(result.models["D"], LogitsOnly)
    out = result.models["D"](DATA[:5])
    assert out.logits.shape == (5,) and out.features is None
    kept = gancore.fit(mlp_generator(), body_head_d(), DATA, **SETTINGS)
    assert isinstance(kept.models["D"], Discriminator) and kept.models["D"](DATA[:5]).features.shape == (5, 16)


class Images(nn.Module):
    z_dim = 8

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 3 * 8 * 8), nn.Tanh(), nn.Unflatten(1, (3, 8, 8)))

    def forward(self, z):
        return self.net(z)


@pytest.mark.parametrize("G, D, message", [
    (lambda: nn.Linear(4, 3), plain_d, r"^the generator maps noise \(2, 4\) to \(2, 3\), but the data's samples have shape \(2,\): it must return \(n, 2\)$"),
    (lambda: nn.Linear(5, 2), plain_d, r"^the generator fails on noise of shape \(2, 4\) \(RuntimeError: .*\); set z_dim to G's input size"),
    (lambda: "G", plain_d, r"^the generator must be a torch.nn.Module, not str$"),
    (mlp_generator, lambda: nn.Linear(2, 3), r"^the discriminator must return one logit per sample, shape \(n,\) or \(n, 1\), or a gancore.models.Critique; it returned \(2, 3\)$"),
    (mlp_generator, lambda: nn.Linear(3, 1), r"^the discriminator fails on training samples of shape \(2, 2\): RuntimeError: "),
])
def test_networks_that_do_not_fit_the_data_are_refused(G, D, message):
    with pytest.raises(GancoreError, match=message):
        gancore.fit(G(), D(), DATA, **SETTINGS)


def test_z_dim_comes_from_the_generator_and_images_train():
    images = torch.rand(32, 3, 8, 8) * 2 - 1
    D = Discriminator(nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten()), nn.Linear(8 * 4 * 4, 1))
    result = gancore.fit(Images(), D, images, plugins=["pacgan", "minibatch-discrimination"], **{**SETTINGS, "z_dim": 8})
    assert result.sample(4).shape == (4, 3, 8, 8)
    settings = {k: v for k, v in SETTINGS.items() if k != "z_dim"}
    assert gancore.fit(Images(), D, images, **settings).trainer.train.z_dim == 8
