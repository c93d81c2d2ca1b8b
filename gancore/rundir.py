"""A run directory: resolved config, metrics.jsonl, summary.json, checkpoints and pictures.

Run directories are never reused: a new run gets a fresh name, created atomically, and every
file is written atomically (or appended line by line), so an interrupted run leaves nothing
half-written. While a process trains in a run directory it holds an exclusive lock on it
(``run.lock``, released by the operating system when the process ends, however it ends).
"""
from __future__ import annotations

import json
import os
import shutil
import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import tomli_w

from gancore import __version__
from gancore.checkpoint import PATTERN, atomic_write, list_checkpoints, save_checkpoint
from gancore.config import CORE, RunConfig
from gancore.distributed import launched_rank
from gancore.errors import GancoreError, one_line
from gancore.provenance import build_info
from gancore.report import plot_mode_shares, plot_samples

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: runs are not locked
    fcntl = None

if TYPE_CHECKING:
    from gancore.manager import Catalog, Run
    from gancore.trainer import Trainer

MAX_NAME_CHARS = 200  # leaves room for a "-9999" suffix within the 255 bytes file systems allow
MAX_SUFFIX = 9999
LOCK_FILE = "run.lock"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def dump_json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def check_run_name(name: str) -> str:
    """``name`` if it can name a run directory: one path component of printable characters."""
    problem = None
    if not name or name in (".", ".."):
        problem = "it must not be empty, '.' or '..'"
    elif "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        problem = "it must be one folder name, without / or \\"
    elif any(unicodedata.category(char).startswith("C") for char in name):
        problem = "it must not contain control characters"
    elif len(name.encode()) > MAX_NAME_CHARS:
        problem = f"it is {len(name.encode())} bytes long; at most {MAX_NAME_CHARS}"
    if problem:
        raise GancoreError(f"--name {name!r}: {problem}")
    return name


def default_run_name(config: RunConfig) -> str:
    """DATASET-PLUGINS-sSEED (a data file's stem for DATASET), made safe as one folder name."""
    train = config.train
    name = f"{Path(train.data).stem if train.data else train.dataset}-{'+'.join(config.plugins) or 'vanilla'}-s{train.seed}"
    name = "".join("_" if char in "/\\" or unicodedata.category(char).startswith("C") else char for char in name)
    return name.encode()[:MAX_NAME_CHARS].decode(errors="ignore").strip(".") or "run"


