"""Data parallelism on 2 CPU processes (gloo) against one process.

How the two draw the same data: all ranks share one training stream seeded by the seed; each
draw takes the rows of every rank and a rank keeps its slice, so rank r trains on the r-th
half of exactly the batch the single process draws (gancore.distributed). With gradients and
loss terms averaged over the ranks, a plugin declared "exact" gives the single process's
losses and parameters up to float summation order.
"""
from __future__ import annotations

import pytest
import torch

from gancore.manager import Catalog
from tests.distributed.launch import fit_in_processes

SETTINGS = {"steps": 6, "batch_size": 32, "z_dim": 4, "g_width": 16, "d_width": 16, "n_train": 500, "eval_every": 3, "eval_samples": 200, "device": "cpu"}
OPTIONS = {"adagan": {"rounds": 2, "classifier_steps": 5}, "unrolled": {"steps": 2}, "ema": {"decay": 0.5}}


def _runs() -> list[dict]:
    runs = [{"label": "vanilla", "plugins": {}, "settings": SETTINGS}]
    for name in BUILT_IN:
        runs.append({"label": name, "plugins": {name: OPTIONS.get(name, {})}, "settings": SETTINGS})
    for name in THIRD_PARTY:
        runs.append({"label": name, "plugins": {f"tests.distributed.plugins_under_test:{name}": {}}, "settings": SETTINGS})
    runs.append({"label": DATA_INIT, "plugins": {"minibatch-discrimination": {"init": "data"}}, "settings": SETTINGS})
    runs.append({"label": "odd batch", "plugins": {}, "settings": {**SETTINGS, "batch_size": 31}})
    runs.append({"label": "odd packs", "plugins": {"pacgan": {"m": 4}}, "settings": {**SETTINGS, "batch_size": 36}})
    return runs


CATALOG = Catalog.installed()
THIRD_PARTY = ["CountsSteps", "DeclaredCountsSteps"]
DATA_INIT = "minibatch-discrimination[init=data]"  # set from each rank's real batch, then averaged over the ranks
BUILT_IN = [name for name, info in CATALOG.plugins.items() if info.package == "gancore"]


def declared(label: str) -> str | None:
    """What the built-in run ``label`` declares (None for the other runs)."""
    if label == "vanilla":
        return "exact"
    return CATALOG.plugins[label].cls.data_parallel[0] if label in BUILT_IN else None


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    where = tmp_path_factory.mktemp("parallel")
    runs = _runs()
    return {"two": fit_in_processes(runs, 2, where), "one": fit_in_processes([r for r in runs if declared(r["label"]) == "exact"], 1, where)[0]}


def test_every_built_in_plugin_declares_its_meaning_under_data_parallelism():
    for name in BUILT_IN:
        mode, why = CATALOG.plugins[name].cls.data_parallel
        assert mode in ("exact", "local", "refused") and why, name


@pytest.mark.parametrize("label", ["vanilla", *BUILT_IN, DATA_INIT])
def test_ranks_hold_identical_parameters_or_both_refuse(results, label):
    rank0, rank1 = results["two"][0][label], results["two"][1][label]
    if declared(label) == "refused":
        assert rank0["error"] == rank1["error"]
        assert rank0["error"].startswith(f"plugin {label} cannot train on 2 processes: ") and "\n" not in rank0["error"]
        return
    assert "error" not in rank0, rank0.get("error")
    for name, parameters in rank0["parameters"].items():
        for key, value in parameters.items():
            assert torch.equal(value, rank1["parameters"][name][key]), f"{label}: {name}.{key} differs between ranks"
    assert rank0["history"] == rank1["history"]


@pytest.mark.parametrize("label", [label for label in ["vanilla", *BUILT_IN] if declared(label) == "exact"])
def test_two_processes_with_half_batches_equal_one_process(results, label):
    two, one = results["two"][0][label], results["one"][label]
    for name, parameters in one["parameters"].items():
        for key, value in parameters.items():
            torch.testing.assert_close(two["parameters"][name][key], value, rtol=1e-4, atol=1e-5, msg=f"{label}: {name}.{key}")
    assert [entry["step"] for entry in two["history"]] == [entry["step"] for entry in one["history"]] == [3, 6]
    for parallel, single in zip(two["history"], one["history"]):
        losses = [key for key in single if key.startswith("loss_")]
        assert losses
        for key in losses:
            assert parallel[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), (label, key)


def test_an_undeclared_third_party_plugin_is_refused_and_a_declared_one_trains(results):
    for rank in results["two"]:
        assert rank["CountsSteps"]["error"] == (
            "plugin counts-steps (inline) does not declare what it does on 2 processes (a class attribute "
            "data_parallel = ('exact' or 'local' or 'refused', 'why')); run it in one process or ask its author"
        )
        assert rank["DeclaredCountsSteps"]["history"][-1]["step"] == 6


def test_a_batch_that_does_not_divide_among_the_ranks_is_refused_in_one_line(results):
    for rank in results["two"]:
        assert rank["odd batch"]["error"] == "train.batch_size=31 does not divide among 2 processes; give a multiple of 2"


def test_pacgan_refuses_packs_that_do_not_divide_a_rank_s_batch(results):
    for rank in results["two"]:
        assert rank["odd packs"]["error"] == "pacgan.m=4 must divide each of the 2 processes' batch of 18; choose train.batch_size a multiple of 8"
