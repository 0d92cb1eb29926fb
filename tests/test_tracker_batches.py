"""Batched settlement in the trackers: ``record_events``, ``record_deliveries`` and ``succeeded_among``.

The conformance kit checks what every tracker stores (``tests/test_conformance_builtin.py`` and the backends'
suites run it); here: the defaults a tracker written before batches gets, and how the built-in stores and the
postgres plugin write a batch (one transaction, one statement) and answer ``has_succeeded`` (an index, never a
whole history).
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from xflow.core.interfaces import (
    DeliveryRecord,
    EventRecord,
    ExecutionHistory,
    PluginContext,
    Step,
    TrackerStore,
)
from xflow.core.model import Workflow
from xflow.core.plugins import PluginRegistry
from xflow.testing import TrackerStoreContract, apply_steps, kit_workflow, new_workflow_id


def _event(execution_id: str, event_id: str, at: float) -> EventRecord:
    return EventRecord(execution_id, event_id, "Uploaded", at, "test", {"n": 1})


def _delivery(execution_id: str, event_id: str, at: float, status: str = "succeeded",
              function: str = "reader") -> DeliveryRecord:
    return DeliveryRecord(execution_id, event_id, "Uploaded", function, 1, status, at, 0.1)  # type: ignore[arg-type]


# -- the defaults: a tracker that implements only the single methods ---------------------------------------------

#: the in-memory stores' records by workflow id (shared by instances, as a real server would be)
_MEMORY: dict[str, tuple[list[EventRecord], list[DeliveryRecord]]] = {}


class SingleMethodTracker(TrackerStore):
    """A tracker written before batches existed: the abstract methods only, every call counted."""

    name = "single-method"
    calls: ClassVar[dict[str, int]] = {}

    def _count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    def plan_setup(self, workflow: Workflow) -> list[Step]:
        if workflow.id in _MEMORY:
            return []
        return [Step("create", f"memory:{workflow.id}", lambda: _MEMORY.setdefault(workflow.id, ([], [])))]

    def plan_teardown(self, workflow: Workflow) -> list[Step]:
        if workflow.id not in _MEMORY:
            return []
        return [Step("delete", f"memory:{workflow.id}", lambda: _MEMORY.pop(workflow.id, None))]

    def record_event(self, record: EventRecord) -> None:
        self._count("record_event")
        events = _MEMORY[self.workflow_id][0]
        if all(e.event_id != record.event_id for e in events):
            events.append(record)

    def record_delivery(self, record: DeliveryRecord) -> None:
        self._count("record_delivery")
        _MEMORY[self.workflow_id][1].append(record)

    def history(self, execution_id: str) -> ExecutionHistory:
        self._count("history")
        events, deliveries = _MEMORY.get(self.workflow_id, ([], []))
        return ExecutionHistory(sorted((e for e in events if e.execution_id == execution_id), key=lambda e: e.published_at),
                                sorted((d for d in deliveries if d.execution_id == execution_id),
                                       key=lambda d: d.started_at))


class TestDefaultBatchMethods(TrackerStoreContract):
    """The whole kit, batch checks included, passes on a tracker that has only the single methods."""

    @pytest.fixture
    def tracker_factory(self, tmp_path: Path) -> Callable[[str], TrackerStore]:
        return lambda workflow_id: SingleMethodTracker(PluginContext(workflow_id, {}, tmp_path))


def test_the_defaults_loop_over_the_single_methods(tmp_path: Path) -> None:
    workflow = kit_workflow(new_workflow_id(), tmp_path)
    tracker = SingleMethodTracker(PluginContext(workflow.id, {}, tmp_path))
    apply_steps(tracker.plan_setup(workflow))
    SingleMethodTracker.calls.clear()
    tracker.record_events([_event("x", f"e{i}", i) for i in range(5)] + [_event("x", "e0", 9.0)])
    tracker.record_deliveries([_delivery("x", f"e{i}", i + 0.5, "succeeded" if i % 2 else "failed") for i in range(5)])
    assert SingleMethodTracker.calls == {"record_event": 6, "record_delivery": 5}
    found = tracker.succeeded_among([("x", f"e{i}", "reader") for i in range(5)] + [("x", "e1", "reader")])
    assert found == {("x", "e1", "reader"), ("x", "e3", "reader")}
    assert SingleMethodTracker.calls["history"] == 5, "one has_succeeded per distinct key"
    apply_steps(tracker.plan_teardown(workflow))


# -- sqlite ------------------------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_tracker(tmp_path: Path) -> Iterator[TrackerStore]:
    info = PluginRegistry().get("tracker", "sqlite")
    assert info.cls is not None
    workflow = kit_workflow(new_workflow_id(), tmp_path / "wf")
    tracker = info.cls(PluginContext(workflow.id, {}, tmp_path / "state", workflow))
    apply_steps(tracker.plan_setup(workflow), tracker)
    yield tracker
    tracker.close()


@pytest.fixture
def statements(sqlite_tracker: Any) -> list[str]:
    """Every SQL statement the sqlite tracker's connection runs, values included."""
    seen: list[str] = []
    sqlite_tracker.db.set_trace_callback(seen.append)
    return seen


