"""The kafka-python client behind the ``kafka`` transport (pure Python; the default, ``pip install 'xflow[kafka]'``).

Admin, producer and consumers are made on first use. kafka-python's admin client has no deadline of its own: its
requests are waited for from a helper thread (:func:`~xflow.transports.kafka.clients.base.bounded`), and an admin
client that missed one, or lost its connection (a broker restart), is replaced. Commits wait for the broker's answer
even when asked to be asynchronous: kafka-python sends an asynchronous commit only while the consumer polls and drops
one still in flight when it closes, so what the worker settled could be lost to a close.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from xflow.core.errors import XflowError
from xflow.core.fastrecords import new_delivery
from xflow.core.interfaces import Delivery
from xflow.transports.kafka.clients.base import (
    ClientSettings,
    GroupDeletion,
    GroupPositions,
    KafkaClient,
    KafkaClientError,
    Offsets,
    Outgoing,
    bounded,
    in_background,
    install_hint,
    record_time,
)

log = logging.getLogger("xflow.kafka")

#: what Kafka's security.protocol may be; Kafka takes any case, kafka-python only these spellings (else plaintext)
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


def checked_security(security: Mapping[str, str]) -> dict[str, str]:
    """The security settings as kafka-python wants them, or an XflowError naming a protocol or SASL mechanism it does
    not know (kafka-python would only fail while connecting, as if the brokers could not be reached)."""
    checked = dict(security)
    protocol = checked.get("security_protocol")
    if protocol is not None:
        if str(protocol).upper() not in SECURITY_PROTOCOLS:
            raise XflowError(f"kafka option security_protocol={protocol!r} is not a Kafka security protocol; "
                             "choose one of: " + ", ".join(SECURITY_PROTOCOLS))
        checked["security_protocol"] = str(protocol).upper()
    mechanism = checked.get("sasl_mechanism")
    try:
        from kafka.net.sasl import SASL_MECHANISMS
    except ImportError:  # another layout of kafka-python: it checks the mechanism itself
        SASL_MECHANISMS = {}
    if mechanism is not None and SASL_MECHANISMS and mechanism not in SASL_MECHANISMS:
        raise XflowError(f"kafka option sasl_mechanism={mechanism!r} is not one kafka-python knows; choose one of: "
                         + ", ".join(sorted(SASL_MECHANISMS)))
    return checked


class PythonKafkaClient:
    """kafka-python: admin, producer and consumers created on first use."""

    name = "kafka-python"

    def __init__(self, settings: ClientSettings) -> None:
        try:
            import kafka  # noqa: F401
        except ImportError:
            raise install_hint("kafka-python", "kafka") from None
        self.settings = settings
        self._security = checked_security(settings.security)
        self._admin: Any = None
        self._producer: Any = None

    def _common(self) -> dict[str, Any]:
        s = self.settings
        config: dict[str, Any] = {
            "bootstrap_servers": s.bootstrap_servers.split(","),
            "bootstrap_timeout_ms": s.connect_timeout_ms,
            "request_timeout_ms": s.request_timeout_ms,
            "reconnect_backoff_max_ms": 2000,
        }
        config.update(self._security)
        return config

    def _config(self, cls: Any, **settings: Any) -> dict[str, Any]:
        """Settings for one kafka-python class: xflow's, then the ``client_config`` keys that class knows."""
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

        extra = self.settings.extra
        unknown = sorted(k for k in extra if not any(k in c.DEFAULT_CONFIG for c in (KafkaProducer, KafkaConsumer,
                                                                                      KafkaAdminClient)))
        if unknown:
            raise XflowError(f"kafka option client_config: kafka-python has no setting {unknown[0]!r}",
                             "use kafka-python's names, e.g. {\"linger_ms\": 5}")
        config = {**self._common(), **settings}
        config.update({k: v for k, v in extra.items() if k in cls.DEFAULT_CONFIG})
        return config

    def _error(self, exc: BaseException, doing: str) -> KafkaClientError:
        from kafka import errors

        text = f"{doing}: {type(exc).__name__}: {exc}"
        if isinstance(exc, errors.KafkaTimeoutError | errors.KafkaConnectionError | errors.NodeNotReadyError
                      | errors.RequestTimedOutError | OSError):
            return KafkaClientError(text, unreachable=True)
        if isinstance(exc, errors.MessageSizeTooLargeError | errors.RecordListTooLargeError):
            return KafkaClientError(text, too_large=True)
        if isinstance(exc, errors.TopicAlreadyExistsError):
            return KafkaClientError(text, exists=True)
        if isinstance(exc, errors.UnknownTopicOrPartitionError):
            return KafkaClientError(text, missing=True)
        if isinstance(exc, errors.InvalidSessionTimeoutError):
            return KafkaClientError(f"{text} (the broker's group.min/max.session.timeout.ms exclude "
                                    "session_timeout_ms)")
        if isinstance(exc, errors.CommitFailedError | errors.RebalanceInProgressError
                      | errors.IllegalGenerationError | errors.UnknownMemberIdError):
            return KafkaClientError(text, rebalanced=True)
        if getattr(exc, "retriable", False):  # leader/coordinator moving or loading, not enough replicas, ...
            return KafkaClientError(text, transient=True)
        return KafkaClientError(text)

    def _call(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kafka import errors

        try:
            return fn(*args, **kwargs)
        except (errors.KafkaError, OSError) as exc:
            raise self._error(exc, doing) from exc

    @property
    def _admin_deadline(self) -> float:
        """How long one admin request may take in all: connecting, then the request (kafka-python has no bound)."""
        s = self.settings
        return (s.connect_timeout_ms + s.request_timeout_ms) / 1000 + 5

    @property
    def admin(self) -> Any:
        if self._admin is None:
            from kafka import KafkaAdminClient

            self._admin = self._call("connecting", KafkaAdminClient, **self._config(KafkaAdminClient))
        return self._admin

    def _admin_once(self, doing: str, method: str, *args: Any) -> Any:
        """One admin request, with a deadline; an admin client that missed it is dropped."""
        try:
            return bounded(doing, self._admin_deadline, lambda: self._call(doing, getattr(self.admin, method), *args))
        except KafkaClientError as exc:
            if exc.unreachable:
                self._close_admin()
            raise

    def _admin_call(self, doing: str, method: str, *args: Any) -> Any:
        """An admin request; after a lost connection (a broker restart) once more on a new admin client,
        since kafka-python's admin client does not find its way back to a restarted broker."""
        had_admin = self._admin is not None
        try:
            return self._admin_once(doing, method, *args)
        except KafkaClientError as exc:
            if not exc.unreachable or not had_admin:
                raise
            return self._admin_once(doing, method, *args)

    def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:  # closing joins the admin's I/O thread, which may be the wedged part
            in_background("closing a kafka-python admin client", admin.close)

    # -- topics ---------------------------------------------------------------------------
    def topic_partitions(self) -> dict[str, int]:
        """Every topic of the cluster and its partition count."""
        topics = self._admin_call("listing topics", "describe_topics")
        return {t["name"]: len(t["partitions"]) for t in topics if not t.get("is_internal")}

    def create_topic(self, topic: str, partitions: int, replication_factor: int) -> None:
        spec = {topic: {"num_partitions": partitions, "replication_factor": replication_factor}}
        self._admin_call(f"creating topic {topic}", "create_topics", spec)

    def add_partitions(self, topic: str, total: int) -> None:
        self._admin_call(f"adding partitions to {topic}", "create_partitions", {topic: total})

    def delete_topics(self, topics: Sequence[str]) -> None:
        self._admin_call("deleting topics", "delete_topics", list(topics))

    # -- consumer groups ------------------------------------------------------------------
    def consumer_groups(self) -> list[str]:
        """The ids of the cluster's consumer groups."""
        groups = self._admin_call("listing consumer groups", "list_groups")
        return sorted({str(g["group_id"]) for g in groups})

    def delete_groups(self, groups: Sequence[str]) -> list[GroupDeletion]:
        results = self._admin_call("deleting consumer groups", "delete_groups", list(groups))
        found = []
        for group in groups:
            status = str(results.get(group, "no answer"))
            if status == "OK":
                found.append(GroupDeletion(group, True))
            elif status == "GroupIdNotFoundError":
                found.append(GroupDeletion(group, False, "missing"))
            elif status == "NonEmptyGroupError":
                found.append(GroupDeletion(group, False, "not_empty"))
            else:
                found.append(GroupDeletion(group, False, status))
        return found

    def group_positions(self, group_id: str, partitions: Sequence[tuple[str, int]]) -> GroupPositions:
        from kafka import TopicPartition
        from kafka.admin import OffsetSpec

        wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
        found = self._admin_call(f"reading the offsets of group {group_id}", "list_group_offsets", {group_id: wanted})
        committed = {(tp.topic, tp.partition): int(meta.offset) for tp, meta in (found.get(group_id) or {}).items()
                     if meta is not None and meta.offset >= 0}
        latest = self._admin_call("reading end offsets", "list_partition_offsets",
                                  {tp: OffsetSpec.LATEST for tp in wanted})
        ends = {(tp.topic, tp.partition): int(found.offset) for tp, found in latest.items()}
        fresh = [tp for tp in wanted if (tp.topic, tp.partition) not in committed]
        earliest = self._admin_call("reading start offsets", "list_partition_offsets",
                                    {tp: OffsetSpec.EARLIEST for tp in fresh}) if fresh else {}
        starts = {(tp.topic, tp.partition): int(found.offset) for tp, found in earliest.items()}
        return GroupPositions(committed, ends, starts, self._assigned(group_id))

    def _assigned(self, group_id: str) -> set[tuple[str, int]] | None:
        """The partitions the group's members hold (DescribeGroups), None when the answer cannot be read (kafka-python
        fails to parse some brokers' answers: Tansu's authorized operations)."""
        try:
            described = self._admin_call(f"describing group {group_id}", "describe_groups", [group_id]).get(group_id)
        except (KafkaClientError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.debug("describing group %s: %s", group_id, exc)
            return None
        if not described or described.get("error"):
            return None
        held: set[tuple[str, int]] = set()
        for member in described.get("members") or []:
            assignment: Any = member.get("member_assignment")
            pairs: Any = (assignment.get("assigned_partitions") if isinstance(assignment, dict)
                          else getattr(assignment, "assigned_partitions", None))
            if pairs is None:
                return None  # not decoded
            for entry in pairs:
                topic, numbers = (entry.get("topic"), entry.get("partitions") or ()) if isinstance(entry, dict) else entry
                held.update((str(topic), int(number)) for number in numbers)
        return held

    # -- producing ------------------------------------------------------------------------
    def _new_producer(self, timeout: float) -> Any:
        from kafka import KafkaProducer

        delivery_ms = max(int(timeout * 1000), 2000)
        return self._call("connecting", KafkaProducer, **self._config(
            KafkaProducer, acks="all", retries=5, linger_ms=0,
            # every wait of a publish fits in its timeout: metadata and queueing (max_block_ms), then the
            # acknowledgements (delivery_timeout_ms, which kafka-python wants above request_timeout_ms)
            max_block_ms=int(timeout * 1000), delivery_timeout_ms=delivery_ms,
            request_timeout_ms=max(1, min(self.settings.request_timeout_ms, delivery_ms - 1)),
            max_request_size=16 * 1024 * 1024, allow_auto_create_topics=False,
        ))

    def produce(self, records: Sequence[Outgoing], timeout: float) -> None:
        """Send every record and wait until each is acknowledged by all in-sync replicas, ``timeout`` s at most.

        A failed publish drops the producer (a new one, with fresh connections and metadata, serves the next
        publish): after a broker restart or kill, kafka-python's producer state is not trusted to recover.
        """
        deadline = time.monotonic() + timeout
        if self._producer is None:
            self._producer = self._new_producer(timeout)
        producer = self._producer
        try:
            futures = [
                self._call("sending", producer.send, r.topic, key=r.key, value=r.value,
                           headers=[(k, v) for k, v in r.headers] or None)
                for r in records
            ]
            self._call("flushing", producer.flush, max(0.0, deadline - time.monotonic()))
            for future in futures:
                self._call("sending", future.get, max(0.0, deadline - time.monotonic()))
        except KafkaClientError:
            self._drop_producer(timeout)
            raise

    def _drop_producer(self, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            # kafka-python closes only once nothing is queued: what is left fails at its delivery timeout, so
            # the close waits that long, in the background rather than on the caller's time
            close_in = max(timeout, 2.0) + self.settings.request_timeout_ms / 1000 + 1
            in_background("closing a kafka-python producer", lambda: producer.close(timeout=close_in))

    # -- consuming ------------------------------------------------------------------------
    def consumer(self, group_id: str, events: Mapping[str, str], offset_reset: str) -> PythonKafkaMember:
        from kafka import KafkaConsumer

        session = self.settings.session_timeout_ms
        consumer = self._call("connecting", KafkaConsumer, **self._config(
            KafkaConsumer, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset=offset_reset, session_timeout_ms=session,
            heartbeat_interval_ms=max(100, session // 3), allow_auto_create_topics=False,
        ))
        member = PythonKafkaMember(self, consumer, events)
        try:
            self._call("subscribing", consumer.subscribe, list(events))
        except KafkaClientError:
            member.close()
            raise
        return member

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:  # a publish waited for every acknowledgement: nothing should be left to send
                producer.close(timeout=max(1.0, self.settings.request_timeout_ms / 1000))
            except Exception as exc:  # closing must not mask what happened before
                log.debug("closing kafka-python producer: %s", exc)
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                bounded("closing a kafka-python admin client", self._admin_deadline, admin.close)
            except Exception as exc:
                log.debug("closing kafka-python admin client: %s", exc)


class PythonKafkaMember:
    """A member of a consumer group, through kafka-python's KafkaConsumer."""

    def __init__(self, client: PythonKafkaClient, consumer: Any, events: Mapping[str, str]) -> None:
        self.client = client
        self.consumer = consumer
        self.events = dict(events)

    def poll(self, max_records: int, timeout: float) -> list[Delivery]:
        timeout_ms = int(timeout * 1000)
        if self._joining():
            # kafka-python (3.0.x) makes no progress on a group join in a poll with a zero timeout, and
            # if the join completes while no poll is waiting for it, it starts the join over; so while
            # joining, poll long enough for the broker to answer (Tansu answers after about half the
            # session timeout)
            timeout_ms = max(timeout_ms, self.client.settings.session_timeout_ms)
        batches = self.client._call("polling", self.consumer.poll, timeout_ms=timeout_ms, max_records=max_records)
        events = self.events
        return [
            new_delivery(events.get(m.topic, m.topic), str(m.partition), str(m.offset),
                         m.key.decode("utf-8", "replace") if m.key is not None else None, m.value,
                         record_time(m.timestamp))
            for tp in sorted(batches, key=lambda tp: (tp.topic, tp.partition))
            for m in batches[tp]
        ]

    def _joining(self) -> bool:
        """Whether the member is (re)joining its group; a stable member with no partitions is not."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        need_rejoin = getattr(coordinator, "need_rejoin", None)
        stable = getattr(coordinator, "generation_if_stable", None)
        if not (callable(need_rejoin) and callable(stable)):
            return not self.consumer.assignment()
        return bool(need_rejoin()) or stable() is None

    def commit(self, offsets: Offsets, asynchronous: bool) -> None:
        """Always waits for the broker (see the module's docstring)."""
        from kafka import OffsetAndMetadata, TopicPartition

        self.client._call("committing offsets", self.consumer.commit, {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for (topic, partition), offset in offsets.items()
        }, timeout_ms=self.client.settings.request_timeout_ms)

    def take_commit_failure(self) -> KafkaClientError | None:
        return None  # commits are never asynchronous here

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=False, timeout_ms=self.client.settings.request_timeout_ms)
        except Exception as exc:
            log.debug("closing kafka-python consumer: %s", exc)


if TYPE_CHECKING:  # checked by mypy: the class is a KafkaClient
    _checked: type[KafkaClient] = PythonKafkaClient
