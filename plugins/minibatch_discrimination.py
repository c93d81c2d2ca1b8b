"""Minibatch discrimination: D sees how close each sample is to the rest of its minibatch.

Salimans et al. (2016), "Improved Techniques for Training GANs", Sec. 3.2 (openai/improved-gan).
A collapsed generator emits minibatches of near-identical samples; a D that judges one sample at
a time cannot tell, a D that sees the whole minibatch can. For D's features f(x_i) ∈ R^A (the
output of ``D.body``) and a learned tensor T ∈ R^{A×B×C}:

    M_i      = f(x_i) · T                          ∈ R^{B×C}
    c_b(i,j) = exp(−‖M_{i,b} − M_{j,b}‖₁)
    o_b(i)   = Σ_{j≠i} c_b(i,j)                    (j = i kept if exclude_self is false: +1)
    logit_i  = w · [f(x_i), o(x_i)] + w₀           (a linear head over A + B inputs)

o is computed by ``gancore.kernels.minibatch_l1`` (fused: Triton on CUDA, compiled C on CPU; never
the N×N×B×C tensor).

Which samples a sample is compared with (option ``batches``):

* ``"separate"`` (default, the paper's Sec. 3.2 and improved-gan's CIFAR code): the core calls D on
  the real and the fake batch separately, so each is its own minibatch and o is the sum above.
  A real batch of tight modes then has many near neighbours per sample and a fake batch few, so
  D can tell the batches apart by o alone (benchmarks/PAPERS.md, "Minibatch discrimination").
* ``"joint"`` (improved-gan's ImageNet discriminator, ``imagenet/discriminator.py``): every sample
  is compared with both batches of the update, D's real batch R and fake batch F, and gets two
  features per kernel, its mean similarity to R and to F (j ≠ i in its own batch):

      o^R_b(i) = mean_{j ∈ R, j ≠ i} c_b(i,j),   o^F_b(i) = mean_{j ∈ F, j ≠ i} c_b(i,j)

  A real and a fake sample at the same place get the same features, so D can only tell them by
  how dense each batch is around that place, and G's gradient moves fakes towards real samples
  and apart from each other. Per-sample means (the official code divides the sums by one
  constant, the number of pairs) so that the own batch's missing pair j = i biases no feature.
  Cross sums use the fused kernel too: Σ_{j ∈ H} c(i,j) = o over (x ∪ H) minus o over x.
  In the G phase R is the real batch of this step's last D update. D calls outside an update
  (checks, probes) compare x with itself for both features. One D call costs about 5 of the
  separate layer's: the joint row's cost per step is measured in benchmarks/PAPERS.md.

Initialization (option ``init``), T ~ N(0, 0.05²) either way:

* ``"normal"`` (default, the rows stored so far): M = f · T as is. With D's features at their
  initial scale every pair of samples is close (median L1 distance ~0.4 for 2-D data and D
  2 × 128), so o starts near its ceiling N − 1 (~350 of 511 at batch 512) for real and fake alike.
* ``"data"`` (improved-gan's ``MinibatchLayer``): T is weight-normed, W = T · e^s / ‖T‖ per
  column, o gets a per-kernel bias β, and both are set from the first real batch D trains on:
  s so that each kernel's mean nearest-neighbour L1 distance is 2, β = −mean(o), so o starts
  centred with a spread of order 1. Computed in training mode without changing D's buffers,
  averaged over the ranks of a distributed run, checkpointed, and redone when AdaGAN re-initializes D.

The wider head copies the old head's weights on f and starts with zero weights on o, so D
starts as the plain D and learns to use the minibatch features (a spectral norm on the old head
is kept on the new one). The Critique's ``features`` stay f.

Needs of the networks: D is (or wraps) a :class:`gancore.models.Discriminator` whose ``head`` is
one ``nn.Linear(A, 1)`` (optionally spectral-normed); f = ``D.body(x)`` has shape (N, A).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from gancore import GancoreError, hookimpl
from gancore.kernels import minibatch_l1
from gancore.models import Discriminator, probing


class BodyCall(NamedTuple):
    """D.body's last input and output: tells the layer which batch its features came from."""

    input: torch.Tensor
    output: torch.Tensor


