"""Every built-in plugin alone and with every other one, in both orders: a few tiny steps with finite losses.

Generic on purpose: it iterates the installed catalog, so plugins added later are covered. Pairs
that cannot run together (declared ``incompatible_with``, or both answering one firstresult hook)
must be refused before training with a one-line error naming both.
"""
from itertools import permutations

import pytest
import torch
from torch import nn

from gancore import GancoreError
from gancore.hookspecs import FIRST_RESULT_HOOKS
from gancore.manager import Catalog

BUILT_IN = sorted(name for name, info in Catalog.installed().plugins.items() if info.package == "gancore")
# the configured run stays the fixture's 20 steps (a plugin may need several: adagan's rounds); 3 are run
SMALL = {"batch_size": 32, "n_train": 500, "eval_samples": 200, "g_width": 8, "d_width": 8, "z_dim": 2}


def claims(info, hook: str) -> bool:
    return hasattr(getattr(info.cls, hook, None), "gancore_impl")


def conflict(catalog, a: str, b: str) -> bool:
    first, second = catalog.plugins[a], catalog.plugins[b]
    if b in first.incompatible_with or a in second.incompatible_with:
        return True
    return any(claims(first, hook) and claims(second, hook) for hook in FIRST_RESULT_HOOKS)


def check_runs(make_trainer, plugins, train=SMALL):
    trainer = make_trainer(plugins, train=train)
    for _ in range(3):
        trainer.train_step()
        assert trainer.last_logs
        for name, value in trainer.last_logs.items():
            assert torch.isfinite(value).all(), f"{name} = {value} at step {trainer.step} with {plugins}"
    metrics = trainer.evaluate()
    assert metrics["n_modes"] == 8 and 0 <= metrics["hq_percent"] <= 100


def test_the_built_in_plugins_are_installed():
    assert {"instance-noise", "minibatch-discrimination", "feature-matching", "pacgan", "replay"} <= set(BUILT_IN)


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_built_in_plugin_runs_alone(make_trainer, name):
    check_runs(make_trainer, [name])


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_built_in_plugin_runs_with_simultaneous_updates_or_needs_more_d_updates(make_trainer, name):
    simultaneous = {**SMALL, "update_order": "simultaneous"}
    try:
        make_trainer([name], train=simultaneous)
    except GancoreError as error:  # a critic that takes several steps per G step (wgan's, wgan-gp's n_critic = 5)
        assert f"(suggested by {name})" in str(error) and "train.n_critic" in str(error)
        return
    check_runs(make_trainer, [name], simultaneous)


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_built_in_plugin_runs_from_train_init_drawn_on_every_layer_it_built(make_trainer, name):
    drawn = {**SMALL, "init": "normal:0.3"}
    trainer = make_trainer([name], train=drawn)
    for network, module in trainer.models.modules.items():
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and layer.bias is not None:
                assert not layer.bias.detach().any(), f"with {name}, a layer of {network} kept PyTorch's bias: {layer}"
    check_runs(make_trainer, [name], drawn)


@pytest.mark.parametrize("pair", list(permutations(BUILT_IN, 2)), ids="+".join)
def test_every_pair_runs_together_or_is_refused_by_name(make_trainer, catalog, pair):
    if conflict(catalog, *pair):
        with pytest.raises(GancoreError) as error:
            make_trainer(pair, train=SMALL)
        message = str(error.value)
        assert pair[0] in message and pair[1] in message and "\n" not in message
    else:
        check_runs(make_trainer, pair)
