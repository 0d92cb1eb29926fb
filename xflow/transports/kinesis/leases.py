"""The DynamoDB lease table of the kinesis transport: shard leases, checkpoints and group members.

One table per workflow (``xflow-<workflow_id>-checkpoints``, key ``lease``) holds two kinds of item:

- a lease per (group, stream, shard), ``<group>|<stream>|<shard id>``: its ``owner`` (a member id, ``""`` when
  handed back), ``expires`` (seconds since the epoch) and ``checkpoint`` (the last sequence number settled, or
  :data:`SHARD_END` for a closed shard read to its end);
- a heartbeat per live member of a group, ``member|<group>|<owner>``, with its ``expires``.

A lease is taken when free, handed back or expired (a conditional update), renewed only by its owner, and a
checkpoint is written only by the owner (the update also renews the lease). :class:`DynamoLeaseStore` is a
group's view of the table: the core's :class:`~xflow.core.leases.LeaseStore` (the
:class:`~xflow.core.leases.LeaseCoordinator` decides which shards a member holds, and renews them from its keeper
thread) plus the checkpoints. Transient failures are retried for ``patience`` seconds where a lost call would cost
a lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from xflow.aws import TAG_KEY, AwsSession, is_client_error, retrying, translate_errors
from xflow.core.errors import XflowError
from xflow.core.leases import LeaseStore

log = logging.getLogger("xflow.kinesis")

#: the checkpoint of a shard that was read to its end after a reshard and settled: its children may be read
SHARD_END = "SHARD_END"


def table_definition(table: str, workflow_id: str) -> dict[str, Any]:
    """The CreateTable parameters of a lease table (JSON-able)."""
    return {
        "TableName": table,
        "KeySchema": [{"AttributeName": "lease", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "lease", "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
        "Tags": [{"Key": TAG_KEY, "Value": workflow_id}],
    }


class LeaseTable:
    """The table itself: whether it exists, making it (on first subscribe), removing it (teardown)."""

    def __init__(self, aws: AwsSession, name: str, workflow_id: str, lease_seconds: float) -> None:
        self.aws = aws
        self.name = name
        self.workflow_id = workflow_id
        self.lease_seconds = lease_seconds

    @property
    def dynamodb(self) -> Any:
        """DynamoDB with a long-running client's retries: workers use the table all the time."""
        return self.aws.client("dynamodb", long_running=True)

    def exists(self) -> bool:
        with translate_errors(f"describing table {self.name}"):
            try:
                self.dynamodb.describe_table(TableName=self.name)
                return True
            except Exception as exc:
                if is_client_error(exc, "ResourceNotFoundException"):
                    return False
                raise

    def create(self, **definition: Any) -> None:
        """CreateTable with ``definition`` (see :func:`table_definition`; one being made already is fine), then
        wait until it is active."""
        name = definition.get("TableName", self.name)
        with translate_errors(f"creating table {name}"):
            try:
                self.dynamodb.create_table(**definition)
            except Exception as exc:
                if not is_client_error(exc, "ResourceInUseException"):
                    raise
            self.dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    def ensure(self) -> None:
        if not self.exists():
            self.create(**table_definition(self.name, self.workflow_id))

    def delete(self, TableName: str | None = None) -> None:  # noqa: N803 -- DeleteTable's own parameter name
        """DeleteTable; one that is already gone is fine."""
        name = TableName or self.name
        with translate_errors(f"deleting table {name}"):
            try:
                self.dynamodb.delete_table(TableName=name)
            except Exception as exc:
                if not is_client_error(exc, "ResourceNotFoundException"):
                    raise

    def group(self, group: str, patience: float) -> DynamoLeaseStore:
        """The leases and members of one consumer group."""
        return DynamoLeaseStore(self, group, patience)


T = TypeVar("T")


def _lost(exc: XflowError) -> bool:
    """Whether a conditional write failed because the lease is not (or no longer) this member's."""
    return "ConditionalCheckFailed" in exc.message


