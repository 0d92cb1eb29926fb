"""What the ``kafka`` transport asks of a Kafka client library: the protocol both clients implement, and their
shared pieces (settings, records to produce, classified errors, deadlines for calls that have none).

Two clients implement :class:`KafkaClient`: :mod:`~xflow.transports.kafka.clients.kafka_python` (pure Python, the
default) and :mod:`~xflow.transports.kafka.clients.confluent` (librdkafka, ``client: confluent``, many times faster).
Both offer the same small surface: topic and consumer-group admin, a producer that sends a batch and waits for every
acknowledgement, and a consumer-group member (:class:`GroupMember`) with manual commits. Both put a key on the same
partition: the Java client's murmur2 hash (kafka-python's default, librdkafka's ``murmur2_random``), so workers on
different clients keep an execution on one partition. Client libraries are imported when a client is built, never at
import time; every client error leaves a client as :class:`KafkaClientError` (with ``unreachable`` / ``transient`` /
``too_large`` / ``rebalanced`` flags the transport turns into messages).

Every call has a deadline: a publish waits at most its ``timeout`` in all (metadata, queueing, acknowledgements),
admin requests at most the request and connect timeouts (kafka-python's admin client has no deadline of its own,
so it is waited for from a helper thread), commits and closes are bounded by the clients' settings. A producer whose
publish failed is dropped (closed in the background) and a new one is made for the next publish, so a producer
wedged by a broker restart or kill cannot hold publishing up once the broker is back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

from xflow.core.errors import XflowError
from xflow.core.interfaces import Delivery

log = logging.getLogger("xflow.kafka")
T = TypeVar("T")

#: offsets to commit: (topic, partition) -> the offset of the next record to read
Offsets = Mapping[tuple[str, int], int]


class KafkaClientError(Exception):
    """A failure reported by a client library, classified.

    ``unreachable``: no broker answered in time (down, restarting, wrong address); ``transient``: a broker answered
    with an error that passes by itself (a leader or coordinator moving or loading, not enough replicas yet, a
    request timed out). Both may pass: :attr:`passing`.
    """

    def __init__(self, message: str, *, unreachable: bool = False, transient: bool = False, too_large: bool = False,
                 rebalanced: bool = False, exists: bool = False, missing: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.transient = transient
        self.too_large = too_large
        self.rebalanced = rebalanced
        self.exists = exists
        self.missing = missing

    @property
    def passing(self) -> bool:
        """Whether the failure may pass by itself (the broker is away or busy), as opposed to a mistake."""
        return self.unreachable or self.transient


@dataclass(frozen=True)
class ClientSettings:
    """Everything a client needs, in the transport's own (kafka-python style) names."""

    bootstrap_servers: str
    connect_timeout_ms: int
    request_timeout_ms: int
    session_timeout_ms: int
    security: Mapping[str, str]
    extra: Mapping[str, Any]


class Outgoing(NamedTuple):
    """A record to produce (a named tuple: one is made per record published, so it must be cheap)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class GroupDeletion:
    """What deleting one consumer group came to."""

    group: str
    deleted: bool
    #: "" when deleted; "missing" (no such group), "not_empty" (members still in it) or the client's error
    problem: str = ""


@dataclass(frozen=True)
class GroupPositions:
    """Where a consumer group stands on some partitions (what lag is computed from)."""

    #: (topic, partition) -> the group's committed offset (the next record it reads); partitions never committed are
    #: left out
    committed: Mapping[tuple[str, int], int]
    #: (topic, partition) -> the end offset (the offset the next record appended gets)
    ends: Mapping[tuple[str, int], int]
    #: (topic, partition) -> the first offset still kept, for the partitions the group never committed
    starts: Mapping[tuple[str, int], int]
    #: the partitions assigned to a member of the group now; None when the broker would not say
    assigned: set[tuple[str, int]] | None


class GroupMember(Protocol):
    """One member of a consumer group, made by :meth:`KafkaClient.consumer`. Used by one thread at a time."""

    def poll(self, max_records: int, timeout: float) -> list[Delivery]:
        """Up to ``max_records`` records as deliveries (``event`` named through the topics the member was made
        with), waiting at most ``timeout`` seconds for the first; each partition's records in order."""

    def commit(self, offsets: Offsets, asynchronous: bool) -> None:
        """Commit these offsets; ``asynchronous``: send the request and return (a failure shows in
        :meth:`take_commit_failure`), else wait for the broker's answer (a failure raises KafkaClientError)."""

    def take_commit_failure(self) -> KafkaClientError | None:
        """The first failure of an asynchronous commit since the last call, if any (then forgotten)."""

    def assignment(self) -> set[tuple[str, int]]:
        """The (topic, partition) pairs assigned to this member now."""

    def close(self) -> None:
        """Leave the group (asynchronous commits sent before are completed first); never raises."""