class RunLock:
    """An exclusive lock on a run directory, held from creation or resume until the process ends
    (or :meth:`release`). A lock file left by a dead process does not block: the operating
    system drops a lock when its process ends."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_FILE
        self.handle = None

    def acquire(self) -> "RunLock":
        if fcntl is None:
            return self
        try:
            handle = open(self.path, "a+")
        except OSError as error:
            raise GancoreError(f"cannot lock run directory {self.path.parent}: {error.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise GancoreError(f"run directory {self.path.parent} is in use by process {holder}; wait for it to finish (or stop it)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing drops the lock
            self.handle = None


def _make_root(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GancoreError(f"cannot create output directory {root}: {exc.strerror}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise GancoreError(f"output directory {root} is not writable; choose another with --out")


class RunDirectory:
    """The files of one run under ``path``."""

    def __init__(self, path: Path, lock: RunLock | None = None):
        self.path = path
        self.checkpoints = path / "checkpoints"
        self.lock = lock

    @classmethod
    def create(cls, root: Path, name: str, run: Run) -> "RunDirectory":
        """Make a new run directory under ``root`` named ``name`` (or ``name-2``, ... when taken),
        lock it, and write its config and run.json. An existing directory is never reused."""
        _make_root(root)
        for attempt in range(1, MAX_SUFFIX + 1):
            path = root / (name if attempt == 1 else f"{name}-{attempt}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise GancoreError(f"cannot create run directory {path}: {exc.strerror}") from None
        else:
            raise GancoreError(f"{name} and {name}-2 … {name}-{MAX_SUFFIX} all exist in {root}; choose another --name or --out")
        return cls._started(path, run, None)

    @classmethod
    def create_exactly(cls, path: Path, run: Run, given: dict | None = None) -> "RunDirectory":
        """Make the new run directory ``path`` itself (gancore.fit's ``run_dir``); an existing one is refused.

        :param given: what ``gancore.fit`` was given that config.toml cannot hold (the user's
            networks, data, plugin objects), recorded in run.json: only gancore.fit resumes such a run.
        """
        _make_root(path.parent)
        try:
            path.mkdir()
        except FileExistsError:
            raise GancoreError(f"run_dir {path} exists already; resume it with resume=True, or choose a new directory") from None
        except OSError as exc:
            raise GancoreError(f"cannot create run directory {path}: {exc.strerror}") from None
        return cls._started(path, run, given)

    @classmethod
    def _started(cls, path: Path, run: Run, given: dict | None) -> "RunDirectory":
        directory = cls(path, RunLock(path).acquire())
        _write_text(path / "config.toml", tomli_w.dumps(run.config.to_toml_dict()))
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        recipe = {"recipe": run.config.recipe} if run.config.recipe else {}
        given_networks = {"given": given} if given else {}
        meta = {"gancore": __version__, **recipe, "plugins": run.identity(), "started": started, **given_networks}
        _write_text(path / "run.json", dump_json(meta))
        return directory

    def append_metrics(self, metrics: dict) -> None:
        try:
            with open(self.path / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(metrics, sort_keys=True) + "\n")
        except OSError as error:
            raise GancoreError(f"cannot write {self.path / 'metrics.jsonl'}: {error.strerror}") from None

    def has_checkpoint(self, step: int) -> bool:
        return (self.checkpoints / PATTERN.format(step)).is_file()

    def save_checkpoint(self, step: int, state: dict, keep: int) -> Path:
        return save_checkpoint(self.checkpoints, step, state, keep)

    def discard_if_unstarted(self) -> bool:
        """Remove this run directory if no checkpoint was written in it (a run that failed before
        its first checkpoint), so that it neither lingers nor makes the next run ``NAME-2``."""
        if list_checkpoints(self.checkpoints):
            return False
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)
        return True

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def finish(self, trainer: Trainer, summary: dict, elapsed: dict[str, float], first_step: int) -> None:
        """Write summary.json (deterministic: no times or paths), this session's segment (:meth:`record_segment`) and the pictures."""
        _write_text(self.path / "summary.json", dump_json(summary))
        self.record_segment(trainer, elapsed, first_step)
        self.write_pictures(trainer)

    def record_segment(self, trainer: Trainer, elapsed: dict[str, float], first_step: int) -> None:
        """Add to run.json's ``segments`` the session that ends now (finished or interrupted, its
        checkpoint written): the steps it trained (``first_step`` to the current), the total it
        was run for (``of``: a later ``--steps`` extends a run), its wall and CPU time
        (:class:`gancore.provenance.Stopwatch`), device, number of processes and the build that ran
        it (:func:`gancore.provenance.build_info`); ``wall_seconds`` becomes the sum over segments,
        and ``cpu_seconds`` too where every segment has one (runs made before it was recorded have none).
        Only rank 0 writes: in a distributed run the CPU time is rank 0's process's."""
        meta = json.loads((self.path / "run.json").read_text())
        segment = {"steps": [first_step, trainer.step], "of": trainer.train.steps, **elapsed,
                   "device": str(trainer.device), "world_size": trainer.world.size, "build": build_info()}
        segments = [*meta.get("segments", []), segment]
        meta.update(segments=segments, device=str(trainer.device), steps=trainer.step)
        for key in elapsed:
            if all(key in segment for segment in segments):
                meta[key] = round(sum(segment[key] for segment in segments), 3)
            else:
                meta.pop(key, None)
        _write_text(self.path / "run.json", dump_json(meta))

    def write_pictures(self, trainer: Trainer) -> None:
        label = f"{trainer.dataset.name}, {'+'.join(trainer.config.plugins) or 'vanilla'}, seed {trainer.train.seed}, step {trainer.step}"
        samples = trainer.sample(trainer.eval_samples)
        plot_samples(self.path / "samples.png", samples, trainer.dataset, label)
        plot_mode_shares(self.path / "modes.png", trainer.history, label)


def _run_json(path: Path) -> dict:
    try:
        meta = json.loads((path / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _check_plugins_installed(path: Path, names: list[str], catalog: Catalog) -> None:
    """A plugin the run used but this environment lacks: say which distribution to install."""
    recorded = _run_json(path).get("plugins", {})
    for name in names:
        if name not in catalog.plugins and name not in catalog.broken:
            origin = recorded.get(name) if isinstance(recorded, dict) else None
            if isinstance(origin, dict) and "package" in origin:
                raise GancoreError(
                    f"run {path} uses plugin {name}, which is not installed: pip install '{origin['package']}=={origin.get('version', '')}'".rstrip("=")
                )


def check_checkpoint_matches(checkpoint: Path, state: dict, run: Run) -> None:
    """Refuse a checkpoint written by another run than the one config.toml describes: another
    plugin set, other plugin distributions or versions, or any other setting than ``steps``
    (the one a resume may change, with --steps). Checkpoints written before gancore recorded
    this carry no ``run`` and are not checked."""
    recorded = state.get("run")
    if not isinstance(recorded, dict):
        return
    plugins, expected = recorded.get("plugins", {}), run.identity()
    if list(plugins) != list(expected):
        raise GancoreError(
            f"checkpoint {checkpoint} was written with plugins [{', '.join(plugins)}] but config.toml enables [{', '.join(expected)}]; "
            "restore config.toml (only --steps may change on resume)"
        )
    for name, origin in expected.items():
        if plugins[name] != origin:
            written = plugins[name]
            raise GancoreError(
                f"checkpoint {checkpoint}: plugin {name} was {written.get('package')} {written.get('version')}, "
                f"now {origin['package']} {origin['version']} is installed; install the version the run used"
            )
    before, now = _settings(recorded.get("config", {})), _settings(run.config.to_toml_dict())
    for key in sorted(set(before) | set(now)):
        if key != f"{CORE}.steps" and before.get(key) != now.get(key):
            raise GancoreError(
                f"config.toml sets {key} = {now.get(key)!r} but checkpoint {checkpoint} was trained with {before.get(key)!r}; "
                "restore config.toml (only --steps may change on resume)"
            )


def _settings(config: dict) -> dict:
    """``{"train.steps": 2000, "pacgan.m": 2, ...}`` from a :meth:`RunConfig.to_toml_dict`."""
    flat = {f"{CORE}.{key}": value for key, value in config.get(CORE, {}).items()}
    for plugin, options in config.get("plugins", {}).items():
        flat.update({f"{plugin}.{key}": value for key, value in options.items()})
    return flat


def _built_from(build: Callable | None) -> str:
    return "the run's config.toml" if build is None else "the networks and settings this call gives"


def _first_problem(error: BaseException) -> str:
    """torch's ``load_state_dict`` error is a header line, then one line per problem: keep the first problem."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return one_line(f"{lines[0]} {lines[1]}", 300)
    return one_line(error, 160)


def given_to_fit(path: Path) -> dict:
    """What gancore.fit was given for the run at ``path`` and config.toml cannot hold ({} if nothing)."""
    given = _run_json(path).get("given", {})
    return given if isinstance(given, dict) else {}


def open_trainer(
    path: Path,
    catalog: Catalog,
    progress: bool = False,
    steps: int | None = None,
    build: Callable[[Run], Trainer] | None = None,
    checkpoint: Path | None = None,
) -> "Trainer":
    """Rebuild the trainer of the run at ``path`` from its config.toml and load its latest checkpoint
    (or ``checkpoint``, one of its own).

    :param steps: a new total number of steps (to extend a finished run).
    :param build: makes the trainer of the resolved run (gancore.fit's, with the user's networks
        and data); without it, a run that gancore.fit was given networks, data or plugin objects
        for is refused, since nothing else can rebuild it.
    """
    from gancore.checkpoint import latest_checkpoint, load_checkpoint
    from gancore.config import read_toml
    from gancore.trainer import CheckpointMismatch, Trainer

    if not (path / "config.toml").is_file():
        raise GancoreError(f"{path} is not a gancore run directory (no config.toml)")
    given = given_to_fit(path)
    if given and build is None:
        raise GancoreError(
            f"run {path} was trained by gancore.fit with your own {' and '.join(given)}; "
            f"only Python can rebuild it: gancore.fit(..., run_dir={str(path)!r}, resume=True)"
        )
    data = read_toml(path / "config.toml")
    _check_plugins_installed(path, list(data.get("plugins", {})), catalog)
    values = {CORE: {**data.get(CORE, {}), **({} if steps is None else {"steps": steps})}, **data.get("plugins", {})}
    run = catalog.resolve(list(data.get("plugins", {})), values)
    run.config.recipe = data.get("recipe", {}).get("name")
    checkpoint = checkpoint or latest_checkpoint(path / "checkpoints")
    state = load_checkpoint(checkpoint, "cpu")
    check_checkpoint_matches(checkpoint, state, run)
    if steps is not None and steps < state["step"]:
        raise GancoreError(f"--steps {steps} is below the step the run has reached ({state['step']}); give a larger total")
    with run.reporting_plugin_faults():
        trainer = Trainer(run, progress=progress) if build is None else build(run)
    state = load_checkpoint(checkpoint, trainer.device) if trainer.device.type != "cpu" else state
    with run.reporting_plugin_faults():
        try:
            trainer.load_state_dict(state)
        except CheckpointMismatch as error:
            raise GancoreError(f"checkpoint {checkpoint} does not match {_built_from(build)}: {error}") from None
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as error:
            raise GancoreError(f"checkpoint {checkpoint} does not match {_built_from(build)} ({_first_problem(error)})") from None
    trainer.output = RunDirectory(path)
    return trainer


def resume_run(path: Path, catalog: Catalog, progress: bool, steps: int | None, build: Callable[[Run], Trainer] | None = None) -> "Trainer":
    """Open a run to continue training, holding its lock: metrics logged after its last
    checkpoint are dropped (they are recomputed), and leftovers of an interrupted checkpoint
    write are removed. config.toml is rewritten only when ``steps`` changes the total."""
    if not (path / "config.toml").is_file():
        raise GancoreError(f"{path} is not a gancore run directory (no config.toml)")
    if launched_rank() != 0:  # another rank of a parallel run: rank 0 holds the lock and writes
        trainer = open_trainer(path, catalog, progress, steps, build)
        trainer.output = None
        return trainer
    lock = RunLock(path).acquire()
    try:
        trainer = open_trainer(path, catalog, progress, steps, build)
        trainer.output.lock = lock
        if steps is not None:
            _write_text(path / "config.toml", tomli_w.dumps(trainer.config.to_toml_dict()))
        for leftover in trainer.output.checkpoints.glob(".*.tmp"):
            leftover.unlink()
        lines = "".join(json.dumps(metrics, sort_keys=True) + "\n" for metrics in trainer.history)
        _write_text(path / "metrics.jsonl", lines)
    except BaseException:
        lock.release()
        raise
    return trainer
