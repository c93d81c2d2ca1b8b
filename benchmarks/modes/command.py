"""The command line of `python -m benchmarks.modes`: parse, plan, estimate, run, report."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from gancore.errors import GancoreError
from gancore.manager import Catalog
from gancore.provenance import build_info, build_key
from gancore.recipes import RecipeBook

from benchmarks.modes.adopt import adopt
from benchmarks.modes.estimate import estimate, print_estimate
from benchmarks.modes.plan import Plan, make_plan
from benchmarks.modes.presets import (
    BUILTIN_PACKAGE, COMMAND, DEFAULT_OUT, DEFAULT_PRESETS, QUICK_OUT, RECIPE_SCORES, BenchmarkError, load_presets, split_outside_brackets,
)
from benchmarks.modes.records import is_done, log_invocation, relative_path, stored_records, unstored_notes
from benchmarks.modes.report import write_report
from benchmarks.modes.rows import duration
from benchmarks.modes.run import run_tasks, usable_cpus


def _names(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    # commas inside a variant's brackets separate its options, not names: unrolled[steps=10,backprop=false]
    return [name.strip() for value in values for name in split_outside_brackets(value) if name.strip()]


def _seeds(values: list[str] | None) -> list[int] | None:
    if values is None:
        return None
    seeds = []
    for text in _names(values):
        low, dash, high = text.partition("-")
        try:
            seeds += list(range(int(low), int(high) + 1)) if dash else [int(text)]
        except ValueError:
            raise BenchmarkError(f"--seeds: {text!r} is not a seed or a range like 0-4") from None
    if not seeds or min(seeds) < 0:
        raise BenchmarkError("--seeds: give seeds >= 0, e.g. --seeds 0,1 or --seeds 0-4")
    return list(dict.fromkeys(seeds))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=COMMAND,
        description="Mode coverage of vanilla and every built-in remedy (VEEGAN protocol), with the papers' figures.",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: the preset's [quick] overrides (ring8, one seed, few steps), into benchmarks/quick/")
    p.add_argument("--datasets", nargs="+", metavar="NAME", help="only these datasets (comma- or space-separated)")
    p.add_argument("--plugins", nargs="+", metavar="REMEDY", help="only these remedies: vanilla, NAME, NAME+NAME for a combination, NAME[OPTION=VALUE,...] for a variant (quote it in a shell)")
    p.add_argument("--recipes", nargs="+", metavar="RECIPE", help="run these recipes (`gancore recipes`) on the datasets they name, as rows named by the recipe; alone, only they run")
    p.add_argument("--seeds", nargs="+", metavar="SEED", help="only these seeds, e.g. 0,1 or 0-4 (default: the preset's)")
    p.add_argument("--workers", type=int, default=usable_cpus(), help="worker processes (default: the CPUs this process may use; 1 runs in this process)")
    p.add_argument("--presets", type=Path, default=DEFAULT_PRESETS, help="presets file (default: benchmarks/presets.toml)")
    p.add_argument("--out", type=Path, help="output directory (default: benchmarks/, or benchmarks/quick/ with --quick)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time, run nothing, write nothing")
    p.add_argument("--report-only", action="store_true", help="run nothing: rewrite RESULTS.md, results.json and the pictures from the stored runs")
    p.add_argument("--reuse-other-builds", action="store_true",
                   help="count stored runs made by another build (torch, CPU capability, BLAS, threads) or an unknown one as done, instead of running them again here")
    p.add_argument("--adopt", nargs="+", type=Path, metavar="RUN_DIR",
                   help="store finished `gancore train --recipe NAME` runs as the runs of that recipe's row (long rows, run resumably), "
                        "checking they are that row's runs; then rewrite the report; runs nothing else")
    p.add_argument("--no-timing", action="store_true", help="do not time a few steps of every remedy before starting (no time estimate)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        return _main(args, argv)
    except (BenchmarkError, GancoreError) as exc:
        print(f"benchmarks.modes: error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    started = time.perf_counter()
    if args.workers < 1:
        raise BenchmarkError("--workers must be at least 1")
    presets = load_presets(args.presets, quick=args.quick)
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    catalog = Catalog.installed()
    if args.adopt:
        if args.quick or args.plugins or args.recipes or args.seeds or args.datasets or args.dry_run or args.report_only:
            raise BenchmarkError("--adopt takes run directories alone (their recipe, dataset and seed choose the row)")
        refused = 0
        for run_dir in args.adopt:
            try:
                record, account = adopt(run_dir, catalog, presets, out)
            except (BenchmarkError, GancoreError) as exc:  # the other run directories are still adopted
                print(f"benchmarks.modes: error: {exc}", file=sys.stderr)
                refused += 1
                continue
            print(f"adopted {relative_path(run_dir)} as {record['dataset']} {record['remedy']} seed {record['seed']}: "
                  f"{record['metrics'].get('modes_captured')}/{record['metrics'].get('n_modes')} modes; {account}")
        report = _report(out, args, argv, [], catalog)
        print(f"adopted {len(args.adopt) - refused} of {len(args.adopt)} runs; wrote {relative_path(report)}, results.json and the pictures")
        return 2 if refused else 0
    # --recipes alone runs only them; without --plugins and --recipes, the presets' recipes join the default rows
    remedies = _names(args.plugins) if args.plugins or not args.recipes else []
    recipe_names = _names(args.recipes) if args.recipes else ([] if args.plugins else presets.recipes)
    recipes = [RecipeBook.installed().get(name) for name in recipe_names]
    if not args.recipes:  # the presets' recipes run where they can, without a note where they cannot
        recipes = [recipe for recipe in recipes if set(recipe.datasets) & set(_names(args.datasets) or presets.default)]
    plan = make_plan(catalog, presets, out, _names(args.datasets), remedies, _seeds(args.seeds), recipes)
    torch.set_num_threads(1)  # as every run (one thread per worker): the build below names the threads the runs use
    # a record of another (or an unknown) build is reported but not reused for new runs unless asked:
    # GAN trajectories amplify rounding, so its numbers may not be this machine's
    this_build = build_key(build_info())
    stored_here = None if args.report_only or args.reuse_other_builds else this_build
    unstored = [task for task in plan.tasks if not is_done(task, stored_here)]
    other_builds = [task for task in unstored if stored_here and is_done(task)]
    pending = [] if args.report_only else unstored
    stored = stored_records(out)
    workers = max(1, min(args.workers, len(pending) or 1))

    shape = " + ".join(f"{name} {len(remedies)} remedies" for name, remedies in plan.remedies.items())
    print(f"{COMMAND}: {len(plan.tasks)} runs ({shape}; seeds {','.join(map(str, _seeds_of(plan)))}), "
          f"{len(plan.tasks) - len(unstored)} already stored in {relative_path(out / 'runs')}/, "
          + (f"{len(unstored)} not stored (report only: not run, listed in the report's notes)" if args.report_only
             else f"{len(pending)} to run on {workers} workers"))
    if other_builds:
        print(f"  {len(other_builds)} of the runs to run are stored from another or an unknown build; they run again on this one "
              f"({this_build}) and replace those records (--reuse-other-builds reuses them)")
    for note in plan.skipped:
        print(f"  skipped: {note}")
    for name in plan.not_default:
        print(f"  not run by default: {name} (not in the presets' `datasets`; run it with --datasets {name})")
    estimate_notes = estimate(catalog, pending, stored, probe=not args.no_timing) if pending else []
    if pending:
        print_estimate(pending, workers, estimate_notes)
    if args.dry_run:
        return 0

    records, interrupted = run_tasks(pending, workers, catalog) if pending else ([], False)
    elapsed = time.perf_counter() - started
    if records:
        log_invocation(out, argv, workers, len(records), elapsed, usable_cpus())
    still_unstored = [task for task in unstored if not is_done(task)]  # only these can have failed or been interrupted (of any build: the report counts those)
    notes = [f"skipped: {note}" for note in plan.skipped] + unstored_notes(plan.tasks, still_unstored)
    report = _report(out, args, argv, notes, catalog)
    failed = sum(1 for record in records if record["status"] != "ok")
    print(f"ran {len(records)} runs ({failed} failed) in {duration(elapsed)}; wrote {relative_path(report)}, results.json and the pictures")
    if interrupted:
        print("interrupted: finished runs are stored; run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if failed else 0


def _report(out: Path, args: argparse.Namespace, argv: list[str], notes: list[str], catalog: Catalog) -> Path:
    """Rewrite RESULTS.md, results.json, the pictures and (into the default out) the recipes' scores."""
    full = load_presets(args.presets)  # goals and dataset order of every stored run, not only --quick's
    goals = {name: preset.goal for name, preset in full.datasets.items() if preset.goal is not None}
    builtins = [name for name, info in catalog.plugins.items() if info.package == BUILTIN_PACKAGE]
    return write_report(out, full, goals, argv, notes, scores=RECIPE_SCORES if out.resolve() == DEFAULT_OUT.resolve() else None,
                        builtins=builtins)


def _seeds_of(plan: Plan) -> list[int]:
    return sorted({task.seed for task in plan.tasks})
