"""VEEGAN: a reconstructor network F: x → z and a critic of (z, x) pairs (Srivastava et al., 2017).

akashgit/VEEGAN, Algorithm 1. Besides G_γ: z → x, VEEGAN trains a reconstructor F_θ: x → z that
inverts G *and* maps the data to the noise distribution p0 = N(0, I). If G drops a mode, F cannot
send that mode's data to anything that looks like p0-noise paired with G's output, so the joint
critic sees the difference and G gets a signal towards the missing mode. Each step::

    z_i ~ p0(z),  x_g^i = G_γ(z_i)              (fake pairs (z_i, x_g^i))
    x_i ~ p(x),   z_g^i ~ F_θ(x_i)              (real pairs (z_g^i, x_i), detached)
    ω ← ω − ∇_ω O_LR:  D learns to tell (z, G(z)) from (F(x), x)    (the core's D loss on pairs)
    γ, θ ← γ, θ − ∇ Ô,   Ô = (1/N) Σ_i −ℓ_ω(z_i, x_g^i)  +  weight · (1/N) Σ_i d(z_i, F_θ(x_g^i))

F_θ(x) = N(μ_θ(x), σ_θ(x)²) is a Gaussian over noise space (akashgit/VEEGAN's reconstructor is
one): real pairs take a *sample* of it. Option ``scale``: ``"unit"`` fixes σ = 1 and d is the
paper's ‖z − μ(x)‖²; this is the official code (VEEGAN_2D_RING.ipynb: F's output is
``Normal(μ(x), 1)``, the real pairs take a sample of it, and the G player maximizes
log N(z; μ(F(G(z))), 1) = −½‖z − μ‖² + const, so weight = 0.5 is its scale). ``"learned"``
(default, kept because the benchmark's stored VEEGAN rows were run with it) learns σ(x) and d is
the negative log-likelihood −log N(z; μ, σ²), a departure from the official code. Why a sample: G(z) keeps only a few
dimensions' worth of a 256-D z, so most of z cannot be reconstructed and μ(x) ≈ 0 there; a
deterministic F would give real pairs a z half that the critic tells from N(0, I) at a glance
(its loss goes to 0, G's adversarial signal vanishes and G's samples blur: measured on ring8,
0.4/8 modes, 0% HQ). With the spread, F(x) looks like p0 wherever z is not recoverable.

Option ``extra_noise`` (the official code: 1): G reads z_dim noise values, of which the last
``extra_noise`` are G's alone: F reconstructs, and the critic pairs with x, only the first
z_dim − extra_noise (the official notebook feeds G 254 reconstructed values plus 1 ``eps``).

where ℓ_ω is the critic's logit. gancore's D gives *real* pairs a positive logit, so at its
optimum ℓ* = log p_θ(z|x)p(x) / q_γ(x|z)p0(z), the negative of the paper's D_ω, and
−E_q[ℓ*] = KL(q_γ(x|z)p0(z) ‖ p_θ(z|x)p(x)): the first term of Ô is the paper's KL estimate.

Choice of G's adversarial term (option ``adversarial``). ``"logit"`` (default) replaces the
core's term by −mean ℓ(z, G(z)), VEEGAN's objective: the estimate of the KL divergence in the
paper's upper bound (with the logistic critic of the core's ``non-saturating``/``minimax``
families). ``"core"`` keeps the ``train.loss`` family's G loss (e.g. the non-saturating
softplus(−ℓ)), a different divergence with gentler gradients where the critic is confident.
With ``wasserstein`` and ``hinge`` losses both choices are the same term. The reconstruction term
is differentiated for G and for F (both are the G player: F is added with ``player="G"``); the
adversarial term does not involve F, so as in Algorithm 1 F learns from the reconstruction only.

How it maps onto gancore's hooks:

* ``gancore_build_models`` adds F (an MLP mirroring G: ``data_dim → width×depth → z_dim`` less
  ``extra_noise``) as
  ``models["F"]`` of the G player, so G's optimizer trains it and checkpoints save it, and
  replaces D by a joint critic (``Discriminator.mlp`` on the paired noise and ``data_dim`` inputs; image
  samples are flattened, for F and for the critic alike). It runs first among plugins, so
  others (minibatch head, packing) reshape the joint critic.
* ``gancore_discriminator_batch`` (also first) makes the pairs: ``cat([z, x], dim=1)``, z first
  (z without its ``extra_noise`` values).
  D phase: real ← (a sample of F(x), detached; x), fake ← (z, G(z)); G phase: fake ← (z, G(z)) with G's gradient.
* ``gancore_generator_loss`` sets ``terms["adversarial"]`` as above and adds
  ``terms["reconstruction"] = weight · mean_i d(z_i, F(G(z_i)))`` (summed over the z dimensions,
  averaged over the batch; d as chosen by ``scale``).
* ``gancore_evaluate`` reports ``reconstruction_error``: mean ‖z − μ(G(z))‖² on fresh noise, and
  ``reconstruction_error_relative``: that error over mean ‖z‖² on the same noise (1 is what an F
  that always answers 0 gets; a generator that maps z_dim = 256 onto 2-D points keeps little of z
  for F to recover, so expect values near 1 on the 2-D mixtures).

Inference: :func:`encode` (Python) and ``gancore encode RUN_DIR --data FILE --out FILE.npy``
map points to the mean μ(x) of the trained F.

Known limits: plugins that feed D raw points themselves (through ``trainer.real_batch()`` rather
than ``batch``: unrolled, feature-matching) do not see pairs and cannot run with the joint critic;
they are declared incompatible.

Needs of the networks: no discriminator given to ``gancore.fit`` (the joint critic is VEEGAN's
own MLP); any G, whose samples F reads flattened.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from gancore import GancoreError, hookimpl
from gancore.models import Discriminator, mlp

NAME = "veegan"


class Reconstructor(nn.Module):
    """F: x → z, a Gaussian N(μ(x), σ(x)²) over noise space; an MLP ``data_dim → width × depth →
    z_dim`` (G's architecture, reversed) for μ, with a second output of the same size for log σ
    when ``learned_scale`` (else σ = 1). ``F(x)`` is the mean μ(x)."""

    def __init__(self, data_dim: int, z_dim: int, width: int, depth: int, activation: str, learned_scale: bool = True):
        super().__init__()
        self.z_dim, self.learned_scale = z_dim, learned_scale
        self.net = mlp([data_dim] + [width] * depth + [z_dim * (2 if learned_scale else 1)], activation)

    def distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ(x), log σ(x)), each of shape (n, z_dim)."""
        out = self.net(x.flatten(1))  # images are read as flat vectors
        if not self.learned_scale:
            return out, torch.zeros_like(out)
        mean, log_scale = out.split(self.z_dim, dim=1)
        return mean, log_scale.clamp(-LOG_SCALE_BOUND, LOG_SCALE_BOUND)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.distribution(x)[0]


# |log σ| ≤ 5 keeps the Gaussian term finite when F becomes (over)confident about a dimension
LOG_SCALE_BOUND = 5.0


def pair(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The joint critic's input: noise first, then data (flattened), ``cat([z, x], dim=1)``."""
    return torch.cat([z, x.flatten(1)], dim=1)


def reconstruction_error(z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
    """mean_i ‖z_i − ẑ_i‖² (squared L2 norm over the z dimensions, mean over the batch)."""
    return (z - z_hat).pow(2).sum(dim=1).mean()


def gaussian_nll(z: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """mean_i −log N(z_i; μ_i, σ_i²) over the batch, summed over z dimensions, without the constant
    (z_dim/2)·log 2π: Σ_d (z − μ)²/(2σ²) + log σ."""
    return ((z - mean).pow(2) * torch.exp(-2 * log_scale) / 2 + log_scale).sum(dim=1).mean()


class Veegan:
    """VEEGAN: reconstructor F: x→z, a critic on (z, x) pairs, and ‖z − F(G(z))‖² (Srivastava et al. 2017)."""

    data_parallel = ("local", "the reconstructor F trains with G's optimizer, its gradients averaged with G's; its losses are means over each rank's batch")

    # unrolled advances D on a raw trainer.real_batch(), which is not a (z, x) pair
    # (feature-matching declares the same for its raw real features)
    incompatible_with = ("unrolled",)

    def __init__(self) -> None:
        self.weight = 1.0
        self.adversarial = "logit"
        self.learned_scale = True
        self.paired = 0  # z's first `paired` values are what F reconstructs and the critic reads
        self._g_phase: tuple[object, torch.Tensor] | None = None  # (batch, G(z) with gradient)

    @hookimpl
    def gancore_add_options(self, options):
        options.add("weight", float, 1.0, "weight (> 0) of the noise autoencoder term ‖z − F(G(z))‖²", min=0)
        options.add("width", int, None, "F's hidden width (default: train.g_width)", min=1)
        options.add("depth", int, None, "F's hidden layers (default: train.g_depth)", min=1)
        options.add(
            "scale", str, "learned",
            "F's spread: 'learned' = Gaussian F with learned σ(x), reconstruction term −log N(z; μ, σ²) (the official code); "
            "'unit' = σ = 1, term ‖z − μ‖² (the paper's ℓ2)",
            choices=("learned", "unit"),
        )
        options.add(
            "extra_noise", int, 0,
            "trailing noise values of z that G reads but F does not reconstruct and the critic does not see "
            "(the official code: 1, its eps beside 254 reconstructed values)", min=0,
        )
        options.add(
            "adversarial", str, "logit",
            "G's adversarial term: 'logit' = −mean critic logit on (z, G(z)) (VEEGAN's KL estimate), 'core' = train.loss's G loss",
            choices=("logit", "core"),
        )

    @hookimpl
    def gancore_configure(self, config, options):
        if options.weight <= 0:
            raise GancoreError(f"veegan.weight={options.weight:g}: must be positive (F learns from the reconstruction term only)")
        if options.extra_noise >= config.train.z_dim:
            raise GancoreError(f"veegan.extra_noise={options.extra_noise} must be below train.z_dim={config.train.z_dim}: F needs noise to reconstruct")
        self.weight = options.weight
        self.paired = config.train.z_dim - options.extra_noise
        self.adversarial = options.adversarial
        self.learned_scale = options.scale == "learned"
        self.options = options

    @hookimpl(tryfirst=True)
    def gancore_build_models(self, models, config, dataset):
        if "D" in models.given:
            raise GancoreError("veegan builds its own critic of (z, x) pairs and cannot use a given discriminator; pass discriminator=None (any generator works)")
        train, options = config.train, self.options
        width = options.width or train.g_width
        depth = options.depth or train.g_depth
        models.add("F", Reconstructor(dataset.dim, self.paired, width, depth, train.activation, self.learned_scale), player="G")
        models.D = Discriminator.mlp(self.paired + dataset.dim, train.d_width, train.d_depth, train.activation, train.d_maxout)

    @hookimpl(tryfirst=True)
    def gancore_check_models(self, batch):
        z = batch.z[:, :self.paired]
        batch.real, batch.fake = pair(z, batch.real), pair(z, batch.fake)  # what the critic reads

    @hookimpl(tryfirst=True)
    def gancore_discriminator_batch(self, trainer, batch):
        if batch.phase == "D":
            with torch.no_grad():  # z ~ F(x) = N(μ(x), σ(x)²): a sample, not the mean
                mean, log_scale = trainer.models["F"].distribution(batch.real)
                noise = torch.randn(mean.shape, device=mean.device, generator=trainer.generator)
            batch.real = pair(mean + log_scale.exp() * noise, batch.real)
        else:
            self._g_phase = (batch, batch.fake)  # G(z) before any other plugin changes what D sees
        batch.fake = pair(batch.z[:, :self.paired], batch.fake)

    @hookimpl(tryfirst=True)
    def gancore_generator_loss(self, trainer, batch, fake, terms):
        if self.adversarial == "logit":
            terms["adversarial"] = -fake.logits.mean()
        if self._g_phase is not None and self._g_phase[0] is batch:
            x_fake = self._g_phase[1]
        else:  # not made by our discriminator_batch: G(z) is the data half of the pair
            x_fake = batch.fake[:, self.paired:]
        self._g_phase = None
        mean, log_scale = trainer.models["F"].distribution(x_fake)
        z = batch.z[:, :self.paired]
        if self.learned_scale:
            terms["reconstruction"] = self.weight * gaussian_nll(z, mean, log_scale)
        else:
            terms["reconstruction"] = self.weight * reconstruction_error(z, mean)

    @hookimpl
    def gancore_evaluate(self, trainer, step, metrics):
        generator = trainer.evaluation_generator(salt=7)  # noise of its own, not the scored samples
        z = trainer.noise(trainer.eval_samples, generator)
        with torch.no_grad():
            x = trainer.models.G(z)
            z = z[:, :self.paired]
            error = reconstruction_error(z, trainer.models["F"](x))
        metrics["reconstruction_error"] = round(float(error), 6)
        metrics["reconstruction_error_relative"] = round(float(error / z.pow(2).sum(dim=1).mean()), 6)

    @hookimpl
    def gancore_register_commands(self, cli):
        import click

        @cli.command("encode")
        @click.argument("run_dir", type=click.Path(file_okay=False))
        @click.option("--data", "data", type=click.Path(dir_okay=False), required=True, help="Points to encode (.npy/.npz/.csv).")
        @click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="Destination .npy file (must not exist).")
        @click.pass_context
        def encode_command(ctx, run_dir, data, out):
            """Map points to noise space with the reconstructor F of a VEEGAN run."""
            from gancore.checkpoint import atomic_write
            from gancore.data import load_points_file

            destination = Path(out)
            if destination.suffix != ".npy":
                raise GancoreError(f"--out {out}: the file name must end in .npy")
            if destination.exists():
                raise GancoreError(f"--out {out} exists already; choose a new file name")
            points = load_points_file(Path(data)).points.numpy()
            z = encode(run_dir, points, ctx.find_root().obj)
            atomic_write(destination, lambda handle: np.save(handle, z))
            click.echo(f"encoded {len(z)} points into {z.shape[1]}-D noise space: {destination}")


def encode(run_dir: str | Path, points, catalog=None, chunk: int = 65536) -> np.ndarray:
    """z = μ(x), the mean of F(x), for every row of ``points`` with the reconstructor of the VEEGAN run at ``run_dir``.

    :param run_dir: a run directory trained with ``--plugin veegan`` (its last checkpoint is used).
    :param points: array-like of shape (n, data_dim), or (n,) for 1-D data.
    :param catalog: the plugin catalog (default: every installed plugin).
    :return: float32 array of shape (n, z_dim − veegan.extra_noise).
    """
    from gancore.manager import Catalog
    from gancore.rundir import open_trainer

    x = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise GancoreError(f"points to encode must be a non-empty 2-D array of real numbers; got shape {tuple(x.shape)}, dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise GancoreError("points to encode contain NaN or Inf")
    trainer = open_trainer(Path(run_dir), catalog or Catalog.installed())
    if NAME not in trainer.config.plugins:
        raise GancoreError(f"run {run_dir} was not trained with --plugin {NAME}: it has no reconstructor F")
    if x.shape[1] != trainer.dataset.dim:
        raise GancoreError(f"points have {x.shape[1]} columns but run {run_dir} was trained on {trainer.dataset.dim}-D data")
    reconstructor = trainer.models["F"]
    x_tensor = torch.as_tensor(x, dtype=torch.float32)
    with torch.no_grad():
        z = torch.cat([reconstructor(part.to(trainer.device)).cpu() for part in x_tensor.split(chunk)])
    return z.numpy()
