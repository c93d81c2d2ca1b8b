"""gancore.fit: the same training as `gancore train`, with settings, data and plugins from Python."""
import json
import time

import numpy as np
import pytest
import torch
from torch import nn

import gancore
from gancore import GancoreError, hookimpl
from gancore.checkpoint import latest_checkpoint, load_checkpoint
from tests.cli_helpers import run_cli

SETTINGS = {"steps": 30, "batch_size": 32, "device": "cpu", "z_dim": 4, "g_width": 16, "d_width": 16,
            "n_train": 500, "eval_samples": 400, "eval_every": 10, "checkpoint_every": 10}
FLAGS = ["--steps", "30", "--batch-size", "32", "--device", "cpu", "-q"] + [
    arg for key in ("z_dim", "g_width", "d_width", "n_train", "eval_samples", "eval_every", "checkpoint_every")
    for arg in ("--set", f"train.{key}={SETTINGS[key]}")
]


def final_state(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"), "cpu")


def assert_same_models(left: dict, right: dict):
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].keys() == right[name].keys()
        for key in left[name]:
            assert torch.equal(left[name][key], right[name][key]), f"{name}.{key}"


def state_of(result):
    return {name: module.state_dict() for name, module in result.models.items()}


def test_fit_and_the_command_line_train_bit_identically(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", *FLAGS, "-p", "instance-noise", "-s", "instance-noise.std=0.3", "-p", "replay",
                           "--out", str(tmp_path / "cli"), "--name", "run")
    assert code == 0, err
    result = gancore.fit(plugins=[("instance-noise", {"std": 0.3}), "replay"], run_dir=tmp_path / "api", progress=False, **SETTINGS)
    cli_run, api_run = tmp_path / "cli" / "run", tmp_path / "api"
    assert json.loads((api_run / "summary.json").read_text()) == json.loads((cli_run / "summary.json").read_text()) == result.summary
    assert (api_run / "metrics.jsonl").read_text() == (cli_run / "metrics.jsonl").read_text()
    assert (api_run / "config.toml").read_text() == (cli_run / "config.toml").read_text()
    assert sorted(p.name for p in (api_run / "checkpoints").iterdir()) == sorted(p.name for p in (cli_run / "checkpoints").iterdir())
    assert_same_models(final_state(api_run)["models"], final_state(cli_run)["models"])
    assert_same_models(state_of(result), final_state(cli_run)["models"])
    assert [m["step"] for m in result.history] == [10, 20, 30]


def test_array_data_trains_as_the_same_points_from_a_file(tmp_path, capsys):
    points = np.random.default_rng(1).normal(size=(300, 3)).astype(np.float32)
    np.save(tmp_path / "points.npy", points)
    code, _, err = run_cli(capsys, "train", *FLAGS, "--data", str(tmp_path / "points.npy"), "--out", str(tmp_path), "--name", "cli")
    assert code == 0, err
    from_array = gancore.fit(data=points, progress=False, **SETTINGS)
    from_tensor = gancore.fit(data=torch.from_numpy(points), progress=False, **SETTINGS)
    assert_same_models(state_of(from_array), final_state(tmp_path / "cli")["models"])
    assert_same_models(state_of(from_tensor), state_of(from_array))
    assert from_array.summary["dataset"] == "user-data"


def test_without_run_dir_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = gancore.fit(progress=False, **SETTINGS)
    assert list(tmp_path.iterdir()) == [] and result.run_dir is None
    assert result.summary["step"] == 30 and result.sample(5).shape == (5, 2)


def test_resume_continues_bit_identically(tmp_path):
    settings = {**SETTINGS, "steps": 20}
    gancore.fit(plugins=["replay"], run_dir=tmp_path / "run", progress=False, **settings)
    resumed = gancore.fit(plugins=["replay"], run_dir=tmp_path / "run", resume=True, progress=False, **{**settings, "steps": 40})
    straight = gancore.fit(plugins=["replay"], progress=False, **{**settings, "steps": 40})
    assert resumed.summary == straight.summary and resumed.summary["step"] == 40
    assert_same_models(state_of(resumed), state_of(straight))
    assert [m["step"] for m in resumed.history] == [10, 20, 30, 40]


def test_run_json_records_each_session_with_its_steps_time_and_build(tmp_path):
    from gancore.provenance import build_info

    settings = {**SETTINGS, "steps": 20}
    gancore.fit(run_dir=tmp_path / "run", progress=False, **settings)
    gancore.fit(run_dir=tmp_path / "run", resume=True, progress=False, **{**settings, "steps": 30})
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [segment["steps"] for segment in meta["segments"]] == [[0, 20], [20, 30]]
    assert all(segment["wall_seconds"] > 0 for segment in meta["segments"])
    assert meta["wall_seconds"] == round(sum(segment["wall_seconds"] for segment in meta["segments"]), 3)  # the whole run, not the last session
    assert meta["segments"][1]["build"] == build_info() and build_info()["torch"] == torch.__version__


