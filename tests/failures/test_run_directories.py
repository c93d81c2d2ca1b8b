"""Run directories are never reused, never escape --out, are held by one process at a time, and
a failed write (disk full, read-only) is one line that leaves earlier checkpoints loadable."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import TINY_FLAGS, run_cli
from gancore import hookimpl
from gancore.checkpoint import list_checkpoints, load_checkpoint
from gancore.config import RunConfig
from gancore.errors import GancoreError
from gancore.rundir import MAX_SUFFIX, default_run_name
from gancore.trainer import Trainer
from conftest import TINY


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("gancore: error: ") and "Traceback" not in err, err
    return err


def test_an_existing_run_directory_is_never_reused(capsys, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    for attempt in range(1, MAX_SUFFIX + 1):
        (out / ("x" if attempt == 1 else f"x-{attempt}")).mkdir()
    (out / f"x-{MAX_SUFFIX}" / "mine.txt").write_text("a user's file")
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(out), "--name", "x")
    assert "x and x-2 … x-9999 all exist" in _one_line_error(code, err)
    assert [p.name for p in (out / f"x-{MAX_SUFFIX}").iterdir()] == ["mine.txt"]
    assert not any((out / "x").iterdir())


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b", "x" * 300, "bell\x07", "new\nline", "", ".", ".."])
def test_a_run_name_is_one_folder_name(capsys, tmp_path, name):
    out = tmp_path / "deep" / "runs"
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(out), "--name", name)
    assert f"--name {name!r}" in _one_line_error(code, err)
    assert not list(tmp_path.glob("**/config.toml")) and not Path("/abs/path").exists()


NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=30)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(NAMES)
def test_whatever_the_name_a_run_stays_inside_out(capsys, tmp_path_factory, name):
    root = tmp_path_factory.mktemp("root")
    out = root / "a" / "runs"
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--steps", "1", "--out", str(out), "--name", name)
    written = list(root.glob("**/config.toml"))
    if code == 0:
        assert len(written) == 1 and written[0].parent.parent == out, written
    else:
        _one_line_error(code, err)
        assert written == []


def test_the_default_name_of_a_data_file_with_odd_characters_is_one_folder_name():
    config = RunConfig(train=SimpleNamespace(data="/tmp/we\nird\\name.npy", dataset="ring8", seed=3), plugins={"pacgan": None})
    assert default_run_name(config) == "we_ird_name-pacgan-s3"


class FailsAtStepTwo:
    """Raises inside training, before any checkpoint."""

    @hookimpl
    def gancore_step_end(self, step):
        if step == 2:
            raise ValueError("flux capacitor")


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_directory(capsys, tmp_path, monkeypatch):
    from gancore.manager import Catalog

    installed = Catalog.installed

    def with_failing_plugin():
        catalog = installed()
        catalog.add("failing", FailsAtStepTwo, "tests", "0")
        return catalog

    monkeypatch.setattr(Catalog, "installed", staticmethod(with_failing_plugin))
    out = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(out), "-p", "failing", "--name", "r")
    assert "plugin failing (tests 0) failed in gancore_step_end: ValueError: flux capacitor" in _one_line_error(code, err)
    assert list(out.iterdir()) == []
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(out), "--name", "r")
    assert code == 0, err
    assert [p.name for p in out.iterdir()] == ["r"]  # not r-2 beside a corpse


# --- one process per run directory -------------------------------------------------------------

CLI = [sys.executable, "-m", "gancore.cli.main"]
SLOW = ["--set", "train.g_width=256", "--set", "train.d_width=256", "--set", "train.checkpoint_every=5", "--set", "train.eval_every=0"]


def _wait_for(condition, process, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(capsys, tmp_path):
    out = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(out), "--name", "shared", "--set", "train.checkpoint_every=10")
    assert code == 0, err
    run = out / "shared"
    metrics_before = (run / "metrics.jsonl").read_text()
    holder = subprocess.Popen([*CLI, "train", "--resume", str(run), "--steps", "100000000", "-q"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run / "run.lock").read_text().strip() == str(holder.pid), holder)
        config_before = (run / "config.toml").read_text()
        code, _, err = run_cli(capsys, "train", "--resume", str(run), "--steps", "200000000", "-q")
        assert _one_line_error(code, err) == (f"gancore: error: run directory {run} is in use by process {holder.pid}; "
                                              "wait for it to finish (or stop it)\n")
        assert (run / "config.toml").read_text() == config_before
        _wait_for(lambda: max(load_checkpoint(path)["step"] for path in list_checkpoints(run / "checkpoints")) > 30, holder)
    finally:
        holder.terminate()
        holder.wait(timeout=60)
    assert holder.returncode == 143
    assert (run / "metrics.jsonl").read_text().startswith(metrics_before.splitlines()[0])


def test_a_stale_lock_of_a_dead_process_does_not_block_a_resume(capsys, tmp_path):
    out = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(out), "--name", "stale")
    assert code == 0, err
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (out / "stale" / "run.lock").write_text(dead)
    code, _, err = run_cli(capsys, "train", "--resume", str(out / "stale"), "--steps", "40", "-q")
    assert code == 0, err


# --- full disks and read-only places -------------------------------------------------------------


def _fail_writes_after(monkeypatch, n_ok: int, error: int):
    """Let ``n_ok`` fsyncs succeed, then fail every write to disk with ``error``."""
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(error, os.strerror(error))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _trainer_writing_to(tmp_path, out: Path, catalog, steps=20):
    from gancore.rundir import RunDirectory

    run = catalog.resolve([], {"train": {**TINY, "steps": steps, "checkpoint_every": 5, "keep_checkpoints": 5}})
    trainer = Trainer(run, progress=False)
    trainer.output = RunDirectory.create(out, "r", run)
    return trainer


def test_disk_full_while_checkpointing_is_one_line_and_keeps_earlier_checkpoints(tmp_path, monkeypatch, catalog):
    trainer = _trainer_writing_to(tmp_path, tmp_path / "runs", catalog)
    trainer.run_steps(5)
    _fail_writes_after(monkeypatch, 0, errno.ENOSPC)
    with pytest.raises(GancoreError, match=r"^cannot write .*step-00000010\.pt: No space left on device$"):
        trainer.run_steps(5)
    monkeypatch.undo()
    (checkpoint,) = list_checkpoints(trainer.output.checkpoints)
    assert load_checkpoint(checkpoint)["step"] == 5
    assert not list(trainer.output.checkpoints.glob(".*.tmp"))


def _mount(tmp_path: Path, options: str) -> Path:
    """A tmpfs mounted with ``options``, or skip where this test cannot mount one (not root)."""
    point = tmp_path / f"mnt-{options.replace(',', '-').replace('=', '')}"
    point.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    return point


@pytest.fixture
def mounts(tmp_path):
    made = []

    def mount(options: str) -> Path:
        made.append(_mount(tmp_path, options))
        return made[-1]

    yield mount
    for point in made:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_really_full_disk_while_checkpointing_keeps_earlier_checkpoints(tmp_path, mounts, catalog):
    disk = mounts("size=2m")
    trainer = _trainer_writing_to(tmp_path, disk / "runs", catalog)
    trainer.run_steps(5)
    ballast = disk / "ballast"
    with open(ballast, "wb") as handle:  # fill what is left
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    with pytest.raises(GancoreError, match="No space left on device"):
        trainer.run_steps(5)
    ballast.unlink()
    (checkpoint,) = list_checkpoints(trainer.output.checkpoints)
    assert load_checkpoint(checkpoint)["step"] == 5
    assert not list(trainer.output.checkpoints.glob(".*.tmp"))


def test_read_only_places_are_one_line_errors(capsys, tmp_path, mounts):
    writable = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(writable), "--name", "done")
    assert code == 0, err
    frozen = mounts("ro,size=1m")
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(frozen / "runs"))
    assert "cannot create output directory" in _one_line_error(code, err) and "Read-only file system" in err
    code, _, err = run_cli(capsys, "sample", str(writable / "done"), "--out", str(frozen / "s.npy"))
    assert "Read-only file system" in _one_line_error(code, err)


def test_a_read_only_run_directory_cannot_be_resumed_and_says_why(capsys, tmp_path, monkeypatch):
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(tmp_path), "--name", "r")
    assert code == 0, err
    real_open = open

    def read_only_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("run.lock") and any(flag in mode for flag in "wa+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only_open)
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "r"), "--steps", "40")
    assert _one_line_error(code, err) == f"gancore: error: cannot lock run directory {tmp_path / 'r'}: Read-only file system\n"
