"""A member of a consumer group through confluent-kafka (librdkafka): the ``confluent`` client's GroupMember.

Polls take a batch at once (``consume``) and hand the records out as deliveries; commits are sent asynchronously when
the transport asks so, a failure coming back through ``on_commit`` (served while the member polls) and kept for
:meth:`ConfluentMember.take_commit_failure`; closing completes the commits in flight before leaving the group.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from xflow.core.fastrecords import new_delivery
from xflow.core.interfaces import Delivery
from xflow.transports.kafka.clients.base import KafkaClientError, Offsets, record_time

if TYPE_CHECKING:
    from xflow.transports.kafka.clients.base import GroupMember
    from xflow.transports.kafka.clients.confluent import ConfluentClient

log = logging.getLogger("xflow.kafka")


class ConfluentMember:
    """A member of a consumer group, through librdkafka's Consumer."""

    def __init__(self, client: ConfluentClient, events: Mapping[str, str]) -> None:
        self.client = client
        self.events = dict(events)
        self.consumer: Any = None
        self._commit_failure: KafkaClientError | None = None

    def poll(self, max_records: int, timeout: float) -> list[Delivery]:
        from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException

        try:
            messages = self.consumer.consume(num_messages=max_records, timeout=timeout)
        except KafkaException as exc:
            raise self.client._error(exc, "polling") from exc
        found = []
        problem: KafkaClientError | None = None
        events = self.events
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():  # the member is unusable; what it read and did not commit goes to the others
                    raise KafkaClientError(f"polling: {err}")
                error = self.client._classify(err, f"polling: {err}")
                if error.passing:
                    problem = problem or error
                else:
                    log.warning("kafka consumer: %s", err)
                continue
            topic, key = m.topic(), m.key()
            kind, stamp = m.timestamp()
            found.append(new_delivery(events.get(topic, topic), str(m.partition()), str(m.offset()),
                                      key.decode("utf-8", "replace") if key is not None else None, m.value() or b"",
                                      record_time(stamp) if kind != TIMESTAMP_NOT_AVAILABLE else None))
        if problem is not None:
            if not found:  # a broker away (librdkafka reconnects by itself): the caller waits and polls again
                raise problem
            # the records read must be handed out (the consumer's position is past them); the error is only noted
            log.debug("kafka consumer: %s (after %d records)", problem, len(found))
        # consume() may interleave partitions but keeps each partition's order, which is what counts
        return found

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
