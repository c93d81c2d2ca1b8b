"""WGAN (weight clipping): every D parameter within [−c, c] after every D update; suggested settings."""
import pytest

from gancore import GancoreError, hookimpl


class CheckClipped:
    """After each optimizer step (after wgan's clipping): the largest |w| of D's parameters."""

    def __init__(self):
        self.largest = []

    @hookimpl(trylast=True)
    def gancore_after_optimizer_step(self, trainer, player):
        if player == "D":
            self.largest.append(max(p.abs().max().item() for p in trainer.models.parameters("D")))


@pytest.mark.parametrize("clip", [0.01, 0.05])
def test_d_parameters_stay_in_the_box_after_every_d_update(make_trainer, clip):
    trainer = make_trainer(["wgan", "check"], extra={"check": CheckClipped}, options={"wgan": {"clip": clip}})
    for _ in range(3):
        trainer.train_step()
    largest = trainer.run.manager.get_plugin("check").largest
    assert len(largest) == 15  # n_critic = 5
    assert all(value == pytest.approx(clip, rel=1e-6) for value in largest)  # at the bound: the clip is active
    assert all(p.abs().max() <= clip for p in trainer.models.D.parameters())
    G_largest = max(p.abs().max().item() for p in trainer.models.G.parameters())
    assert G_largest > clip  # G is not clipped


def test_suggested_settings_and_explicit_ones_win(make_trainer):
    assert (make_trainer(["wgan"]).train.loss, make_trainer(["wgan"]).train.n_critic) == ("wasserstein", 5)
    trainer = make_trainer(["wgan"], train={"n_critic": 3})
    assert (trainer.train.loss, trainer.train.n_critic) == ("wasserstein", 3)


@pytest.mark.parametrize("clip", [0, -0.1])
def test_clip_must_be_positive(make_trainer, clip):
    with pytest.raises(GancoreError, match="wgan.clip") as error:
        make_trainer(["wgan"], options={"wgan": {"clip": clip}})
    assert "\n" not in str(error.value)


class DLosses:
    def __init__(self):
        self.pairs = []

    @hookimpl
    def gancore_discriminator_loss(self, real, fake, terms):
        self.pairs.append((terms["adversarial"].item(), (fake.logits.mean() - real.logits.mean()).item()))


def test_d_loss_is_the_wasserstein_critic_loss(make_trainer):
    trainer = make_trainer(["wgan", "d-losses"], extra={"d-losses": DLosses})
    trainer.train_step()
    pairs = trainer.run.manager.get_plugin("d-losses").pairs
    assert len(pairs) == 5 and all(loss == pytest.approx(gap, abs=1e-7) for loss, gap in pairs)
