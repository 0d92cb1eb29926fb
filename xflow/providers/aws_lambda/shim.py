"""The runtime shim packaged into every xflow Lambda zip (standard library + boto3 only).

The zip holds this module as ``lambda_shim.py``, xflow's handler runtime as ``xflow_runtime.py``,
``xflow_function.json`` (what this function is) and the user's code under ``function/``.

``handle`` (user functions): decodes the Kinesis records of the batch, calls the handler with the
same contract as locally (``xflow_runtime.call_handler``), publishes the handler's events to their
streams with ids derived from the handled event's id (CloudEvents with ``source``
``xflow/<workflow>/<function>`` and the hop count ``xflowhops`` one more than the handled event's),
prints one JSON line per delivery outcome
(``{"xflow": "delivery", execution_id, event_id, function, attempt, status, error, logs}``) and
answers ``{"batchItemFailures": [...]}``: the first failing record and those after it on its
shard, so Lambda retries from there and keeps order. The attempt number is counted from the
function's earlier failure lines; once ``retries`` is used up the failure is final (``failed``)
and the shard moves on, as when Lambda discards a record after its last retry. A record that is
not an event, or that breaks the shim, is set aside with a ``dead_letter`` line; an event more
than ``hop_limit`` handler publishes away from the event published from outside, or whose budget
(``xflowbudget``: the deliveries it and the events after it may still make, out of ``event_limit``) is
below its number of subscribers, is not handled and is reported ``failed`` at once, as the local worker does.

Each delivery line is followed by the attempt's structured log records, one JSON line each (``{"time", "level",
"workflow", "execution_id", "event", "event_id", "function", "attempt", "message", "trace_id", "kind", "status",
"seq"}``, :mod:`xflow.logs.records`, shipped as ``xflow_logrecords.py``): the same records log routes send from a
local worker, for CloudWatch Logs subscriptions and ``xflow logs``.

Each delivery line (and dead letter) also carries CloudWatch metrics in the embedded metric format (namespace
``xflow``, dimensions ``workflow_id``, ``function`` and ``status``: ``Deliveries``, ``HandlerDuration`` in ms,
``EventsPublished``; ``DeadLetters``), which CloudWatch Logs extracts from the function's log group. Published
events continue the W3C trace context of the handled event (``xflow_tracing.py``); with OpenTelemetry importable in
the function and its settings given (``OTEL_EXPORTER_OTLP_ENDPOINT``...), the deliver, handler and publish spans
are sent before each invocation returns.

``track`` (the ``tracker_<workflow_id>`` function): writes every event of the batch into the
workflow's log group, one log stream per execution id.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

if TYPE_CHECKING:  # type checkers read the original; the zip holds no xflow package
    from xflow.core import runtime
    from xflow.logs import records as logrecords
    from xflow.monitoring import tracing
else:
    import xflow_logrecords as logrecords  # (the copy of xflow/logs/records.py)
    import xflow_runtime as runtime  # (the copy of xflow/core/runtime.py next to this file)
    import xflow_tracing as tracing  # (the copy of xflow/monitoring/tracing.py)

CONFIG_FILE = "xflow_function.json"
DEPLOYMENT_VARIABLE = "XFLOW_DEPLOYMENT"
MAX_LINE_CHARS = 200_000
_config: dict[str, Any] | None = None
_clients: dict[str, Any] = {}


def config() -> dict[str, Any]:
    """``xflow_function.json`` with the deployment's names over it (``XFLOW_DEPLOYMENT``: the stage's workflow id, its
    streams or their common prefix, the tracker's log group), so that every stage runs the same zip."""
    global _config
    if _config is None:
        loaded = json.loads((HERE / CONFIG_FILE).read_text(encoding="utf-8"))
        loaded.update(json.loads(os.environ.get(DEPLOYMENT_VARIABLE) or "{}"))
        if "streams" not in loaded:
            prefix = loaded.get("stream_prefix", f"{loaded['workflow_id']}-")
            loaded["streams"] = {event: prefix + event for event in loaded.get("events", [])}
        _config = loaded
    return _config


