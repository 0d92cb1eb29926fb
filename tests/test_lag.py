"""Transport.lag for a consumer group with a known backlog, on the local transport, Kafka (Apache Kafka and Tansu)
and Kinesis (a moto server): records behind per partition, after a partial and a full commit, the committed and
latest positions, the oldest record's wait, and whether a member holds each partition.

(The conformance kit checks the same backlog for every transport that implements lag: tests/test_conformance_*.)
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest

from xflow.core.interfaces import Consumer, Delivery, PluginContext, Record, Transport
from xflow.testing import apply_steps, drain

try:
    from aws_server import aws_endpoint  # noqa: F401
    from kafka_brokers import kafka_broker  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401
    from tests.kafka_brokers import kafka_broker  # noqa: F401

EVENTS = ["Uploaded", "Parsed"]
KEYS = ["exec-a", "exec-b", "exec-c", "exec-d", "exec-e", "exec-f"]


def _publish_backlog(transport: Transport) -> None:
    """Six records, one per call (a Kafka-compatible broker may count a batch as one offset), over several keys."""
    for i, key in enumerate(KEYS):
        transport.publish("Uploaded", [Record(key, f'{{"i": {i}}}'.encode())])


def _by_partition(lag) -> dict[str, int]:
    return {p.partition: p.records for p in lag}


def _partial_commit(consumer: Consumer, got: list[Delivery]) -> tuple[str, int]:
    """Commit everything read from one partition (the one with the most records); returns it and its count."""
    counts = Counter(d.partition for d in got)
    partition, count = counts.most_common(1)[0]
    consumer.commit([d for d in got if d.partition == partition])
    return partition, count


def _until(read, check, timeout: float = 20.0):
    """Read again until ``check`` holds (commits of some clients land a moment later); the last reading."""
    deadline = time.monotonic() + timeout
    value = read()
    while not check(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value


def _check_backlog(transport: Transport, consumer_group: str, partitions: int) -> None:
    """The shared story: 6 behind; read all, commit one partition; commit the rest; another group still 6 behind."""
    _publish_backlog(transport)
    before = transport.lag(consumer_group, ["Uploaded"])
    assert len(before) == partitions and {p.event for p in before} == {"Uploaded"}
    assert sum(p.records for p in before) == len(KEYS) and all(p.exact for p in before)
    assert all(p.committed is None for p in before)
    assert all(p.held is not True for p in before), "no member holds anything yet"
    assert [p.records for p in transport.lag(consumer_group, ["Parsed"])] == [0] * len(transport.lag(consumer_group,
                                                                                                         ["Parsed"]))

    consumer = transport.subscribe(consumer_group, ["Uploaded"])
    try:
        got = drain(consumer, len(KEYS), 30.0)
        assert len(got) == len(KEYS)
        partition, count = _partial_commit(consumer, got)
        middle = _until(lambda: transport.lag(consumer_group, ["Uploaded"]),
                        lambda lag: _by_partition(lag)[partition] == 0)
        assert _by_partition(middle)[partition] == 0
        assert sum(p.records for p in middle) == len(KEYS) - count
        committed = next(p for p in middle if p.partition == partition)
        last_read = max((d for d in got if d.partition == partition), key=lambda d: int(d.position))
        assert committed.committed == last_read.position and committed.seconds == 0.0
        waiting = [p for p in middle if p.records]
        if waiting:
            assert all(p.seconds is None or p.seconds >= 0 for p in waiting)

        consumer.commit(got)
        after = _until(lambda: transport.lag(consumer_group, ["Uploaded"]), lambda lag: not any(p.records for p in lag))
        assert [p.records for p in after] == [0] * partitions
        for p in after:
            assert (p.committed is None) == (p.latest is None), p
            assert p.committed == p.latest, "committed up to the last record"
        assert sum(p.records for p in transport.lag("someone-else", ["Uploaded"])) == len(KEYS)
    finally:
        consumer.close()


# -- local ------------------------------------------------------------------------------------------------------------

def test_local_lag_per_partition_with_wait_and_holder(tmp_path):
    from xflow.transports.local import LocalTransport

    transport = LocalTransport(PluginContext("lagging", {"partitions": 3}, tmp_path))
    apply_steps(transport.plan_setup(EVENTS), transport)
    try:
        _check_backlog(transport, "reader", 3)
        # the holder: a live member holds its partitions' leases, and gives them back when it leaves
        consumer = transport.subscribe("holder", ["Uploaded"])
        drain(consumer, len(KEYS), 10.0)
        held = transport.lag("holder", ["Uploaded"])
        assert all(p.held for p in held), held
        waits = [p.seconds for p in held if p.records]
        assert waits and all(s > 0 for s in waits), "records waiting have waited"
        consumer.close()
        assert not any(p.held for p in transport.lag("holder", ["Uploaded"]))
    finally:
        transport.close()


# -- kafka ------------------------------------------------------------------------------------------------------------

@pytest.mark.kafka
def test_kafka_lag_is_end_offset_minus_committed(kafka_broker, tmp_path):  # noqa: F811
    pytest.importorskip("kafka")
    from xflow.transports.kafka import KafkaTransport

    workflow_id = f"lag{uuid.uuid4().hex[:10]}"
    transport = KafkaTransport(PluginContext(workflow_id, kafka_broker.transport_options(partitions="3"), tmp_path))
    apply_steps(transport.plan_setup(EVENTS), transport)
    try:
        _check_backlog(transport, "reader", 3)
        # positions: the last committed record and the last record, as offsets
        lag = transport.lag("reader", ["Uploaded"])
        assert sum(int(p.latest) + 1 for p in lag if p.latest is not None) == len(KEYS)
        # the holder: a member's assignment (Tansu's group descriptions carry none: it cannot say)
        assert all(p.held is not True for p in lag)
        consumer = transport.subscribe("holder", ["Uploaded"])
        try:
            assert len(drain(consumer, len(KEYS), 30.0)) == len(KEYS)
            held = [p.held for p in transport.lag("holder", ["Uploaded"])]
            assert all(held) if kafka_broker.kind == "apache" else set(held) <= {True, None}, held
        finally:
            consumer.close()
    finally:
        apply_steps(transport.plan_teardown(EVENTS), transport)
        transport.close()


# -- kinesis ----------------------------------------------------------------------------------------------------------

def test_kinesis_lag_from_checkpoints_and_records_read(aws_endpoint, tmp_path):  # noqa: F811
    from xflow.transports.kinesis import KinesisTransport

    workflow_id = f"lag{uuid.uuid4().hex[:10]}"
    transport = KinesisTransport(PluginContext(workflow_id, {"shards": 2, "lease_seconds": 6}, tmp_path))
    apply_steps(transport.plan_setup(EVENTS), transport)
    try:
        _check_backlog(transport, "reader", 2)
        # the holder: a member holds its shards' leases while it reads
        transport.publish("Uploaded", [Record("exec-a", b'{"late": 1}')])
        consumer = transport.subscribe("reader", ["Uploaded"])
        try:
            got = drain(consumer, 1, 30.0)
            assert len(got) == 1
            held = transport.lag("reader", ["Uploaded"])
            assert any(p.held for p in held) and sum(p.records for p in held) == 1
            late = next(p for p in held if p.records)
            assert late.seconds is not None and 0 <= late.seconds < 120
            consumer.commit(got)
        finally:
            consumer.close()
        assert sum(p.records for p in transport.lag("reader", ["Uploaded"])) == 0
    finally:
        apply_steps(transport.plan_teardown(EVENTS), transport)
        transport.close()
