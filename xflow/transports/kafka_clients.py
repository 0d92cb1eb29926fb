"""The two Kafka client libraries behind the ``kafka`` transport, reduced to what it needs.

:class:`PythonKafkaClient` wraps kafka-python (pure Python, the default); :class:`ConfluentClient`
wraps confluent-kafka (librdkafka, ``client: confluent``, many times faster). Both offer the same
small surface: topic and consumer-group admin, a producer that sends a batch and waits for every
acknowledgement, and a consumer-group member with manual commits. Both put a key on the same
partition: the Java client's murmur2 hash (kafka-python's default, librdkafka's ``murmur2_random``),
so workers on different clients keep an execution on one partition. Client libraries are imported when a client
is built, never at import time; every client error leaves here as :class:`KafkaClientError`
(with ``unreachable`` / ``transient`` / ``too_large`` / ``rebalanced`` flags the transport turns into messages).

Every call has a deadline: a publish waits at most its ``timeout`` in all (metadata, queueing, acknowledgements),
admin requests at most the request and connect timeouts (kafka-python's admin client has no deadline of its own,
so it is waited for from a helper thread), commits and closes are bounded by the clients' settings. A producer whose
publish failed is dropped (closed in the background) and a new one is made for the next publish, so a producer
wedged by a broker restart or kill cannot hold publishing up once the broker is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from xflow.core.errors import XflowError

log = logging.getLogger("xflow.kafka")
T = TypeVar("T")


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


def _in_background(doing: str, call: Callable[[], Any]) -> None:
    """Run ``call()`` in a daemon thread, logging (at debug) what it raises: closing a client that may be wedged."""
    def run() -> None:
        try:
            call()
        except Exception as exc:
            log.debug("%s: %s", doing, exc)

    threading.Thread(target=run, name=f"xflow-kafka: {doing}", daemon=True).start()


class Message(NamedTuple):
    """A record read by a consumer (a named tuple: one is made per record, so it must be cheap)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    #: the record's timestamp in seconds (CreateTime, or LogAppendTime on topics set so); None if it has none
    timestamp: float | None = None


def _seconds(milliseconds: int | None) -> float | None:
    """A record timestamp in milliseconds as seconds; the clients give -1 (or None) for none."""
    return milliseconds / 1000 if milliseconds is not None and milliseconds >= 0 else None


@dataclass(frozen=True)
class GroupDeletion:
    """What deleting one consumer group came to."""

    group: str
    deleted: bool
    #: "" when deleted; "missing" (no such group), "not_empty" (members still in it) or the client's error
    problem: str = ""


@dataclass(frozen=True)
class Outgoing:
    """A record to produce."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class ClientSettings:
    """Everything a client needs, in the transport's own (kafka-python style) names."""

    bootstrap_servers: str
    connect_timeout_ms: int
    request_timeout_ms: int
    session_timeout_ms: int
    security: Mapping[str, str]
    extra: Mapping[str, Any]


def _install_hint(package: str, extra: str) -> XflowError:
    return XflowError(f"the kafka transport needs the {package} package, which is not installed",
                      f"pip install 'xflow[{extra}]'")


