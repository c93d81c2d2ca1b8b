import pytest
import torch
from torch import nn

from checkpoint_helpers import through_disk
from gancore import GancoreError, hookimpl


class StepTaggedG(nn.Module):
    """A 'generator' whose samples say when and from which noise they were made: x = (step, z_0)."""

    def __init__(self):
        super().__init__()
        self.step = 0
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, z):
        return torch.stack([torch.full((len(z),), float(self.step)), z[:, 0]], 1) + 0 * self.unused


class Tagger:
    @hookimpl
    def gancore_build_models(self, models):
        models.G = StepTaggedG()

    @hookimpl
    def gancore_step_start(self, trainer, step):
        trainer.models.G.step = step


class Capture:
    """What D sees after every other plugin (D phase and G phase)."""

    def __init__(self):
        self.seen = []

    @hookimpl(trylast=True)
    def gancore_discriminator_batch(self, batch):
        self.seen.append((batch.phase, batch.step, batch.z.detach().clone(), batch.fake.detach().clone()))


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_replayed_fakes_come_from_earlier_steps_in_the_given_fraction(make_trainer, fraction):
    options = {"replay": {"fraction": fraction, "capacity": 150}}
    trainer = make_trainer(["tagger", "replay", "capture"], extra={"tagger": Tagger, "capture": Capture}, options=options)
    for _ in range(8):  # 64 fakes a step: the buffer of 150 is full after 3 steps, then slots are overwritten
        trainer.train_step()
    replayed_steps = set()
    for phase, step, z, fake in trainer.run.manager.get_plugin("capture").seen:
        assert torch.equal(fake[:, 1], z[:, 0])  # z is swapped with its fake: still the noise that made it
        tags = fake[:, 0]
        old = tags != step
        if phase == "G" or step == 0:
            assert not old.any()  # G's batch is never replayed; the buffer starts empty
            continue
        assert old.sum().item() == round(fraction * 64)
        assert (tags[old] < step).all() and (tags[old] >= 0).all()
        replayed_steps |= set(tags[old].tolist())
    if fraction:
        assert len(replayed_steps) >= 4  # drawn across the history, not just the last batch
    replay = trainer.run.manager.get_plugin("replay")
    if fraction:
        assert replay.size == 150
        assert set(replay.x[:, 0].tolist()) >= {6.0, 7.0}  # every step pushes its fresh fakes
    else:
        assert replay.size == 0


class Weights:
    """The parameters of each player as used in the D update, in the G update, and after the step."""

    def __init__(self):
        self.d_phase, self.g_phase, self.after = {}, {}, {}

    @staticmethod
    def params(trainer):
        return {player: [p.detach().clone() for p in trainer.models.parameters(player)] for player in ("G", "D")}

    @hookimpl(trylast=True)
    def gancore_discriminator_batch(self, trainer, batch):
        (self.d_phase if batch.phase == "D" else self.g_phase).setdefault(batch.step, []).append(self.params(trainer))

    @hookimpl(trylast=True)
    def gancore_step_end(self, trainer, step):
        self.after[step] = self.params(trainer)


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("player", ["G", "D"])
def test_an_old_snapshot_is_swapped_in_frozen_and_the_live_weights_come_back_exactly(make_trainer, player):
    options = {"replay": {"fraction": 0.0, "period": 3, "duration": 2, "snapshot_of": player}}
    trainer = make_trainer(["replay", "weights"], extra={"weights": Weights}, options=options, train={"n_critic": 2})
    weights = trainer.run.manager.get_plugin("weights")
    for _ in range(6):
        trainer.train_step()
    optimizer_before = {k: v.clone() for k, v in trainer.optimizers[player].state_dict()["state"][0].items()}
    trainer.train_step(), trainer.train_step()  # steps 6 and 7: the swap
    optimizer_after = trainer.optimizers[player].state_dict()["state"][0]
    assert optimizer_after.keys() == optimizer_before.keys()
    assert all(torch.equal(optimizer_after[k], v) for k, v in optimizer_before.items())
    trainer.train_step()
    other = "D" if player == "G" else "G"
    snapshot = weights.after[2][player]  # the live weights at the start of step 3, the only snapshot at step 6
    for step in (6, 7):  # the swap: every update of both players sees the frozen snapshot
        for seen in weights.d_phase[step] + weights.g_phase[step]:
            assert same(seen[player], snapshot)
        assert not same(weights.d_phase[step][0][player], weights.after[5][player])
    # the live player was paused, and comes back exactly, optimizer state included
    assert same(weights.after[6][player], weights.after[5][player])
    assert same(weights.after[7][player], weights.after[5][player])
    # ... while the other player trained against the snapshot
    assert not same(weights.after[7][other], weights.after[5][other])
    # outside the swap everything trains as usual
    assert same(weights.d_phase[8][0][player], weights.after[7][player])
    assert not same(weights.after[8][player], weights.after[7][player])
    replay = trainer.run.manager.get_plugin("replay")
    assert replay.active is None and len(replay.snapshots) == 2  # taken at steps 3 and 6
    assert same(replay.snapshots[0][player].values(), snapshot)


def run(trainer, n):
    for _ in range(n):
        trainer.train_step()
    return trainer


def test_checkpoint_and_resume_continue_identically(make_trainer):
    # buffer overwriting slots, snapshots of D every 3 steps swapped in for 2: step 7 is inside a swap window
    options = {"replay": {"fraction": 0.5, "capacity": 100, "period": 3, "duration": 2, "snapshots": 2, "snapshot_of": "D"}}
    straight = run(make_trainer(["replay"], options=options), 14)
    first = run(make_trainer(["replay"], options=options), 7)
    assert first.run.manager.get_plugin("replay").active is not None
    second = make_trainer(["replay"], options=options)
    second.load_state_dict(through_disk(first.state_dict()))
    run(second, 7)
    for player in ("G", "D"):
        assert same(list(straight.models.parameters(player)), list(second.models.parameters(player)))
    a, b = (t.run.manager.get_plugin("replay") for t in (straight, second))
    assert a.size == b.size == 100 and torch.equal(a.x, b.x) and torch.equal(a.z, b.z)
    assert len(a.snapshots) == len(b.snapshots) == 2
    assert all(same(x["D"].values(), y["D"].values()) for x, y in zip(a.snapshots, b.snapshots))
    assert torch.equal(straight.noise(3), second.noise(3))


def test_bad_options_are_one_line_errors(make_trainer):
    with pytest.raises(GancoreError, match=r"replay.fraction=1.5 must be between 0 and 1"):
        make_trainer(["replay"], options={"replay": {"fraction": 1.5}})
    with pytest.raises(GancoreError, match=r"replay.duration=4 must be at most replay.period=3"):
        make_trainer(["replay"], options={"replay": {"period": 3, "duration": 4}})
    with pytest.raises(GancoreError, match="replay.snapshot_of"):
        make_trainer(["replay"], options={"replay": {"snapshot_of": "F"}})
