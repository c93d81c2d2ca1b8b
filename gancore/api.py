"""The Python API: ``gancore.fit`` trains your own networks on your own data, with plugins by
name or as objects, and ``gancore train`` is a thin caller of the same training.

    result = gancore.fit(G, D, points, plugins=["pacgan", ("unrolled", {"steps": 5})], steps=2000)
    result.summary, result.history, result.models["G"], result.sample(1000)
"""
from __future__ import annotations

import copy
import hashlib
import re
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from gancore.config import CORE, read_toml
from gancore.data import Dataset, dataset_from, load_dataset
from gancore.errors import GancoreError, Interrupted
from gancore.manager import INLINE_PACKAGE, Catalog, Run, plugin_fault
from gancore.models import adopt_discriminator, adopt_generator
from gancore.recipes import RecipeBook, chosen_recipe, settings_layers
from gancore.rundir import RunDirectory, given_to_fit, resume_run
from gancore.trainer import Trainer, TrainingInterrupted, resolve_device

USER_DATA = "user-data"  # train.dataset of a run on data given to gancore.fit


@dataclass
class Result:
    """What :func:`fit` returns.

    :ivar summary: the final evaluation (as ``summary.json``): step, losses, mode metrics if known.
    :ivar history: every evaluation's metrics, in order (as ``metrics.jsonl``).
    :ivar models: the trained networks by name (``"G"``, ``"D"`` as plugins wrapped it, and
        any a plugin added, such as VEEGAN's ``"F"``), in training mode as the trainer left them
        (call ``.eval()`` for inference with batch-norm running statistics).
    :ivar run_dir: the run directory written, or None.
    """

    summary: dict
    history: list[dict]
    models: dict[str, nn.Module]
    run_dir: Path | None
    trainer: Trainer = field(repr=False)

    @property
    def generator(self) -> nn.Module:
        return self.models["G"]

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` samples of the trained model (a plugin's mixture or average, else G(z)), drawn with ``seed``."""
        with self.trainer.run.reporting_plugin_faults():
            return self.trainer.sample(n, torch.Generator(self.trainer.device).manual_seed(seed))


def fit(
    generator: nn.Module | None = None,
    discriminator: nn.Module | None = None,
    data: Any = None,
    *,
    plugins: Iterable[Any] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
    modes: Any = None,
    radius: float | None = None,
    scorer: Callable[[torch.Tensor], dict] | None = None,
    config: str | Path | None = None,
    recipe: str | None = None,
    progress: bool = True,
    **settings: Any,
) -> Result:
    """Train a GAN and return its :class:`Result`.

    :param generator: your G, an ``nn.Module`` from noise (n, z_dim) to samples (n, *shape);
        None for the built-in G. ``z_dim`` defaults to ``generator.z_dim`` if it has one.
    :param discriminator: your D, an ``nn.Module`` returning a :class:`gancore.models.Critique`
        or plain logits (n,) or (n, 1) (then plugins that need D's features refuse it); a
        ``body`` + ``head`` pair is ``gancore.models.Discriminator(body, head)``. None for the built-in D.
        fit trains copies: the modules you pass are left as they are.
    :param data: a tensor or numpy array (n, *shape), a map-style torch ``Dataset`` or a
        ``DataLoader`` (its dataset is used and its batch size is the default ``batch_size``;
        batches are drawn by the trainer, with replacement, from the seeded training stream), a
        path (as ``--data``), or None for the built-in ``dataset`` setting.
    :param plugins: in order, each a plugin name (``"pacgan"``), a plugin object or class with
        ``@gancore.hookimpl`` methods (named by its ``name`` attribute, else its class name in
        kebab case: ``LabelNoise`` -> ``label-noise``), or a pair ``(name or object, {option: value})``;
        or a dict ``{name or object: {option: value}}``.
    :param run_dir: write a run directory there (config, metrics, checkpoints, pictures), as
        ``gancore train`` does; None writes nothing.
    :param resume: continue the run in ``run_dir`` from its last checkpoint; give the same
        networks, data, plugins and settings as when it started (``steps`` may be a new total).
    :param modes: mode centres (K, *shape) of your data, with ``radius`` (the L2 high-quality
        distance), for the mode metrics; or ``scorer``: a function from samples to a dict of metrics.
    :param config: a TOML file as ``--config`` takes (``[train]``, ``[plugins.NAME]``; a run's
        ``config.toml`` repeats it): its plugins come first, and ``plugins`` and ``settings`` override it.
    :param recipe: start from an installed recipe (``gancore recipes`` lists them), as
        ``--recipe`` does: ``config``, then ``plugins`` and ``settings`` override it.
    :param progress: show a progress bar.
    :param settings: the core settings, by the names of ``gancore train`` (``steps``,
        ``batch_size``, ``seed``, ``lr_d``, ... : the README's table of ``train.*``).
    """
    catalog = Catalog.installed()
    names, values, objects = _plugin_choices(catalog, plugins)
    chosen = None  # the recipe the run starts from
    if config is not None or recipe is not None:
        from_file = read_toml(config) if config is not None else {}
        recipe = chosen_recipe(recipe, from_file)
        chosen = RecipeBook.installed().get(recipe) if recipe else None
        enabled, layered = settings_layers(chosen, catalog, from_file)
        settings = {**layered.pop(CORE), **settings}
        names = [*enabled, *names]
        values = {name: {**layered.get(name, {}), **values.get(name, {})} for name in names}
    if isinstance(data, (str, Path)):
        settings = {**settings, "data": str(data)}
        data = None
    if data is not None and ("dataset" in settings or "data" in settings):
        raise GancoreError("gancore.fit: give your data or the dataset/data setting, not both")
    if isinstance(data, torch.utils.data.DataLoader) and "batch_size" not in settings and data.batch_size:
        settings = {**settings, "batch_size": data.batch_size}
    if generator is not None and "z_dim" not in settings and isinstance(getattr(generator, "z_dim", None), int):
        settings = {**settings, "z_dim": generator.z_dim}
    user_data = None if data is None else dataset_from(data, modes, radius, scorer)
    if data is None and (modes is not None or radius is not None or scorer is not None):
        raise GancoreError("gancore.fit: modes, radius and scorer describe your data; the built-in datasets have their own")
    values[CORE] = {**settings, **({"dataset": USER_DATA} if user_data is not None else {})}
    given = _given(generator, discriminator, user_data, objects)

    def build(run: Run) -> Trainer:
        train = run.config.train
        dataset = user_data or load_dataset(train.dataset, train.data, train.n_train, train.seed, train.image_size)
        device = resolve_device(train.device)
        dataset.to(device)
        G = D = None
        if generator is not None:
            G = adopt_generator(copy.deepcopy(generator), train.z_dim, dataset.shape, device)
        if discriminator is not None:
            D = adopt_discriminator(copy.deepcopy(discriminator), dataset.points[:2])
        return Trainer(run, dataset, progress=progress, generator=G, discriminator=D)

    if resume:
        if run_dir is None:
            raise GancoreError("gancore.fit: resume=True continues the run in run_dir; give run_dir")
        trainer = _resumed(Path(run_dir), catalog, names, values, given, build, progress)
    else:
        run = catalog.resolve(names, values)
        run.config.recipe = recipe
        with run.reporting_plugin_faults():
            trainer = build(run)  # data and models first: bad input fails before any file is written
        if chosen and trainer.world.is_main:  # under torchrun, rank 0 alone warns
            chosen.warn_if_not_made_for(run.config.train)
        if run_dir is not None and trainer.world.is_main:
            trainer.output = RunDirectory.create_exactly(Path(run_dir), run, given)
    resume_hint = f"gancore.fit(..., run_dir={str(trainer.output.path)!r}, resume=True)" if trainer.output else ""
    summary = train(trainer, new_run=not resume, resume_hint=resume_hint)
    return Result(summary, list(trainer.history), dict(trainer.models.modules), trainer.output.path if trainer.output else None, trainer)


def train(trainer: Trainer, new_run: bool, resume_hint: str) -> dict:
    """Fit ``trainer`` and return the summary: what ``gancore train`` and :func:`fit` share.

    With a run directory, SIGINT/SIGTERM write a checkpoint and stop cleanly (resumable,
    ``resume_hint`` says how); a new run that fails before its first checkpoint leaves no run
    directory behind; the run directory's lock is released however training ends.
    """
    output = trainer.output
    # every rank of a parallel run listens: the ranks agree on stopping after each step
    handle_signals = (output is not None or trainer.world.parallel) and threading.current_thread() is threading.main_thread()
    if not trainer.world.is_main:
        resume_hint = "rank 0's command"

    def request_stop(signum, frame):
        trainer.stop_requested = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        if trainer.finishing:  # the last step's checkpoint is written already
            raise TrainingInterrupted(trainer.step)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)} if handle_signals else {}
    try:
        with trainer.run.reporting_plugin_faults():
            return trainer.fit()
    except TrainingInterrupted as stop:
        raise Interrupted(
            f"{trainer.stop_requested} at step {stop.step}: checkpoint written; continue with {resume_hint}",
            signal.Signals[trainer.stop_requested].value,
        ) from None
    except BaseException:
        if new_run and output is not None:
            output.discard_if_unstarted()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if output is not None:
            output.release()


# --- plugins -------------------------------------------------------------------------------------


def _plugin_choices(catalog: Catalog, plugins: Iterable[Any]) -> tuple[list[str], dict[str, dict], list[str]]:
    """(names in order, options by plugin, names of plugin objects); objects join ``catalog``."""
    single_pair = isinstance(plugins, tuple) and len(plugins) == 2 and isinstance(plugins[1], dict)
    if single_pair or isinstance(plugins, str) or not isinstance(plugins, Iterable):
        plugins = [plugins]
    elif isinstance(plugins, dict):
        plugins = list(plugins.items())
    names: list[str] = []
    values: dict[str, dict] = {}
    objects: list[str] = []
    for item in plugins:
        options: dict = {}
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[1], dict):
                raise GancoreError(f"gancore.fit plugins: a pair is (name or plugin object, {{option: value}}), not {item!r}")
            item, options = item
        if isinstance(item, str):
            name = item
        else:
            name = _object_name(item)
            if isinstance(item, type):
                try:
                    item = item()
                except Exception as error:
                    raise plugin_fault(f"{name} ({INLINE_PACKAGE})", "__init__", error) from error
            catalog.add_object(name, item)
            objects.append(name)
        names.append(name)
        if options:
            values[name] = dict(options)
    return names, values, objects


def _object_name(plugin: Any) -> str:
    """A plugin object's name: its ``name`` attribute, else its class name in kebab case
    (``LossLog`` -> ``loss-log``, ``PacGAN`` -> ``pac-gan``)."""
    cls = plugin if isinstance(plugin, type) else type(plugin)
    name = getattr(cls, "name", None)
    return name if isinstance(name, str) and name else re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", cls.__name__).lower()


# --- what config.toml cannot hold ----------------------------------------------------------------


def _given(generator: nn.Module | None, discriminator: nn.Module | None, data: Dataset | None, objects: list[str]) -> dict:
    """What the user gave beyond settings, as run.json records it: network classes, a fingerprint
    of the data, the plugin objects' names. A resume must be given the same."""
    given: dict = {}
    networks = {name: type(net).__name__ for name, net in (("G", generator), ("D", discriminator)) if net is not None}
    if networks:
        given["networks"] = networks
    if data is not None:
        points = data.points.detach().cpu().contiguous()
        given["data"] = {"shape": list(points.shape), "sha256": hashlib.sha256(points.numpy().tobytes()).hexdigest()}
    if objects:
        given["plugin objects"] = objects
    return given


def _resumed(path: Path, catalog: Catalog, names: list[str], values: dict, given: dict, build, progress: bool) -> Trainer:
    """The trainer of the run in ``path``, at its last checkpoint, if this call gives what it was started with."""
    if not (path / "config.toml").is_file():
        raise GancoreError(f"gancore.fit: there is no run to resume in {path} (no config.toml); start it with resume=False")
    recorded = given_to_fit(path)
    for key in sorted(set(recorded) | set(given)):
        if recorded.get(key) != given.get(key):
            raise GancoreError(f"run {path} was started with {key} {_describe(recorded.get(key))}, this call gives {key} {_describe(given.get(key))}; resume with the same")
    requested = catalog.resolve(names, values)
    trainer = resume_run(path, catalog, progress, values[CORE].get("steps"), build)
    try:
        _check_same_settings(path, trainer, requested)
    except BaseException:
        if trainer.output:
            trainer.output.release()
        raise
    return trainer


def _check_same_settings(path: Path, trainer: Trainer, requested: Run) -> None:
    if list(requested.config.plugins) != list(trainer.config.plugins):
        raise GancoreError(f"run {path} enables plugins [{', '.join(trainer.config.plugins)}], this call [{', '.join(requested.config.plugins)}]; resume with the same")
    before, now = trainer.config.to_toml_dict(), requested.config.to_toml_dict()
    for owner, options in before["plugins"].items():
        for key, value in options.items():
            if now["plugins"][owner].get(key) != value:
                raise GancoreError(f"run {path} has {owner}.{key} = {value!r}, this call {now['plugins'][owner].get(key)!r}; resume with the same (only steps may change)")
    for key, value in before[CORE].items():
        if key != "steps" and now[CORE].get(key) != value:
            raise GancoreError(f"run {path} has train.{key} = {value!r}, this call {now[CORE].get(key)!r}; resume with the same settings (only steps may change)")


def _describe(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, dict) and "sha256" in value:
        return f"of shape {tuple(value['shape'])} (sha256 {value['sha256'][:12]})"
    return str(value)
