"""Reading an execution's history from CloudWatch Logs: its log stream, and the lines Lambda functions printed.

The tracker's own records are in the execution's log stream of the workflow's group. When the workflow runs on
Lambda, each function's runtime shim prints its delivery outcomes to the function's own group
``/aws/lambda/<function>``: those are found with FilterLogEvents on the execution id, from a little before the
execution's first record on. :func:`merge` puts both together in time order and drops duplicates (a write
whose answer was lost may be stored twice; two processes may write the same event at the same moment).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from xflow.aws import is_client_error, translate_errors
from xflow.core.interfaces import DeliveryRecord, EventRecord, ExecutionHistory
from xflow.trackers.cloudwatch.lines import log_stream_name, parse_line

LAMBDA_LOG_PREFIX = "/aws/lambda/"
#: how far (milliseconds) before an execution's first record its functions' lines are looked for (clock skew)
SKEW_MS = 300_000

#: a log line with its CloudWatch timestamp (milliseconds)
Line = tuple[int, str]


def stream_lines(logs: Any, group: str, execution_id: str) -> list[Line]:
    """Every line of the execution's log stream in ``group``, from its start (none if there is no stream)."""
    stream = log_stream_name(execution_id)
    found: list[Line] = []
    token = None
    empty_pages = 0
    with translate_errors(f"reading log group {group}"):
        while True:
            kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
            if token:
                kwargs["nextToken"] = token
            try:
                page = logs.get_log_events(**kwargs)
            except Exception as exc:
                if is_client_error(exc, "ResourceNotFoundException"):
                    return found
                raise
            found.extend((e["timestamp"], e["message"]) for e in page.get("events", []))
            # the end is the same token coming back; an empty page alone may sit mid-stream
            empty_pages = 0 if page.get("events") else empty_pages + 1
            if page.get("nextForwardToken") in (None, token) or empty_pages >= 3:
                return found
            token = page["nextForwardToken"]


def function_lines(logs: Any, function: str, execution_id: str, workflow_id: str,
                   since_ms: int | None = None) -> list[Line]:
    """The lines of ``/aws/lambda/<function>`` that mention ``execution_id`` (from ``since_ms`` on) and belong to
    ``workflow_id``."""
    group = LAMBDA_LOG_PREFIX + function
    found: list[Line] = []
    with translate_errors(f"reading log group {group}"):
        paginator = logs.get_paginator("filter_log_events")
        try:
            pattern = '"' + execution_id.replace('"', "") + '"'
            window = {"startTime": since_ms} if since_ms else {}
            for page in paginator.paginate(logGroupName=group, filterPattern=pattern, **window):
                found.extend((e["timestamp"], e["message"]) for e in page.get("events", [])
                             if belongs_to(e["message"], workflow_id))
        except Exception as exc:
            if is_client_error(exc, "ResourceNotFoundException"):
                return []
            raise
    return found


def belongs_to(message: str, workflow_id: str) -> bool:
    """A function's line belongs to the workflow unless it names another one (same function names, two flows)."""
    start = message.find('{"xflow"')
    if start < 0:
        return False
    try:
        owner = json.loads(message[start:]).get("workflow_id")
    except ValueError:
        return False
    return owner in (None, workflow_id)


def read_history(logs: Any, group: str, execution_id: str, workflow_id: str, functions: Iterable[str]) -> ExecutionHistory:
    """The execution's history: its stream in ``group`` and, for each of ``functions``, its Lambda group's lines."""
    lines = stream_lines(logs, group, execution_id)
    # an execution's function lines come after its first recorded event (less a margin for clock skew)
    since = min(t for t, _ in lines) - SKEW_MS if lines else None
    for function in functions:
        lines.extend(function_lines(logs, function, execution_id, workflow_id, since))
    return merge(lines, execution_id)


def merge(lines: Iterable[Line], execution_id: str) -> ExecutionHistory:
    """The records of ``execution_id`` among ``lines``, in time order, each event and each delivery outcome once."""
    events: dict[str, EventRecord] = {}
    deliveries: dict[tuple[Any, ...], DeliveryRecord] = {}
    for _, message in sorted(lines, key=lambda x: x[0]):
        record = parse_line(message)
        if record is None or record.execution_id != execution_id:
            continue
        if isinstance(record, EventRecord):
            events.setdefault(record.event_id, record)
        else:
            key = (record.event_id, record.function, record.attempt, record.status, record.started_at)
            deliveries.setdefault(key, record)
    return ExecutionHistory(sorted(events.values(), key=lambda e: e.published_at),
                            sorted(deliveries.values(), key=lambda d: d.started_at))
