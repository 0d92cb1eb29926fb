"""The cloudwatch tracker's records as log lines: one JSON line per event or delivery outcome, and PutLogEvents batches.

Every record is one JSON line: ``{"xflow": "event", ...}`` for an event and ``{"xflow": "delivery", ...}`` for a
delivery outcome. The tracker writes them to ``/xflow/<workflow_id>``, one log stream per execution
(:func:`log_stream_name`); on Lambda, the ``tracker_<workflow_id>`` function writes event lines of the same form
and each function's runtime shim prints its delivery lines to its own group. :func:`parse_line` finds a record
in any such line. :func:`put_ranges` cuts lines into PutLogEvents calls within the call's limits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from xflow.core.interfaces import DeliveryRecord, EventRecord

#: CloudWatch takes events up to 256 KB; event data above this is left out of the line
MAX_DATA_CHARS = 200_000
MAX_ERROR_CHARS = 8_000
#: PutLogEvents' limits per call: events, and bytes (UTF-8 message bytes plus ``PUT_EVENT_OVERHEAD`` per event)
PUT_MAX_EVENTS = 10_000
PUT_MAX_BYTES = 1_048_576
PUT_EVENT_OVERHEAD = 26


def log_stream_name(execution_id: str) -> str:
    """Log stream names may not hold ':' or '*' and are at most 512 characters."""
    return re.sub(r"[:*]", "_", execution_id)[:512]


def put_ranges(messages: Sequence[str]) -> list[tuple[int, int]]:
    """``(start, end)`` slices of ``messages`` that each fit one PutLogEvents call (its count and size limits)."""
    ranges: list[tuple[int, int]] = []
    start, size = 0, 0
    for end, message in enumerate(messages):
        cost = len(message.encode("utf-8")) + PUT_EVENT_OVERHEAD
        if end > start and (end - start >= PUT_MAX_EVENTS or size + cost > PUT_MAX_BYTES):
            ranges.append((start, end))
            start, size = end, 0
        size += cost
    if start < len(messages):
        ranges.append((start, len(messages)))
    return ranges


def event_line(record: EventRecord) -> str:
    """The line of an event; its data is left out (``data_truncated``) when the line would be too long."""
    line: dict[str, Any] = {
        "xflow": "event", "execution_id": record.execution_id, "event_id": record.event_id,
        "event": record.event, "published_at": record.published_at, "producer": record.producer,
        "data": dict(record.data) if record.data is not None else None,
    }
    text = json.dumps(line, ensure_ascii=False, default=str)
    if len(text.encode("utf-8")) > MAX_DATA_CHARS:
        line["data"], line["data_truncated"] = None, True
        text = json.dumps(line, ensure_ascii=False, default=str)
    return text


def delivery_line(record: DeliveryRecord) -> str:
    """The line of a delivery outcome; its error is cut, and its oldest log lines dropped, to fit."""
    logs = list(record.logs)
    line: dict[str, Any] = {
        "xflow": "delivery", "execution_id": record.execution_id, "event_id": record.event_id,
        "event": record.event, "function": record.function, "attempt": record.attempt,
        "status": record.status, "started_at": record.started_at, "duration": record.duration,
        "error": record.error[:MAX_ERROR_CHARS] if record.error else None, "logs": logs,
    }
    text = json.dumps(line, ensure_ascii=False, default=str)
    while len(text.encode("utf-8")) > MAX_DATA_CHARS and logs:
        logs = line["logs"] = logs[len(logs) // 2 + 1:]
        text = json.dumps(line, ensure_ascii=False, default=str)
    return text


def parse_line(message: str) -> EventRecord | DeliveryRecord | None:
    """The record a log line holds, or None for any other line."""
    start = message.find('{"xflow"')
    if start < 0:
        return None
    try:
        line = json.loads(message[start:])
    except ValueError:
        return None
    try:
        if line.get("xflow") == "event":
            return EventRecord(str(line["execution_id"]), str(line["event_id"]), str(line["event"]),
                               float(line.get("published_at") or 0.0), str(line.get("producer") or ""),
                               line.get("data"))
        if line.get("xflow") == "delivery":
            return DeliveryRecord(str(line["execution_id"]), str(line["event_id"]), str(line["event"]),
                                  str(line["function"]), int(line.get("attempt") or 1), line["status"],
                                  float(line.get("started_at") or 0.0), float(line.get("duration") or 0.0),
                                  line.get("error"), tuple(str(x) for x in line.get("logs") or ()))
    except (KeyError, TypeError, ValueError):
        return None
    return None
