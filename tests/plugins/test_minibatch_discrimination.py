import pytest
import torch
from torch import nn

from gancore import hookimpl
from gancore.plugins.minibatch_discrimination import MinibatchFeatures


def naive_loops(M: torch.Tensor, exclude_self: bool) -> torch.Tensor:
    """o_b(i) = Σ_j exp(−Σ_c |M_ibc − M_jbc|), written out term by term in float64."""
    N, B, C = M.shape
    o = torch.zeros(N, B, dtype=torch.float64)
    for i in range(N):
        for j in range(N):
            if exclude_self and i == j:
                continue
            for b in range(B):
                o[i, b] += torch.exp(-sum(abs(M[i, b, c].double() - M[j, b, c].double()) for c in range(C)))
    return o


def naive_broadcast(M: torch.Tensor, exclude_self: bool) -> torch.Tensor:
    """The same as an explicit (N, N, B, C) tensor, float64."""
    M = M.double()
    K = (M[:, None] - M[None, :]).abs().sum(-1).neg().exp()
    if exclude_self:
        K = K * (1 - torch.eye(len(M), dtype=K.dtype))[:, :, None]
    return K.sum(1)


@pytest.mark.parametrize("exclude_self", [True, False])
def test_layer_output_is_the_paper_formula_in_float64(exclude_self):
    torch.manual_seed(0)
    layer = MinibatchFeatures(in_features=3, kernels=4, kernel_dim=2, exclude_self=exclude_self).double()
    f = torch.randn(6, 3, dtype=torch.float64)
    out = layer(f)
    M = (f @ layer.T).reshape(6, 4, 2)
    assert out.shape == (6, 3 + 4)
    assert torch.equal(out[:, :3], f)
    torch.testing.assert_close(out[:, 3:], naive_loops(M, exclude_self), rtol=1e-12, atol=1e-12)
    # a one-sample batch has no other sample: Σ over j ≠ i is empty
    assert torch.equal(layer(f[:1])[:, 3:], torch.zeros(1, 4, dtype=torch.float64) + (0 if exclude_self else 1))


def test_heads_input_grows_by_b_and_d_starts_as_the_plain_d(make_trainer):
    plain = make_trainer([]).models.D
    trainer = make_trainer(["minibatch-discrimination"], options={"minibatch-discrimination": {"kernels": 7, "kernel_dim": 3}})
    D = trainer.models.D
    layer, head = D.head
    assert isinstance(layer, MinibatchFeatures) and isinstance(head, nn.Linear)
    assert plain.head.in_features == 16 and head.in_features == 16 + 7 and head.out_features == 1
    assert layer.T.shape == (16, 7 * 3)
    # the T parameter and the wider head are trained by D's optimizer
    trained = {id(p) for group in trainer.optimizers["D"].param_groups for p in group["params"]}
    assert id(layer.T) in trained and id(head.weight) in trained
    # zero weights on o and the old head's weights on f: at initialization the logits are the plain D's
    x = trainer.real_batch(32)
    torch.testing.assert_close(D(x).logits, plain(x).logits)
    assert torch.equal(D(x).features, plain(x).features)


def test_whole_d_matches_a_float64_recomputation(make_trainer):
    trainer = make_trainer(["minibatch-discrimination"], train={"batch_size": 24})
    for _ in range(3):  # move off the initialization (zero weights on o)
        trainer.train_step()
    D = trainer.models.D
    layer, head = D.head
    x = trainer.real_batch()
    f = D.body(x).double()
    o = naive_broadcast((f @ layer.T.double()).reshape(24, 16, 5), exclude_self=True)
    expected = torch.cat([f, o], 1) @ head.weight.double().t() + head.bias.double()
    assert head.weight[0, 16:].abs().sum() > 0  # o really contributes
    torch.testing.assert_close(D(x).logits.double(), expected.squeeze(-1), rtol=1e-5, atol=1e-5)


class Calls:
    """Records what D is shown in each D update and every call of the minibatch layer."""

    def __init__(self):
        self.batches, self.calls, self.reals = [], [], []

    @hookimpl
    def gancore_build_models(self, models):
        layer = models.D.head[0]
        layer.register_forward_hook(lambda module, inputs, output: self.calls.append((inputs[0].detach(), output.detach(), module.T.detach().clone())))

    @hookimpl(trylast=True)
    def gancore_discriminator_batch(self, trainer, batch):
        if batch.phase == "D":
            self.reals.append(batch.real)
            with torch.no_grad():
                self.batches.append((trainer.models.D.body(batch.real), trainer.models.D.body(batch.fake)))


