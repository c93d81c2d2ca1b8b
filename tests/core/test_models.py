import pytest
import torch
from torch import nn

from gancore import GancoreError
from gancore.models import Discriminator, Maxout


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
