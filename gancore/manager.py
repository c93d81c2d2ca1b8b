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
from gancore.checkpoint import unstorable_part
from gancore.errors import GancoreError, one_line
from gancore.options import OptionSet

ENTRY_POINT_GROUP = "gancore"
BUILTIN_PACKAGE = "gancore"
INLINE_PACKAGE = "inline"  # how messages and checkpoints name the distribution of gancore.fit's plugin objects


def _dist_name(point: Any) -> str:
    return point.dist.name if point.dist is not None else "?"


@dataclass
class PluginInfo:
    """An installed plugin: its name, class, the distribution that provides it, and its options."""

    name: str
    cls: type
    package: str
    version: str
    options: OptionSet
    instance: Any = None  # a plugin object given to gancore.fit: runs use it, not a fresh one

    def new_instance(self) -> Any:
        """The object a run registers: a fresh instance of ``cls``, or the plugin object given."""
        return self.cls() if self.instance is None else self.instance

    @property
    def label(self) -> str:
        """``NAME (DISTRIBUTION VERSION)``: how messages name a plugin."""
        return _label(self.name, self.package, self.version)

    @property
    def summary(self) -> str:
        return (self.cls.__doc__ or "").strip().splitlines()[0] if self.cls.__doc__ else ""

    @property
    def incompatible_with(self) -> tuple[str, ...]:
        return tuple(getattr(self.cls, "incompatible_with", ()))


def _label(name: str, package: str, version: str) -> str:
    return f"{name} ({package} {version})" if version else f"{name} ({package})"


def plugin_fault(label: str, hook: str, error: BaseException) -> GancoreError:
    """The one-line error for an exception raised inside a plugin's code."""
    return GancoreError(f"plugin {label} failed in {hook}: {one_line(error)}")


def new_plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    return manager


def call_for(manager: pluggy.PluginManager, hook: str, plugin: str, **kwargs: Any) -> Any:
    """Call ``hook`` on one registered plugin only; return its result (None if not implemented)."""
    others = [p for name, p in manager.list_name_plugin() if name != plugin]
    results = manager.subset_hook_caller(hook, remove_plugins=others)(**kwargs)
    return results[0] if results else None


def call_plugin(manager: pluggy.PluginManager, info: PluginInfo, hook: str, **kwargs: Any) -> Any:
    """:func:`call_for`, with an exception raised by the plugin turned into :func:`plugin_fault`."""
    try:
        return call_for(manager, hook, info.name, **kwargs)
    except GancoreError:
        raise
    except Exception as error:
        raise plugin_fault(info.label, hook, error) from error