def test_real_and_fake_are_separate_minibatches(make_trainer):
    trainer = make_trainer(["minibatch-discrimination", "calls"], extra={"calls": Calls}, train={"batch_size": 16, "n_critic": 2})
    calls = trainer.run.manager.get_plugin("calls")
    trainer.train_step()
    trainer.train_step()
    # per step: (real, fake) for each of 2 D updates, then G's fake
    assert len(calls.calls) == 2 * (2 * 2 + 1)
    d_calls = [c for k, c in enumerate(calls.calls) if k % 5 != 4]
    for (real_f, fake_f), (call_real, call_fake) in zip(calls.batches, zip(d_calls[0::2], d_calls[1::2])):
        assert torch.equal(call_real[0], real_f) and torch.equal(call_fake[0], fake_f)
    for f, out, T in calls.calls:
        assert len(f) == 16  # one batch per call, never real and fake together
        expected = naive_broadcast((f @ T).reshape(16, 16, 5), exclude_self=True)
        torch.testing.assert_close(out[:, 16:].double(), expected, rtol=1e-5, atol=1e-5)


def test_a_spectral_normed_head_stays_spectral_normed():
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm

    from gancore.models import Discriminator
    from gancore.plugins.minibatch_discrimination import MinibatchDiscrimination
    from gancore.trainer import Models

    torch.manual_seed(0)
    D = Discriminator(nn.Sequential(nn.Linear(2, 8), nn.ReLU()), spectral_norm(nn.Linear(8, 1)))
    original = D.head.parametrizations.weight.original.detach().clone()
    MinibatchDiscrimination().gancore_build_models(models=Models(nn.Linear(1, 1), D))
    layer, head = D.head
    assert isinstance(layer, MinibatchFeatures) and parametrize.is_parametrized(head, "weight")
    assert torch.equal(head.parametrizations.weight.original[:, :8], original)
    assert torch.equal(head.parametrizations.weight.original[:, 8:], torch.zeros(1, 16))
    assert D(torch.randn(5, 2)).logits.shape == (5,)


def test_training_with_the_fused_cpu_kernel_follows_the_reference(make_trainer, monkeypatch):
    # the fused C kernel is checked op by op in tests/kernels; here, that a whole training run on it
    # stays on the reference's trajectory (the mode benchmark's rows train on it)
    from gancore import kernels

    if kernels._cpu.library() is None:
        pytest.skip("the fused CPU kernel could not be compiled here")

    def run():
        trainer = make_trainer(["minibatch-discrimination"], train={"batch_size": 64, "seed": 3})
        for _ in range(30):
            trainer.train_step()
        return [p.detach().clone() for net in (trainer.models.D, trainer.models.G) for p in net.parameters()]

    fused = run()
    monkeypatch.setattr(kernels._cpu, "library", lambda: None)  # "auto" falls back to the torch reference
    reference = run()
    # the two sum in different orders: not bit-identical (so the fused path did run), but close
    assert not all(torch.equal(a, b) for a, b in zip(fused, reference))
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --- init = "data": improved-gan's weight-normed layer, scaled and centred on the first real batch ---


def mean_nearest_l1(M: torch.Tensor) -> torch.Tensor:
    """Per kernel, the mean over i of min_{j≠i} Σ_c |M_ibc − M_jbc|, float64 broadcasting."""
    M = M.double()
    D = (M[:, None] - M[None, :]).abs().sum(-1)  # (N, N, B)
    D = D + torch.diag(torch.full((len(M),), float("inf"), dtype=D.dtype))[:, :, None]
    return D.min(1).values.mean(0)


def data_initialized_trainer(make_trainer, **train):
    from gancore.trainer import Batch

    trainer = make_trainer(["minibatch-discrimination"], options={"minibatch-discrimination": {"init": "data"}}, train=train)
    layer = trainer.models.D.head[0]
    assert layer.data_init and not bool(layer.initialized)
    real = trainer.real_batch()
    z = trainer.noise()
    trainer.hook.gancore_discriminator_batch(trainer=trainer, batch=Batch("D", 0, z, trainer.models.G(z).detach(), real))
    return trainer, layer, real


