"""Transport ``kinesis``: one Amazon Kinesis data stream per workflow event (boto3).

- stream name: ``<workflow_id>-<event>``, tagged ``xflow:workflow=<workflow_id>``; shard count from
  the ``shards`` option (default 1); setup creates missing streams, reshards, removes this
  workflow's streams that the file no longer names;
- publish: ``PutRecords`` in batches within 500 records / 5 MB, partition key = execution id, at most
  one record per key in a call so that a partial failure cannot reorder an execution's records;
  refused records retried with backoff and jitter; a record over 1 MB is an error naming the event;
- subscribe (for the ``local`` provider / ``xflow worker``): reads shards with GetShardIterator /
  GetRecords. Each (group, stream, shard) has a lease and a checkpoint in a DynamoDB table per
  workflow (``xflow-<workflow_id>-checkpoints``, created on first subscribe), so several worker
  processes share a group: a shard is read by one lease holder at a time, a checkpoint is written
  only by it and only after success, shards are spread over the group's live members, and a dead
  worker's shards are taken over when its lease expires.

Endpoint and credentials: :mod:`xflow.aws` (``AWS_ENDPOINT_URL`` honoured).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from tenacity import RetryCallState

from xflow.aws import TAG_KEY, AwsSession, ServiceBusy, is_client_error, retrying, translate_errors
from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import Consumer, Delivery, PluginContext, Record, Step, Transport

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
    options = {
        "shards": "shards per stream (default 1)",
        "region": "AWS region (default: aws.region in the file, else AWS_REGION)",
        "lease_seconds": "how long a worker's shard lease lasts without renewal (default 20)",
        "checkpoint_table": "DynamoDB table for consumer checkpoints (default xflow-<workflow_id>-checkpoints)",
    }
    max_record_bytes = MAX_RECORD_BYTES

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.aws = _session_for(context)
        self.shards = context.number_option("shards", 1, minimum=1)
        self.lease_seconds = context.number_option("lease_seconds", 20, minimum=1, kind=float)
        self.checkpoint_table = str(context.option("checkpoint_table", f"xflow-{self.workflow_id}-checkpoints"))
        #: PutRecords calls made by this instance (for benchmarks)
        self.put_calls = 0

    @property
    def kinesis(self) -> Any:
        return self.aws.client("kinesis")

    def stream_arn(self, event: str) -> str:
        region = self.aws.require_region()
        return f"arn:aws:kinesis:{region}:{self.aws.account_id()}:stream/{self.stream_name(event)}"

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
        existing = self._existing_streams()
        steps: list[Step] = []
        wanted = {self.stream_name(e) for e in events}
        for event in events:
            name = self.stream_name(event)
            if name not in existing:
                steps.append(Step("create", f"stream:{name}", partial(self._create_stream, name),
                                  f"{self.shards} shard(s)"))
            else:
                current = self._open_shards(name)
                if current != self.shards:
                    steps.append(Step("update", f"stream:{name}", partial(self._reshard, name),
                                      f"{current} -> {self.shards} shards"))
        for name in sorted(set(existing) - wanted):
            if self._is_ours(name):
                steps.append(Step("delete", f"stream:{name}", partial(self._delete_stream, name)))
        return steps

    def plan_teardown(self, events: Sequence[str]) -> list[Step]:
        existing = self._existing_streams()
        wanted = {self.stream_name(e) for e in events}
        steps = [Step("delete", f"stream:{name}", partial(self._delete_stream, name))
                 for name in sorted(existing) if name in wanted or self._is_ours(name)]
        if self._table_exists():
            steps.append(Step("delete", f"table:{self.checkpoint_table}", self._delete_table))
        return steps

    def _create_stream(self, name: str) -> None:
        with translate_errors(f"creating stream {name}"):
            try:
                self.kinesis.create_stream(StreamName=name, ShardCount=self.shards,
                                           StreamModeDetails={"StreamMode": "PROVISIONED"})
            except Exception as exc:
                if not is_client_error(exc, "ResourceInUseException"):
                    raise
            self._wait_active(name)
            self.kinesis.add_tags_to_stream(StreamName=name, Tags={TAG_KEY: self.workflow_id})

    def _wait_active(self, name: str) -> None:
        with translate_errors(f"waiting for stream {name}"):
            self.kinesis.get_waiter("stream_exists").wait(StreamName=name,
                                                          WaiterConfig={"Delay": 1, "MaxAttempts": 120})

    def _reshard(self, name: str) -> None:
        with translate_errors(f"resharding stream {name}"):
            self.kinesis.update_shard_count(StreamName=name, TargetShardCount=self.shards,
                                            ScalingType="UNIFORM_SCALING")
            self._wait_active(name)

    def _delete_stream(self, name: str) -> None:
        with translate_errors(f"deleting stream {name}"):
            try:
                self.kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
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
        self._ensure_table()
        starting = "TRIM_HORIZON"
        workflow = self.context.workflow
        if workflow is not None and group in workflow.functions:
            starting = workflow.functions[group].starting_position or starting
        return KinesisConsumer(self, group, list(events), starting)

    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        folder = Path(self.context.state_dir) / "dead-letters"
        folder.mkdir(parents=True, exist_ok=True)
        line = {"workflow_id": self.workflow_id, "group": group, "event": delivery.event,
                "partition": delivery.partition, "position": delivery.position, "key": delivery.key,
                "value": delivery.value.decode("utf-8", "replace"), "reason": reason, "at": time.time()}
        with open(folder / f"kinesis-{self.workflow_id}.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")

    @property
    def dynamodb(self) -> Any:
        """DynamoDB (the checkpoint table) with a long-running client's retries: workers use it all the time."""
        return self.aws.client("dynamodb", long_running=True)

    def _table_exists(self) -> bool:
        with translate_errors(f"describing table {self.checkpoint_table}"):
            try:
                self.dynamodb.describe_table(TableName=self.checkpoint_table)
                return True
            except Exception as exc:
                if is_client_error(exc, "ResourceNotFoundException"):
                    return False
                raise

    def _ensure_table(self) -> None:
        if self._table_exists():
            return
        with translate_errors(f"creating table {self.checkpoint_table}"):
            try:
                self.dynamodb.create_table(
                    TableName=self.checkpoint_table,
                    KeySchema=[{"AttributeName": "lease", "KeyType": "HASH"}],
                    AttributeDefinitions=[{"AttributeName": "lease", "AttributeType": "S"}],
                    BillingMode="PAY_PER_REQUEST",
                    Tags=[{"Key": TAG_KEY, "Value": self.workflow_id}],
                )
            except Exception as exc:
                if not is_client_error(exc, "ResourceInUseException"):
                    raise
            self.dynamodb.get_waiter("table_exists").wait(TableName=self.checkpoint_table,
                                                          WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    def _delete_table(self) -> None:
        with translate_errors(f"deleting table {self.checkpoint_table}"):
            try:
                self.dynamodb.delete_table(TableName=self.checkpoint_table)
            except Exception as exc:
                if not is_client_error(exc, "ResourceNotFoundException"):
                    raise


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


#: the checkpoint of a shard that was read to its end after a reshard and settled: its children may be read
SHARD_END = "SHARD_END"


class _Shard:
    def __init__(self, event: str, stream: str, shard_id: str, lease: str) -> None:
        self.event = event
        self.stream = stream
        self.shard_id = shard_id
        self.lease = lease
        self.iterator: str | None = None
        self.owned = False
        self.renewed_at = 0.0
        self.tried_at = 0.0
        #: read to its end (a closed shard after a reshard); ``finished`` once that is committed too
        self.ended = False
        self.finished = False
        #: lease keys of the shards this one was split or merged from (ListShards' parent ids)
        self.parents: tuple[str, ...] = ()
        #: EndingSequenceNumber of a closed shard, from ListShards
        self.ending: int | None = None
        #: the highest sequence number handed out (or the checkpoint it was taken with)
        self.last_read: int | None = None
        #: not before this time (monotonic) is the shard read again: the per-shard GetRecords budget
        self.next_read_at = 0.0
        #: throttled GetRecords calls in a row, and whether that was logged
        self.throttled = 0
        self.throttle_logged = False
        #: GetRecords calls in a row that failed for a transient reason (5xx, dropped) after botocore's retries
        self.failed_reads = 0
        #: when another member's progress on this (parent) shard was last looked up
        self.checked_at = 0.0
        #: positions handed out by poll and not committed yet
        self.pending: set[str] = set()
        #: records read and not handed out yet: one GetRecords call serves several polls
        self.buffer: deque[Delivery] = deque()


class KinesisConsumer(Consumer):
    """Reads the shards this process holds leases on; checkpoints in DynamoDB after success.

    Members of a group announce themselves with a heartbeat item; each takes free or expired
    leases up to its fair share (shards / live members) and hands back, once it has nothing
    uncommitted on it, a shard above that share, so a second worker gets half the shards.

    Kinesis allows 5 GetRecords calls per second per shard, shared by every reader of the stream:
    a shard is read at most every ``READ_INTERVAL`` seconds, however often ``poll`` is called,
    up to ``READ_LIMIT`` records a call (what a poll does not take waits in memory for the next
    polls), and a throttled shard waits longer each time (exponential backoff with jitter). After a
    reshard, a child shard is read only once its parent(s) were read to their end and every
    record of them was committed (their checkpoint is then ``SHARD_END``), so the records of an
    execution keep their order across the reshard.

    Transient AWS failures are retried where they happen: DynamoDB calls (leases, heartbeats,
    checkpoints) on a long-running client (``WORKER_ATTEMPTS`` botocore tries) and then with tenacity
    for up to a third of the lease time; ListShards and GetShardIterator with tenacity; a GetRecords
    call that fails anyway backs its shard off as throttling does (other shards go on). Only then
    does :class:`BackendUnavailable` reach the worker, which waits it out. A poll that already took
    records when a later call fails hands those records out (the failure comes again next poll).

    A worker settles one function's batch at a time, and a slow batch (slow handlers, AWS calls
    retried with backoff) would let the leases of its other functions' consumers expire: another
    member would take them over and handle again what is being handled. So a lease keeper (a daemon
    thread per consumer, like the Kinesis Client Library's lease renewer) extends the expiry of the
    leases this member holds, and its heartbeat, every third of the lease time; taking, handing
    back and losing leases stay with the polling thread. The keeper ends with :meth:`close` (or
    with the consumer) and with the process: a dead worker's leases expire as before.
    """

    RESCAN_SECONDS = 5.0
    #: at most this often (seconds) is one shard read: 4 GetRecords calls per second, under the limit of 5
    READ_INTERVAL = 0.25
    #: records asked for by one GetRecords call (Kinesis returns at most 10,000, and 10 MB)
    READ_LIMIT = 1000
    #: backoff after ProvisionedThroughputExceededException: first wait and the longest one (seconds)
    THROTTLE_BASE = 0.5
    THROTTLE_MAX = 10.0
    #: how often (seconds) the checkpoint of a parent shard that another member reads is looked up
    PARENT_CHECK_SECONDS = 2.0
    #: GetRecords failures in a row (5xx, dropped connections; each already retried by botocore) that a shard
    #: rides out with the throttling backoff before the failure goes to the worker (which waits it out)
    READ_FAILURES_MAX = 5

    def __init__(self, transport: KinesisTransport, group: str, events: list[str], starting_position: str) -> None:
        self.transport = transport
        self.group = group
        self.events = events
        self.starting_position = starting_position if starting_position in ("TRIM_HORIZON", "LATEST") \
            else "TRIM_HORIZON"
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.shards: dict[str, _Shard] = {}
        self.scanned_at = 0.0
        self.heartbeat_at = 0.0
        self.members = 1
        self.cursor = 0
        #: how long (seconds) a lease, heartbeat, checkpoint or shard-listing call is retried before it fails
        self.patience = max(2.0, transport.lease_seconds / 3)
        self._keeper_stop = threading.Event()
        #: when the lease keeper last announced this member (the polling thread's heartbeat also counts members)
        self._kept_alive_at = 0.0
        self._keeper = threading.Thread(target=_keep_leases, args=(weakref.ref(self), self._keeper_stop,
                                                                   transport.lease_seconds / 3),
                                        name=f"xflow-lease-keeper-{group}", daemon=True)
        self._keeper.start()

    @property
    def table(self) -> str:
        return self.transport.checkpoint_table

    def _lease_key(self, stream: str, shard_id: str) -> str:
        return f"{self.group}|{stream}|{shard_id}"

    def _list_shards(self, stream: str) -> list[dict[str, Any]]:
        return list(retrying(self.patience)(self._list_shards_once, stream))

    def _list_shards_once(self, stream: str) -> list[dict[str, Any]]:
        kinesis = self.transport.kinesis
        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"StreamName": stream}
        with translate_errors(f"listing shards of stream {stream}"):
            while True:
                try:
                    page = kinesis.list_shards(**kwargs)
                except Exception as exc:
                    if is_client_error(exc, "ResourceNotFoundException"):
                        raise XflowError(f"stream {stream} does not exist", "run xflow setup first") from None
                    raise
                found.extend(page.get("Shards", []))
                token = page.get("NextToken")
                if not token:
                    return found
                kwargs = {"NextToken": token}

    def _scan(self) -> None:
        for event in self.events:
            stream = self.transport.stream_name(event)
            for shard in self._list_shards(stream):
                lease = self._lease_key(stream, shard["ShardId"])
                known = self.shards.get(lease)
                if known is None:
                    known = self.shards[lease] = _Shard(event, stream, shard["ShardId"], lease)
                known.parents = tuple(self._lease_key(stream, parent)
                                      for parent in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId"))
                                      if parent)
                ending = (shard.get("SequenceNumberRange") or {}).get("EndingSequenceNumber")
                known.ending = int(ending) if ending else None
        self.scanned_at = time.monotonic()

    def _parents_done(self, shard: _Shard) -> bool:
        """Whether every parent of ``shard`` that still exists was read to its end and committed (by any member)."""
        for lease in shard.parents:
            parent = self.shards.get(lease)
            if parent is None or parent.finished:
                continue  # a parent past the stream's retention is no longer listed: nothing left to read
            if parent.owned:
                return False  # this member reads it: finished is set when it is done
            now = time.monotonic()
            if now - parent.checked_at < self.PARENT_CHECK_SECONDS:
                return False
            parent.checked_at = now
            with translate_errors(f"reading the checkpoint of {lease}"):
                item = self.transport.dynamodb.get_item(TableName=self.table, Key={"lease": {"S": lease}},
                                                        ConsistentRead=True).get("Item", {})
            if item.get("checkpoint", {}).get("S") != SHARD_END:
                return False
            parent.finished = True
        return True

    def _heartbeat(self) -> None:
        """Say this member is alive and count the group's live members."""
        retrying(self.patience)(self._heartbeat_once)

    def _heartbeat_once(self) -> None:
        ddb = self.transport.dynamodb
        now = time.time()
        prefix = f"member|{self.group}|"
        with translate_errors(f"announcing a member of group {self.group}"):
            ddb.put_item(TableName=self.table, Item={"lease": {"S": prefix + self.owner},
                                                     "expires": {"N": str(now + self.transport.lease_seconds)}})
            live = 0
            for page in ddb.get_paginator("scan").paginate(
                    TableName=self.table, FilterExpression="begins_with(#l, :p) AND expires > :now",
                    ExpressionAttributeNames={"#l": "lease"},
                    ExpressionAttributeValues={":p": {"S": prefix}, ":now": {"N": str(now)}}):
                live += len(page.get("Items", []))
        self.members = max(1, live)
        self.heartbeat_at = time.monotonic()

    def _acquire_or_renew(self, shard: _Shard) -> None:
        """Take the lease if free, expired or ours; keep the checkpoint it holds."""
        ddb = self.transport.dynamodb

        def take() -> dict[str, Any]:
            now = time.time()
            with translate_errors(f"taking the lease on {shard.lease}"):
                return dict(ddb.update_item(
                    TableName=self.table,
                    Key={"lease": {"S": shard.lease}},
                    UpdateExpression="SET #o = :me, expires = :exp",
                    ConditionExpression="attribute_not_exists(#o) OR #o = :me OR #o = :none OR expires < :now",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":me": {"S": self.owner}, ":none": {"S": ""},
                                               ":exp": {"N": str(now + self.transport.lease_seconds)},
                                               ":now": {"N": str(now)}},
                    ReturnValues="ALL_NEW",
                ))

        try:
            response = retrying(self.patience)(take)
        except XflowError as exc:
            if "ConditionalCheckFailed" in exc.message:
                if shard.owned:
                    log.info("lost the lease on %s", shard.lease)
                self._drop(shard)
                return
            raise
        if not shard.owned:
            checkpoint = response.get("Attributes", {}).get("checkpoint", {}).get("S")
            if checkpoint == SHARD_END:  # another member read it to its end: nothing left here
                shard.finished = True
                self._release(shard)
                return
            try:
                shard.iterator = self._iterator(shard, checkpoint)
            except XflowError:
                self._release(shard)  # not readable now: hand the lease back, take it again later
                raise
            shard.last_read = int(checkpoint) if checkpoint else None
            shard.ended = False
            shard.next_read_at = 0.0
            shard.pending.clear()
            shard.buffer.clear()
        shard.owned, shard.renewed_at = True, time.monotonic()

    def _drop(self, shard: _Shard) -> None:
        shard.owned, shard.iterator = False, None
        shard.pending.clear()
        shard.buffer.clear()

    def _release(self, shard: _Shard) -> None:
        try:
            self.transport.dynamodb.update_item(
                TableName=self.table, Key={"lease": {"S": shard.lease}},
                UpdateExpression="SET #o = :none, expires = :zero", ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":none": {"S": ""}, ":zero": {"N": "0"}, ":me": {"S": self.owner}},
            )
        except Exception as exc:  # handing back is best effort: the lease expires anyway
            log.debug("releasing %s: %s", shard.lease, exc)
        self._drop(shard)
        shard.tried_at = time.monotonic()

    def _finish(self, shard: _Shard) -> None:
        """A closed shard was read to its end and all of it committed: mark it so, for its children, and let go."""
        try:
            with translate_errors(f"checkpointing the end of {shard.lease}"):
                self.transport.dynamodb.update_item(
                    TableName=self.table, Key={"lease": {"S": shard.lease}},
                    UpdateExpression="SET checkpoint = :end, #o = :none, expires = :zero",
                    ConditionExpression="#o = :me",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":end": {"S": SHARD_END}, ":none": {"S": ""}, ":zero": {"N": "0"},
                                               ":me": {"S": self.owner}},
                )
        except XflowError as exc:
            if "ConditionalCheckFailed" not in exc.message:
                raise
            log.warning("lease on %s was taken over before its end was recorded", shard.lease)
            self._drop(shard)
            return
        log.info("shard %s of %s read to its end (resharded): its child shards come next",
                 shard.shard_id, shard.stream)
        shard.finished = True
        self._drop(shard)

    def _iterator(self, shard: _Shard, checkpoint: str | None) -> str | None:
        kwargs: dict[str, Any] = {"StreamName": shard.stream, "ShardId": shard.shard_id}
        if checkpoint:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=checkpoint)
        else:
            kwargs["ShardIteratorType"] = self.starting_position

        def ask() -> str | None:
            with translate_errors(f"reading shard {shard.shard_id} of {shard.stream}"):
                return self.transport.kinesis.get_shard_iterator(**kwargs).get("ShardIterator")

        return retrying(self.patience)(ask)

    def _maintain(self) -> None:
        now = time.monotonic()
        if not self.shards or now - self.scanned_at > self.RESCAN_SECONDS:
            self._scan()
        if now - self.heartbeat_at > self.transport.lease_seconds / 3:
            self._heartbeat()
        # shards to share out: not read to their end yet, and not waiting for a parent
        readable = [s for s in self.shards.values() if not s.finished and (s.owned or self._parents_done(s))]
        fair = math.ceil(len(readable) / self.members)
        owned = [s for s in self.shards.values() if s.owned]
        for shard in owned:
            if now - shard.renewed_at >= self.transport.lease_seconds / 3:
                self._acquire_or_renew(shard)
        owned = [s for s in self.shards.values() if s.owned]
        if len(owned) > fair:
            idle = [s for s in owned if not s.pending]
            if idle:
                self._release(idle[-1])
            return
        for shard in readable:
            if len([s for s in self.shards.values() if s.owned]) >= fair:
                break
            if shard.owned or now - shard.tried_at < 2.0:
                continue
            shard.tried_at = now
            self._acquire_or_renew(shard)

    def _read(self, shard: _Shard) -> None:
        """One GetRecords call on a shard whose turn it is, into its buffer."""
        now = time.monotonic()
        shard.next_read_at = now + self.READ_INTERVAL
        try:
            with translate_errors(f"reading shard {shard.shard_id} of {shard.stream}"):
                try:
                    response = self.transport.kinesis.get_records(ShardIterator=shard.iterator,
                                                                  Limit=self.READ_LIMIT)
                except Exception as exc:
                    if is_client_error(exc, "ExpiredIteratorException"):
                        self._drop(shard)
                        return
                    if is_client_error(exc, "ProvisionedThroughputExceededException"):
                        self._throttled(shard, now)
                        return
                    raise
        except BackendUnavailable as exc:
            self._read_failed(shard, now, exc)
            return
        if shard.failed_reads:
            log.info("shard %s of %s is read again after %d failed GetRecords calls", shard.shard_id, shard.stream,
                     shard.failed_reads)
        shard.throttled = shard.failed_reads = 0
        shard.iterator = response.get("NextShardIterator")
        records = response.get("Records", [])
        for rec in records:
            sequence = rec["SequenceNumber"]
            shard.last_read = int(sequence)
            arrived = rec.get("ApproximateArrivalTimestamp")
            shard.buffer.append(Delivery(shard.event, shard.shard_id, sequence, rec.get("PartitionKey"),
                                         bytes(rec["Data"]),
                                         arrived.timestamp() if hasattr(arrived, "timestamp") else None))
        if shard.iterator is None or self._at_end(shard, bool(records), response):
            shard.ended = True

    def _take(self, shard: _Shard, count: int) -> list[Delivery]:
        """Hand out up to ``count`` buffered records of a shard, in order."""
        taken: list[Delivery] = []
        while shard.buffer and len(taken) < count:
            delivery = shard.buffer.popleft()
            shard.pending.add(delivery.position)
            taken.append(delivery)
        return taken

    def _end_if_done(self, shard: _Shard) -> None:
        """A closed shard read to its end, handed out and committed is finished: its children may be read."""
        if shard.ended and shard.owned and not shard.buffer and not shard.pending:
            self._finish(shard)

    @staticmethod
    def _at_end(shard: _Shard, got_records: bool, response: dict[str, Any]) -> bool:
        """Whether a closed shard was read to its end.

        Kinesis says so with no NextShardIterator; an emulator that keeps answering with one is
        at the end of a closed shard once its EndingSequenceNumber was read, or when it returns
        nothing and is not behind.
        """
        if shard.ending is None:
            return False
        if shard.last_read is not None and shard.last_read >= shard.ending:
            return True
        return not got_records and not response.get("MillisBehindLatest")

    def _throttled(self, shard: _Shard, now: float) -> None:
        """ProvisionedThroughputExceededException: wait exponentially longer (with jitter) before the next read."""
        shard.throttled += 1
        wait = min(self.THROTTLE_MAX, self.THROTTLE_BASE * 2 ** (shard.throttled - 1))
        wait = random.uniform(wait / 2, wait)
        shard.next_read_at = now + wait
        if not shard.throttle_logged:
            shard.throttle_logged = True
            log.warning("kinesis read throughput of shard %s of %s exceeded (other readers of the stream share its "
                        "5 reads per second): backing off, up to %.0f s between reads", shard.shard_id, shard.stream,
                        self.THROTTLE_MAX)
        else:
            log.debug("shard %s of %s throttled again (%d in a row): next read in %.2f s", shard.shard_id,
                      shard.stream, shard.throttled, wait)

    def _read_failed(self, shard: _Shard, now: float, exc: BackendUnavailable) -> None:
        """A GetRecords call failed after botocore's retries: back the shard off (exponentially, with jitter);
        after ``READ_FAILURES_MAX`` in a row, let the worker know (it waits the outage out and polls again)."""
        shard.failed_reads += 1
        if shard.failed_reads > self.READ_FAILURES_MAX:
            shard.failed_reads = 0
            raise exc
        wait = min(self.THROTTLE_MAX, self.THROTTLE_BASE * 2 ** (shard.failed_reads - 1))
        shard.next_read_at = now + random.uniform(wait / 2, wait)
        level = logging.WARNING if shard.failed_reads == 1 else logging.DEBUG
        log.log(level, "%s; reading shard %s again in up to %.1f s", exc, shard.shard_id, wait)

    def poll(self, max_records: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            self._maintain()
            reading = [s for s in self.shards.values() if s.owned and (s.buffer or (s.iterator and not s.ended))]
            now = time.monotonic()
            ready = [s for s in reading if s.buffer or s.next_read_at <= now]
            found: list[Delivery] = []
            for i in range(len(ready)):
                if len(found) >= max_records:
                    break
                shard = ready[(self.cursor + i) % len(ready)]
                if not shard.owned:
                    continue
                try:
                    if not shard.buffer and shard.iterator and not shard.ended:
                        self._read(shard)
                    found.extend(self._take(shard, max_records - len(found)))
                    self._end_if_done(shard)
                except XflowError as exc:
                    if not found:
                        raise
                    # records taken are pending now: hand them out (or they would be skipped); the failure comes back
                    log.debug("handing out %d record(s) before a failure: %s", len(found), exc)
                    return found
            self.cursor += 1
            now = time.monotonic()
            if found or now >= deadline:
                return found
            waiting = [s.next_read_at for s in self.shards.values() if s.owned and s.iterator and not s.ended]
            wake = min(waiting, default=now + 0.2)
            time.sleep(max(0.0, min(0.2, wake - now, deadline - now)))

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        latest: dict[tuple[str, str], Delivery] = {}
        for d in deliveries:
            key = (d.event, d.partition)
            if key not in latest or int(d.position) > int(latest[key].position):
                latest[key] = d
        ddb = self.transport.dynamodb
        for (event, partition), delivery in latest.items():
            lease = self._lease_key(self.transport.stream_name(event), partition)
            def checkpoint(lease: str = lease, delivery: Delivery = delivery) -> None:
                with translate_errors(f"checkpointing {lease}"):
                    ddb.update_item(
                        TableName=self.table,
                        Key={"lease": {"S": lease}},
                        UpdateExpression="SET checkpoint = :seq, expires = :exp",  # a commit also renews the lease
                        ConditionExpression="#o = :me",
                        ExpressionAttributeNames={"#o": "owner"},
                        ExpressionAttributeValues={":seq": {"S": delivery.position}, ":me": {"S": self.owner},
                                                   ":exp": {"N": str(time.time() + self.transport.lease_seconds)}},
                    )

            try:
                retrying(self.patience)(checkpoint)
            except XflowError as exc:
                if "ConditionalCheckFailed" not in exc.message:
                    raise
                log.warning("lease on %s was taken over; its records will be delivered again", lease)
                shard = self.shards.get(lease)
                if shard:
                    self._drop(shard)
                continue
            shard = self.shards.get(lease)
            if shard:
                shard.renewed_at = time.monotonic()
                done = int(delivery.position)
                shard.pending = {p for p in shard.pending if int(p) > done}
                self._end_if_done(shard)

    def _extend_leases(self) -> None:
        """The lease keeper's turn: push back the expiry of the leases held (and the heartbeat) that are due.

        Only the expiry changes, and only while the lease is this member's (a lease handed back or taken over
        is left alone); a lease found lost is left for the polling thread to notice at its next renewal.
        """
        ddb = self.transport.dynamodb
        interval = self.transport.lease_seconds / 3
        for shard in list(self.shards.values()):
            if self._keeper_stop.is_set():
                return
            if not shard.owned or time.monotonic() - shard.renewed_at < interval:
                continue
            try:
                with translate_errors(f"extending the lease on {shard.lease}"):
                    ddb.update_item(
                        TableName=self.table, Key={"lease": {"S": shard.lease}},
                        UpdateExpression="SET expires = :exp", ConditionExpression="#o = :me",
                        ExpressionAttributeNames={"#o": "owner"},
                        ExpressionAttributeValues={":me": {"S": self.owner},
                                                   ":exp": {"N": str(time.time() + self.transport.lease_seconds)}})
                shard.renewed_at = time.monotonic()
            except XflowError as exc:
                if "ConditionalCheckFailed" in exc.message:
                    shard.renewed_at = 0.0  # lost: the polling thread's renewal finds out and drops it
                log.debug("lease keeper: %s", exc)
        if time.monotonic() - max(self.heartbeat_at, self._kept_alive_at) >= interval:
            try:
                with translate_errors(f"announcing a member of group {self.group}"):
                    ddb.put_item(TableName=self.table, Item={
                        "lease": {"S": f"member|{self.group}|{self.owner}"},
                        "expires": {"N": str(time.time() + self.transport.lease_seconds)}})
                self._kept_alive_at = time.monotonic()
            except XflowError as exc:
                log.debug("lease keeper: %s", exc)

    def keep_alive(self) -> None:
        """While handlers run and nothing polls: extend the leases held (and the heartbeat) when due. The lease
        keeper does the same by itself; this is the runner's cheap, explicit say-so."""
        self._extend_leases()

    def close(self) -> None:
        self._keeper_stop.set()
        if self._keeper.is_alive() and self._keeper is not threading.current_thread():
            self._keeper.join(timeout=5.0)
        for shard in self.shards.values():
            if shard.owned:
                self._release(shard)
        try:
            self.transport.dynamodb.delete_item(TableName=self.table,
                                                Key={"lease": {"S": f"member|{self.group}|{self.owner}"}})
        except Exception as exc:  # best effort: the heartbeat expires anyway
            log.debug("leaving group %s: %s", self.group, exc)


def _keep_leases(consumer: weakref.ref[KinesisConsumer], stop: threading.Event, interval: float) -> None:
    """The lease keeper's loop (see :class:`KinesisConsumer`): ends when told to, or when the consumer is gone."""
    while not stop.wait(max(0.5, interval / 2)):
        found = consumer()
        if found is None:
            return
        try:
            found._extend_leases()
        except Exception:  # never let the keeper die of a surprise: the polling thread renews too
            log.exception("lease keeper of group %s", found.group)
        del found


@hookimpl
def xflow_transports() -> list[type[Transport]]:
    return [KinesisTransport]
