"""The TrackerStore contract of the conformance kit: what the engine relies on from a TrackerStore."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from xflow.core.interfaces import (
    DeliveryRecord,
    EventRecord,
    ExecutionHistory,
    TrackerStore,
)
from xflow.core.model import Workflow
from xflow.core.options import Option, declared_options
from xflow.testing.kit import apply_steps, check_plan, kit_workflow, new_workflow_id

TrackerFactory = Callable[[str], TrackerStore]


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
        assert all(isinstance(option, Option) for option in declared_options(cls).values())

    def test_setup_is_idempotent(self, make_tracker: Callable[[], TrackerStore], workflow: Workflow) -> None:
        tracker = make_tracker()
        plan = tracker.plan_setup(workflow)
        check_plan(plan, {"create", "update"})
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

    def test_record_batch_stores_what_the_two_batch_calls_store(self, tracker: TrackerStore) -> None:
        """``record_batch(events, deliveries)`` stores what ``record_events`` then ``record_deliveries`` store: the
        first record of an event id wins, every attempt is appended, either list may be empty."""
        def events(execution_id: str) -> list[EventRecord]:
            return [self.event(execution_id, f"{execution_id}-a", 1_700_000_001.0, data={"n": 1, "text": "Grüße"}),
                    self.event(execution_id, f"{execution_id}-b", 1_700_000_002.0, event="Parsed"),
                    self.event(execution_id, f"{execution_id}-a", 1_700_000_003.0, data={"n": 2})]

        def deliveries(execution_id: str) -> list[DeliveryRecord]:
            return [self.delivery(execution_id, f"{execution_id}-a", 1_700_000_001.5, status="retrying",
                                  error="ValueError: once", logs=("INFO try 1",)),
                    self.delivery(execution_id, f"{execution_id}-a", 1_700_000_002.5, status="succeeded", attempt=2)]

        tracker.record_events(events("apart"))
        tracker.record_deliveries(deliveries("apart"))
        tracker.record_batch(events("together"), deliveries("together"))
        tracker.record_batch([], [])
        tracker.record_batch([self.event("together", "together-c", 1_700_000_004.0)], [])
        tracker.record_batch([], [self.delivery("together", "together-c", 1_700_000_004.5, status="succeeded")])

        def shape(history: ExecutionHistory, execution_id: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            return ([(e.event_id.removeprefix(execution_id), e.event, round(e.published_at, 3),
                      json.dumps(e.data, sort_keys=True)) for e in history.events],
                    [(d.event_id.removeprefix(execution_id), d.attempt, d.status, d.error, tuple(d.logs))
                     for d in history.deliveries])

        apart = shape(self.history(tracker, "apart", lambda h: len(h.events) >= 2 and len(h.deliveries) >= 2), "apart")
        together = shape(self.history(tracker, "together", lambda h: len(h.events) >= 3 and len(h.deliveries) >= 3),
                         "together")
        assert together[0][:2] == apart[0] and together[1][:2] == apart[1]
        assert together[0][0][3] == json.dumps({"n": 1, "text": "Grüße"}), "the first record of an event id wins"
        assert [row[0] for row in together[0]] == ["-a", "-b", "-c"]
        assert together[1][2][:3] == ("-c", 1, "succeeded")
        assert tracker.has_succeeded("together", "together-a", "reader")
        assert tracker.succeeded_among([("together", "together-c", "reader"), ("together", "together-b", "reader")]) \
            == {("together", "together-c", "reader")}

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

    def test_list_executions_pages_newest_first(self, tracker: TrackerStore) -> None:
        """list_executions: most recently started first, paged by its cursor without gaps or repeats, the status
        hint never leaves out an execution that has it, a cursor the store did not make is an XflowError."""
        from xflow.core.errors import XflowError

        base = 1_700_000_000.0
        for n in range(5):  # ls0 started first, ls4 last; each execution has two events
            tracker.record_events([self.event(f"ls{n}", f"ls{n}-a", base + n * 10),
                                   self.event(f"ls{n}", f"ls{n}-b", base + n * 10 + 5, event="Charged")])
            if n == 1:
                tracker.record_delivery(self.delivery("ls1", "ls1-a", base + 11, status="failed", error="boom"))
            time.sleep(0.01)  # a store that orders by the time of writing (CloudWatch) sees them apart

        def walk() -> list[Any]:
            listed, cursor = [], None
            for _ in range(10):
                page = tracker.list_executions(2, cursor)
                assert len(page.executions) <= 2
                listed += page.executions
                cursor = page.next_cursor
                if cursor is None:
                    break
            return listed

        deadline = time.monotonic() + self.consistency_timeout
        listed = walk()
        while len(listed) < 5 and time.monotonic() < deadline:
            time.sleep(0.5)
            listed = walk()
        if not listed and not tracker.recent_executions(5):
            pytest.skip(f"the {type(tracker).__name__} store lists no executions (recent_executions and "
                        "list_executions are optional)")
        assert [info.execution_id for info in listed] == ["ls4", "ls3", "ls2", "ls1", "ls0"]
        starts = [info.started_at for info in listed]
        assert all(isinstance(t, float | int) for t in starts) and starts == sorted(starts, reverse=True)
        failed = [info.execution_id for info in tracker.list_executions(10, status="failed").executions]
        assert "ls1" in failed
        assert tracker.list_executions(0).executions == []
        with pytest.raises(XflowError):
            tracker.list_executions(2, "not a cursor of this store")

    def test_teardown_removes_the_records(
        self, make_tracker: Callable[[], TrackerStore], workflow: Workflow
    ) -> None:
        tracker = make_tracker()
        first_plan = tracker.plan_setup(workflow)
        apply_steps(first_plan, tracker)
        tracker.record_event(self.event("ex9", "ev-1", 1_700_000_000.0))
        self.history(tracker, "ex9", lambda h: bool(h.events))
        plan = tracker.plan_teardown(workflow)
        check_plan(plan, {"delete"})
        assert plan, "teardown after setup must plan deletes"
        apply_steps(plan, tracker)
        fresh = make_tracker()
        again = fresh.plan_setup(workflow)
        if first_plan:
            assert again, "after teardown, setup must create again"
        apply_steps(again, fresh)
        assert fresh.history("ex9").events == [], "teardown must remove the workflow's records"