class SleepsAtTheEnd:
    """Waits without computing: wall time passes, CPU time does not."""

    data_parallel = ("exact", "changes nothing")

    @hookimpl
    def gancore_fit_end(self, trainer, summary):
        time.sleep(0.5)


def test_run_json_records_cpu_time_beside_wall_time_and_only_where_every_session_has_one(tmp_path):
    settings = {**SETTINGS, "steps": 20}
    gancore.fit(plugins=[SleepsAtTheEnd], run_dir=tmp_path / "run", progress=False, **settings)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    (segment,) = meta["segments"]
    # the one-core cost of the session: its computing, not the half second it waited
    assert 0 < segment["cpu_seconds"] <= segment["wall_seconds"] - 0.4
    assert (meta["wall_seconds"], meta["cpu_seconds"]) == (segment["wall_seconds"], segment["cpu_seconds"])
    # a session recorded before CPU time was: the run's total CPU time is unknown, not a partial sum
    del segment["cpu_seconds"]
    (tmp_path / "run" / "run.json").write_text(json.dumps({**meta, "segments": [segment]}))
    gancore.fit(plugins=[SleepsAtTheEnd], run_dir=tmp_path / "run", resume=True, progress=False, **{**settings, "steps": 30})
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "cpu_seconds" in meta["segments"][1] and "cpu_seconds" not in meta
    assert meta["wall_seconds"] == round(sum(segment["wall_seconds"] for segment in meta["segments"]), 3)


def test_a_segment_names_the_commit_the_process_started_on_not_the_checkouts_at_its_end(tmp_path, monkeypatch):
    import subprocess
    from types import SimpleNamespace

    from gancore import provenance

    head = {"commit": "a" * 40}

    def git(argv, **kwargs):  # `git rev-parse HEAD` answers the current head; `git status` a clean tree
        return SimpleNamespace(stdout=head["commit"] if "rev-parse" in argv else "")

    class MovesHead:  # as a `git pull` or commit while a long run trains
        data_parallel = ("exact", "changes nothing")

        @hookimpl
        def gancore_fit_end(self, trainer, summary):
            head["commit"] = "b" * 40

    monkeypatch.setattr(subprocess, "run", git)
    provenance.source_commit.cache_clear()
    try:
        gancore.fit(plugins=[MovesHead], run_dir=tmp_path / "run", progress=False, **{**SETTINGS, "steps": 10})
    finally:
        provenance.source_commit.cache_clear()
    (segment,) = json.loads((tmp_path / "run" / "run.json").read_text())["segments"]
    assert segment["build"]["commit"] == "a" * 40


def test_resume_refuses_other_settings_plugins_or_data(tmp_path):
    data = torch.randn(200, 2)
    gancore.fit(data=data, run_dir=tmp_path / "run", progress=False, **SETTINGS)
    with pytest.raises(GancoreError, match=r"train.lr_d = 0.0001, this call 0.002; resume with the same settings"):
        gancore.fit(data=data, run_dir=tmp_path / "run", resume=True, progress=False, **{**SETTINGS, "lr_d": 2e-3})
    with pytest.raises(GancoreError, match=r"enables plugins \[\], this call \[ema\]"):
        gancore.fit(data=data, plugins=["ema"], run_dir=tmp_path / "run", resume=True, progress=False, **SETTINGS)
    with pytest.raises(GancoreError, match=r"was started with data of shape \(200, 2\) \(sha256 \w+\), this call gives data of shape"):
        gancore.fit(data=data + 1, run_dir=tmp_path / "run", resume=True, progress=False, **SETTINGS)
    with pytest.raises(GancoreError, match="run_dir .* exists already; resume it with resume=True"):
        gancore.fit(data=data, run_dir=tmp_path / "run", progress=False, **SETTINGS)
    with pytest.raises(GancoreError, match="resume=True continues the run in run_dir; give run_dir"):
        gancore.fit(data=data, resume=True, progress=False, **SETTINGS)


def test_the_command_line_refuses_to_resume_a_run_only_python_can_rebuild(tmp_path, capsys):
    gancore.fit(data=torch.randn(200, 2), run_dir=tmp_path / "run", progress=False, **SETTINGS)
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "run"))
    assert code == 2
    assert err == (f"gancore: error: run {tmp_path / 'run'} was trained by gancore.fit with your own data; "
                   f"only Python can rebuild it: gancore.fit(..., run_dir='{tmp_path / 'run'}', resume=True)\n")


