"""The DynamoDB lease table of the kinesis transport: shard leases, checkpoints, group members, the lease keeper.

One table per workflow (``xflow-<workflow_id>-checkpoints``, key ``lease``) holds two kinds of item:

- a lease per (group, stream, shard), ``<group>|<stream>|<shard id>``: its ``owner`` (a member id, ``""`` when
  handed back), ``expires`` (seconds since the epoch) and ``checkpoint`` (the last sequence number settled, or
  :data:`SHARD_END` for a closed shard read to its end);
- a heartbeat per live member of a group, ``member|<group>|<owner>``, with its ``expires``.

A lease is taken when free, handed back or expired (a conditional update), renewed only by its owner, and a
checkpoint is written only by the owner (the update also renews the lease). :class:`LeaseStore` is one group
member's view of the table; :class:`LeaseKeeper` is the thread that renews what a member holds while its
handlers run. Transient failures are retried for ``patience`` seconds where a lost call would cost a lease.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from xflow.aws import TAG_KEY, AwsSession, is_client_error, retrying, translate_errors
from xflow.core.errors import XflowError

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

    def member(self, group: str, owner: str, patience: float) -> LeaseStore:
        return LeaseStore(self, group, owner, patience)


@dataclass(frozen=True)
class Acquired:
    """A lease this member holds now, with the checkpoint it held (None: nothing settled yet)."""

    checkpoint: str | None


def _lost(exc: XflowError) -> bool:
    """Whether a conditional write failed because the lease is not (or no longer) this member's."""
    return "ConditionalCheckFailed" in exc.message


class LeaseStore:
    """One member of a consumer group, as the table sees it: heartbeat, acquire, renew, release, checkpoints."""

    def __init__(self, table: LeaseTable, group: str, owner: str, patience: float) -> None:
        self.table = table
        self.group = group
        self.owner = owner
        #: how long (seconds) a heartbeat, an acquisition or a checkpoint is retried before it fails
        self.patience = patience
        #: when (monotonic) this member's heartbeat item was last written
        self.announced_at = 0.0

    @property
    def lease_seconds(self) -> float:
        return self.table.lease_seconds

    def lease_key(self, stream: str, shard_id: str) -> str:
        return f"{self.group}|{stream}|{shard_id}"

    @property
    def _member_key(self) -> str:
        return f"member|{self.group}|{self.owner}"

    def _expiry(self) -> dict[str, str]:
        return {"N": str(time.time() + self.lease_seconds)}

    # ------------------------------------------------------------------ members

    def heartbeat(self) -> int:
        """Say this member is alive and count the group's live members (at least 1); retried."""
        return int(retrying(self.patience)(self._heartbeat_once))

    def _heartbeat_once(self) -> int:
        ddb = self.table.dynamodb
        now = time.time()
        prefix = f"member|{self.group}|"
        with translate_errors(f"announcing a member of group {self.group}"):
            ddb.put_item(TableName=self.table.name, Item={"lease": {"S": self._member_key},
                                                          "expires": {"N": str(now + self.lease_seconds)}})
            self.announced_at = time.monotonic()
            live = 0
            for page in ddb.get_paginator("scan").paginate(
                    TableName=self.table.name, FilterExpression="begins_with(#l, :p) AND expires > :now",
                    ExpressionAttributeNames={"#l": "lease"},
                    ExpressionAttributeValues={":p": {"S": prefix}, ":now": {"N": str(now)}}):
                live += len(page.get("Items", []))
        return max(1, live)

    def announce(self) -> None:
        """Extend this member's heartbeat only (one try: the lease keeper's way)."""
        with translate_errors(f"announcing a member of group {self.group}"):
            self.table.dynamodb.put_item(TableName=self.table.name,
                                         Item={"lease": {"S": self._member_key}, "expires": self._expiry()})
        self.announced_at = time.monotonic()

    def leave(self) -> None:
        """Remove this member's heartbeat (best effort: it expires anyway)."""
        try:
            self.table.dynamodb.delete_item(TableName=self.table.name, Key={"lease": {"S": self._member_key}})
        except Exception as exc:
            log.debug("leaving group %s: %s", self.group, exc)

    # ------------------------------------------------------------------ leases

    def acquire(self, lease: str) -> Acquired | None:
        """Take the lease if free, expired or this member's (which renews it), keeping its checkpoint; retried.
        None when another member holds it."""
        ddb = self.table.dynamodb

        def take() -> dict[str, Any]:
            now = time.time()
            with translate_errors(f"taking the lease on {lease}"):
                return dict(ddb.update_item(
                    TableName=self.table.name,
                    Key={"lease": {"S": lease}},
                    UpdateExpression="SET #o = :me, expires = :exp",
                    ConditionExpression="attribute_not_exists(#o) OR #o = :me OR #o = :none OR expires < :now",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":me": {"S": self.owner}, ":none": {"S": ""},
                                               ":exp": {"N": str(now + self.lease_seconds)},
                                               ":now": {"N": str(now)}},
                    ReturnValues="ALL_NEW",
                ))

        try:
            response = retrying(self.patience)(take)
        except XflowError as exc:
            if _lost(exc):
                return None
            raise
        return Acquired(response.get("Attributes", {}).get("checkpoint", {}).get("S"))

    def renew(self, lease: str) -> bool:
        """Push back the expiry of a lease this member holds (one try); False when it is no longer this member's."""
        try:
            with translate_errors(f"extending the lease on {lease}"):
                self.table.dynamodb.update_item(
                    TableName=self.table.name, Key={"lease": {"S": lease}},
                    UpdateExpression="SET expires = :exp", ConditionExpression="#o = :me",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":me": {"S": self.owner}, ":exp": self._expiry()})
        except XflowError as exc:
            if _lost(exc):
                return False
            raise
        return True

    def release(self, lease: str) -> None:
        """Hand the lease back (best effort: it expires anyway)."""
        try:
            self.table.dynamodb.update_item(
                TableName=self.table.name, Key={"lease": {"S": lease}},
                UpdateExpression="SET #o = :none, expires = :zero", ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":none": {"S": ""}, ":zero": {"N": "0"}, ":me": {"S": self.owner}},
            )
        except Exception as exc:
            log.debug("releasing %s: %s", lease, exc)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, lease: str, position: str) -> bool:
        """Record ``position`` as settled (which renews the lease); retried. False when the lease is not this
        member's any more."""
        ddb = self.table.dynamodb

        def write() -> None:
            with translate_errors(f"checkpointing {lease}"):
                ddb.update_item(
                    TableName=self.table.name,
                    Key={"lease": {"S": lease}},
                    UpdateExpression="SET checkpoint = :seq, expires = :exp",
                    ConditionExpression="#o = :me",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":seq": {"S": position}, ":me": {"S": self.owner},
                                               ":exp": self._expiry()},
                )

        try:
            retrying(self.patience)(write)
        except XflowError as exc:
            if _lost(exc):
                return False
            raise
        return True

    def finish(self, lease: str) -> bool:
        """Record that a closed shard was read to its end and settled (:data:`SHARD_END`) and hand the lease back.
        False when the lease was taken over first."""
        try:
            with translate_errors(f"checkpointing the end of {lease}"):
                self.table.dynamodb.update_item(
                    TableName=self.table.name, Key={"lease": {"S": lease}},
                    UpdateExpression="SET checkpoint = :end, #o = :none, expires = :zero",
                    ConditionExpression="#o = :me",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":end": {"S": SHARD_END}, ":none": {"S": ""}, ":zero": {"N": "0"},
                                               ":me": {"S": self.owner}},
                )
        except XflowError as exc:
            if _lost(exc):
                return False
            raise
        return True

    def checkpoint_of(self, lease: str) -> str | None:
        """The checkpoint a lease holds now, whoever owns it (a consistent read)."""
        with translate_errors(f"reading the checkpoint of {lease}"):
            item = self.table.dynamodb.get_item(TableName=self.table.name, Key={"lease": {"S": lease}},
                                                ConsistentRead=True).get("Item", {})
        found = item.get("checkpoint", {}).get("S")
        return str(found) if found is not None else None


