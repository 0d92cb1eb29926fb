"""The ``kafka`` transport: one Kafka topic per workflow event, one consumer group per function.

Supports: idempotent topic setup (missing topics created, partitions grown, topics of events no
longer in the file deleted), publish keyed by ``execution_id`` with ``acks=all``, consumer
groups ``xflow.<workflow>.<function>`` with manual commits (at-least-once: what a worker has
not committed is delivered again, after a rebalance to the partition's new owner), and a
dead-letter topic ``<topic>.dlq`` per event topic whose records carry the reason in headers.
Records carry the header ``content-type: application/cloudevents+json``; keys are hashed with
murmur2 by both clients. Teardown deletes the topics and the workflow's consumer groups.

Failures: a broker that cannot be reached in time (down, restarting, killed) or that answers with an error that
passes (a leader or coordinator moving, not enough replicas yet) is :class:`BackendUnavailable`: workers wait it
out and go on, a command exits 1. A bad option, a missing topic and a record over the limit are :class:`XflowError`.
Every client call has a deadline (``publish_timeout_ms`` for a publish in all; ``connect_timeout_ms`` plus
``request_timeout_ms`` for the rest), and a producer whose publish failed is replaced by a new one.

Threads: one transport may be shared by the threads of a process. Their publishes take turns on the one producer
(a publish's failures are told apart from another's, and a producer replaced after a failure takes no other
thread's records with it); a publish waits at most ``publish_timeout_ms`` for its turn, then is BackendUnavailable.

Connection: ``bootstrap_servers`` is a comma-separated ``host:port`` list. Two clients sit behind
the same behaviour: ``client: kafka-python`` (default, ``pip install 'xflow[kafka]'``) and
``client: confluent`` (librdkafka, ``pip install 'xflow[kafka-fast]'``). Security settings
(``security_protocol``, ``sasl_*``, ``ssl_*``) are passed to the client; ``client_config`` takes
any other client setting as a JSON object, verbatim. Every option may also come from an
``XFLOW_KAFKA_<KEY>`` environment variable.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar

from xflow.core.deploy import dispatch
from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.interfaces import Consumer, Delivery, PartitionLag, PluginContext, Record, Step, Transport
from xflow.core.options import Option
from xflow.transports.kafka.clients import CLIENTS, make_client
from xflow.transports.kafka.clients.base import ClientSettings, KafkaClient, KafkaClientError, Outgoing
from xflow.transports.kafka.consumer import KafkaConsumer

log = logging.getLogger("xflow.kafka")

DLQ_SUFFIX = ".dlq"
#: the header of every record xflow publishes: its value is a CloudEvent in the structured JSON format
EVENT_HEADERS = (("content-type", b"application/cloudevents+json"),)
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_SECURITY_KEYS = (
    "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
    "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password",
)
_HINT_UNREACHABLE = "check bootstrap_servers (--option bootstrap_servers=HOST:PORT or XFLOW_KAFKA_BOOTSTRAP_SERVERS)"
_HINT_TRANSIENT = "the brokers are busy or restarting; workers wait and go on, a command can be run again"
T = TypeVar("T")


class KafkaTransport(Transport):
    """Kafka topics, consumer groups and ``.dlq`` dead-letter topics."""

    name: ClassVar[str] = "kafka"
    description: ClassVar[str] = "Apache Kafka (or a compatible broker): topic per event, consumer group per function"
    options: ClassVar[tuple[Option, ...]] = (
        Option("bootstrap_servers", str, "localhost:9092", "comma-separated host:port list of the brokers"),
        Option("client", "choice", "kafka-python", "kafka-python, or confluent (librdkafka, pip install "
               "'xflow[kafka-fast]')", choices=tuple(CLIENTS)),
        Option("partitions", int, 3, "partitions per topic created by setup", minimum=1),
        Option("replication_factor", int, 1, "replicas per topic created by setup", minimum=1),
        Option("topic_prefix", str, "", "prepended to every topic name"),
        Option("session_timeout_ms", int, 10000, "consumer group session timeout in ms: how soon a dead worker's "
               "partitions move", minimum=1),
        Option("connect_timeout_ms", int, 5000, "how long to wait for the first broker connection, in ms", minimum=1),
        Option("request_timeout_ms", int, 15000, "how long to wait for one broker request, in ms", minimum=1),
        Option("publish_timeout_ms", int, 30000, "how long publish waits for all acknowledgements, in ms", minimum=1),
        Option("client_config", dict, None, "further client settings (a JSON object), passed verbatim to the client"),
        Option("security_protocol", str, None, "passed to the client (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"),
        Option("sasl_mechanism", str, None, "passed to the client (PLAIN, SCRAM-SHA-256, ...)"),
        Option("sasl_plain_username", str, None, "passed to the client"),
        Option("sasl_plain_password", str, None, "passed to the client", secret=True),
        Option("ssl_cafile", str, None, "passed to the client"),
        Option("ssl_certfile", str, None, "passed to the client"),
        Option("ssl_keyfile", str, None, "passed to the client"),
        Option("ssl_password", str, None, "passed to the client: the password of ssl_keyfile", secret=True),
    )

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        options = self.context  # typed values (Option declarations above), defaults included
        self.prefix = options.option("topic_prefix")
        self.partitions = options.option("partitions")
        self.replication_factor = options.option("replication_factor")
        self.publish_timeout = options.option("publish_timeout_ms") / 1000
        client_name = options.option("client")
        settings = ClientSettings(
            bootstrap_servers=options.option("bootstrap_servers"),
            connect_timeout_ms=options.option("connect_timeout_ms"),
            request_timeout_ms=options.option("request_timeout_ms"),
            session_timeout_ms=options.option("session_timeout_ms"),
            security={k: options.option(k) for k in _SECURITY_KEYS if options.option(k) is not None},
            extra=options.option("client_config") or {},
        )
        self.client: KafkaClient = make_client(client_name, settings)
        self._stream_names: dict[str, str] = {}
        self._known_topics: set[str] = set()
        self._producing = threading.Lock()  # publishes from many threads take turns on the one producer

    def _as_error(self, doing: str, exc: KafkaClientError) -> XflowError:
        """A client failure as a one-line error: :class:`BackendUnavailable` if it may pass, else XflowError."""
        servers = self.client.settings.bootstrap_servers
        if exc.unreachable:
            return BackendUnavailable(f"kafka transport: cannot reach the brokers at {servers} while {doing} ({exc})",
                                      _HINT_UNREACHABLE)
        if exc.transient:
            return BackendUnavailable(f"kafka transport: the brokers at {servers} are not ready while {doing} ({exc})",
                                      _HINT_TRANSIENT)
        return XflowError(f"kafka transport: {exc}")

    def _guard(self, doing: str, call: Callable[[], T]) -> T:
        """Run a client call; client failures become one-line XflowErrors."""
        try:
            return call()
        except KafkaClientError as exc:
            raise self._as_error(doing, exc) from exc

    # -- names ----------------------------------------------------------------------------
    def stream_name(self, event: str) -> str:
        topic = self._stream_names.get(event)
        if topic is not None:
            return topic
        topic = f"{self.prefix}{self.workflow_id}-{event}"
        if not _TOPIC_NAME.match(topic):
            raise XflowError(f"kafka transport: {topic!r} is not a valid Kafka topic name",
                             "use letters, digits, '.', '_' and '-' in workflow ids, events and topic_prefix")
        self._stream_names[event] = topic
        return topic

    def group_id(self, group: str) -> str:
        return f"{self.prefix}xflow.{self.workflow_id}.{group}"

    def _owned_groups(self) -> list[str]:
        """This workflow's consumer groups on the cluster: ``[prefix]xflow.<workflow>.<function>``."""
        start = self.group_id("")
        groups = self._guard("listing consumer groups", self.client.consumer_groups)
        # function names hold no '.', so another workflow ("wf.v2") or prefix leaves one in the rest
        return [g for g in groups if g.startswith(start) and g[len(start):] and "." not in g[len(start):]]

    def _owned(self, topics: dict[str, int]) -> list[str]:
        """This workflow's topics on the cluster (and their dead-letter topics)."""
        start = f"{self.prefix}{self.workflow_id}-"
        found = []
        for topic in topics:
            if not topic.startswith(start):
                continue
            rest = topic[len(start):]
            rest = rest[: -len(DLQ_SUFFIX)] if rest.endswith(DLQ_SUFFIX) else rest
            # another workflow whose id starts with ours ("wf" vs "wf-v2") has a '-' left over
            if rest and "-" not in rest:
                found.append(topic)
        return sorted(found)

    def _topics(self) -> dict[str, int]:
        topics = self._guard("listing topics", self.client.topic_partitions)
        self._known_topics = set(topics)
        return topics

    # -- setup / teardown -----------------------------------------------------------------
    def plan_setup(self, events: Sequence[str]) -> list[Step]:
        existing = self._topics()
        wanted = {self.stream_name(e) for e in events}
        steps: list[Step] = []
        for event in events:
            topic = self.stream_name(event)
            count = existing.get(topic)
            if count is None:
                steps.append(Step("create", f"topic:{topic}", detail=f"{self.partitions} partitions, replication "
                                  f"factor {self.replication_factor}", call="kafka:CreateTopics",
                                  params={"topic": topic, "partitions": self.partitions,
                                          "replication_factor": self.replication_factor}))
            elif count < self.partitions:
                steps.append(Step("update", f"topic:{topic}", detail=f"partitions {count} -> {self.partitions}",
                                  call="kafka:CreatePartitions", params={"topic": topic, "total": self.partitions}))
        dlq_of_wanted = {t + DLQ_SUFFIX for t in wanted}
        for topic in self._owned(existing):
            if topic not in wanted and topic not in dlq_of_wanted:
                steps.append(self._topic_deletion(topic, "no longer in the workflow"))
        return steps

    def plan_teardown(self, events: Sequence[str]) -> list[Step]:
        existing = self._topics()
        steps = [self._topic_deletion(topic) for topic in self._owned(existing)]
        steps += [Step("delete", f"consumer-group:{group}", call="kafka:DeleteGroups", params={"group": group})
                  for group in self._owned_groups()]
        return steps

    def _topic_deletion(self, topic: str, detail: str = "") -> Step:
        return Step("delete", f"topic:{topic}", detail=detail, call="kafka:DeleteTopics", params={"topics": [topic]})

    def execute(self, step: Step) -> None:
        dispatch(step, {
            "kafka:CreateTopics": self._create,
            "kafka:CreatePartitions": self._add_partitions,
            "kafka:DeleteTopics": self._delete_topics,
            "kafka:DeleteGroups": self._delete_group,
        })

    def _create(self, topic: str, partitions: int, replication_factor: int) -> None:
        try:
            self.client.create_topic(topic, partitions, replication_factor)
        except KafkaClientError as exc:
            if not exc.exists:
                raise self._as_error(f"creating topic {topic}", exc) from exc
        self._wait_for(topic, present=True)

    def _add_partitions(self, topic: str, total: int) -> None:
        self._guard(f"adding partitions to {topic}", lambda: self.client.add_partitions(topic, total))
        deadline = time.monotonic() + 15
        while self._topics().get(topic, 0) < total and time.monotonic() < deadline:
            time.sleep(0.2)

    def _delete_topics(self, topics: list[str]) -> None:
        try:
            self.client.delete_topics(topics)
        except KafkaClientError as exc:
            if not exc.missing:
                raise self._as_error("deleting topics", exc) from exc
        for topic in topics:
            self._wait_for(topic, present=False)

    def _delete_group(self, group: str) -> None:
        [result] = self._guard(f"deleting consumer group {group}", lambda: self.client.delete_groups([group]))
        if result.deleted or result.problem == "missing":
            return
        if result.problem == "not_empty":
            log.warning("kafka consumer group %s was not deleted: it still has members (stop the workflow's "
                        "workers, then run teardown again)", group)
        else:
            log.warning("kafka consumer group %s was not deleted: %s", group, result.problem)

    def _wait_for(self, topic: str, present: bool, timeout: float = 15.0) -> None:
        """Topic creation and deletion are asynchronous on the broker: wait until metadata agrees."""
        deadline = time.monotonic() + timeout
        while (topic in self._topics()) != present:
            if time.monotonic() > deadline:
                state = "appear" if present else "go away"
                raise XflowError(f"kafka transport: topic {topic} did not {state} within {timeout:.0f} s")
            time.sleep(0.2)

    # -- publish --------------------------------------------------------------------------
    def _require(self, topic: str, event: str) -> None:
        if topic in self._known_topics or topic in self._topics():
            return
        raise XflowError(f"kafka transport: topic {topic} for event {event!r} does not exist",
                         "run `xflow setup FILE --transport kafka` first")

    def publish(self, event: str, records: Sequence[Record]) -> None:
        if not records:
            return
        topic = self.stream_name(event)
        for record in records:
            if len(record.value) > self.max_record_bytes:
                raise XflowError(
                    f"kafka transport: a record of {len(record.value)} bytes for {event!r} "
                    f"(execution {record.key}) is over the limit of {self.max_record_bytes} bytes",
                    "publish a reference (a path or URL) instead of the payload")
        self._require(topic, event)
        outgoing = [Outgoing(topic, r.key.encode("utf-8"), r.value, EVENT_HEADERS) for r in records]
        self._send(outgoing, f"publishing {event!r}")

    def _send(self, outgoing: list[Outgoing], doing: str) -> None:
        if not self._producing.acquire(timeout=self.publish_timeout):
            raise BackendUnavailable(f"kafka transport: other threads' publishes held the producer for "
                                     f"{self.publish_timeout:g} s while {doing}", _HINT_TRANSIENT)
        try:
            self.client.produce(outgoing, self.publish_timeout)
        except KafkaClientError as exc:
            if exc.too_large:
                raise XflowError(f"kafka transport: the broker refused a record as too large while {doing}",
                                 "publish a reference (a path or URL) instead of the payload") from exc
            if exc.missing:
                # a broker that is loading its logs after a restart answers "unknown topic" for a while too:
                # look the topics up again (now and at the next publish)
                topics = {o.topic for o in outgoing}
                self._known_topics -= topics
                gone = sorted(topics - set(self._topics()))
                if gone:
                    raise XflowError(f"kafka transport: topic {gone[0]} is missing while {doing}",
                                     "run `xflow setup FILE --transport kafka` first") from exc
                raise BackendUnavailable(f"kafka transport: the brokers do not serve the topics yet while {doing} "
                                         f"({exc})", _HINT_TRANSIENT) from exc
            raise self._as_error(doing, exc) from exc
        finally:
            self._producing.release()

    # -- consume --------------------------------------------------------------------------
    def _offset_reset(self, group: str) -> str:
        workflow = self.context.workflow
        function = workflow.functions.get(group) if workflow is not None else None
        if function is not None and function.starting_position.upper() == "LATEST":
            return "latest"
        return "earliest"

    def subscribe(self, group: str, events: Sequence[str]) -> Consumer:
        topics = {self.stream_name(e): e for e in events}
        for topic, event in topics.items():
            self._require(topic, event)
        return KafkaConsumer(self, self.group_id(group), topics)

    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        topic = self.stream_name(delivery.event) + DLQ_SUFFIX
        if topic not in self._known_topics and topic not in self._topics():
            self._create(topic, self.partitions, self.replication_factor)
        headers = (
            ("xflow-reason", reason.encode("utf-8", "replace")[:16000]),
            ("xflow-group", self.group_id(group).encode("utf-8")),
            ("xflow-function", group.encode("utf-8")),
            ("xflow-event", delivery.event.encode("utf-8")),
            ("xflow-partition", delivery.partition.encode("utf-8")),
            ("xflow-offset", delivery.position.encode("utf-8")),
        )
        key = delivery.key.encode("utf-8") if delivery.key is not None else None
        self._send([Outgoing(topic, key, delivery.value, headers)], f"dead-lettering to {topic}")

    def lag(self, group: str, events: Sequence[str]) -> list[PartitionLag]:
        """Per partition: the end offset minus the group's committed offset (minus the first offset kept, for a
        partition the group never committed), and whether a member of the group is assigned the partition. Kafka
        keeps no arrival time this cheaply: ``seconds`` is known only when nothing is behind (0.0)."""
        topics = self._topics()
        wanted: list[tuple[str, int]] = []
        event_of: dict[str, str] = {}
        for event in events:
            topic = self.stream_name(event)
            if topic not in topics:
                raise XflowError(f"kafka transport: topic {topic} for event {event!r} does not exist",
                                 "run `xflow setup FILE --transport kafka` first")
            event_of[topic] = event
            wanted += [(topic, partition) for partition in range(topics[topic])]
        group_id = self.group_id(group)
        # a broker that never saw a group answers "coordinator not available" while it makes its offsets topic
        deadline = time.monotonic() + self.client.settings.request_timeout_ms / 1000
        while True:
            try:
                positions = self.client.group_positions(group_id, wanted)
                break
            except KafkaClientError as exc:
                if not exc.transient or time.monotonic() > deadline:
                    raise self._as_error(f"reading the lag of group {group_id}", exc) from exc
                time.sleep(0.5)
        found = []
        for topic, partition in wanted:
            end = positions.ends.get((topic, partition))
            committed = positions.committed.get((topic, partition))
            start = committed if committed is not None else positions.starts.get((topic, partition))
            records = max(0, end - start) if end is not None and start is not None else None
            found.append(PartitionLag(
                event_of[topic], str(partition), records, 0.0 if records == 0 else None,
                str(committed - 1) if committed else None, str(end - 1) if end else None,
                None if positions.assigned is None else (topic, partition) in positions.assigned))
        return found

    def close(self) -> None:
        self.client.close()

