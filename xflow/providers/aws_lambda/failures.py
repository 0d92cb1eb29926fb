"""Lambda's failure records: their format, sending one (as Lambda does), and reading them back into the tracker.

Lambda gives up on a Kinesis batch when an invocation keeps failing as a whole (a timeout, running out of memory, the
runtime exiting) until the mapping's retries are used up. Nothing of xflow's runs then, so without a destination no
record of the failure is left. Setup gives every subscriber's event source mapping an on-failure destination, the
queue ``xflow-<workflow>-failures`` (:class:`~xflow.providers.aws_lambda.mappings.FailureQueue`); Lambda (or ``xflow
emulate``) sends it a record that names the function, the condition, how often the batch was invoked and where the
batch lies in its shard, but holds no record bodies.
:func:`collect_failures` reads the batch back from the stream by sequence number to learn the execution and event ids,
records each event's attempts for that function in the tracker (the last one ``failed``, with the reason found in the
function's log for that request, else the condition), and deletes the message only then. A message seen twice records
nothing new: an event the function already settled for good is skipped, and so are attempts already recorded.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from xflow.aws import AwsSession, is_client_error, translate_errors
from xflow.core.errors import XflowError
from xflow.core.interfaces import DeliveryRecord, EventRecord, TrackerStore, Transport

if TYPE_CHECKING:
    from xflow.core.model import Workflow
    from xflow.providers.aws_lambda.mappings import FailureQueue

log = logging.getLogger("xflow.lambda")

#: what Lambda writes in ``requestContext.condition`` when a batch used up its retries
RETRIES_EXHAUSTED = "RetryAttemptsExhausted"
#: how many lines of the failed invocation's log a failure record keeps
MAX_LOG_LINES = 200
_TIMED_OUT = re.compile(r"Task timed out after [\d.]+ seconds")
_RUNTIME_EXIT = re.compile(r"Runtime exited (with error: .*|without providing a reason.*)")


def _iso(epoch: float) -> str:
    # timezone.utc, not datetime.UTC: that is new in Python 3.11 and xflow runs on 3.10
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(epoch * 1000) % 1000:03d}Z"


def kinesis_failure_record(*, request_id: str, function_arn: str, invoke_count: int, function_error: str | None,
                           shard_id: str, start_sequence: str, end_sequence: str, batch_size: int, stream_arn: str,
                           first_arrival: float, last_arrival: float, condition: str = RETRIES_EXHAUSTED,
                           now: float | None = None) -> dict[str, Any]:
    """The record Lambda sends to an SQS on-failure destination for a Kinesis batch it discarded."""
    response: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
    if function_error:
        response["functionError"] = function_error
    return {
        "requestContext": {"requestId": request_id, "functionArn": function_arn, "condition": condition,
                           "approximateInvokeCount": int(invoke_count)},
        "responseContext": response,
        "version": "1.0",
        "timestamp": _iso(time.time() if now is None else now),
        "KinesisBatchInfo": {"shardId": shard_id, "startSequenceNumber": start_sequence,
                             "endSequenceNumber": end_sequence, "approximateArrivalOfFirstRecord": _iso(first_arrival),
                             "approximateArrivalOfLastRecord": _iso(last_arrival), "batchSize": int(batch_size),
                             "streamArn": stream_arn},
    }


@dataclass(frozen=True)
class FailedBatch:
    """What one failure record says."""

    function: str
    condition: str
    function_error: str | None
    invoke_count: int
    request_id: str
    shard_id: str
    start_sequence: str
    end_sequence: str
    batch_size: int
    stream_arn: str
    timestamp: float

    @property
    def stream(self) -> str:
        return self.stream_arn.rpartition("/")[2]


def parse_failure_record(body: str) -> FailedBatch | None:
    """The failure record in an SQS message body, or None when it is not a Kinesis one."""
    try:
        record = json.loads(body)
        request, response = record.get("requestContext") or {}, record.get("responseContext") or {}
        batch = record["KinesisBatchInfo"]
        function = str(request["functionArn"]).rpartition(":function:")[2].partition(":")[0]
        try:
            stamp = datetime.fromisoformat(str(record.get("timestamp")).replace("Z", "+00:00")).timestamp()
        except ValueError:
            stamp = time.time()
        found = FailedBatch(function, str(request.get("condition") or RETRIES_EXHAUSTED),
                            response.get("functionError") or None, max(1, int(request.get("approximateInvokeCount") or 1)),
                            str(request.get("requestId") or ""), str(batch["shardId"]),
                            str(batch["startSequenceNumber"]), str(batch["endSequenceNumber"]),
                            int(batch.get("batchSize") or 0), str(batch["streamArn"]), stamp)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return found if function and found.start_sequence.isdigit() and found.end_sequence.isdigit() else None


def send_failure_record(aws: AwsSession, destination_arn: str, record: dict[str, Any]) -> None:
    """Send ``record`` to the SQS queue ``destination_arn`` (what Lambda does with a discarded batch)."""
    parts = destination_arn.split(":")
    if len(parts) != 6 or parts[2] != "sqs":
        log.warning("on-failure destination %s is not an SQS queue; the failure record is not sent", destination_arn)
        return
    sqs = aws.client("sqs")
    with translate_errors(f"sending a failure record to {parts[5]}"):
        url = sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(record))


# ---------------------------------------------------------------------------------------------- reading back


def read_batch(aws: AwsSession, batch: FailedBatch) -> list[dict[str, Any]] | None:
    """The stream's records from ``start_sequence`` to ``end_sequence`` of the batch's shard; None when the stream,
    the shard or the records are gone (deleted, or past the stream's retention)."""
    kinesis = aws.client("kinesis")
    start, end = int(batch.start_sequence), int(batch.end_sequence)
    found: list[dict[str, Any]] = []
    with translate_errors(f"reading the failed batch back from {batch.stream}/{batch.shard_id}"):
        try:
            iterator = kinesis.get_shard_iterator(StreamName=batch.stream, ShardId=batch.shard_id,
                                                  ShardIteratorType="AT_SEQUENCE_NUMBER",
                                                  StartingSequenceNumber=batch.start_sequence)["ShardIterator"]
        except Exception as exc:
            if is_client_error(exc, "ResourceNotFoundException", "InvalidArgumentException"):
                return None
            raise
        empty = 0
        limit = min(10_000, max(1, batch.batch_size or 100))
        while iterator and empty < 5 and len(found) < limit:
            response = kinesis.get_records(ShardIterator=iterator, Limit=limit)
            records = response.get("Records") or []
            for record in records:
                sequence = int(record["SequenceNumber"])
                if sequence > end:
                    return found
                if sequence >= start:
                    found.append(record)
            if not records:
                if not response.get("MillisBehindLatest"):
                    break
                empty += 1
            iterator = response.get("NextShardIterator")
    return found


def invocation_log(aws: AwsSession, batch: FailedBatch) -> list[str]:
    """The lines the failed request wrote to ``/aws/lambda/<function>`` (START to REPORT), [] when not found yet."""
    if not batch.request_id:
        return []
    logs = aws.client("logs")
    group = f"/aws/lambda/{batch.function}"
    around = int(batch.timestamp * 1000)
    try:
        with translate_errors(f"reading log group {group}"):
            hits = logs.filter_log_events(logGroupName=group, filterPattern=f'"{batch.request_id}"',
                                          startTime=around - 20 * 60_000, endTime=around + 5 * 60_000,
                                          limit=50).get("events") or []
            start = next((h for h in hits if h.get("message", "").startswith(f"START RequestId: {batch.request_id}")),
                         None)
            if start is None:
                return [h["message"] for h in hits]
            page = logs.get_log_events(logGroupName=group, logStreamName=start["logStreamName"],
                                       startTime=int(start["timestamp"]), startFromHead=True, limit=1000)
    except XflowError as exc:  # no log group (never invoked here), no permission: the reason falls back
        log.debug("log of request %s not readable: %s", batch.request_id, exc)
        return []
    lines: list[str] = []
    inside = False
    for event in page.get("events") or []:
        message = str(event.get("message", "")).rstrip("\n")
        if message.startswith(f"START RequestId: {batch.request_id}"):
            inside = True
            continue
        if not inside:
            continue
        if message.startswith((f"END RequestId: {batch.request_id}", f"REPORT RequestId: {batch.request_id}")):
            break
        lines.append(message)
    return lines[-MAX_LOG_LINES:]


def failure_reason(batch: FailedBatch, lines: Sequence[str]) -> str:
    """'Lambda invocation failed: ...' with what the function's log says, else the record's condition."""
    detail = None
    for line in reversed(lines):
        match = _TIMED_OUT.search(line) or _RUNTIME_EXIT.search(line)
        if match:
            detail = match.group(0).strip()
            break
        start = line.find('{"errorMessage"')
        if start >= 0:
            try:
                error = json.loads(line[start:])
                detail = f"{error.get('errorType') or 'Error'}: {error.get('errorMessage')}"
                break
            except ValueError:
                pass
    invocations = f"{batch.invoke_count} invocation{'s' if batch.invoke_count != 1 else ''}"
    if detail is None:
        detail = f"functionError {batch.function_error}" if batch.function_error else "the batch was discarded"
    return f"Lambda invocation failed: {detail} ({batch.condition} after {invocations})"


def collect_failures(aws: AwsSession, workflow: Workflow, transport: Transport, tracker: TrackerStore,
                     queue: FailureQueue, max_messages: int = 1000) -> int:
    """Record the failure records waiting in ``queue`` in ``tracker``; returns how many deliveries were recorded.

    Each message is deleted once what it says is recorded (or when it can never be: not a Kinesis failure record, a
    function the workflow no longer has, records gone from the stream); a message whose recording failed stays, and
    is read again later."""
    url = queue.url()
    if url is None:
        return 0
    sqs = aws.client("sqs")
    events_by_stream = {transport.stream_name(event): event for event in workflow.events}
    recorded = seen = 0
    while seen < max_messages:
        with translate_errors(f"reading SQS queue {queue.name}"):
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                           VisibilityTimeout=60).get("Messages") or []
        if not messages:
            break
        for message in messages:
            seen += 1
            batch = parse_failure_record(message.get("Body", ""))
            if batch is None:
                log.warning("%s: a message that is not a Kinesis failure record is removed: %.200s", queue.name,
                            message.get("Body", ""))
            elif batch.function not in set(map(workflow.resource_name, workflow.functions)):  # Lambda's names
                log.warning("%s: a failure record of %s, not a function of workflow %s, is removed", queue.name,
                            batch.function, workflow.id)
            else:
                recorded += record_failed_batch(aws, workflow, tracker, batch, events_by_stream)
            with translate_errors(f"deleting a message of SQS queue {queue.name}"):
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return recorded