class KafkaClient(Protocol):
    """A client library reduced to what the transport needs (see the module's docstring)."""

    name: str
    settings: ClientSettings

    def topic_partitions(self) -> dict[str, int]:
        """Every topic of the cluster (internal ones left out) and its partition count."""

    def create_topic(self, topic: str, partitions: int, replication_factor: int) -> None: ...

    def add_partitions(self, topic: str, total: int) -> None: ...

    def delete_topics(self, topics: Sequence[str]) -> None: ...

    def consumer_groups(self) -> list[str]:
        """The ids of the cluster's consumer groups."""

    def delete_groups(self, groups: Sequence[str]) -> list[GroupDeletion]: ...

    def group_positions(self, group_id: str, partitions: Sequence[tuple[str, int]]) -> GroupPositions:
        """The group's committed offsets, the partitions' end offsets and the members' assignment (reads only)."""

    def produce(self, records: Sequence[Outgoing], timeout: float) -> None:
        """Send every record and wait until each is acknowledged by all in-sync replicas, ``timeout`` s at most."""

    def consumer(self, group_id: str, events: Mapping[str, str], offset_reset: str) -> GroupMember:
        """A member of ``group_id`` reading the topics of ``events`` (topic -> event name)."""

    def close(self) -> None: ...


def bounded(doing: str, seconds: float, call: Callable[[], T]) -> T:
    """``call()``, waited for at most ``seconds`` (for library calls that have no deadline of their own).

    The call runs in a daemon helper thread; one still running after ``seconds`` is left to finish or fail by
    itself, and reported as :class:`KafkaClientError` with ``unreachable`` set.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    helper = threading.Thread(target=run, name=f"xflow-kafka: {doing}", daemon=True)
    helper.start()
    helper.join(seconds)
    if helper.is_alive():
        raise KafkaClientError(f"{doing}: no answer within {seconds:.0f} s", unreachable=True)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def in_background(doing: str, call: Callable[[], Any]) -> None:
    """Run ``call()`` in a daemon thread, logging (at debug) what it raises: closing a client that may be wedged."""
    def run() -> None:
        try:
            call()
        except Exception as exc:
            log.debug("%s: %s", doing, exc)

    threading.Thread(target=run, name=f"xflow-kafka: {doing}", daemon=True).start()


def record_time(milliseconds: int | None) -> float | None:
    """A record timestamp in milliseconds as seconds; the clients give -1 (or None) for none."""
    return milliseconds / 1000 if milliseconds is not None and milliseconds >= 0 else None


def install_hint(package: str, extra: str) -> XflowError:
    return XflowError(f"the kafka transport needs the {package} package, which is not installed",
                      f"pip install 'xflow[{extra}]'")


def group_offsets(entries: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int], int]:
    """The offsets to commit: the highest offset + 1 per (topic, partition)."""
    offsets: dict[tuple[str, int], int] = {}
    for topic, partition, offset in entries:
        key = (topic, partition)
        offsets[key] = max(offsets.get(key, 0), offset + 1)
    return offsets
