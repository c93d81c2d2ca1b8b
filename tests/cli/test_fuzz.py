"""Property-based bad input: whatever a user throws at the CLI ends in success or in one line
on stderr with exit status 2 — never a traceback, never a damaged run directory."""
from __future__ import annotations

import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import TINY_FLAGS, run_cli

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# keep every fuzzed run tiny whatever was fuzzed: these come after the fuzzed settings and win
SIZE_GUARD = ["--set", "train.steps=2", "--set", "train.batch_size=16", "--set", "train.n_train=200",
              "--set", "train.eval_samples=100", "--set", "train.z_dim=3", "--set", "train.g_width=8",
              "--set", "train.d_width=8", "--set", "train.g_depth=1", "--set", "train.d_depth=1", "-q", "--device", "cpu"]

OWNERS = st.sampled_from(["train", "instance-noise", "nosuch", "", "train.x", "Train"])
NAMES = st.sampled_from(["lr_d", "loss", "seed", "betas_g", "activation", "eval_every", "std", "anneal_steps", "cpu_threads", "", "x y"])
VALUES = st.one_of(
    st.sampled_from(["nan", "inf", "-1", "0", "1e400", "true", "", "0.5,0.9", "relu", "hinge", "1,2,3", "é", "None"]),
    st.text(alphabet=string.printable, max_size=12),
)


def assert_clean(code: int, err: str) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("gancore: error: "), err


@SETTINGS
@given(st.lists(st.tuples(OWNERS, NAMES, VALUES), max_size=3), st.booleans())
def test_fuzzed_set_values(capsys, tmp_path_factory, assignments, with_plugin):
    out = tmp_path_factory.mktemp("runs")
    argv = ["train", "--out", str(out)]
    for owner, name, value in assignments:
        argv += ["--set", f"{owner}.{name}={value}"]
    if with_plugin:
        argv += ["-p", "instance-noise"]
    code, _, err = run_cli(capsys, *argv, *SIZE_GUARD)
    assert_clean(code, err)
    if code == 2:
        assert not any(out.iterdir()), "a rejected run must not leave a run directory"


@SETTINGS
@given(st.one_of(
    st.text(max_size=80),
    st.builds(lambda table, key, value: f"[{table}]\n{key} = {value}\n",
              st.sampled_from(["train", "plugins", "plugins.instance-noise", "plugins.nosuch", "x"]),
              st.sampled_from(["steps", "loss", "std", "lr_g", "enabled", "1"]),
              st.sampled_from(["3", '"hinge"', "[1, 2]", "{a = 1}", "true", "-4", '"x"', "1979-05-27", "nan"])),
))
def test_fuzzed_toml_configs(capsys, tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "c.toml").write_text(text)
    code, _, err = run_cli(capsys, "train", "--config", str(folder / "c.toml"), "--out", str(folder / "runs"), *SIZE_GUARD)
    assert_clean(code, err)


@SETTINGS
@given(st.sampled_from([".csv", ".npy", ".npz", ".txt"]), st.one_of(
    st.binary(max_size=200),
    st.text(alphabet="0123456789.,-eE naif\n", max_size=120).map(str.encode),
))
def test_fuzzed_data_files(capsys, tmp_path_factory, suffix, content):
    folder = tmp_path_factory.mktemp("data")
    (folder / f"d{suffix}").write_bytes(content)
    code, _, err = run_cli(capsys, "train", "--data", str(folder / f"d{suffix}"), "--out", str(folder / "runs"), *SIZE_GUARD)
    assert_clean(code, err)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    from gancore.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["train", *TINY_FLAGS, "--out", str(out)])
    assert done.value.code == 0
    return out / "ring8-vanilla-s0"


@SETTINGS
@given(st.one_of(st.binary(max_size=300), st.integers(min_value=0, max_value=4000)))
def test_fuzzed_corrupt_checkpoints(capsys, tmp_path_factory, finished_run, damage):
    """Random bytes, or a real checkpoint truncated at a random length, as the latest checkpoint."""
    folder = tmp_path_factory.mktemp("corrupt")
    (folder / "checkpoints").mkdir()
    (folder / "config.toml").write_bytes((finished_run / "config.toml").read_bytes())
    real = next((finished_run / "checkpoints").glob("step-*.pt")).read_bytes()
    content = damage if isinstance(damage, bytes) else real[: damage * len(real) // 4001]
    (folder / "checkpoints" / "step-99999999.pt").write_bytes(content)
    code, _, err = run_cli(capsys, "eval", str(folder))
    assert code == 2 and err.count("\n") == 1 and "checkpoint" in err, err
    assert "Traceback" not in err
    assert np.frombuffer((folder / "checkpoints" / "step-99999999.pt").read_bytes(), dtype=np.uint8).size == len(content)