def record_failed_batch(aws: AwsSession, workflow: Workflow, tracker: TrackerStore, batch: FailedBatch,
                        events_by_stream: dict[str, str]) -> int:
    """Record, for each event of the batch, the function's attempts on it (the last one ``failed``)."""
    from xflow.core.runtime import BadMessage, decode_event

    event_name = events_by_stream.get(batch.stream)
    if event_name is None:
        log.warning("%s: stream %s is not one of the workflow's; its failure record is removed", workflow.id,
                    batch.stream)
        return 0
    records = read_batch(aws, batch)
    if records is None:
        log.warning("%s: the batch %s..%s of %s/%s that %s failed on is no longer in the stream; nothing recorded",
                    workflow.id, batch.start_sequence, batch.end_sequence, batch.stream, batch.shard_id, batch.function)
        return 0
    # the function as the workflow names it (its Lambda function's name has the stage's suffix)
    function = next((name for name in workflow.functions if workflow.resource_name(name) == batch.function),
                    batch.function)
    decoded = []
    for record in records:
        try:
            decoded.append(decode_event(bytes(record["Data"]),
                                        f"{batch.stream}:{batch.shard_id}:{record['SequenceNumber']}"))
        except BadMessage:  # the shim sets those aside with their reason
            continue
    if not decoded:
        return 0
    lines = invocation_log(aws, batch)
    reason = failure_reason(batch, lines)
    deliveries: list[DeliveryRecord] = []
    histories: dict[str, dict[str, list[DeliveryRecord]]] = {}
    for event in decoded:
        if event.execution_id not in histories:
            known: dict[str, list[DeliveryRecord]] = {}
            for delivery in tracker.history(event.execution_id).deliveries:
                if delivery.function == function:
                    known.setdefault(delivery.event_id, []).append(delivery)
            histories[event.execution_id] = known
        earlier = histories[event.execution_id].get(event.event_id, [])
        if any(d.status in ("succeeded", "failed") for d in earlier):
            continue  # settled already: by the shim, or by this record read before
        have = {d.attempt for d in earlier}
        for attempt in range(1, batch.invoke_count + 1):
            if attempt in have:
                continue
            last = attempt == batch.invoke_count
            deliveries.append(DeliveryRecord(event.execution_id, event.event_id, event_name, function, attempt,
                                             "failed" if last else "retrying",
                                             batch.timestamp - (batch.invoke_count - attempt) / 1000, 0.0, reason,
                                             tuple(lines) if last else ()))
    if deliveries:
        settled = {d.event_id for d in deliveries}
        tracker.record_events([EventRecord(e.execution_id, e.event_id, event_name, e.published_at, e.producer, e.data)
                               for e in decoded if e.event_id in settled])
        tracker.record_deliveries(deliveries)
    return len(deliveries)
