"""Exact resume, crash-safe checkpoints, the divergence guard and plugin faults."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from faulty_plugin import Faulty
from gancore import hookimpl
from gancore.checkpoint import list_checkpoints, load_checkpoint
from gancore.errors import GancoreError
from gancore.manager import Catalog
from gancore.rundir import RunDirectory, resume_run
from gancore.trainer import Trainer, TrainingInterrupted

from conftest import TINY

BUILTIN = sorted(name for name, info in Catalog.installed().plugins.items() if info.package == "gancore")


def _start(catalog, tmp_path, name, plugins, steps):
    values = {"train": {**TINY, "steps": steps, "eval_every": 5, "checkpoint_every": 10}}
    run = catalog.resolve(plugins, values)
    trainer = Trainer(run, progress=False)
    trainer.output = RunDirectory.create(tmp_path, name, run)
    return trainer


def _final_state(run_dir):
    state = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])
    return state["step"], state["models"], (run_dir / "metrics.jsonl").read_text(), (run_dir / "summary.json").read_text()


@pytest.mark.parametrize("plugins", [[]] + [[name] for name in BUILTIN], ids=lambda p: "+".join(p) or "vanilla")
def test_killed_and_resumed_equals_uninterrupted(catalog, tmp_path, plugins):
    straight = _start(catalog, tmp_path, "straight", plugins, 30)
    straight.fit()
    interrupted = _start(catalog, tmp_path, "interrupted", plugins, 30)
    step_once = interrupted.train_step

    def step_then_signal():
        step_once()
        if interrupted.step == 13:  # between checkpoints: the signal handler's checkpoint is the one resumed
            interrupted.stop_requested = "SIGTERM"

    interrupted.train_step = step_then_signal
    with pytest.raises(TrainingInterrupted):
        interrupted.fit()
    resumed = resume_run(interrupted.output.path, catalog, progress=False, steps=None)
    assert resumed.step == 13
    resumed.fit()
    (step_a, models_a, metrics_a, summary_a), (step_b, models_b, metrics_b, summary_b) = (
        _final_state(straight.output.path), _final_state(resumed.output.path))
    assert step_a == step_b == 30
    for name in models_a:
        for key in models_a[name]:
            assert torch.equal(models_a[name][key], models_b[name][key]), f"{name}.{key}"
    assert metrics_a == metrics_b
    assert summary_a == summary_b


def test_a_finished_run_is_extended_with_a_new_total(catalog, tmp_path):
    straight = _start(catalog, tmp_path, "straight", [], 20)
    straight.fit()
    short = _start(catalog, tmp_path, "short", [], 10)
    short.fit()
    extended = resume_run(short.output.path, catalog, progress=False, steps=20)
    extended.fit()
    a, b = _final_state(straight.output.path), _final_state(extended.output.path)
    assert all(torch.equal(a[1]["G"][k], b[1]["G"][k]) for k in a[1]["G"])
    assert "steps = 20" in (short.output.path / "config.toml").read_text()


class NaNAt:
    """Makes D's loss NaN at step 7 — once per learning-rate scale, or always."""

    always = False

    @hookimpl
    def gancore_discriminator_loss(self, trainer, batch, terms):
        if batch.step == 7 and (self.always or trainer.lr_scale == 1.0):
            terms["boom"] = torch.tensor(float("nan"))


class AlwaysNaN(NaNAt):
    always = True


def test_nonfinite_loss_stops_naming_step_and_term(make_trainer):
    trainer = make_trainer(["nan"], extra={"nan": NaNAt}, train={"checkpoint_every": 5})
    with pytest.raises(GancoreError, match=r"training diverged: D's loss term 'boom' is nan at step 7; last good checkpoint: step 5"):
        trainer.fit()


def test_rollback_reloads_the_last_checkpoint_with_halved_learning_rates(make_trainer):
    trainer = make_trainer(["nan"], extra={"nan": NaNAt}, train={"checkpoint_every": 5, "on_nonfinite": "rollback", "steps": 12})
    trainer.fit()
    assert trainer.step == 12 and trainer.rollbacks == 1
    assert trainer.optimizers["D"].param_groups[0]["lr"] == pytest.approx(TINY.get("lr_d", 1e-4) * 0.5)
    assert trainer.optimizers["G"].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)
    assert all(torch.isfinite(p).all() for p in trainer.models.D.parameters())


