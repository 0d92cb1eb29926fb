"""The confluent-kafka client behind the ``kafka`` transport (librdkafka; ``client: confluent``, ``pip install
'xflow[kafka-fast]'``).

Here: admin requests, the producer and the errors' classification; the consumer-group member is in
:mod:`~xflow.transports.kafka.clients.confluent_member`. librdkafka does the network work in threads of its own: a
publish hands its records to the producer's queue and waits for their acknowledgements once (``flush``). Every library
error leaves here as a classified :class:`~xflow.transports.kafka.clients.base.KafkaClientError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from xflow.transports.kafka.clients.base import (
    ClientSettings,
    GroupDeletion,
    GroupPositions,
    KafkaClient,
    KafkaClientError,
    Outgoing,
    install_hint,
)
from xflow.transports.kafka.clients.confluent_member import ConfluentMember

log = logging.getLogger("xflow.kafka")


_CONFLUENT_NAMES = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
}


class _LibrdkafkaLog:
    """librdkafka's log lines, into Python logging (``xflow.kafka.librdkafka``) at debug level instead of stderr.

    A broker that is away makes librdkafka log every reconnection attempt; xflow reports the failure itself, in one
    line (a command) or once per outage (a waiting worker). ``xflow -vv`` shows these lines.
    """

    logger = logging.getLogger("xflow.kafka.librdkafka")

    def log(self, _level: int, message: str, *args: Any) -> None:
        self.logger.debug(message, *args)


class ConfluentClient:
    """confluent-kafka (librdkafka)."""

    name = "confluent"

    def __init__(self, settings: ClientSettings) -> None:
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            raise install_hint("confluent-kafka", "kafka-fast") from None
        self.settings = settings
        self._admin: Any = None
        self._producer: Any = None
        self._failures: list[Any] = []

    def _common(self) -> dict[str, Any]:
        s = self.settings
        config: dict[str, Any] = {
            "bootstrap.servers": s.bootstrap_servers,
            "socket.timeout.ms": s.request_timeout_ms,
            "reconnect.backoff.max.ms": 2000,
            "logger": _LibrdkafkaLog(),
        }
        for key, value in s.security.items():
            config[_CONFLUENT_NAMES.get(key, key)] = value
        return config

    def _error(self, exc: BaseException, doing: str) -> KafkaClientError:
        from confluent_kafka import KafkaError, KafkaException

        error = exc.args[0] if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0],
                                                                                           KafkaError) else None
        return self._classify(error, f"{doing}: {exc}")

    def _classify(self, error: Any, text: str) -> KafkaClientError:
        """A librdkafka ``KafkaError`` (or None) as a :class:`KafkaClientError`."""
        from confluent_kafka import KafkaError

        code = error.code() if error is not None else None
        if code in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
                    KafkaError._MSG_TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError._RESOLVE,
                    KafkaError.NETWORK_EXCEPTION, KafkaError._TIMED_OUT_QUEUE):
            return KafkaClientError(text, unreachable=True)
        if code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG_SIZE):
            return KafkaClientError(text, too_large=True)
        if code == KafkaError.TOPIC_ALREADY_EXISTS:
            return KafkaClientError(text, exists=True)
        if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            return KafkaClientError(text, missing=True)
        if code in (KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                    KafkaError.UNKNOWN_MEMBER_ID, KafkaError._NO_OFFSET, KafkaError._ASSIGNMENT_LOST,
                    KafkaError._STATE):
            return KafkaClientError(text, rebalanced=True)
        if error is not None and not error.fatal() and (error.retriable() or code in (
                KafkaError._WAIT_COORD, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
                KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.NOT_ENOUGH_REPLICAS,
                KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND, KafkaError.KAFKA_STORAGE_ERROR,
                KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT, KafkaError._WAIT_CACHE)):
            return KafkaClientError(text, transient=True)
        return KafkaClientError(text)

    def _wait(self, doing: str, futures: Mapping[str, Any], timeout: float) -> None:
        from confluent_kafka import KafkaException

        for future in futures.values():
            try:
                future.result(timeout)
            except KafkaException as exc:
                raise self._error(exc, doing) from exc
            except TimeoutError as exc:
                raise KafkaClientError(f"{doing}: no answer in {timeout:.0f} s", unreachable=True) from exc

    def _make(self, what: str, cls: Any, config: dict[str, Any]) -> Any:
        """A librdkafka client; a setting it refuses (from ``client_config``) is a KafkaClientError, not a crash."""
        from confluent_kafka import KafkaException

        try:
            return cls(config)
        except KafkaException as exc:
            raise self._error(exc, f"making a {what}") from exc
        except (TypeError, ValueError) as exc:
            raise KafkaClientError(f"making a {what}: {exc}") from exc

    @property
    def admin(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = self._make("admin client", AdminClient, {**self._common(), **self.settings.extra})
        else:
            self._admin.poll(0)  # serves its queued log lines (nothing else is served by polling an admin client)
        return self._admin

    @property
    def _timeout(self) -> float:
        return self.settings.connect_timeout_ms / 1000

    def topic_partitions(self) -> dict[str, int]:
        from confluent_kafka import KafkaException

        try:
            metadata = self.admin.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            raise self._error(exc, "listing topics") from exc
        return {name: len(t.partitions) for name, t in metadata.topics.items() if not name.startswith("__")}

    def create_topic(self, topic: str, partitions: int, replication_factor: int) -> None:
        from confluent_kafka.admin import NewTopic

        futures = self.admin.create_topics([NewTopic(topic, partitions, replication_factor)],
                                           request_timeout=self.settings.request_timeout_ms / 1000)
        self._wait(f"creating topic {topic}", futures, self.settings.request_timeout_ms / 1000)

    def add_partitions(self, topic: str, total: int) -> None:
        from confluent_kafka.admin import NewPartitions

        futures = self.admin.create_partitions([NewPartitions(topic, total)])
        self._wait(f"adding partitions to {topic}", futures, self.settings.request_timeout_ms / 1000)

    def delete_topics(self, topics: Sequence[str]) -> None:
        futures = self.admin.delete_topics(list(topics), request_timeout=self.settings.request_timeout_ms / 1000)
        self._wait("deleting topics", futures, self.settings.request_timeout_ms / 1000)

    def consumer_groups(self) -> list[str]:
        from confluent_kafka import KafkaException

        timeout = self.settings.request_timeout_ms / 1000
        try:
            result = self.admin.list_consumer_groups(request_timeout=timeout).result(timeout + 1)
        except KafkaException as exc:
            raise self._error(exc, "listing consumer groups") from exc
        except TimeoutError as exc:
            raise KafkaClientError(f"listing consumer groups: no answer in {timeout:.0f} s", unreachable=True) from exc
        if result.errors and not result.valid:
            raise self._error(KafkaException(result.errors[0]), "listing consumer groups")
        return sorted({str(g.group_id) for g in result.valid})

    def delete_groups(self, groups: Sequence[str]) -> list[GroupDeletion]:
        from confluent_kafka import KafkaError, KafkaException

        timeout = self.settings.request_timeout_ms / 1000
        futures = self.admin.delete_consumer_groups(list(groups), request_timeout=timeout)
        found = []
        for group in groups:
            try:
                futures[group].result(timeout + 1)
            except KafkaException as exc:
                code = exc.args[0].code() if exc.args and isinstance(exc.args[0], KafkaError) else None
                if code == KafkaError.GROUP_ID_NOT_FOUND:
                    found.append(GroupDeletion(group, False, "missing"))
                elif code == KafkaError.NON_EMPTY_GROUP:
                    found.append(GroupDeletion(group, False, "not_empty"))
                else:
                    error = self._error(exc, f"deleting consumer group {group}")
                    if error.unreachable:
                        raise error from exc
                    found.append(GroupDeletion(group, False, str(exc)))
            except TimeoutError as exc:
                raise KafkaClientError(f"deleting consumer group {group}: no answer in {timeout:.0f} s",
                                       unreachable=True) from exc
            else:
                found.append(GroupDeletion(group, True))
        return found

    def group_positions(self, group_id: str, partitions: Sequence[tuple[str, int]]) -> GroupPositions:
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        timeout = self.settings.request_timeout_ms / 1000
        wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
        futures = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group_id, wanted)],
                                                         request_timeout=timeout)
        [answer] = self._results(f"reading the offsets of group {group_id}", futures, timeout)
        committed = {(tp.topic, tp.partition): int(tp.offset) for tp in answer.topic_partitions or []
                     if tp.offset >= 0 and tp.error is None}
        ends = self._offsets("reading end offsets", wanted, OffsetSpec.latest(), timeout)
        fresh = [tp for tp in wanted if (tp.topic, tp.partition) not in committed]
        starts = self._offsets("reading start offsets", fresh, OffsetSpec.earliest(), timeout) if fresh else {}
        return GroupPositions(committed, ends, starts, self._assigned(group_id, timeout))

    def _offsets(self, doing: str, partitions: list[Any], spec: Any, timeout: float) -> dict[tuple[str, int], int]:
        futures = self.admin.list_offsets({tp: spec for tp in partitions}, request_timeout=timeout)
        answers = self._results(doing, futures, timeout)
        return {(tp.topic, tp.partition): int(info.offset) for tp, info in zip(futures, answers, strict=True)}

    def _assigned(self, group_id: str, timeout: float) -> set[tuple[str, int]] | None:
        """The partitions the group's members hold (DescribeConsumerGroups); None when the broker would not say."""
        try:
            [group] = self._results(f"describing group {group_id}",
                                    self.admin.describe_consumer_groups([group_id], request_timeout=timeout), timeout)
        except KafkaClientError as exc:
            if exc.unreachable:
                raise
            log.debug("describing group %s: %s", group_id, exc)
            return None
        from confluent_kafka import ConsumerGroupState

        members = list(group.members or [])
        held = {(tp.topic, tp.partition) for member in members
                for tp in (member.assignment.topic_partitions if member.assignment else [])}
        if not held and (members or group.state not in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD)):
            return None  # members (or a group at work) without assignments: the broker does not say (Tansu)
        return held

    def _results(self, doing: str, futures: Mapping[Any, Any], timeout: float) -> list[Any]:
        """The results of admin futures, in order; a failure as a KafkaClientError."""
        from confluent_kafka import KafkaException

        try:
            return [future.result(timeout + 1) for future in futures.values()]
        except KafkaException as exc:
            raise self._error(exc, doing) from exc
        except TimeoutError as exc:
            raise KafkaClientError(f"{doing}: no answer in {timeout:.0f} s", unreachable=True) from exc

    def produce(self, records: Sequence[Outgoing], timeout: float) -> None:
        """Send every record and wait until each is acknowledged, ``timeout`` s at most in all.

        A failed publish drops the producer (what it still holds is purged, so nothing of it is delivered late
        or reported against a later publish); a new one serves the next publish.
        """
        from confluent_kafka import KafkaException, Producer

        deadline = time.monotonic() + timeout
        if self._producer is None:
            self._producer = self._make("producer", Producer, {
                # delivery reports for failures only, through one callback set here: a Python callback
                # (or even a headers=None argument) per record halves librdkafka's throughput
                # murmur2 as kafka-python and the Java client hash keys (librdkafka's default is crc32),
                # so an execution's records land on one partition whichever client a worker uses
                **self._common(), "acks": "all", "linger.ms": 0, "delivery.report.only.error": True,
                "partitioner": "murmur2_random",
                "on_delivery": self._failed_delivery,
                "message.timeout.ms": max(int(timeout * 1000), 2000), "message.max.bytes": 16 * 1024 * 1024,
                **self.settings.extra,
            })
        producer = self._producer
        self._failures = []
        shared: tuple[tuple[str, bytes], ...] = ()
        headers: list[tuple[str, bytes]] = []
        try:
            for r in records:
                if r.headers is not shared:  # records of one publish share their headers: made into a list once
                    shared, headers = r.headers, list(r.headers)
                while True:
                    try:
                        if headers:
                            producer.produce(r.topic, value=r.value, key=r.key, headers=headers)
                        else:
                            producer.produce(r.topic, value=r.value, key=r.key)
                        break
                    except BufferError:  # the local queue is full: serve it until the deadline
                        if time.monotonic() > deadline:
                            raise KafkaClientError(f"sending: the producer's queue stayed full for {timeout:.0f} s",
                                                   unreachable=True) from None
                        producer.poll(0.05)
                    except KafkaException as exc:
                        raise self._error(exc, "sending") from exc
            if producer.flush(max(0.0, deadline - time.monotonic())) > 0:
                raise KafkaClientError(f"sending: not acknowledged within {timeout:.0f} s", unreachable=True)
            if self._failures:
                raise self._classify(self._failures[0], f"sending: {self._failures[0]}")
        except KafkaClientError:
            self._drop_producer()
            raise

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:  # what is queued or in flight fails now (and is never delivered late); then librdkafka frees it
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.flush(0)
        except Exception as exc:
            log.debug("dropping a confluent producer: %s", exc)

    def _failed_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failures.append(err)

    def consumer(self, group_id: str, events: Mapping[str, str], offset_reset: str) -> ConfluentMember:
        from confluent_kafka import Consumer, KafkaException

        member = ConfluentMember(self, events)
        consumer = self._make("consumer", Consumer, {
            **self._common(), "group.id": group_id, "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": offset_reset,
            "session.timeout.ms": self.settings.session_timeout_ms,
            "heartbeat.interval.ms": max(100, self.settings.session_timeout_ms // 3),
            "fetch.queue.backoff.ms": 10, "allow.auto.create.topics": False,
            "on_commit": member.committed,
            **self.settings.extra,
        })
        member.consumer = consumer
        try:
            consumer.subscribe(list(events))
        except KafkaException as exc:
            member.close()
            raise self._error(exc, "subscribing") from exc
        return member

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(1)
        self._producer = self._admin = None


if TYPE_CHECKING:  # checked by mypy: the class is a KafkaClient
    _checked: type[KafkaClient] = ConfluentClient
