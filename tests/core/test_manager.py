import inspect
import re
from pathlib import Path

import pytest

from gancore import hookimpl, hookspecs
from gancore.errors import GancoreError


class Schedules:
    """Claims the step schedule."""

    @hookimpl
    def gancore_step_schedule(self, trainer, step):
        return (2, 1)


class AlsoSchedules(Schedules):
    """Claims it too."""


class Loner:
    """Refuses company."""

    incompatible_with = ("instance-noise",)


class WantsWasserstein:
    """Suggests core settings."""

    @hookimpl
    def gancore_configure(self, config, options):
        config.suggest("wants-wasserstein", loss="wasserstein", n_critic=5)


class WantsHinge:
    """Suggests another loss."""

    @hookimpl
    def gancore_configure(self, config, options):
        config.suggest("wants-hinge", loss="hinge")


def test_unknown_plugin_lists_the_available_ones(catalog):
    with pytest.raises(GancoreError, match=r"unknown plugin 'unroled' \(available: .*instance-noise"):
        catalog.resolve(["unroled"])


def test_options_of_a_plugin_that_is_not_enabled(catalog):
    with pytest.raises(GancoreError, match="not enabled.*--plugin instance-noise"):
        catalog.resolve([], {"instance-noise": {"std": 1}})
    with pytest.raises(GancoreError, match="'nosuch'.*no such plugin"):
        catalog.resolve([], {"nosuch": {"x": 1}})


def test_plugin_options_are_typed(catalog):
    run = catalog.resolve(["instance-noise"], {"instance-noise": {"std": "0.25"}})
    assert run.config.plugins["instance-noise"].std == 0.25
    with pytest.raises(GancoreError, match="instance-noise.std='loud'"):
        catalog.resolve(["instance-noise"], {"instance-noise": {"std": "loud"}})


def test_two_claims_on_a_firstresult_hook_name_both_plugins(catalog):
    catalog.add("schedules", Schedules, "tests", "0")
    catalog.add("also-schedules", AlsoSchedules, "tests", "0")
    with pytest.raises(GancoreError, match="plugins (schedules and also-schedules|also-schedules and schedules) both implement gancore_step_schedule"):
        catalog.resolve(["schedules", "also-schedules"])
    assert catalog.resolve(["schedules"]).hook.gancore_step_schedule(trainer=None, step=0) == (2, 1)


def test_declared_incompatibility_names_both(catalog):
    catalog.add("loner", Loner, "tests", "0")
    with pytest.raises(GancoreError, match="plugins loner and instance-noise cannot be enabled together"):
        catalog.resolve(["instance-noise", "loner"])


def test_plugin_suggestions_yield_to_explicit_settings(catalog):
    catalog.add("wants-wasserstein", WantsWasserstein, "tests", "0")
    suggested = catalog.resolve(["wants-wasserstein"]).config.train
    assert (suggested.loss, suggested.n_critic) == ("wasserstein", 5)
    explicit = catalog.resolve(["wants-wasserstein"], {"train": {"n_critic": 2}}).config.train
    assert (explicit.loss, explicit.n_critic) == ("wasserstein", 2)


def test_conflicting_suggestions_name_both_plugins(catalog):
    catalog.add("wants-wasserstein", WantsWasserstein, "tests", "0")
    catalog.add("wants-hinge", WantsHinge, "tests", "0")
    with pytest.raises(GancoreError, match="plugins wants-wasserstein and wants-hinge want different train.loss"):
        catalog.resolve(["wants-wasserstein", "wants-hinge"])
    # the user settles it
    assert catalog.resolve(["wants-wasserstein", "wants-hinge"], {"train": {"loss": "hinge"}}).config.train.loss == "hinge"


def test_misspelled_hook_fails_loudly(catalog):
    class Typo:
        @hookimpl
        def gancore_step_ends(self, trainer):
            pass

    with pytest.raises(Exception, match="gancore_step_ends"):
        catalog.add("typo", Typo, "tests", "0")


def test_duplicate_plugin_names_are_refused(catalog):
    with pytest.raises(GancoreError, match="two plugins are named 'instance-noise'"):
        catalog.add("instance-noise", Loner, "tests", "0")


def test_every_builtin_plugin_module_is_an_entry_point(catalog):
    modules = {path.stem for path in (Path(__file__).parents[2] / "plugins").glob("*.py") if path.stem != "__init__"}
    registered = {info.cls.__module__.rsplit(".", 1)[-1] for info in catalog.plugins.values() if info.package == "gancore"}
    assert modules == registered


def test_every_hookspec_is_documented_with_its_signature():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    specs = [f for name, f in vars(hookspecs).items() if name.startswith("gancore_") and callable(f)]
    assert len(specs) >= 15
    for spec in specs:
        args = ", ".join(inspect.signature(spec).parameters)
        assert f"{spec.__name__}({args})" in readme, f"README.md lacks {spec.__name__}({args})"
        assert spec.__doc__ and len(spec.__doc__.strip()) > 40, f"{spec.__name__} needs a documented contract"
    # and the hookspec module maps every remedy of the design onto hooks
    for remedy in ("minibatch-discrimination", "feature-matching", "unrolled", "replay", "adagan", "veegan", "wgan-gp", "pacgan"):
        assert re.search(rf"\*\*{remedy}\*\*", hookspecs.__doc__), remedy
