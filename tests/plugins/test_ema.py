"""EMA: the average follows its recursion (also across replay's swaps), training is unchanged,
samples come from the average, and a resumed run continues identically."""
import pytest
import torch

from checkpoint_helpers import through_disk
from gancore import GancoreError, hookimpl


class LiveWeights:
    """Records G's live weights at the start of every step, before anything swaps them."""

    def __init__(self):
        self.seen = []

    @hookimpl(tryfirst=True)
    def gancore_step_start(self, trainer):
        self.seen.append([p.detach().double().clone() for p in trainer.models.G.parameters()])


def run(trainer, n):
    for _ in range(n):
        trainer.train_step()
    return trainer


@pytest.mark.parametrize("swaps", [False, True], ids=["plain", "replay-swapping-old-G-in"])
def test_the_average_follows_its_recursion_over_the_live_weights(make_trainer, swaps):
    decay, start, steps = 0.7, 3, 12
    plugins = ["live", "ema"] + (["replay"] if swaps else [])
    options = {"ema": {"decay": decay, "start": start}}
    if swaps:  # an old G is swapped in for 2 of every 3 steps: the average must skip it
        options["replay"] = {"fraction": 0.0, "period": 3, "duration": 2, "snapshot_of": "G"}
    trainer = run(make_trainer(plugins, extra={"live": LiveWeights}, options=options), steps + 1)
    # the live G after step t is what step t + 1 starts from
    live = trainer.run.manager.get_plugin("live").seen[1:]
    expected = live[start]
    for weights in live[start + 1 : steps + 1]:
        expected = [decay * mean + (1 - decay) * value for mean, value in zip(expected, weights)]
    average = trainer.run.manager.get_plugin("ema").average
    # the average ran one more step (the last, whose live weights nobody recorded); undo it
    last = [p.detach().double() for p in trainer.models.G.parameters()]
    undone = [(mean - (1 - decay) * value) / decay for mean, value in zip(average.parameters(), last)]
    for got, want in zip(undone, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not any(torch.equal(a.double(), b) for a, b in zip(average.parameters(), last))


def test_training_is_unchanged_and_samples_come_from_the_average(make_trainer):
    plain = run(make_trainer([]), 6)
    averaged = make_trainer(["ema"], options={"ema": {"start": 2}})
    ema = averaged.run.manager.get_plugin("ema")
    run(averaged, 2)
    assert ema.average is None  # before start: the live G is sampled
    torch.testing.assert_close(averaged.sample(50, torch.Generator().manual_seed(1)), averaged.models.G(torch.randn(50, 4, generator=torch.Generator().manual_seed(1))))
    run(averaged, 4)
    for player in ("G", "D"):
        for a, b in zip(plain.models.parameters(player), averaged.models.parameters(player)):
            assert torch.equal(a, b)
    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    samples = averaged.sample(50, torch.Generator().manual_seed(1))
    torch.testing.assert_close(samples, ema.average(z))
    assert not torch.allclose(samples, averaged.models.G(z))


def test_checkpoint_and_resume_continue_identically(make_trainer):
    options = {"ema": {"decay": 0.8, "start": 2}}
    straight = run(make_trainer(["ema"], options=options), 8)
    first = run(make_trainer(["ema"], options=options), 4)
    second = make_trainer(["ema"], options=options)
    second.load_state_dict(through_disk(first.state_dict()))
    run(second, 4)
    a, b = (t.run.manager.get_plugin("ema").average for t in (straight, second))
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


def test_a_state_from_before_start_drops_a_later_average(make_trainer):
    trainer = make_trainer(["ema"], options={"ema": {"start": 3}})
    early = trainer.state_dict()
    run(trainer, 5)
    assert trainer.run.manager.get_plugin("ema").average is not None
    trainer.load_state_dict(early)  # as a rollback does
    assert trainer.run.manager.get_plugin("ema").average is None


@pytest.mark.parametrize("decay", [1.0, 1.5])
def test_a_decay_of_one_or_more_is_a_one_line_error(make_trainer, decay):
    with pytest.raises(GancoreError, match=rf"ema.decay={decay:g} must be below 1"):
        make_trainer(["ema"], options={"ema": {"decay": decay}})


def test_evaluations_also_score_the_live_generator_on_the_same_noise(make_trainer):
    trainer = run(make_trainer(["ema"], options={"ema": {"decay": 0.9}}), 5)
    # a score that tells the samples apart exactly (a tiny run captures no mode of ring8)
    trainer.dataset.score = lambda samples: {"mean": float(samples.double().mean()), "per_mode": [1, 2]}
    metrics = trainer.evaluate()
    z = torch.randn(trainer.eval_samples, 4, generator=trainer.evaluation_generator())
    with torch.no_grad():
        live, averaged = trainer.models.G(z), trainer.run.manager.get_plugin("ema").average(z)
    assert metrics["live_mean"] == float(live.double().mean()) and metrics["mean"] == float(averaged.double().mean())
    assert metrics["live_mean"] != metrics["mean"]
    assert "live_per_mode" not in metrics  # lists stay the averaged G's only


def test_batch_norm_statistics_are_copied_from_the_live_generator_not_averaged(make_trainer):
    trainer = run(make_trainer(["ema"], train={"g_mlp_norm": "batch"}, options={"ema": {"decay": 0.5}}), 4)
    average = trainer.run.manager.get_plugin("ema").average
    buffers = [(a, b) for a, b in zip(average.buffers(), trainer.models.G.buffers()) if a.is_floating_point()]
    assert buffers and all(torch.equal(a, b) for a, b in buffers)
    assert not all(torch.equal(a, b) for a, b in zip(average.parameters(), trainer.models.G.parameters()))
