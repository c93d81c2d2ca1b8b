"""The hook points of gancore: the contracts every plugin, built-in or third-party, implements.

One training step of the core is::

    gancore_step_start
    repeat d_steps times (from gancore_step_schedule):       # the D phase
        real, z -> fake = G(z) (no grad)
        gancore_discriminator_batch(batch)                    # what D sees
        terms = {"adversarial": loss_D(D(real), D(fake))}
        gancore_discriminator_loss(..., terms)                # extra / rescaled D terms
        D's optimizer step; gancore_after_optimizer_step(player="D")
    repeat g_steps times:                                     # the G phase
        z -> fake = G(z)
        gancore_discriminator_batch(batch)
        critic = gancore_generator_critic(...) or D            # the D that G's step is taken against
        terms = {"adversarial": loss_G(critic(fake))}
        gancore_generator_loss(..., terms)
        G's optimizer step; gancore_after_optimizer_step(player="G")
    gancore_step_end(logs)

and every ``eval_every`` steps ``gancore_evaluate``. ``gancore_fit`` may replace the whole
loop (meta-algorithms) and ``gancore_sample`` the way samples are drawn (mixtures). Before any
step, when the trainer is built, ``gancore_check_models`` lets every plugin refuse networks it
cannot work with (a user's own, given to ``gancore.fit``), naming what they lack.

With ``train.update_order = "simultaneous"`` (one update of each player per step, as VEEGAN's,
PacGAN's and the unrolled demo's official code) the step draws one z and one real batch: the D
phase's batch holds G(z) detached, the G phase's the same G(z) with its gradient; both phases'
hooks run, then both players' gradients are taken (each only into its own parameters), then D's
and G's optimizer steps. G's critic is D before D's step.

How results combine. Hooks marked *firstresult* stop at the first plugin returning something
other than None; two enabled plugins that implement the same firstresult hook are a
configuration error reported before training (see :data:`FIRST_RESULT_HOOKS`). Hooks that
receive a mutable object (``models``, ``batch``, ``terms``, ``logs``, ``metrics``,
``summary``) are a chain: every enabled plugin is called in the order the plugins were
enabled (``--plugin`` order; ``tryfirst``/``trylast`` adjust it) and each sees what the
previous ones did. Per-plugin hooks (``gancore_add_options``, ``gancore_configure``,
``gancore_state_dict``, ``gancore_load_state_dict``) are called once for each plugin with
that plugin's own options or state.

Arguments may be added to these specs in later versions but never renamed or removed: a
hookimpl may accept any subset of a spec's arguments (pluggy's promise), so plugins keep working.

How the remedies of gancore's design map onto these hooks (the design's test):

* **minibatch-discrimination** — ``gancore_build_models`` replaces D's ``head`` by the
  minibatch layer (``gancore.kernels.minibatch_l1`` over the projected features,
  concatenated before a wider linear head). Real and fake batches are separate calls to D, so
  they are discriminated as separate minibatches.
* **feature-matching** — ``gancore_generator_loss`` adds ‖E f(x) − E f(G(z))‖ on D's
  ``features`` (real features from ``trainer.real_batch()``) and rescales or drops the
  ``adversarial`` term (hybrid weight).
* **unrolled** — ``gancore_generator_critic`` returns a functional copy of D advanced k steps
  by D's own optimizer rule, differentiably, so G's gradient flows through the unroll. D's
  real parameters and optimizer state are untouched.
* **replay** — ``gancore_discriminator_batch`` (D phase) swaps a fraction of ``batch.fake``
  for samples from a buffer and pushes the fresh ones; ``gancore_step_start`` /
  ``gancore_step_end`` swap an old G or D snapshot in for K steps every P steps;
  ``gancore_state_dict`` / ``gancore_load_state_dict`` carry buffer and snapshots.
* **adagan** — ``gancore_fit`` runs T boosting rounds (``trainer.run_steps``), between rounds
  sets ``trainer.data_weights`` and starts a fresh GAN (``trainer.reinitialize``);
  ``gancore_sample`` samples the mixture; its rounds are its state.
* **veegan** — ``gancore_build_models`` adds the reconstructor F (trained with G's optimizer)
  and replaces D by a joint critic on (z, x); ``gancore_discriminator_batch`` turns the batch
  into pairs (F(x), x) and (z, G(z)); ``gancore_generator_loss`` adds ‖z − F(G(z))‖².
* **wgan-gp** — ``gancore_configure`` suggests ``loss = "wasserstein"``, ``n_critic = 5`` and
  Adam betas (0.5, 0.9) (the user's explicit settings win); ``gancore_discriminator_loss`` adds
  ``gancore.kernels.gradient_penalty``. Plain **wgan** clips D's weights in
  ``gancore_after_optimizer_step`` (player ``"D"``).
* **pacgan** — ``gancore_configure`` checks that the batch size is divisible by m;
  ``gancore_build_models`` wraps D so it reads packs of m samples concatenated.
* **instance-noise** (built in) — ``gancore_discriminator_batch`` adds annealed Gaussian noise
  to everything D sees, in both phases.
* **ema** — ``gancore_step_end`` (``trylast``) updates a moving average of G's weights;
  ``gancore_sample`` draws from it; its state is the average.

Data parallelism (``torchrun --nproc-per-node N``, see :mod:`gancore.distributed`). Every rank
runs every hook, with identical networks (gradients are averaged after each update) and with
its share of the global batch: ``trainer.world.rank`` and ``trainer.world.size`` say which
(0 and 1 in one process), ``trainer.batch_size`` is the rank's batch, ``batch`` objects hold
the rank's samples, and loss terms are averaged over the ranks after the loss hooks. Draws from
the training stream made through ``trainer.noise()`` / ``trainer.real_batch()`` are the rank's
slice of one draw for all ranks; a plugin that draws per-sample numbers itself from
``trainer.generator`` wraps the draw in ``trainer.world.drawing_share(generator, n)`` to do the
same (else every rank draws the same numbers for its own samples). Only rank 0 writes files;
plugin state is checkpointed from rank 0, so it must be identical on every rank.

Each plugin class declares what it means under data parallelism, as a class attribute
``data_parallel = (mode, why)`` with ``why`` one line (errors quote it):

* ``"exact"`` — 2 ranks with half batches train as one process with the whole batch (up to the
  order of float sums); tested for the built-ins that declare it.
* ``"local"`` — works and keeps the ranks identical, but on each rank's share of the batch
  (e.g. minibatch statistics over the rank's samples), so the result differs from one process.
* ``"refused"`` — the plugin cannot train on several processes; ``why`` says why.

A plugin without the attribute is refused when more than one process trains (it may keep
per-rank state that a checkpoint from rank 0 would lose), with a message naming it.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    import click
    import torch

    from gancore.config import RunConfig
    from gancore.data import Dataset
    from gancore.models import Critique
    from gancore.options import OptionSet
    from gancore.trainer import Batch, Models, Trainer

hookspec = pluggy.HookspecMarker("gancore")

#: Hooks where only one plugin may answer; two enabled implementers are a configuration error.
FIRST_RESULT_HOOKS = ("gancore_fit", "gancore_sample", "gancore_generator_critic", "gancore_step_schedule")


# ---------------------------------------------------------------------------------------------
# Setup: options and commands (called for every installed plugin, enabled or not)
# ---------------------------------------------------------------------------------------------


@hookspec
def gancore_add_options(options: OptionSet) -> None:
    """Declare this plugin's options.

    Called once per installed plugin, with an OptionSet owned by that plugin, when the catalog
    of plugins is built (for ``gancore plugins``, ``--set`` and ``--config``).

    :param options: call ``options.add(name, type, default, help, choices=..., min=...)``.
    """


@hookspec
def gancore_register_commands(cli: click.Group) -> None:
    """Add click subcommands to the ``gancore`` command.

    Called once per installed plugin when the CLI starts.

    :param cli: the top-level click group; use ``@cli.command()``.
    """


# ---------------------------------------------------------------------------------------------
# Configuration and model building (enabled plugins, before training)
# ---------------------------------------------------------------------------------------------


@hookspec
def gancore_configure(name: str, config: RunConfig, options: SimpleNamespace) -> None:
    """Validate this plugin's options and suggest core settings.

    Called once per enabled plugin, after all options are parsed and before any model is
    built. Raise :class:`gancore.errors.GancoreError` with a one-line message for invalid
    settings; any other exception is reported as "plugin NAME (PACKAGE VERSION) failed in
    gancore_configure: ...". Use ``config.suggest(name, loss="wasserstein", ...)`` to change
    the core's defaults: a value the user set explicitly wins, and two plugins suggesting
    different values for one setting are a configuration error naming both.

    :param name: the name this plugin is registered under (its entry point's name); use it
        wherever the plugin names itself (``config.suggest``, ``config.plugins[name]``), so that
        the same class works under another name.
    :param config: the run configuration (``config.train`` holds the core settings).
    :param options: this plugin's resolved options.
    """


@hookspec
def gancore_build_models(models: Models, config: RunConfig, dataset: Dataset) -> None:
    """Wrap, replace or add networks before the optimizers are built.

    Called once per run (chain, in plugin order) after the core built ``models.G`` and
    ``models.D``. Replace them in place (``models.D = Packed(models.D)``), or add networks
    with ``models.add(name, module, player="G" | "D")``: each player's optimizer trains every
    module assigned to it. D must keep returning a :class:`gancore.models.Critique`. After
    this hook, ``train.init`` (other than ``torch``) draws the weights of every linear and
    convolution layer of the networks not given by the user, the layers plugins built included
    (:func:`gancore.models.initialize`); parameters outside those layers (minibatch
    discrimination's tensor T) keep the values the plugin gave them.

    :param models: the networks of the run.
    :param config: the run configuration.
    :param dataset: the training data (for its dimension).
    """


@hookspec
def gancore_check_models(trainer: Trainer, batch: Batch) -> None:
    """Refuse networks this plugin cannot work with, before any training step.

    Called once per run (chain), when the trainer is built: after ``gancore_build_models``, with
    the networks on their device and the optimizers built. Networks the user gave
    (``gancore.fit``) are named in ``trainer.models.given``. Raise
    :class:`gancore.errors.GancoreError` with one line that names the plugin and what the network
    lacks (``"pacgan needs ..."``). A check may run D on ``batch.real`` / ``batch.fake`` inside
    :func:`gancore.models.probing` (eval mode, no grad: batch-norm statistics and spectral-norm
    vectors stay as they are), but must change no state and draw nothing from
    ``trainer.generator`` or torch's global RNG: a run is the same with and without its checks.

    :param trainer: the trainer; its step is 0 (a resumed run's state is loaded afterwards).
    :param batch: a Batch of phase ``"check"``: ``real`` holds ``train.batch_size`` training points
        (the first ones, repeated if too few), ``z`` zeros and ``fake`` G(z) (eval mode). A plugin
        that changes what D reads in ``gancore_discriminator_batch`` makes the same change here
        (``tryfirst``, deterministically), so that the chain's checks run D on what it reads.
    """


# ---------------------------------------------------------------------------------------------
# The fit: outer loop and its end
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def gancore_fit(trainer: Trainer) -> bool | None:
    """Run the whole training (for meta-algorithms that train several GANs).

    Called once per run. Return True after training with ``trainer.run_steps(n)`` (which runs
    the step loop with its evaluations and checkpoints); return None to let the core run
    ``config.train.steps`` steps. Stops at first non-None result.
    """


@hookspec
def gancore_fit_end(trainer: Trainer, summary: dict) -> None:
    """Add entries to the run's final summary (chain). Called once after the final evaluation."""


@hookspec(firstresult=True)
def gancore_sample(trainer: Trainer, n: int, generator: torch.Generator) -> torch.Tensor | None:
    """Return ``n`` samples of the trained model, shape (n, dim), or None for ``G(z)``.

    Called by evaluation, ``gancore sample`` and plots. Stops at first non-None result.
    """


# ---------------------------------------------------------------------------------------------
# One training step
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def gancore_step_schedule(trainer: Trainer, step: int) -> tuple[int, int] | None:
    """Return ``(d_updates, g_updates)`` for this step, or None for ``(n_critic, 1)``.

    Called at the start of every step. Stops at first non-None result.
    """


@hookspec
def gancore_step_start(trainer: Trainer, step: int) -> None:
    """Called at the start of every step, before any update (e.g. to swap in snapshots)."""


@hookspec
def gancore_discriminator_batch(trainer: Trainer, batch: Batch) -> None:
    """Change what D sees: replace ``batch.real`` and/or ``batch.fake`` (chain).

    Called in the D phase (``batch.phase == "D"``, ``batch.fake`` carries no gradient) and the
    G phase (``batch.phase == "G"``, ``batch.real`` is None, ``batch.fake`` carries G's
    gradient and must keep carrying it). ``batch.z`` is the noise that made ``batch.fake``.
    A plugin that needs real data in G's step (feature matching, unrolled) draws it with
    ``trainer.real_batch()``, which this hook has not transformed.
    """


@hookspec(firstresult=True)
def gancore_generator_critic(trainer: Trainer, batch: Batch) -> Callable[[torch.Tensor], Critique] | None:
    """Return the critic G's step is taken against, or None for D itself.

    Called in every G update, after ``gancore_discriminator_batch``. The returned callable
    maps D's input to a Critique and must be differentiable w.r.t. its input.
    Stops at first non-None result.
    """


@hookspec
def gancore_discriminator_loss(trainer: Trainer, batch: Batch, real: Critique, fake: Critique, terms: dict) -> None:
    """Add or rescale terms of D's loss (chain).

    Called in every D update. ``terms`` maps names to scalar tensors, starting with
    ``{"adversarial": ...}``; D minimizes their sum, and each term is logged by name.

    :param real: D's output on ``batch.real``.
    :param fake: D's output on ``batch.fake``.
    """


@hookspec
def gancore_generator_loss(trainer: Trainer, batch: Batch, fake: Critique, critic: Callable, terms: dict) -> None:
    """Add or rescale terms of G's loss (chain).

    Called in every G update. ``terms`` starts as ``{"adversarial": ...}``; the G player
    (G and every module added with ``player="G"``) minimizes their sum.

    :param fake: the critic's output on ``batch.fake``.
    :param critic: the critic of this G update (D, or a plugin's from ``gancore_generator_critic``).
    """


@hookspec
def gancore_after_optimizer_step(trainer: Trainer, player: str) -> None:
    """Called right after each optimizer step of ``player`` (``"D"`` or ``"G"``), e.g. to clip weights."""


@hookspec
def gancore_step_end(trainer: Trainer, step: int, logs: dict) -> None:
    """Called at the end of every step; add scalars to ``logs`` (shown and saved at evaluations)."""


@hookspec
def gancore_evaluate(trainer: Trainer, step: int, metrics: dict) -> None:
    """Add entries to an evaluation's ``metrics`` (chain). Called every ``eval_every`` steps and at the end."""


# ---------------------------------------------------------------------------------------------
# State (checkpoints)
# ---------------------------------------------------------------------------------------------


@hookspec
def gancore_state_dict(trainer: Trainer) -> dict | None:
    """Return this plugin's state for a checkpoint, or None if it has none.

    Called per enabled plugin at every checkpoint (and when training starts, for rollback).
    The state may hold tensors, numbers, strings, lists, tuples and dicts only (checkpoints are
    loaded with ``weights_only=True``): anything else is refused when it is returned, naming
    the plugin and where in the state it lies.
    """


@hookspec
def gancore_load_state_dict(trainer: Trainer, state: dict) -> None:
    """Restore what ``gancore_state_dict`` returned. Called per enabled plugin on resume.

    An exception raised here is reported as "plugin NAME (PACKAGE VERSION) failed in
    gancore_load_state_dict: ...".
    """
