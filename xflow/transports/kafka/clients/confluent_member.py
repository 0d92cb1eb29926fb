"""A member of a consumer group through confluent-kafka (librdkafka): the ``confluent`` client's GroupMember.

Polls take a batch at once (``consume``) and hand the records out as deliveries; commits are sent asynchronously when
the transport asks so, a failure coming back through ``on_commit`` (served while the member polls) and kept for
:meth:`ConfluentMember.take_commit_failure`; closing completes the commits in flight before leaving the group.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from xflow.core.fastrecords import maker, new_delivery
from xflow.core.interfaces import Delivery
from xflow.transports.kafka.clients.base import KafkaClientError, Offsets, record_time

if TYPE_CHECKING:
    from xflow.transports.kafka.clients.base import GroupMember
    from xflow.transports.kafka.clients.confluent import ConfluentClient

log = logging.getLogger("xflow.kafka")

#: poll makes a Delivery per record by filling a new instance's ``__dict__`` with keywords, a third of
#: :func:`~xflow.core.fastrecords.new_delivery`'s cost; only while Delivery is the plain dataclass of these fields
#: (what :func:`~xflow.core.fastrecords.maker` checks), else poll uses new_delivery
_FAST_DELIVERY = (tuple(f.name for f in dataclasses.fields(Delivery))
                  == ("event", "partition", "position", "key", "value", "timestamp")
                  and maker(Delivery) is not Delivery)


class ConfluentMember:
    """A member of a consumer group, through librdkafka's Consumer."""

    def __init__(self, client: ConfluentClient, events: Mapping[str, str]) -> None:
        self.client = client
        self.events = dict(events)
        self.consumer: Any = None
        self._commit_failure: KafkaClientError | None = None
        self._partitions: dict[int, str] = {}  # partition number -> its name in deliveries

    def poll(self, max_records: int, timeout: float) -> list[Delivery]:
        from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaException

        try:
            messages = self.consumer.consume(num_messages=max_records, timeout=timeout)
        except KafkaException as exc:
            raise self.client._error(exc, "polling") from exc
        if not _FAST_DELIVERY:
            return self._deliveries(messages)
        # the loop runs once per record: names bound once, a partition's name made once, the Delivery filled in
        # place (see _FAST_DELIVERY), errors handled outside the loop
        found: list[Delivery] = []
        append = found.append
        new = object.__new__
        events = self.events
        partitions = self._partitions
        troubled: list[Any] = []
        for m in messages:
            if m.error() is not None:
                troubled.append(m)
                continue
            topic, key, partition = m.topic(), m.key(), m.partition()
            kind, stamp = m.timestamp()
            delivery = new(Delivery)
            delivery.__dict__.update(
                event=events.get(topic, topic),
                partition=partitions.get(partition) or self._partition(partition),
                position=str(m.offset()),
                key=key.decode("utf-8", "replace") if key is not None else None,
                value=m.value() or b"",
                timestamp=stamp / 1000 if kind != TIMESTAMP_NOT_AVAILABLE and stamp >= 0 else None)
            append(delivery)
        if troubled:
            self._troubles(troubled, len(found))
        # consume() may interleave partitions but keeps each partition's order, which is what counts
        return found

    def _partition(self, partition: int) -> str:
        name = self._partitions[partition] = str(partition)
        return name

    def _deliveries(self, messages: list[Any]) -> list[Delivery]:
        """poll's records, made with :func:`~xflow.core.fastrecords.new_delivery` (Delivery is not what the fast
        path expects)."""
        from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

        found = []
        troubled = []
        for m in messages:
            if m.error() is not None:
                troubled.append(m)
                continue
            topic, key = m.topic(), m.key()
            kind, stamp = m.timestamp()
            found.append(new_delivery(self.events.get(topic, topic), str(m.partition()), str(m.offset()),
                                      key.decode("utf-8", "replace") if key is not None else None, m.value() or b"",
                                      record_time(stamp) if kind != TIMESTAMP_NOT_AVAILABLE else None))
        if troubled:
            self._troubles(troubled, len(found))
        return found

    def _troubles(self, messages: list[Any], read: int) -> None:
        """The error events among a poll's messages (``read``: the records it read besides): a fatal one raises, one
        that may pass raises when the poll read nothing (a broker away: the caller waits and polls again), the rest
        are logged."""
        from confluent_kafka import KafkaError

        problem: KafkaClientError | None = None
        for m in messages:
            err = m.error()
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            if err.fatal():  # the member is unusable; what it read and did not commit goes to the others
                raise KafkaClientError(f"polling: {err}")
            error = self.client._classify(err, f"polling: {err}")
            if error.passing:
                problem = problem or error
            else:
                log.warning("kafka consumer: %s", err)
        if problem is not None:
            if not read:  # a broker away (librdkafka reconnects by itself): the caller waits and polls again
                raise problem
            # the records read must be handed out (the consumer's position is past them); the error is only noted
            log.debug("kafka consumer: %s (after %d records)", problem, read)

    def commit(self, offsets: Offsets, asynchronous: bool) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                 asynchronous=asynchronous)
        except KafkaException as exc:
            raise self.client._error(exc, "committing offsets") from exc

    def committed(self, err: Any, partitions: Any) -> None:
        """librdkafka's ``on_commit``: keeps the first failure of a commit (served while the member polls)."""
        from confluent_kafka import KafkaError

        if self._commit_failure is not None:
            return
        if err is None:
            err = next((tp.error for tp in partitions or () if tp.error is not None), None)
        if err is not None and err.code() != KafkaError._NO_OFFSET:  # _NO_OFFSET: nothing new to commit
            self._commit_failure = self.client._classify(err, f"committing offsets: {err}")

    def take_commit_failure(self) -> KafkaClientError | None:
        failure, self._commit_failure = self._commit_failure, None
        return failure

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def close(self) -> None:
        if self.consumer is None:
            return
        try:  # librdkafka completes the commits in flight, then leaves the group
            self.consumer.close()
        except Exception as exc:
            log.debug("closing confluent consumer: %s", exc)


if TYPE_CHECKING:  # checked by mypy: the class is a GroupMember
    _checked: type[GroupMember] = ConfluentMember
