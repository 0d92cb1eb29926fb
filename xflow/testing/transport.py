"""The Transport contract of the conformance kit: what the engine relies on from a Transport."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from xflow.core.errors import XflowError
from xflow.core.interfaces import (
    Consumer,
    Delivery,
    PartitionLag,
    Record,
    Transport,
)
from xflow.core.options import Option, declared_options
from xflow.testing.kit import KIT_EVENTS, apply_steps, check_plan, drain, new_workflow_id

TransportFactory = Callable[[str], Transport]


def _values(deliveries: Sequence[Delivery]) -> list[bytes]:
    return [d.value for d in deliveries]


class TransportContract:
    """What the engine relies on from a Transport. Subclass it and define ``transport_factory``."""

    #: longest wait, in seconds, for deliveries that must arrive
    poll_timeout: float = 20.0
    #: how long to listen, in seconds, when checking that nothing (more) arrives
    quiet_timeout: float = 2.0
    #: bytes kept free below ``max_record_bytes`` for the backend's per-record overhead
    large_record_margin: int = 1024

    @pytest.fixture
    def transport_factory(self) -> TransportFactory:
        """Override: return a callable ``workflow_id -> Transport`` for the backend under test."""
        pytest.fail("define a 'transport_factory' fixture: a callable workflow_id -> Transport")

    @pytest.fixture
    def workflow_id(self) -> str:
        return new_workflow_id()

    @pytest.fixture
    def make_transport(self, transport_factory: TransportFactory,
                       workflow_id: str) -> Iterator[Callable[[], Transport]]:
        """Build instances of the transport for this test's workflow; tears down and closes them at the end."""
        made: list[Transport] = []

        def make() -> Transport:
            transport = transport_factory(workflow_id)
            made.append(transport)
            return transport

        yield make
        if made:
            with contextlib.suppress(Exception):
                apply_steps(made[-1].plan_teardown(KIT_EVENTS), made[-1])
        for transport in made:
            with contextlib.suppress(Exception):
                transport.close()

    @pytest.fixture
    def transport(self, make_transport: Callable[[], Transport]) -> Transport:
        transport = make_transport()
        apply_steps(transport.plan_setup(KIT_EVENTS), transport)
        return transport

    @pytest.fixture
    def consumers(self) -> Iterator[list[Consumer]]:
        opened: list[Consumer] = []
        yield opened
        for consumer in opened:
            with contextlib.suppress(Exception):
                consumer.close()

    def subscribe(self, transport: Transport, consumers: list[Consumer], group: str,
                  events: Sequence[str] = ("Uploaded",)) -> Consumer:
        consumer = transport.subscribe(group, list(events))
        assert isinstance(consumer, Consumer)
        consumers.append(consumer)
        return consumer

    # -- declaration -------------------------------------------------------------------------

    def test_declares_name_options_and_limit(self, make_transport: Callable[[], Transport]) -> None:
        transport = make_transport()
        cls = type(transport)
        assert isinstance(cls.name, str) and cls.name
        assert all(isinstance(option, Option) for option in declared_options(cls).values())
        assert isinstance(transport.max_record_bytes, int) and transport.max_record_bytes > self.large_record_margin
        assert isinstance(cls.connection_errors, tuple)
        assert transport.stream_name("Uploaded") != transport.stream_name("Parsed")

    # -- setup / teardown --------------------------------------------------------------------

    def test_setup_plans_then_is_idempotent(self, make_transport: Callable[[], Transport]) -> None:
        transport = make_transport()
        plan = transport.plan_setup(KIT_EVENTS)
        check_plan(plan, {"create", "update", "delete"})
        assert plan, "a first setup must plan to create the streams"
        assert transport.plan_setup(KIT_EVENTS) == plan, "planning (a dry run) must change nothing"
        apply_steps(plan, transport)
        assert transport.plan_setup(KIT_EVENTS) == [], "a second setup of the same events must plan nothing"
        assert make_transport().plan_setup(KIT_EVENTS) == [], "a new instance must see the streams too"

    def test_setup_removes_streams_of_dropped_events(self, transport: Transport) -> None:
        kept = KIT_EVENTS[:2]
        plan = transport.plan_setup(kept)
        check_plan(plan, {"create", "update", "delete"})
        assert [s.action for s in plan] == ["delete"], f"dropping one event plans one delete, got {plan}"
        apply_steps(plan, transport)
        assert transport.plan_setup(kept) == []

    def test_teardown_removes_what_setup_created(self, make_transport: Callable[[], Transport]) -> None:
        transport = make_transport()
        apply_steps(transport.plan_setup(KIT_EVENTS), transport)
        plan = transport.plan_teardown(KIT_EVENTS)
        check_plan(plan, {"delete"})
        assert plan, "teardown after setup must plan deletes"
        apply_steps(plan, transport)
        assert transport.plan_teardown(KIT_EVENTS) == [], "a second teardown must plan nothing"
        again = make_transport().plan_setup(KIT_EVENTS)
        assert again and {s.action for s in again} == {"create"}, "after teardown, setup must create again"

    # -- publish / subscribe -----------------------------------------------------------------

    def test_round_trip(self, transport: Transport, consumers: list[Consumer]) -> None:
        records = [Record(key=f"exec-{i}", value=f'{{"n": {i}}}'.encode()) for i in range(5)]
        transport.publish("Uploaded", records)
        consumer = self.subscribe(transport, consumers, "reader")
        got = drain(consumer, 5, self.poll_timeout)
        assert sorted(_values(got)) == sorted(r.value for r in records)
        by_value = {d.value: d for d in got}
        for record in records:
            delivery = by_value[record.value]
            assert delivery.event == "Uploaded"
            assert delivery.key == record.key
            assert isinstance(delivery.partition, str) and isinstance(delivery.position, str)
        consumer.commit(got)

    def test_group_sees_events_published_before_it_first_subscribed(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        transport.publish("Uploaded", [Record("e1", b'{"early": true}')])
        consumer = self.subscribe(transport, consumers, "late")
        assert _values(drain(consumer, 1, self.poll_timeout)) == [b'{"early": true}']

    def test_one_consumer_reads_several_events(self, transport: Transport, consumers: list[Consumer]) -> None:
        transport.publish("Uploaded", [Record("e1", b'{"a": 1}')])
        transport.publish("Parsed", [Record("e1", b'{"b": 2}')])
        consumer = self.subscribe(transport, consumers, "both", ["Uploaded", "Parsed"])
        got = drain(consumer, 2, self.poll_timeout)
        assert sorted((d.event, d.value) for d in got) == [("Parsed", b'{"b": 2}'), ("Uploaded", b'{"a": 1}')]

    def test_order_kept_per_execution_id(self, transport: Transport, consumers: list[Consumer]) -> None:
        keys = ["exec-a", "exec-b", "exec-c"]
        sent: dict[str, list[bytes]] = {k: [] for k in keys}
        batch = []
        for i in range(30):
            key = keys[i % 3]
            value = f'{{"key": "{key}", "i": {i}}}'.encode()
            sent[key].append(value)
            batch.append(Record(key, value))
        transport.publish("Uploaded", batch[:12])
        for record in batch[12:]:
            transport.publish("Uploaded", [record])
        consumer = self.subscribe(transport, consumers, "ordered")
        got = drain(consumer, 30, self.poll_timeout)
        assert len(got) == 30
        for key in keys:
            assert [d.value for d in got if d.key == key] == sent[key], f"order lost for {key}"

    def test_independent_groups_each_get_every_event(self, transport: Transport, consumers: list[Consumer]) -> None:
        values = [f'{{"i": {i}}}'.encode() for i in range(4)]
        transport.publish("Uploaded", [Record(f"x{i}", v) for i, v in enumerate(values)])
        first = self.subscribe(transport, consumers, "group-one")
        second = self.subscribe(transport, consumers, "group-two")
        got_first = drain(first, 4, self.poll_timeout)
        first.commit(got_first)
        got_second = drain(second, 4, self.poll_timeout)
        assert sorted(_values(got_first)) == sorted(values)
        assert sorted(_values(got_second)) == sorted(values)

    def test_uncommitted_batch_is_delivered_again_after_restart(
        self, transport: Transport, make_transport: Callable[[], Transport], consumers: list[Consumer]
    ) -> None:
        values = [f'{{"i": {i}}}'.encode() for i in range(5)]
        transport.publish("Uploaded", [Record("one-execution", v) for v in values])
        consumer = self.subscribe(transport, consumers, "worker")
        got = drain(consumer, 5, self.poll_timeout)
        assert _values(got) == values
        consumer.commit(got[:2])
        consumer.close()

        restarted = make_transport()
        again = self.subscribe(restarted, consumers, "worker")
        redelivered = drain(again, 3, self.poll_timeout)
        assert _values(redelivered)[:3] == values[2:], "uncommitted deliveries must come again, in order"
        assert not set(_values(redelivered)) & set(values[:2]), "committed deliveries must not come again"
        again.commit(redelivered)
        again.close()

        third = self.subscribe(make_transport(), consumers, "worker")
        assert drain(third, 1, self.quiet_timeout) == [], "everything was committed"

    def test_large_and_non_ascii_payloads(self, transport: Transport, consumers: list[Consumer]) -> None:
        text = "Grüße, 世界 — ça va? 🎉"
        small = json.dumps({"text": text}, ensure_ascii=False).encode("utf-8")
        size = transport.max_record_bytes - self.large_record_margin
        filler = size - len(b'{"pad": ""}')
        large = b'{"pad": "' + b"x" * filler + b'"}'
        assert len(large) == size
        transport.publish("Uploaded", [Record("exécution-1", small), Record("exécution-1", large)])
        consumer = self.subscribe(transport, consumers, "big")
        got = drain(consumer, 2, self.poll_timeout)
        assert [len(v) for v in _values(got)] == [len(small), len(large)]
        assert got[0].value.decode("utf-8") == small.decode("utf-8")
        assert got[1].value == large
        assert got[0].key == "exécution-1"

    def test_oversize_record_is_rejected(self, transport: Transport, consumers: list[Consumer]) -> None:
        too_big = b"x" * (transport.max_record_bytes + 1)
        with pytest.raises(XflowError):
            transport.publish("Uploaded", [Record("e1", too_big)])
        transport.publish("Uploaded", [Record("e1", b'{"after": 1}')])
        consumer = self.subscribe(transport, consumers, "after-oversize")
        got = drain(consumer, 1, self.poll_timeout)
        assert _values(got) == [b'{"after": 1}']

    def test_publish_to_a_stream_that_was_not_set_up_fails(self, transport: Transport) -> None:
        with pytest.raises(XflowError):
            transport.publish("NeverDeclared", [Record("e1", b"{}")])

    def test_empty_poll_returns_an_empty_list(self, transport: Transport, consumers: list[Consumer]) -> None:
        consumer = self.subscribe(transport, consumers, "idle", ["Counted"])
        assert consumer.poll(10, 0.5) == []

    def test_dead_letter_accepts_a_delivery(self, transport: Transport, consumers: list[Consumer]) -> None:
        transport.publish("Uploaded", [Record("e1", b"not json")])
        consumer = self.subscribe(transport, consumers, "dlq")
        got = drain(consumer, 1, self.poll_timeout)
        assert len(got) == 1
        transport.dead_letter("dlq", got[0], "undecodable: not JSON")
        consumer.commit(got)

    # -- lag (optional) ------------------------------------------------------------------------

    def test_lag_counts_a_known_backlog(self, transport: Transport, consumers: list[Consumer]) -> None:
        """Checked when the transport implements ``lag``: a group that read nothing has every record behind it, one
        per record published; after it committed everything, nothing. Records are published one per call (some
        Kafka-compatible brokers count a batch as one offset)."""
        if type(transport).lag is Transport.lag:
            pytest.skip(f"{type(transport).__name__} does not report lag (the optional Transport.lag)")
        for i in range(4):
            transport.publish("Uploaded", [Record(f"lag-{i}", f'{{"i": {i}}}'.encode())])
        before = transport.lag("lagging", ["Uploaded"])
        assert isinstance(before, list) and before, "lag() lists one PartitionLag per partition"
        assert all(isinstance(p, PartitionLag) and p.event == "Uploaded" for p in before)
        assert len({p.partition for p in before}) == len(before), "one entry per partition"
        assert sum(p.records or 0 for p in before) == 4 and all(p.exact for p in before), \
            f"a group that read nothing is 4 records behind, got {before}"
        assert transport.lag("lagging", ["Parsed"]) is not None
        assert all(p.records == 0 for p in transport.lag("lagging", ["Parsed"]) or ()), "Parsed holds nothing"

        consumer = self.subscribe(transport, consumers, "lagging")
        got = drain(consumer, 4, self.poll_timeout)
        assert len(got) == 4
        consumer.commit(got)
        deadline = time.monotonic() + self.poll_timeout
        after = transport.lag("lagging", ["Uploaded"]) or []
        while sum(p.records or 0 for p in after) and time.monotonic() < deadline:  # commits may land a moment later
            time.sleep(0.2)
            after = transport.lag("lagging", ["Uploaded"]) or []
        assert after and all(p.records == 0 for p in after), f"everything was committed, got {after}"
        assert all(p.seconds in (None, 0.0) for p in after), "nothing waits once everything is committed"
        assert sum(p.records or 0 for p in transport.lag("other-group", ["Uploaded"]) or ()) == 4, \
            "another group's lag is its own"
