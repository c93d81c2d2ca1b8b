"""Parallel runs that stop: resumed, interrupted by a signal, or losing a rank."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.distributed.launch import fit_in_processes, rank_environment, start

SETTINGS = {"steps": 8, "batch_size": 32, "z_dim": 4, "g_width": 16, "d_width": 16, "n_train": 500, "eval_every": 4, "eval_samples": 200, "device": "cpu"}
TRAIN = ["-m", "gancore.cli", "train", "--steps", "100000", "--batch-size", "32", "-s", "train.n_train=500", "-s", "train.eval_every=0", "-q", "--device", "cpu", "--out", "runs", "--name", "run"]


def test_an_interrupted_two_process_run_resumed_equals_the_uninterrupted_one_bit_for_bit(tmp_path):
    runs = [
        {"label": "whole", "plugins": {}, "settings": {**SETTINGS, "run_dir": str(tmp_path / "whole")}},
        {"label": "first half", "plugins": {}, "settings": {**SETTINGS, "steps": 4, "run_dir": str(tmp_path / "split")}},
        {"label": "resumed", "plugins": {}, "settings": {**SETTINGS, "run_dir": str(tmp_path / "split"), "resume": True}},
    ]
    ranks = fit_in_processes(runs, 2, tmp_path)
    for results in ranks:
        whole, resumed = results["whole"], results["resumed"]
        for name, parameters in whole["parameters"].items():
            for key, value in parameters.items():
                assert torch.equal(resumed["parameters"][name][key], value), f"{name}.{key}"
        assert resumed["history"] == whole["history"]
    assert (tmp_path / "split" / "checkpoints" / "step-00000008.pt").is_file()
    assert (tmp_path / "whole" / "metrics.jsonl").read_text() == (tmp_path / "split" / "metrics.jsonl").read_text()


def _wait_for_checkpoint(tmp_path, processes, limit=120):
    deadline = time.monotonic() + limit
    while not list((tmp_path / "runs" / "run" / "checkpoints").glob("step-*.pt")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), [p.communicate()[1][-1000:] for p in processes]
        time.sleep(0.2)


def test_killing_one_rank_ends_the_other_with_a_one_line_error(tmp_path):
    processes = start([*TRAIN, "-s", "train.checkpoint_every=5"], 2, tmp_path)
    _wait_for_checkpoint(tmp_path, processes)
    processes[1].kill()
    _, stderr = processes[0].communicate(timeout=60)
    assert processes[0].returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gancore: error: rank 0 of 2: another rank died or stopped answering during "), stderr[-2000:]


def test_a_rank_that_stops_answering_ends_the_other_after_the_timeout(tmp_path):
    processes = start([*TRAIN, "-s", "train.checkpoint_every=5"], 2, tmp_path, GANCORE_DIST_TIMEOUT="3")
    _wait_for_checkpoint(tmp_path, processes)
    processes[1].send_signal(signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        _, stderr = processes[0].communicate(timeout=60)
        waited = time.monotonic() - stopped
    finally:
        processes[1].kill()
    assert processes[0].returncode == 2 and waited < 30  # GANCORE_DIST_TIMEOUT (3 s), not the default 300
    assert stderr.strip().startswith("gancore: error: rank 0 of 2: another rank died or stopped answering during ") and "Timed out" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_a_signal_to_one_rank_stops_both_after_the_same_step_with_one_checkpoint(tmp_path):
    processes = start([*TRAIN, "-s", "train.checkpoint_every=50"], 2, tmp_path)
    _wait_for_checkpoint(tmp_path, processes)  # step 50 is behind both ranks: both are in the training loop
    processes[1].send_signal(signal.SIGINT)
    errors = [process.communicate(timeout=60)[1] for process in processes]
    assert [process.returncode for process in processes] == [128 + signal.SIGINT] * 2, errors
    steps = [int(error.split(" at step ")[1].split(":")[0]) for error in errors]
    assert steps[0] == steps[1] > 50, errors
    checkpoints = sorted(int(path.stem.split("-")[1]) for path in (tmp_path / "runs" / "run" / "checkpoints").glob("step-*.pt"))
    periodic = [step for step in checkpoints if step % 50 == 0 and step != steps[0]]
    assert checkpoints == sorted([*periodic, steps[0]]) and checkpoints[-1] == steps[0]  # one checkpoint for the stop
    assert "gancore train --resume" in errors[0] and "rank 0" in errors[1]


def test_torchrun_trains_with_two_processes_and_rank_0_alone_writes_and_prints(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *TRAIN]
    command[command.index("100000")] = "6"
    done = subprocess.run(command, cwd=tmp_path, env=rank_environment(0, 1, 0), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run directory: runs/run\n") == 1 and done.stdout.count("step 6: modes captured") == 1, done.stdout
    assert [path.name for path in (tmp_path / "runs").iterdir()] == ["run"]
    assert [path.name for path in (tmp_path / "runs" / "run" / "checkpoints").iterdir()] == ["step-00000006.pt"]


def test_under_torchrun_a_recipe_off_its_datasets_is_warned_about_once(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *TRAIN, "--recipe", "grid25-best"]
    command[command.index("100000")] = "2"
    done = subprocess.run(command, cwd=tmp_path, env=rank_environment(0, 1, 0), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("gancore: warning: recipe grid25-best is made for grid25, not ring8") == 1, done.stderr[-2000:]


class _SignalledDuringTheStopCheck:
    """One rank of two (the other never signalled) whose SIGINT arrives while the stop check's
    all-reduce runs, as it mostly does: the ranks wait there for each other."""

    def __init__(self, trainer):
        self.trainer, self.checks, self.alone = trainer, 0, trainer.world
        self.parallel = True

    def __getattr__(self, name):
        return getattr(self.alone, name)

    def average(self, parameters, terms, what):
        return {key: value.detach() for key, value in terms.items()}

    def largest(self, number, device, what):
        self.checks += 1
        if self.checks == 1:
            self.trainer.stop_requested = "SIGINT"  # what the handler does when the signal comes now
        return number  # the other rank's 0 is never the larger


def test_a_signal_during_the_stop_check_stops_at_the_next_check(make_trainer):
    from gancore.trainer import TrainingInterrupted

    trainer = make_trainer([])
    trainer.world = _SignalledDuringTheStopCheck(trainer)
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.run_steps(10)
    assert stopped.value.step == 2 and trainer.world.checks == 2 and trainer.stop_requested == "SIGINT"
