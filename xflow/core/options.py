"""Typed plugin options: a plugin declares each option once (:class:`Option`); values are converted and checked here.

A plugin class lists its options::

    options = (
        Option("partitions", int, 4, "partitions per stream", minimum=1),
        Option("lease_seconds", "duration", 10.0, "how long a lease lasts", minimum=0.5),
        Option("password", str, None, "the server's password", secret=True),
    )

Types: ``str``, ``int``, ``float``, ``bool``, ``"duration"`` (seconds, as a float: ``2.5``, ``"500ms"``, ``"2m"``),
``"choice"`` (one of ``choices``; ``str`` with ``choices`` means the same), ``list`` (of text: a YAML list, a JSON
array or comma-separated text), ``dict`` (a mapping: a YAML mapping or a JSON object as text), ``"json"`` (an array
or object: YAML data, or JSON text) and ``"any"`` (the value as given). Values arrive as YAML data from the workflow
file and as text from ``--option`` and the environment;
:func:`resolve_options` converts them all the same way and names the place a bad one came from.

The environment variable of an option is ``XFLOW_<PLUGIN>_<KEY>`` (:func:`env_name`): the plugin's name and the
option's key upper-cased, every character other than ``A``-``Z`` and ``0``-``9`` replaced by ``_``. A variable
``XFLOW_<KIND>_<KEY>`` (``XFLOW_TRANSPORT_PARTITIONS``) applies to whichever plugin of that kind is chosen, below the
plugin's own.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import warnings
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xflow.core.errors import XflowError
from xflow.core.redact import is_secret_name, remember, remember_in_text

#: the option types, by the name ``xflow plugins --options`` shows
KINDS_BY_TYPE: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "dict"}
TYPE_NAMES = ("str", "int", "float", "bool", "duration", "choice", "list", "dict", "json", "any")
#: seconds per unit of a duration written as text
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
#: the longest value quoted in an error message
SHOWN_CHARACTERS = 60

_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_WHOLE = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*")
_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[a-z]+)?")
_SCALARS = (str, int, float, bool)


class OptionValueError(ValueError):
    """A value an option cannot take; the text says why (``is not a whole number``)."""


@dataclass(frozen=True)
class Option:
    """One option a plugin accepts: its key, type, default, one line of help, and whether it holds a secret.

    ``minimum`` / ``maximum`` bound ``int``, ``float`` and ``duration`` values; ``choices`` lists what a ``choice``
    takes (matched without regard to case). The default is converted like any value, so ``Option("t", "duration",
    "2m")`` has the default ``120.0``; a default that the type refuses is a mistake in the plugin (ValueError).
    A ``secret`` option's value is masked in every message, never written to the setup record and never printed.
    """

    name: str
    type: Any = str
    default: Any = None
    description: str = ""
    secret: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    #: the type's name (``int``, ``duration``...), set from ``type``
    kind: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _OPTION_NAME.fullmatch(self.name):
            raise ValueError(f"option name {self.name!r} is not a name (letters, digits, '_', '.', '-')")
        kind = self.type if isinstance(self.type, str) else KINDS_BY_TYPE.get(self.type)
        if kind == "str" and self.choices:
            kind = "choice"
        if kind not in TYPE_NAMES:
            raise ValueError(f"option {self.name!r}: type {self.type!r} is not one of str, int, float, bool, list, dict, "
                             "'duration', 'choice', 'json', 'any'")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "choices", tuple(str(c) for c in self.choices))
        if kind == "choice" and not self.choices:
            raise ValueError(f"option {self.name!r}: a choice needs choices=(...)")
        if self.default is not None:
            try:
                object.__setattr__(self, "default", self.convert(self.default))
            except OptionValueError as exc:
                raise ValueError(f"option {self.name!r}: the default {self.default!r} {exc}") from None

    # -- conversion ---------------------------------------------------------------------------
    def convert(self, value: Any) -> Any:
        """``value`` (a YAML scalar, text, or an already converted value) as this option's type, within its bounds.

        Raises :class:`OptionValueError` saying what is wrong. Converting a converted value gives it back unchanged.
        """
        converted = _CONVERTERS[self.kind](self, value)
        if self.kind in ("int", "float", "duration"):
            if self.minimum is not None and converted < self.minimum:
                raise OptionValueError(f"must be at least {self.minimum:g}")
            if self.maximum is not None and converted > self.maximum:
                raise OptionValueError(f"must be at most {self.maximum:g}")
        return converted

    # -- description --------------------------------------------------------------------------
    @property
    def type_label(self) -> str:
        """The type as ``xflow plugins --options`` shows it: ``int >= 1``, ``choice: process, thread``."""
        if self.kind == "choice":
            return "choice: " + ", ".join(self.choices)
        bounds = [f">= {self.minimum:g}"] if self.minimum is not None else []
        bounds += [f"<= {self.maximum:g}"] if self.maximum is not None else []
        return " ".join([self.kind, *bounds])

    def shown_default(self) -> Any:
        """The default as listed: masked for a secret option."""
        if self.secret and self.default is not None:
            return "***"
        return self.default

    def describe(self, plugin: str | None = None) -> dict[str, Any]:
        """The declaration as JSON-able data (with its environment variable when the plugin's name is given)."""
        described: dict[str, Any] = {
            "name": self.name, "type": self.kind, "default": self.shown_default(), "description": self.description,
            "secret": self.secret, "minimum": self.minimum, "maximum": self.maximum, "choices": list(self.choices),
        }
        if plugin is not None:
            described["env"] = env_name(plugin, self.name)
        return described


# -- converters (each raises OptionValueError with the reason) ---------------------------------
def _reject_collection(value: Any, wanted: str) -> None:
    if isinstance(value, Mapping):
        raise OptionValueError(f"is a mapping, not {wanted}")
    if isinstance(value, list | tuple | set):
        raise OptionValueError(f"is a list, not {wanted}")
    if isinstance(value, datetime.date):
        raise OptionValueError(f"is a date, not {wanted}")
    if not isinstance(value, _SCALARS):
        raise OptionValueError(f"is of type {type(value).__name__}, not {wanted}")


def _to_str(option: Option, value: Any) -> str:
    if isinstance(value, datetime.date):  # YAML reads 2026-01-31 as a date
        return value.isoformat()
    _reject_collection(value, "text")
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _to_int(option: Option, value: Any) -> int:
    _reject_collection(value, "a whole number")
    if isinstance(value, bool):
        raise OptionValueError("is not a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise OptionValueError("is not a whole number")
    text = value.strip()
    if not _WHOLE.fullmatch(text):
        raise OptionValueError("is not a whole number")
    try:
        return int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        raise OptionValueError(f"is not a whole number xflow takes ({len(text)} digits)") from None


def _finite(value: Any, wanted: str) -> float:
    _reject_collection(value, wanted)
    if isinstance(value, bool):
        raise OptionValueError(f"is not {wanted}")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise OptionValueError(f"is not {wanted}") from None
    else:
        number = float(value)
    if not math.isfinite(number):
        raise OptionValueError(f"is not {wanted} (not finite)")
    return number


def _to_float(option: Option, value: Any) -> float:
    return _finite(value, "a number")


def _to_duration(option: Option, value: Any) -> float:
    wanted = "a number of seconds or a duration such as 500ms, 10s, 2m, 1h"
    if isinstance(value, str):
        text = value.strip().lower()
        match = _DURATION.fullmatch(text)
        if match and match.group("unit") is not None:
            unit = DURATION_UNITS.get(match.group("unit"))
            if unit is None:
                raise OptionValueError(f"is not {wanted}: unknown unit {match.group('unit')!r}")
            seconds = float(match.group("number")) * unit
            if not math.isfinite(seconds):
                raise OptionValueError(f"is not {wanted} (not finite)")
            return seconds
    seconds = _finite(value, wanted)
    if seconds < 0:
        raise OptionValueError(f"is not {wanted}: it is negative")
    return seconds


def _to_bool(option: Option, value: Any) -> bool:
    _reject_collection(value, "true or false")
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise OptionValueError("is not true or false (true/false, yes/no, on/off, 1/0)")


def _to_choice(option: Option, value: Any) -> str:
    _reject_collection(value, "text")
    text = _to_str(option, value).strip().lower()
    for choice in option.choices:
        if choice.lower() == text:
            return choice
    raise OptionValueError(f"names an unknown {option.name}; choose one of: {', '.join(option.choices)}")


def _to_list(option: Option, value: Any) -> list[str]:
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise OptionValueError(f"is not a JSON list: {exc}") from None
    if isinstance(value, list | tuple):
        items = list(value)
        for item in items:
            if not isinstance(item, _SCALARS):
                raise OptionValueError(f"holds a {type(item).__name__}; list only text or numbers")
        return [_to_str(option, item) for item in items]
    _reject_collection(value, "a list")
    text = _to_str(option, value)
    return [part.strip() for part in text.split(",") if part.strip()]


def _to_dict(option: Option, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise OptionValueError(f"is not JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise OptionValueError("is not a mapping (a JSON object such as {\"key\": 1})")
    if not all(isinstance(key, str) for key in value):
        raise OptionValueError("has keys that are not text")
    return dict(value)


def _to_json(option: Option, value: Any) -> list[Any] | dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise OptionValueError(f"is not JSON: {exc}") from None
    if not isinstance(value, list | tuple | Mapping):
        raise OptionValueError("is not a JSON array or object")
    try:  # YAML data: only what JSON holds
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise OptionValueError(f"is not JSON data: {exc}") from None
    return dict(value) if isinstance(value, Mapping) else list(value)


def _as_given(option: Option, value: Any) -> Any:
    return value


_CONVERTERS = {"str": _to_str, "int": _to_int, "float": _to_float, "bool": _to_bool, "duration": _to_duration,
               "choice": _to_choice, "list": _to_list, "dict": _to_dict, "json": _to_json, "any": _as_given}


# -- declarations ------------------------------------------------------------------------------
_declared: weakref.WeakKeyDictionary[type, tuple[Any, dict[str, Option]]] = weakref.WeakKeyDictionary()


def declared_options(cls: type) -> dict[str, Option]:
    """The options a plugin class declares, by key.

    The older form, ``options = {"key": "description"}``, still works: each key becomes an option of type ``any``
    (the value as given), secret when its name says so (:func:`~xflow.core.redact.is_secret_name`), and a
    DeprecationWarning names the class. A declaration that is neither is a TypeError.
    """
    raw = getattr(cls, "options", ())
    cached = _declared.get(cls)
    if cached is not None and cached[0] is raw:
        return cached[1]
    where = f"{cls.__module__}.{cls.__qualname__}"
    declared: dict[str, Option] = {}
    if isinstance(raw, Mapping):
        warnings.warn(f"{where}.options is a mapping of descriptions, which is deprecated: declare typed options, "
                      "options = (Option('key', int, 4, 'what it is'), ...) from xflow.core.options",
                      DeprecationWarning, stacklevel=2)
        for key, description in raw.items():
            declared[str(key)] = Option(str(key), "any", None, str(description), secret=is_secret_name(str(key)))
    else:
        if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
            raise TypeError(f"{where}.options must be a tuple of Option, not {type(raw).__name__}")
        for option in raw:
            if not isinstance(option, Option):
                raise TypeError(f"{where}.options holds {option!r}, which is not an Option")
            if option.name in declared:
                raise TypeError(f"{where}.options declares {option.name!r} twice")
            declared[option.name] = option
    _declared[cls] = (raw, declared)
    return declared


def secret_keys(declared: Mapping[str, Option]) -> set[str]:
    return {key for key, option in declared.items() if option.secret}


# -- the environment -----------------------------------------------------------------------------
def _mangle(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", text.upper())


def env_name(plugin: str, key: str) -> str:
    """The environment variable of option ``key`` of plugin ``plugin``: ``XFLOW_<PLUGIN>_<KEY>``, upper-cased, each
    character other than A-Z and 0-9 replaced by ``_`` (``my-queue`` / ``api.key`` -> ``XFLOW_MY_QUEUE_API_KEY``)."""
    return f"XFLOW_{_mangle(plugin)}_{_mangle(key)}"


def env_values(plugin: str, kind: str | None, keys: Iterable[str],
               environ: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Values of ``keys`` found in the environment, each with its variable's name: ``XFLOW_<KIND>_<KEY>`` first, then
    ``XFLOW_<PLUGIN>_<KEY>`` over it."""
    environ = os.environ if environ is None else environ
    found: dict[str, tuple[str, str]] = {}
    for key in keys:
        names = ([env_name(kind, key)] if kind else []) + [env_name(plugin, key)]
        for name in names:
            value = environ.get(name)
            if value is not None:
                found[key] = (value, name)
    return found


# -- resolution ----------------------------------------------------------------------------------
def shown(value: Any) -> str:
    """A value as quoted in a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS - 3] + "..."


def resolve_options(owner: str, declared: Mapping[str, Option], given: Mapping[str, tuple[Any, str]],
                    unknown: str = "refuse") -> dict[str, Any]:
    """Convert the values given for a plugin (key -> (value, where it came from)) to their declared types.

    ``owner`` names the plugin in messages (``transport 'local' (xflow)``). An empty or null value counts as unset
    and is left out (the plugin then gets the default). Secret values are registered for masking before anything is
    checked. A key the plugin does not declare is an XflowError listing the keys it accepts (``unknown="keep"``
    passes such keys through unconverted). A bad value is a one-line XflowError naming the plugin, the option, the
    place the value came from, and (unless secret) the value.
    """
    for key, (value, _) in given.items():
        option = declared.get(key)
        if (option.secret if option is not None else is_secret_name(str(key))):
            remember(value)
        if isinstance(value, str):
            remember_in_text(value)
    if unknown == "refuse":
        strangers = sorted(set(given) - set(declared))
        if strangers:
            listed = ", ".join(sorted(declared)) or "none"
            raise XflowError(f"{owner} does not accept option {strangers[0]!r} from {given[strangers[0]][1]}; "
                             f"it accepts: {listed}", "'xflow plugins --options' lists every plugin's options")
    converted: dict[str, Any] = {}
    for key, (value, where) in given.items():
        option = declared.get(key)
        if option is None:
            converted[key] = value
            continue
        if value is None or value == "":
            continue
        try:
            converted[key] = option.convert(value)
        except OptionValueError as exc:
            quoted = f"{key} (value not shown: it is secret)" if option.secret else f"{key}={shown(value)}"
            default = "" if option.default is None else f", default {'***' if option.secret else shown(option.default)}"
            raise XflowError(f"{owner}: option {quoted} from {where} {exc}",
                             f"{key}: {option.description} ({option.type_label}{default})") from None
    return converted
