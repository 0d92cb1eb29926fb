"""The conformance kit: pytest test classes every Transport, TrackerStore and FunctionProvider passes.

A backend's test module subclasses one class and provides one fixture that builds the
backend under test for a given workflow id; the kit does the rest::

    import pytest
    from xflow.core.interfaces import PluginContext
    from xflow.testing import TransportContract

    class TestRedisTransport(TransportContract):
        @pytest.fixture
        def transport_factory(self, redis_url, tmp_path):
            def make(workflow_id):
                return RedisTransport(PluginContext(workflow_id, {"url": redis_url}, tmp_path))
            return make

The factory may be called several times with the same workflow id (a restarted worker is a
new instance); every instance must see the same streams or records. Each test uses its own
fresh workflow id, so tests can share one server and run in parallel. Whatever a test sets
up is torn down at its end.

Timing knobs are class attributes (``poll_timeout``, ``quiet_timeout``,
``consistency_timeout``): raise them for backends that are slow to deliver or to read back,
never lower the checks themselves.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from xflow.core.deploy import Executor
from xflow.core.errors import XflowError
from xflow.core.interfaces import (
    Consumer,
    Delivery,
    DeliveryRecord,
    EventRecord,
    ExecutionHistory,
    FunctionProvider,
    Plugin,
    Record,
    Runner,
    Step,
    TrackerStore,
    Transport,
)
from xflow.core.model import Function, Subscription, Workflow

__all__ = [
    "FunctionProviderContract",
    "TrackerStoreContract",
    "TransportContract",
    "apply_steps",
    "drain",
    "kit_workflow",
    "new_workflow_id",
]

TransportFactory = Callable[[str], Transport]
TrackerFactory = Callable[[str], TrackerStore]
ProviderFactory = Callable[[str], FunctionProvider]

#: the events of the kit's workflow, in flow order
KIT_EVENTS = ("Uploaded", "Parsed", "Counted")

_HANDLER_SOURCE = '''"""Handlers of the conformance kit's workflow."""


def read(event, ctx):
    return {"text": event.get("text", "")}


def count(event, ctx):
    ctx.publish("Counted", {"words": len(event["text"].split())})
