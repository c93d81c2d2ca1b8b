"""VEEGAN: pairs for the joint critic, the noise autoencoder term, encode, and the reported error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.functional import softplus

from cli_helpers import run_cli
from gancore import GancoreError, hookimpl
from gancore.manager import Catalog
from gancore.plugins.veegan import encode
from gancore.rundir import open_trainer

Z_DIM = 4
CLI_TINY = ["--steps", "20", "--batch-size", "32", "-q", "--device", "cpu", "--set", f"train.z_dim={Z_DIM}",
            "--set", "train.g_width=16", "--set", "train.d_width=16", "--set", "train.n_train=300",
            "--set", "train.eval_samples=200", "--set", "train.eval_every=0"]


class Capture:
    """Records, after every other plugin, what the critic is given and G's loss terms."""

    def __init__(self):
        self.batches, self.losses, self.f_grads_after_d = [], [], []

    @hookimpl(trylast=True)
    def gancore_discriminator_batch(self, trainer, batch):
        G, F = trainer.models.G, trainer.models["F"]
        record = {"phase": batch.phase, "z": batch.z, "real": batch.real, "fake": batch.fake}
        with torch.no_grad():
            record["G(z)"] = G(batch.z)
            if batch.real is not None:
                record["F(x)"] = F.distribution(batch.real[:, Z_DIM:])
        if batch.phase == "G":  # G's gradient reaches the fake pair (kept for the update)
            grads = torch.autograd.grad(batch.fake.sum(), list(G.parameters()), retain_graph=True)
            record["G grad norm"] = sum(float(g.norm()) for g in grads)
        self.batches.append(record)

    @hookimpl(trylast=True)
    def gancore_generator_loss(self, trainer, batch, fake, terms):
        G, F = trainer.models.G, trainer.models["F"]
        recon = terms["reconstruction"]
        g_grads = torch.autograd.grad(recon, list(G.parameters()), retain_graph=True)
        f_grads = torch.autograd.grad(recon, list(F.parameters()), retain_graph=True)
        with torch.no_grad():
            out = F.net(G(batch.z))  # the reconstructor's raw outputs: μ, then log σ if learned
            mean, log_sigma = out[:, :Z_DIM], (out[:, Z_DIM:] if out.shape[1] > Z_DIM else torch.zeros_like(out))
            squared = (batch.z - mean) ** 2
            expected = {"unit": squared.sum(dim=1).mean(),
                        "learned": (squared / (2 * torch.exp(log_sigma) ** 2) + log_sigma).sum(dim=1).mean()}
        self.losses.append({
            "terms": {name: value.detach() for name, value in terms.items()},
            "logits": fake.logits.detach(),
            "expected_reconstruction": expected,
            "G grads": [float(g.norm()) for g in g_grads],
            "F grads": [float(g.norm()) for g in f_grads],
        })

    @hookimpl
    def gancore_after_optimizer_step(self, trainer, player):
        if player == "D":
            self.f_grads_after_d.append([p.grad for p in trainer.models["F"].parameters()])


