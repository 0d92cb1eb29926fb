"""Reading log records back for ``xflow logs``: from the tracker, from a ``file`` route, or from CloudWatch Logs.

- ``tracker``: every tracker keeps each attempt's output with its outcome; the records are made from those
  (:func:`~xflow.logs.records.records_of`), for one execution or for the most recently started ones.
- ``file``: the JSON lines a ``file`` route wrote (its rotated files too).
- ``cloudwatch``: on AWS, FilterLogEvents over each function's log group ``/aws/lambda/<function>``, where the
  Lambda runtime shim prints every attempt's outcome with its output.

``auto`` picks ``file`` when the workflow routes to a file that exists, ``cloudwatch`` when the tracker is
``cloudwatch``, else ``tracker``. Records come back merged in time order, each once. The workflow-wide view reads
the :data:`MAX_EXECUTIONS` most recently started executions (a warning says so when there are more), keeping their
records by record time: an execution started long before ``since`` that still logs after it is included.
``--follow`` reads incrementally (:mod:`xflow.logs.following`).
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xflow.core.errors import XflowError
from xflow.core.interfaces import DeliveryRecord, ExecutionInfo, PluginContext
from xflow.logs.file import route_path
from xflow.logs.records import LogRecord, records_of

if TYPE_CHECKING:
    from xflow.core.engine import Engine

log = logging.getLogger("xflow")

SOURCES = ("auto", "tracker", "file", "cloudwatch")
#: executions read from the tracker for the workflow-wide view, at most
MAX_EXECUTIONS = 1000


@dataclass(frozen=True)
class Query:
    """Which records: one execution (or all), some functions (or all), since a time (seconds since the epoch)."""

    execution_id: str | None = None
    functions: tuple[str, ...] = ()
    since: float | None = None

    def wants(self, record: LogRecord) -> bool:
        return ((self.execution_id is None or record.execution_id == self.execution_id)
                and (not self.functions or record.function in self.functions)
                and (self.since is None or record.time >= self.since))


def merged(records: Iterable[LogRecord], query: Query) -> list[LogRecord]:
    """The records ``query`` wants, each once, in time order."""
    unique = {record.key: record for record in records if query.wants(record)}
    return sorted(unique.values(), key=lambda r: r.order)


class LogReader:
    """Reads one workflow's records from ``source`` (one of :data:`SOURCES`, resolved by :meth:`resolve`)."""

    def __init__(self, engine: Engine, source: str = "auto") -> None:
        if source not in SOURCES:
            raise XflowError(f"unknown log source {source!r}; choose one of {', '.join(SOURCES)}")
        self.engine = engine
        self.files = self._file_routes()
        self.source = self.resolve(source)

    def _file_routes(self) -> list[Path]:
        workflow = self.engine.workflow
        context = PluginContext(workflow.id, {}, self.engine.state_dir, workflow)
        return [route_path(route.options.get("path"), context) for route in workflow.logging.routes
                if route.name == "file"]

    def resolve(self, source: str) -> str:
        if source == "file" and not self.files:
            raise XflowError(f"workflow {self.engine.workflow.id!r} has no file route to read",
                             "add a route 'name: file' to its logging: block, or read from --source tracker")
        if source != "auto":
            return source
        if any(path.exists() for path in self.files):
            return "file"
        if self.engine.plugin_names()["tracker"] == "cloudwatch":
            return "cloudwatch"
        return "tracker"

    def read(self, query: Query) -> list[LogRecord]:
        """The records ``query`` wants, in time order."""
        if self.source == "file":
            found: Iterable[LogRecord] = self._from_files()
        elif self.source == "cloudwatch":
            found = self.cloudwatch_records(query, query.since)
        else:
            found = self._from_tracker(query)
        return merged(found, query)

    # -- file routes -------------------------------------------------------------------------------------------------
    def _from_files(self) -> Iterator[LogRecord]:
        for path in self.files:
            for file in rotated_files(path):
                yield from read_json_lines(file)

    # -- the tracker -------------------------------------------------------------------------------------------------
    def _from_tracker(self, query: Query) -> Iterator[LogRecord]:
        tracker, workflow = self.engine.tracker, self.engine.workflow.id
        for execution_id in self._executions(query):
            for delivery in tracker.history(execution_id).deliveries:
                if not query.functions or delivery.function in query.functions:
                    yield from records_of(workflow, delivery)

    def _executions(self, query: Query) -> list[str]:
        if query.execution_id is not None:
            return [query.execution_id]
        # an execution started before ``since`` may still log after it: read too, its records filtered by their time
        return [info.execution_id for info in self.executions_since(None)]

    def executions_since(self, start: float | None) -> list[ExecutionInfo]:
        """The executions started at ``start`` or later (None: any time), newest first, at most
        :data:`MAX_EXECUTIONS` (a warning says when more were left out)."""
        tracker = self.engine.tracker
        found: list[ExecutionInfo] = []
        cursor = None
        while True:
            page = tracker.list_executions(min(100, MAX_EXECUTIONS - len(found)), cursor)
            for info in page.executions:
                if start is not None and info.started_at < start:
                    return found
                found.append(info)
            cursor = page.next_cursor
            if cursor is None or not page.executions:
                return found
            if len(found) >= MAX_EXECUTIONS:
                log.warning("reading the logs of the %d most recently started executions only; pass --execution-id "
                            "for an older one", MAX_EXECUTIONS)
                return found

    # -- CloudWatch Logs (on AWS) ----------------------------------------------------------------------------------
    def cloudwatch_records(self, query: Query, start: float | None) -> Iterator[LogRecord]:
        """The records of the log events written at ``start`` or later (None: any time), for ``query``'s execution
        and functions (not filtered by time: an attempt's lines carry its start, before the event was written)."""
        from xflow.trackers.cloudwatch.history import LAMBDA_LOG_PREFIX, belongs_to
        from xflow.trackers.cloudwatch.lines import parse_line

        tracker: Any = self.engine.tracker
        client = getattr(tracker, "logs", None)
        if client is None:
            raise XflowError("--source cloudwatch needs the cloudwatch tracker", "pass --tracker cloudwatch")
        workflow = self.engine.workflow
        functions = query.functions or tuple(workflow.functions)
        pattern = f'"{query.execution_id.replace(chr(34), "")}"' if query.execution_id else '"xflow"'
        window = {"startTime": int(start * 1000)} if start is not None else {}
        derived: list[LogRecord] = []
        printed: list[LogRecord] = []
        for function in functions:
            for message in _filter_events(client, LAMBDA_LOG_PREFIX + workflow.resource_name(function), pattern, window):
                if message.startswith('{"time"'):  # a record the shim printed
                    try:
                        printed.append(LogRecord.from_dict(json.loads(message)))
                    except (KeyError, TypeError, ValueError):
                        continue
                elif belongs_to(message, workflow.id):  # a delivery line: its records are made from it
                    parsed = parse_line(message)
                    if isinstance(parsed, DeliveryRecord):
                        derived.extend(records_of(workflow.id, parsed, _trace_of(message)))
        # the records the shim printed win over those made again from its delivery lines (older shims print none)
        yield from derived
        yield from (record for record in printed if record.workflow == workflow.id)