def test_data_init_sets_nearest_neighbour_distance_2_and_centres_o_on_the_real_batch(make_trainer):
    trainer, layer, real = data_initialized_trainer(make_trainer, batch_size=48)
    assert bool(layer.initialized)
    f = trainer.models.D.body(real).detach().double()
    W = layer.T.double() * (layer.log_scale.double().exp() / layer.T.double().norm(dim=0))
    M = (f @ W).reshape(48, 16, 5)
    torch.testing.assert_close(mean_nearest_l1(M), torch.full((16,), 2.0, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    o = naive_broadcast(M, exclude_self=True) + layer.bias.double()
    torch.testing.assert_close(o.mean(0), torch.zeros(16, dtype=torch.float64), rtol=0, atol=1e-5)
    # the layer's own output is that formula, and o is of order 1, not near its ceiling N − 1
    torch.testing.assert_close(layer(f.float())[:, 16:].double(), o, rtol=1e-4, atol=1e-4)  # float32 sums
    assert o.abs().max() < 10


def test_data_init_runs_once_and_a_reset_asks_for_it_again(make_trainer):
    from gancore.trainer import Batch

    trainer, layer, _ = data_initialized_trainer(make_trainer)
    scale, bias = layer.log_scale.detach().clone(), layer.bias.detach().clone()
    trainer.train_step()
    trainer.train_step()
    moved = layer.log_scale.detach().clone()
    assert not torch.equal(moved, scale)  # trained by D's optimizer
    z = trainer.noise()
    trainer.hook.gancore_discriminator_batch(trainer=trainer, batch=Batch("D", 2, z, trainer.models.G(z).detach(), trainer.real_batch()))
    assert torch.equal(layer.log_scale, moved)  # no second initialization
    trainer.reinitialize("D")  # AdaGAN's new round: D starts afresh, and so does its minibatch layer
    assert not bool(layer.initialized) and torch.equal(layer.log_scale, torch.zeros_like(scale)) and torch.equal(layer.bias, torch.zeros_like(bias))
    trainer.train_step()
    assert bool(layer.initialized) and not torch.equal(layer.bias, torch.zeros_like(bias))


def test_data_init_reads_a_batch_normed_d_in_training_mode_and_leaves_its_statistics(make_trainer):
    from gancore.models import Discriminator
    from gancore.trainer import Batch

    class BatchNormedD:
        @hookimpl(tryfirst=True)
        def gancore_build_models(self, models):
            body = nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU())
            models.D = Discriminator(body, nn.Linear(16, 1))

    trainer = make_trainer(["batch-normed-d", "minibatch-discrimination"], extra={"batch-normed-d": BatchNormedD},
                           options={"minibatch-discrimination": {"init": "data"}})
    D = trainer.models.D
    layer = D.head[0]
    statistics = [buffer.clone() for buffer in D.buffers() if buffer is not layer.initialized]
    real = trainer.real_batch()
    z = trainer.noise()
    trainer.hook.gancore_discriminator_batch(trainer=trainer, batch=Batch("D", 0, z, trainer.models.G(z).detach(), real))
    assert bool(layer.initialized) and D.training
    assert all(torch.equal(a, b) for a, b in zip(statistics, [buffer for buffer in D.buffers() if buffer is not layer.initialized]))
    with torch.no_grad():
        f = D.body(real).double()  # training mode: the batch's own statistics, as D trains
    W = layer.T.double() * (layer.log_scale.double().exp() / layer.T.double().norm(dim=0))
    torch.testing.assert_close(mean_nearest_l1((f @ W).reshape(len(f), 16, 5)), torch.full((16,), 2.0, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def test_the_first_training_step_initializes_and_a_resumed_run_does_not_again(make_trainer):
    trainer = make_trainer(["minibatch-discrimination"], options={"minibatch-discrimination": {"init": "data"}})
    trainer.train_step()
    layer = trainer.models.D.head[0]
    assert bool(layer.initialized) and layer.bias.abs().sum() > 0
    state = trainer.state_dict()
    resumed = make_trainer(["minibatch-discrimination"], options={"minibatch-discrimination": {"init": "data"}})
    resumed.load_state_dict(state)
    resumed_layer = resumed.models.D.head[0]
    assert bool(resumed_layer.initialized)
    scale = resumed_layer.log_scale.detach().clone()
    optimizer_steps = [resumed.optimizers["D"].state[p]["step"].item() for p in [resumed_layer.log_scale]]
    resumed.train_step()
    trainer.train_step()
    # the resumed run continues where the first left off: the same update, no new initialization
    assert optimizer_steps == [1]
    assert not torch.equal(resumed_layer.log_scale, scale)
    torch.testing.assert_close(resumed_layer.log_scale, layer.log_scale)


def test_data_init_on_duplicate_features_is_a_one_line_error():
    from gancore import GancoreError

    layer = MinibatchFeatures(in_features=3, kernels=2, kernel_dim=2, data_init=True)
    with pytest.raises(GancoreError, match=r"found no distance .* use minibatch-discrimination.init=normal$"):
        layer.initialize(torch.ones(5, 3))
    assert not bool(layer.initialized)
    with pytest.raises(GancoreError, match=r"at least 2 samples in D's real batch, not 1 .* raise train.batch_size or use minibatch-discrimination.init=normal$"):
        layer.initialize(torch.ones(1, 3))
    with pytest.raises(GancoreError, match="not finite"):
        layer.initialize(torch.tensor([[0.0, 1.0, 2.0], [float("nan"), 0.0, 0.0]]))
    assert not bool(layer.initialized)


def test_an_unknown_init_is_refused_with_the_choices(make_trainer):
    from gancore import GancoreError

    with pytest.raises(GancoreError, match="normal.*data|data.*normal"):
        make_trainer(["minibatch-discrimination"], options={"minibatch-discrimination": {"init": "improved"}})


def test_data_init_refuses_a_d_that_bypasses_the_layer_in_one_line(make_trainer):
    from gancore import GancoreError
    from gancore.models import Discriminator
    from gancore.trainer import Batch

    class ReplacesD:  # after minibatch-discrimination built its layer, D is swapped for one without it
        @hookimpl(trylast=True)
        def gancore_build_models(self, models):
            models.D = Discriminator.mlp(2, 16, 2, "relu")

    trainer = make_trainer(["minibatch-discrimination", "replaces-d"], extra={"replaces-d": ReplacesD},
                           options={"minibatch-discrimination": {"init": "data"}})
    z = trainer.noise()
    with pytest.raises(GancoreError, match=r"^minibatch-discrimination's layer was not called when D read the real batch: a wrapper around D bypasses it$"):
        trainer.hook.gancore_discriminator_batch(trainer=trainer, batch=Batch("D", 0, z, trainer.models.G(z).detach(), trainer.real_batch()))


# --- batches = "joint": every sample against the real and the fake batch of the update ---------


def naive_mean_similarity(Mx: torch.Tensor, Mh: torch.Tensor, same: bool) -> torch.Tensor:
    """mean_{j ∈ H (j ≠ i when H is x's own batch)} exp(−‖Mx_i,b − Mh_j,b‖₁), (N, B), float64."""
    K = (Mx.double()[:, None] - Mh.double()[None, :]).abs().sum(-1).neg().exp()  # (N, |H|, B)
    if same:
        K = K * (1 - torch.eye(len(Mx), dtype=K.dtype))[:, :, None]
        return K.sum(1) / (len(Mx) - 1)
    return K.sum(1) / len(Mh)


def paired_layer(A=4, B=3, C=2):
    body = nn.Sequential(nn.Linear(2, A), nn.Tanh()).double()
    layer = MinibatchFeatures(in_features=A, kernels=B, kernel_dim=C).double()
    layer.pair_with(body)
    return body, layer


def test_joint_features_are_the_mean_similarities_to_each_batch_in_float64():
    torch.manual_seed(1)
    body, layer = paired_layer()
    real, fake, other = torch.randn(7, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    layer.halves = (real, fake)
    project = lambda x: (body(x) @ layer.T).reshape(len(x), 3, 2)
    expected = {
        "real": (real, True, False),   # own batch R: j ≠ i; F: every j
        "fake": (fake, False, True),
        "other": (other, False, False),  # neither (a gradient penalty's interpolates): every j of both
    }
    for name, (x, in_real, in_fake) in expected.items():
        out = layer(body(x))
        assert out.shape == (len(x), 4 + 2 * 3), name
        Mx = project(x)
        torch.testing.assert_close(out[:, 4:7], naive_mean_similarity(Mx, project(real), in_real), rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(out[:, 7:], naive_mean_similarity(Mx, project(fake), in_fake), rtol=1e-10, atol=1e-12, msg=name)


def test_joint_gradients_match_the_float64_formula():
    torch.manual_seed(2)
    body, layer = paired_layer()
    real, fake = torch.randn(6, 2, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64, requires_grad=True)
    layer.halves = (real, fake)
    weights = torch.randn(6, dtype=torch.float64)  # a fixed random linear read-out of o^R, o^F

    def formula():
        project = lambda x: (body(x) @ layer.T).reshape(len(x), 3, 2)
        Mf = project(fake)
        return torch.cat([naive_mean_similarity(Mf, project(real), False), naive_mean_similarity(Mf, Mf, True)], 1)

    results = []
    for features in (lambda: layer(body(fake))[:, 4:], formula):
        (features() @ weights).sum().backward()
        results.append([p.grad.clone() for p in (fake, layer.T, *body.parameters())])
        for p in (fake, layer.T, *body.parameters()):
            p.grad = None
    for kernel, naive in zip(*results):
        torch.testing.assert_close(kernel, naive, rtol=1e-9, atol=1e-12)


def test_joint_outside_an_update_compares_x_with_itself_for_both_features():
    torch.manual_seed(3)
    body, layer = paired_layer()
    x = torch.randn(5, 2, dtype=torch.float64)
    out = layer(body(x))
    Mx = (body(x) @ layer.T).reshape(5, 3, 2)
    torch.testing.assert_close(out[:, 4:7], naive_mean_similarity(Mx, Mx, True))
    torch.testing.assert_close(out[:, 7:], out[:, 4:7])


def test_joint_training_pairs_each_update_with_its_batches_and_releases_them(make_trainer):
    trainer = make_trainer(["minibatch-discrimination", "calls"], extra={"calls": Calls},
                           train={"batch_size": 12, "n_critic": 2},
                           options={"minibatch-discrimination": {"kernels": 3, "kernel_dim": 2, "batches": "joint"}})
    layer, head = trainer.models.D.head
    assert head.in_features == 16 + 2 * 3
    calls = trainer.run.manager.get_plugin("calls")
    plugin = trainer.run.manager.get_plugin("minibatch-discrimination")
    trainer.train_step()
    assert layer.halves is None and layer._body_call is None  # G's fake batch (and its graph) is not kept past the step
    # the check before training, then per D update D(real) and D(fake), each also reading the other
    # batch's features through D.body (not the layer); then G's D(fake)
    D_calls = calls.calls[1:]  # (layer input, layer output, T at the call)
    assert len(D_calls) == 2 * 2 + 1
    for k, (real_f, fake_f) in enumerate(calls.batches):
        for f, own, other, (_, out, T) in ((real_f, "R", fake_f, D_calls[2 * k]), (fake_f, "F", real_f, D_calls[2 * k + 1])):
            M, Mo = (f @ T).reshape(12, 3, 2), (other @ T).reshape(12, 3, 2)
            within, across = naive_mean_similarity(M, M, True), naive_mean_similarity(M, Mo, False)
            expected = torch.cat([within, across] if own == "R" else [across, within], 1)
            torch.testing.assert_close(out[:, 16:].double(), expected, rtol=1e-5, atol=1e-6)
    # G's update compares its fakes with the real batch of the step's last D update (read with D as G sees it)
    g_f, g_out, T = D_calls[-1]
    with torch.no_grad():
        last_real_f = trainer.models.D.body(plugin.last_real)
    M, Mr = (g_f @ T).reshape(12, 3, 2), (last_real_f @ T).reshape(12, 3, 2)
    torch.testing.assert_close(g_out[:, 16:19].double(), naive_mean_similarity(M, Mr, False), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_out[:, 19:].double(), naive_mean_similarity(M, M, True), rtol=1e-5, atol=1e-6)
    assert torch.equal(plugin.last_real, calls.reals[-1])


def test_joint_refuses_a_d_that_reshapes_its_input_before_the_body_in_one_line(make_trainer):
    from gancore import GancoreError

    with pytest.raises(GancoreError, match=r"^minibatch-discrimination.batches=joint needs D to run D.body on its input .*use batches=separate$"):
        make_trainer(["pacgan", "minibatch-discrimination"], options={"minibatch-discrimination": {"batches": "joint"}})


def test_joint_with_data_init_is_refused_in_one_line(make_trainer):
    from gancore import GancoreError

    with pytest.raises(GancoreError, match=r"^minibatch-discrimination: init=data .* init=normal with batches=joint$"):
        make_trainer(["minibatch-discrimination"], options={"minibatch-discrimination": {"batches": "joint", "init": "data"}})


def test_joint_g_update_before_any_d_update_compares_with_a_fresh_real_batch(make_trainer):
    class GOnly:  # a schedule with no D update in the first step
        @hookimpl
        def gancore_step_schedule(self, trainer, step):
            return (0, 1)

    trainer = make_trainer(["minibatch-discrimination", "g-only"], extra={"g-only": GOnly},
                           train={"batch_size": 10}, options={"minibatch-discrimination": {"batches": "joint"}})
    plugin = trainer.run.manager.get_plugin("minibatch-discrimination")
    assert plugin.last_real is None
    trainer.train_step()
    assert plugin.last_real is not None and plugin.last_real.shape == (10, 2)
    assert trainer.step == 1
