"""Reads a workflow file: YAML with line numbers, ``${ENV}`` substitution, marshmallow validation.

Every problem is collected and reported at once as ``FILE:LINE: dotted.path: message``.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from xflow.core.errors import WorkflowFileError, XflowError
from xflow.core.model import Function, PluginChoice, Subscription, Workflow

log = logging.getLogger("xflow")

EVENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")
FUNCTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
WORKFLOW_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
HANDLER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")

event_name = validate.Regexp(EVENT_NAME, error="{input!r} is not a valid event name (letters, digits, _; starts with a letter)")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class FunctionSchema(_Strict):
    name = fields.Str(required=True, validate=validate.Regexp(
        FUNCTION_NAME, error="{input!r} is not a valid function name (letters, digits, _ and -, at most 64)"))
    handler = fields.Str(required=True, validate=validate.Regexp(
        HANDLER, error="{input!r} is not a valid handler: a Python function name, or module.function"))
    source = fields.Str(required=True, validate=validate.Length(min=1))
    runtime = fields.Str(load_default=None, allow_none=True)
    description = fields.Str(load_default="", allow_none=True)
    publishes = fields.List(fields.Str(validate=event_name), load_default=list)
    retries = fields.Int(load_default=None, validate=validate.Range(0, 100))
    timeout = fields.Float(load_default=None, validate=validate.Range(min=0, min_inclusive=False))
    memory = fields.Int(load_default=128, validate=validate.Range(128, 10240))
    batch_size = fields.Int(load_default=100, validate=validate.Range(1, 10000))
    starting_position = fields.Str(load_default="TRIM_HORIZON", validate=validate.OneOf(["TRIM_HORIZON", "LATEST"]))
    bisect_on_error = fields.Bool(load_default=True)
    environment = fields.Dict(keys=fields.Str(), values=fields.Str(), load_default=dict)


class SubscriptionSchema(_Strict):
    name = fields.Str(validate=event_name)
    event = fields.Str(validate=event_name)
    subscribers = fields.List(fields.Str(), required=True, validate=validate.Length(min=1))

    @validates_schema
    def _one_event_key(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "name" in data and "event" in data:
            raise ValidationError("give the event as 'name:' or 'event:', not both", "event")
        if "name" not in data and "event" not in data:
            raise ValidationError("missing the event: add 'event: EventName' (or 'name:')", "event")


class FlowSchema(_Strict):
    id = fields.Str(required=True, validate=validate.Regexp(WORKFLOW_ID, error="{input!r} is not a valid workflow id"))
    flow = fields.List(fields.Str(validate=event_name), load_default=list)
    description = fields.Str(load_default="")


class GeneralSchema(_Strict):
    lambda_timeout_time = fields.Float(allow_none=True, validate=validate.Range(min=0, min_inclusive=False))
    retries = fields.Int(allow_none=True, validate=validate.Range(0, 100))
    runtime = fields.Str(allow_none=True)


class AwsSchema(_Strict):
    region = fields.Str(allow_none=True)
    vpc_id = fields.Str(allow_none=True)
    subnet_ids = fields.List(fields.Str(), allow_none=True)
    security_group_ids = fields.List(fields.Str(), allow_none=True)
    aws_access_key_id = fields.Str(allow_none=True)
    aws_secret_access_key = fields.Str(allow_none=True)
    aws_session_token = fields.Str(allow_none=True)
    profile = fields.Str(allow_none=True)
    lambda_execution_role_name = fields.Str(allow_none=True)
    code_bucket = fields.Str(allow_none=True)


class PluginBlockSchema(_Strict):
    name = fields.Str(allow_none=True)
    options = fields.Dict(keys=fields.Str(), load_default=dict)

    @pre_load
    def _shorthand(self, data: Any, **kwargs: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class WorkflowSchema(_Strict):
    workflow_id = fields.Str(validate=validate.Regexp(WORKFLOW_ID, error="{input!r} is not a valid workflow id"))
    description = fields.Str()
    general = fields.Nested(GeneralSchema, load_default=dict)
    aws = fields.Nested(AwsSchema, load_default=dict, allow_none=True)
    lambdas = fields.List(fields.Nested(FunctionSchema))
    functions = fields.List(fields.Nested(FunctionSchema))
    subscriptions = fields.List(fields.Nested(SubscriptionSchema), required=True, validate=validate.Length(min=1))
    workflows = fields.List(fields.Nested(FlowSchema), validate=validate.Length(min=1))
    transport = fields.Nested(PluginBlockSchema)
    provider = fields.Nested(PluginBlockSchema)
    tracker = fields.Nested(PluginBlockSchema)


class _Problems:
    """Collects problems and turns paths into ``FILE:LINE: dotted.path: message`` lines."""

    def __init__(self, path: Path, lines: dict[tuple[Any, ...], int]) -> None:
        self.path, self.lines, self.items = path, lines, []

    def line_of(self, where: tuple[Any, ...]) -> int:
        for end in range(len(where), 0, -1):
            if where[:end] in self.lines:
                return self.lines[where[:end]]
        return 1

    def add(self, where: tuple[Any, ...], message: str) -> None:
        dotted = ".".join(str(p) for p in where) or "(top level)"
        self.items.append((self.line_of(where), dotted, message))

    def raise_if_any(self) -> None:
        if self.items:
            ordered = sorted(set(self.items), key=lambda item: (item[0], item[1]))
            raise WorkflowFileError(str(self.path), [f"{self.path}:{ln}: {where}: {msg}" for ln, where, msg in ordered])


def _compose(text: str, problems: _Problems) -> Any:
    """Parse YAML into plain values, recording the line of every key and list item."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark else 1
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problems.items.append((line, "(yaml)", f"YAML syntax error: {reason}"))
        return None
    constructor = yaml.SafeLoader("")

    def build(node: yaml.Node, where: tuple[Any, ...]) -> Any:
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                key = str(key) if not isinstance(key, (list, dict)) else repr(key)
                if key in result:
                    problems.lines.setdefault(where + (key,), key_node.start_mark.line + 1)
                    problems.items.append((key_node.start_mark.line + 1, ".".join(map(str, where + (key,))),
                                           "duplicate key"))
                    continue
                problems.lines[where + (key,)] = key_node.start_mark.line + 1
                result[key] = build(value_node, where + (key,))
            return result
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                problems.lines[where + (index,)] = item.start_mark.line + 1
                items.append(build(item, where + (index,)))
            return items
        value = constructor.construct_object(node, deep=True)
        if isinstance(value, str):
            value = _substitute_env(value, where, problems)
        return value

    if root is None:
        return None
    return build(root, ())


