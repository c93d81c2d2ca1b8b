"""The ``gancore`` command. Thin: parse, call the core, print. Errors are one line, exit 2."""
from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from pathlib import Path

import click
import numpy as np

from gancore import __version__
from gancore.config import CORE, MAX_SEED, read_toml
from gancore.distributed import leave as leave_process_group
from gancore.errors import GancoreError, one_line
from gancore.manager import Catalog
from gancore.memory import is_out_of_memory
from gancore.options import parse_assignments
from gancore.recipes import RecipeBook, chosen_recipe, score_line, settings_layers

def _catalog(ctx: click.Context) -> Catalog:
    return ctx.find_root().obj


class _Debug:
    """Whether an error prints its full traceback (``gancore --debug`` or ``GANCORE_DEBUG=1``)."""

    requested = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gancore")
@click.option("--debug", is_flag=True, help="On an error, print the full traceback too (also GANCORE_DEBUG=1); for plugin authors.")
def cli(debug: bool) -> None:
    """Train GANs that do not mode-collapse: every remedy is a plugin."""
    _Debug.requested = _Debug.requested or debug


@cli.command()
@click.option("--dataset", help="Built-in dataset: bimodal1d, ring8, grid25, hd1200.  [default: ring8]")
@click.option("--data", type=click.Path(), help="Train on points from a .npy/.npz/.csv file, or on a folder of PNG/JPEG images.")
@click.option("--steps", type=int, help="Training steps.  [default: 2000]")
@click.option("--batch-size", "batch_size", type=int, help="Samples per batch.  [default: 512]")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), help="Random seed.  [default: 0]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to train.  [default: auto]")
@click.option("--recipe", help="Start from a recipe (see `gancore recipes`); --config, --set and flags override it, --plugin adds plugins after its own.")
@click.option("--plugin", "-p", "plugins", multiple=True, help="Enable a plugin (repeatable, applied in order).")
@click.option("--set", "-s", "assignments", multiple=True, metavar="NAME.OPTION=VALUE", help="Set an option of the core (train.*) or of a plugin (repeatable).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with [train] and [plugins.NAME] tables.")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Directory where run directories are created.  [default: runs]")
@click.option("--name", help="Run directory name (one folder name).  [default: DATASET-PLUGINS-sSEED]")
@click.option("--on-nonfinite", "on_nonfinite", type=click.Choice(["stop", "rollback"]), help="On a NaN/Inf loss: stop, or reload the last checkpoint with halved learning rates.  [default: stop]")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this run directory from its last checkpoint (with --steps: a new total).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only the result line.")
@click.pass_context
def train(ctx, config_file, recipe, plugins, assignments, out, name, quiet, resume, **flags):
    """Train a GAN and write a run directory (config, metrics, checkpoints, pictures)."""
    from gancore.rundir import RunDirectory, check_run_name, default_run_name, resume_run
    from gancore.trainer import Trainer

    if resume:
        others = [flag for flag, value in flags.items() if value is not None and flag != "steps"]
        if others or plugins or assignments or config_file or recipe or name or out:
            raise GancoreError("--resume continues a run with its own settings and directory; give only --steps (a new total) and --quiet")
        _fit(resume_run(Path(resume), _catalog(ctx), not quiet, flags["steps"]), new_run=False)
        return
    if name is not None:
        check_run_name(name)
    file_data = read_toml(config_file) if config_file else {}
    recipe_name = chosen_recipe(recipe, file_data)
    chosen = _recipe_book().get(recipe_name) if recipe_name else None
    enabled, values = settings_layers(chosen, _catalog(ctx), file_data)
    given = parse_assignments(assignments)
    for key, value in flags.items():
        if value is not None and key in given.get(CORE, {}):
            raise GancoreError(f"train.{key} is given twice, by --{key.replace('_', '-')} and by --set train.{key}; give one")
    for owner, options in given.items():
        values.setdefault(owner, {}).update(options)
    values[CORE].update({key: value for key, value in flags.items() if value is not None})
    run = _catalog(ctx).resolve([*enabled, *plugins], values)
    run.config.recipe = recipe_name
    with run.reporting_plugin_faults():
        trainer = Trainer(run, progress=not quiet)  # data and models first: bad input fails before any file is written
    if chosen and trainer.world.is_main:  # under torchrun, rank 0 alone warns
        chosen.warn_if_not_made_for(run.config.train)
    if trainer.world.is_main:  # under torchrun, rank 0 alone writes the run directory
        trainer.output = RunDirectory.create(Path(out or "runs"), name or default_run_name(run.config), run)
    _fit(trainer, new_run=True)