class Catalog:
    """Every installed plugin, by name.

    A plugin that cannot be loaded (import error, a hook pluggy rejects, an exception in its
    class or in ``gancore_add_options``, a name a built-in already has) is not in ``plugins``
    but in ``broken``, with why: the other plugins and every command keep working, and only
    asking for that plugin is an error.
    """

    def __init__(self) -> None:
        self.plugins: dict[str, PluginInfo] = {}
        self.broken: dict[str, str] = {}  # name -> why it cannot be used
        self.warnings: list[str] = []  # one line per skipped plugin, for the command line to show
        self.manager = new_plugin_manager()

    @classmethod
    def installed(cls) -> "Catalog":
        """The catalog of every plugin declared in the ``gancore`` entry-point group.

        Where two distributions declare one name, gancore's own plugin keeps it (else the
        first distribution by name); the other is skipped with a warning naming both.
        """
        catalog = cls()
        points = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: (p.name, _dist_name(p) != BUILTIN_PACKAGE, _dist_name(p)))
        for point in points:
            package, version = _dist_name(point), (point.dist.version if point.dist else "?")
            if point.name in catalog.plugins:
                kept = catalog.plugins[point.name].package
                catalog.warnings.append(f"plugin {point.name} of {package} {version} is skipped: {kept} provides a plugin of that name already")
                continue
            try:
                plugin_cls = point.load()
            except Exception as exc:  # a broken third-party package must not break gancore
                catalog.skip(point.name, f"plugin {point.name} ({package} {version}) failed to import: {one_line(exc)}")
                continue
            try:
                catalog.add(point.name, plugin_cls, package, version)
            except GancoreError as error:
                catalog.skip(point.name, str(error))
        return catalog

    def skip(self, name: str, reason: str) -> None:
        """Record that plugin ``name`` cannot be used, and why; drop it if it was added."""
        if self.plugins.pop(name, None) is not None and self.manager.has_plugin(name):
            self.manager.unregister(name=name)
        self.broken[name] = reason
        self.warnings.append(f"{reason}; it is skipped")

    def add(self, name: str, plugin_cls: type, package: str, version: str) -> None:
        """Register ``plugin_cls`` under ``name`` (what the entry-point loader does; tests use it too).

        A plugin that pluggy rejects (a misspelled hook, an argument the hook does not have) or
        that raises while being created or declaring its options is a one-line GancoreError.
        """
        label = _label(name, package, version)
        self._check_free(name, package)
        try:
            instance = plugin_cls()
        except Exception as error:
            raise plugin_fault(label, "__init__", error) from error
        self._register(name, plugin_cls, instance, package, version, given=False)

    def add_object(self, name: str, plugin: Any) -> None:
        """Register a plugin object (not a class, not installed: gancore.fit's inline plugins)
        under ``name``; runs use this very object. One with no gancore hook is refused."""
        self._check_free(name, INLINE_PACKAGE)
        self._register(name, type(plugin), plugin, INLINE_PACKAGE, "", given=True)
        if not self.manager.get_hookcallers(plugin):
            self.manager.unregister(name=name)
            del self.plugins[name]
            raise GancoreError(f"plugin object {name} ({type(plugin).__name__}) implements no gancore hook; mark its methods with @gancore.hookimpl")

    def _check_free(self, name: str, package: str) -> None:
        if name in self.plugins or name == CORE:
            raise GancoreError(f"two plugins are named {name!r} ({self.plugins[name].package if name in self.plugins else 'the core'} and {package})")

    def _register(self, name: str, plugin_cls: type, instance: Any, package: str, version: str, given: bool) -> None:
        label = _label(name, package, version)
        try:
            self.manager.register(instance, name=name)
            self.manager.check_pending()  # a misspelled hook name fails loudly
        except (pluggy.PluginValidationError, ValueError) as error:
            if self.manager.has_plugin(name):
                self.manager.unregister(name=name)
            raise GancoreError(f"plugin {label} is invalid: {one_line(str(error))}") from None
        info = PluginInfo(name, plugin_cls, package, version, OptionSet(name), instance if given else None)
        try:
            call_plugin(self.manager, info, "gancore_add_options", options=info.options)
        except GancoreError:
            self.manager.unregister(name=name)
            raise
        self.plugins[name] = info

    def register_commands(self, cli: Any) -> None:
        """Let every plugin add its click commands; a plugin that fails doing so is skipped."""
        for info in list(self.plugins.values()):
            try:
                call_plugin(self.manager, info, "gancore_register_commands", cli=cli)
            except GancoreError as error:
                self.skip(info.name, str(error))

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
                    raise GancoreError(f"{self.broken[name]}; fix or uninstall it to use --plugin {name}")
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
            manager.register(self.plugins[name].new_instance(), name=name)
        _check_first_results(manager)
        for name in names:
            call_plugin(manager, self.plugins[name], "gancore_configure", name=name, config=config, options=config.plugins[name])
        train = config.train
        if train.update_order == "simultaneous" and train.n_critic != 1:
            by = f" (suggested by {config.suggested_by['n_critic']})" if "n_critic" in config.suggested_by else ""
            raise GancoreError(
                f"train.update_order = simultaneous makes one D update per step, but train.n_critic = {train.n_critic}{by}; "
                "set train.n_critic = 1 or train.update_order = alternating"
            )
        return Run(config, manager, [self.plugins[name] for name in names])

    def _check_compatible(self, names: list[str]) -> None:
        for name in names:
            for other in self.plugins[name].incompatible_with:
                if other in names:
                    raise GancoreError(f"plugins {name} and {other} cannot be enabled together ({name} declares it)")


def _source_file(cls: type) -> str | None:
    """The file ``cls`` is defined in, as tracebacks name it (also for a class of a notebook cell)."""
    try:
        return inspect.getsourcefile(cls)
    except (TypeError, OSError):  # defined in __main__ without a file (a notebook, an interactive session)
        code = next((f.__code__ for f in vars(cls).values() if hasattr(f, "__code__")), None)
        return code.co_filename if code else None


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
        """Every plugin's state; one a checkpoint could not load back (``weights_only``) is refused now."""
        states = {}
        for info in self.plugins:
            state = call_plugin(self.manager, info, "gancore_state_dict", trainer=trainer)
            if state is not None:
                problem = unstorable_part(state)
                if problem:
                    raise GancoreError(
                        f"plugin {info.label} returned a state that a checkpoint cannot hold ({problem}); "
                        "gancore_state_dict must return tensors, numbers, strings, lists, tuples and dicts"
                    )
                states[info.name] = state
        return states

    def load_plugin_states(self, trainer: Any, states: dict[str, dict]) -> None:
        for info in self.plugins:
            if info.name in states:
                call_plugin(self.manager, info, "gancore_load_state_dict", trainer=trainer, state=states[info.name])

    def identity(self) -> dict[str, dict[str, str]]:
        """The enabled plugins and the distributions that provide them, in enable order."""
        return {info.name: {"package": info.package, "version": info.version} for info in self.plugins}

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
            files = {_source_file(info.cls): info for info in self.plugins}
            trace = error.__traceback__
            while trace is not None:
                info = files.get(trace.tb_frame.f_code.co_filename)
                if info is not None:
                    raise plugin_fault(info.label, trace.tb_frame.f_code.co_name, error) from error
                trace = trace.tb_next
            raise
