"""The kinesis transport's consumer: reads the shards a group member holds leases on, hands out and commits records.

Leases, checkpoints and group members live in the DynamoDB table of :mod:`xflow.transports.kinesis.leases`;
the core's :class:`~xflow.core.leases.LeaseCoordinator` decides which shards to hold (a fair share of the group's);
this module reads them within Kinesis' limits and keeps each execution's order across reshards.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from xflow.aws import is_client_error, retrying, translate_errors
from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.interfaces import Consumer, Delivery
from xflow.core.leases import LeaseCoordinator
from xflow.transports.kinesis.leases import SHARD_END

if TYPE_CHECKING:
    from xflow.transports.kinesis.transport import KinesisTransport

log = logging.getLogger("xflow.kinesis")


class _Shard:
    def __init__(self, event: str, stream: str, shard_id: str, lease: str) -> None:
        self.event = event
        self.stream = stream
        self.shard_id = shard_id
        self.lease = lease
        self.iterator: str | None = None
        self.owned = False
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
    uncommitted on it, a shard above that share, so a second worker gets half the shards
    (:class:`~xflow.core.leases.LeaseCoordinator`; nothing more is handed out of a shard to hand back).

    Kinesis allows 5 GetRecords calls per second per shard, shared by every reader of the stream:
    a shard is read at most every ``READ_INTERVAL`` seconds, however often ``poll`` is called,
    up to ``READ_LIMIT`` records a call (what a poll does not take waits in memory for the next
    polls), and a throttled shard waits longer each time (exponential backoff with jitter). After a
    reshard, a child shard is read only once its parent(s) were read to their end and every
    record of them was committed (their checkpoint is then ``SHARD_END``), so the records of an
    execution keep their order across the reshard.

    Transient AWS failures are retried where they happen: DynamoDB calls (leases, heartbeats,
    checkpoints) in :class:`~xflow.transports.kinesis.leases.LeaseStore`, for up to a third of the lease
    time; ListShards and GetShardIterator with tenacity; a GetRecords
    call that fails anyway backs its shard off as throttling does (other shards go on). Only then
    does :class:`BackendUnavailable` reach the worker, which waits it out. A poll that already took
    records when a later call fails hands those records out (the failure comes again next poll).

    The coordinator's keeper thread renews the leases held (and the heartbeat) while handlers run; taking,
    handing back and losing leases stay with the polling thread.
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
        self.cursor = 0
        #: how long (seconds) a lease, heartbeat, checkpoint or shard-listing call is retried before it fails
        self.patience = max(2.0, transport.lease_seconds / 3)
        self.store = transport.leases.group(group, self.patience)
        self.leases = LeaseCoordinator(self.store, self.owner, transport.lease_seconds,
                                       check_seconds=min(2.0, transport.lease_seconds / 3), name=group)

    def _lease_key(self, stream: str, shard_id: str) -> str:
        return self.store.lease_key(stream, shard_id)

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
            if self.store.checkpoint_of(lease) != SHARD_END:
                return False
            parent.finished = True
        return True

    def _start(self, shard: _Shard) -> None:
        """A lease just taken: read the shard from the checkpoint the lease held."""
        checkpoint = self.store.acquired.pop(shard.lease, None)
        if checkpoint == SHARD_END:  # another member read it to its end: nothing left here
            shard.finished = True
            self.leases.release([shard.lease])
            return
        try:
            shard.iterator = self._iterator(shard, checkpoint)
        except XflowError:
            self.leases.release([shard.lease])  # not readable now: hand the lease back, take it again later
            raise
        shard.last_read = int(checkpoint) if checkpoint else None
        shard.ended = False
        shard.next_read_at = 0.0
        shard.pending.clear()
        shard.buffer.clear()
        shard.owned = True

    def _drop(self, shard: _Shard) -> None:
        shard.owned, shard.iterator = False, None
        shard.pending.clear()
        shard.buffer.clear()

    def _finish(self, shard: _Shard) -> None:
        """A closed shard was read to its end and all of it committed: mark it so, for its children, and let go."""
        self.leases.drop(shard.lease)  # the lease is handed back by the same write
        if not self.store.finish(shard.lease, self.owner):
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
        if not self.shards or time.monotonic() - self.scanned_at > self.RESCAN_SECONDS:
            self._scan()
        # shards to share out: not read to their end yet, and not waiting for a parent
        readable = [s.lease for s in self.shards.values() if not s.finished and (s.owned or self._parents_done(s))]
        changes = self.leases.rebalance(readable, lambda lease: bool(self.shards[lease].pending))
        for lease in changes.dropped:
            self._drop(self.shards[lease])
        failed: XflowError | None = None
        for lease in changes.taken:  # each taken shard is started, even when one of them cannot be
            try:
                self._start(self.shards[lease])
            except XflowError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

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
            draining = self.leases.draining  # to hand back once settled: nothing more is handed out of them
            reading = [s for s in self.shards.values()
                       if s.owned and s.lease not in draining and (s.buffer or (s.iterator and not s.ended))]
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
        for (event, partition), delivery in latest.items():
            lease = self._lease_key(self.transport.stream_name(event), partition)
            if not self.store.checkpoint(lease, self.owner, delivery.position, self.transport.lease_seconds):
                log.warning("lease on %s was taken over; its records will be delivered again", lease)
                self.leases.drop(lease)
                shard = self.shards.get(lease)
                if shard:
                    self._drop(shard)
                continue
            shard = self.shards.get(lease)
            if shard:
                done = int(delivery.position)
                shard.pending = {p for p in shard.pending if int(p) > done}
                self._end_if_done(shard)

    def keep_alive(self) -> None:
        """While handlers run and nothing polls: extend the leases held (and the heartbeat) when due. The lease
        keeper does the same by itself; this is the runner's cheap, explicit say-so."""
        self.leases.keep_alive()

    def close(self) -> None:
        """Leave the group, handing the leases back (best effort: they and the heartbeat expire anyway)."""
        try:
            self.leases.close()
        except XflowError as exc:
            log.debug("leaving group %s: %s", self.group, exc)
        for shard in self.shards.values():
            self._drop(shard)