def _fit(trainer, new_run: bool) -> None:
    """Train through the function gancore.fit uses, then print the result (rank 0 only)."""
    from gancore.api import train

    resume_hint = f"gancore train --resume {trainer.output.path}" if trainer.output else ""
    summary = train(trainer, new_run, resume_hint=resume_hint)
    if trainer.output:
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
    for name, reason in catalog.broken.items():
        click.echo(f"{name}  (not usable: {reason})")


def _recipe_book() -> RecipeBook:
    book = RecipeBook.installed()
    for warning in book.warnings:
        click.echo(f"gancore: warning: {warning}", err=True)
    return book


@cli.command("recipes")
@click.argument("name", required=False)
def list_recipes(name):
    """List the installed recipes with their source and measured scores, or show recipe NAME in full."""
    book = _recipe_book()
    if name is not None:
        recipe = book.get(name)
        click.echo(f"# {recipe.name}  ({recipe.origin}: {recipe.file})")
        click.echo(recipe.text.rstrip())
        click.echo("\n".join(f"# measured on {line}" for line in _scores_lines(book, recipe.name, recipe.datasets)))
        return
    if not book.recipes:
        click.echo("no recipes installed")
    for recipe in book.recipes.values():
        origin = "" if recipe.origin == "gancore" else f"  ({recipe.origin})"
        click.echo(f"{recipe.name}{origin}  {recipe.description}")
        click.echo(f"    source: {recipe.source}")
        click.echo("\n".join(f"    measured on {line}" for line in _scores_lines(book, recipe.name, recipe.datasets)))
    for broken, reason in book.broken.items():
        click.echo(f"{broken}  (not usable: {reason})")


def _scores_lines(book: RecipeBook, name: str, datasets: tuple[str, ...]) -> list[str]:
    """One line per dataset: what the mode benchmark measured with the recipe there, or that it did
    not (a recipe's notes may cite runs made otherwise)."""
    measured = book.scores.get(name, {})
    lines = [f"{dataset}: {score_line(measured[dataset])}" for dataset in datasets if dataset in measured]
    lines += [f"{dataset}: {score_line(scores)}" for dataset, scores in measured.items() if dataset not in datasets]
    lines += [f"{dataset}: not measured by the mode benchmark" for dataset in datasets if dataset not in measured]
    return lines or ["no dataset: not measured by the mode benchmark"]


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
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Sampling seed.")
@click.pass_context
def sample(ctx, run_dir, n, out, seed):
    """Draw N samples from the last checkpoint of RUN_DIR into a .npy file."""
    import torch

    from gancore.checkpoint import atomic_write
    from gancore.memory import require, sampling_bytes
    from gancore.rundir import open_trainer

    destination = Path(out)
    if destination.suffix != ".npy":
        raise GancoreError(f"--out {out}: the file name must end in .npy")
    if destination.exists():
        raise GancoreError(f"--out {out} exists already; choose a new file name")
    trainer = open_trainer(Path(run_dir), _catalog(ctx))
    require(sampling_bytes(trainer.train, trainer.dataset.dim, n), trainer.device, f"--n {n}", "draw fewer samples per file")
    with trainer.run.reporting_plugin_faults():
        samples = trainer.sample(n, torch.Generator(trainer.device).manual_seed(seed)).cpu().numpy()
    atomic_write(destination, lambda handle: np.save(handle, samples))
    click.echo(f"wrote {n} samples of shape {samples.shape[1:]} to {destination}")


