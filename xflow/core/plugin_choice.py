"""Choosing a workflow's transport, provider and tracker, reading their options, and making them once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xflow.core.errors import XflowError
from xflow.core.interfaces import Plugin, PluginContext
from xflow.core.model import Workflow
from xflow.core.options import Option, declared_options, env_values, resolve_options
from xflow.core.plugins import PluginInfo, PluginRegistry
from xflow.core.state_files import damaged_error, damaged_file

#: defaults of ``xflow run`` / ``worker`` (embedded) and of ``xflow setup`` (AWS)
LOCAL_DEFAULTS = {"transport": "local", "provider": "local", "tracker": "sqlite"}
AWS_DEFAULTS = {"transport": "kinesis", "provider": "lambda", "tracker": "cloudwatch"}
KIND_ORDER = ("transport", "provider", "tracker")


@dataclass
class _Choice:
    kind: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    instance: Plugin | None = None
    #: where each of ``options`` came from (the workflow file, the setup record)
    sources: dict[str, str] = field(default_factory=dict)


class PluginChoices:
    """The plugin of each kind a workflow uses: its name, its options and, once made, its instance.

    ``given`` maps a kind to a plugin name or a ready instance (or None); names not given come from ``record``
    (what setup recorded, kept in the file ``record_path``), then the workflow file's blocks, then ``defaults``.
    ``options`` maps a kind (or ``"any"``: the plugin that declares the key) to ``{key: value}``, merged over the
    file's block options, the record's and ``XFLOW_*`` variables; ``options_source`` names them in errors.
    Plugins are made once, by the first thread that needs them.
    """

    def __init__(self, workflow: Workflow, state_dir: Path, given: Mapping[str, str | Plugin | None], *,
                 record: Mapping[str, Any] | None, record_path: Path, options: Mapping[str, Mapping[str, Any]],
                 defaults: Mapping[str, str], registry: PluginRegistry | None, options_source: str) -> None:
        self._lock = threading.RLock()  # plugins are made once, whichever thread needs them first
        self.workflow = workflow
        self.state_dir = state_dir
        self._registry = registry
        self._choices: dict[str, _Choice] = {}
        for kind in KIND_ORDER:
            value = given.get(kind)
            if isinstance(value, Plugin):
                self._choices[kind] = _Choice(kind, value.name, dict(value.context.options), value)
                continue
            recorded = (record or {}).get(kind) or {}
            block = workflow.plugin_choice(kind)
            name = value or recorded.get("name") or block.name or defaults[kind]
            merged: dict[str, Any] = {}
            sources: dict[str, str] = {}
            if block.name in (None, name):
                merged.update(block.options)
                sources.update(dict.fromkeys(block.options, f"the workflow file {workflow.path} ({kind}.options)"))
            if recorded.get("name") == name:
                merged.update(recorded.get("options") or {})
                sources.update(dict.fromkeys(recorded.get("options") or {}, f"the setup record {record_path}"))
            self._choices[kind] = _Choice(kind, name, merged, sources=sources)
        self._explicit_options = {k: dict(v) for k, v in options.items()}
        self._options_source = options_source
        self._routed: dict[str, dict[str, Any]] | None = None

    @property
    def registry(self) -> PluginRegistry:
        if self._registry is None:
            self._registry = PluginRegistry()
        return self._registry

    def names(self) -> dict[str, str]:
        return {kind: choice.name for kind, choice in self._choices.items()}

    def info(self, kind: str) -> PluginInfo:
        return self.registry.get(kind, self._choices[kind].name)

    def options(self, kind: str) -> dict[str, Any]:
        """The chosen plugin's options, each converted to its declared type (an XflowError naming where a bad one
        came from)."""
        choice = self._choices[kind]
        info = self.info(kind)
        declared = info.declared()
        given: dict[str, tuple[Any, str]] = {key: (value, choice.sources.get(key, "the workflow file"))
                                             for key, value in choice.options.items()}
        for key, (value, variable) in env_values(choice.name, kind, declared).items():
            given[key] = (value, f"environment variable {variable}")
        for key, value in self.given_options(kind).items():
            given[key] = (value, self._options_source)
        return resolve_options(info.label, declared, given)

    def declared(self, kind: str) -> Mapping[str, Option]:
        instance = self._choices[kind].instance
        if instance is not None:
            return declared_options(type(instance))
        return self.info(kind).declared()

    def given_options(self, kind: str) -> dict[str, Any]:
        """Options given in code or by --option: per kind, plus un-prefixed keys routed to the plugin that declares them."""
        if self._routed is None:
            routed: dict[str, dict[str, Any]] = {k: dict(self._explicit_options.get(k, {})) for k in KIND_ORDER}
            for key, value in self._explicit_options.get("any", {}).items():
                takers = [k for k in KIND_ORDER if key in self.declared(k)]
                if not takers:
                    accepted = "; ".join(f"{k} {self._choices[k].name}: {', '.join(sorted(self.declared(k))) or 'none'}"
                                         for k in KIND_ORDER)
                    raise XflowError(f"no chosen plugin accepts option {key!r} ({accepted})")
                if len(takers) > 1:
                    raise XflowError(f"option {key!r} is accepted by the {' and the '.join(takers)}",
                                     f"say which: --option {takers[0]}.{key}=VALUE")
                routed[takers[0]][key] = value
            self._routed = routed
        return self._routed[kind]

    def check(self) -> None:
        """Resolve every plugin and check its options, creating nothing."""
        for kind in KIND_ORDER:
            if self._choices[kind].instance is None:
                self.options(kind)

    def plugin(self, kind: str) -> Any:
        """The plugin of ``kind``, made (with its options) by the first thread that asks."""
        choice = self._choices[kind]
        if choice.instance is not None:
            return choice.instance
        with self._lock:
            if choice.instance is None:
                info = self.info(kind)
                options = self.options(kind)
                context = PluginContext(self.workflow.id, options, self.state_dir, self.workflow, info.declared())
                assert info.cls is not None
                choice.instance = _guard(info, "start", lambda: info.cls(context), self.damaged)  # type: ignore[misc]
                choice.options = options
                # a file that is not SQLite at all (its header alone; nothing is opened, nothing written) is refused
                # now, before a publish reaches the other plugins or a worker takes records it could not settle
                damaged = self.damaged_file([kind], thorough=False)
                if damaged is not None:
                    raise damaged
            return choice.instance

    def guard(self, kind: str, what: str, call: Callable[[], Any]) -> Any:
        """Run a call of the ``kind`` plugin, its failures turned into one-line errors naming it."""
        return _guard(self.info(kind), what, call, self.damaged)

    def close(self) -> None:
        for choice in self._choices.values():
            if choice.instance is not None:
                choice.instance.close()

    def _made(self, kinds: Sequence[str]) -> list[tuple[str, str, object]]:
        return [(kind, self._choices[kind].name, self._choices[kind].instance) for kind in kinds]

    def damaged(self, exc: BaseException) -> XflowError | None:
        """A user-facing error when ``exc`` says a plugin's SQLite file is damaged (it is the user's file, not a bug)."""
        return damaged_error(exc, self._made(KIND_ORDER), self.state_dir / self.workflow.id)

    def damaged_file(self, kinds: Sequence[str] = KIND_ORDER, thorough: bool = True) -> XflowError | None:
        """The error naming the first plugin file of ``kinds`` that is not a sound SQLite database, or None."""
        return damaged_file(self._made(kinds), thorough)


def _guard(info: PluginInfo, what: str, call: Callable[[], Any],
           damaged: Callable[[BaseException], XflowError | None] | None = None) -> Any:
    """Run a plugin call; turn its connection errors, damaged files and crashes into one-line errors naming it."""
    try:
        return call()
    except XflowError:
        raise
    except Exception as exc:
        error = damaged(exc) if damaged is not None else None
        if error is not None:
            raise error from None
        cls = info.cls
        expected = cls.connection_errors if cls is not None else ()
        label = f"{info.kind} {info.name!r} ({info.distribution} {info.version})".replace(" )", ")")
        if expected and isinstance(exc, expected):
            raise XflowError(f"{label} cannot reach its backend during {what}: {exc}",
                             "check that the server is running and the connection options") from None
        raise XflowError(f"{label} failed during {what}: {type(exc).__name__}: {exc}",
                         f"this is a problem in {info.distribution}; report it there") from exc