def _trace_of(message: str) -> str | None:
    """The trace id a delivery line carries, if any."""
    try:
        trace = json.loads(message[message.find('{"xflow"'):]).get("trace_id")
    except ValueError:
        return None
    return trace if isinstance(trace, str) else None


def _filter_events(client: Any, group: str, pattern: str, window: dict[str, Any]) -> Iterator[str]:
    from xflow.aws import is_client_error, translate_errors

    with translate_errors(f"reading log group {group}"):
        try:
            for page in client.get_paginator("filter_log_events").paginate(logGroupName=group, filterPattern=pattern,
                                                                            **window):
                for event in page.get("events", []):
                    yield event["message"]
        except Exception as exc:
            if is_client_error(exc, "ResourceNotFoundException"):
                return
            raise


def rotated_files(path: Path) -> list[Path]:
    """A ``file`` route's files, oldest first: ``NAME.N`` ... ``NAME.1``, then ``NAME``."""
    found = []
    for candidate in path.parent.glob(glob.escape(path.name) + ".*"):
        number = candidate.name[len(path.name) + 1:]
        if number.isdigit():
            found.append((int(number), candidate))
    return [candidate for _, candidate in sorted(found, reverse=True)] + [path]


def read_json_lines(path: Path) -> Iterator[LogRecord]:
    """The records of a ``file`` route's file; lines that are not records (a line cut by a crash) are skipped."""
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            for line in file:
                try:
                    yield LogRecord.from_dict(json.loads(line))
                except (KeyError, TypeError, ValueError, AttributeError):
                    continue
    except FileNotFoundError:
        return
    except OSError as exc:
        raise XflowError(f"cannot read {path}: {exc}") from None


def follow(reader: LogReader, query: Query, interval: float = 1.0, stop: Any = None,
           caught_up: Callable[[], None] | None = None) -> Iterator[LogRecord]:
    """The records ``query`` wants, then every new one as it comes: :func:`xflow.logs.following.follow`."""
    from xflow.logs.following import follow as following

    return following(reader, query, interval, stop, caught_up)