class PythonKafkaClient:
    """kafka-python: admin, producer and consumers created on first use."""

    name = "kafka-python"

    def __init__(self, settings: ClientSettings) -> None:
        try:
            import kafka  # noqa: F401
        except ImportError:
            raise _install_hint("kafka-python", "kafka") from None
        self.settings = settings
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
        config.update(s.security)
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
            _in_background("closing a kafka-python admin client", admin.close)

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
            _in_background("closing a kafka-python producer", lambda: producer.close(timeout=close_in))

    # -- consuming ------------------------------------------------------------------------
    def consumer(self, group_id: str, topics: Sequence[str], offset_reset: str) -> PythonKafkaConsumer:
        from kafka import KafkaConsumer

        session = self.settings.session_timeout_ms
        consumer = self._call("connecting", KafkaConsumer, **self._config(
            KafkaConsumer, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset=offset_reset, session_timeout_ms=session,
            heartbeat_interval_ms=max(100, session // 3), allow_auto_create_topics=False,
        ))
        try:
            self._call("subscribing", consumer.subscribe, list(topics))
        except KafkaClientError:
            PythonKafkaConsumer(self, consumer).close()
            raise
        return PythonKafkaConsumer(self, consumer)

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


class PythonKafkaConsumer:
    def __init__(self, client: PythonKafkaClient, consumer: Any) -> None:
        self.client = client
        self.consumer = consumer

    def poll(self, max_records: int, timeout: float) -> list[Message]:
        timeout_ms = int(timeout * 1000)
        if self._joining():
            # kafka-python (3.0.x) makes no progress on a group join in a poll with a zero timeout, and
            # if the join completes while no poll is waiting for it, it starts the join over; so while
            # joining, poll long enough for the broker to answer (Tansu answers after about half the
            # session timeout)
            timeout_ms = max(timeout_ms, self.client.settings.session_timeout_ms)
        batches = self.client._call("polling", self.consumer.poll, timeout_ms=timeout_ms, max_records=max_records)
        return [
            Message(m.topic, m.partition, m.offset, m.key, m.value, _seconds(m.timestamp))
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

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        from kafka import OffsetAndMetadata, TopicPartition

        self.client._call("committing offsets", self.consumer.commit, {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for (topic, partition), offset in offsets.items()
        }, timeout_ms=self.client.settings.request_timeout_ms)

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=False, timeout_ms=self.client.settings.request_timeout_ms)
        except Exception as exc:
            log.debug("closing kafka-python consumer: %s", exc)


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
            raise _install_hint("confluent-kafka", "kafka-fast") from None
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
        try:
            for r in records:
                while True:
                    try:
                        if r.headers:
                            producer.produce(r.topic, value=r.value, key=r.key, headers=list(r.headers))
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

    def consumer(self, group_id: str, topics: Sequence[str], offset_reset: str) -> ConfluentConsumer:
        from confluent_kafka import Consumer, KafkaException

        consumer = self._make("consumer", Consumer, {
            **self._common(), "group.id": group_id, "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": offset_reset,
            "session.timeout.ms": self.settings.session_timeout_ms,
            "heartbeat.interval.ms": max(100, self.settings.session_timeout_ms // 3),
            "fetch.queue.backoff.ms": 10, "allow.auto.create.topics": False,
            **self.settings.extra,
        })
        try:
            consumer.subscribe(list(topics))
        except KafkaException as exc:
            ConfluentConsumer(self, consumer).close()
            raise self._error(exc, "subscribing") from exc
        return ConfluentConsumer(self, consumer)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(1)
        self._producer = self._admin = None


class ConfluentConsumer:
    def __init__(self, client: ConfluentClient, consumer: Any) -> None:
        self.client = client
        self.consumer = consumer

    def poll(self, max_records: int, timeout: float) -> list[Message]:
        from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException

        try:
            messages = self.consumer.consume(num_messages=max_records, timeout=timeout)
        except KafkaException as exc:
            raise self.client._error(exc, "polling") from exc
        found = []
        problem: KafkaClientError | None = None
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
            kind, stamp = m.timestamp()
            found.append(Message(m.topic(), m.partition(), m.offset(), m.key(), m.value() or b"",
                                 _seconds(stamp) if kind != TIMESTAMP_NOT_AVAILABLE else None))
        if problem is not None:
            if not found:  # a broker away (librdkafka reconnects by itself): the caller waits and polls again
                raise problem
            # the records read must be handed out (the consumer's position is past them); the error is only noted
            log.debug("kafka consumer: %s (after %d records)", problem, len(found))
        # consume() may interleave partitions but keeps each partition's order, which is what counts
        return found

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                 asynchronous=False)
        except KafkaException as exc:
            raise self.client._error(exc, "committing offsets") from exc

    def close(self) -> None:
        try:
            self.consumer.close()
        except Exception as exc:
            log.debug("closing confluent consumer: %s", exc)


CLIENTS: dict[str, type[PythonKafkaClient] | type[ConfluentClient]] = {
    "kafka-python": PythonKafkaClient,
    "confluent": ConfluentClient,
}


def group_offsets(entries: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int], int]:
    """The offsets to commit: the highest offset + 1 per (topic, partition)."""
    offsets: dict[tuple[str, int], int] = {}
    for topic, partition, offset in entries:
        key = (topic, partition)
        offsets[key] = max(offsets.get(key, 0), offset + 1)
    return offsets
