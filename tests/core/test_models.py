import copy
import math
import re

import pytest
import torch
from torch import nn

from gancore import GancoreError
from gancore.models import Discriminator, Maxout, build_generator, initialize


def test_a_maxout_unit_is_the_max_of_its_affine_pieces():
    torch.manual_seed(0)
    layer = Maxout(3, 7, pieces=5)
    x = torch.randn(11, 3, dtype=torch.float64)
    layer.double()
    weight = layer.linear.weight.detach().view(7, 5, 3)  # unit u, piece p -> row u·5 + p
    bias = layer.linear.bias.detach().view(7, 5)
    naive = torch.tensor([[max(float(weight[u, p] @ x[n] + bias[u, p]) for p in range(5)) for u in range(7)] for n in range(11)])
    assert torch.allclose(layer(x), naive.double())
    # the gradient reaches only the winning piece of each unit
    layer(x[:1]).sum().backward()
    winners = (x[0] @ weight.transpose(1, 2) + bias).argmax(-1)
    touched = layer.linear.bias.grad.view(7, 5) != 0
    assert torch.equal(touched, nn.functional.one_hot(winners, 5).bool())


def test_a_maxout_d_has_no_activation_and_keeps_its_width():
    D = Discriminator.mlp(6, 20, 3, "relu", maxout=5)
    hidden = [module for module in D.body if isinstance(module, Maxout)]
    assert len(hidden) == 3 and [m.linear.out_features for m in hidden] == [100, 100, 100]
    assert not any(isinstance(module, nn.ReLU) for module in D.modules())
    out = D(torch.randn(4, 2, 3))  # samples of shape (2, 3) are flattened
    assert out.logits.shape == (4,) and out.features.shape == (4, 20)


def test_a_plain_d_keeps_its_parameter_names_so_old_checkpoints_load():
    names = list(Discriminator.mlp(2, 8, 2, "relu").state_dict())
    assert names == ["body.1.0.weight", "body.1.0.bias", "body.1.2.weight", "body.1.2.bias", "head.weight", "head.bias"]


def test_the_core_option_builds_a_maxout_d_that_pacgan_and_veegan_keep(make_trainer):
    packed = make_trainer(["pacgan"], train={"dataset": "ring8", "d_maxout": 3}).models.D
    first = packed.inner.body[1]
    assert isinstance(first, Maxout) and first.linear.in_features == 2 * 2 and first.pieces == 3
    critic = make_trainer(["veegan"], train={"dataset": "ring8", "d_maxout": 3}).models.D
    assert sum(isinstance(module, Maxout) for module in critic.modules()) == 2


