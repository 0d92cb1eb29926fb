"""The structured log record: one per line a handler logged or printed, and one per delivery outcome.

Every record has the same fields on every backend (:data:`FIELDS`): ``time`` (seconds since the epoch), ``level``
(``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``, ``CRITICAL``), ``workflow``, ``execution_id``, ``event``, ``event_id``,
``function``, ``attempt``, ``message``; ``trace_id`` when the event carried one; ``kind`` (``line``: a line the
handler logged or printed; ``outcome``: how the attempt ended, with its ``status``) and ``seq`` (the line's place in
its attempt, which orders records of one attempt that share a time).

A handler attempt's output comes back as lines (``ctx.logger`` writes ``LEVEL message``; ``print`` writes the text):
:func:`records_of` makes the records of one attempt from its :class:`~xflow.core.interfaces.DeliveryRecord`. Lines
carry the attempt's start time; the outcome carries its end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only read here: this module uses the standard library and xflow's wire format alone (the Lambda
    # shim ships a copy of each: xflow_logrecords.py beside xflow_wire.py)
    from xflow.core.interfaces import DeliveryRecord
    from xflow.core.wire import iso_time
else:
    try:
        from xflow.core.wire import iso_time
    except ImportError:  # the copy in a Lambda zip: xflow_wire.py beside this file, no xflow package
        from xflow_wire import iso_time

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LEVEL_NUMBERS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
#: the fields every record has, in the order they are written (``trace_id`` only when present)
FIELDS = ("time", "level", "workflow", "execution_id", "event", "event_id", "function", "attempt", "message",
          "trace_id", "kind", "status", "seq")
#: the first word of a ``ctx.logger`` line -> its level
_LEVEL_WORDS = {**{level: level for level in LEVELS}, "WARN": "WARNING", "FATAL": "CRITICAL"}
#: a JSON string of a str, non-ASCII kept (the json module's C function)
_quote: Callable[[str], str] = json.encoder.encode_basestring


#: the JSON of the levels and kinds (written often)
_QUOTED = {text: json.dumps(text) for text in (*LEVELS, "line", "outcome")}


class _SharedJson:
    """What the records of one attempt share, as JSON, once written by the first of them."""

    __slots__ = ("common", "owner", "time", "time_json")

    def __init__(self) -> None:
        #: the fields it was written from (a record changed with dataclasses.replace writes its own)
        self.owner: tuple[Any, ...] = ()
        self.common: tuple[str, str] | None = None
        self.time: float | None = None
        self.time_json = ""


def _number(value: float) -> str:
    """A finite float as JSON (repr is), anything else as null."""
    return repr(float(value)) if math.isfinite(value) else "null"
_TRACEBACK = "Traceback (most recent call last):"


@dataclass(slots=True)
class LogRecord:
    """One structured log record (see the module's docstring for the fields). Treat it as a value: routes share it."""

    time: float
    level: str
    workflow: str
    execution_id: str
    event: str
    event_id: str
    function: str
    attempt: int
    message: str
    trace_id: str | None = None
    kind: str = "line"
    #: the delivery's status (``succeeded``, ``retrying``, ``failed``) on an ``outcome`` record
    status: str | None = None
    seq: int = 0
    #: the JSON of the fields the records of one attempt share, written once for them all (see :meth:`to_json`)
    shared: _SharedJson | None = field(default=None, repr=False, compare=False)

    @property
    def levelno(self) -> int:
        return LEVEL_NUMBERS.get(self.level, 20)

    @property
    def key(self) -> tuple[Any, ...]:
        """What identifies the record: the same attempt's same line is the same record (read twice, sent twice)."""
        return (self.execution_id, self.event_id, self.function, self.attempt, self.kind, self.seq)

    @property
    def order(self) -> tuple[float, str, int, int]:
        """The sort key of time order: time, then the attempt's lines in their order."""
        return (self.time, self.function, self.attempt, self.seq)

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON object (``trace_id`` and ``status`` only when set)."""
        data: dict[str, Any] = {
            "time": self.time, "level": self.level, "workflow": self.workflow, "execution_id": self.execution_id,
            "event": self.event, "event_id": self.event_id, "function": self.function, "attempt": self.attempt,
            "message": self.message,
        }
        if self.trace_id is not None:
            data["trace_id"] = self.trace_id
        data["kind"] = self.kind
        if self.status is not None:
            data["status"] = self.status
        data["seq"] = self.seq
        return data

    def to_json(self) -> str:
        """One line of JSON: :meth:`as_dict`'s object, written here (faster than ``json.dumps`` of the dict, which the
        routes' hot path feels; the fields the records of one attempt share are written once for them all).
        Non-ASCII is kept as is (a lone surrogate, which UTF-8 cannot carry, is left to the writer: encode with
        ``errors="backslashreplace"``)."""
        q = _quote
        shared = self.shared
        owner = (self.workflow, self.execution_id, self.event, self.event_id, self.function, self.attempt, self.trace_id)
        common = shared.common if shared is not None and shared.owner == owner else None
        if common is None:
            trace = f',"trace_id":{q(self.trace_id)}' if self.trace_id is not None else ""
            common = (f'"workflow":{q(self.workflow)},"execution_id":{q(self.execution_id)},"event":{q(self.event)},'
                      f'"event_id":{q(self.event_id)},"function":{q(self.function)},"attempt":{int(self.attempt)}',
                      trace)
            if shared is not None:
                shared.owner, shared.common = owner, common
        status = f',"status":{q(self.status)}' if self.status is not None else ""
        if shared is not None and shared.time == self.time:
            moment = shared.time_json
        else:
            moment = _number(self.time)
            if shared is not None:  # the attempt's lines share their time
                shared.time, shared.time_json = self.time, moment
        return (f'{{"time":{moment},"level":{_QUOTED.get(self.level) or q(self.level)},{common[0]},'
                f'"message":{q(self.message)}{common[1]},"kind":{_QUOTED.get(self.kind) or q(self.kind)}{status},'
                f'"seq":{int(self.seq)}}}')

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogRecord:
        """The record a JSON object holds; a KeyError, TypeError or ValueError when it is not one."""
        trace = data.get("trace_id")
        status = data.get("status")
        return cls(float(data["time"]), str(data["level"]), str(data["workflow"]), str(data["execution_id"]),
                   str(data["event"]), str(data["event_id"]), str(data["function"]), int(data["attempt"]),
                   str(data["message"]), None if trace is None else str(trace), str(data.get("kind") or "line"),
                   None if status is None else str(status), int(data.get("seq") or 0))

    def iso_time(self) -> str:
        """``time`` in RFC 3339, UTC, with milliseconds: ``2026-11-27T13:00:00.123Z`` (xflow's one formatter, cut to
        the millisecond; a time out of range is shown at the nearest end of years 1 to 9999)."""
        return iso_time(self.time)[:23] + "Z"

    def text(self) -> str:
        """The record as one human line: time, level, function and attempt, execution, message."""
        return (f"{self.iso_time()} {self.level:<8} {self.function}#{self.attempt} {self.event} "
                f"{self.execution_id}  {self.message}")


def parse_level(line: str) -> tuple[str, str]:
    """``(level, message)`` of an output line: ``ctx.logger`` writes ``LEVEL message``; anything else (printed text)
    is ``INFO``."""
    word, space, rest = line.partition(" ")
    level = _LEVEL_WORDS.get(word) if space else None
    return (level, rest) if level is not None else ("INFO", line)


def records_of(workflow: str, delivery: DeliveryRecord, trace_id: str | None = None) -> list[LogRecord]:
    """The records of one attempt: one per output line, then its outcome.

    On a failed attempt the traceback xflow appends to the output (from ``Traceback (most recent call last):`` on)
    is at level ``ERROR``. An attempt-0 marker (a re-drive) has no output and makes only its outcome record.
    """
    trace = trace_id if trace_id is not None else getattr(delivery, "trace_id", None)
    lines: Sequence[str] = delivery.logs
    status = delivery.status
    traceback_from = len(lines)
    if status != "succeeded" and _TRACEBACK in lines:
        traceback_from = len(lines) - 1 - list(reversed(lines)).index(_TRACEBACK)
    execution_id, event, event_id, function, attempt = (delivery.execution_id, delivery.event, delivery.event_id,
                                                        delivery.function, delivery.attempt)
    started = delivery.started_at
    shared = _SharedJson()
    found = []
    for index, line in enumerate(lines):
        if index >= traceback_from:
            level, message = "ERROR", line
        else:
            level, message = parse_level(line)
        found.append(LogRecord(started, level, workflow, execution_id, event, event_id, function, attempt, message,
                               trace, "line", None, index, shared))
    found.append(LogRecord(started + max(0.0, delivery.duration), _OUTCOME_LEVELS.get(status, "ERROR"), workflow,
                           execution_id, event, event_id, function, attempt, outcome_message(delivery), trace,
                           "outcome", status, len(lines), shared))
    return found


_OUTCOME_LEVELS = {"succeeded": "INFO", "retrying": "WARNING"}


def outcome_message(delivery: DeliveryRecord) -> str:
    """``succeeded in 12 ms``, ``failed (attempt 2, retrying) after 3 ms: ValueError: ...``."""
    milliseconds = delivery.duration * 1000
    took = f"{milliseconds:.1f} ms" if milliseconds < 10 else f"{milliseconds:.0f} ms"
    if delivery.status == "succeeded":
        return f"{delivery.event} handled: succeeded in {took}"
    if delivery.attempt == 0:
        return f"{delivery.event} re-driven: {delivery.error or 'pending again'}"
    what = "failed, will be retried" if delivery.status == "retrying" else "failed for good (dead-lettered)"
    return f"{delivery.event} {what} after {took} (attempt {delivery.attempt}): {delivery.error or 'no reason given'}"