def _substitute_env(value: str, where: tuple[Any, ...], problems: _Problems) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is None:
            if default is not None:
                return default
            problems.add(where, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
            return ""
        return found

    return ENV_REFERENCE.sub(replace, value)


def _flatten(messages: Any, where: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    if isinstance(messages, dict):
        flat = []
        for key, value in messages.items():
            key = int(key) if isinstance(key, str) and key.isdigit() else key
            flat.extend(_flatten(value, where + ((key,) if key != "_schema" else ())))
        return flat
    if isinstance(messages, list):
        if all(isinstance(m, str) for m in messages):
            return [(where, m) for m in messages]
        flat = []
        for item in messages:
            flat.extend(_flatten(item, where))
        return flat
    return [(where, str(messages))]


_SCHEMA_KEYS: dict[tuple[str, ...], list[str]] = {
    (): list(WorkflowSchema().fields),
    ("lambdas",): list(FunctionSchema().fields),
    ("functions",): list(FunctionSchema().fields),
    ("subscriptions",): list(SubscriptionSchema().fields),
    ("workflows",): list(FlowSchema().fields),
    ("general",): list(GeneralSchema().fields),
    ("aws",): list(AwsSchema().fields),
    ("transport",): ["name", "options"],
    ("provider",): ["name", "options"],
    ("tracker",): ["name", "options"],
}


def _explain(where: tuple[Any, ...], message: str) -> str:
    if message == "Unknown field.":
        section = tuple(p for p in where[:-1] if not isinstance(p, int))
        known = _SCHEMA_KEYS.get(section, [])
        close = difflib.get_close_matches(str(where[-1]), known, n=1)
        suggestion = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})" if known else ""
        return f"unknown key{suggestion}"
    if message == "Missing data for required field.":
        return "missing required field"
    return message[:1].lower() + message[1:].rstrip(".") if message else message


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """Read and validate a workflow file; raise WorkflowFileError listing every problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise XflowError(f"{file}: no such workflow file", "check the path") from None
    except IsADirectoryError:
        raise XflowError(f"{file}: is a folder, not a workflow file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise XflowError(f"{file}: cannot be read: {exc}") from None
    problems = _Problems(file, {})
    raw = _compose(text, problems)
    problems.raise_if_any()
    if raw is None:
        problems.add((), "the file is empty; a workflow needs 'lambdas:' (or 'functions:') and 'subscriptions:'")
        problems.raise_if_any()
    if not isinstance(raw, dict):
        problems.add((), f"the file holds a YAML {type(raw).__name__}, not a mapping of keys such as "
                         "'lambdas:' and 'subscriptions:'")
        problems.raise_if_any()
    try:
        data = WorkflowSchema().load(raw)
    except ValidationError as exc:
        for where, message in _flatten(exc.messages, ()):
            problems.add(where, _explain(where, message))
        # Cross-checks still run on what did load, so that every problem is reported at once.
        data = WorkflowSchema(unknown=EXCLUDE, partial=True).load(
            {k: v for k, v in raw.items() if k in _SCHEMA_KEYS[()] and k not in exc.messages})
    workflow = _build(file, raw, data, problems)
    problems.raise_if_any()
    assert workflow is not None
    _warn_credentials(file, data.get("aws") or {})
    return workflow


def _build(file: Path, raw: dict[str, Any], data: dict[str, Any], problems: _Problems) -> Workflow | None:
    key = "functions" if "functions" in raw else "lambdas"
    if "functions" in raw and "lambdas" in raw:
        problems.add(("functions",), "give the functions under 'lambdas:' or 'functions:', not both")
    if key not in raw:
        problems.add((), "missing 'lambdas:' (or 'functions:'): the list of functions")
    general = data.get("general") or {}
    functions: dict[str, Function] = {}
    first_line: dict[str, int] = {}
    for index, spec in enumerate(raw.get(key) or []):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            continue
        name = spec["name"]
        if name in functions:
            problems.add((key, index, "name"),
                         f"duplicate function name {name!r} (first defined at line {first_line[name]})")
            continue
        first_line[name] = problems.line_of((key, index))
        loaded = _load_partial(FunctionSchema, spec)
        source = str(loaded.get("source") or "")
        functions[name] = Function(
            name=name,
            handler=str(loaded.get("handler") or ""),
            source=source,
            source_path=_local_source(file, source, (key, index, "source"), problems),
            runtime=loaded.get("runtime") or general.get("runtime") or "python3.12",
            description=loaded.get("description") or "",
            publishes=tuple(loaded.get("publishes") or ()),
            retries=loaded["retries"] if loaded.get("retries") is not None else general.get("retries") or 2,
            timeout=loaded.get("timeout") or general.get("lambda_timeout_time") or 30.0,
            memory=loaded.get("memory", 128),
            batch_size=loaded.get("batch_size", 100),
            starting_position=loaded.get("starting_position", "TRIM_HORIZON"),
            bisect_on_error=loaded.get("bisect_on_error", True),
            environment=dict(loaded.get("environment") or {}),
        )
    subscriptions: list[Subscription] = []
    seen_events: dict[str, int] = {}
    for index, spec in enumerate(raw.get("subscriptions") or []):
        if not isinstance(spec, dict):
            continue
        event = spec.get("event", spec.get("name"))
        subscribers = spec.get("subscribers") or []
        if not isinstance(event, str) or not isinstance(subscribers, list):
            continue
        if event in seen_events:
            problems.add(("subscriptions", index), f"event {event!r} already has a subscription at line "
                                                   f"{seen_events[event]}; list all its subscribers there")
            continue
        seen_events[event] = problems.line_of(("subscriptions", index))
        for position, subscriber in enumerate(subscribers):
            if isinstance(subscriber, str) and subscriber not in functions and subscriber not in first_line:
                close = difflib.get_close_matches(subscriber, list(functions), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (defined: {', '.join(functions) or 'none'})"
                problems.add(("subscriptions", index, "subscribers", position),
                             f"no function named {subscriber!r}{hint}")
        subscriptions.append(Subscription(event, tuple(s for s in subscribers if isinstance(s, str))))

    flows = data.get("workflows") or []
    workflow_id = data.get("workflow_id") or (flows[0]["id"] if flows else None) or file.name.split(".")[0]
    if not WORKFLOW_ID.match(workflow_id):
        problems.add(("workflow_id",), f"the workflow id {workflow_id!r} (from the file name) is not valid: "
                                       "add 'workflow_id: my_flow' (letters, digits, _ and -)")
    chosen = next((f for f in flows if f["id"] == workflow_id), flows[0] if flows else None)
    known_events = list(seen_events)
    for function in functions.values():
        known_events.extend(e for e in function.publishes if e not in known_events)
    flow: list[str] = []
    if chosen:
        index = flows.index(chosen)
        for position, event in enumerate(chosen["flow"]):
            if event not in known_events:
                problems.add(("workflows", index, "flow", position),
                             f"event {event!r} is neither subscribed to nor published by any function")
            elif event not in flow:
                flow.append(event)
    flow.extend(e for e in known_events if e not in flow)
    for name in functions:
        if not any(name in s.subscribers for s in subscriptions):
            log.warning("%s: function %r subscribes to no event; it will never run", file, name)
    plugins = {kind: PluginChoice(block.get("name"), dict(block.get("options") or {}))
               for kind in ("transport", "provider", "tracker") if (block := data.get(kind))}
    if problems.items:
        return None
    return Workflow(
        id=workflow_id, path=file.resolve(), functions=functions, subscriptions=tuple(subscriptions),
        flow=tuple(flow), general=general, aws={k: v for k, v in (data.get("aws") or {}).items() if v is not None},
        plugins=plugins,
    )


def _load_partial(schema: type[Schema], spec: dict[str, Any]) -> dict[str, Any]:
    """Load what is valid of one entry (its errors were already reported by the full load)."""
    try:
        return schema().load(spec)
    except ValidationError as exc:
        valid = exc.valid_data if isinstance(exc.valid_data, dict) else {}
        return {**{k: v for k, v in spec.items() if k not in exc.messages}, **valid}


def _local_source(file: Path, source: str, where: tuple[Any, ...], problems: _Problems) -> Path | None:
    if not source or "://" in source or source.startswith("git@"):
        return None
    path = Path(os.path.expanduser(source))
    if not path.is_absolute():
        path = (file.resolve().parent / path).resolve()
    if not path.exists():
        problems.add(where, f"{source!r} does not exist (looked for {path}; relative paths are read from the "
                            "workflow file's folder)")
    return path


def _warn_credentials(file: Path, aws: Mapping[str, Any]) -> None:
    written = [k for k in CREDENTIAL_KEYS if aws.get(k)]
    if written:
        log.warning("%s holds AWS credentials (%s); they are used but never printed. Prefer the standard AWS "
                    "credential chain (environment, ~/.aws, roles)", file, ", ".join(written))