class CountSteps:
    """Counts steps and scales the adversarial G loss (an inline plugin with an option)."""

    def __init__(self):
        self.steps = 0

    @hookimpl
    def gancore_add_options(self, options):
        options.add("scale", float, 1.0, "factor on G's adversarial loss", min=0)

    @hookimpl
    def gancore_configure(self, options):
        self.scale = options.scale

    @hookimpl
    def gancore_generator_loss(self, terms):
        terms["adversarial"] = self.scale * terms["adversarial"]

    @hookimpl
    def gancore_step_end(self, logs):
        self.steps += 1
        logs["count/steps"] = torch.tensor(float(self.steps))


def test_plugin_objects_and_classes_run_inline_with_options():
    counter = CountSteps()
    result = gancore.fit(plugins=[(counter, {"scale": 0.0}), "ema"], progress=False, **SETTINGS)
    assert counter.steps == 30 and counter.scale == 0.0
    assert result.summary["plugins"] == ["count-steps", "ema"] and result.summary["count/steps"] == 30.0
    assert result.summary["loss_G/adversarial"] == 0.0
    by_class = gancore.fit(plugins=CountSteps, progress=False, **SETTINGS)
    assert by_class.summary["count/steps"] == 30.0 and by_class.summary["loss_G/adversarial"] != 0.0


class NoHooks:
    def step_end(self):
        pass


class Broken:
    def __init__(self):
        raise RuntimeError("no")


class Misspelled:
    @hookimpl
    def gancore_step_ends(self):
        pass


class Named:
    name = "label-noise"

    @hookimpl
    def gancore_step_end(self):
        raise ValueError("boom")


@pytest.mark.parametrize("kwargs, message", [
    ({"stepz": 3}, r"^unknown option train.stepz \(options of train: "),
    ({"steps": "many"}, r"^train.steps='many': expected int$"),
    ({"lr_d": True}, r"^train.lr_d=True: expected a number$"),
    ({"loss": "l2"}, r"^train.loss='l2': choose one of "),
    ({"data": np.zeros((0, 2))}, r"^gancore.fit data: points must be a non-empty \(samples, ...\); got shape \(0, 2\)$"),
    ({"data": np.array(3.0)}, r"^gancore.fit data: points must be a non-empty"),
    ({"data": np.array([["a", "b"]])}, r"^gancore.fit data: points must be real numbers, got dtype <U1$"),
    ({"data": torch.ones(4, 2, dtype=torch.complex64)}, r"must be real numbers, got dtype complex64$"),
    ({"data": torch.tensor([[0.0, float("nan")]])}, r"^gancore.fit data: points contain NaN or Inf"),
    ({"data": np.array([[1e39, 0.0]])}, r"beyond float32's range"),
    ({"data": torch.zeros(4, 1, 2, 2, dtype=torch.uint8)}, r"^gancore.fit data: values of dtype uint8 are used as given, not rescaled; give floats .*x / 127.5 - 1"),
    ({"data": np.arange(6).reshape(3, 2)}, r"^gancore.fit data: values of dtype int64 are used as given"),
    ({"run_dir": "no-such-run", "resume": True}, r"^gancore.fit: there is no run to resume in no-such-run \(no config.toml\); start it with resume=False$"),
    ({"data": [[0.0, 1.0]]}, r"^gancore.fit data: give a tensor, a numpy array, a torch Dataset or DataLoader, or a file path; not list$"),
    ({"data": torch.ones(10, 2), "dataset": "ring8"}, r"^gancore.fit: give your data or the dataset/data setting, not both$"),
    ({"modes": [[0.0, 0.0]]}, r"^gancore.fit: modes, radius and scorer describe your data"),
    ({"data": torch.ones(10, 2), "modes": [[0.0, 0.0]]}, r"^gancore.fit: with modes give radius, a positive number"),
    ({"data": torch.ones(10, 2), "modes": [[0.0, 0.0, 0.0]], "radius": 1}, r"each mode has 3 values but each sample has 2$"),
    ({"plugins": [NoHooks()]}, r"^plugin object no-hooks \(NoHooks\) implements no gancore hook; mark its methods with @gancore.hookimpl$"),
    ({"plugins": ["pacgan", ("pacgan", 2)]}, r"^gancore.fit plugins: a pair is \(name or plugin object, \{option: value\}\)"),
    ({"plugins": ["no-such-plugin"]}, r"^unknown plugin 'no-such-plugin' \(available: "),
    ({"plugins": [("pacgan", {"k": 2})]}, r"^unknown option pacgan.k \(options of pacgan: m\)$"),
    ({"plugins": [Misspelled()]}, r"^plugin misspelled \(inline\) is invalid: unknown hook 'gancore_step_ends'"),
    ({"plugins": [Broken]}, r"^plugin broken \(inline\) failed in __init__: RuntimeError: no$"),
    ({"plugins": [CountSteps(), CountSteps()]}, r"^two plugins are named 'count-steps'"),
    ({"plugins": [Named()]}, r"^plugin label-noise \(inline\) failed in gancore_step_end: ValueError: boom$"),
])
def test_bad_input_is_one_line_error(kwargs, message):
    with pytest.raises(GancoreError, match=message) as error:
        gancore.fit(progress=False, **{**SETTINGS, **kwargs})
    assert "\n" not in str(error.value)


