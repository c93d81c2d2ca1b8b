"""Checkpoints: ordered by step, tied to the run that wrote them, and refused in one line when
they are damaged (valid torch files holding the wrong things)."""
from __future__ import annotations

import shutil

import pytest
import torch

from cli_helpers import TINY_FLAGS, run_cli
from gancore.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from gancore.errors import GancoreError, one_line


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("gancore: error: ") and "Traceback" not in err, err
    return err


def test_rotation_and_the_latest_checkpoint_go_by_step_number_past_ten_to_the_eight(tmp_path):
    for step in (99_999_980, 99_999_990, 100_000_000):
        save_checkpoint(tmp_path, step, {"step": step}, keep=5)
    save_checkpoint(tmp_path, 100_000_010, {"step": 100_000_010}, keep=3)
    assert [torch.load(path)["step"] for path in list_checkpoints(tmp_path)] == [99_999_990, 100_000_000, 100_000_010]
    assert latest_checkpoint(tmp_path).name == "step-100000010.pt"


def test_files_that_only_look_like_checkpoints_are_ignored(tmp_path):
    save_checkpoint(tmp_path, 7, {"step": 7}, keep=3)
    (tmp_path / "step-latest.pt").write_text("not mine")
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-00000007.pt"]


@pytest.fixture
def finished_run(capsys, tmp_path):
    """A tiny finished run (30 steps, checkpoints at 10, 20, 30) and the run_cli to poke it with."""
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(tmp_path), "--name", "r", "--set", "train.checkpoint_every=10")
    assert code == 0, err
    return tmp_path / "r"


@pytest.mark.parametrize("key, edited", [
    ("seed", "seed = 3"), ("dataset", 'dataset = "grid25"'), ("data", 'data = "other.npy"'), ("lr_d", "lr_d = 0.5"),
])
def test_resume_refuses_an_edited_config_naming_the_field(capsys, finished_run, key, edited):
    config = finished_run / "config.toml"
    text = config.read_text()
    line = next(line for line in text.splitlines() if line.startswith(f"{key} = "))
    config.write_text(text.replace(line, edited))
    before = config.read_bytes()
    for argv in (["train", "--resume", str(finished_run), "--steps", "40"], ["eval", str(finished_run)]):
        code, _, err = run_cli(capsys, *argv)
        assert f"config.toml sets train.{key} = " in _one_line_error(code, err)
        assert "only --steps may change on resume" in err
    assert config.read_bytes() == before


def test_resume_refuses_a_changed_plugin_set(capsys, finished_run):
    config = finished_run / "config.toml"
    config.write_text(config.read_text() + "\n[plugins.ema]\n")
    code, _, err = run_cli(capsys, "train", "--resume", str(finished_run))
    assert "was written with plugins [] but config.toml enables [ema]" in _one_line_error(code, err)


def test_a_checkpoint_of_another_plugin_set_is_refused(capsys, tmp_path, finished_run):
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(tmp_path), "--name", "with-ema", "-p", "ema")
    assert code == 0, err
    shutil.copy(latest_checkpoint(tmp_path / "with-ema" / "checkpoints"), finished_run / "checkpoints" / "step-00000031.pt")
    code, _, err = run_cli(capsys, "eval", str(finished_run))
    assert "was written with plugins [ema] but config.toml enables []" in _one_line_error(code, err)


def test_steps_below_the_current_step_are_refused_and_config_is_kept(capsys, finished_run):
    before = (finished_run / "config.toml").read_bytes()
    code, _, err = run_cli(capsys, "train", "--resume", str(finished_run), "--steps", "20")
    assert _one_line_error(code, err) == "gancore: error: --steps 20 is below the step the run has reached (30); give a larger total\n"
    assert (finished_run / "config.toml").read_bytes() == before


def _damage(state: dict, how: str) -> None:
    if how == "step-text":
        state["step"] = "thirty"
    elif how == "step-negative":
        state["step"] = -4
    elif how == "history-number":
        state["history"] = 5
    elif how == "history-of-strings":
        state["history"] = ["a", "b"]
    elif how == "no-optimizers":
        del state["optimizers"]
    elif how == "network-of-strings":
        state["models"]["G"] = {"weight": "heavy"}
    elif how == "wrong-shapes":
        state["models"]["G"] = {key: value[..., :1] if value.dim() else value for key, value in state["models"]["G"].items()}
    elif how == "missing-network":
        del state["models"]["D"]
    elif how == "generator-floats":
        state["generator"] = torch.zeros(3)
    elif how == "optimizer-garbage":
        state["optimizers"]["G"] = {"state": 1, "param_groups": "x"}
    elif how == "numpy-rng-empty":
        state["numpy_rng"] = {}
    elif how == "lr-text":
        state["lr_scale"] = "half"
    elif how == "rollbacks-negative":
        state["rollbacks"] = -1
    elif how == "rollbacks-flag":
        state["rollbacks"] = True


DAMAGE = ["step-text", "step-negative", "history-number", "history-of-strings", "no-optimizers", "network-of-strings",
          "wrong-shapes", "missing-network", "generator-floats", "optimizer-garbage", "numpy-rng-empty", "lr-text",
          "rollbacks-negative", "rollbacks-flag"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_checkpoint_is_one_line_for_every_command(capsys, tmp_path, finished_run, how):
    path = latest_checkpoint(finished_run / "checkpoints")
    state = torch.load(path, weights_only=True)
    _damage(state, how)
    torch.save(state, path)
    for argv in (["eval", str(finished_run)], ["sample", str(finished_run), "--out", str(tmp_path / "s.npy")],
                 ["train", "--resume", str(finished_run), "--steps", "40"]):
        code, _, err = run_cli(capsys, *argv)
        assert str(path) in _one_line_error(code, err), (how, argv)
    assert not (tmp_path / "s.npy").exists()


def test_a_checkpoint_written_before_rollbacks_were_kept_still_resumes(capsys, finished_run):
    path = latest_checkpoint(finished_run / "checkpoints")
    state = torch.load(path, weights_only=True)
    assert state.pop("rollbacks") == 0
    torch.save(state, path)
    code, _, err = run_cli(capsys, "train", "--resume", str(finished_run), "--steps", "40", "-q")
    assert code == 0, err
    assert load_checkpoint(latest_checkpoint(finished_run / "checkpoints"))["step"] == 40


def test_a_corrupt_checkpoint_message_is_cut_at_a_word_not_mid_word(tmp_path):
    path = tmp_path / "step-00000001.pt"
    path.write_bytes(b"PK\x03\x04" + b"garbage " * 100)
    with pytest.raises(GancoreError) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"checkpoint {path} is corrupt or not a gancore checkpoint (")
    assert str(error.value).endswith(")")


def test_one_line_shortens_at_a_word_boundary():
    assert one_line(ValueError("alpha beta gamma delta"), limit=30) == "ValueError: alpha beta gamma…"
    assert one_line("first\nsecond") == "first"
    assert one_line(KeyError()) == "KeyError"
