"""The Workflow model from a workflow's validated values, with the checks across sections."""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marshmallow import Schema, ValidationError

from xflow.core.config.cycles import warn_cycles
from xflow.core.config.problems import MAX_WARNINGS_SHOWN, Problems, one_line
from xflow.core.config.schema import WORKFLOW_ID, FunctionSchema
from xflow.core.model import (
    DEFAULT_EVENT_LIMIT,
    DEFAULT_HOP_LIMIT,
    Function,
    LoggingChoice,
    LogRoute,
    MonitoringChoice,
    PluginChoice,
    Subscription,
    Workflow,
)
from xflow.core.rollout import DeployChoice, parse_strategy
from xflow.core.stages import apply_stage

log = logging.getLogger("xflow")


@dataclass
class Built:
    """What :func:`build_workflow` made of the file, also when it has problems (for the checks that follow)."""

    workflow: Workflow | None
    functions: dict[str, Function]
    #: where each function is written: ``("lambdas", index)``
    where: dict[str, tuple[Any, ...]]
    plugins: dict[str, PluginChoice]


def _default(value: Any, default: Any) -> Any:
    """``value`` unless it is None (0, 0.0 and "" are values, not gaps)."""
    return default if value is None else value


def build_workflow(file: Path, raw: dict[str, Any], data: dict[str, Any], problems: Problems,
                   loaded_all: dict[str, Any], named_by_file: bool = True) -> Built:
    """The workflow from the file's values (``raw``), what loaded without problems (``data``) and everything
    that loaded (``loaded_all``, with the valid part of entries that have problems)."""
    key = "functions" if "functions" in raw else "lambdas"
    if "functions" in raw and "lambdas" in raw:
        problems.add(("functions",), "give the functions under 'lambdas:' or 'functions:', not both")
    if key not in raw:
        problems.add((), "missing 'lambdas:' (or 'functions:'): the list of functions")
    general = data.get("general")
    general = general if isinstance(general, dict) else {}
    functions: dict[str, Function] = {}
    where_defined: dict[str, tuple[Any, ...]] = {}
    specs = raw.get(key)
    specs = specs if isinstance(specs, list) else []
    function_schema = FunctionSchema()
    # each entry as the full load left it, when its list lines up with the file's (else each is loaded again)
    loaded_specs = loaded_all.get(key)
    if not (isinstance(loaded_specs, list) and len(loaded_specs) == len(specs)):
        loaded_specs = None
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            continue
        name = spec["name"]
        if name in where_defined:
            problems.add((key, index, "name"), f"duplicate function name {name!r} "
                                               f"(first defined at {problems.place(where_defined[name])})")
            continue
        where_defined[name] = (key, index)
        loaded = loaded_specs[index] if loaded_specs is not None and isinstance(loaded_specs[index], dict) else None
        loaded = loaded if loaded is not None else _load_partial(function_schema, spec)
        source = loaded.get("source")
        source = source if isinstance(source, str) else ""
        handler = loaded.get("handler")
        publishes = loaded.get("publishes")
        environment = loaded.get("environment")
        functions[name] = Function(
            name=name,
            handler=handler if isinstance(handler, str) else "",
            source=source,
            source_path=_local_source(file, source, (key, index, "source"), problems),
            runtime=_default(loaded.get("runtime"), _default(general.get("runtime"), "python3.12")),
            description=loaded.get("description") or "",
            publishes=tuple(e for e in publishes if isinstance(e, str)) if isinstance(publishes, list) else (),
            retries=_default(loaded.get("retries"), _default(general.get("retries"), 2)),
            timeout=_default(loaded.get("timeout"), _default(general.get("lambda_timeout_time"), 30.0)),
            memory=_default(loaded.get("memory"), 128),
            batch_size=_default(loaded.get("batch_size"), 100),
            starting_position=_default(loaded.get("starting_position"), "TRIM_HORIZON"),
            bisect_on_error=_default(loaded.get("bisect_on_error"), True),
            environment=dict(environment) if isinstance(environment, dict) else {},
            concurrency=loaded.get("concurrency") if isinstance(loaded.get("concurrency"), int) else None,
            architecture=_default(loaded.get("architecture"), _default(general.get("architecture"), "x86_64")),
            **_requirements(file, loaded.get("requirements"), (key, index, "requirements"), problems),
        )
    subscriptions: list[Subscription] = []
    seen_events: dict[str, str] = {}
    entries = raw.get("subscriptions")
    for index, spec in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(spec, dict):
            continue
        event = spec.get("event", spec.get("name"))
        subscribers = spec.get("subscribers")
        if not isinstance(event, str) or not isinstance(subscribers, list):
            continue
        if event in seen_events:
            problems.add(("subscriptions", index), f"event {event!r} already has a subscription at "
                                                   f"{seen_events[event]}; list all its subscribers there")
            continue
        seen_events[event] = problems.place(("subscriptions", index))
        for position, subscriber in enumerate(subscribers):
            if isinstance(subscriber, str) and subscriber not in functions and subscriber not in where_defined:
                close = difflib.get_close_matches(subscriber, list(functions), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (defined: {', '.join(functions) or 'none'})"
                problems.add(("subscriptions", index, "subscribers", position),
                             f"no function named {subscriber!r}{hint}")
        subscriptions.append(Subscription(event, tuple(s for s in subscribers if isinstance(s, str))))

    flows = data.get("workflows")
    flows = [f for f in flows if isinstance(f, dict)] if isinstance(flows, list) else []
    workflow_id = data.get("workflow_id") or (flows[0].get("id") if flows else None) or (
        file.name.split(".")[0] if named_by_file else None)
    if workflow_id is None:
        if "workflow_id" not in raw:
            problems.add(("workflow_id",), "missing: a workflow given as a mapping has no file name to take its id "
                                           "from; add 'workflow_id': 'my_flow' (or pass workflow_id=)")
    elif not isinstance(workflow_id, str) or not WORKFLOW_ID.match(workflow_id):
        problems.add(("workflow_id",), f"the workflow id {workflow_id!r} (from the file name) is not valid: "
                                       "add 'workflow_id: my_flow' (letters, digits, _ and -)")
    chosen = next((f for f in flows if f.get("id") == workflow_id), flows[0] if flows else None)
    known_events = dict.fromkeys(seen_events)
    for function in functions.values():
        known_events.update(dict.fromkeys(function.publishes))
    flow: dict[str, None] = {}
    if chosen:
        index = flows.index(chosen)
        for position, event in enumerate(chosen.get("flow") or []):
            if event not in known_events:
                problems.add(("workflows", index, "flow", position),
                             f"event {event!r} is neither subscribed to nor published by any function "
                             "(an event nothing subscribes to is declared with 'subscribers: []')")
            else:
                flow.setdefault(event)
    flow.update(dict.fromkeys(known_events))
    subscribed = {name for s in subscriptions for name in s.subscribers}
    idle = [name for name in functions if name not in subscribed]
    for name in idle[:MAX_WARNINGS_SHOWN]:
        log.warning("%s: function %r subscribes to no event; it will never run", one_line(str(file)), name)
    if len(idle) > MAX_WARNINGS_SHOWN:
        log.warning("%s: ... and %d more functions that subscribe to no event", one_line(str(file)),
                    len(idle) - MAX_WARNINGS_SHOWN)
    hop_limit = _default(general.get("hop_limit"), DEFAULT_HOP_LIMIT)
    warn_cycles(file, tuple(flow), subscriptions, functions, hop_limit)
    plugins = {kind: PluginChoice(block.get("name"), dict(block.get("options") or {}))
               for kind in ("transport", "provider", "tracker") if isinstance(block := data.get(kind), dict)}
    workflow = None
    if not problems.items and isinstance(workflow_id, str):  # no problems: the id was found and is valid
        workflow = Workflow(
            id=workflow_id, path=file.resolve(), functions=functions, subscriptions=tuple(subscriptions),
            flow=tuple(flow), general=general, aws={k: v for k, v in (data.get("aws") or {}).items() if v is not None},
            plugins=plugins, hop_limit=hop_limit,
            event_limit=_default(general.get("event_limit"), DEFAULT_EVENT_LIMIT), logging=_logging(data.get("logging")),
            monitoring=_monitoring(raw, data.get("monitoring")), deploy=_deploy(data.get("deploy")),
        )
        if data.get("stage"):
            workflow = apply_stage(workflow, data["stage"], f"stage: in {file.name}")
    return Built(workflow, functions, where_defined, plugins)


def _logging(block: Any) -> LoggingChoice:
    """The ``logging:`` block as loaded (valid: the workflow is built only from a file without problems)."""
    if not isinstance(block, dict):
        return LoggingChoice()
    routes = tuple(LogRoute(r["name"], dict(r.get("options") or {}), r.get("level")) for r in block.get("routes") or ())
    aws = {k: v for k, v in (block.get("aws") or {}).items() if v is not None}
    return LoggingChoice(routes, block.get("level") or "DEBUG", block.get("buffer") or 10_000, aws)


def _deploy(block: Any) -> DeployChoice:
    """The ``deploy:`` block as loaded (its strategy parsed; the schema checked it)."""
    if not isinstance(block, dict):
        return DeployChoice()
    return DeployChoice(parse_strategy(block.get("strategy") or "all-at-once"), tuple(block.get("alarms") or ()),
                        int(block.get("max_errors") or 0))


def _monitoring(raw: dict[str, Any], block: Any) -> MonitoringChoice | None:
    """The ``monitoring:`` block as loaded (a bare ``monitoring:`` takes every default); None when the file has none."""
    if "monitoring" not in raw:
        return None
    given: dict[str, Any] = {k: (tuple(v) if k == "email" else v)
                             for k, v in (block if isinstance(block, dict) else {}).items()}
    return MonitoringChoice(**given)


def _requirements(file: Path, value: Any, where: tuple[Any, ...], problems: Problems) -> dict[str, Any]:
    """A function's ``requirements:`` as Function fields: its lines, or its requirements file (which must exist)."""
    if isinstance(value, list):
        return {"requirements": tuple(value)}
    if not isinstance(value, str):
        return {}
    path = Path(os.path.expanduser(value))
    path = path if path.is_absolute() else file.resolve().parent / path
    if not path.is_file():
        problems.add(where, f"requirements file {value!r} does not exist (looked for {path}; relative paths are read "
                            "from the workflow file's folder)")
        return {}
    return {"requirements_file": path}


def _load_partial(schema: Schema, spec: dict[str, Any]) -> dict[str, Any]:
    """Load what is valid of one entry (its errors were already reported by the full load)."""
    try:
        return schema.load(spec)
    except ValidationError as exc:
        valid = exc.valid_data if isinstance(exc.valid_data, dict) else {}
        messages = exc.messages if isinstance(exc.messages, dict) else {}
        return {**{k: v for k, v in spec.items() if k not in messages}, **valid}


def _local_source(file: Path, source: str, where: tuple[Any, ...], problems: Problems) -> Path | None:
    if not source or "://" in source or source.startswith(("git@", "git+")):
        return None  # a link (a git+ link without "://" is refused by the source check, not looked for as a path)
    try:
        path = Path(os.path.expanduser(source))
        if not path.is_absolute():
            path = (file.resolve().parent / path).resolve()
        exists = path.exists()
    except (OSError, ValueError, RuntimeError) as exc:
        problems.add(where, f"{source!r} is not a usable path: {one_line(str(exc))}")
        return None
    if not exists:
        problems.add(where, f"{source!r} does not exist (looked for {path}; relative paths are read from the "
                            "workflow file's folder)")
    return path