def test_a_batch_normed_mlp_generator_normalizes_every_hidden_layer(make_trainer):
    G = make_trainer(train={"dataset": "ring8", "g_mlp_norm": "batch", "g_depth": 3}).models.G
    norms = [module for module in G.modules() if isinstance(module, nn.BatchNorm1d)]
    linears = [module for module in G.modules() if isinstance(module, nn.Linear)]
    assert len(norms) == 3 and [layer.bias is None for layer in linears] == [True, True, True, False]
    hidden = G.net[:2](torch.randn(256, 4))  # first layer, batch-normalized: zero mean, unit variance per unit
    assert torch.allclose(hidden.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(hidden.var(0, unbiased=False), torch.ones(16), atol=1e-3)
    assert G(torch.randn(5, 4)).shape == (5, 2)


def test_a_plain_mlp_generator_keeps_its_parameter_names(make_trainer):
    names = list(make_trainer(train={"dataset": "ring8"}).models.G.state_dict())
    assert names == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"]


def test_a_batch_normed_generator_refuses_a_single_sample_with_a_clear_error(make_trainer):
    trainer = make_trainer(train={"dataset": "ring8", "g_mlp_norm": "batch"})
    with pytest.raises(GancoreError, match="at least 2 samples"):
        trainer.sample(1)
    assert trainer.sample(2).shape == (2, 2)


def test_mlp_options_on_a_run_of_dcgan_nets_are_refused(make_trainer):
    for option, value in (("d_maxout", 5), ("g_mlp_norm", "batch")):
        with pytest.raises(GancoreError, match=rf"train.{option} shapes the MLP nets.*train.model=mlp"):
            make_trainer(train={"dataset": "digits", "image_size": 8, "n_train": 64, "g_width": 4, "d_width": 4, option: value})


WIDE = {"z_dim": 64, "g_width": 256, "d_width": 256}


def _linears(module):
    return [layer for layer in module.modules() if isinstance(layer, nn.Linear)]


@pytest.mark.parametrize(
    "init, hidden_std, output_std",
    [
        ("xavier-uniform", lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out)), lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
        ("he-uniform", lambda fan_in, fan_out: math.sqrt(2 / fan_in), lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
        ("normal", lambda fan_in, fan_out: 0.02, lambda fan_in, fan_out: 0.02),
        ("normal:0.5", lambda fan_in, fan_out: 0.5, lambda fan_in, fan_out: 0.5),
    ],
)
def test_init_draws_every_built_layer_from_the_official_distribution(make_trainer, init, hidden_std, output_std):
    """The official codes' initializers (PAPERS.md): each layer's weights have the scheme's std
    (within 4 %: 16k-66k draws per layer), uniform ones stay inside √3 std, biases are 0; the
    output layer of each net differs under he-uniform (tflib's Linear without initialization)."""
    trainer = make_trainer(["veegan"], train={**WIDE, "init": init})
    networks = trainer.models.modules
    assert set(networks) == {"G", "D", "F"}  # VEEGAN's reconstructor is drawn too
    for name, network in networks.items():
        layers = _linears(network)
        for layer in layers:
            fan_out, fan_in = layer.weight.shape
            expected = (output_std if layer is layers[-1] else hidden_std)(fan_in, fan_out)
            weight = layer.weight.detach()
            if weight.numel() >= 16000:
                assert weight.std().item() == pytest.approx(expected, rel=0.04), (name, fan_in, fan_out)
                assert abs(weight.mean().item()) < 0.05 * expected
            if init.endswith("uniform"):
                assert weight.abs().max().item() <= math.sqrt(3) * expected * (1 + 1e-6)
            assert not layer.bias.detach().any()


def test_orthogonal_init_gives_orthogonal_weights_times_the_gain(make_trainer):
    trainer = make_trainer(train={**WIDE, "init": "orthogonal:1.4"})
    for network in (trainer.models.G, trainer.models.D):
        for layer in _linears(network):
            weight = layer.weight.detach().double()
            rows, columns = weight.shape
            gram = weight @ weight.T if rows <= columns else weight.T @ weight
            torch.testing.assert_close(gram, 1.4**2 * torch.eye(min(rows, columns), dtype=torch.float64), atol=1e-5, rtol=0)
            assert not layer.bias.detach().any()


def test_init_reaches_layers_a_plugin_swapped_in_and_keeps_batch_norm_at_one_and_zero(make_trainer):
    trainer = make_trainer(["pacgan"], train={**WIDE, "init": "normal:0.3", "g_mlp_norm": "batch", "d_maxout": 5})
    packed_input = _linears(trainer.models.D)[0]  # PacGAN's widened layer, built after the core's
    assert packed_input.in_features == 4 and packed_input.weight.std().item() == pytest.approx(0.3, rel=0.04)
    norms = [layer for layer in trainer.models.G.modules() if isinstance(layer, nn.BatchNorm1d)]
    assert len(norms) == 2 and all(norm.weight.eq(1).all() and not norm.bias.any() for norm in norms)


def test_the_default_init_is_pytorchs_own_so_stored_runs_still_reproduce(make_trainer):
    trainer = make_trainer(train={"seed": 7})
    torch.manual_seed(7)
    reference = build_generator(trainer.train, (2,))
    for expected, actual in zip(reference.state_dict().values(), trainer.models.G.state_dict().values()):
        assert torch.equal(expected, actual)


def test_init_leaves_the_networks_a_user_gave_alone(make_trainer):
    torch.manual_seed(0)
    given = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
    before = copy.deepcopy(given.state_dict())
    trainer = make_trainer(train={"init": "normal:0.3"}, generator=given)
    for name, value in trainer.models.G.state_dict().items():
        assert torch.equal(value, before[name])
    assert _linears(trainer.models.D)[0].bias.eq(0).all()  # the built D was drawn


def test_a_new_round_of_a_meta_algorithm_draws_its_networks_with_the_same_init(make_trainer):
    trainer = make_trainer(train={**WIDE, "init": "normal:0.3"})
    with torch.no_grad():
        for parameter in trainer.models.G.parameters():
            parameter.fill_(5.0)
    trainer.reinitialize("G")
    hidden = _linears(trainer.models.G)[1]
    assert hidden.weight.std().item() == pytest.approx(0.3, rel=0.04) and not hidden.bias.any()


@pytest.mark.parametrize(
    "value, message",
    [
        ("kaiming", "unknown scheme 'kaiming': choose one of torch, xavier-uniform, he-uniform, orthogonal, normal"),
        ("torch:2", "torch takes no parameter"),
        ("orthogonal:wide", "train.init='orthogonal:wide': expected a number after the colon, e.g. orthogonal:1.0"),
        ("normal:-0.02", "train.init='normal:-0.02': the number after the colon must be positive, e.g. normal:0.02"),
        ("normal:nan", "the number after the colon must be positive"),
    ],
)
def test_a_bad_init_is_refused_with_what_to_write(make_trainer, value, message):
    with pytest.raises(GancoreError, match=re.escape(message)) as error:
        make_trainer(train={"init": value})
    assert "\n" not in str(error.value) and "train.init" in str(error.value)


def test_init_draws_the_underlying_weight_of_a_spectrally_normed_layer():
    torch.manual_seed(0)
    D = Discriminator.conv((1, 16, 16), 32, "spectral")
    initialize(D, "normal:0.3")
    layers = [layer for layer in D.modules() if isinstance(layer, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 3 and all(nn.utils.parametrize.is_parametrized(layer, "weight") for layer in layers)
    for layer in layers:
        original = layer.parametrizations.weight.original.detach()
        if original.numel() >= 8000:
            assert original.std().item() == pytest.approx(0.3, rel=0.04)
        assert not layer.bias.detach().any()