'''


def new_workflow_id(prefix: str = "kit") -> str:
    """A fresh workflow id: lowercase letters and digits, valid as a stream/topic/table name part."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def kit_workflow(workflow_id: str, directory: Path) -> Workflow:
    """A small two-step workflow (``reader`` → ``counter``) whose handler file is written to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    handler_file = directory / "kit_handlers.py"
    handler_file.write_text(_HANDLER_SOURCE, encoding="utf-8")
    functions = {
        "reader": Function(name="reader", handler="read", source=str(handler_file), source_path=handler_file,
                           publishes=("Parsed",)),
        "counter": Function(name="counter", handler="count", source=str(handler_file), source_path=handler_file,
                            publishes=("Counted",)),
    }
    return Workflow(
        id=workflow_id,
        path=directory / f"{workflow_id}.yaml",
        functions=functions,
        subscriptions=(Subscription("Uploaded", ("reader",)), Subscription("Parsed", ("counter",))),
        flow=KIT_EVENTS,
    )


def apply_steps(steps: Sequence[Step], plugin: Plugin | None = None) -> None:
    """Run a plan through ``plugin.execute``, as the engine's executor does (closure-form steps need no plugin)."""
    perform: Callable[[Step], None]
    if plugin is not None:
        perform = plugin.execute
    else:
        def perform(step: Step) -> None:
            if step.apply is None:
                raise TypeError(f"{step.call} {step.resource} is a data-only step: pass the plugin that planned it")
            step.apply()
    Executor(perform).execute(steps)


def drain(consumer: Consumer, count: int, timeout: float, max_records: int = 100) -> list[Delivery]:
    """Poll until ``count`` deliveries arrived or ``timeout`` seconds passed; return what arrived."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        got.extend(consumer.poll(max_records, min(left, 2.0)))
    return got


def _check_plan(steps: Any, allowed: set[str]) -> None:
    assert isinstance(steps, list), f"a plan is a list of Step, got {type(steps).__name__}"
    for step in steps:
        assert isinstance(step, Step), f"a plan holds Step objects, got {step!r}"
        assert step.action in allowed, f"unexpected action {step.action!r} in {step}"
        kind, _, name = step.resource.partition(":")
        assert kind and name, f"a step's resource reads KIND:NAME, got {step.resource!r}"
        assert callable(step.apply) or step.call, f"{step} has neither a call for execute() nor an apply"


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
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in cls.options.items())
        assert isinstance(transport.max_record_bytes, int) and transport.max_record_bytes > self.large_record_margin
        assert isinstance(cls.connection_errors, tuple)
        assert transport.stream_name("Uploaded") != transport.stream_name("Parsed")

    # -- setup / teardown --------------------------------------------------------------------

    def test_setup_plans_then_is_idempotent(self, make_transport: Callable[[], Transport]) -> None:
        transport = make_transport()
        plan = transport.plan_setup(KIT_EVENTS)
        _check_plan(plan, {"create", "update", "delete"})
        assert plan, "a first setup must plan to create the streams"
        assert transport.plan_setup(KIT_EVENTS) == plan, "planning (a dry run) must change nothing"
        apply_steps(plan, transport)
        assert transport.plan_setup(KIT_EVENTS) == [], "a second setup of the same events must plan nothing"
        assert make_transport().plan_setup(KIT_EVENTS) == [], "a new instance must see the streams too"

    def test_setup_removes_streams_of_dropped_events(self, transport: Transport) -> None:
        kept = KIT_EVENTS[:2]
        plan = transport.plan_setup(kept)
        _check_plan(plan, {"create", "update", "delete"})
        assert [s.action for s in plan] == ["delete"], f"dropping one event plans one delete, got {plan}"
        apply_steps(plan, transport)
        assert transport.plan_setup(kept) == []

    def test_teardown_removes_what_setup_created(self, make_transport: Callable[[], Transport]) -> None:
        transport = make_transport()
        apply_steps(transport.plan_setup(KIT_EVENTS), transport)
        plan = transport.plan_teardown(KIT_EVENTS)
        _check_plan(plan, {"delete"})
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


class TrackerStoreContract:
    """What the engine relies on from a TrackerStore. Subclass it and define ``tracker_factory``."""

    #: how long, in seconds, reads are retried until they show what was written (eventual consistency)
    consistency_timeout: float = 0.0

    @pytest.fixture
    def tracker_factory(self) -> TrackerFactory:
        """Override: return a callable ``workflow_id -> TrackerStore`` for the backend under test."""
        pytest.fail("define a 'tracker_factory' fixture: a callable workflow_id -> TrackerStore")

    @pytest.fixture
    def workflow_id(self) -> str:
        return new_workflow_id()

    @pytest.fixture
    def workflow(self, workflow_id: str, tmp_path: Path) -> Workflow:
        return kit_workflow(workflow_id, tmp_path / "kit-workflow")

    @pytest.fixture
    def make_tracker(self, tracker_factory: TrackerFactory, workflow: Workflow) -> Iterator[Callable[[], TrackerStore]]:
        made: list[TrackerStore] = []

        def make() -> TrackerStore:
            tracker = tracker_factory(workflow.id)
            made.append(tracker)
            return tracker

        yield make
        if made:
            with contextlib.suppress(Exception):
                apply_steps(made[-1].plan_teardown(workflow), made[-1])
        for tracker in made:
            with contextlib.suppress(Exception):
                tracker.close()

    @pytest.fixture
    def tracker(self, make_tracker: Callable[[], TrackerStore], workflow: Workflow) -> TrackerStore:
        tracker = make_tracker()
        apply_steps(tracker.plan_setup(workflow), tracker)
        return tracker

    def history(self, tracker: TrackerStore, execution_id: str,
                until: Callable[[ExecutionHistory], bool] = lambda h: True) -> ExecutionHistory:
        deadline = time.monotonic() + self.consistency_timeout
        while True:
            found = tracker.history(execution_id)
            if until(found) or time.monotonic() >= deadline:
                return found
            time.sleep(0.5)

    @staticmethod
    def event(execution_id: str, event_id: str, published_at: float, event: str = "Uploaded",
              data: dict[str, Any] | None = None) -> EventRecord:
        return EventRecord(execution_id=execution_id, event_id=event_id, event=event,
                           published_at=published_at, producer="kit", data=data)

    @staticmethod
    def delivery(execution_id: str, event_id: str, started_at: float, status: str = "succeeded",
                 function: str = "reader", attempt: int = 1, error: str | None = None,
                 logs: tuple[str, ...] = ()) -> DeliveryRecord:
        return DeliveryRecord(execution_id=execution_id, event_id=event_id, event="Uploaded", function=function,
                              attempt=attempt, status=status, started_at=started_at,  # type: ignore[arg-type]
                              duration=0.25, error=error, logs=logs)

    def test_declares_name_and_options(self, make_tracker: Callable[[], TrackerStore]) -> None:
        cls = type(make_tracker())
        assert isinstance(cls.name, str) and cls.name
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in cls.options.items())

    def test_setup_is_idempotent(self, make_tracker: Callable[[], TrackerStore], workflow: Workflow) -> None:
        tracker = make_tracker()
        plan = tracker.plan_setup(workflow)
        _check_plan(plan, {"create", "update"})
        apply_steps(plan, tracker)
        assert tracker.plan_setup(workflow) == []
        assert make_tracker().plan_setup(workflow) == []

    def test_unknown_execution_has_empty_history(self, tracker: TrackerStore) -> None:
        found = tracker.history("no-such-execution")
        assert isinstance(found, ExecutionHistory)
        assert found.events == [] and found.deliveries == []

    def test_event_round_trip(self, tracker: TrackerStore) -> None:
        data = {"text": "Grüße 世界", "n": 3, "nested": {"ok": True, "list": [1, 2]}, "execution_id": "ex1"}
        record = self.event("ex1", "ev-1", 1_700_000_000.125, data=data)
        tracker.record_event(record)
        found = self.history(tracker, "ex1", lambda h: bool(h.events)).events
        assert len(found) == 1
        got = found[0]
        assert (got.execution_id, got.event_id, got.event, got.producer) == ("ex1", "ev-1", "Uploaded", "kit")
        assert got.published_at == pytest.approx(record.published_at, abs=1e-3)
        assert dict(got.data or {}) == data

    def test_record_event_is_idempotent_on_event_id(self, tracker: TrackerStore) -> None:
        tracker.record_event(self.event("ex2", "same-id", 1_700_000_000.0))
        tracker.record_event(self.event("ex2", "same-id", 1_700_000_001.0))
        tracker.record_event(self.event("ex2", "other-id", 1_700_000_002.0))
        found = self.history(tracker, "ex2", lambda h: len(h.events) >= 2).events
        assert [e.event_id for e in found] == ["same-id", "other-id"]

    def stored(self, tracker: TrackerStore, execution_id: str,
               until: Callable[[list[EventRecord]], bool] = lambda events: True) -> list[EventRecord]:
        """``tracker.stored_events``: the event records as stored, retried like :meth:`history`."""
        deadline = time.monotonic() + self.consistency_timeout
        while True:
            found = tracker.stored_events(execution_id)
            if until(found) or time.monotonic() >= deadline:
                return found
            time.sleep(0.5)

    def test_an_event_id_is_stored_once(self, tracker: TrackerStore, make_tracker: Callable[[], TrackerStore]) -> None:
        """What is stored, not only what ``history`` shows: the same event recorded again (by this instance, or by
        another one, as another process would) adds nothing."""
        tracker.record_event(self.event("ex10", "once", 1_700_000_000.0))
        tracker.record_event(self.event("ex10", "once", 1_700_000_001.0))
        self.history(tracker, "ex10", lambda h: bool(h.events))
        other = make_tracker()
        other.record_event(self.event("ex10", "once", 1_700_000_002.0))
        other.record_event(self.event("ex10", "twice", 1_700_000_003.0))
        tracker.record_event(self.event("ex10", "twice", 1_700_000_004.0))
        stored = self.stored(tracker, "ex10", lambda events: len(events) >= 2)
        if self.consistency_timeout:
            time.sleep(min(self.consistency_timeout, 2.0))  # a late duplicate would show up by now
            stored = tracker.stored_events("ex10")
        assert sorted(e.event_id for e in stored) == ["once", "twice"], \
            f"each event id is stored once, found {sorted(e.event_id for e in stored)}"
        assert [e.event_id for e in self.history(other, "ex10", lambda h: len(h.events) >= 2).events] == [
            "once", "twice"]

    def test_delivery_round_trip(self, tracker: TrackerStore) -> None:
        record = self.delivery("ex3", "ev-1", 1_700_000_000.5, status="failed", attempt=3,
                               error="ValueError: bad input", logs=("INFO starting", "ERROR ünïcode"))
        tracker.record_delivery(record)
        found = self.history(tracker, "ex3", lambda h: bool(h.deliveries)).deliveries
        assert len(found) == 1
        got = found[0]
        assert (got.execution_id, got.event_id, got.event, got.function, got.attempt, got.status) == (
            "ex3", "ev-1", "Uploaded", "reader", 3, "failed")
        assert got.started_at == pytest.approx(record.started_at, abs=1e-3)
        assert got.duration == pytest.approx(record.duration, abs=1e-3)
        assert got.error == "ValueError: bad input"
        assert tuple(got.logs) == ("INFO starting", "ERROR ünïcode")

    def test_every_attempt_is_kept(self, tracker: TrackerStore) -> None:
        tracker.record_delivery(self.delivery("ex4", "ev-1", 1_700_000_000.0, status="retrying", attempt=1))
        tracker.record_delivery(self.delivery("ex4", "ev-1", 1_700_000_001.0, status="succeeded", attempt=2))
        found = self.history(tracker, "ex4", lambda h: len(h.deliveries) >= 2).deliveries
        assert [(d.attempt, d.status) for d in found] == [(1, "retrying"), (2, "succeeded")]

    def test_history_is_ordered_by_time(self, tracker: TrackerStore) -> None:
        for i, at in enumerate([30.0, 10.0, 20.0]):
            tracker.record_event(self.event("ex5", f"ev-{i}", 1_700_000_000.0 + at))
            tracker.record_delivery(self.delivery("ex5", f"ev-{i}", 1_700_000_000.0 + at + 0.5))
        found = self.history(tracker, "ex5", lambda h: len(h.events) >= 3 and len(h.deliveries) >= 3)
        assert [e.event_id for e in found.events] == ["ev-1", "ev-2", "ev-0"]
        assert [d.event_id for d in found.deliveries] == ["ev-1", "ev-2", "ev-0"]

    def test_executions_and_workflows_are_kept_apart(
        self, tracker: TrackerStore, tracker_factory: TrackerFactory, workflow: Workflow, tmp_path: Path
    ) -> None:
        tracker.record_event(self.event("ex6", "ev-a", 1_700_000_000.0))
        tracker.record_event(self.event("ex7", "ev-b", 1_700_000_000.0))
        other_workflow = kit_workflow(new_workflow_id(), tmp_path / "other-workflow")
        other = tracker_factory(other_workflow.id)
        try:
            apply_steps(other.plan_setup(other_workflow), other)
            other.record_event(self.event("ex6", "ev-c", 1_700_000_000.0))
            assert [e.event_id for e in self.history(tracker, "ex6", lambda h: bool(h.events)).events] == ["ev-a"]
            assert [e.event_id for e in self.history(other, "ex6", lambda h: bool(h.events)).events] == ["ev-c"]
        finally:
            with contextlib.suppress(Exception):
                apply_steps(other.plan_teardown(other_workflow), other)
            other.close()

    def test_has_succeeded(self, tracker: TrackerStore) -> None:
        assert not tracker.has_succeeded("ex8", "ev-1", "reader")
        tracker.record_delivery(self.delivery("ex8", "ev-1", 1_700_000_000.0, status="retrying"))
        tracker.record_delivery(self.delivery("ex8", "ev-1", 1_700_000_001.0, status="succeeded", function="other"))
        self.history(tracker, "ex8", lambda h: len(h.deliveries) >= 2)
        assert not tracker.has_succeeded("ex8", "ev-1", "reader")
        tracker.record_delivery(self.delivery("ex8", "ev-1", 1_700_000_002.0, status="succeeded", attempt=2))
        self.history(tracker, "ex8", lambda h: len(h.deliveries) >= 3)
        assert tracker.has_succeeded("ex8", "ev-1", "reader")
        assert tracker.has_succeeded("ex8", "ev-1", "other")
        assert not tracker.has_succeeded("ex8", "ev-2", "reader")

    # -- batches (record_events, record_deliveries, succeeded_among) ------------------------------

    def test_record_events_stores_what_record_event_stores(self, tracker: TrackerStore) -> None:
        def batch(execution_id: str) -> list[EventRecord]:
            return [self.event(execution_id, f"{execution_id}-{i}", 1_700_000_000.0 + at, event=name,
                               data={"i": i, "text": "Grüße 世界", "nested": {"ok": i % 2 == 0}})
                    for i, (at, name) in enumerate([(3.25, "Parsed"), (1.5, "Uploaded"), (2.0, "Counted")])]

        for record in batch("one-by-one"):
            tracker.record_event(record)
        tracker.record_events(batch("batched"))
        tracker.record_events([])  # an empty batch stores nothing and is no error

        def shape(events: Sequence[EventRecord], execution_id: str) -> list[tuple[Any, ...]]:
            return [(e.execution_id, e.event_id.removeprefix(execution_id), e.event, round(e.published_at, 3),
                     e.producer, json.dumps(e.data, sort_keys=True)) for e in events]

        single = self.history(tracker, "one-by-one", lambda h: len(h.events) >= 3).events
        batched = self.history(tracker, "batched", lambda h: len(h.events) >= 3).events
        assert [e.event_id for e in batched] == ["batched-1", "batched-2", "batched-0"], "history is ordered by time"
        assert [s[1:] for s in shape(batched, "batched")] == [s[1:] for s in shape(single, "one-by-one")]
        assert {e.execution_id for e in batched} == {"batched"}
        assert len(self.stored(tracker, "batched", lambda events: len(events) >= 3)) == 3

    def test_record_deliveries_stores_what_record_delivery_stores(self, tracker: TrackerStore) -> None:
        def batch(execution_id: str) -> list[DeliveryRecord]:
            return [
                self.delivery(execution_id, "ev-1", 1_700_000_002.0, status="retrying", attempt=1,
                              error="ValueError: once", logs=("INFO try 1", "ERROR ünïcode")),
                self.delivery(execution_id, "ev-1", 1_700_000_001.0, status="failed", attempt=1, function="other"),
                self.delivery(execution_id, "ev-1", 1_700_000_003.0, status="succeeded", attempt=2),
                self.delivery(execution_id, "ev-2", 1_700_000_004.0, status="succeeded"),
            ]

        for record in batch("one-by-one"):
            tracker.record_delivery(record)
        tracker.record_deliveries(batch("batched"))
        tracker.record_deliveries([])

        def shape(deliveries: Sequence[DeliveryRecord]) -> list[tuple[Any, ...]]:
            return [(d.event_id, d.event, d.function, d.attempt, d.status, round(d.started_at, 3),
                     round(d.duration, 3), d.error, tuple(d.logs)) for d in deliveries]

        single = self.history(tracker, "one-by-one", lambda h: len(h.deliveries) >= 4).deliveries
        batched = self.history(tracker, "batched", lambda h: len(h.deliveries) >= 4).deliveries
        assert shape(batched) == shape(single)
        assert [(d.function, d.attempt, d.status) for d in batched] == [
            ("other", 1, "failed"), ("reader", 1, "retrying"), ("reader", 2, "succeeded"), ("reader", 1, "succeeded")]
        assert batched[1].error == "ValueError: once" and tuple(batched[1].logs) == ("INFO try 1", "ERROR ünïcode")
        assert {d.execution_id for d in batched} == {"batched"}
        # a batch appends: the same attempts recorded again (a later batch) are kept beside the first ones
        tracker.record_deliveries([self.delivery("batched", "ev-3", 1_700_000_005.0, status="retrying"),
                                   self.delivery("batched", "ev-3", 1_700_000_006.0, status="retrying", attempt=2)])
        again = self.history(tracker, "batched", lambda h: len(h.deliveries) >= 6).deliveries
        assert [(d.event_id, d.attempt) for d in again[4:]] == [("ev-3", 1), ("ev-3", 2)]

    def test_an_event_id_is_stored_once_within_and_across_batches(
        self, tracker: TrackerStore, make_tracker: Callable[[], TrackerStore]
    ) -> None:
        """As with ``record_event``: the first record of an event id wins, whether the later one comes in the same
        batch, a later batch, a single ``record_event`` or another instance's batch."""
        tracker.record_events([self.event("ex11", "a", 1_700_000_000.0, data={"first": True}),
                               self.event("ex11", "a", 1_700_000_001.0, data={"first": False}),
                               self.event("ex11", "b", 1_700_000_002.0)])
        tracker.record_events([self.event("ex11", "b", 1_700_000_003.0), self.event("ex11", "c", 1_700_000_004.0)])
        tracker.record_event(self.event("ex11", "c", 1_700_000_005.0))
        self.history(tracker, "ex11", lambda h: len(h.events) >= 3)
        other = make_tracker()
        other.record_events([self.event("ex11", "a", 1_700_000_006.0), self.event("ex11", "d", 1_700_000_007.0),
                             self.event("ex11", "d", 1_700_000_008.0)])
        stored = self.stored(tracker, "ex11", lambda events: len(events) >= 4)
        if self.consistency_timeout:
            time.sleep(min(self.consistency_timeout, 2.0))  # a late duplicate would show up by now
            stored = tracker.stored_events("ex11")
        assert sorted(e.event_id for e in stored) == ["a", "b", "c", "d"], \
            f"each event id is stored once, found {sorted(e.event_id for e in stored)}"
        first = {e.event_id: e for e in self.history(other, "ex11", lambda h: len(h.events) >= 4).events}
        assert dict(first["a"].data or {}) == {"first": True}, "the first record of an event id wins"
        assert first["b"].published_at == pytest.approx(1_700_000_002.0, abs=1e-3)
        assert first["d"].published_at == pytest.approx(1_700_000_007.0, abs=1e-3)

    def test_succeeded_among_agrees_with_has_succeeded(self, tracker: TrackerStore) -> None:
        assert tracker.succeeded_among([]) == set()
        tracker.record_deliveries([
            self.delivery("ex12", "ev-1", 1_700_000_000.0, status="succeeded"),
            self.delivery("ex12", "ev-2", 1_700_000_001.0, status="retrying"),
            self.delivery("ex12", "ev-3", 1_700_000_002.0, status="failed"),
            self.delivery("ex12", "ev-4", 1_700_000_003.0, status="retrying"),
            self.delivery("ex12", "ev-4", 1_700_000_004.0, status="succeeded", attempt=2),
            self.delivery("ex12", "ev-5", 1_700_000_005.0, status="succeeded", function="other"),
            self.delivery("ex13", "ev-6", 1_700_000_006.0, status="succeeded"),
        ])
        self.history(tracker, "ex12", lambda h: len(h.deliveries) >= 6)
        self.history(tracker, "ex13", lambda h: len(h.deliveries) >= 1)
        keys = [("ex12", f"ev-{i}", function) for i in range(1, 8) for function in ("reader", "other")]
        keys += [("ex13", "ev-1", "reader"), ("ex13", "ev-6", "reader"), ("ex12", "ev-1", "reader"),  # a repeat
                 ("no-such-execution", "ev-1", "reader")]
        expected = {("ex12", "ev-1", "reader"), ("ex12", "ev-4", "reader"), ("ex12", "ev-5", "other"),
                    ("ex13", "ev-6", "reader")}
        assert {key for key in keys if tracker.has_succeeded(*key)} == expected
        found = tracker.succeeded_among(keys)
        assert isinstance(found, set)
        assert found == expected, f"succeeded_among must say what has_succeeded says, got {sorted(found)}"
        assert tracker.succeeded_among([("ex12", "ev-2", "reader")]) == set()

    def test_a_batch_of_a_thousand_records(self, tracker: TrackerStore) -> None:
        count = 1000
        tracker.record_events([self.event("ex14", f"ev-{i:04d}", 1_700_000_000.0 + i / 1000, data={"i": i})
                               for i in range(count)])
        tracker.record_deliveries([self.delivery("ex14", f"ev-{i:04d}", 1_700_000_000.5 + i / 1000,
                                                 status="succeeded" if i % 2 else "retrying") for i in range(count)])
        found = self.history(tracker, "ex14", lambda h: len(h.events) >= count and len(h.deliveries) >= count)
        assert [e.event_id for e in found.events] == [f"ev-{i:04d}" for i in range(count)]
        assert [d.event_id for d in found.deliveries] == [f"ev-{i:04d}" for i in range(count)]
        assert len(self.stored(tracker, "ex14", lambda events: len(events) >= count)) == count
        keys = [("ex14", f"ev-{i:04d}", "reader") for i in range(count)]
        assert tracker.succeeded_among(keys) == {key for i, key in enumerate(keys) if i % 2}

    def test_teardown_removes_the_records(
        self, make_tracker: Callable[[], TrackerStore], workflow: Workflow
    ) -> None:
        tracker = make_tracker()
        first_plan = tracker.plan_setup(workflow)
        apply_steps(first_plan, tracker)
        tracker.record_event(self.event("ex9", "ev-1", 1_700_000_000.0))
        self.history(tracker, "ex9", lambda h: bool(h.events))
        plan = tracker.plan_teardown(workflow)
        _check_plan(plan, {"delete"})
        assert plan, "teardown after setup must plan deletes"
        apply_steps(plan, tracker)
        fresh = make_tracker()
        again = fresh.plan_setup(workflow)
        if first_plan:
            assert again, "after teardown, setup must create again"
        apply_steps(again, fresh)
        assert fresh.history("ex9").events == [], "teardown must remove the workflow's records"


class FunctionProviderContract:
    """What the engine relies on from a FunctionProvider's plans, and from its runner if it has one.

    Define ``provider_factory``; ``provider_transport`` and ``provider_tracker`` default to
    the built-in ``local`` transport and ``sqlite`` tracker and may be overridden.

    A provider whose ``runner()`` returns a :class:`~xflow.core.interfaces.Runner` (it runs functions on this
    machine) is checked against the delivery rules: every step handled once and recorded, a duplicate record
    skipped, an undecodable record set aside while the others go on, a failing handler retried and then recorded
    failed without holding up other executions, and ``stop`` honoured. ``runner_timeout`` bounds each wait.
    """

    runner_timeout: float = 60.0

    @pytest.fixture
    def provider_factory(self) -> ProviderFactory:
        """Override: return a callable ``workflow_id -> FunctionProvider`` for the backend under test."""
        pytest.fail("define a 'provider_factory' fixture: a callable workflow_id -> FunctionProvider")

    @pytest.fixture
    def workflow(self, tmp_path: Path) -> Workflow:
        return kit_workflow(new_workflow_id(), tmp_path / "kit-workflow")

    @pytest.fixture
    def provider_transport(self, workflow: Workflow, tmp_path: Path) -> Iterator[Transport]:
        transport = _builtin("transport", "local", workflow, tmp_path)
        assert isinstance(transport, Transport)
        apply_steps(transport.plan_setup(workflow.events), transport)
        yield transport
        with contextlib.suppress(Exception):
            apply_steps(transport.plan_teardown(workflow.events), transport)
        transport.close()

    @pytest.fixture
    def provider_tracker(self, workflow: Workflow, tmp_path: Path) -> Iterator[TrackerStore]:
        tracker = _builtin("tracker", "sqlite", workflow, tmp_path)
        assert isinstance(tracker, TrackerStore)
        apply_steps(tracker.plan_setup(workflow), tracker)
        yield tracker
        with contextlib.suppress(Exception):
            apply_steps(tracker.plan_teardown(workflow), tracker)
        tracker.close()

    @pytest.fixture
    def provider(self, provider_factory: ProviderFactory, workflow: Workflow, provider_transport: Transport,
                 provider_tracker: TrackerStore) -> Iterator[FunctionProvider]:
        provider = provider_factory(workflow.id)
        yield provider
        with contextlib.suppress(Exception):
            apply_steps(provider.plan_teardown(workflow, provider_transport, provider_tracker), provider)
        provider.close()

    def test_declares_name_options_and_where_it_runs(self, provider: FunctionProvider) -> None:
        cls = type(provider)
        assert isinstance(cls.name, str) and cls.name
        assert isinstance(cls.runs_locally, bool)
        assert callable(getattr(provider, "runner", None)), "a provider has runner() (the default returns None)"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in cls.options.items())

    # -- the runner (providers that run functions on this machine) ---------------------------------
    def _runner(self, provider: FunctionProvider, workflow: Workflow, transport: Transport,
                tracker: TrackerStore) -> Runner:
        apply_steps(provider.plan_setup(workflow, transport, tracker), provider)
        runner = provider.runner(workflow, transport, tracker)
        if runner is None:
            pytest.skip(f"the {type(provider).name!r} provider runs no functions on this machine (runner() is None)")
        assert isinstance(runner, Runner), f"runner() must return a Runner or None, got {type(runner).__name__}"
        return runner

    def _publish(self, workflow: Workflow, transport: Transport, tracker: TrackerStore, execution_id: str,
                 data: dict[str, Any], event_id: str | None = None) -> str:
        from xflow.core.delivery import OutgoingEvent, publish_events

        event_id = event_id or uuid.uuid4().hex
        publish_events(workflow, transport, tracker, [OutgoingEvent(
            "Uploaded", dict(data, execution_id=execution_id), execution_id, event_id, f"xflow/{workflow.id}")])
        return event_id

    def _run_until(self, runner: Runner, done: Callable[[], bool]) -> float:
        """Run ``runner`` in a thread until ``done()``; stop it and return how long the stop took."""
        stop = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            try:
                runner.run(stop)
            except BaseException as exc:  # handed to the test
                errors.append(exc)

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        deadline = time.monotonic() + self.runner_timeout
        try:
            while not done():
                assert not errors, f"the runner stopped: {errors[0]!r}"
                assert thread.is_alive(), "the runner returned before it was asked to stop"
                assert time.monotonic() < deadline, f"not done within {self.runner_timeout:g} s"
                time.sleep(0.1)
        finally:
            runner.grace_seconds = 5.0
            asked = time.monotonic()
            stop.set()
            thread.join(self.runner_timeout)
        took = time.monotonic() - asked
        assert not thread.is_alive(), "the runner did not stop"
        assert not errors, f"the runner failed: {errors[0]!r}"
        return took

    @staticmethod
    def _counted(tracker: TrackerStore, execution_id: str) -> bool:
        return any(e.event == "Counted" for e in tracker.history(execution_id).events)

    def test_runner_handles_each_step_once_and_records_it(
        self, provider: FunctionProvider, workflow: Workflow, provider_transport: Transport,
        provider_tracker: TrackerStore
    ) -> None:
        runner = self._runner(provider, workflow, provider_transport, provider_tracker)
        executions = [f"kit-run-{i}" for i in range(6)]
        for execution in executions:
            self._publish(workflow, provider_transport, provider_tracker, execution, {"text": f"a b {execution}"})
        took = self._run_until(runner, lambda: all(self._counted(provider_tracker, e) for e in executions))
        assert took < 10 + runner.poll_interval, f"stopping an idle runner took {took:.1f} s"
        for execution in executions:
            history = provider_tracker.history(execution)
            done = [(d.function, d.attempt, d.status) for d in history.deliveries]
            assert sorted(done) == [("counter", 1, "succeeded"), ("reader", 1, "succeeded")], done
            counted = [e for e in history.events if e.event == "Counted"]
            assert len(counted) == 1 and counted[0].data is not None and counted[0].data["words"] == 3
        assert runner.handled == 2 * len(executions)

    def test_runner_skips_an_event_delivered_twice(
        self, provider: FunctionProvider, workflow: Workflow, provider_transport: Transport,
        provider_tracker: TrackerStore
    ) -> None:
        runner = self._runner(provider, workflow, provider_transport, provider_tracker)
        event_id = self._publish(workflow, provider_transport, provider_tracker, "kit-twice", {"text": "one"})
        self._publish(workflow, provider_transport, provider_tracker, "kit-twice", {"text": "one"}, event_id)
        self._publish(workflow, provider_transport, provider_tracker, "kit-after", {"text": "two"})
        self._run_until(runner, lambda: self._counted(provider_tracker, "kit-twice")
                        and self._counted(provider_tracker, "kit-after"))
        deliveries = provider_tracker.history("kit-twice").deliveries
        assert [d.function for d in deliveries if d.event_id == event_id] == ["reader"], deliveries

    def test_runner_sets_aside_what_it_cannot_decode_and_goes_on(
        self, provider: FunctionProvider, workflow: Workflow, provider_transport: Transport,
        provider_tracker: TrackerStore
    ) -> None:
        runner = self._runner(provider, workflow, provider_transport, provider_tracker)
        provider_transport.publish("Uploaded", [Record("kit-junk", b"\xff not an event"),
                                                Record("kit-junk", b'{"no": "execution id"}')])
        self._publish(workflow, provider_transport, provider_tracker, "kit-junk", {"text": "fine"})
        self._run_until(runner, lambda: self._counted(provider_tracker, "kit-junk"))

    def test_runner_retries_a_failure_then_records_it_while_other_executions_go_on(
        self, provider: FunctionProvider, workflow: Workflow, provider_transport: Transport,
        provider_tracker: TrackerStore
    ) -> None:
        runner = self._runner(provider, workflow, provider_transport, provider_tracker)
        # the reader passes a number on as the text: the counter fails on it, every attempt
        self._publish(workflow, provider_transport, provider_tracker, "kit-bad", {"text": 5})
        good = [f"kit-good-{i}" for i in range(3)]
        for execution in good:
            self._publish(workflow, provider_transport, provider_tracker, execution, {"text": "x y"})

        def settled() -> bool:
            failed = [d for d in provider_tracker.history("kit-bad").deliveries if d.status == "failed"]
            return bool(failed) and all(self._counted(provider_tracker, e) for e in good)

        self._run_until(runner, settled)
        counter = [d for d in provider_tracker.history("kit-bad").deliveries if d.function == "counter"]
        attempts = workflow.functions["counter"].retries + 1
        assert [d.attempt for d in counter] == list(range(1, attempts + 1)), counter
        assert [d.status for d in counter] == ["retrying"] * (attempts - 1) + ["failed"], counter
        assert all(d.error and "AttributeError" in d.error for d in counter), counter

    def test_runner_stops_within_its_poll_interval_when_idle(
        self, provider: FunctionProvider, workflow: Workflow, provider_transport: Transport,
        provider_tracker: TrackerStore
    ) -> None:
        runner = self._runner(provider, workflow, provider_transport, provider_tracker)
        started = time.monotonic()
        took = self._run_until(runner, lambda: time.monotonic() - started > 1.0)
        assert took < 5.0 + runner.poll_interval, f"an idle runner took {took:.1f} s to stop"

    def test_setup_plans_then_is_idempotent(self, provider: FunctionProvider, workflow: Workflow,
                                            provider_transport: Transport, provider_tracker: TrackerStore) -> None:
        plan = provider.plan_setup(workflow, provider_transport, provider_tracker)
        _check_plan(plan, {"create", "update", "delete"})
        assert provider.plan_setup(workflow, provider_transport, provider_tracker) == plan, \
            "planning (a dry run) must change nothing"
        apply_steps(plan, provider)
        assert provider.plan_setup(workflow, provider_transport, provider_tracker) == []

    def test_teardown_then_setup_plans_the_same_again(
        self, provider: FunctionProvider, workflow: Workflow, provider_transport: Transport,
        provider_tracker: TrackerStore
    ) -> None:
        first = provider.plan_setup(workflow, provider_transport, provider_tracker)
        apply_steps(first, provider)
        teardown = provider.plan_teardown(workflow, provider_transport, provider_tracker)
        _check_plan(teardown, {"delete"})
        assert bool(teardown) == bool(first), "teardown removes what setup created"
        apply_steps(teardown, provider)
        assert provider.plan_teardown(workflow, provider_transport, provider_tracker) == []
        again = provider.plan_setup(workflow, provider_transport, provider_tracker)
        assert [s.as_change() for s in again] == [s.as_change() for s in first]


def _builtin(kind: str, name: str, workflow: Workflow, state_dir: Path) -> object:
    from xflow.core.interfaces import PluginContext
    from xflow.core.plugins import PluginRegistry

    info = PluginRegistry().get(kind, name)
    assert info.cls is not None
    return info.cls(PluginContext(workflow.id, {}, state_dir, workflow))