@cli.command()
@click.argument("op", type=click.Choice(["mbd", "gp"]))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Where the tensors live.")
@click.option("--sizes", help="Comma-separated sizes: NxBxC for mbd (default 256x16x5,512x16x5,1024x16x5), NxD for gp (default 256x1200,256x3072,64x12288).")
@click.option("--modes", default="fwd,fwd+bwd,bwd2", show_default=True, help="Comma-separated: fwd, fwd+bwd, bwd2 (double backward).")
@click.option("--providers", help="Comma-separated subset of cpu, reference, naive, compile, keops, triton, copy (gp: the copy bandwidth).  [default: all]")
@click.option("--rounds", type=click.IntRange(min=1), default=11, show_default=True, help="Timed calls per case, providers interleaved.")
@click.option("--threads", type=click.IntRange(min=1), help="torch.set_num_threads for the run.  [default: torch's]")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), help="Write the results and the machine to this JSON file.")
@click.option("--compare", "baseline_file", type=click.Path(dir_okay=False), help="A --json file of an earlier run: exit 1 if a case got slower beyond the noise.")
def bench(op, device, sizes, modes, providers, rounds, threads, json_file, baseline_file):
    """Time a fused kernel against every provider available here (table on stdout)."""
    import torch

    from gancore.checkpoint import atomic_write
    from gancore.kernels import bench as kb

    def listed(option: str, text: str, allowed: tuple[str, ...]) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in allowed]
        if unknown or not items:
            raise GancoreError(f"--{option} {text!r}: choose from {', '.join(allowed)}")
        return items

    if device == "cuda" and not torch.cuda.is_available():
        raise GancoreError("--device cuda: no CUDA GPU is visible here; use --device cpu")
    size_list = list(kb.DEFAULT_SIZES[op]) if sizes is None else [s.strip() for s in sizes.split(",") if s.strip()]
    if not size_list:
        raise GancoreError(f"--sizes {sizes!r}: give at least one size")
    for size in size_list:
        kb.parse_size(op, size)
    mode_list = listed("modes", modes, kb.MODES)
    provider_list = list(kb.PROVIDERS) if providers is None else listed("providers", providers, kb.PROVIDERS)
    baseline = kb.read_baseline(baseline_file) if baseline_file else None
    if threads:
        torch.set_num_threads(threads)
    total = len(size_list) * len(mode_list) * len(provider_list) * (rounds + 1)
    with click.progressbar(length=total, label=f"gancore bench {op}", file=sys.stderr) as bar:
        results = kb.run(op, size_list, device, mode_list, provider_list, rounds, bar.update)
    click.echo(kb.table(results))
    if json_file:
        data = json.dumps(kb.to_json(results, device), indent=1).encode()
        atomic_write(Path(json_file), lambda handle: handle.write(data))
        click.echo(f"wrote {json_file}")
    if baseline is not None:
        slower = kb.regressions(results, baseline)
        for line in slower:
            click.echo(f"regression: {line}")
        click.echo(f"{len(slower)} regression(s) against {baseline_file}")
        if slower:
            sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: one-line errors with exit status 2, never a traceback
    (``--debug`` or ``GANCORE_DEBUG=1`` prints it, for plugin authors hunting a bug)."""
    _Debug.requested = os.environ.get("GANCORE_DEBUG", "") not in ("", "0")
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning_in_one_line
        try:
            catalog = Catalog.installed()
            catalog.register_commands(cli)
            for warning in catalog.warnings:
                click.echo(f"gancore: warning: {warning}", err=True)
            status = cli.main(args=argv, prog_name="gancore", obj=catalog, standalone_mode=False)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(0)
        except (click.Abort, KeyboardInterrupt):
            _fail("interrupted", 130)
        except click.ClickException as exc:
            _fail(exc.format_message(), 2, trace=False)  # a usage error: the traceback is click's, not the user's
        except GancoreError as exc:
            _fail(str(exc), exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - the last line of defence of the one-line promise
            if is_out_of_memory(exc):
                _fail("out of memory: lower train.batch_size, train.n_train, train.eval_samples or the network sizes", 2)
            if isinstance(exc, OSError):
                where = f" {exc.filename}" if exc.filename else ""
                _fail(f"cannot access{where}: {exc.strerror or one_line(exc)}", 2)
            _fail(f"internal error ({one_line(exc)}); rerun with --debug for the traceback and report it", 1)
        finally:
            leave_process_group()
    sys.exit(status if isinstance(status, int) else 0)


def _fail(message: str, status: int, trace: bool = True) -> None:
    if trace and _Debug.requested and sys.exc_info()[0] is not None:
        traceback.print_exc()
    click.echo(f"gancore: error: {one_line(message, 1000)}", err=True)
    sys.exit(status)


def _show_warning_in_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Python's warnings (torch's, numpy's, a plugin's) as one line each, not source excerpts."""
    click.echo(f"gancore: warning: {one_line(str(message), 300)} ({category.__name__})", err=True)


if __name__ == "__main__":
    main()
