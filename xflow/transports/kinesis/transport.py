"""The kinesis transport: one Amazon Kinesis data stream per workflow event (boto3); setup, publish, subscribe.

- stream name: ``<workflow_id>-<event>``, tagged ``xflow:workflow=<workflow_id>``; shard count from
  the ``shards`` option (default 1); setup creates missing streams, reshards, removes this
  workflow's streams that the file no longer names; teardown removes them and the lease table;
- publish: ``PutRecords`` in batches within 500 records / 5 MB, partition key = execution id, at most
  one record per key in a call so that a partial failure cannot reorder an execution's records;
  refused records retried with backoff and jitter; a record over 1 MB is an error naming the event;
- subscribe (for the ``local`` provider / ``xflow worker``): a :class:`~xflow.transports.kinesis.consumer.
  KinesisConsumer` over the DynamoDB lease table of :mod:`xflow.transports.kinesis.leases` (made on first
  subscribe).

Endpoint and credentials: :mod:`xflow.aws` (``AWS_ENDPOINT_URL`` honoured).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tenacity import RetryCallState

from xflow.aws import TAG_KEY, AwsSession, ServiceBusy, is_client_error, retrying, translate_errors
from xflow.core.deploy import dispatch
from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.interfaces import Consumer, Delivery, PartitionLag, PluginContext, Record, Step, Transport
from xflow.core.options import Option
from xflow.transports.kinesis.consumer import KinesisConsumer
from xflow.transports.kinesis.lag import group_lag
from xflow.transports.kinesis.leases import LeaseTable, table_definition

log = logging.getLogger("xflow.kinesis")

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
MAX_KEY_CHARS = 256
#: a publish fails when PutRecords stored nothing this many calls in a row, or for this many seconds
PUT_ATTEMPTS = 8
PUT_SECONDS = 30.0
#: the first and the longest wait after a call that left records unstored (seconds; exponential, with jitter)
PUT_FIRST_WAIT = 0.05
PUT_MAX_WAIT = 2.0


def _session_for(context: PluginContext) -> AwsSession:
    aws = dict(context.workflow.aws) if context.workflow is not None else {}
    return AwsSession(aws, region=context.option("region"))


class KinesisTransport(Transport):
    name = "kinesis"
    description = "Amazon Kinesis Data Streams: one stream per event, partition key = execution id"
    options = (
        Option("shards", int, 1, "shards per stream", minimum=1),
        Option("region", str, None, "AWS region (default: aws.region in the file, else AWS_REGION)"),
        Option("lease_seconds", "duration", 20.0, "how long a worker's shard lease lasts without renewal", minimum=1),
        Option("checkpoint_table", str, None, "DynamoDB table for consumer checkpoints (default "
               "xflow-<workflow_id>-checkpoints)"),
    )
    max_record_bytes = MAX_RECORD_BYTES

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.aws = _session_for(self.context)
        self.shards = self.context.option("shards")
        self.lease_seconds = self.context.option("lease_seconds")
        self.checkpoint_table = self.context.option("checkpoint_table") or f"xflow-{self.workflow_id}-checkpoints"
        #: the DynamoDB table of this workflow's consumer leases and checkpoints
        self.leases = LeaseTable(self.aws, self.checkpoint_table, self.workflow_id, self.lease_seconds)
        #: PutRecords calls made by this instance (for benchmarks)
        self.put_calls = 0

    @property
    def kinesis(self) -> Any:
        return self.aws.client("kinesis")

    def stream_arn(self, event: str) -> str:
        region = self.aws.require_region()
        return f"arn:aws:kinesis:{region}:{self.aws.account_id()}:stream/{self.stream_name(event)}"

    def lambda_event_source(self, event: str) -> dict[str, Any]:
        """Lambda reads Kinesis streams itself: the stream's ARN, the ``stream:NAME`` this transport's setup makes,
        and what a function needs on it to read it and to publish to it (the capability of :class:`Transport`)."""
        return {"kind": "kinesis", "arn": self.stream_arn(event), "resource": f"stream:{self.stream_name(event)}",
                "actions": ["kinesis:DescribeStream", "kinesis:DescribeStreamSummary", "kinesis:GetRecords",
                            "kinesis:GetShardIterator", "kinesis:ListShards", "kinesis:PutRecord", "kinesis:PutRecords",
                            "kinesis:SubscribeToShard"]}

    # ------------------------------------------------------------------ setup / teardown

    def _existing_streams(self) -> dict[str, dict[str, Any]]:
        """This workflow's streams (by name prefix, confirmed by tag) with their open shard counts."""
        prefix = f"{self.workflow_id}-"
        found: dict[str, dict[str, Any]] = {}
        with translate_errors("listing Kinesis streams"):
            paginator = self.kinesis.get_paginator("list_streams")
            for page in paginator.paginate():
                for summary in page.get("StreamSummaries", []):
                    name = summary["StreamName"]
                    if name.startswith(prefix):
                        found[name] = {"arn": summary.get("StreamARN"), "status": summary.get("StreamStatus")}
                if not page.get("StreamSummaries"):
                    for name in page.get("StreamNames", []):
                        if name.startswith(prefix):
                            found[name] = {"arn": None, "status": None}
        return found

    def _is_ours(self, name: str) -> bool:
        with translate_errors(f"reading tags of stream {name}"):
            tags = self.kinesis.list_tags_for_stream(StreamName=name).get("Tags", [])
        return any(t.get("Key") == TAG_KEY and t.get("Value") == self.workflow_id for t in tags)

    def _open_shards(self, name: str) -> int:
        with translate_errors(f"describing stream {name}"):
            summary = self.kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        return int(summary.get("OpenShardCount", 0))

    def plan_setup(self, events: Sequence[str]) -> list[Step]:
        """Create missing streams, reshard those with another shard count, delete this workflow's streams the file
        no longer names (only reads; :meth:`execute` makes the changes)."""
        existing = self._existing_streams()
        steps: list[Step] = []
        wanted = {self.stream_name(e) for e in events}
        for event in events:
            name = self.stream_name(event)
            if name not in existing:
                steps.append(Step("create", f"stream:{name}", detail=f"{self.shards} shard(s)",
                                  call="kinesis:CreateStream", params=self._stream_definition(name)))
            else:
                current = self._open_shards(name)
                if current != self.shards:
                    steps.append(Step("update", f"stream:{name}", detail=f"{current} -> {self.shards} shards",
                                      call="kinesis:UpdateShardCount",
                                      params={"StreamName": name, "TargetShardCount": self.shards,
                                              "ScalingType": "UNIFORM_SCALING"}))
        for name in sorted(set(existing) - wanted):
            if self._is_ours(name):
                steps.append(self._delete_stream_step(name))
        return steps

    def plan_teardown(self, events: Sequence[str]) -> list[Step]:
        """Delete the workflow's streams and its lease table (only reads; :meth:`execute` deletes)."""
        existing = self._existing_streams()
        wanted = {self.stream_name(e) for e in events}
        steps = [self._delete_stream_step(name) for name in sorted(existing) if name in wanted or self._is_ours(name)]
        if self.leases.exists():
            steps.append(Step("delete", f"table:{self.checkpoint_table}", call="dynamodb:DeleteTable",
                              params={"TableName": self.checkpoint_table}))
        return steps

    def _stream_definition(self, name: str) -> dict[str, Any]:
        return {"StreamName": name, "ShardCount": self.shards, "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                "Tags": {TAG_KEY: self.workflow_id}}

    @staticmethod
    def _delete_stream_step(name: str) -> Step:
        return Step("delete", f"stream:{name}", call="kinesis:DeleteStream",
                    params={"StreamName": name, "EnforceConsumerDeletion": True})

    def _table_step(self) -> Step:
        """Creating the lease table: what the first subscribe does (not part of setup's changes)."""
        return Step("create", f"table:{self.checkpoint_table}", call="dynamodb:CreateTable",
                    params=table_definition(self.checkpoint_table, self.workflow_id))

    def execute(self, step: Step) -> None:
        dispatch(step, {
            "kinesis:CreateStream": self._create_stream,
            "kinesis:UpdateShardCount": self._update_shard_count,
            "kinesis:DeleteStream": self._delete_stream,
            "dynamodb:CreateTable": self.leases.create,
            "dynamodb:DeleteTable": self.leases.delete,
        })

    def _create_stream(self, **request: Any) -> None:
        """CreateStream (one that exists already is kept), wait until it is active, tag it: also when the endpoint
        ignored ``Tags`` in CreateStream or an earlier setup was cut short before tagging."""
        name = request["StreamName"]
        with translate_errors(f"creating stream {name}"):
            try:
                self.kinesis.create_stream(**request)
            except Exception as exc:
                if not is_client_error(exc, "ResourceInUseException"):
                    raise
            self._wait_active(name)
            if request.get("Tags"):
                self.kinesis.add_tags_to_stream(StreamName=name, Tags=request["Tags"])

    def _wait_active(self, name: str) -> None:
        with translate_errors(f"waiting for stream {name}"):
            self.kinesis.get_waiter("stream_exists").wait(StreamName=name,
                                                          WaiterConfig={"Delay": 1, "MaxAttempts": 120})

    def _update_shard_count(self, **request: Any) -> None:
        name = request["StreamName"]
        with translate_errors(f"resharding stream {name}"):
            self.kinesis.update_shard_count(**request)
            self._wait_active(name)

    def _delete_stream(self, **request: Any) -> None:
        """DeleteStream; one that is already gone is fine."""
        with translate_errors(f"deleting stream {request['StreamName']}"):
            try:
                self.kinesis.delete_stream(**request)
            except Exception as exc:
                if not is_client_error(exc, "ResourceNotFoundException"):
                    raise

    # ------------------------------------------------------------------ publish

    def publish(self, event: str, records: Sequence[Record]) -> None:
        """PutRecords, keeping the order of each partition key (execution) also when some entries are refused.

        Kinesis may store a later entry of a PutRecords call and refuse an earlier one (a shard over its write
        budget, an internal failure): sending the refused one again would put it after the later one. So a
        call carries at most one entry per partition key, and a key's next entry goes in a call only after the
        call that stored the previous one returned. Each call takes the oldest unsent entry of each key, keys
        with the most entries left first (as few calls as the longest key needs, 500 entries / 5 MB a call);
        refused entries stay first in their key's queue for the next call, after a backoff with jitter.
        Whole-call failures (throttling, a 5xx, a dropped connection) were retried by botocore and are
        retried again here; if a call stores nothing ``PUT_ATTEMPTS`` times in a row or for ``PUT_SECONDS``,
        the publish fails with :class:`BackendUnavailable`. What was stored by then stays stored: publishing
        the same records again repeats those (consumers drop repeated event ids) and keeps every key's order.
        """
        name = self.stream_name(event)
        queues: dict[str, deque[dict[str, Any]]] = {}
        for record in records:
            key = record.key or "-"
            if len(key) > MAX_KEY_CHARS:
                raise XflowError(f"event {event}: partition key (execution id) longer than {MAX_KEY_CHARS} characters")
            size = len(record.value) + len(key.encode("utf-8"))
            if size > MAX_RECORD_BYTES:
                raise XflowError(
                    f"event {event}: a record of {size} bytes is over the Kinesis limit of {MAX_RECORD_BYTES} bytes",
                    "publish a reference (an s3:// path) instead of the content",
                )
            queues.setdefault(key, deque()).append({"Data": record.value, "PartitionKey": key})
        if queues:
            _OrderedPut(self, event, name, queues).run()

    def _put_records(self, event: str, name: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
        """One PutRecords call (botocore retries it on throttling, 5xx and dropped connections)."""
        with translate_errors(f"publishing {event} to stream {name}"):
            try:
                self.put_calls += 1
                return dict(self.kinesis.put_records(StreamName=name, Records=batch))
            except Exception as exc:
                if is_client_error(exc, "ResourceNotFoundException"):
                    raise XflowError(f"event {event}: stream {name} does not exist",
                                     "run xflow setup for this workflow first") from None
                if is_client_error(exc, "LimitExceededException"):  # too many calls at once: passes like throttling
                    raise ServiceBusy(f"publishing {event} to stream {name}: {exc}",
                                      "the stream is busy: add shards or publish less at once") from None
                raise

    # ------------------------------------------------------------------ subscribe

    def subscribe(self, group: str, events: Sequence[str]) -> Consumer:
        if not self.leases.exists():
            self.execute(self._table_step())
        starting = "TRIM_HORIZON"
        workflow = self.context.workflow
        if workflow is not None and group in workflow.functions:
            starting = workflow.functions[group].starting_position or starting
        return KinesisConsumer(self, group, list(events), starting)

    def lag(self, group: str, events: Sequence[str]) -> list[PartitionLag]:
        """Per shard: from the group's checkpoint and GetRecords' MillisBehindLatest (see :mod:`.lag`)."""
        return group_lag(self, group, events)

    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        folder = Path(self.context.state_dir) / "dead-letters"
        folder.mkdir(parents=True, exist_ok=True)
        line = {"workflow_id": self.workflow_id, "group": group, "event": delivery.event,
                "partition": delivery.partition, "position": delivery.position, "key": delivery.key,
                "value": delivery.value.decode("utf-8", "replace"), "reason": reason, "at": time.time()}
        with open(folder / f"kinesis-{self.workflow_id}.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


class _NotStored(ServiceBusy):
    """Some entries of a PutRecords call were refused (they are sent again)."""


class _OrderedPut:
    """The calls of one :meth:`KinesisTransport.publish`: per-key queues, one entry per key and call."""

    def __init__(self, transport: KinesisTransport, event: str, name: str,
                 queues: dict[str, deque[dict[str, Any]]]) -> None:
        self.transport, self.event, self.name, self.queues = transport, event, name, queues
        #: calls in a row that stored nothing, and when something was last stored
        self.stalled = 0
        self.progress_at = time.monotonic()

    def run(self) -> None:
        retry = retrying(stop=self._stop, first_wait=PUT_FIRST_WAIT, max_wait=PUT_MAX_WAIT)
        while self.queues:
            retry(self._call)

    def _stop(self, state: RetryCallState) -> bool:
        return self.stalled >= PUT_ATTEMPTS or time.monotonic() - self.progress_at >= PUT_SECONDS

    def _batch(self) -> list[dict[str, Any]]:
        """The oldest entry of each key, keys with the most left first, within a call's limits."""
        batch: list[dict[str, Any]] = []
        size = 0
        for queue in sorted(self.queues.values(), key=len, reverse=True):  # stable: ties keep first-seen order
            entry = queue[0]
            entry_size = len(entry["Data"]) + len(entry["PartitionKey"].encode("utf-8"))
            if len(batch) >= MAX_RECORDS_PER_CALL:
                break
            if batch and size + entry_size > MAX_BYTES_PER_CALL:
                continue
            batch.append(entry)
            size += entry_size
        return batch

    def _call(self) -> None:
        batch = self._batch()
        try:
            response = self.transport._put_records(self.event, self.name, batch)
        except BackendUnavailable:
            self.stalled += 1
            raise
        results = response.get("Records") or []
        if len(results) != len(batch):
            raise XflowError(f"publishing {self.event} to stream {self.name}: PutRecords answered {len(results)} "
                             f"results for {len(batch)} records")
        codes: set[str] = set()
        stored = 0
        for entry, result in zip(batch, results, strict=True):
            if result.get("ErrorCode"):
                codes.add(str(result["ErrorCode"]))
                continue
            stored += 1
            queue = self.queues[entry["PartitionKey"]]
            queue.popleft()
            if not queue:
                del self.queues[entry["PartitionKey"]]
        if stored:
            self.stalled, self.progress_at = 0, time.monotonic()
        if len(batch) > stored:
            if not stored:
                self.stalled += 1
            left = sum(len(q) for q in self.queues.values())
            raise _NotStored(f"event {self.event}: {left} record(s) not stored by stream {self.name}, which refused "
                             f"{len(batch) - stored} of the last call's {len(batch)} ({', '.join(sorted(codes))})",
                             "the stream is throttled: add shards")


