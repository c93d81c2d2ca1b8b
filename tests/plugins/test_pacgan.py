import pytest
import torch
from torch import nn

from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from gancore import GancoreError, hookimpl
from gancore.models import Discriminator
from gancore.plugins.pacgan import PacGAN, Packed
from gancore.trainer import Models


def first_linear(module):
    return next(layer for layer in module.modules() if isinstance(layer, nn.Linear))


class Shapes:
    """Records the shapes of what D returns in every D update."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def gancore_discriminator_loss(self, batch, real, fake):
        self.seen.append((batch.real.shape, batch.fake.shape, real.logits.shape, fake.logits.shape, real.features.shape))


@pytest.mark.parametrize("m", [2, 4])
def test_d_reads_packs_of_m_samples(make_trainer, m):
    trainer = make_trainer(["pacgan", "shapes"], extra={"shapes": Shapes}, options={"pacgan": {"m": m}})
    D = trainer.models.D
    assert isinstance(D, Packed) and D.m == m
    first = first_linear(D.inner.body)
    assert isinstance(first, nn.Linear) and first.in_features == m * 2 and first.out_features == 16
    # pack k is samples k·m … k·m+m−1 concatenated
    x = trainer.real_batch()
    out = D(x)
    assert out.logits.shape == (64 // m,)
    packs = torch.stack([torch.cat([x[k * m + i] for i in range(m)]) for k in range(64 // m)])
    assert torch.equal(out.logits, D.inner(packs).logits)
    trainer.train_step()
    shapes = trainer.run.manager.get_plugin("shapes").seen
    assert shapes == [((64, 2), (64, 2), (64 // m,), (64 // m,), (64 // m, 16))]
    assert torch.isfinite(trainer.last_logs["loss_D/adversarial"])


def test_batch_size_must_be_a_multiple_of_m(make_trainer):
    with pytest.raises(GancoreError, match=r"pacgan.m=3 must divide train.batch_size=64") as error:
        make_trainer(["pacgan"], options={"pacgan": {"m": 3}})
    assert "\n" not in str(error.value)
    make_trainer(["pacgan"], options={"pacgan": {"m": 3}}, train={"batch_size": 63})
    with pytest.raises(GancoreError, match="pacgan.m"):
        make_trainer(["pacgan"], options={"pacgan": {"m": 0}})


def test_packed_d_refuses_a_batch_it_cannot_pack(make_trainer):
    D = make_trainer(["pacgan"]).models.D
    with pytest.raises(GancoreError, match="batch of 5, not a multiple of 2"):
        D(torch.zeros(5, 2))


def test_packs_the_input_layer_after_another_plugin_changed_the_head(make_trainer):
    trainer = make_trainer(["minibatch-discrimination", "pacgan"], train={"batch_size": 16})
    D = trainer.models.D
    assert first_linear(D.inner.body).in_features == 4 and D.inner.head[1].in_features == 16 + 16
    assert D(trainer.real_batch()).logits.shape == (8,)


def test_images_are_packed_along_channels_and_spectral_norm_is_kept():
    torch.manual_seed(0)
    conv = spectral_norm(nn.Conv2d(3, 4, 4, 2, 1))
    D = Discriminator(nn.Sequential(conv, nn.LeakyReLU(0.2), nn.Flatten()), nn.Linear(4 * 4 * 4, 1))
    models = Models(nn.Linear(1, 1), D)
    plugin = PacGAN()
    plugin.m = 2
    plugin.gancore_build_models(models=models)
    packed = models.D
    widened = packed.inner.body[0]
    assert isinstance(packed, Packed) and packed.channels
    assert isinstance(widened, nn.Conv2d) and widened.in_channels == 6 and widened.out_channels == 4
    assert (widened.kernel_size, widened.stride, widened.padding) == ((4, 4), (2, 2), (1, 1))
    assert parametrize.is_parametrized(widened, "weight")
    x = torch.randn(6, 3, 8, 8)
    packed.eval()  # spectral norm's power iteration frozen: two calls give the same numbers
    out = packed(x)
    assert out.logits.shape == (3,)
    packs = torch.stack([torch.cat([x[2 * k], x[2 * k + 1]]) for k in range(3)])  # (3, 6, 8, 8)
    assert torch.equal(out.logits, packed.inner(packs).logits)


def test_a_d_it_cannot_widen_is_refused(make_trainer):
    class GroupedD:
        @hookimpl
        def gancore_build_models(self, models):
            models.D = Discriminator(nn.Sequential(nn.Unflatten(1, (2, 1)), nn.Conv1d(2, 16, 1, groups=2), nn.Flatten()), nn.Linear(16, 1))

    with pytest.raises(GancoreError, match="pacgan can widen a plain convolution only"):
        make_trainer(["grouped", "pacgan"], extra={"grouped": GroupedD})
