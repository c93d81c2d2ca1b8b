"""The ``gancore`` command. Thin: parse, call the core, print. Errors are one line, exit 2."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
import numpy as np

from gancore import __version__
from gancore.config import CORE, read_toml
from gancore.errors import GancoreError
from gancore.manager import Catalog
from gancore.options import parse_assignments

def _catalog(ctx: click.Context) -> Catalog:
    return ctx.find_root().obj


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gancore")
def cli() -> None:
    """Train GANs that do not mode-collapse: every remedy is a plugin."""


@cli.command()
@click.option("--dataset", help="Built-in dataset: bimodal1d, ring8, grid25, hd1200.  [default: ring8]")
@click.option("--data", type=click.Path(dir_okay=False), help="Train on points from a .npy/.npz/.csv file.")
@click.option("--steps", type=int, help="Training steps.  [default: 2000]")
@click.option("--batch-size", "batch_size", type=int, help="Samples per batch.  [default: 512]")
@click.option("--seed", type=int, help="Random seed.  [default: 0]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to train.  [default: auto]")
@click.option("--plugin", "-p", "plugins", multiple=True, help="Enable a plugin (repeatable, applied in order).")
@click.option("--set", "-s", "assignments", multiple=True, metavar="NAME.OPTION=VALUE", help="Set an option of the core (train.*) or of a plugin (repeatable).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with [train] and [plugins.NAME] tables.")
@click.option("--out", "out", type=click.Path(file_okay=False), default="runs", show_default=True, help="Directory where run directories are created.")
@click.option("--name", help="Run directory name.  [default: DATASET-PLUGINS-sSEED]")
@click.option("--on-nonfinite", "on_nonfinite", type=click.Choice(["stop", "rollback"]), help="On a NaN/Inf loss: stop, or reload the last checkpoint with halved learning rates.  [default: stop]")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this run directory from its last checkpoint (with --steps: a new total).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only the result line.")
@click.pass_context
def train(ctx, config_file, plugins, assignments, out, name, quiet, resume, **flags):
    """Train a GAN and write a run directory (config, metrics, checkpoints, pictures)."""
    from gancore.rundir import RunDirectory, resume_run
    from gancore.trainer import Trainer

    if resume:
        others = [flag for flag, value in flags.items() if value is not None and flag != "steps"]
        if others or plugins or assignments or config_file or name:
            raise GancoreError("--resume continues a run with its own settings; give only --steps (a new total) and --quiet")
        trainer = resume_run(Path(resume), _catalog(ctx), not quiet, flags["steps"])
        _fit(trainer)
        return
    file_data = read_toml(config_file) if config_file else {}
    values: dict[str, dict] = {CORE: dict(file_data.get(CORE, {}))}
    for plugin, options in file_data.get("plugins", {}).items():
        values[plugin] = dict(options)
    for owner, options in parse_assignments(assignments).items():
        values.setdefault(owner, {}).update(options)
    values[CORE].update({key: value for key, value in flags.items() if value is not None})
    enabled = [*file_data.get("plugins", {}), *plugins]
    run = _catalog(ctx).resolve(enabled, values)
    train = run.config.train
    trainer_name = name or f"{Path(train.data).stem if train.data else train.dataset}-{'+'.join(run.config.plugins) or 'vanilla'}-s{train.seed}"
    with run.reporting_plugin_faults():
        trainer = Trainer(run, progress=not quiet)  # data and models first: bad input fails before any file is written
    trainer.output = RunDirectory.create(Path(out), trainer_name, run.config)
    _fit(trainer)


def _fit(trainer) -> None:
    """Fit with SIGINT/SIGTERM turned into a checkpoint and a clean stop (resumable)."""
    from gancore.trainer import TrainingInterrupted

    def request_stop(signum, frame):
        trainer.stop_requested = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with trainer.run.reporting_plugin_faults():
            summary = trainer.fit()
    except TrainingInterrupted as stop:
        raise GancoreError(
            f"{trainer.stop_requested} at step {stop.step}: checkpoint written; continue with gancore train --resume {trainer.output.path}"
        ) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(_result_line(summary))
    click.echo(f"run directory: {trainer.output.path}")


def _result_line(metrics: dict) -> str:
    if "modes_captured" not in metrics:
        return f"step {metrics['step']}: no mode centres known for this data, nothing to score"
    kl = "n/a" if metrics["reverse_kl"] is None else f"{metrics['reverse_kl']:.3f}"
    quality = f"high quality {metrics['hq_percent']:.1f}%, " if "hq_percent" in metrics else ""
    return f"step {metrics['step']}: modes captured {metrics['modes_captured']}/{metrics['n_modes']}, {quality}reverse KL {kl}"


@cli.command("plugins")
@click.pass_context
def list_plugins(ctx):
    """List installed plugins with their origin and options."""
    catalog = _catalog(ctx)
    if not catalog.plugins:
        click.echo("no plugins installed")
    for info in catalog.plugins.values():
        click.echo(f"{info.name}  ({info.package} {info.version})  {info.summary}")
        for option in info.options:
            choices = f" {{{','.join(map(str, option.choices))}}}" if option.choices else ""
            click.echo(f"    {info.name}.{option.name} = {option.default!r}  [{option.type_name}{choices}]  {option.help}")
    for name, error in catalog.broken.items():
        click.echo(f"{name}  (failed to import: {error})")


@cli.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.pass_context
def evaluate(ctx, run_dir):
    """Re-score the last checkpoint of RUN_DIR (VEEGAN protocol)."""
    from gancore.rundir import open_trainer

    trainer = open_trainer(Path(run_dir), _catalog(ctx))
    trainer.output = None  # re-scoring must not append to the run's metrics
    with trainer.run.reporting_plugin_faults():
        click.echo(_result_line(trainer.evaluate()))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", "n", type=click.IntRange(min=1), default=2500, show_default=True, help="Number of samples.")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="Destination .npy file (must not exist).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.pass_context
def sample(ctx, run_dir, n, out, seed):
    """Draw N samples from the last checkpoint of RUN_DIR into a .npy file."""
    import torch

    from gancore.checkpoint import atomic_write
    from gancore.rundir import open_trainer

    destination = Path(out)
    if destination.suffix != ".npy":
        raise GancoreError(f"--out {out}: the file name must end in .npy")
    if destination.exists():
        raise GancoreError(f"--out {out} exists already; choose a new file name")
    trainer = open_trainer(Path(run_dir), _catalog(ctx))
    with trainer.run.reporting_plugin_faults():
        samples = trainer.sample(n, torch.Generator(trainer.device).manual_seed(seed)).cpu().numpy()
    atomic_write(destination, lambda handle: np.save(handle, samples))
    click.echo(f"wrote {n} samples of shape {samples.shape[1:]} to {destination}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: one-line errors with exit status 2, never a traceback."""
    try:
        catalog = Catalog.installed()
        catalog.manager.hook.gancore_register_commands(cli=cli)
        for name, error in catalog.broken.items():
            click.echo(f"gancore: warning: plugin {name} failed to import and is skipped ({error})", err=True)
        status = cli.main(args=argv, prog_name="gancore", obj=catalog, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except (click.ClickException, GancoreError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        click.echo(f"gancore: error: {message}", err=True)
        sys.exit(2)
    except (click.Abort, KeyboardInterrupt):
        click.echo("gancore: interrupted", err=True)
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