def test_the_joint_critic_gets_z_x_pairs_in_both_phases(make_trainer):
    trainer = make_trainer(["veegan", "capture"], extra={"capture": Capture})
    capture = trainer.run.manager.get_plugin("capture")
    seen_by_d = []
    trainer.models.D.register_forward_pre_hook(lambda module, args: seen_by_d.append(args[0]))
    assert [m.in_features for m in trainer.models.D.modules() if isinstance(m, torch.nn.Linear)][0] == Z_DIM + 2  # (z, x) pairs of ring8
    trainer.train_step()
    trainer.train_step()
    d_batch, g_batch = capture.batches[0], capture.batches[1]
    assert [b["phase"] for b in capture.batches] == ["D", "G", "D", "G"]
    # D phase: real = (a sample of F(x) = N(μ(x), σ(x)²), detached; x) with x training points,
    # fake = (z, G(z)); z first
    real, fake = d_batch["real"], d_batch["fake"]
    assert real.shape == fake.shape == (64, Z_DIM + 2)
    x = real[:, Z_DIM:]
    assert (x[:, None, :] == trainer.dataset.points[None]).all(dim=2).any(dim=1).all()  # every x is a training point
    mean, log_sigma = d_batch["F(x)"]
    standardized = (real[:, :Z_DIM] - mean) / log_sigma.exp()  # the sample's noise: N(0, 1), 256 values
    assert abs(standardized.mean().item()) < 0.25 and 0.8 < standardized.std().item() < 1.2
    assert not real.requires_grad and real.grad_fn is None  # F(x) is detached: D's loss never trains F
    assert all(grad is None for grad in capture.f_grads_after_d[0])  # nor did D's first update reach F
    assert torch.equal(fake[:, :Z_DIM], d_batch["z"]) and torch.equal(fake[:, Z_DIM:], d_batch["G(z)"])
    assert not fake.requires_grad
    # G phase: fake = (z, G(z)) still carrying G's gradient, no real batch
    fake = g_batch["fake"]
    assert g_batch["real"] is None and fake.requires_grad and g_batch["G grad norm"] > 0
    assert torch.equal(fake[:, :Z_DIM], g_batch["z"]) and torch.allclose(fake[:, Z_DIM:], g_batch["G(z)"])
    # and that is exactly what the critic is called on: real, fake (D phase), fake (G phase)
    assert torch.equal(seen_by_d[0], real) and torch.equal(seen_by_d[1], d_batch["fake"]) and seen_by_d[2] is g_batch["fake"]


@pytest.mark.parametrize("scale", ["learned", "unit"])
def test_reconstruction_term_is_the_formula_and_trains_both_g_and_f(make_trainer, scale):
    trainer = make_trainer(["veegan", "capture"], extra={"capture": Capture}, options={"veegan": {"weight": 0.5, "scale": scale}})
    capture = trainer.run.manager.get_plugin("capture")
    for _ in range(3):
        trainer.train_step()
    for record in capture.losses:
        terms = record["terms"]
        assert set(terms) == {"adversarial", "reconstruction"}
        assert terms["reconstruction"].item() == pytest.approx(0.5 * record["expected_reconstruction"][scale].item(), rel=1e-5)
        assert terms["adversarial"].item() == pytest.approx(-record["logits"].mean().item(), rel=1e-5)  # VEEGAN's KL estimate
        assert all(norm > 0 for norm in record["G grads"]) and all(norm > 0 for norm in record["F grads"])
    assert trainer.models.players["F"] == "G"
    assert {id(p) for p in trainer.models["F"].parameters()} <= {id(p) for group in trainer.optimizers["G"].param_groups for p in group["params"]}


def test_core_adversarial_option_keeps_the_loss_family(make_trainer):
    trainer = make_trainer(["veegan", "capture"], extra={"capture": Capture}, options={"veegan": {"adversarial": "core"}})
    trainer.train_step()
    record = trainer.run.manager.get_plugin("capture").losses[0]
    assert record["terms"]["adversarial"].item() == pytest.approx(softplus(-record["logits"]).mean().item(), rel=1e-5)


def test_invalid_weight_is_a_one_line_error(make_trainer):
    with pytest.raises(GancoreError, match=r"^veegan\.weight=0: must be positive"):
        make_trainer(["veegan"], options={"veegan": {"weight": 0}})


