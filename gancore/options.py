"""Typed options: declared by the core and by plugins, set from TOML or `--set NAME.OPTION=VALUE`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Iterable

from gancore.errors import GancoreError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ValueError("expected true or false")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (int, str)):
        return int(value)
    raise ValueError("expected an integer")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    return number


def _to_floats(value: Any) -> tuple[float, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError("expected comma-separated numbers")
    return tuple(_to_float(item) for item in items)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


_CONVERTERS: dict[type | str, Callable[[Any], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
    "floats": _to_floats,
}
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", "floats": "floats"}


@dataclass(frozen=True)
class Option:
    """One declared option.

    :param name: option name, lower case with underscores (``std``, ``anneal_steps``).
    :param type: ``bool``, ``int``, ``float``, ``str`` or ``"floats"`` (comma-separated tuple).
    :param default: value used when nobody sets it; ``None`` means "unset" (the plugin derives it).
    :param help: one sentence for ``gancore plugins`` and the docs.
    :param choices: allowed values, if the option is an enumeration.
    :param min: smallest allowed value for numbers (inclusive; each number of ``"floats"``).
    :param max: largest allowed value for numbers (inclusive; each number of ``"floats"``).
    :param check: ``check(value) -> str | None``: a further rule on the converted value; the
        string it returns (e.g. ``"expected two numbers in [0, 1)"``) is the error.
    """

    name: str
    type: type | str
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    check: Callable[[Any], str | None] | None = None

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES[self.type]

    def convert(self, value: Any, owner: str) -> Any:
        """Return ``value`` converted to this option's type, or raise a one-line GancoreError."""
        where = f"{owner}.{self.name}"
        try:
            converted = _CONVERTERS[self.type](value)
        except (TypeError, ValueError) as exc:
            raise GancoreError(f"{where}={value!r}: {exc if str(exc).startswith('expected') else 'expected ' + self.type_name}") from None
        if self.choices is not None and converted not in self.choices:
            raise GancoreError(f"{where}={value!r}: choose one of {', '.join(map(str, self.choices))}")
        numbers = converted if isinstance(converted, tuple) else () if converted is None or isinstance(converted, (str, bool)) else (converted,)
        if self.min is not None and any(number < self.min for number in numbers):
            raise GancoreError(f"{where}={value!r}: must be at least {self.min:g}")
        if self.max is not None and any(number > self.max for number in numbers):
            raise GancoreError(f"{where}={value!r}: must be at most {self.max:g}")
        problem = self.check(converted) if self.check is not None and converted is not None else None
        if problem:
            raise GancoreError(f"{where}={value!r}: {problem}")
        return converted


@dataclass
class OptionSet:
    """The options of one owner (``train`` or a plugin), handed to ``gancore_add_options``."""

    owner: str
    options: dict[str, Option] = field(default_factory=dict)

    def add(self, name: str, type: type | str, default: Any, help: str, **kwargs: Any) -> None:
        """Declare an option; see :class:`Option` for the arguments."""
        if name in self.options:
            raise GancoreError(f"{self.owner} declares option {name!r} twice")
        self.options[name] = Option(name, type, default, help, **kwargs)

    def resolve(self, values: dict[str, Any]) -> SimpleNamespace:
        """Return a namespace of every option: defaults overridden by ``values`` (converted)."""
        unknown = sorted(set(values) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise GancoreError(f"unknown option {self.owner}.{unknown[0]} (options of {self.owner}: {known})")
        resolved = {name: option.default for name, option in self.options.items()}
        for name, value in values.items():
            resolved[name] = self.options[name].convert(value, self.owner)
        return SimpleNamespace(**resolved)

    def __iter__(self) -> Iterable[Option]:
        return iter(self.options.values())


def parse_assignments(assignments: Iterable[str]) -> dict[str, dict[str, str]]:
    """Parse ``--set NAME.OPTION=VALUE`` strings into ``{NAME: {OPTION: VALUE}}``."""
    parsed: dict[str, dict[str, str]] = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        owner, dot, name = key.strip().rpartition(".")
        if not sep or not dot or not owner or not name:
            raise GancoreError(f"--set {text!r}: write NAME.OPTION=VALUE, e.g. --set train.lr_d=2e-4")
        parsed.setdefault(owner, {})[name] = value.strip()
    return parsed
