"""Starting a workflow's log routes: from its file's ``logging:`` block and the command line's ``--log-route``.

A :class:`~xflow.core.worker.Worker` calls :func:`start_routing` before its runner starts (the runner reports to
the router it installs) and closes the handle when the runner has stopped. With no route configured it returns None
and installs nothing: the runners' path stays as it is. Workers of one workflow in one process share its router.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xflow.core import observe
from xflow.core.errors import XflowError
from xflow.core.interfaces import PluginContext
from xflow.core.options import env_values, resolve_options
from xflow.core.plugins import PluginRegistry
from xflow.logs.destination import KIND, LogDestination
from xflow.logs.records import LEVELS
from xflow.logs.router import DEFAULT_CAPACITY, LogRouter, Route

if TYPE_CHECKING:
    from xflow.core.engine import Engine
    from xflow.core.model import Workflow


@dataclass(frozen=True)
class RouteSpec:
    """One route: the destination's name, its options, the least level it gets (None: the block's), and where it
    was given (for messages)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    level: str | None = None
    where: str = "--log-route"


_lock = threading.Lock()
#: routes given on the command line (``--log-route``), for every workflow this process runs
_process_routes: list[RouteSpec] = []
#: running routers by workflow id: the router and how many workers use it
_running: dict[str, list[Any]] = {}


def parse_route(text: str) -> RouteSpec:
    """``NAME[:KEY=VALUE[,KEY=VALUE...]]`` (``--log-route``) as a route; ``level=`` sets the route's least level.

    A value holding a comma is written in the workflow file's ``logging:`` block instead."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise XflowError(f"--log-route {text!r} names no destination", "write e.g. --log-route file:path=logs.jsonl")
    options: dict[str, str] = {}
    level = None
    for number, pair in enumerate(filter(None, (p.strip() for p in rest.split(","))), 1):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise XflowError(f"--log-route {name}: setting number {number} is not KEY=VALUE (not shown: it may hold a "
                             "secret)", "write e.g. --log-route syslog:address=tcp://127.0.0.1:514,facility=local0")
        if key.strip() == "level":
            level = check_level(value.strip(), f"--log-route {name}")
        else:
            options[key.strip()] = value
    return RouteSpec(name, options, level, f"--log-route {name}")


def check_level(level: str, where: str) -> str:
    upper = str(level).upper()
    if upper not in LEVELS:
        raise XflowError(f"{where}: level {level!r} is not one of {', '.join(LEVELS)}")
    return upper


def add_process_routes(routes: Sequence[RouteSpec]) -> None:
    """Route the records of every workflow this process runs to ``routes`` too (``--log-route``)."""
    with _lock:
        _process_routes.extend(routes)


def workflow_routes(workflow: Workflow) -> list[RouteSpec]:
    """The routes of the workflow file's ``logging:`` block, then the command line's."""
    block = getattr(workflow, "logging", None)
    found = [RouteSpec(r.name, dict(r.options), r.level, f"the workflow file {workflow.path} (logging.routes[{i}])")
             for i, r in enumerate(getattr(block, "routes", ()) or ())]
    with _lock:
        return found + list(_process_routes)


def make_destination(spec: RouteSpec, workflow: Workflow, state_dir: Path,
                     registry: PluginRegistry) -> LogDestination:
    """The destination of a route, its options checked against what it declares (an XflowError names the place)."""
    info = registry.get(KIND, spec.name)
    declared = info.declared()
    # an option's variable (XFLOW_HTTP_TOKEN, XFLOW_LOG_TOKEN) fills what the route leaves out
    given = {key: (value, f"environment variable {variable}")
             for key, (value, variable) in env_values(spec.name, KIND, declared).items()}
    given.update((key, (value, spec.where)) for key, value in spec.options.items())
    options = resolve_options(info.label, declared, given)
    assert info.cls is not None and issubclass(info.cls, LogDestination)  # the registry checked its kind
    context = PluginContext(workflow.id, options, Path(state_dir), workflow, declared)
    try:
        return info.cls(context)
    except (OSError, ValueError) as exc:  # a destination that did not say it in an XflowError (ssl.SSLError too)
        raise XflowError(f"{spec.where}: log destination {spec.name!r} cannot start: {type(exc).__name__}: {exc}",
                         "'xflow plugins --options' lists every destination's options") from None


def build_router(workflow: Workflow, state_dir: Path, registry: PluginRegistry,
                 specs: Sequence[RouteSpec] | None = None) -> LogRouter | None:
    """A router over ``specs`` (default: :func:`workflow_routes`), or None when there are none."""
    specs = workflow_routes(workflow) if specs is None else list(specs)
    if not specs:
        return None
    block = getattr(workflow, "logging", None)
    default_level = getattr(block, "level", None) or "DEBUG"
    capacity = getattr(block, "buffer", None) or DEFAULT_CAPACITY
    routes: list[Route] = []
    try:
        for index, spec in enumerate(specs):
            destination = make_destination(spec, workflow, state_dir, registry)
            label = spec.name if sum(s.name == spec.name for s in specs) == 1 else f"{spec.name}#{index + 1}"
            routes.append(Route(label, destination, capacity, spec.level or default_level))
    except BaseException:
        for route in routes:
            route.close(0.0)
        raise
    return LogRouter(routes, workflow.id)


class Routing:
    """A worker's hold on its workflow's router: :meth:`close` lets go (the last one out flushes and stops it)."""

    def __init__(self, workflow_id: str, router: LogRouter) -> None:
        self.workflow_id, self.router = workflow_id, router
        self._closed = False

    def close(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        with _lock:
            entry = _running.get(self.workflow_id)
            if entry is None or entry[0] is not self.router:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _running[self.workflow_id]
        observe.remove(self.router)
        if timeout is None:
            self.router.close()
        else:
            self.router.close(timeout)


def start_routing(engine: Engine) -> Routing | None:
    """Start (or join) the router of ``engine``'s workflow and install it as an observer; None when it routes no
    logs. A route's bad option is an XflowError, raised before anything runs."""
    workflow = engine.workflow
    with _lock:
        entry = _running.get(workflow.id)
        if entry is not None:
            entry[1] += 1
            return Routing(workflow.id, entry[0])
    specs = workflow_routes(workflow)
    if not specs:
        return None
    router = build_router(workflow, engine.state_dir, engine.registry, specs)
    assert router is not None
    with _lock:
        entry = _running.get(workflow.id)
        if entry is not None:  # another worker started it meanwhile: use that one
            entry[1] += 1
            shared = entry[0]
        else:
            _running[workflow.id] = [router, 1]
            shared = None
    if shared is not None:
        router.close(0.0)
        return Routing(workflow.id, shared)
    observe.add(router)
    return Routing(workflow.id, router)


def running_stats() -> list[dict[str, Any]]:
    """Every running router's routes with their counters (sent, dropped, buffered), for status and metrics."""
    with _lock:
        routers = [(workflow, entry[0]) for workflow, entry in _running.items()]
    return [{"workflow": workflow, **stats.as_dict()} for workflow, router in routers for stats in router.stats()]
