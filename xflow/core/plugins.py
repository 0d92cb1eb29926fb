"""Plugin discovery over the ``xflow`` entry-point group, lookup by name, and option checking."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from xflow.core import hookspecs
from xflow.core.errors import XflowError
from xflow.core.interfaces import KINDS, Plugin
from xflow.core.redact import remember_options

log = logging.getLogger("xflow")

ENTRY_POINT_GROUP = "xflow"
HOOK_BY_KIND = {
    "transport": "xflow_transports",
    "provider": "xflow_function_providers",
    "tracker": "xflow_tracker_stores",
}


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
        order = list(KINDS)
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
    base = KINDS[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise XflowError(f"{dist_name} returned {cls!r} as a {kind}, which is not a subclass of {base.__name__}")
    if not getattr(cls, "name", None):
        raise XflowError(f"{kind} class {cls.__qualname__} from {dist_name} has no 'name'")


def env_options(plugin_name: str, keys: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``XFLOW_<PLUGIN>_<KEY>`` variables for the keys a plugin declares."""
    environ = os.environ if environ is None else environ
    prefix = "XFLOW_" + plugin_name.upper().replace("-", "_") + "_"
    found = {}
    for key in keys:
        value = environ.get(prefix + key.upper())
        if value is not None:
            found[key] = value
    return found


def check_options(info: PluginInfo, options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Reject keys the plugin does not declare, with the list of keys it accepts; register secret values for masking."""
    assert info.cls is not None
    remember_options(options)
    accepted = dict(info.cls.options)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        listed = ", ".join(sorted(accepted)) or "none"
        raise XflowError(
            f"{info.kind} {info.name!r} ({info.distribution}) does not accept option {unknown[0]!r} from {where}; "
            f"it accepts: {listed}"
        )
    return dict(options)