def test_rollbacks_are_bounded(make_trainer):
    trainer = make_trainer(["nan"], extra={"nan": AlwaysNaN}, train={"checkpoint_every": 5, "on_nonfinite": "rollback", "max_rollbacks": 2})
    with pytest.raises(GancoreError, match="diverged 3 times"):
        trainer.fit()


def _nan_run(catalog, tmp_path, name, steps):
    if "nan" not in catalog.plugins:
        catalog.add("nan", NaNAt, "tests", "0")
    run = catalog.resolve(["nan"], {"train": {**TINY, "steps": steps, "eval_every": 0, "checkpoint_every": 5, "on_nonfinite": "rollback"}})
    trainer = Trainer(run, progress=False)
    trainer.output = RunDirectory.create(tmp_path, name, run)
    return trainer


def test_a_rollback_after_a_resume_returns_to_the_last_checkpoint_not_to_fresh_networks(catalog, tmp_path):
    straight = _nan_run(catalog, tmp_path, "straight", 12)
    straight.fit()
    part = _nan_run(catalog, tmp_path, "in-parts", 5)
    part.fit()
    resumed = resume_run(part.output.path, catalog, progress=False, steps=12)
    resumed.fit()  # NaN at step 7: back to step 5's checkpoint, as the uninterrupted run does
    assert straight.rollbacks == resumed.rollbacks == 1
    for name, module in straight.models.modules.items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, resumed.models.modules[name].state_dict()[key]), f"{name}.{key}"


def test_the_rollback_count_survives_a_resume(catalog, tmp_path):
    first = _nan_run(catalog, tmp_path, "r", 12)
    first.fit()
    assert first.rollbacks == 1
    resumed = resume_run(first.output.path, catalog, progress=False, steps=20)
    assert resumed.rollbacks == 1 and resumed.lr_scale == 0.5


def test_a_plugin_fault_names_plugin_package_and_hook(make_trainer):
    trainer = make_trainer(["faulty"], extra={"faulty": Faulty})
    with pytest.raises(GancoreError) as error:
        with trainer.run.reporting_plugin_faults():
            trainer.fit()
    assert str(error.value) == "plugin faulty (tests 0) failed in gancore_step_end: ValueError: the flux capacitor is empty"


def _cli(*args):
    return [sys.executable, "-m", "gancore.cli.main", *args]


TRAIN_FOREVER = ["train", "--steps", "1000000", "-q", "--device", "cpu", "--set", "train.checkpoint_every=1",
                 "--set", "train.keep_checkpoints=2", "--set", "train.eval_every=0", "--set", "train.g_width=384",
                 "--set", "train.d_width=384", "--set", "train.batch_size=64", "--name", "victim"]


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "runs"
    run_dir = out / "victim"
    torn_writes = 0
    for kill_after in (2.5, 0.35, 0.8, 0.15, 1.3, 0.05):
        if run_dir.exists():
            process = subprocess.Popen(_cli("train", "--resume", str(run_dir), "-q"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        else:
            process = subprocess.Popen(_cli(*TRAIN_FOREVER, "--out", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not list_checkpoints(run_dir / "checkpoints") if run_dir.exists() else True:
            time.sleep(0.02)  # wait for the first checkpoint, then kill after a further delay
            assert process.poll() is None, process.stderr.read().decode()
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
        process.wait()
        torn_writes += len(list((run_dir / "checkpoints").glob(".*.tmp")))
        checkpoints = list_checkpoints(run_dir / "checkpoints")
        assert checkpoints, "the previous checkpoint must survive"
        for path in checkpoints:
            assert load_checkpoint(path)["step"] == int(path.stem.split("-")[1])
    print(f"kill points: 6, torn checkpoint writes observed: {torn_writes}")


def test_sigint_checkpoints_and_resume_continues(tmp_path):
    out = tmp_path / "runs"
    process = subprocess.Popen(_cli(*TRAIN_FOREVER, "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (out / "victim" / "checkpoints").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130  # 128 + SIGINT, as a shell reports a process the signal ended
    assert stderr.count("\n") == 1 and "SIGINT at step" in stderr and "gancore train --resume" in stderr
    step = load_checkpoint(list_checkpoints(out / "victim" / "checkpoints")[-1])["step"]
    assert f"SIGINT at step {step}:" in stderr
    resumed = subprocess.run(_cli("train", "--resume", str(out / "victim"), "--steps", str(step + 3), "-q"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "victim" / "summary.json").read_text())["step"] == step + 3