def test_plugins_as_a_dict_of_options():
    result = gancore.fit(plugins={"instance-noise": {"std": 0.3}, "replay": {}}, progress=False, **SETTINGS)
    assert result.trainer.config.plugins["instance-noise"].std == 0.3 and result.summary["plugins"] == ["instance-noise", "replay"]


class Interrupt:
    """Sends this process SIGINT at the end of step 14 (as Ctrl-C would)."""

    @hookimpl
    def gancore_step_end(self, step):
        if step == 14:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_checkpoints_a_run_dir_and_resume_finishes_it_bit_identically(tmp_path):
    settings = {**SETTINGS, "checkpoint_every": 0}
    with pytest.raises(GancoreError) as stopped:
        gancore.fit(plugins=[Interrupt()], run_dir=tmp_path / "run", progress=False, **settings)
    assert str(stopped.value) == f"SIGINT at step 15: checkpoint written; continue with gancore.fit(..., run_dir='{tmp_path / 'run'}', resume=True)"
    assert stopped.value.exit_code == 130
    resumed = gancore.fit(plugins=[Interrupt()], run_dir=tmp_path / "run", resume=True, progress=False, **settings)
    uninterrupted = gancore.fit(progress=False, **settings)  # Interrupt changes nothing but the stop
    assert resumed.summary["step"] == 30
    assert_same_models(state_of(resumed), state_of(uninterrupted))


@pytest.mark.parametrize("cls_name, name", [("LossLog", "loss-log"), ("PacGAN", "pac-gan"), ("OneSidedLabelSmoothing", "one-sided-label-smoothing"), ("WganGp", "wgan-gp2")])
def test_a_plugin_object_is_named_after_its_class(cls_name, name):
    from gancore.api import _object_name

    attributes = {"name": name} if name.endswith("2") else {}
    assert _object_name(type(cls_name, (), attributes)) == name


def test_a_config_file_repeats_a_command_line_run(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", *FLAGS, "-p", "instance-noise", "-s", "instance-noise.std=0.3", "--out", str(tmp_path), "--name", "cli")
    assert code == 0, err
    repeated = gancore.fit(config=tmp_path / "cli" / "config.toml", progress=False)
    assert repeated.summary == json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert_same_models(state_of(repeated), final_state(tmp_path / "cli")["models"])
    overridden = gancore.fit(config=tmp_path / "cli" / "config.toml", plugins=[("instance-noise", {"std": 0.1}), "ema"], steps=10, progress=False)
    assert overridden.trainer.config.plugins["instance-noise"].std == 0.1 and overridden.summary["plugins"] == ["instance-noise", "ema"]
    assert overridden.summary["step"] == 10


def test_a_recipe_trains_as_the_command_line_recipe_and_is_recorded(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--recipe", "ring8-best", *FLAGS, "--out", str(tmp_path), "--name", "cli")
    assert code == 0, err
    result = gancore.fit(recipe="ring8-best", run_dir=tmp_path / "api", progress=False, **SETTINGS)
    assert (tmp_path / "api" / "config.toml").read_text() == (tmp_path / "cli" / "config.toml").read_text()
    assert result.trainer.config.train.g_depth == 4 and result.trainer.config.train.g_width == 16  # the recipe's, then ours
    assert result.summary["plugins"] == ["pacgan"]
    assert json.loads((tmp_path / "api" / "run.json").read_text())["recipe"] == "ring8-best"
    assert_same_models(state_of(result), final_state(tmp_path / "cli")["models"])
    with pytest.raises(GancoreError, match="no-such-recipe"):
        gancore.fit(recipe="no-such-recipe", progress=False, **SETTINGS)


def test_resuming_with_a_resized_network_of_the_same_class_names_the_parameter(tmp_path):
    def mlp(width):
        return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))

    settings, points = {**SETTINGS, "steps": 10}, torch.randn(200, 2)
    gancore.fit(mlp(8), None, points, run_dir=tmp_path / "run", progress=False, **settings)
    with pytest.raises(GancoreError) as error:
        gancore.fit(mlp(16), None, points, run_dir=tmp_path / "run", resume=True, progress=False, **settings)
    message = str(error.value)
    assert "does not match the networks and settings this call gives" in message and "config.toml" not in message
    assert "size mismatch for" in message and "\n" not in message
