import pytest
import torch

from gancore import hookimpl


class Capture:
    """Records the batch D sees after every other plugin changed it."""

    def __init__(self):
        self.seen = []

    @hookimpl(trylast=True)
    def gancore_discriminator_batch(self, batch):
        self.seen.append((batch.phase, batch.step, batch.real, batch.fake))


class CleanCopy:
    """Records the batch before instance noise (runs first)."""

    def __init__(self):
        self.seen = []

    @hookimpl(tryfirst=True)
    def gancore_discriminator_batch(self, batch):
        self.seen.append((None if batch.real is None else batch.real.clone(), batch.fake.detach().clone()))


def test_noise_std_is_annealed_linearly_to_zero(make_trainer):
    trainer = make_trainer(
        ["clean", "instance-noise", "capture"],
        extra={"clean": CleanCopy, "capture": Capture},
        train={"batch_size": 4000},
        options={"instance-noise": {"std": 0.5, "anneal_steps": 4}},
    )
    clean, capture = (trainer.run.manager.get_plugin(name) for name in ("clean", "capture"))
    for _ in range(5):
        trainer.train_step()
    for (real, fake), (phase, step, noisy_real, noisy_fake) in zip(clean.seen, capture.seen):
        expected = 0.5 * max(0.0, 1 - step / 4)
        assert (noisy_fake - fake).detach().std().item() == pytest.approx(expected, abs=0.02)
        if phase == "D":
            assert (noisy_real - real).std().item() == pytest.approx(expected, abs=0.02)
        else:
            assert noisy_real is None and noisy_fake.requires_grad  # G's gradient still flows
    assert capture.seen[-1][1] == 4 and torch.equal(capture.seen[-1][3], clean.seen[-1][1])


def test_default_anneal_spans_the_run(make_trainer):
    trainer = make_trainer(["instance-noise"], train={"steps": 40})
    plugin = trainer.run.manager.get_plugin("instance-noise")
    assert plugin.scale(0) == pytest.approx(0.1)
    assert plugin.scale(20) == pytest.approx(0.05)
    assert plugin.scale(40) == 0.0