def client(service: str) -> Any:
    if service not in _clients:
        import boto3
        from botocore.config import Config

        _clients[service] = boto3.client(service, config=Config(connect_timeout=3, read_timeout=20,
                                                                 retries={"max_attempts": 3, "mode": "standard"}))
    return _clients[service]


def _dumps(data: Mapping[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (say, in a handler's log lines): escaped, as UTF-8 cannot carry them
        text = json.dumps(data, ensure_ascii=True, default=str)
    return text


#: the namespace of the shim's metrics (the dashboard setup makes reads it: monitoring.METRICS_NAMESPACE)
METRICS_NAMESPACE = "xflow"


def embedded_metrics(line: Mapping[str, Any]) -> dict[str, Any]:
    """The CloudWatch embedded-metric-format fields of a delivery or dead-letter line (its dimensions are the line's
    own ``workflow_id``, ``function`` and, for a delivery, ``status``)."""
    if line.get("xflow") == "delivery":
        dimensions = [["workflow_id", "function"], ["workflow_id", "function", "status"]]
        values = {"Deliveries": 1, "HandlerDuration": round(float(line.get("duration") or 0.0) * 1000, 3),
                  "EventsPublished": int(line.get("published") or 0)}
        units = {"Deliveries": "Count", "HandlerDuration": "Milliseconds", "EventsPublished": "Count"}
    else:
        dimensions, values, units = [["workflow_id", "function"]], {"DeadLetters": 1}, {"DeadLetters": "Count"}
    return {"_aws": {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": [{
        "Namespace": METRICS_NAMESPACE, "Dimensions": dimensions,
        "Metrics": [{"Name": name, "Unit": unit} for name, unit in units.items()]}]}, **values}


def emit(line: Mapping[str, Any]) -> None:
    """Print one JSON line (Lambda sends stdout to /aws/lambda/<function>); deliveries and dead letters with their
    embedded metrics."""
    data = dict(line)
    if data.get("xflow") in ("delivery", "dead_letter"):
        data.setdefault("workflow_id", config().get("workflow_id", ""))
        data.update(embedded_metrics(data))
    text = _dumps(data)
    while len(text.encode("utf-8")) > MAX_LINE_CHARS and data.get("logs"):
        data["logs"] = data["logs"][len(data["logs"]) // 2 + 1:]
        text = _dumps(data)
    print(text, flush=True)
    if data.get("xflow") == "delivery":
        emit_records(line)


#: what a delivery line says of its attempt, as a log record reads it
_ATTEMPT_FIELDS = ("execution_id", "event_id", "event", "function", "attempt", "status", "started_at", "duration",
                   "error")


def emit_records(line: Mapping[str, Any]) -> None:
    """A delivery's structured log records, one JSON line each (the fields of ``xflow.logs.records``, as log routes
    send them: one per line its handler logged or printed, then the outcome), after its delivery line."""
    attempt: Any = SimpleNamespace(**{key: line.get(key) for key in _ATTEMPT_FIELDS}, logs=tuple(line.get("logs") or ()))
    attempt.duration = float(attempt.duration or 0.0)
    texts = []
    for record in logrecords.records_of(str(line.get("workflow_id") or ""), attempt, line.get("trace_id")):
        if len(record.message) > MAX_LINE_CHARS // 2:
            record.message = record.message[:MAX_LINE_CHARS // 2] + " [xflow: cut]"
        texts.append(record.to_json().encode("utf-8", "backslashreplace").decode("utf-8"))
    print("\n".join(texts), flush=True)


def kinesis_records(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The batch's records: item id (sequence number), stream name, shard, partition key, bytes."""
    found = []
    for record in event.get("Records") or []:
        kinesis = record.get("kinesis") or {}
        arn = str(record.get("eventSourceARN", ""))
        event_id = str(record.get("eventID", ""))
        found.append({
            "item": kinesis.get("sequenceNumber", ""),
            "stream": arn.rpartition("/")[2],
            "shard": event_id.partition(":")[0],
            "key": kinesis.get("partitionKey"),
            "value": base64.b64decode(kinesis.get("data", "")),
            "arrived": kinesis.get("approximateArrivalTimestamp"),
        })
    return found


def _xflow_line(message: str) -> dict[str, Any] | None:
    """The record of one of xflow's JSON log lines (``{"xflow": ...}``, after what Lambda prints before it), or None."""
    start = message.find('{"xflow"')
    if start < 0:
        return None
    try:
        line = json.loads(message[start:])
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


def _earlier_failures(function: str, execution_id: str, event_id: str, since: float) -> int:
    """How many failed attempts this function already logged for this event since it was published (best effort)."""
    group = f"/aws/lambda/{os.environ.get('AWS_LAMBDA_FUNCTION_NAME') or function}"  # a stage's name differs
    count = 0
    try:
        paginator = client("logs").get_paginator("filter_log_events")
        for page in paginator.paginate(logGroupName=group, filterPattern='"' + event_id + '"',
                                       startTime=max(0, int((since - 300) * 1000))):
            for item in page.get("events", []):
                line = _xflow_line(item.get("message", ""))
                if line is None:
                    continue
                if (line.get("xflow") == "delivery" and line.get("event_id") == event_id
                        and line.get("execution_id") == execution_id and line.get("status") != "succeeded"):
                    count += 1
    except Exception:  # no log group yet, or no permission: count what we know
        return count
    return count


def _publish(cfg: Mapping[str, Any], published: list[tuple[str, dict[str, Any]]], parent_id: str,
             execution_id: str, hops: int = 0, handled: tuple[str | None, str | None] = (None, None),
             spans: tracing.Spans | None = None, context: Any = None, budget: int | None = None) -> None:
    """Publish the handler's events; their trace context continues ``handled`` (the handled event's traceparent and
    tracestate), through a publish span each, children of ``context``, when ``spans`` are on."""
    by_stream: dict[str, list[dict[str, Any]]] = {}
    source = f"xflow/{cfg['workflow_id']}/{cfg['function']}"
    for index, (name, data) in enumerate(published):
        stream = cfg["streams"].get(name)
        if stream is None:
            raise ValueError(f"published {name!r}, which is not an event of workflow {cfg['workflow_id']!r}")
        event_id = runtime.derive_event_id(parent_id, cfg["function"], index)
        trace, state = (spans.publish(cfg["workflow_id"], name, execution_id, event_id, context)
                        if spans is not None and context is not None else
                        tracing.continued(handled[0], handled[1], event_id, execution_id))
        value = runtime.encode_event(name, data, execution_id, event_id, source, hops=hops + 1, traceparent=trace,
                                     tracestate=state, budget=budget)
        by_stream.setdefault(stream, []).append({"Data": value, "PartitionKey": execution_id})
    if not by_stream:
        return
    kinesis = client("kinesis")
    for stream, entries in by_stream.items():
        for start in range(0, len(entries), 500):
            pending = entries[start:start + 500]
            for attempt in range(6):
                response = kinesis.put_records(StreamName=stream, Records=pending)
                if not response.get("FailedRecordCount"):
                    break
                pending = [e for e, r in zip(pending, response["Records"], strict=True) if r.get("ErrorCode")]
                time.sleep(0.1 * 2 ** attempt)
            else:
                raise RuntimeError(f"{len(pending)} record(s) not accepted by stream {stream}")


def handle(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """The Lambda handler of a user function (Kinesis event source, ReportBatchItemFailures)."""
    cfg = config()
    function = cfg["function"]
    events_by_stream = {stream: name for name, stream in cfg["streams"].items()}
    failures: list[dict[str, str]] = []
    logger = logging.getLogger(f"xflow.function.{function}")
    logger.setLevel(logging.DEBUG)
    spans = tracing.spans()  # OpenTelemetry, when importable here and configured (None: the context is carried)
    for record in kinesis_records(event):
        if failures:  # keep per-shard order: everything after a failure is retried with it
            failures.append({"itemIdentifier": record["item"]})
            continue
        event_name = events_by_stream.get(record["stream"], record["stream"])
        fallback = f"{record['stream']}:{record['shard']}:{record['item']}"
        try:
            decoded = runtime.decode_event(record["value"], fallback_id=fallback)
        except runtime.BadMessage as exc:
            emit({"xflow": "dead_letter", "function": function, "event": event_name, "event_id": fallback,
                  "error": str(exc)})
            continue
        try:
            retry = _handle_record(cfg, record, event_name, decoded, logger, spans)
        except Exception as exc:  # no record may stop the shard: set it aside with the reason
            emit({"xflow": "dead_letter", "function": function, "event": event_name, "event_id": decoded.event_id,
                  "execution_id": decoded.execution_id, "error": f"cannot settle the record at {fallback}: "
                                                                  f"{type(exc).__name__}: {exc}"[:8000]})
            continue
        if retry:
            failures.append({"itemIdentifier": record["item"]})
    if spans is not None:
        spans.flush()  # before the invocation returns: Lambda freezes the process after it
    return {"batchItemFailures": failures}


def _handle_record(cfg: Mapping[str, Any], record: Mapping[str, Any], event_name: str,
                   decoded: runtime.DecodedEvent, logger: logging.Logger, spans: tracing.Spans | None = None) -> bool:
    """Run the handler on one event and print its outcome; True when the record is to be retried."""
    function, workflow_id = cfg["function"], cfg["workflow_id"]
    retries = int(cfg.get("retries", 0))
    hop_limit = int(cfg.get("hop_limit") or runtime.DEFAULT_HOP_LIMIT)
    started = time.time()
    line = {"xflow": "delivery", "execution_id": decoded.execution_id, "event_id": decoded.event_id,
            "event": event_name, "function": function, "workflow_id": workflow_id, "started_at": started,
            "trace_id": tracing.trace_id(decoded.traceparent)}
    event_limit = int(cfg.get("event_limit") or runtime.DEFAULT_EVENT_LIMIT)
    subscribers = max(1, int((cfg.get("subscribers") or {}).get(event_name) or 1))
    budget = event_limit if decoded.budget is None else decoded.budget
    if budget < subscribers:
        emit({**line, "duration": 0.0, "logs": [], "attempt": 1, "status": "failed",
              "error": f"execution {decoded.execution_id} exceeded the event limit of {event_limit} deliveries from "
                       f"one event published from outside; a cycle that fans out? ({event_name} {decoded.event_id} "
                       f"has a budget of {budget} deliveries left for its {subscribers} subscribers; raise "
                       "general.event_limit in the workflow file if this is intended)"})
        return False
    if decoded.hops > hop_limit:
        emit({**line, "duration": 0.0, "logs": [], "attempt": 1, "status": "failed",
              "error": f"execution {decoded.execution_id} exceeded the hop limit of {hop_limit} events; a cycle? "
                       f"({event_name} {decoded.event_id} is {decoded.hops} handler publishes away from the event "
                       "published from outside; raise general.hop_limit in the workflow file if this is intended)"})
        return False
    known = _attempts.get(decoded.event_id, 0)
    ctx = runtime.HandlerContext(decoded.execution_id, event_name, decoded.event_id, known + 1, workflow_id,
                                 function, logger)
    try:
        handler = runtime.load_handler(HERE / cfg["source"], cfg["handler"], keep_imports=True)  # this process is the function's
    except runtime.HandlerLoadError as exc:
        outcome = runtime.HandlerOutcome(False, [], [], f"HandlerLoadError: {exc}", 0.0)
    else:
        outcome = runtime.call_handler(handler, decoded.data, ctx, list(cfg.get("publishes", [])))
    error = outcome.error
    context = None if spans is None else spans.attempt(
        workflow_id, function, event_name, decoded.execution_id, decoded.event_id, known + 1, decoded.traceparent,
        decoded.tracestate, started, outcome.duration, time.time(), outcome.error)
    if outcome.ok:
        try:
            _publish(cfg, outcome.published, decoded.event_id, decoded.execution_id, decoded.hops,
                     (decoded.traceparent, decoded.tracestate), spans, context,
                     runtime.child_budget(budget, subscribers, len(outcome.published)))
        except Exception as exc:
            error = f"publishing failed: {type(exc).__name__}: {exc}"
    line.update(duration=outcome.duration, logs=outcome.logs)
    if error is None:
        emit({**line, "attempt": known + 1, "status": "succeeded", "error": None, "published": len(outcome.published)})
        _attempts.pop(decoded.event_id, None)
        return False
    attempt = max(known, _earlier_failures(function, decoded.execution_id, decoded.event_id,
                                                 decoded.published_at)) + 1
    final = attempt > retries
    if final:
        _attempts.pop(decoded.event_id, None)
    else:
        _attempts[decoded.event_id] = attempt
    emit({**line, "attempt": attempt, "status": "failed" if final else "retrying", "error": error[:8000]})
    return not final


#: failed attempts seen by this (warm) process, per event id
_attempts: dict[str, int] = {}


def _stream_name(execution_id: str) -> str:
    return re.sub(r"[:*]", "_", execution_id)[:512]


def _logged_event_ids(logs: Any, group: str, stream: str, pages: int = 10) -> set[str]:
    """The ids of the events already written to a log stream (what the CLI's publish wrote; a batch seen before)."""
    found: set[str] = set()
    kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True, "limit": 1000}
    for _ in range(pages):
        page = logs.get_log_events(**kwargs)
        for item in page.get("events", []):
            line = _xflow_line(item.get("message", ""))
            if line is not None and line.get("xflow") == "event" and line.get("event_id"):
                found.add(str(line["event_id"]))
        token = page.get("nextForwardToken")
        if not page.get("events") or token in (None, kwargs.get("nextToken")):
            break
        kwargs["nextToken"] = token
    return found


def track(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """The Lambda handler of ``tracker_<workflow_id>``: every event into the workflow's log group, once."""
    cfg = config()
    group = cfg["log_group"]
    events_by_stream = {stream: name for name, stream in cfg["streams"].items()}
    lines: dict[str, list[dict[str, Any]]] = {}
    ids: dict[str, list[str]] = {}
    now = int(time.time() * 1000)
    for record in kinesis_records(event):
        event_name = events_by_stream.get(record["stream"], record["stream"])
        fallback = f"{record['stream']}:{record['shard']}:{record['item']}"
        try:
            decoded = runtime.decode_event(record["value"], fallback_id=fallback)
        except runtime.BadMessage as exc:
            emit({"xflow": "dead_letter", "function": cfg["function"], "event": event_name, "event_id": fallback,
                  "error": str(exc)})
            continue
        published_at = decoded.published_at
        if decoded.producer == "external" and isinstance(record.get("arrived"), int | float):
            published_at = float(record["arrived"])  # another producer's record: dated by its arrival on the stream
        line = {"xflow": "event", "execution_id": decoded.execution_id, "event_id": decoded.event_id,
                "event": event_name, "published_at": published_at, "producer": decoded.producer,
                "data": decoded.data}
        text = json.dumps(line, ensure_ascii=False, default=str)
        if len(text.encode("utf-8")) > MAX_LINE_CHARS:
            line["data"], line["data_truncated"] = None, True
            text = json.dumps(line, ensure_ascii=False, default=str)
        lines.setdefault(_stream_name(decoded.execution_id), []).append({"timestamp": now, "message": text})
        ids.setdefault(_stream_name(decoded.execution_id), []).append(decoded.event_id)
    logs = client("logs")
    written = 0
    for stream, all_items in lines.items():
        try:
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
        except Exception as exc:
            if "ResourceAlreadyExists" not in type(exc).__name__ + str(exc):
                raise
        known = _logged_event_ids(logs, group, stream)
        items = []
        for event_id, item in zip(ids[stream], all_items, strict=True):
            if event_id not in known:
                known.add(event_id)
                items.append(item)
        written += len(items)
        batch: list[dict[str, Any]] = []
        size = 0
        to_send: list[dict[str, Any] | None] = [*items, None]  # None: the end, which sends the last batch
        for entry in to_send:
            cost = len(entry["message"].encode("utf-8")) + 26 if entry else 0
            if batch and (entry is None or len(batch) >= 1000 or size + cost > 1_000_000):
                logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
                batch, size = [], 0
            if entry:
                batch.append(entry)
                size += cost
    print(json.dumps({"xflow": "tracked", "records": written}), flush=True)
    return {"batchItemFailures": []}
