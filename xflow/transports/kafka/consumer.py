"""A member of a function's consumer group on the ``kafka`` transport: polls, keeps itself alive, commits.

Commits follow the runner's settlements (a runner commits only what it settled), so they need not wait for the
broker: each is sent asynchronously where the client allows it (confluent), and a commit that failed is made good by
the next one, which then carries the latest offset of every partition the member still holds. Closing completes the
commits in flight before the member leaves the group. At worst a lost commit costs a re-delivery, which the runner
drops as already handled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from xflow.core.interfaces import Consumer, Delivery
from xflow.transports.kafka.clients.base import GroupMember, KafkaClientError, group_offsets

if TYPE_CHECKING:
    from xflow.transports.kafka.transport import KafkaTransport

log = logging.getLogger("xflow.kafka")

#: how long a consumer may go without polling before keep_alive polls (well under the default max.poll.interval.ms)
KEEP_ALIVE_AFTER = 30.0


class KafkaConsumer(Consumer):
    """One member of the consumer group ``xflow.<workflow>.<function>``."""

    def __init__(self, transport: KafkaTransport, group_id: str, topics: Mapping[str, str]) -> None:
        self.transport = transport
        self.group_id = group_id
        self.topics = dict(topics)  # topic -> event
        self.event_topics = {event: topic for topic, event in self.topics.items()}
        offset_reset = transport._offset_reset(group_id)
        self._member: GroupMember = transport._guard(
            "joining the consumer group", lambda: transport.client.consumer(group_id, self.topics, offset_reset))
        self._held: list[Delivery] = []  # read by keep_alive, handed out by the next poll
        self._last_poll = time.monotonic()
        #: the latest offset committed per (topic, partition): sent again after a commit failed
        self._latest: dict[tuple[str, int], int] = {}

    def poll(self, max_records: int, timeout: float) -> list[Delivery]:
        if self._held:
            taken, self._held = self._held[:max(1, max_records)], self._held[max(1, max_records):]
            return taken
        return self._fetch(max_records, timeout)

    def keep_alive(self) -> None:
        """While the worker's handlers keep it from polling, poll for one record every ``KEEP_ALIVE_AFTER`` seconds
        (held for the next poll), so that the group does not count this member as stuck (``max.poll.interval.ms``)
        and move its partitions away. Heartbeats themselves are sent by the client's own thread."""
        if time.monotonic() - self._last_poll >= KEEP_ALIVE_AFTER:
            self._held.extend(self._fetch(1, 0.0))

    def _fetch(self, max_records: int, timeout: float) -> list[Delivery]:
        self._last_poll = time.monotonic()
        try:
            return self._member.poll(max(1, max_records), max(0.0, timeout))
        except KafkaClientError as exc:
            if exc.rebalanced:
                log.info("kafka poll of %s: %s (the group rebalances; polling again)", self.group_id, exc)
                return []
            raise self.transport._as_error(f"polling for consumer group {self.group_id}", exc) from exc

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        """Commit up to these deliveries, without waiting for the broker where the client allows it. A broker away
        is :class:`BackendUnavailable` when the commit waits (a worker waits and commits again); a rebalance or a
        refusal only costs a re-delivery, which the engine drops as already handled."""
        if not deliveries:
            return
        topic_of = self.event_topics
        offsets = group_offsets((topic_of[d.event], int(d.partition), int(d.position)) for d in deliveries)
        self._latest.update(offsets)
        failure = self._member.take_commit_failure()
        if failure is not None:
            log.info("kafka commit of %s failed: %s (committing the latest offsets again)", self.group_id, failure)
            held = self._member.assignment()
            offsets = {**{tp: o for tp, o in self._latest.items() if tp in held}, **offsets}
        try:
            self._member.commit(offsets, asynchronous=True)
        except KafkaClientError as exc:
            if exc.passing:
                raise self.transport._as_error(f"committing offsets of consumer group {self.group_id}", exc) from exc
            if exc.rebalanced:
                # the partitions moved to another member, which will read these records again
                log.warning("kafka commit of %s lost to a rebalance: %s", self.group_id, exc)
            else:
                log.warning("kafka commit of %s failed: %s (the records will be delivered again)", self.group_id, exc)

    def close(self) -> None:
        try:
            # a commit that failed: the last chance to keep what was settled is to send it again, for the member's
            # close to complete (waiting for it here could hang on a broker that is away)
            failure = self._member.take_commit_failure()
            if failure is not None and self._latest:
                held = self._member.assignment()
                self._member.commit({tp: o for tp, o in self._latest.items() if tp in held}, asynchronous=True)
        except Exception as exc:  # leaving the group matters more
            log.warning("kafka commit of %s at close failed: %s (the records will be delivered again)",
                        self.group_id, exc)
        finally:
            self._member.close()
