"""The cloudwatch tracker: a CloudWatch Logs group per workflow, a log stream per execution; setup, writing, reading.

Records are JSON lines (:mod:`xflow.trackers.cloudwatch.lines`). The group is ``/xflow/<workflow_id>`` (option
``log_group``), kept ``retention_days`` (default 7); setup creates it, teardown removes it.

When the workflow runs on Lambda, events are written by the ``tracker_<workflow_id>`` function
(same line format) and each function's runtime shim prints its delivery outcomes to the
function's own group ``/aws/lambda/<function>``; :meth:`CloudWatchTracker.history` reads those
too (:mod:`xflow.trackers.cloudwatch.history`), filtered by execution id, and drops duplicates by event id.

An event is written once: the tracker remembers, per execution, the event ids it has seen in the
execution's log stream, and before writing an event it does not know it reads what was added to
the stream since its last look (one GetLogEvents call from a forward token). What another
process writes at the very same moment can still come twice; reading drops such duplicates.

Batches: ``record_events`` and ``record_deliveries`` write each execution's records with one PutLogEvents call
(split only at the call's limits, ``PUT_MAX_EVENTS`` events or ``PUT_MAX_BYTES``; every line of a call carries
the time of the call, so they are in order and span no time), leaving out events already in the stream or met
earlier in the batch.

``has_succeeded`` and ``succeeded_among`` read no whole history on each call. The tracker keeps, per execution
(the ``KNOWN_EXECUTIONS`` used last), the succeeded ``(event_id, function)`` pairs it has written or read, and
answers from them; a key it does not know costs a read of what was added to the stream since its last look
(usually one GetLogEvents call that returns little or nothing; ``succeeded_among`` makes one per execution of the
batch, not one per key). The first look at an execution in a process reads its stream once, in pages of
``LOOKUP_LIMIT`` lines. Delivery outcomes that Lambda functions print to their own groups are not looked at.

Transient failures (throttling, 5xx, dropped connections) are retried: what workers do (writes and the
look-ups before them, ``has_succeeded``) goes through a long-running client (more botocore tries) and
tenacity for up to ``WRITE_SECONDS``; a write whose answer was lost may be stored twice, which reading
drops too. What still fails is :class:`~xflow.core.errors.BackendUnavailable`, which workers wait out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xflow.aws import (
    TAG_KEY,
    AwsSession,
    create_log_group,
    delete_log_group,
    is_client_error,
    retrying,
    set_log_retention,
    translate_errors,
)
from xflow.core.deploy import dispatch
from xflow.core.errors import XflowError
from xflow.core.interfaces import (
    DeliveryRecord,
    EventRecord,
    ExecutionHistory,
    ExecutionInfo,
    ExecutionPage,
    PluginContext,
    Step,
    TrackerStore,
    decode_cursor,
    encode_cursor,
)
from xflow.core.options import Option
from xflow.trackers.cloudwatch.history import function_lines, read_history, stream_lines
from xflow.trackers.cloudwatch.lines import delivery_line, event_line, log_stream_name, parse_line, put_ranges

if TYPE_CHECKING:
    from xflow.core.model import Workflow

log = logging.getLogger("xflow.cloudwatch")

#: executions whose recorded event ids a tracker keeps in memory (least recently used are forgotten)
KNOWN_EXECUTIONS = 1024
#: GetLogEvents pages one look for new lines of a log stream reads at most, and lines per page
LOOKUP_PAGES = 10
LOOKUP_LIMIT = 1000
#: how long (seconds) a write, or a look-up a worker makes, is retried with tenacity after botocore's tries
WRITE_SECONDS = 10.0

@dataclass
class _StreamIndex:
    """The event ids known to be in one execution's log stream, and where reading it stopped."""

    event_ids: set[str] = field(default_factory=set)
    #: the ``(event_id, function)`` pairs with a succeeded delivery known to be in the stream (written or read)
    succeeded: set[tuple[str, str]] = field(default_factory=set)
    #: the forward token after the last line read (None: read from the start)
    token: str | None = None


