"""What a user types or points at: files that are not files, sizes that cannot fit, seeds out of
range, settings out of their domain, data that overflows, warnings, and flags that conflict.
Each ends in one line on stderr with exit status 2 and no run directory."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import TINY_FLAGS, run_cli
from gancore import hookimpl
from gancore.config import MAX_CONFIG_BYTES
from gancore.data import load_points_file


def _refused(code: int, err: str, out_dir=None) -> str:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("gancore: error: ") and "Traceback" not in err, err
    if out_dir is not None:
        assert not out_dir.exists() or not any(out_dir.iterdir())
    return err


# --- files that are not regular files --------------------------------------------------------------


def test_a_config_that_is_a_device_or_fifo_or_huge_is_refused_without_reading_it(capsys, tmp_path):
    fifo = tmp_path / "c.toml"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.toml"
    huge.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    for path, why in (("/dev/zero", "not a regular file"), (fifo, "not a regular file"), (huge, "the limit is 1048576 bytes")):
        code, _, err = run_cli(capsys, "train", "--config", str(path), "--out", str(tmp_path / "runs"))
        assert why in _refused(code, err, tmp_path / "runs")


def test_a_data_path_that_is_a_fifo_is_refused(capsys, tmp_path):
    fifo = tmp_path / "points.npy"
    os.mkfifo(fifo)
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--data", str(fifo), "--out", str(tmp_path / "runs"))
    assert "not a regular file" in _refused(code, err, tmp_path / "runs")


def _images(folder, n=6, size=8):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def test_a_fifo_named_like_an_image_does_not_hang_the_folder_loader(tmp_path):
    from gancore.images import load_image_folder

    folder = _images(tmp_path / "images")
    os.mkfifo(folder / "blocking.png")
    loaded = {}
    worker = threading.Thread(target=lambda: loaded.update(dataset=load_image_folder(folder)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "reading the image folder blocked on a FIFO"
    assert loaded["dataset"].points.shape == (6, 1, 8, 8)


def test_data_flag_takes_an_image_folder(capsys, tmp_path):
    folder = _images(tmp_path / "faces")
    code, out, err = run_cli(capsys, "train", *TINY_FLAGS, "--steps", "2", "--data", str(folder), "--out", str(tmp_path / "runs"))
    assert code == 0, err
    assert (tmp_path / "runs" / "faces-vanilla-s0" / "summary.json").is_file()


def test_a_decompression_bomb_is_one_line(capsys, tmp_path, monkeypatch):
    from PIL import Image

    folder = _images(tmp_path / "bombs", size=16)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16 × 16 is over twice the limit: PIL refuses
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--data", str(folder), "--out", str(tmp_path / "runs"))
    assert "more pixels than PIL will decode safely" in _refused(code, err, tmp_path / "runs")


# --- data values ----------------------------------------------------------------------------------


def test_float64_data_beyond_float32_is_refused(capsys, tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, np.array([[1.0, 2.0], [1e39, 0.0]]))
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--data", str(path), "--out", str(tmp_path / "runs"))
    assert "beyond float32's range" in _refused(code, err, tmp_path / "runs")


def test_a_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    path = tmp_path / "points.csv"
    path.write_bytes("1.5,2\n3,4\n".encode("utf-8-sig"))
    assert load_points_file(path).points.tolist() == [[1.5, 2.0], [3.0, 4.0]]


CELLS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64).map(repr), st.sampled_from(["", "x", "1e39", "-0", " 2 "]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(CELLS, min_size=1, max_size=3), min_size=1, max_size=4), st.booleans())
def test_fuzzed_csv_files_train_or_are_refused_in_one_line(capsys, tmp_path_factory, rows, bom):
    folder = tmp_path_factory.mktemp("csv")
    text = "\n".join(",".join(row) for row in rows) + "\n"
    (folder / "p.csv").write_bytes(text.encode("utf-8-sig" if bom else "utf-8"))
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--steps", "1", "--data", str(folder / "p.csv"), "--out", str(folder / "runs"))
    if code != 0:
        _refused(code, err, folder / "runs")


# --- sizes that cannot fit --------------------------------------------------------------------------


NETWORKS = "the networks (g_width, d_width, z_dim)"


@pytest.mark.parametrize("argv, what", [
    (["--batch-size", "1000000000"], "a training step at train.batch_size=1000000000"),
    (["--set", "train.n_train=1000000000000"], "dataset ring8 with train.n_train=1000000000000"),
    (["--set", "train.eval_samples=100000000000"], "an evaluation of 100000000000 samples"),
    (["--set", "train.z_dim=10000000000"], NETWORKS),
    (["--set", "train.g_width=100000000"], NETWORKS),
])
def test_sizes_that_cannot_fit_are_refused_before_allocating(capsys, tmp_path, argv, what):
    flags = list(TINY_FLAGS)
    index = flags.index("--batch-size")
    del flags[index:index + 2]  # the case sets the batch size itself
    code, _, err = run_cli(capsys, "train", *flags, *argv, "--out", str(tmp_path / "runs"))
    assert f"gancore: error: {what} needs at least" in _refused(code, err, tmp_path / "runs")
    assert "memory has" in err


def test_sampling_more_than_fits_is_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(tmp_path), "--name", "r")
    assert code == 0, err
    code, _, err = run_cli(capsys, "sample", str(tmp_path / "r"), "--n", "10000000000000", "--out", str(tmp_path / "s.npy"))
    assert "--n 10000000000000 needs at least" in _refused(code, err)
    assert not (tmp_path / "s.npy").exists()


def test_an_allocation_failure_during_training_is_one_line(capsys, tmp_path, monkeypatch):
    from gancore.trainer import Trainer

    def out_of_memory(self):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes")

    monkeypatch.setattr(Trainer, "train_step", out_of_memory)
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(tmp_path / "runs"))
    assert _refused(code, err, tmp_path / "runs").startswith("gancore: error: out of memory: lower train.batch_size")


# --- seeds and settings out of their domain ---------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--seed", "4294967296"], ["--set", "train.seed=18000000000001"], ["--set", "train.seed=-1"],
    ["--set", "train.betas_d=1.5,0.9"], ["--set", "train.betas_g=-0.1,0.9"], ["--set", "train.betas_g=0.5"],
    ["--set", "train.betas_d=0.5,1"], ["--set", "train.image_size=12"],
])
def test_settings_outside_their_domain_are_refused(capsys, tmp_path, argv):
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, *argv, "--out", str(tmp_path / "runs"))
    _refused(code, err, tmp_path / "runs")


def test_the_largest_seed_trains_and_evaluates(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", *TINY_FLAGS, "--seed", "4294967295", "--set", "train.eval_every=10", "--out", str(tmp_path))
    assert code == 0, err
    assert "modes captured" in out


def test_sample_refuses_a_seed_out_of_range(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(tmp_path), "--name", "r")
    assert code == 0, err
    code, _, err = run_cli(capsys, "sample", str(tmp_path / "r"), "--seed", str(2**40), "--out", str(tmp_path / "s.npy"))
    assert "--seed" in _refused(code, err)


# --- flags that conflict ------------------------------------------------------------------------------


def test_a_setting_given_by_a_flag_and_by_set_is_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--steps", "5", "--set", "train.steps=abc", "--out", str(tmp_path / "runs"))
    assert _refused(code, err, tmp_path / "runs") == (
        "gancore: error: train.steps is given twice, by --steps and by --set train.steps; give one\n")


def test_resume_refuses_out(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--out", str(tmp_path), "--name", "r")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "r"), "--out", str(tmp_path / "elsewhere"))
    assert "--resume continues a run with its own settings and directory" in _refused(code, err)
    assert not (tmp_path / "elsewhere").exists()


# --- warnings and tracebacks ---------------------------------------------------------------------------


def test_warnings_reach_the_user_as_one_line_each(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", *TINY_FLAGS, "--steps", "2", "-p", "wgan-gp", "-p", "minibatch-discrimination",
                           "--out", str(tmp_path / "runs"))
    assert code == 0, err
    lines = err.splitlines()
    assert lines and all(line.startswith("gancore: warning: ") for line in lines), err
    assert any(line.endswith("(UserWarning)") and "wgan-gp with minibatch-discrimination" in line for line in lines)


class Faulty:
    """Raises at the third step end."""

    @hookimpl
    def gancore_step_end(self, step):
        if step == 2:
            raise ValueError("the flux capacitor is empty")


def test_debug_prints_the_traceback_of_a_plugin_fault(capsys, tmp_path, monkeypatch):
    from gancore.manager import Catalog

    installed = Catalog.installed

    def with_faulty():
        catalog = installed()
        catalog.add("faulty", Faulty, "tests", "0")
        return catalog

    monkeypatch.setattr(Catalog, "installed", staticmethod(with_faulty))
    argv = ["train", *TINY_FLAGS, "-p", "faulty", "--out", str(tmp_path / "runs")]
    code, _, quiet = run_cli(capsys, *argv)
    assert code == 2 and "Traceback" not in quiet
    code, _, loud = run_cli(capsys, "--debug", *argv)
    assert code == 2 and "Traceback (most recent call last)" in loud and 'test_inputs.py", line' in loud
    assert loud.splitlines()[-1] == quiet.strip()
    monkeypatch.setenv("GANCORE_DEBUG", "1")
    code, _, from_env = run_cli(capsys, *argv)
    assert "Traceback (most recent call last)" in from_env