class HeldLease(Protocol):
    """What the keeper needs of a lease a member may hold."""

    lease: str
    owned: bool
    renewed_at: float


class LeaseKeeper:
    """Extends the leases a member holds, and its heartbeat, every third of the lease time: a daemon thread.

    A worker settles one function's batch at a time, and a slow batch (slow handlers, AWS calls retried with
    backoff) would let the leases of its other functions' consumers expire: another member would take them over
    and handle again what is being handled. So the keeper (like the Kinesis Client Library's lease renewer)
    renews them on its own; taking, handing back and losing leases stay with the polling thread. ``held`` is
    a bound method of the consumer returning its leases; the keeper holds it weakly and ends with :meth:`stop`,
    with the consumer, or with the process (a dead worker's leases expire as before).
    """

    def __init__(self, store: LeaseStore, held: Callable[[], Iterable[HeldLease]], name: str) -> None:
        self.store = store
        self._held = weakref.WeakMethod(held)
        self._stop = threading.Event()
        self.interval = store.lease_seconds / 3
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    def extend_due(self) -> None:
        """Renew the leases held (and the heartbeat) that are due; a lease found lost is left for the polling
        thread to notice at its next renewal (its ``renewed_at`` goes to 0)."""
        held = self._held()
        leases = list(held()) if held is not None else []
        del held
        for shard in leases:
            if self._stop.is_set():
                return
            if not shard.owned or time.monotonic() - shard.renewed_at < self.interval:
                continue
            try:
                if self.store.renew(shard.lease):
                    shard.renewed_at = time.monotonic()
                else:
                    shard.renewed_at = 0.0  # lost: the polling thread's renewal finds out and drops it
            except XflowError as exc:
                log.debug("lease keeper: %s", exc)
        if time.monotonic() - self.store.announced_at >= self.interval:
            try:
                self.store.announce()
            except XflowError as exc:
                log.debug("lease keeper: %s", exc)

    def _run(self) -> None:
        """The keeper's loop: ends when told to, or when the consumer is gone."""
        while not self._stop.wait(max(0.5, self.interval / 2)):
            if self._held() is None:
                return
            try:
                self.extend_due()
            except Exception:  # never let the keeper die of a surprise: the polling thread renews too
                log.exception("lease keeper of group %s", self.store.group)
