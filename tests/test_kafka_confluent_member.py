"""The confluent client's group member turning a batch of librdkafka messages into deliveries, without a broker.

librdkafka's own ``Message`` objects (confluent-kafka builds them in Python too) are served by a stand-in for the
consumer's ``consume``: the deliveries must be exactly what the ``Delivery`` class makes, and error events must be
skipped, noted or raised as before. The transport's behaviour against real brokers is in test_kafka_transport.py.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from confluent_kafka import KafkaError, Message  # noqa: E402

from xflow.core.interfaces import Delivery  # noqa: E402
from xflow.transports.kafka.clients import confluent_member  # noqa: E402
from xflow.transports.kafka.clients.base import ClientSettings, KafkaClientError  # noqa: E402
from xflow.transports.kafka.clients.confluent import ConfluentClient  # noqa: E402
from xflow.transports.kafka.clients.confluent_member import ConfluentMember  # noqa: E402


class Served:
    """Stands in for librdkafka's Consumer: ``consume`` hands out the messages given, once."""

    def __init__(self, messages: list[Any]) -> None:
        self.messages = messages
        self.asked: list[tuple[int, float]] = []

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.asked.append((num_messages, timeout))
        taken, self.messages = self.messages, []
        return taken


def member(messages: list[Any]) -> ConfluentMember:
    client = ConfluentClient(ClientSettings("127.0.0.1:1", 1000, 1000, 3000, {}, {}))
    found = ConfluentMember(client, {"wf-E": "E", "wf-F": "F"})
    found.consumer = Served(messages)
    return found


def records() -> list[Any]:
    return [
        Message(topic="wf-E", partition=2, offset=41, key=b"exec-1", value=b'{"a": 1}', timestamp=(1, 1700000000123)),
        Message(topic="wf-F", partition=0, offset=7, key=None, value=b"v", timestamp=(0, -1)),  # no time, no key
        Message(topic="wf-E", partition=2, offset=42, key=b"\xff\xfe", value=None, timestamp=(2, 5)),  # bad utf-8
        Message(topic="other", partition=11, offset=0, key=b"k", value=b"w", timestamp=(1, -1)),  # not an event's topic
    ]


EXPECTED = [
    Delivery("E", "2", "41", "exec-1", b'{"a": 1}', 1700000000.123),
    Delivery("F", "0", "7", None, b"v", None),
    Delivery("E", "2", "42", "\ufffd\ufffd", b"", 0.005),
    Delivery("other", "11", "0", "k", b"w", None),
]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "fallback"])
def test_poll_makes_the_deliveries_the_class_makes(monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    """Fields, equality, hash and repr equal those of ``Delivery(...)``, on the fast path and on the fallback."""
    monkeypatch.setattr(confluent_member, "_FAST_DELIVERY", fast)
    polled = member(records())
    found = polled.poll(500, 0.25)
    assert polled.consumer.asked == [(500, 0.25)]
    assert found == EXPECTED
    assert [hash(d) for d in found] == [hash(d) for d in EXPECTED]
    assert [repr(d) for d in found] == [repr(d) for d in EXPECTED]
    assert all(type(d) is Delivery for d in found)
    with pytest.raises(AttributeError):  # still frozen
        found[0].position = "0"  # type: ignore[misc]


def test_the_fast_path_is_taken_for_the_plain_delivery_class() -> None:
    assert confluent_member._FAST_DELIVERY


def test_end_of_partition_events_are_skipped() -> None:
    eof = Message(topic="wf-E", partition=1, offset=9, error=KafkaError(KafkaError._PARTITION_EOF))
    assert member([eof, *records(), eof]).poll(10, 0) == EXPECTED


def test_a_broker_away_raises_when_nothing_was_read_and_is_noted_after_records(
        caplog: pytest.LogCaptureFixture) -> None:
    away = Message(topic="wf-E", partition=0, offset=0, error=KafkaError(KafkaError._TRANSPORT))
    with pytest.raises(KafkaClientError) as raised:
        member([away]).poll(10, 0)
    assert raised.value.unreachable
    caplog.set_level(logging.DEBUG, "xflow.kafka")
    # the records read are handed out (the consumer's position is past them)
    assert member([records()[0], away]).poll(10, 0) == EXPECTED[:1]
    assert "after 1 records" in caplog.text


def test_a_fatal_error_raises_and_others_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    fatal = Message(topic="wf-E", partition=0, offset=0, error=KafkaError(KafkaError._FATAL, fatal=True))
    with pytest.raises(KafkaClientError, match="polling"):
        member([records()[0], fatal]).poll(10, 0)
    refused = Message(topic="wf-E", partition=0, offset=0, error=KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    caplog.set_level(logging.WARNING, "xflow.kafka")
    assert member([refused, records()[0]]).poll(10, 0) == EXPECTED[:1]
    assert "kafka consumer:" in caplog.text
