"""Signals: SIGTERM exits 143 after a checkpoint, also during the final evaluation, promptly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from cli_helpers import TINY_FLAGS
from gancore.checkpoint import latest_checkpoint, load_checkpoint
from plugin_packages import fake_distribution

SLOW_FINAL_EVALUATION = '''
from pathlib import Path
import time
from gancore import hookimpl

class Plugin:
    """Takes a minute over the final evaluation, after leaving a marker."""
    @hookimpl
    def gancore_evaluate(self, trainer, step):
        if step == trainer.train.steps:
            Path(trainer.output.path, "evaluating").touch()
            time.sleep(60)
'''


def test_sigterm_during_the_final_evaluation_stops_at_once_with_the_last_checkpoint(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    fake_distribution(site, "slow-dist", "1.0", {"slow": "Plugin"}, "slow_final", SLOW_FINAL_EVALUATION)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = tmp_path / "runs" / "r"
    process = subprocess.Popen([sys.executable, "-m", "gancore.cli.main", "train", *TINY_FLAGS, "-p", "slow", "--name", "r",
                                "--out", str(tmp_path / "runs"), "--set", "train.checkpoint_every=7"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "evaluating").exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - signalled < 20, "the process waited for the evaluation"
    assert process.returncode == 143, stderr
    assert stderr == f"gancore: error: SIGTERM at step 30: checkpoint written; continue with gancore train --resume {run}\n"
    assert load_checkpoint(latest_checkpoint(run / "checkpoints"))["step"] == 30
    assert not (run / "summary.json").exists()