def test_sqlite_writes_a_batch_in_one_transaction(sqlite_tracker: Any, statements: list[str]) -> None:
    sqlite_tracker.record_events([_event("x", f"e{i}", i) for i in range(100)])
    sqlite_tracker.record_deliveries([_delivery("x", f"e{i}", i + 0.5) for i in range(100)])
    begins = [s for s in statements if s.startswith("BEGIN")]
    commits = [s for s in statements if s == "COMMIT"]
    inserts = [s for s in statements if s.startswith("INSERT")]
    # one statement per batch: the rows as one VALUES list (one SQLite step, where a statement per row gives up the
    # interpreter's lock and takes it back around each)
    assert (len(begins), len(commits), len(inserts)) == (2, 2, 2), statements[:5]
    assert [insert.count("'e") for insert in inserts] == [100, 100]
    assert begins == ["BEGIN IMMEDIATE"] * 2
    statements.clear()
    sqlite_tracker.record_events([])
    sqlite_tracker.record_deliveries([])
    assert statements == [], "an empty batch touches nothing"
    history = sqlite_tracker.history("x")
    assert (len(history.events), len(history.deliveries)) == (100, 100)


def test_sqlite_a_failed_batch_stores_nothing_and_the_next_one_works(sqlite_tracker: Any) -> None:
    broken = DeliveryRecord("x", "e9", None, "reader", 1, "succeeded", 9.0)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        sqlite_tracker.record_deliveries([_delivery("x", f"e{i}", i) for i in range(5)] + [broken])
    assert sqlite_tracker.history("x").deliveries == [], "the batch is one transaction: all or nothing"
    assert not sqlite_tracker.db.in_transaction
    sqlite_tracker.record_deliveries([_delivery("x", "e1", 1.0)])
    sqlite_tracker.record_events([_event("x", "e1", 1.0)])
    history = sqlite_tracker.history("x")
    assert (len(history.events), len(history.deliveries)) == (1, 1)


def _plans(db: sqlite3.Connection, queries: list[str]) -> list[str]:
    return ["\n".join(str(row[-1]) for row in db.execute("EXPLAIN QUERY PLAN " + query)) for query in queries]


def test_sqlite_looks_up_successes_in_the_index(sqlite_tracker: Any, statements: list[str]) -> None:
    """Neither ``has_succeeded`` nor ``succeeded_among`` reads an execution's history: one index search per key,
    and one query per batch of keys (``KEYS_PER_QUERY``)."""
    from xflow.trackers.sqlite import KEYS_PER_QUERY

    count = 1000
    sqlite_tracker.record_deliveries([_delivery("x", f"e{i}", i, "succeeded" if i % 3 else "retrying")
                                      for i in range(count)])
    statements.clear()
    assert sqlite_tracker.has_succeeded("x", "e1", "reader")
    assert not sqlite_tracker.has_succeeded("x", "e3", "reader")
    keys = [("x", f"e{i}", "reader") for i in range(count)]
    assert sqlite_tracker.succeeded_among(keys) == {k for i, k in enumerate(keys) if i % 3}
    selects = [s for s in statements if "FROM deliveries" in s or "JOIN deliveries" in s]
    assert len(selects) == 2 + math.ceil(count / KEYS_PER_QUERY)
    for plan in _plans(sqlite_tracker.db, selects):
        assert "USING INDEX deliveries_by_event" in plan, plan
        assert not re.search(r"SCAN (d|deliveries)\b", plan), plan


def test_sqlite_successes_are_per_execution_and_keys_come_back_as_given(sqlite_tracker: Any) -> None:
    odd = "e-\ud800-lone surrogate"  # stored as an escape: the answer must still be the key as asked
    sqlite_tracker.record_deliveries([_delivery("x", odd, 1.0), _delivery("y", "shared", 2.0)])
    assert sqlite_tracker.has_succeeded("x", odd, "reader")
    assert sqlite_tracker.has_succeeded("y", "shared", "reader")
    assert not sqlite_tracker.has_succeeded("x", "shared", "reader"), "another execution's success is not this one's"
    keys = [("x", odd, "reader"), ("x", "shared", "reader"), ("y", "shared", "reader"), ("y", "shared", "other")]
    assert sqlite_tracker.succeeded_among(keys) == {("x", odd, "reader"), ("y", "shared", "reader")}


