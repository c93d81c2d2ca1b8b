"""The core trainer: the adversarial game with its hook points, and nothing remedy-specific."""
from __future__ import annotations

import copy
import random
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from gancore import distributed
from gancore.data import Dataset, load_dataset
from gancore.errors import GancoreError
from gancore.losses import LOSSES
from gancore.memory import check_training_fits
from gancore.models import build_discriminator, build_generator, initialize, probing
from gancore.provenance import Stopwatch, source_commit

if TYPE_CHECKING:
    from gancore.manager import Run
    from gancore.rundir import RunDirectory

PLAYERS = ("G", "D")


class NonFiniteError(GancoreError):
    """A loss or parameter became NaN or infinite."""


class CheckpointMismatch(GancoreError):
    """A checkpoint's networks are not this run's."""


class TrainingInterrupted(BaseException):
    """SIGINT/SIGTERM arrived; the trainer checkpointed and stopped at ``step``. Like
    KeyboardInterrupt, not an Exception: it may be raised inside a plugin's hook (by the signal
    handler, during the final evaluation) and must not be reported as that plugin's fault."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step


@dataclass
class Batch:
    """What one update works on. ``phase`` is ``"D"`` or ``"G"`` (``"check"``: the probe of
    ``gancore_check_models``); ``real`` is None in the G phase."""

    phase: str
    step: int
    z: torch.Tensor
    fake: torch.Tensor
    real: torch.Tensor | None = None


class Models:
    """The run's networks by name, each assigned to a player (``"G"`` or ``"D"``) whose optimizer trains it."""

    def __init__(self, G: nn.Module, D: nn.Module, given: frozenset[str] = frozenset()):
        self.modules: dict[str, nn.Module] = {"G": G, "D": D}
        self.players: dict[str, str] = {"G": "G", "D": "D"}
        self.given = given  # "G", "D": the networks the user gave (gancore.fit), not built by the core

    G = property(lambda self: self.modules["G"], lambda self, m: self.modules.__setitem__("G", m))
    D = property(lambda self: self.modules["D"], lambda self, m: self.modules.__setitem__("D", m))

    def add(self, name: str, module: nn.Module, player: str) -> None:
        """Add a network trained by ``player``'s optimizer (e.g. VEEGAN's reconstructor with G)."""
        if name in self.modules:
            raise GancoreError(f"a network named {name!r} exists already")
        if player not in PLAYERS:
            raise GancoreError(f"player must be 'G' or 'D', not {player!r}")
        self.modules[name] = module
        self.players[name] = player

    def __getitem__(self, name: str) -> nn.Module:
        return self.modules[name]

    def parameters(self, player: str) -> Iterator[nn.Parameter]:
        for name, module in self.modules.items():
            if self.players[name] == player:
                yield from module.parameters()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GancoreError("train.device=cuda but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


class Trainer:
    """Runs one GAN training: builds data, models and optimizers, then steps, evaluates, checkpoints.

    Plugins see the trainer in every hook. What they may use: ``config`` (the RunConfig),
    ``train`` (its core settings), ``models``, ``optimizers`` (by player), ``dataset``,
    ``data_weights`` (per-point sampling weights or None), ``step``, ``device``, ``generator``
    (the training RNG), ``world`` (a :class:`gancore.distributed.World`: this process's ``rank``
    and the ``size`` of the world training together, 1 without torchrun), ``batch_size`` (this
    rank's share of ``train.batch_size``), and the methods ``noise``, ``real_batch``, ``sample``,
    ``run_steps``, ``reinitialize``, ``mark_good`` and ``evaluate``.
    """

    def __init__(
        self,
        run: Run,
        dataset: Dataset | None = None,
        output: RunDirectory | None = None,
        progress: bool = True,
        generator: nn.Module | None = None,
        discriminator: nn.Module | None = None,
    ):
        self.run = run
        self.config = run.config
        self.train = run.config.train
        self.hook = run.hook
        self.output = output
        self.progress = progress
        train = self.train
        self.world = distributed.join(resolve_device(train.device))
        self.world.check_plugins(run.plugins)
        self.device = self.world.device(resolve_device(train.device))
        self.batch_size = self.world.local_batch_size(train.batch_size)
        self.progress = progress and self.world.is_main
        self.loss = LOSSES[train.loss]
        if self.device.type == "cpu" and train.cpu_threads:
            torch.set_num_threads(train.cpu_threads)
        torch.manual_seed(train.seed)  # network initialization
        self.dataset = (dataset or load_dataset(train.dataset, train.data, train.n_train, train.seed, train.image_size)).to(self.device)
        check_training_fits(train, self.dataset.dim, self.eval_samples, self.device)
        self.generator = torch.Generator(self.device).manual_seed(train.seed)
        self.data_weights: torch.Tensor | None = None
        self.step = 0
        self.history: list[dict] = []
        self.last_logs: dict[str, torch.Tensor | float] = {}
        self.stop_requested: str | None = None  # set by a signal handler; honoured between steps
        self.finishing = False  # the last step is checkpointed: an interruption may stop at once
        self.lr_scale = 1.0  # halved by every rollback after a non-finite loss
        self.lr_decay_span = (0, train.steps)  # train.lr_decay="linear" goes from 1 to 0 over these steps
        self.rollbacks = 0
        self.models = Models(
            build_generator(train, self.dataset.shape) if generator is None else generator,
            build_discriminator(train, self.dataset.shape) if discriminator is None else discriminator,
            frozenset(name for name, given in (("G", generator), ("D", discriminator)) if given is not None),
        )
        self.hook.gancore_build_models(models=self.models, config=self.config, dataset=self.dataset)
        self._initialize_built_networks()
        for module in self.models.modules.values():
            module.to(self.device)
        self.optimizers = {player: self._new_optimizer(player) for player in PLAYERS}
        self.hook.gancore_check_models(trainer=self, batch=self._check_batch())
        self._last_good = copy.deepcopy(self.state_dict())

    def _check_batch(self) -> Batch:
        """What ``gancore_check_models`` probes with, drawing no random numbers: the first
        ``batch_size`` (this rank's) training points (repeated if too few), zero noise and G's samples of it."""
        points = self.dataset.points
        z = torch.zeros(self.batch_size, self.train.z_dim, device=self.device)
        with probing(self.models.G):
            fake = self.models.G(z)
        return Batch("check", 0, z, fake, points[torch.arange(self.batch_size, device=points.device) % len(points)])

    # --- building blocks plugins use -----------------------------------------------------------

    def _new_optimizer(self, player: str) -> torch.optim.Optimizer:
        lr, betas = (self.train.lr_g, self.train.betas_g) if player == "G" else (self.train.lr_d, self.train.betas_d)
        return torch.optim.Adam(self.models.parameters(player), lr=lr * self.lr_scale, betas=tuple(betas))

    def reinitialize(self, player: str) -> None:
        """Give ``player``'s networks fresh random weights and a fresh optimizer (a new round of a
        meta-algorithm). Every layer with ``reset_parameters`` is re-initialized, so wrappers and
        layers that plugins added stay in place: a plugin's custom layer should implement it. Then
        ``train.init`` draws the weights of the networks gancore and plugins built, as at the start."""
        for name, module in self.models.modules.items():
            if self.models.players[name] == player:
                for layer in module.modules():
                    if hasattr(layer, "reset_parameters"):
                        layer.reset_parameters()
        self._initialize_built_networks(player)
        self.optimizers[player] = self._new_optimizer(player)

    def _initialize_built_networks(self, player: str | None = None) -> None:
        """Draw the weights of the networks gancore and plugins built (all, or ``player``'s) as
        ``train.init`` says; networks the user gave keep theirs."""
        for name, module in self.models.modules.items():
            if name not in self.models.given and player in (None, self.models.players[name]):
                initialize(module, self.train.init)

    def restart_lr_decay(self, start: int, end: int) -> None:
        """With ``train.lr_decay = "linear"``, decay the learning rates from their full value at
        step ``start`` to 0 at step ``end`` (instead of over the whole run), e.g. for each GAN that a
        meta-algorithm trains from scratch. Not saved with checkpoints: a plugin that calls this sets
        it again when a resumed run re-enters its loop."""
        if not 0 <= start < end:
            raise GancoreError(f"learning-rate decay span must satisfy 0 <= start < end, got {start}..{end}")
        self.lr_decay_span = (start, end)

    def noise(self, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` (default: this rank's batch) draws of G's input noise, from ``generator``, or by
        default from the training stream, shared by all ranks: it draws ``n`` for every rank and
        returns this rank's share (gancore.distributed)."""
        n = self.batch_size if n is None else n
        if generator is not None:
            return torch.randn(n, self.train.z_dim, device=self.device, generator=generator)
        return self.world.share(torch.randn(n * self.world.size, self.train.z_dim, device=self.device, generator=self.generator))

    def real_batch(self, n: int | None = None) -> torch.Tensor:
        """``n`` (default: this rank's batch) training points, this rank's share of a draw for all ranks."""
        index = self.dataset.sample_index((n or self.batch_size) * self.world.size, self.generator, self.data_weights)
        return self.dataset.points[self.world.share(index).to(self.dataset.points.device)]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples of the model (a plugin's mixture, or G(z)), drawn with ``generator``."""
        generator = generator or self.generator
        samples = self.hook.gancore_sample(trainer=self, n=n, generator=generator)
        if samples is None:
            samples = self.models.G(self.noise(n, generator))
        return samples

    # --- the step --------------------------------------------------------------------------------

    def train_step(self) -> None:
        hook, step = self.hook, self.step
        if self.train.lr_decay == "linear":
            self._set_learning_rates()
        hook.gancore_step_start(trainer=self, step=step)
        d_updates, g_updates = hook.gancore_step_schedule(trainer=self, step=step) or (self.train.n_critic, 1)
        logs: dict[str, torch.Tensor] = {}
        if self.train.update_order == "simultaneous":
            if (d_updates, g_updates) != (1, 1):
                raise GancoreError(
                    f"train.update_order = simultaneous makes one update of each player per step, but step {step} asks for "
                    f"{d_updates} D and {g_updates} G updates (a plugin's schedule); use train.update_order = alternating"
                )
            # one noise batch and one real batch; both gradients at the parameters before either step
            z = self.noise()
            fake = self.models.G(z)
            d_terms = self._discriminator_terms(Batch("D", step, z, fake.detach(), self.real_batch()))
            g_terms = self._generator_terms(Batch("G", step, z, fake))
            self._update({"D": d_terms, "G": g_terms}, logs)
        else:
            for _ in range(d_updates):
                z = self.noise()
                with torch.no_grad():
                    fake = self.models.G(z)
                self._update({"D": self._discriminator_terms(Batch("D", step, z, fake, self.real_batch()))}, logs)
            for _ in range(g_updates):
                z = self.noise()
                self._update({"G": self._generator_terms(Batch("G", step, z, self.models.G(z)))}, logs)
        hook.gancore_step_end(trainer=self, step=step, logs=logs)
        self.last_logs = logs
        self.step += 1

    def _discriminator_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        hook = self.hook
        hook.gancore_discriminator_batch(trainer=self, batch=batch)
        real_out, fake_out = self.models.D(batch.real), self.models.D(batch.fake)
        terms = {"adversarial": self.loss.discriminator(real_out.logits, fake_out.logits)}
        hook.gancore_discriminator_loss(trainer=self, batch=batch, real=real_out, fake=fake_out, terms=terms)
        return terms

    def _generator_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        hook = self.hook
        hook.gancore_discriminator_batch(trainer=self, batch=batch)
        critic = hook.gancore_generator_critic(trainer=self, batch=batch) or self.models.D
        fake_out = critic(batch.fake)
        terms = {"adversarial": self.loss.generator(fake_out.logits)}
        hook.gancore_generator_loss(trainer=self, batch=batch, fake=fake_out, critic=critic, terms=terms)
        return terms

    def _update(self, terms_of: dict[str, dict[str, torch.Tensor]], logs: dict) -> None:
        """One optimizer step per player of ``terms_of`` (player -> its loss terms), on the gradient of
        the sum of its terms. Two players (simultaneous updates): every gradient is taken before any
        step, each into its own player's parameters only, and a non-finite loss stops both."""
        players = list(terms_of)
        for index, player in enumerate(players):
            self.optimizers[player].zero_grad(set_to_none=True)
            total = sum(terms_of[player].values())
            if len(players) == 1:
                total.backward()
            else:  # the graphs may share nodes (a plugin's cached forward): keep them for the next player's backward
                trained = [parameter for parameter in self.models.parameters(player) if parameter.requires_grad]
                total.backward(inputs=trained, retain_graph=index < len(players) - 1)
            if self.world.parallel:  # the ranks' mean gradients and losses (one all-reduce): every rank judges and steps alike
                terms_of[player] = self.world.average(self.models.parameters(player), terms_of[player], f"{player}'s update at step {self.step}")
                total = sum(terms_of[player].values())
            # one host sync per update, so that divergence is caught at the step where it happens
            if not torch.isfinite(total):
                terms = terms_of[player]
                bad = next((name for name, value in terms.items() if not torch.isfinite(value)), "total")
                raise NonFiniteError(f"{player}'s loss term {bad!r} is {float(terms.get(bad, total))} at step {self.step}")
        for player in players:
            self.optimizers[player].step()
            self.hook.gancore_after_optimizer_step(trainer=self, player=player)
            for name, value in terms_of[player].items():
                logs[f"loss_{player}/{name}"] = value.detach()

    # --- loops -----------------------------------------------------------------------------------

    def run_steps(self, n: int) -> None:
        """Run ``n`` steps with evaluations every ``eval_every`` and checkpoints every ``checkpoint_every``.

        A non-finite loss stops training (``on_nonfinite = "stop"``) or reloads the last good
        state with halved learning rates (``"rollback"``, at most ``max_rollbacks`` times).
        A pending ``stop_requested`` checkpoints and raises :class:`TrainingInterrupted`.
        """
        train = self.train
        target = self.step + n
        bar = tqdm(total=n, disable=not self.progress, desc="train", unit="step", dynamic_ncols=True, leave=False)
        refresh = max(1, n // 100)
        with bar:
            while self.step < target:
                try:
                    self.train_step()
                    if train.eval_every and self.step % train.eval_every == 0:
                        self.evaluate()
                    if train.checkpoint_every and self.step % train.checkpoint_every == 0:
                        self.save_checkpoint()
                except NonFiniteError as error:
                    self._recover(error)
                stop = self.stop_requested
                if self.world.parallel:  # every rank stops after this step if any rank was signalled
                    requested = signal.Signals[stop].value if stop else 0
                    agreed = self.world.largest(requested, self.device, f"the stop check after step {self.step}")
                    # a signal that arrives during the check stays in stop_requested for the next one
                    stop = signal.Signals(agreed).name if agreed else None
                if stop:
                    self.stop_requested = stop
                    self.save_checkpoint()
                    raise TrainingInterrupted(self.step)
                done = n - (target - self.step)
                if done % refresh == 0 or done == n:
                    bar.update(done - bar.n)
                    bar.set_postfix_str(self._status(), refresh=False)

    def _recover(self, error: NonFiniteError) -> None:
        where = f"; last good checkpoint: step {self._last_good['step']}"
        if self.train.on_nonfinite == "stop":
            raise NonFiniteError(f"training diverged: {error}{where} (--on-nonfinite rollback retries with halved learning rates)") from None
        if self.rollbacks >= self.train.max_rollbacks:
            raise NonFiniteError(f"training diverged {self.rollbacks + 1} times, last: {error}{where}; lower the learning rates") from None
        rollbacks, lr_scale = self.rollbacks + 1, self.lr_scale * 0.5
        self.load_state_dict(copy.deepcopy(self._last_good))
        self.rollbacks, self.lr_scale = rollbacks, lr_scale
        self._set_learning_rates()
        if self.progress:
            tqdm.write(f"gancore: {error}; rolled back to step {self.step} with learning rates x{lr_scale:g}")

    def _set_learning_rates(self) -> None:
        """lr = configured lr × rollback scale × linear decay factor (1 → 0 over
        :attr:`lr_decay_span`, by default the whole run), if enabled."""
        factor = self.lr_scale
        if self.train.lr_decay == "linear":
            start, end = self.lr_decay_span
            factor *= min(1.0, max(0.0, 1.0 - (self.step - start) / max(end - start, 1)))
        for player, optimizer in self.optimizers.items():
            base = self.train.lr_g if player == "G" else self.train.lr_d
            for group in optimizer.param_groups:
                group["lr"] = base * factor

    def _status(self) -> str:
        parts = [f"{name.split('/')[0]}={float(value):.3f}" for name, value in self.last_logs.items() if name.endswith("/adversarial")]
        if self.history and "modes_captured" in self.history[-1]:
            last = self.history[-1]
            parts.append(f"modes={last['modes_captured']}/{last['n_modes']}")
            if "hq_percent" in last:
                parts.append(f"hq={last['hq_percent']:.1f}%")
        return " ".join(parts)

    def fit(self) -> dict:
        """Train (``gancore_fit`` or ``steps`` steps), evaluate at the end and return the summary.

        The last step's checkpoint is written before the final evaluation, so that from then on
        (:attr:`finishing`) an interruption loses nothing and need not wait for the evaluation.
        """
        try:
            return self._fit()
        finally:
            if self.output:
                self.output.release()  # the run directory's lock: another process may resume it now

    def _fit(self) -> dict:
        started, first_step = Stopwatch(), self.step
        source_commit()  # cached now: a segment names the commit this process loaded, not the checkout's when it ends
        try:
            if not self.hook.gancore_fit(trainer=self):
                self.run_steps(self.train.steps - self.step)
            if self.output and not self.output.has_checkpoint(self.step):
                self.save_checkpoint()
            self.finishing = True
            evaluated = bool(self.history) and self.history[-1]["step"] == self.step
            final = self.history[-1] if evaluated else self.evaluate()
            summary = {"dataset": self.dataset.name, "plugins": list(self.config.plugins), "seed": self.train.seed, **final}
            self.hook.gancore_fit_end(trainer=self, summary=summary)
            if self.output and not evaluated:
                self.save_checkpoint()  # again, with the final evaluation in its history
        except TrainingInterrupted:  # its checkpoint is written: the session is a segment of the run
            if self.output:
                self.output.record_segment(self, started.elapsed(), first_step)
            raise
        if self.output:
            self.output.finish(self, summary, started.elapsed(), first_step)
        return summary

    @property
    def eval_samples(self) -> int:
        return self.train.eval_samples or self.dataset.eval_samples

    def evaluation_generator(self, salt: int = 0) -> torch.Generator:
        """The random generator of the evaluation at the current step: seeded by seed, step and
        ``salt``, so evaluations never change the training RNG stream and are reproducible. The
        same salt gives the same draws as the core's evaluation (salt 0)."""
        return torch.Generator(self.device).manual_seed(self.train.seed * 1_000_003 + self.step + salt)

    def evaluate(self) -> dict:
        """Score ``eval_samples`` samples (VEEGAN protocol), log them and return the metrics."""
        metrics: dict = {"step": self.step}
        metrics.update({name: round(float(value), 6) for name, value in self.last_logs.items()})
        if self.dataset.modes is not None or self.dataset.scorer is not None:
            metrics.update(self.dataset.score(self.sample(self.eval_samples, self.evaluation_generator())))
        self.hook.gancore_evaluate(trainer=self, step=self.step, metrics=metrics)
        self.history.append(metrics)
        if self.output:
            self.output.append_metrics(metrics)
        return metrics

    # --- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "models": {name: module.state_dict() for name, module in self.models.modules.items()},
            "optimizers": {player: opt.state_dict() for player, opt in self.optimizers.items()},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": _numpy_rng_state(),
            "python_rng": {"state": list(random.getstate()[1]), "gauss": random.getstate()[2]},
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "data_weights": self.data_weights,
            "history": self.history,
            "last_logs": {name: float(value) for name, value in self.last_logs.items()},
            "plugins": self.run.plugin_states(self),
            # what defines the run, so that a resume can refuse an edited config.toml
            "run": {"config": self.config.to_toml_dict(), "plugins": self.run.identity()},
        }

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.models.modules) ^ set(state["models"])
        if missing:
            raise CheckpointMismatch(f"its networks {sorted(state['models'])} are not this run's {sorted(self.models.modules)}")
        self.run.load_plugin_states(self, state["plugins"])  # first: a plugin may rebuild networks
        for name, module in self.models.modules.items():
            module.load_state_dict(state["models"][name])
        for player, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][player])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        _set_numpy_rng_state(state["numpy_rng"])
        random.setstate((3, tuple(state["python_rng"]["state"]), state["python_rng"]["gauss"]))
        self.lr_scale = state["lr_scale"]
        self.rollbacks = state.get("rollbacks", 0)  # absent from checkpoints written before it was kept
        self.data_weights = state["data_weights"]
        self.history = state["history"]
        self.last_logs = state["last_logs"]
        self.step = state["step"]
        # a rollback after a resume returns here, not to the freshly built networks
        self._last_good = copy.deepcopy(self.state_dict())

    def mark_good(self) -> dict:
        """Keep the current state as the one a rollback returns to; return it."""
        self._check_parameters()
        state = self.state_dict()
        self._last_good = copy.deepcopy(state)
        return state

    def save_checkpoint(self) -> None:
        """Mark the current state good (for rollback) and write it to the run directory, if any."""
        state = self.mark_good()
        if self.output:
            self.output.save_checkpoint(self.step, state, self.train.keep_checkpoints)

    def _check_parameters(self) -> None:
        for name, module in self.models.modules.items():
            for parameter_name, parameter in module.named_parameters():
                if not torch.isfinite(parameter).all():
                    raise NonFiniteError(f"parameter {name}.{parameter_name} is not finite at step {self.step}")


def _numpy_rng_state() -> dict:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "position": position, "has_gauss": has_gauss, "cached": cached}


def _set_numpy_rng_state(state: dict) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["position"], state["has_gauss"], state["cached"]))
