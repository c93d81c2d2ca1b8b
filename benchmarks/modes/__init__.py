"""Does this remedy recover the modes, and how does it compare with the papers?

    python -m benchmarks.modes              # the full table -> benchmarks/RESULTS.md, results.json, samples_*.png
    python -m benchmarks.modes --quick      # ring8, one seed, few steps -> benchmarks/quick/
    python -m benchmarks.modes --dry-run    # the plan and its estimated time; runs nothing
    python -m benchmarks.modes --datasets stacked-digits   # the 1000-mode stacked digits (not in the full table)

Runs vanilla, every built-in remedy (installed plugins of the package gancore, found through
the catalog) and the preset's combinations on each dataset and seed of ``presets.toml``, each
run a core :class:`~gancore.trainer.Trainer` scored with its dataset's protocol (VEEGAN's for
the mixtures; the digit classifier's for stacked-digits, run only with ``--datasets
stacked-digits``), in parallel worker processes. Every finished run is stored under
``OUT/runs/`` and never redone while its settings stay the same; the report is regenerated
from every stored run. See README.md here.

One module per job, each readable alone:

    presets.py   the presets file and remedy names (``pacgan+train[g_width=400]``)
    plan.py      the runs asked for, with their settings
    records.py   stored runs (OUT/runs/), keyed by settings, and the log of invocations
    run.py       one run in a worker process, and the pool
    estimate.py  the time estimate before running
    rows.py      a report row (one remedy, one dataset, its seeds) and how its numbers are written
    verdicts.py  each built-in remedy against vanilla (a section of RESULTS.md)
    report.py    RESULTS.md and results.json
    pictures.py  samples_<dataset>.png
    command.py   the command line
"""
from benchmarks.modes.command import main, parser
from benchmarks.modes.plan import Plan, Task, make_plan, run_values
from benchmarks.modes.presets import BenchmarkError, load_presets, parse_remedy, plugin_names, remedy_name
from benchmarks.modes.records import stored_records, unstored_notes
from benchmarks.modes.report import load_published, write_report
from benchmarks.modes.rows import Row

__all__ = [
    "BenchmarkError", "Plan", "Row", "Task", "load_presets", "load_published", "main", "make_plan", "parse_remedy",
    "parser", "plugin_names", "remedy_name", "run_values", "stored_records", "unstored_notes", "write_report",
]