class DynamoLeaseStore(LeaseStore[str]):
    """One consumer group in the lease table: the core's lease store (units are lease keys), and the shards'
    checkpoints. Every call is retried for ``patience`` seconds on transient failures."""

    def __init__(self, table: LeaseTable, group: str, patience: float) -> None:
        self.table = table
        self.group = group
        #: how long (seconds) a call is retried before it fails
        self.patience = patience
        #: the checkpoint each lease held when this store last acquired it (read by the consumer as it starts it)
        self.acquired: dict[str, str | None] = {}

    def lease_key(self, stream: str, shard_id: str) -> str:
        return f"{self.group}|{stream}|{shard_id}"

    def _member_key(self, member: str) -> str:
        return f"member|{self.group}|{member}"

    def _retried(self, call: Callable[[], T]) -> T:
        return retrying(self.patience)(call)

    def _update(self, doing: str, lease: str, **request: Any) -> dict[str, Any] | None:
        """A conditional UpdateItem of ``lease``, retried: the item's attributes (with ``ReturnValues``), or None when
        its condition (the lease is this member's, or free) failed."""
        def update() -> dict[str, Any]:
            with translate_errors(f"{doing} {lease}"):
                return dict(self.table.dynamodb.update_item(TableName=self.table.name, Key={"lease": {"S": lease}},
                                                            **request))

        try:
            return dict(self._retried(update).get("Attributes", {}))
        except XflowError as exc:
            if _lost(exc):
                return None
            raise

    # ------------------------------------------------------------------ members

    def heartbeat(self, member: str, ttl: float) -> None:
        def put() -> None:
            with translate_errors(f"announcing a member of group {self.group}"):
                self.table.dynamodb.put_item(TableName=self.table.name, Item={
                    "lease": {"S": self._member_key(member)}, "expires": {"N": str(time.time() + ttl)}})

        self._retried(put)

    def live_members(self) -> int:
        def count() -> int:
            live = 0
            with translate_errors(f"counting the members of group {self.group}"):
                for page in self.table.dynamodb.get_paginator("scan").paginate(
                        TableName=self.table.name, FilterExpression="begins_with(#l, :p) AND expires > :now",
                        ExpressionAttributeNames={"#l": "lease"},
                        ExpressionAttributeValues={":p": {"S": f"member|{self.group}|"},
                                                   ":now": {"N": str(time.time())}}):
                    live += len(page.get("Items", []))
            return live

        return self._retried(count)

    def leave(self, member: str) -> None:
        with translate_errors(f"leaving group {self.group}"):
            self.table.dynamodb.delete_item(TableName=self.table.name, Key={"lease": {"S": self._member_key(member)}})

    # ------------------------------------------------------------------ leases

    def acquire(self, unit: str, member: str, ttl: float) -> bool:
        """Take the lease if free, handed back, expired or ``member``'s, keeping its checkpoint (in
        :attr:`acquired`)."""
        now = time.time()
        item = self._update(
            "taking the lease on", unit,
            UpdateExpression="SET #o = :me, expires = :exp",
            ConditionExpression="attribute_not_exists(#o) OR #o = :me OR #o = :none OR expires < :now",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={":me": {"S": member}, ":none": {"S": ""}, ":exp": {"N": str(now + ttl)},
                                       ":now": {"N": str(now)}},
            ReturnValues="ALL_NEW")
        if item is None:
            return False
        found = item.get("checkpoint", {}).get("S")
        self.acquired[unit] = None if found is None else str(found)
        return True

    def renew(self, units: Sequence[str], member: str, ttl: float) -> set[str]:
        return {lease for lease in units if self._update(  # the update that takes a lease, on the owner's only
            "extending the lease on", lease, UpdateExpression="SET #o = :me, expires = :exp", ConditionExpression="#o = :me",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={":me": {"S": member}, ":exp": {"N": str(time.time() + ttl)}}) is not None}

    def release(self, units: Sequence[str], member: str) -> None:
        for lease in units:
            self._update("handing back the lease on", lease, UpdateExpression="SET #o = :none, expires = :zero",
                         ConditionExpression="#o = :me", ExpressionAttributeNames={"#o": "owner"},
                         ExpressionAttributeValues={":none": {"S": ""}, ":zero": {"N": "0"}, ":me": {"S": member}})

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, lease: str, member: str, position: str, ttl: float) -> bool:
        """Record ``position`` as settled (which renews the lease for ``ttl``). False when the lease is not
        ``member``'s any more."""
        return self._update(
            "checkpointing", lease, UpdateExpression="SET checkpoint = :seq, expires = :exp",
            ConditionExpression="#o = :me", ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={":seq": {"S": position}, ":me": {"S": member},
                                       ":exp": {"N": str(time.time() + ttl)}}) is not None

    def finish(self, lease: str, member: str) -> bool:
        """Record that a closed shard was read to its end and settled (:data:`SHARD_END`) and hand the lease back,
        in one write. False when the lease was taken over first."""
        return self._update(
            "checkpointing the end of", lease, UpdateExpression="SET checkpoint = :end, #o = :none, expires = :zero",
            ConditionExpression="#o = :me", ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={":end": {"S": SHARD_END}, ":none": {"S": ""}, ":zero": {"N": "0"},
                                       ":me": {"S": member}}) is not None

    def checkpoint_of(self, lease: str) -> str | None:
        """The checkpoint a lease holds now, whoever owns it (a consistent read)."""
        with translate_errors(f"reading the checkpoint of {lease}"):
            item = self.table.dynamodb.get_item(TableName=self.table.name, Key={"lease": {"S": lease}},
                                                ConsistentRead=True).get("Item", {})
        found = item.get("checkpoint", {}).get("S")
        return str(found) if found is not None else None
