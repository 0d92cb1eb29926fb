"""Settling a batch of attempts writes the tracker once: ``TrackerStore.record_batch`` (the published events, then the
attempts' outcomes), one transaction in the sqlite tracker; a tracker written before it gets a default that makes the
two batch calls; a record whose content breaks the batch is set aside and the rest of the batch is settled."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from xflow import Engine
from xflow.core.interfaces import DeliveryRecord, EventRecord, PluginContext, Record
from xflow.testing import apply_steps, kit_workflow, new_workflow_id
from xflow.trackers.sqlite import SqliteTrackerStore

RELAY = """
def relay(event, ctx):
    return {"explode": bool(event.get("bad"))}
"""
FLOW = """
workflow_id: settling
general: {retries: 0}
lambdas:
  - {name: relay, source: relay.py, handler: relay, publishes: [Done]}
subscriptions:
  - {name: Start, subscribers: [relay]}
workflows:
  - {id: settling, flow: [Start, Done]}
"""


def _event(execution_id: str, event_id: str, at: float, data: dict[str, Any] | None = None) -> EventRecord:
    return EventRecord(execution_id, event_id, "Uploaded", at, "test", data if data is not None else {"n": 1})


def _delivery(execution_id: str, event_id: str, at: float, status: str = "succeeded") -> DeliveryRecord:
    return DeliveryRecord(execution_id, event_id, "Uploaded", "reader", 1, status, at, 0.1)  # type: ignore[arg-type]


@pytest.fixture
def sqlite_tracker(tmp_path: Path) -> Any:
    workflow = kit_workflow(new_workflow_id(), tmp_path / "wf")
    tracker = SqliteTrackerStore(PluginContext(workflow.id, {}, tmp_path / "state", workflow))
    apply_steps(tracker.plan_setup(workflow), tracker)
    yield tracker
    tracker.close()


def test_sqlite_records_a_batch_of_events_and_deliveries_in_one_transaction(sqlite_tracker: Any) -> None:
    statements: list[str] = []
    sqlite_tracker.db.set_trace_callback(statements.append)
    sqlite_tracker.record_batch([_event("x", f"e{i}", i) for i in range(50)],
                                [_delivery("x", f"e{i}", i + 0.5) for i in range(50)])
    assert [s for s in statements if not s.startswith("INSERT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    inserts = [s for s in statements if s.startswith("INSERT")]
    # one statement per table (the rows as one VALUES list, in order), events first
    assert [s.split("(")[0] for s in inserts] == ["INSERT OR IGNORE INTO events", "INSERT INTO deliveries"]
    assert [inserts[0].count("'e"), inserts[1].count("'e")] == [50, 50]
    assert sqlite_tracker.db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 50
    assert sqlite_tracker.db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 50
    statements.clear()
    sqlite_tracker.record_batch([], [])
    assert statements == [], "an empty batch touches nothing"
    history = sqlite_tracker.history("x")
    assert (len(history.events), len(history.deliveries)) == (50, 50)


def test_sqlite_a_failed_record_batch_stores_neither_and_the_next_one_works(sqlite_tracker: Any) -> None:
    broken = DeliveryRecord("x", "e9", None, "reader", 1, "succeeded", 9.0)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        sqlite_tracker.record_batch([_event("x", "e1", 1.0)], [_delivery("x", "e1", 1.5), broken])
    history = sqlite_tracker.history("x")
    assert (history.events, history.deliveries) == ([], []), "events and deliveries are one transaction"
    assert not sqlite_tracker.db.in_transaction
    sqlite_tracker.record_batch([_event("x", "e1", 1.0)], [_delivery("x", "e1", 1.5)])
    assert sqlite_tracker.has_succeeded("x", "e1", "reader")


class _Older(SqliteTrackerStore):
    """A tracker written before ``record_batch``, that keeps its own single method (adapted by subclassing)."""

    seen: ClassVar[list[str]] = []

    def record_delivery(self, record: DeliveryRecord) -> None:
        self.seen.append(f"delivery {record.execution_id}")
        super().record_delivery(record)


def test_the_default_record_batch_makes_the_two_batch_calls_in_order(tmp_path: Path) -> None:
    calls: list[str] = []

    class Counting(SqliteTrackerStore):
        def record_events(self, records: Sequence[EventRecord]) -> None:
            calls.append(f"events {len(records)}")
            super().record_events(records)

        def record_deliveries(self, records: Sequence[DeliveryRecord]) -> None:
            calls.append(f"deliveries {len(records)}")
            super().record_deliveries(records)

    workflow = kit_workflow(new_workflow_id(), tmp_path / "wf")
    tracker = Counting(PluginContext(workflow.id, {}, tmp_path / "state", workflow))
    apply_steps(tracker.plan_setup(workflow), tracker)
    try:
        # the base class's record_batch, as a tracker that does not override it gets
        from xflow.core.interfaces import TrackerStore

        TrackerStore.record_batch(tracker, [_event("x", "a", 1.0), _event("x", "b", 2.0)], [_delivery("x", "a", 1.5)])
        TrackerStore.record_batch(tracker, [], [_delivery("x", "b", 2.5)])
        TrackerStore.record_batch(tracker, [], [])
        assert calls == ["events 2", "deliveries 1", "deliveries 1"]
        history = tracker.history("x")
        assert [e.event_id for e in history.events] == ["a", "b"] and len(history.deliveries) == 2
    finally:
        tracker.close()


def _run(make_workflow: Any, tmp_path: Path, tracker_class: type[SqliteTrackerStore],
         executions: dict[str, bool]) -> tuple[Engine, SqliteTrackerStore]:
    """Publish a Start event per execution (``{"bad": true}`` where the value is True) and work until all ended."""
    path = make_workflow(FLOW, {"relay.py": RELAY})
    state = tmp_path / ".xflow"
    Engine(path, state_dir=state, transport="local", provider="local", tracker="sqlite").setup()
    tracker = tracker_class(PluginContext("settling", {}, state))
    engine = Engine(path, state_dir=state, transport="local", provider="local", tracker=tracker,
                    options={"provider": {"isolation": "thread"}})
    for execution_id, bad in executions.items():
        engine.transport.publish("Start", [Record(execution_id, (
            f'{{"execution_id": "{execution_id}", "bad": {"true" if bad else "false"}}}').encode())])
    engine.work(until=lambda: all(engine.track(e)["status"] != "running" for e in executions))
    return engine, tracker


class _CountingBatches(SqliteTrackerStore):
    calls: ClassVar[list[tuple[str, int, int]]] = []

    def record_batch(self, events: Sequence[EventRecord], deliveries: Sequence[DeliveryRecord]) -> None:
        self.calls.append(("batch", len(events), len(deliveries)))
        super().record_batch(events, deliveries)

    def record_deliveries(self, records: Sequence[DeliveryRecord]) -> None:
        self.calls.append(("deliveries", 0, len(records)))
        super().record_deliveries(records)


def test_a_worker_settles_each_batch_with_one_record_batch_call(make_workflow: Any, tmp_path: Path) -> None:
    _CountingBatches.calls.clear()
    engine, _ = _run(make_workflow, tmp_path, _CountingBatches, {f"ok{i}": False for i in range(20)})
    with engine:
        assert all(engine.track(f"ok{i}")["status"] == "succeeded" for i in range(20))
    assert _CountingBatches.calls and {kind for kind, _, _ in _CountingBatches.calls} == {"batch"}
    assert sum(d for _, _, d in _CountingBatches.calls) == 20, "each attempt recorded once"
    assert sum(e for _, e, _ in _CountingBatches.calls) == 20, "with the event it published"


class _Explosive(SqliteTrackerStore):
    """A tracker that cannot store some content (a bug of its own), in every way of writing events."""

    @staticmethod
    def _check(records: Sequence[EventRecord]) -> None:
        if any(record.data and record.data.get("explode") for record in records):
            raise TypeError("this tracker cannot store 'explode'")

    def record_event(self, record: EventRecord) -> None:
        self._check([record])
        super().record_event(record)

    def record_events(self, records: Sequence[EventRecord]) -> None:
        self._check(records)
        super().record_events(records)

    def record_batch(self, events: Sequence[EventRecord], deliveries: Sequence[DeliveryRecord]) -> None:
        self._check(events)
        super().record_batch(events, deliveries)


def test_an_attempt_whose_events_break_the_batch_is_set_aside_and_the_others_settle(make_workflow: Any,
                                                                                    tmp_path: Path) -> None:
    executions = {f"ok{i}": False for i in range(10)} | {"boom": True}
    engine, tracker = _run(make_workflow, tmp_path, _Explosive, executions)
    with engine:
        for i in range(10):
            assert engine.track(f"ok{i}")["status"] == "succeeded"
            assert engine.result(f"ok{i}") == {"explode": False, "execution_id": f"ok{i}"}
        failed = engine.track("boom")
        assert failed["status"] == "failed"
        subscriber = failed["events"][0]["subscribers"][0]
        assert subscriber["state"] == "failed" and "cannot store 'explode'" in subscriber["error"]
        letters = engine.transport.dead_letters()
        assert len(letters) == 1 and "cannot settle the record" in str(letters[0]["reason"])
        assert [e.event for e in tracker.history("boom").events] == ["Start"], "its event was not recorded"


def test_a_tracker_adapted_by_subclassing_a_single_method_still_gets_its_calls(make_workflow: Any,
                                                                               tmp_path: Path) -> None:
    _Older.seen.clear()
    engine, _ = _run(make_workflow, tmp_path, _Older, {f"ok{i}": False for i in range(5)})
    with engine:
        assert all(engine.track(f"ok{i}")["status"] == "succeeded" for i in range(5))
    assert sorted(_Older.seen) == [f"delivery ok{i}" for i in range(5)]
