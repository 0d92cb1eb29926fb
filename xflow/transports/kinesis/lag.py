"""How far a consumer group of the kinesis transport is behind, per shard: from its checkpoint in the lease table
and GetRecords' ``MillisBehindLatest`` (what :meth:`KinesisTransport.lag` answers).

Kinesis has no offsets to subtract: the records after a checkpoint are counted by reading them, at most
:data:`LAG_READS` GetRecords calls of up to :data:`LAG_READ_LIMIT` records per shard (a shard allows 5 calls a
second, shared with the group's readers). When that does not reach the tip of the shard, the count is a lower bound
(``exact`` False). The wait of the oldest record is its ``ApproximateArrivalTimestamp``; when none was read, the
answer's ``MillisBehindLatest``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from xflow.aws import is_client_error, retrying, translate_errors
from xflow.core.errors import XflowError
from xflow.core.interfaces import PartitionLag
from xflow.transports.kinesis.leases import SHARD_END

if TYPE_CHECKING:
    from xflow.transports.kinesis.transport import KinesisTransport

#: GetRecords calls per shard that one lag reading makes at most, and the records each asks for
LAG_READS = 2
LAG_READ_LIMIT = 10_000
#: seconds a lag reading retries a call that failed for a passing reason
PATIENCE = 5.0


def group_lag(transport: KinesisTransport, group: str, events: Sequence[str]) -> list[PartitionLag]:
    """One :class:`PartitionLag` per shard (open or closed) of each event's stream, for consumer group ``group``."""
    kinesis = transport.kinesis
    leases = _lease_items(transport, group) if transport.leases.exists() else {}
    starting = _starting_position(transport, group)
    found = []
    now = time.time()
    for event in events:
        stream = transport.stream_name(event)
        for shard in _shards(kinesis, stream):
            shard_id = shard["ShardId"]
            item = leases.get(f"{group}|{stream}|{shard_id}", {})
            checkpoint = item.get("checkpoint", {}).get("S")
            owner = item.get("owner", {}).get("S")
            expires = float(item.get("expires", {}).get("N", 0) or 0)
            held = bool(owner) and expires > now
            if checkpoint == SHARD_END:
                found.append(PartitionLag(event, shard_id, 0, 0.0, checkpoint, None, held))
                continue
            records, seconds, latest, exact = _behind(kinesis, stream, shard_id, checkpoint, starting, now)
            found.append(PartitionLag(event, shard_id, records, seconds, checkpoint, latest or checkpoint, held,
                                      exact))
    return found


def _lease_items(transport: KinesisTransport, group: str) -> dict[str, dict[str, Any]]:
    """The group's lease items, by lease key (one Scan of the workflow's small lease table, consistent)."""
    table = transport.leases
    items: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"TableName": table.name, "ConsistentRead": True}
    while True:
        page = _call(f"reading the checkpoints in {table.name}", table.dynamodb.scan, **kwargs)
        for item in page.get("Items", []):
            key = item.get("lease", {}).get("S", "")
            if key.startswith(f"{group}|"):
                items[key] = item
        if not page.get("LastEvaluatedKey"):
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _starting_position(transport: KinesisTransport, group: str) -> str:
    workflow = transport.context.workflow
    if workflow is not None and group in workflow.functions:
        return workflow.functions[group].starting_position or "TRIM_HORIZON"
    return "TRIM_HORIZON"


def _shards(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = _call(f"listing shards of stream {stream}", kinesis.list_shards, **kwargs)
        found.extend(page.get("Shards", []))
        if not page.get("NextToken"):
            return found
        kwargs = {"NextToken": page["NextToken"]}


def _behind(kinesis: Any, stream: str, shard_id: str, checkpoint: str | None, starting: str,
            now: float) -> tuple[int, float, str | None, bool]:
    """Records after ``checkpoint`` (counted), the oldest one's wait, the last sequence number read, and whether the
    count reached the tip of the shard."""
    request: dict[str, Any] = {"StreamName": stream, "ShardId": shard_id}
    if checkpoint:
        request.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=checkpoint)
    else:
        request["ShardIteratorType"] = "LATEST" if starting == "LATEST" else "TRIM_HORIZON"
    count, oldest, latest, behind_ms = 0, None, None, 0
    doing = f"reading shard {shard_id} of {stream}"
    iterator = _call(doing, kinesis.get_shard_iterator, **request).get("ShardIterator")
    for _ in range(LAG_READS):
        if iterator is None:  # a closed shard read to its end
            return count, _wait(oldest, behind_ms, now), latest, True
        page = _call(doing, kinesis.get_records, ShardIterator=iterator, Limit=LAG_READ_LIMIT)
        records = page.get("Records", [])
        if records:
            count += len(records)
            latest = records[-1]["SequenceNumber"]
            if oldest is None:
                arrived = records[0].get("ApproximateArrivalTimestamp")
                oldest = arrived.timestamp() if hasattr(arrived, "timestamp") else None
        behind_ms = int(page.get("MillisBehindLatest") or 0)
        iterator = page.get("NextShardIterator")
        if len(records) < LAG_READ_LIMIT and not behind_ms:  # at the tip
            return count, _wait(oldest, behind_ms, now), latest, True
    return count, _wait(oldest, behind_ms, now), latest, False


def _call(doing: str, method: Any, **request: Any) -> Any:
    """One AWS call, its failures translated (a missing stream is an XflowError), retried while they may pass."""
    def once() -> Any:
        with translate_errors(doing):
            try:
                return method(**request)
            except Exception as exc:
                if is_client_error(exc, "ResourceNotFoundException"):
                    raise XflowError(f"{doing}: {request.get('StreamName') or request.get('TableName') or 'it'} "
                                     "does not exist", "run xflow setup first") from None
                raise

    return retrying(PATIENCE)(once)


def _wait(oldest: float | None, behind_ms: int, now: float) -> float:
    if oldest is not None:
        return max(0.0, now - oldest)
    return behind_ms / 1000