class MinibatchFeatures(nn.Module):
    """f (N, A) -> [f, o(f)] (N, A + B), with o_b(i) = Σ_{j(≠i)} exp(−‖M_{i,b} − M_{j,b}‖₁), M = f·W.

    W = T, or with ``data_init`` the weight-normed T · e^s / ‖T‖ (per column), and o + β: s and β
    are set by :meth:`initialize` from a batch of real features before the first update.

    Paired (``batches="joint"``, after :meth:`pair_with`): f (N, A) -> [f, o^R(f), o^F(f)] (N, A + 2B),
    the mean similarities to the real and the fake batch set in :attr:`halves`.
    """

    def __init__(self, in_features: int, kernels: int, kernel_dim: int, exclude_self: bool = True, data_init: bool = False):
        super().__init__()
        self.in_features, self.kernels, self.kernel_dim, self.exclude_self = in_features, kernels, kernel_dim, exclude_self
        self.data_init = data_init
        self.halves: tuple[torch.Tensor, torch.Tensor] | None = None  # paired: D's (real, fake) inputs of this update
        self._body: list[nn.Module] = []  # paired: D.body (in a list: not a second registration of its parameters)
        self._body_call: BodyCall | None = None
        self.T = nn.Parameter(torch.empty(in_features, kernels * kernel_dim))
        if data_init:
            self.log_scale = nn.Parameter(torch.zeros(kernels * kernel_dim))
            self.bias = nn.Parameter(torch.zeros(kernels))
            self.register_buffer("initialized", torch.tensor(False))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.T, std=0.05)  # improved-gan's initialization
        if self.data_init:
            nn.init.zeros_(self.log_scale)
            nn.init.zeros_(self.bias)
            self.initialized.fill_(False)

    def weight(self) -> torch.Tensor:
        """W, shape (A, B·C)."""
        if not self.data_init:
            return self.T
        return self.T * (self.log_scale.exp() / self.T.norm(dim=0))

    @property
    def paired(self) -> bool:
        return bool(self._body)

    @property
    def out_features(self) -> int:
        return self.in_features + self.kernels * (2 if self.paired else 1)

    def pair_with(self, body: nn.Module) -> None:
        """Compare each sample with both batches of an update (``batches="joint"``): ``body`` is
        D.body, watched so that the layer knows which batch its input came from, and run on the
        other batch to read its features."""
        if self.data_init:
            raise GancoreError("minibatch-discrimination: init=data sets one bias per kernel for one batch; use it with batches=separate, or init=normal with batches=joint")
        self._body = [body]
        body.register_forward_hook(self._watch_body)

    def _watch_body(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._body_call = BodyCall(inputs[0], output)

    def release(self) -> None:
        """Forget the update's batches (G's fake batch holds G's graph)."""
        self.halves, self._body_call = None, None

    def _project(self, f: torch.Tensor) -> torch.Tensor:
        return (f @ self.weight()).view(len(f), self.kernels, self.kernel_dim)

    def _within(self, M: torch.Tensor) -> torch.Tensor:
        """Σ over the others of M's own batch (and the pair j = i unless excluded), (N, B)."""
        if self.exclude_self and len(M) < 2:
            return M.new_zeros(len(M), self.kernels)  # Σ over j ≠ i of a one-sample batch is empty
        return minibatch_l1(M, exclude_self=self.exclude_self)

    def minibatch_features(self, f: torch.Tensor) -> torch.Tensor:
        """o(f), shape (N, B) (paired: (N, 2B), o^R then o^F)."""
        if self.paired:
            return self._paired_features(f)
        o = self._within(self._project(f))
        return o + self.bias if self.data_init else o

    def _paired_features(self, f: torch.Tensor) -> torch.Tensor:
        call = self._body_call
        x = call.input if call is not None and call.output is f else None
        M = self._project(f)
        within = self._within(M)
        own_count = max(len(f) - 1, 1) if self.exclude_self else len(f)
        features = []
        for half in self.halves or (x, x):  # outside an update: x against itself, twice
            if half is x:
                features.append(within / own_count)
            else:  # Σ over H = Σ over (x ∪ H) − Σ over x: the fused kernel, never an (N, |H|, B) tensor
                both = self._within(torch.cat([M, self._project(self._body[0](half))]))
                features.append((both[: len(f)] - within) / len(half))
        return torch.cat(features, dim=1)

    @torch.no_grad()
    def initialize(self, f: torch.Tensor, mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        """Set s and β from real features ``f`` (N, A), as improved-gan's init pass does: each kernel's
        mean L1 distance to the nearest other sample becomes 2, and β = −mean(o) over the batch.
        ``mean`` averages a statistic over a distributed run's ranks."""
        if len(f) < 2:
            raise GancoreError(
                f"minibatch-discrimination's data initialization needs at least 2 samples in D's real batch, not {len(f)} "
                "(train.batch_size per process, over pacgan.m when packed): raise train.batch_size or use minibatch-discrimination.init=normal"
            )
        if not bool(torch.isfinite(f).all()):
            raise GancoreError("minibatch-discrimination's data initialization: D's features of the first real batch are not finite (NaN or inf); check the data and D")
        self.log_scale.zero_()
        self.bias.zero_()
        M = (f @ self.weight()).view(len(f), self.kernels, self.kernel_dim).transpose(0, 1)  # (B, N, C)
        nearest = torch.stack([self._mean_nearest_l1(kernel) for kernel in M])  # one kernel at a time: B·N² memory at most N²
        nearest = mean(nearest)
        if not bool((nearest > 0).all()):
            raise GancoreError(
                "minibatch-discrimination's data initialization found no distance between D's features of the real samples "
                "(all duplicates, or D's features are constant): use minibatch-discrimination.init=normal"
            )
        self.log_scale.copy_(-(nearest / 2).log().repeat_interleave(self.kernel_dim))
        self.bias.copy_(-mean(self.minibatch_features(f).mean(0)))
        self.initialized.fill_(True)

    @staticmethod
    def _mean_nearest_l1(points: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(points, points, p=1)
        distances.fill_diagonal_(float("inf"))
        return distances.min(1).values.mean()

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.cat([f, self.minibatch_features(f)], dim=1)

    def extra_repr(self) -> str:
        init = ", data_init" if self.data_init else ""
        paired = ", paired with real and fake" if self.paired else ""
        return f"A={self.in_features}, B={self.kernels}, C={self.kernel_dim}, exclude_self={self.exclude_self}{init}{paired}"


def find_discriminator(module: nn.Module) -> Discriminator | None:
    """The first :class:`gancore.models.Discriminator` in ``module`` (itself, or one a plugin wrapped)."""
    return next((m for m in module.modules() if isinstance(m, Discriminator)), None)


class MinibatchDiscrimination:
    """Minibatch discrimination: D's head also reads L1-kernel similarities to the rest of the minibatch (Salimans et al. 2016)."""

    data_parallel = ("local", "D compares the samples within each rank's minibatch of train.batch_size / ranks")

    def __init__(self) -> None:
        self.kernels, self.kernel_dim, self.exclude_self, self.init, self.batches = 16, 5, True, "normal", "separate"
        self.layer: MinibatchFeatures | None = None
        self.last_real: torch.Tensor | None = None  # joint: the real batch of the last D update, R in the G phase

    @hookimpl
    def gancore_add_options(self, options):
        options.add(
            "kernels", int, 16,
            "B, kernels added to D's head (paper: 100 over CIFAR's A=192 features; 16 suffices for 2-D mixtures and keeps the O(N²BC) cost low)",
            min=1,
        )
        options.add("kernel_dim", int, 5, "C, the dimension of each kernel's projection (paper: 5 on CIFAR)", min=1)
        options.add("exclude_self", bool, True, "leave the pair j = i out of o_b(i) (improved-gan's code; otherwise it adds a constant 1)")
        options.add(
            "init", str, "normal",
            "'normal' = M = f·T with T ~ N(0, 0.05²) (the stored rows); 'data' = improved-gan's layer: T weight-normed, "
            "its scale and a bias on o set from the first real batch (nearest-neighbour L1 distance 2, o centred)",
            choices=("normal", "data"),
        )
        options.add(
            "batches", str, "separate",
            "'separate' = each sample is compared with its own batch, real and fake apart (the paper, improved-gan's CIFAR code); "
            "'joint' = with the real and with the fake batch of the update, a mean similarity to each (improved-gan's ImageNet code; ~5x the cost)",
            choices=("separate", "joint"),
        )

    @hookimpl
    def gancore_configure(self, config, options):
        self.kernels, self.kernel_dim, self.exclude_self, self.init = options.kernels, options.kernel_dim, options.exclude_self, options.init
        self.batches = options.batches

    @hookimpl
    def gancore_build_models(self, models):
        D = find_discriminator(models.D)
        if D is None:
            raise GancoreError(f"minibatch-discrimination needs a gancore.models.Discriminator (body + head) in D, not {type(models.D).__name__}")
        if not isinstance(D.head, nn.Linear) or D.head.out_features != 1:
            raise GancoreError("minibatch-discrimination replaces D's head and needs it to be one Linear(A, 1) layer")
        old = D.head
        spectral = parametrize.is_parametrized(old)
        if spectral and [type(p).__name__ for name in old.parametrizations for p in old.parametrizations[name]] != ["_SpectralNorm"]:
            raise GancoreError("minibatch-discrimination can replace a head with spectral norm, but not other parametrizations")
        layer = self.layer = MinibatchFeatures(old.in_features, self.kernels, self.kernel_dim, self.exclude_self, data_init=self.init == "data")
        if self.batches == "joint":
            layer.pair_with(D.body)
        head = nn.Linear(layer.out_features, 1, bias=old.bias is not None)
        with torch.no_grad():
            head.weight.zero_()
            head.weight[:, : old.in_features] = old.parametrizations.weight.original if spectral else old.weight
            if old.bias is not None:
                head.bias.copy_(old.bias)
        D.head = nn.Sequential(layer, spectral_norm(head) if spectral else head)  # a spectral-normed D keeps a spectral-normed head

    @hookimpl
    def gancore_check_models(self, trainer, batch):
        layer = self.layer
        if layer is None or not layer.paired:
            return
        seen: list[torch.Tensor] = []
        hook = layer.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
        try:
            with probing(trainer.models.D):
                trainer.models.D(batch.real)
            call = layer._body_call
        finally:
            hook.remove()
            layer.release()
        # the layer tells which batch x is by D.body's input, and finds x's features as D.body's output
        if call is None or call.input is not batch.real or not seen or seen[0] is not call.output:
            raise GancoreError(
                "minibatch-discrimination.batches=joint needs D to run D.body on its input and hand the result to the head; "
                "this D does not (a wrapper changes the input or bypasses D.body): use batches=separate"
            )

    @hookimpl(trylast=True)  # after the plugins that change what D reads: pair and initialize on what it reads
    def gancore_discriminator_batch(self, trainer, batch):
        layer = self.layer
        if layer is None:
            return
        if layer.paired:
            if batch.phase == "D":
                self.last_real = batch.real
            elif self.last_real is None:  # a G update before any D update: a fresh real batch
                self.last_real = trainer.real_batch()
            layer.halves = (self.last_real, batch.fake)
        if not layer.data_init or batch.phase != "D" or bool(layer.initialized):
            return
        D = trainer.models.D
        seen: list[torch.Tensor] = []
        hook = layer.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
        # in training mode, as improved-gan's init pass: a batch-normed D's features are those it trains on
        # (not its running statistics'); its buffers (batch-norm statistics, spectral-norm vectors) are put back
        buffers = [(buffer, buffer.clone()) for buffer in D.buffers()]
        try:
            with torch.no_grad():
                D(batch.real)
        finally:
            hook.remove()
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
        if not seen:
            raise GancoreError("minibatch-discrimination's layer was not called when D read the real batch: a wrapper around D bypasses it")
        layer.initialize(torch.cat(seen), mean=lambda t: trainer.world.mean(t, "minibatch-discrimination's data initialization"))

    @hookimpl
    def gancore_step_end(self, trainer, step):
        if self.layer is not None:
            self.layer.release()
