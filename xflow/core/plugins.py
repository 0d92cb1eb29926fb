"""Plugin discovery over the ``xflow`` entry-point group, lookup by name, and the options each plugin declares."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from xflow.core import hookspecs
from xflow.core.errors import XflowError
from xflow.core.interfaces import KINDS, Plugin
from xflow.core.options import Option, declared_options, resolve_options

log = logging.getLogger("xflow")

ENTRY_POINT_GROUP = "xflow"
HOOK_BY_KIND = {
    "transport": "xflow_transports",
    "provider": "xflow_function_providers",
    "tracker": "xflow_tracker_stores",
    "log": "xflow_log_destinations",
}


def _kinds() -> dict[str, type[Plugin]]:
    """Each kind's base class: the three of the interfaces, and log destinations (defined with the log router)."""
    from xflow.logs.destination import KIND, LogDestination

    return {**KINDS, KIND: LogDestination}


@dataclass(frozen=True)
class PluginInfo:
    """One installed backend: its kind, name, class, and the distribution that ships it."""

    kind: str
    name: str
    cls: type[Plugin] | None
    distribution: str
    version: str
    description: str = ""
    error: str | None = None

    @property
    def broken(self) -> bool:
        return self.error is not None

    @property
    def label(self) -> str:
        """How messages name it: ``transport 'local' (xflow)``."""
        return f"{self.kind} {self.name!r} ({self.distribution})"

    def declared(self) -> dict[str, Option]:
        """Its options by key; a declaration that is not one is an XflowError naming the distribution."""
        if self.cls is None:
            return {}
        try:
            return declared_options(self.cls)
        except (TypeError, ValueError) as exc:
            raise XflowError(f"{self.label} declares its options wrongly: {exc}",
                             f"this is a problem in {self.distribution}; report it there") from None

    def options_as_dicts(self) -> list[dict[str, Any]]:
        """Its options for ``xflow plugins --options``: type, default, description, secret, environment variable."""
        return [option.describe(self.name) for option in self.declared().values()]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "description": self.description,
            "status": "broken" if self.broken else "ok",
            "error": self.error,
        }


class PluginRegistry:
    """Loads plugins once and answers ``get(kind, name)``.

    ``load_entry_points=False`` gives an empty registry for embedding and tests; modules or
    objects with hook implementations are then added with :meth:`register`.
    """

    def __init__(self, load_entry_points: bool = True) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self._origin: dict[int, tuple[str, str]] = {}
        self.broken: list[PluginInfo] = []
        self._infos: dict[tuple[str, str], PluginInfo] | None = None
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = entry_point.dist
            dist_name = dist.metadata["Name"] if dist is not None else entry_point.value
            version = dist.version if dist is not None else "?"
            try:
                module = entry_point.load()
                self.register(module, name=f"{dist_name}:{entry_point.name}", distribution=(dist_name, version))
            except Exception as exc:  # a broken third-party plugin must not break the rest
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("plugin %r from distribution %s failed to load: %s", entry_point.name, dist_name, reason)
                self.broken.append(PluginInfo("?", entry_point.name, None, dist_name, version, error=reason))

    def register(self, plugin: ModuleType | object, name: str | None = None,
                 distribution: tuple[str, str] = ("(registered in code)", "")) -> None:
        """Register a module or object that implements hooks from :mod:`xflow.core.hookspecs`."""
        if self.manager.is_registered(plugin):
            return
        self.manager.register(plugin, name=name)
        self.manager.check_pending()
        self._origin[id(plugin)] = distribution
        self._infos = None

    def _collect(self) -> dict[tuple[str, str], PluginInfo]:
        if self._infos is not None:
            return self._infos
        infos: dict[tuple[str, str], PluginInfo] = {}
        for kind, hook_name in HOOK_BY_KIND.items():
            hook = getattr(self.manager.hook, hook_name)
            for impl in hook.get_hookimpls():
                dist_name, version = self._origin.get(id(impl.plugin), ("?", "?"))
                try:
                    classes = impl.function() or []
                except Exception as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    log.warning("plugin from distribution %s failed in %s: %s", dist_name, hook_name, reason)
                    self.broken.append(PluginInfo(kind, impl.plugin_name, None, dist_name, version, error=reason))
                    continue
                for cls in classes:
                    _check_class(kind, cls, dist_name)
                    previous = infos.get((kind, cls.name))
                    if previous is not None and previous.cls is not cls:
                        raise XflowError(
                            f"two {kind}s are named {cls.name!r}: from {previous.distribution} and {dist_name}",
                            "uninstall one of the two distributions",
                        )
                    infos[(kind, cls.name)] = PluginInfo(
                        kind, cls.name, cls, dist_name, version, (cls.description or "").strip()
                    )
        self._infos = infos
        return infos

    def infos(self) -> list[PluginInfo]:
        """Every installed backend, then the broken plugins."""
        order = list(_kinds())
        found = sorted(self._collect().values(), key=lambda p: (order.index(p.kind), p.name))
        return found + self.broken

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, name) in self._collect() if k == kind)

    def get(self, kind: str, name: str) -> PluginInfo:
        """The backend of this kind and name, or an error that lists what is installed."""
        info = self._collect().get((kind, name))
        if info is None:
            installed = ", ".join(self.names(kind)) or "none"
            broken = [b for b in self.broken if b.name == name]
            hint = (
                f"the plugin {name!r} from {broken[0].distribution} is installed but broken: {broken[0].error}"
                if broken
                else f"install a distribution named xflow-{kind}-{name}, or pick an installed one"
            )
            raise XflowError(f"unknown {kind} {name!r}; installed {kind}s: {installed}", hint)
        return info


def _check_class(kind: str, cls: Any, dist_name: str) -> None:
    base = _kinds()[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise XflowError(f"{dist_name} returned {cls!r} as a {kind}, which is not a subclass of {base.__name__}")
    if not getattr(cls, "name", None):
        raise XflowError(f"{kind} class {cls.__qualname__} from {dist_name} has no 'name'")


def check_options(info: PluginInfo, options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``options`` converted to the types ``info``'s plugin declares; an XflowError for a key it does not declare
    (listing those it accepts) or a value its type refuses (naming ``where`` it came from). Secret values are
    registered for masking."""
    return resolve_options(info.label, info.declared(), {key: (value, where) for key, value in options.items()})

