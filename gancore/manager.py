"""Finding, configuring and enabling plugins.

Every plugin, built-in or third-party, is found through the entry-point group ``gancore``:
the entry point's name is the plugin's name and its object is a class instantiated with no
arguments. The catalog holds one instance of every installed plugin (for options and CLI
commands); a run registers fresh instances of the enabled plugins only.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Iterable, Iterator

import pluggy

from gancore import hookspecs
from gancore.config import CORE, RunConfig, core_options
from gancore.errors import GancoreError
from gancore.options import OptionSet

ENTRY_POINT_GROUP = "gancore"


@dataclass
class PluginInfo:
    """An installed plugin: its name, class, the distribution that provides it, and its options."""

    name: str
    cls: type
    package: str
    version: str
    options: OptionSet

    @property
    def summary(self) -> str:
        return (self.cls.__doc__ or "").strip().splitlines()[0] if self.cls.__doc__ else ""

    @property
    def incompatible_with(self) -> tuple[str, ...]:
        return tuple(getattr(self.cls, "incompatible_with", ()))


def new_plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    return manager


def call_for(manager: pluggy.PluginManager, hook: str, plugin: str, **kwargs: Any) -> Any:
    """Call ``hook`` on one registered plugin only; return its result (None if not implemented)."""
    others = [p for name, p in manager.list_name_plugin() if name != plugin]
    results = manager.subset_hook_caller(hook, remove_plugins=others)(**kwargs)
    return results[0] if results else None


class Catalog:
    """Every installed plugin, by name."""

    def __init__(self) -> None:
        self.plugins: dict[str, PluginInfo] = {}
        self.broken: dict[str, str] = {}
        self.manager = new_plugin_manager()

    @classmethod
    def installed(cls) -> "Catalog":
        """The catalog of every plugin declared in the ``gancore`` entry-point group."""
        catalog = cls()
        for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
            dist = point.dist
            try:
                plugin_cls = point.load()
            except Exception as exc:  # a broken third-party package must not break gancore
                catalog.broken[point.name] = f"{type(exc).__name__}: {exc}"
                continue
            catalog.add(point.name, plugin_cls, dist.name if dist else "?", dist.version if dist else "?")
        return catalog

    def add(self, name: str, plugin_cls: type, package: str, version: str) -> None:
        """Register ``plugin_cls`` under ``name`` (what the entry-point loader does; tests use it too)."""
        if name in self.plugins or name == CORE:
            raise GancoreError(f"two plugins are named {name!r} ({self.plugins[name].package if name in self.plugins else 'the core'} and {package})")
        instance = plugin_cls()
        self.manager.register(instance, name=name)
        self.manager.check_pending()  # a misspelled hook name fails loudly
        options = OptionSet(name)
        call_for(self.manager, "gancore_add_options", name, options=options)
        self.plugins[name] = PluginInfo(name, plugin_cls, package, version, options)

    def resolve(
        self,
        enabled: Iterable[str],
        values: dict[str, dict[str, Any]] | None = None,
        explicit_core: Iterable[str] = (),
    ) -> "Run":
        """Check the plugin selection and settings, build the run's plugin manager and configure it.

        :param enabled: plugin names in the order given.
        :param values: ``{owner: {option: value}}`` for ``train`` and for plugins (raw or typed).
        :param explicit_core: names of core settings the user set (plugins may not override them).
        """
        values = dict(values or {})
        names = list(dict.fromkeys(enabled))
        for name in names:
            if name not in self.plugins:
                if name in self.broken:
                    raise GancoreError(f"plugin {name!r} failed to import: {self.broken[name]}")
                available = ", ".join(self.plugins) or "none installed"
                raise GancoreError(f"unknown plugin {name!r} (available: {available}); see `gancore plugins`")
        for owner in values:
            if owner != CORE and owner not in names:
                hint = "enable it with --plugin " + owner if owner in self.plugins else "no such plugin"
                raise GancoreError(f"options given for {owner!r}, which is not enabled ({hint})")
        self._check_compatible(names)
        core = core_options()
        train_values = values.get(CORE, {})
        config = RunConfig(
            train=core.resolve(train_values),
            plugins={name: self.plugins[name].options.resolve(values.get(name, {})) for name in names},
            explicit=set(train_values) | set(explicit_core),
        )
        manager = new_plugin_manager()
        # pluggy calls the last registered first; register in reverse so chains run in --plugin order
        for name in reversed(names):
            manager.register(self.plugins[name].cls(), name=name)
        _check_first_results(manager)
        for name in names:
            call_for(manager, "gancore_configure", name, config=config, options=config.plugins[name])
        return Run(config, manager, [self.plugins[name] for name in names])

    def _check_compatible(self, names: list[str]) -> None:
        for name in names:
            for other in self.plugins[name].incompatible_with:
                if other in names:
                    raise GancoreError(f"plugins {name} and {other} cannot be enabled together ({name} declares it)")


def _check_first_results(manager: pluggy.PluginManager) -> None:
    for hook in hookspecs.FIRST_RESULT_HOOKS:
        claimants = [impl.plugin_name for impl in getattr(manager.hook, hook).get_hookimpls()]
        if len(claimants) > 1:
            raise GancoreError(
                f"plugins {claimants[-1]} and {claimants[-2]} both implement {hook}, where only one may answer; enable one of them"
            )


@dataclass
class Run:
    """A resolved run: configuration, the plugin manager of the enabled plugins, and their info."""

    config: RunConfig
    manager: pluggy.PluginManager
    plugins: list[PluginInfo]

    @property
    def hook(self) -> Any:
        return self.manager.hook

    def plugin_states(self, trainer: Any) -> dict[str, dict]:
        states = {}
        for info in self.plugins:
            state = call_for(self.manager, "gancore_state_dict", info.name, trainer=trainer)
            if state is not None:
                states[info.name] = state
        return states

    def load_plugin_states(self, trainer: Any, states: dict[str, dict]) -> None:
        for info in self.plugins:
            if info.name in states:
                call_for(self.manager, "gancore_load_state_dict", info.name, trainer=trainer, state=states[info.name])

    @contextmanager
    def reporting_plugin_faults(self) -> Iterator[None]:
        """Turn an exception raised inside a plugin's code into a one-line error naming it.

        The plugin is found by the source file of the outermost traceback frame that belongs
        to an enabled plugin's module; that frame's function is reported as the hook.
        """
        try:
            yield
        except GancoreError:
            raise
        except Exception as error:
            files = {inspect.getsourcefile(info.cls): info for info in self.plugins}
            trace = error.__traceback__
            while trace is not None:
                info = files.get(trace.tb_frame.f_code.co_filename)
                if info is not None:
                    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
                    raise GancoreError(
                        f"plugin {info.name} ({info.package} {info.version}) failed in {trace.tb_frame.f_code.co_name}: "
                        f"{type(error).__name__}{': ' + detail if detail else ''}"
                    ) from error
                trace = trace.tb_next
            raise