def test_short_run_reports_a_falling_reconstruction_error(make_trainer):
    trainer = make_trainer(["veegan"], train={"steps": 150})
    before = trainer.evaluate()["reconstruction_error"]
    summary = trainer.fit()
    after = summary["reconstruction_error"]
    # the reported value is ‖z − F(G(z))‖² on fresh noise: compare with a large independent estimate
    z = torch.randn(20000, Z_DIM, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        independent = ((z - trainer.models["F"](trainer.models.G(z))) ** 2).sum(dim=1).mean().item()
    assert after == pytest.approx(independent, rel=0.1)
    assert summary["reconstruction_error_relative"] == pytest.approx(independent / (z**2).sum(dim=1).mean().item(), rel=0.1)
    assert before > 3.0  # an untrained F(G(z)) is near constant: about E‖z‖² = z_dim = 4
    assert after < 0.8 * before


def test_encode_maps_points_through_the_saved_reconstructor(capsys, tmp_path):
    assert run_cli(capsys, "train", *CLI_TINY, "--plugin", "veegan", "--out", str(tmp_path))[0] == 0
    run = tmp_path / "ring8-veegan-s0"
    points = np.random.default_rng(0).normal(size=(7, 2)).astype(np.float32)
    z = encode(run, points)
    trainer = open_trainer(run, Catalog.installed())
    with torch.no_grad():
        expected = trainer.models["F"](torch.from_numpy(points)).numpy()
    assert z.shape == (7, Z_DIM) and z.dtype == np.float32
    np.testing.assert_array_equal(z, expected)

    data, out = tmp_path / "points.npy", tmp_path / "z.npy"
    np.save(data, points)
    code, stdout, err = run_cli(capsys, "encode", str(run), "--data", str(data), "--out", str(out))
    assert code == 0, err
    np.testing.assert_array_equal(np.load(out), expected)
    code, _, err = run_cli(capsys, "encode", str(run), "--data", str(data), "--out", str(out))
    assert code == 2 and "exists already" in err and len(err.strip().splitlines()) == 1

    np.save(tmp_path / "wide.npy", np.zeros((3, 5)))
    code, _, err = run_cli(capsys, "encode", str(run), "--data", str(tmp_path / "wide.npy"), "--out", str(tmp_path / "w.npy"))
    assert code == 2 and "5 columns" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "w.npy").exists()

    assert run_cli(capsys, "train", *CLI_TINY, "--out", str(tmp_path))[0] == 0
    code, _, err = run_cli(capsys, "encode", str(tmp_path / "ring8-vanilla-s0"), "--data", str(data), "--out", str(tmp_path / "v.npy"))
    assert code == 2 and "not trained with --plugin veegan" in err


def linears(net):
    return [m for m in net.modules() if isinstance(m, torch.nn.Linear)]


def test_extra_noise_is_read_by_g_but_neither_reconstructed_nor_paired(make_trainer):
    """The official code's G reads 254 reconstructed noise values plus 1 eps that F and the critic never see."""
    trainer = make_trainer(["veegan"], options={"veegan": {"extra_noise": 1, "scale": "unit"}})
    F, D, G = trainer.models["F"], trainer.models.D, trainer.models.G
    assert linears(G)[0].in_features == Z_DIM  # G reads all of z
    assert linears(F)[-1].out_features == Z_DIM - 1 and linears(D)[0].in_features == Z_DIM - 1 + 2
    seen = []
    D.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    recorded = {}

    class Record:
        @hookimpl(trylast=True)
        def gancore_generator_loss(self, trainer, batch, fake, terms):
            with torch.no_grad():
                error = ((batch.z[:, :Z_DIM - 1] - F(G(batch.z))) ** 2).sum(dim=1).mean()
            recorded.update(term=float(terms["reconstruction"]), expected=float(error), z=batch.z)

    trainer.run.manager.register(Record(), "record")
    trainer.train_step()
    assert recorded["term"] == pytest.approx(recorded["expected"], rel=1e-5)  # ‖z[:, :-1] − μ(G(z))‖², the last value left out
    g_pair = seen[-1]  # the G phase's (z without its eps, G(z))
    assert g_pair.shape[1] == Z_DIM - 1 + 2 and torch.equal(g_pair[:, :Z_DIM - 1], recorded["z"][:, :Z_DIM - 1])
    with pytest.raises(GancoreError, match=r"^veegan\.extra_noise=4 must be below train\.z_dim=4"):
        make_trainer(["veegan"], options={"veegan": {"extra_noise": Z_DIM}})