def _by_execution(records: Iterable[Any]) -> dict[str, list[Any]]:
    """Records grouped by execution (a log stream each), in their order."""
    groups: dict[str, list[Any]] = {}
    for record in records:
        groups.setdefault(record.execution_id, []).append(record)
    return groups


class CloudWatchTracker(TrackerStore):
    name = "cloudwatch"
    description = "CloudWatch Logs: a log group per workflow (7 days), a log stream per execution"
    options = (
        Option("log_group", str, None, "log group name (default /xflow/<workflow_id>)"),
        Option("retention_days", int, 7, "days CloudWatch keeps the records", minimum=1),
        Option("region", str, None, "AWS region (default: aws.region in the file, else AWS_REGION)"),
        Option("function_logs", bool, True, "read delivery outcomes from /aws/lambda/<function> groups too"),
    )

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        aws = dict(context.workflow.aws) if context.workflow is not None else {}
        self.aws = AwsSession(aws, region=self.context.option("region"))
        self.log_group = self.context.option("log_group") or f"/xflow/{self.workflow_id}"
        self.retention_days = self.context.option("retention_days")
        self.function_logs = self.context.option("function_logs")
        self._streams: set[str] = set()
        self._known: OrderedDict[str, _StreamIndex] = OrderedDict()
        self._known_lock = threading.Lock()

    @property
    def logs(self) -> Any:
        return self.aws.client("logs")

    @property
    def writer(self) -> Any:
        """The client for what workers do all the time (writes, look-ups before them): more tries per call."""
        return self.aws.client("logs", long_running=True)

    def lambda_tracking_target(self) -> dict[str, Any]:
        """Lambda functions record here: the shim writes this tracker's lines to its log group (the capability of
        :class:`TrackerStore`); the functions' own log groups are kept as long as the records."""
        return {"log_group": self.log_group, "retention_days": self.retention_days}

    # ------------------------------------------------------------------ setup / teardown

    def _group(self, name: str) -> dict[str, Any] | None:
        with translate_errors(f"describing log group {name}"):
            pages = self.logs.get_paginator("describe_log_groups").paginate(logGroupNamePrefix=name)
            for page in pages:
                for group in page.get("logGroups", []):
                    if group["logGroupName"] == name:
                        return dict(group)
        return None

    def plan_setup(self, workflow: Workflow) -> list[Step]:
        """Create the log group, or set its retention (only reads; :meth:`execute` makes the change)."""
        group = self._group(self.log_group)
        if group is None:
            return [Step("create", f"log-group:{self.log_group}", detail=f"{self.retention_days} days",
                         call="logs:CreateLogGroup",
                         params={"logGroupName": self.log_group, "tags": {TAG_KEY: self.workflow_id},
                                 "retentionInDays": self.retention_days})]
        if group.get("retentionInDays") != self.retention_days:
            return [Step("update", f"log-group:{self.log_group}",
                         detail=f"retention {group.get('retentionInDays')} -> {self.retention_days} days",
                         call="logs:PutRetentionPolicy",
                         params={"logGroupName": self.log_group, "retentionInDays": self.retention_days})]
        return []

    def plan_teardown(self, workflow: Workflow) -> list[Step]:
        if self._group(self.log_group) is None:
            return []
        return [Step("delete", f"log-group:{self.log_group}", call="logs:DeleteLogGroup",
                     params={"logGroupName": self.log_group})]

    def execute(self, step: Step) -> None:
        dispatch(step, {"logs:CreateLogGroup": self._create_group, "logs:PutRetentionPolicy": self._set_retention,
                        "logs:DeleteLogGroup": self._delete_group})

    def _create_group(self, *, logGroupName: str, retentionInDays: int, tags: dict[str, str]) -> None:  # noqa: N803
        """CreateLogGroup with its tags (one that exists is kept), then PutRetentionPolicy with ``retentionInDays``."""
        create_log_group(self.logs, logGroupName, tags.get(TAG_KEY, self.workflow_id), retentionInDays)

    def _set_retention(self, *, logGroupName: str, retentionInDays: int) -> None:  # noqa: N803
        set_log_retention(self.logs, logGroupName, retentionInDays)

    def _delete_group(self, *, logGroupName: str) -> None:  # noqa: N803
        delete_log_group(self.logs, logGroupName)
        if logGroupName == self.log_group:
            self._streams.clear()
            self._known.clear()  # what was written is gone

    # ------------------------------------------------------------------ writing

    def _put(self, execution_id: str, messages: Sequence[str]) -> None:
        """One PutLogEvents call (``messages`` within its limits: see :func:`put_ranges`), retried."""
        # the record's own times are in the line; CloudWatch rejects timestamps older than 14 days. One time for the
        # whole call: its events are in order and span no time
        now = int(time.time() * 1000)
        events = [{"timestamp": now, "message": message} for message in messages]
        retrying(WRITE_SECONDS)(self._put_once, execution_id, events)

    def _make_stream(self, stream: str) -> None:
        try:
            self.writer.create_log_stream(logGroupName=self.log_group, logStreamName=stream)
        except Exception as exc:
            if is_client_error(exc, "ResourceNotFoundException"):
                raise XflowError(f"log group {self.log_group} does not exist",
                                 "run xflow setup for this workflow first") from None
            if not is_client_error(exc, "ResourceAlreadyExistsException"):
                raise
        self._streams.add(stream)

    def _put_once(self, execution_id: str, events: list[dict[str, Any]]) -> None:
        stream = log_stream_name(execution_id)
        with translate_errors(f"writing to log group {self.log_group}"):
            if stream not in self._streams:
                self._make_stream(stream)
            try:
                response = self.writer.put_log_events(logGroupName=self.log_group, logStreamName=stream,
                                                      logEvents=events)
            except Exception as exc:
                if not is_client_error(exc, "ResourceNotFoundException"):
                    raise
                self._streams.discard(stream)  # the stream was deleted meanwhile: make it again, write again
                self._make_stream(stream)
                response = self.writer.put_log_events(logGroupName=self.log_group, logStreamName=stream,
                                                      logEvents=events)
            rejected = response.get("rejectedLogEventsInfo")
            if rejected:
                raise XflowError(f"CloudWatch Logs rejected records of execution {execution_id} in "
                                 f"{self.log_group}: {rejected}")

    def _index(self, execution_id: str) -> _StreamIndex:
        with self._known_lock:
            index = self._known.get(execution_id)
            if index is None:
                index = self._known[execution_id] = _StreamIndex()
                while len(self._known) > KNOWN_EXECUTIONS:
                    self._known.popitem(last=False)
            else:
                self._known.move_to_end(execution_id)
            return index

    def _catch_up(self, execution_id: str, index: _StreamIndex) -> None:
        """Add the event ids and successes written to the execution's log stream since the last look, reading on to
        its end (each call of ``_catch_up_once`` reads at most ``LOOKUP_PAGES`` pages, retried on its own)."""
        while not retrying(WRITE_SECONDS)(self._catch_up_once, execution_id, index):
            pass

    def _catch_up_once(self, execution_id: str, index: _StreamIndex) -> bool:
        """Read up to ``LOOKUP_PAGES`` pages from the last look on; whether the stream's end was reached."""
        stream = log_stream_name(execution_id)
        with translate_errors(f"reading log group {self.log_group}"):
            for _ in range(LOOKUP_PAGES):
                kwargs: dict[str, Any] = {"logGroupName": self.log_group, "logStreamName": stream,
                                          "startFromHead": True, "limit": LOOKUP_LIMIT}
                if index.token:
                    kwargs["nextToken"] = index.token
                try:
                    page = self.writer.get_log_events(**kwargs)
                except Exception as exc:
                    if is_client_error(exc, "ResourceNotFoundException"):
                        return True  # no stream yet: nothing written
                    raise
                for item in page.get("events", []):
                    found = parse_line(item["message"])
                    if found is None or found.execution_id != execution_id:
                        continue
                    if isinstance(found, EventRecord):
                        index.event_ids.add(found.event_id)
                    elif found.status == "succeeded":
                        index.succeeded.add((found.event_id, found.function))
                token = page.get("nextForwardToken")
                if token in (None, index.token):
                    return True
                index.token = token
                events = page.get("events", [])
                # a page under both the count asked for and half of GetLogEvents' 1 MB was not cut short:
                # the stream ends there (saves the call that would only repeat the token)
                if len(events) < LOOKUP_LIMIT and sum(len(e["message"]) for e in events) < 512 * 1024:
                    return True
        return False

    def record_event(self, record: EventRecord) -> None:
        """Write the event unless it is already in the execution's log stream (see the module's notes)."""
        index = self._index(record.execution_id)
        if record.event_id in index.event_ids:
            return
        self._catch_up(record.execution_id, index)
        if record.event_id in index.event_ids:
            return
        self._put(record.execution_id, [event_line(record)])
        index.event_ids.add(record.event_id)

    def record_delivery(self, record: DeliveryRecord) -> None:
        self.record_deliveries([record])

    def record_events(self, records: Sequence[EventRecord]) -> None:
        """Per execution: one look for what its stream holds (only if an event is not known to be there), then one
        PutLogEvents call with the events it lacks, each event id once (the batch's first record of it)."""
        for execution_id, group in _by_execution(records).items():
            index = self._index(execution_id)
            fresh = _first_unknown(group, index.event_ids)
            if fresh:
                self._catch_up(execution_id, index)
                fresh = _first_unknown(fresh, index.event_ids)
            lines = [event_line(record) for record in fresh]
            for start, end in put_ranges(lines):
                self._put(execution_id, lines[start:end])
                index.event_ids.update(record.event_id for record in fresh[start:end])

    def record_deliveries(self, records: Sequence[DeliveryRecord]) -> None:
        """Per execution, one PutLogEvents call (split only at the call's limits); successes are remembered."""
        self.record_batch((), records)

    def record_batch(self, events: Sequence[EventRecord], deliveries: Sequence[DeliveryRecord]) -> None:
        """Per execution, one PutLogEvents call (split only at the call's limits) holding the events its stream lacks
        (as :meth:`record_events` finds them), then the attempts: an attempt's line never comes before the lines of
        the events it published."""
        by_execution: dict[str, tuple[list[EventRecord], list[DeliveryRecord]]] = {}
        for execution_id, group in _by_execution(events).items():
            by_execution[execution_id] = (group, [])
        for execution_id, group in _by_execution(deliveries).items():
            by_execution.setdefault(execution_id, ([], []))[1].extend(group)
        for execution_id, (event_group, delivery_group) in by_execution.items():
            index = self._index(execution_id)
            fresh = _first_unknown(event_group, index.event_ids)
            if fresh:
                self._catch_up(execution_id, index)
                fresh = _first_unknown(fresh, index.event_ids)
            records: list[EventRecord | DeliveryRecord] = [*fresh, *delivery_group]
            lines = [event_line(r) if isinstance(r, EventRecord) else delivery_line(r) for r in records]
            for start, end in put_ranges(lines):
                self._put(execution_id, lines[start:end])
                for record in records[start:end]:
                    if isinstance(record, EventRecord):
                        index.event_ids.add(record.event_id)
                    elif record.status == "succeeded":
                        index.succeeded.add((record.event_id, record.function))

    # ------------------------------------------------------------------ reading

    def function_log_lines(self, function: str, execution_id: str, since_ms: int | None = None) -> list[tuple[int, str]]:
        """The lines of ``/aws/lambda/<function>`` that mention ``execution_id`` (from ``since_ms`` on)."""
        return function_lines(self.logs, function, execution_id, self.workflow_id, since_ms)

    def _functions(self) -> Iterable[str]:
        workflow = self.context.workflow
        # each function's Lambda name (its own, or with the stage's suffix): its log group is /aws/lambda/<that>
        return [workflow.resource_name(f) for f in workflow.functions] if workflow is not None and self.function_logs \
            else []

    def history(self, execution_id: str) -> ExecutionHistory:
        return read_history(self.logs, self.log_group, execution_id, self.workflow_id, self._functions())

    def list_executions(self, limit: int, cursor: str | None = None, status: str | None = None) -> ExecutionPage:
        """The group's log streams, one per execution, from DescribeLogStreams: most recently written first
        (CloudWatch orders streams by their last event, not their first: an execution still running moves up), each
        started at its stream's first event; the cursor holds CloudWatch's nextToken; ``status`` is not used. An
        execution id holding ``:`` or ``*`` is listed under its stream's name (those become ``_``)."""
        limit = max(0, int(limit))
        token = decode_cursor(cursor) if cursor else None
        if token is not None and not isinstance(token, str):
            raise XflowError(f"cursor {cursor!r} is not one this tracker gave",
                             "pass the next_cursor of the previous page, or no cursor for the newest")
        listed: list[ExecutionInfo] = []
        with translate_errors(f"listing the log streams of {self.log_group}"):
            while len(listed) < limit:
                page = self.logs.describe_log_streams(
                    logGroupName=self.log_group, orderBy="LastEventTime", descending=True,
                    limit=min(limit - len(listed), 50), **({"nextToken": token} if token else {}))
                streams = page.get("logStreams", [])
                listed += [ExecutionInfo(s["logStreamName"], (s.get("firstEventTimestamp") or s["creationTime"]) / 1000)
                           for s in streams]
                token = page.get("nextToken")
                if not token or not streams:
                    token = None
                    break
        return ExecutionPage(listed[:limit], encode_cursor(token) if token else None)

    def recent_executions(self, limit: int) -> list[str]:
        """The executions of the most recently written log streams (``track`` names them for an unknown id)."""
        return [info.execution_id for info in self.list_executions(limit).executions]

    def stored_events(self, execution_id: str) -> list[EventRecord]:
        """The event lines of the execution's log stream as written, duplicates included (history drops them)."""
        found = [parse_line(message) for _, message in stream_lines(self.logs, self.log_group, execution_id)]
        return [r for r in found if isinstance(r, EventRecord) and r.execution_id == execution_id]

    def has_succeeded(self, execution_id: str, event_id: str, function: str) -> bool:
        """From the successes known in this process, else a read of what the stream gained since the last look
        (see the module for the cost); read with the long-running client, retried."""
        return (execution_id, event_id, function) in self.succeeded_among([(execution_id, event_id, function)])

    def succeeded_among(self, keys: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        """Like ``has_succeeded`` for each key, with at most one look per execution of the batch."""
        found: set[tuple[str, str, str]] = set()
        wanted: dict[str, set[tuple[str, str]]] = {}
        for execution_id, event_id, function in keys:
            wanted.setdefault(str(execution_id), set()).add((str(event_id), str(function)))
        for execution_id, pairs in wanted.items():
            index = self._index(execution_id)
            if not pairs <= index.succeeded:
                self._catch_up(execution_id, index)
            found.update((execution_id, event_id, function) for event_id, function in pairs & index.succeeded)
        return found


def _first_unknown(records: Iterable[EventRecord], known: set[str]) -> list[EventRecord]:
    """The records whose event id is not in ``known``, each id once (its first record)."""
    seen: set[str] = set()
    fresh = []
    for record in records:
        if record.event_id not in known and record.event_id not in seen:
            seen.add(record.event_id)
            fresh.append(record)
    return fresh
