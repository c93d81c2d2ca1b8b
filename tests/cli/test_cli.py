"""The command line as a user meets it: results, files, and one-line errors with exit status 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import TINY_FLAGS, run_cli


def test_version(capsys):
    code, out, err = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == "gancore, version 0.1.0"


def test_train_writes_a_complete_run_directory(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(tmp_path), "--set", "train.eval_every=10")
    assert code == 0, err
    assert "modes captured" in out and "high quality" in out
    run = tmp_path / "ring8-vanilla-s0"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.toml", "metrics.jsonl", "modes.png", "run.json", "run.lock", "samples.png", "summary.json"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [10, 20, 30]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 30 and summary["n_modes"] == 8 and summary["plugins"] == []
    assert f"{summary['modes_captured']}/8" in out
    assert (run / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seed_same_summary_and_runs_are_never_overwritten(capsys, tmp_path):
    for _ in range(2):
        assert run_cli(capsys, "train", *TINY_FLAGS, "--out", str(tmp_path))[0] == 0
    first, second = tmp_path / "ring8-vanilla-s0", tmp_path / "ring8-vanilla-s0-2"
    assert (first / "summary.json").read_text() == (second / "summary.json").read_text()


def test_config_file_and_set_and_plugin(capsys, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('[train]\nsteps = 12\nbatch_size = 32\nz_dim = 3\n\n[plugins.instance-noise]\nstd = 0.5\n')
    code, out, err = run_cli(capsys, "train", "--config", str(config), "--set", "instance-noise.anneal_steps=6", "--out", str(tmp_path), "-q", "--set", "train.device=cpu")
    assert code == 0, err
    resolved = (tmp_path / "ring8-instance-noise-s0" / "config.toml").read_text()
    assert "steps = 12" in resolved and "std = 0.5" in resolved and "anneal_steps = 6" in resolved


def test_eval_and_sample(capsys, tmp_path):
    assert run_cli(capsys, "train", *TINY_FLAGS, "--out", str(tmp_path))[0] == 0
    run = tmp_path / "ring8-vanilla-s0"
    summary = json.loads((run / "summary.json").read_text())
    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 0, err
    assert f"modes captured {summary['modes_captured']}/8" in out
    target = tmp_path / "s.npy"
    code, out, err = run_cli(capsys, "sample", str(run), "--n", "17", "--out", str(target))
    assert code == 0, err
    assert np.load(target).shape == (17, 2)
    code, out, err = run_cli(capsys, "sample", str(run), "--n", "17", "--out", str(target))
    assert code == 2 and "exists already" in err
    assert np.load(target).shape == (17, 2)


def test_plugins_lists_builtins_with_origin_and_options(capsys):
    code, out, err = run_cli(capsys, "plugins")
    assert code == 0
    assert "instance-noise  (gancore 0.1.0)" in out
    assert "instance-noise.std = 0.1  [float]" in out


def _bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    (tmp_path / "nan.csv").write_text("1,2\nnan,3\n")
    (tmp_path / "bad.toml").write_text("[train\nsteps=")
    (tmp_path / "table.toml").write_text("[training]\nsteps = 3\n")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "corrupt" / "checkpoints").mkdir(parents=True)
    (tmp_path / "corrupt" / "config.toml").write_text("[train]\nsteps = 1\n")
    (tmp_path / "corrupt" / "checkpoints" / "step-00000001.pt").write_bytes(b"PK\x03\x04 truncated")
    return [
        (["train", "--plugin", "unroled"], "unknown plugin 'unroled'"),
        (["train", "--set", "train.speed=3"], "unknown option train.speed"),
        (["train", "--set", "train.steps=many"], "train.steps='many'"),
        (["train", "--set", "steps=3"], "NAME.OPTION=VALUE"),
        (["train", "--set", "instance-noise.std=1"], "not enabled"),
        (["train", "--steps", "-5"], "at least 0"),
        (["train", "--steps", "ten"], "'ten' is not a valid integer"),
        (["train", "--dataset", "ring9"], "unknown dataset 'ring9'"),
        (["train", "--data", str(tmp_path / "missing.npy")], "does not exist"),
        (["train", "--data", str(tmp_path / "nan.csv")], "NaN or Inf"),
        (["train", "--config", str(tmp_path / "bad.toml")], "not valid TOML"),
        (["train", "--config", str(tmp_path / "table.toml")], "unknown table [training]"),
        (["train", "--set", "train.loss=wgan"], "choose one of"),
        (["train", "--set", "train.betas_g=0.5"], "expected two numbers in [0, 1)"),
        (["train", "-p", "wgan-gp", "--set", "train.update_order=simultaneous"], "train.n_critic = 5 (suggested by wgan-gp)"),
        (["train", "--set", "train.init=orthogonal:wide"], "expected a number after the colon, e.g. orthogonal:1.0"),
        (["train", "--out", str(tmp_path / "a-file"), *TINY_FLAGS], "is a file"),
        (["train", "--bogus"], "No such option '--bogus'"),
        (["eval", str(tmp_path)], "not a gancore run directory"),
        (["eval", str(tmp_path / "corrupt")], "corrupt or not a gancore checkpoint"),
        (["sample", str(tmp_path / "corrupt"), "--out", str(tmp_path / "x.txt")], "must end in .npy"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ]


def test_every_bad_input_is_one_line_and_exit_2(capsys, tmp_path):
    for argv, message in _bad_inputs(tmp_path):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, (argv, out, err)
        assert err.count("\n") == 1 and err.startswith("gancore: error: "), (argv, err)
        assert message in err, (argv, err)
        assert "Traceback" not in out + err


def test_cuda_requested_without_a_gpu(capsys, tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, out, err = run_cli(capsys, "train", "--device", "cuda", "--out", str(tmp_path))
    assert code == 2 and "no CUDA device is available" in err
    assert not any(tmp_path.iterdir()), "a failed start must not leave a run directory"


def test_a_third_party_package_is_listed_and_runs(tmp_path):
    """An outside distribution that declares the `gancore` entry point, found on sys.path."""
    (tmp_path / "gancore_hello.py").write_text(textwrap.dedent('''
        import click
        from gancore import hookimpl

        class Hello:
            """Says hello at every step end."""

            @hookimpl
            def gancore_add_options(self, options):
                options.add("greeting", str, "hi", "what to say")

            @hookimpl
            def gancore_configure(self, options):
                self.greeting = options.greeting

            @hookimpl
            def gancore_step_end(self, logs):
                print("STEP-END", self.greeting)

            @hookimpl
            def gancore_register_commands(self, cli):
                @cli.command()
                def hello():
                    """Print a greeting."""
                    click.echo("hello from a plugin")
    '''))
    info = tmp_path / "gancore_hello-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gancore-hello\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[gancore]\nhello = gancore_hello:Hello\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    gancore = [sys.executable, "-m", "gancore.cli.main"]
    listing = subprocess.run([*gancore, "plugins"], env=env, capture_output=True, text=True)
    assert "hello  (gancore-hello 1.2.3)  Says hello at every step end." in listing.stdout
    assert "hello.greeting = 'hi'" in listing.stdout
    command = subprocess.run([*gancore, "hello"], env=env, capture_output=True, text=True)
    assert command.stdout.strip() == "hello from a plugin"
    trained = subprocess.run(
        [*gancore, "train", *TINY_FLAGS, "--steps", "3", "-p", "hello", "--set", "hello.greeting=yo", "--out", str(tmp_path / "runs")],
        env=env, capture_output=True, text=True,
    )
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.count("STEP-END yo") == 3


def test_a_broken_third_party_plugin_is_skipped_with_a_warning(tmp_path):
    info = tmp_path / "broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gancore]\nbroken = no_such_module:Plugin\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    listing = subprocess.run([sys.executable, "-m", "gancore.cli.main", "plugins"], env=env, capture_output=True, text=True)
    assert listing.returncode == 0
    assert "plugin broken (broken 0.1) failed to import: ModuleNotFoundError" in listing.stderr and "it is skipped" in listing.stderr
    assert "instance-noise" in listing.stdout
    requested = subprocess.run([sys.executable, "-m", "gancore.cli.main", "train", "-p", "broken"], env=env, capture_output=True, text=True)
    assert requested.returncode == 2 and "plugin broken (broken 0.1) failed to import" in requested.stderr and "--plugin broken" in requested.stderr