# -- postgres (the plugin in plugins/xflow-tracker-postgres) ------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    pytest.importorskip("xflow_tracker_postgres")
    given = os.environ.get("XFLOW_TEST_POSTGRES_DSN")
    if given:
        yield given
        return
    try:
        from plugin_servers import running_postgres
    except ImportError:  # tests/ imported as a package
        from tests.plugin_servers import running_postgres
    with running_postgres() as dsn:
        yield dsn


class _Counting:
    """A psycopg connection that notes each statement it is asked to run (one ``execute`` is one round trip)."""

    def __init__(self, connection: Any, seen: list[tuple[str, Any]]) -> None:
        self._connection, self._seen = connection, seen

    def execute(self, query: str, params: Any = None) -> Any:
        self._seen.append((query, params))
        return self._connection.execute(query, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


@pytest.fixture
def postgres_tracker(postgres_dsn: str, tmp_path: Path) -> Iterator[Any]:
    """The postgres tracker in a schema of its own (tests here drop its index), set up, removed at the end."""
    import psycopg
    from xflow_tracker_postgres.tracker import PostgresTrackerStore

    schema = f"batches_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    workflow = kit_workflow(new_workflow_id("pg"), tmp_path)
    tracker = PostgresTrackerStore(PluginContext(workflow.id, {"dsn": postgres_dsn, "schema": schema}, tmp_path))
    apply_steps(tracker.plan_setup(workflow), tracker)
    tracker.kit_workflow = workflow
    yield tracker
    tracker.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def postgres_statements(postgres_tracker: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []
    connect = postgres_tracker._connect
    monkeypatch.setattr(postgres_tracker, "_connect", lambda: _Counting(connect(), seen))
    return seen


def test_postgres_writes_a_batch_in_one_statement(postgres_tracker: Any,
                                                  postgres_statements: list[tuple[str, Any]]) -> None:
    events = [_event("x", f"e{i}", i) for i in range(100)] + [_event("x", "e0", 500.0)]
    deliveries = [DeliveryRecord("x", f"e{i}", "Uploaded", "reader", 1, "failed", i + 0.5, 0.1, "Boom\x00!",
                                 ("line\x00 one", "ünïcode", "")) for i in range(100)]
    postgres_tracker.record_events(events)
    postgres_tracker.record_deliveries(deliveries)
    assert len(postgres_statements) == 2, [q for q, _ in postgres_statements]
    postgres_statements.clear()
    postgres_tracker.record_events([])
    postgres_tracker.record_deliveries([])
    assert postgres_statements == []
    history = postgres_tracker.history("x")
    assert len(history.events) == 100 and history.events[0].published_at == 0.0
    assert len(history.deliveries) == 100
    assert history.deliveries[0].error == "Boom\\0!" and history.deliveries[0].logs == ("line\\0 one", "ünïcode", "")


def _postgres_plans(tracker: Any, queries: list[tuple[str, Any]]) -> list[str]:
    conn = tracker._connection
    conn.execute("SET enable_seqscan = off")  # a tiny table is read whole otherwise: ask whether the index serves
    try:
        return ["\n".join(row[0] for row in conn.execute("EXPLAIN " + query, params)) for query, params in queries]
    finally:
        conn.execute("RESET enable_seqscan")


def test_postgres_looks_up_successes_in_the_partial_index(postgres_tracker: Any,
                                                          postgres_statements: list[tuple[str, Any]]) -> None:
    postgres_tracker.record_deliveries([_delivery("x", f"e{i}", i, "succeeded" if i % 3 else "retrying")
                                        for i in range(300)] + [_delivery("y", "e1", 1.0, "succeeded", "other")])
    postgres_statements.clear()
    assert postgres_tracker.has_succeeded("x", "e1", "reader")
    assert not postgres_tracker.has_succeeded("x", "e3", "reader")
    keys = [("x", f"e{i}", "reader") for i in range(300)] + [("y", "e1", "other"), ("y", "e1", "reader")]
    assert postgres_tracker.succeeded_among(keys) == {k for k in keys[:300] if int(k[1][1:]) % 3} | {
        ("y", "e1", "other")}
    assert len(postgres_statements) == 3, "one query per has_succeeded, one for the whole batch"
    for plan in _postgres_plans(postgres_tracker, postgres_statements):
        # probed by event id (a hash join would instead read every success of the workflow)
        assert re.search(r"Index (Only )?Scan using xflow_deliveries_succeeded .*\n.*Index Cond: .*event_id = ", plan), plan


def test_postgres_setup_adds_the_index_to_an_older_database(postgres_tracker: Any) -> None:
    workflow = postgres_tracker.kit_workflow
    postgres_tracker._connect().execute(f"DROP INDEX {postgres_tracker.schema}.xflow_deliveries_succeeded")
    postgres_tracker.record_deliveries([_delivery("x", "e1", 1.0)])
    assert postgres_tracker.has_succeeded("x", "e1", "reader"), "a database without the index keeps working"
    assert postgres_tracker.succeeded_among([("x", "e1", "reader"), ("x", "e2", "reader")]) == {("x", "e1", "reader")}
    plan = postgres_tracker.plan_setup(workflow)
    assert [s.resource for s in plan] == [f"tables:{postgres_tracker.schema}.xflow_*"]
    assert "xflow_deliveries_succeeded" in plan[0].detail
    apply_steps(plan, postgres_tracker)
    assert postgres_tracker.plan_setup(workflow) == []


# -- cloudwatch (on a moto server) --------------------------------------------------------------------------------


def test_cloudwatch_splits_a_batch_only_at_the_put_limits() -> None:
    from xflow.trackers.cloudwatch import PUT_EVENT_OVERHEAD, PUT_MAX_BYTES, PUT_MAX_EVENTS, put_ranges

    assert put_ranges([]) == []
    assert put_ranges(["x"] * 10) == [(0, 10)]
    assert put_ranges(["x"] * (PUT_MAX_EVENTS + 1)) == [(0, PUT_MAX_EVENTS), (PUT_MAX_EVENTS, PUT_MAX_EVENTS + 1)]
    line = "é" * 100_000  # 200,000 bytes in UTF-8: five fit in 1 MB with their overhead, six do not
    ranges = put_ranges([line] * 11)
    assert ranges == [(0, 5), (5, 10), (10, 11)]
    for start, end in ranges:
        assert sum(len(line.encode()) + PUT_EVENT_OVERHEAD for _ in range(start, end)) <= PUT_MAX_BYTES
    assert put_ranges(["x" * (PUT_MAX_BYTES + 1), "y"]) == [(0, 1), (1, 2)], "an oversize line goes alone"


try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401


@pytest.fixture
def cloudwatch(aws_endpoint: str, tmp_path: Path) -> Iterator[Callable[[], Any]]:  # noqa: F811
    """Instances of the cloudwatch tracker of one fresh workflow (each stands for a process), set up."""
    from xflow.trackers.cloudwatch import CloudWatchTracker

    workflow = kit_workflow(new_workflow_id("cw"), tmp_path)
    made: list[Any] = []

    def make() -> Any:
        tracker = CloudWatchTracker(PluginContext(workflow.id, {}, tmp_path))
        made.append(tracker)
        return tracker

    apply_steps(make().plan_setup(workflow), made[0])
    yield make
    apply_steps(made[0].plan_teardown(workflow), made[0])


def _calls(tracker: Any) -> list[tuple[str, dict[str, Any]]]:
    """The CloudWatch Logs calls the tracker's worker client makes from here on: (operation, parameters)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    tracker.writer.meta.events.register("provide-client-params.cloudwatch-logs",
                                        lambda params, model, **_: seen.append((model.name, dict(params))))
    return seen


@pytest.mark.aws
def test_cloudwatch_writes_one_call_per_execution(cloudwatch: Callable[[], Any]) -> None:
    tracker = cloudwatch()
    calls = _calls(tracker)
    tracker.record_deliveries([_delivery(f"x{i % 3}", f"e{i}", i) for i in range(300)])
    puts = [params for name, params in calls if name == "PutLogEvents"]
    assert sorted(p["logStreamName"] for p in puts) == ["x0", "x1", "x2"]
    assert all(len(p["logEvents"]) == 100 for p in puts)
    calls.clear()
    tracker.record_events([_event(f"x{i % 3}", f"e{i}", i) for i in range(300)] + [_event("x0", "e0", 0.0)])
    assert [name for name, _ in calls].count("PutLogEvents") == 3
    assert [name for name, _ in calls].count("GetLogEvents") == 3, "one look per stream before writing events"
    for name, params in calls:
        if name == "PutLogEvents":
            times = [e["timestamp"] for e in params["logEvents"]]
            assert times == sorted(times) and times[-1] - times[0] < 24 * 3600 * 1000
    calls.clear()
    tracker.record_events([_event("x1", "e1", 1.0), _event("x2", "e2", 2.0)])
    assert calls == [], "events known to be in their streams are neither looked up nor written"
    assert len(tracker.stored_events("x0")) == 100


@pytest.mark.aws
def test_cloudwatch_writes_a_batchs_events_and_attempts_in_one_call_per_execution(cloudwatch: Callable[[], Any]) -> None:
    tracker = cloudwatch()
    calls = _calls(tracker)
    events = [_event(f"x{i % 2}", f"p{i}", i) for i in range(10)]
    attempts = [_delivery(f"x{i % 2}", f"e{i}", i, "succeeded") for i in range(10)]
    tracker.record_batch(events, attempts)
    puts = [params for name, params in calls if name == "PutLogEvents"]
    assert sorted(p["logStreamName"] for p in puts) == ["x0", "x1"], "one call per execution for both kinds"
    for params in puts:  # the events an attempt published come before it in the stream
        kinds = [json.loads(e["message"])["xflow"] for e in params["logEvents"]]
        assert kinds == ["event"] * 5 + ["delivery"] * 5, kinds
    other = cloudwatch()
    assert {r.event_id for r in other.stored_events("x0")} == {f"p{i}" for i in range(0, 10, 2)}
    assert other.succeeded_among([("x1", "e1", "reader"), ("x1", "e2", "reader")]) == {("x1", "e1", "reader")}
    calls.clear()
    tracker.record_batch(events, [])
    assert calls == [], "events known to be in their streams are neither looked up nor written"


@pytest.mark.aws
def test_cloudwatch_splits_at_the_put_limits(cloudwatch: Callable[[], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from xflow.trackers.cloudwatch import lines as module

    monkeypatch.setattr(module, "PUT_MAX_EVENTS", 40)
    tracker = cloudwatch()
    calls = _calls(tracker)
    tracker.record_deliveries([_delivery("x", f"e{i}", i) for i in range(100)])
    assert [len(p["logEvents"]) for name, p in calls if name == "PutLogEvents"] == [40, 40, 20]
    assert len(tracker.history("x").deliveries) == 100


@pytest.mark.aws
def test_cloudwatch_answers_successes_without_reading_a_whole_history(cloudwatch: Callable[[], Any]) -> None:
    writer, other = cloudwatch(), cloudwatch()
    writer.record_deliveries([_delivery(f"x{i % 2}", f"e{i}", i, "succeeded" if i % 3 else "retrying")
                              for i in range(200)])
    keys = [(f"x{i % 2}", f"e{i}", "reader") for i in range(200)]
    expected = {k for i, k in enumerate(keys) if i % 3}
    calls = _calls(writer)
    assert writer.succeeded_among([k for k in keys if k in expected]) == expected
    assert writer.has_succeeded("x1", "e1", "reader")
    assert calls == [], "successes this process wrote are answered from memory"
    assert writer.succeeded_among(keys) == expected
    assert [name for name, _ in calls] == ["GetLogEvents"] * 2, "one look per execution for unknown keys"
    assert all(p.get("limit") for _, p in calls), "a bounded read"

    seen = _calls(other)  # another process: reads each stream once, then only what was added
    assert other.succeeded_among(keys) == expected
    first = len(seen)
    assert 2 <= first <= 4
    assert not other.has_succeeded("x0", "e0", "reader")
    assert len(seen) == first + 1 and "nextToken" in seen[-1][1], "a later look reads on from where the last stopped"
    writer.record_deliveries([_delivery("x0", "e0", 500.0)])
    assert other.has_succeeded("x0", "e0", "reader"), "what another process wrote since is found"


@pytest.mark.parametrize("count", [1, 2, 99, 100, 101, 499, 500, 501, 3001])
def test_insert_rows_stores_every_row_in_order_and_conflicts_as_row_by_row(tmp_path: Path, count: int) -> None:
    import sqlite3

    from xflow.core.sqlite_files import MAX_ROWS_PER_INSERT, insert_rows

    db = sqlite3.connect(tmp_path / "rows.db", isolation_level=None)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, k TEXT UNIQUE, v INTEGER)")
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    rows = [(f"k{i % (count // 2 + 1)}", i) for i in range(count)]  # keys repeat: the first of each wins
    insert_rows(db, "INSERT OR IGNORE INTO t(k, v) VALUES ", 2, rows)
    assert len(statements) == -(-count // MAX_ROWS_PER_INSERT)
    firsts: dict[str, int] = {}
    for key, value in rows:
        firsts.setdefault(key, value)
    assert db.execute("SELECT k, v FROM t ORDER BY id").fetchall() == list(firsts.items())
    db.close()
