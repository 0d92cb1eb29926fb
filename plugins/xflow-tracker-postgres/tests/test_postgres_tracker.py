"""The postgres tracker against a real PostgreSQL server: the conformance kit, then what only it does."""

from __future__ import annotations

import pytest

from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.interfaces import EventRecord, PluginContext
from xflow.testing import TrackerStoreContract, apply_steps, kit_workflow, new_workflow_id

# the suite skips, with the reason, where the plugin is not installed
PostgresTrackerStore = pytest.importorskip(
    "xflow_tracker_postgres.tracker",
    reason="xflow-tracker-postgres is not installed: pip install -e plugins/xflow-tracker-postgres").PostgresTrackerStore


class TestPostgresTracker(TrackerStoreContract):
    @pytest.fixture
    def tracker_factory(self, postgres_dsn, tmp_path):
        return lambda workflow_id: PostgresTrackerStore(PluginContext(workflow_id, {"dsn": postgres_dsn}, tmp_path))


@pytest.fixture
def tracker(postgres_dsn, tmp_path):
    workflow = kit_workflow(new_workflow_id("pg"), tmp_path)
    store = PostgresTrackerStore(PluginContext(workflow.id, {"dsn": postgres_dsn}, tmp_path))
    apply_steps(store.plan_setup(workflow), store)
    yield store
    apply_steps(store.plan_teardown(workflow), store)
    store.close()


def test_one_execution_is_read_through_the_indexes(tracker):
    tracker.record_event(EventRecord("ex1", "ev1", "Uploaded", 1.0))
    conn = tracker._connect()
    conn.execute("SET enable_seqscan = off")
    try:
        for table in ("xflow_events", "xflow_deliveries"):
            plan = "\n".join(row[0] for row in conn.execute(
                f"EXPLAIN SELECT * FROM {table} WHERE workflow_id = %s AND execution_id = %s "
                f"ORDER BY {'published_at, seq' if table == 'xflow_events' else 'started_at, id'}",
                (tracker.workflow_id, "ex1")))
            assert f"{table}_by_execution" in plan, plan
            assert "Sort" not in plan, plan
    finally:
        conn.execute("RESET enable_seqscan")


def test_executions_lists_the_most_recent_first(tracker):
    tracker.record_event(EventRecord("older", "e1", "Uploaded", 10.0))
    tracker.record_event(EventRecord("newer", "e2", "Uploaded", 20.0))
    assert tracker.executions() == ["newer", "older"]


def test_records_before_setup_ask_for_setup(postgres_dsn, tmp_path):
    store = PostgresTrackerStore(PluginContext("w", {"dsn": postgres_dsn, "schema": "nowhere"}, tmp_path))
    with pytest.raises(XflowError, match="run xflow setup first"):
        store.history("x")
    store.close()


def test_an_unreachable_server_is_one_clear_error(tmp_path):
    from plugin_servers import free_port

    dsn = f"postgresql://xflow:s3cret@127.0.0.1:{free_port()}/postgres"
    store = PostgresTrackerStore(PluginContext("w", {"dsn": dsn}, tmp_path))
    with pytest.raises(XflowError) as caught:
        store.history("x")
    message = str(caught.value)
    assert "cannot reach user=xflow dbname=postgres host=127.0.0.1" in message
    assert "s3cret" not in message
    # a server that is not there may come back: BackendUnavailable (exit 1, workers wait), not a mistake (exit 2)
    assert isinstance(caught.value, BackendUnavailable) and caught.value.exit_code == 1


@pytest.mark.parametrize(("change", "words"), [
    ({"sslmode": "bogus"}, "is not usable: invalid sslmode value"),
    ({"port": "x"}, "is not usable: invalid integer value"),
    ({"dbname": "no_such_db"}, "refused the connection"),
    ({"user": "no_such_role"}, "refused the connection"),
])
def test_a_dsn_the_server_or_libpq_refuses_is_a_mistake_not_an_outage(postgres_dsn, tmp_path, change, words):
    import psycopg

    params = {**psycopg.conninfo.conninfo_to_dict(postgres_dsn), "password": "s3cret-pw", **change}
    store = PostgresTrackerStore(PluginContext("w", {"dsn": psycopg.conninfo.make_conninfo(**params)}, tmp_path))
    with pytest.raises(XflowError) as caught:
        store.history("x")
    assert not isinstance(caught.value, BackendUnavailable) and caught.value.exit_code == 2
    assert words in str(caught.value) and "s3cret" not in str(caught.value), str(caught.value)


STEP = """
workflow_id: {wid}
lambdas:
  - {{name: step, source: steps.py, handler: step}}
subscriptions:
  - {{name: Started, subscribers: [step]}}
"""


def test_a_worker_waits_out_a_database_that_refuses_connections_for_a_while(postgres_dsn, tmp_path):
    """Its connection terminated and new ones refused for a few seconds (as in a restart): the worker waits, goes on."""
    import json
    import os
    import subprocess
    import sys
    import time

    import psycopg

    database = new_workflow_id("pgo")
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    dsn = psycopg.conninfo.make_conninfo(postgres_dsn, dbname=database)
    project = tmp_path / "project"
    project.mkdir()
    (project / "steps.py").write_text("def step(event, ctx):\n    pass\n")
    (project / "flow.yaml").write_text(STEP.format(wid=database))
    env = {**os.environ, "XFLOW_POSTGRES_DSN": dsn}

    def xflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xflow.cli", "--state-dir", str(tmp_path / "state"), *args],
                              capture_output=True, text=True, cwd=project, timeout=120, env=env)

    def settled(execution: str, seconds: float) -> float:
        started = time.monotonic()
        while True:
            done = xflow("track", "flow.yaml", execution, "--output", "json")
            if done.returncode in (0, 1) and json.loads(done.stdout)["status"] == "succeeded":
                return time.monotonic() - started
            assert time.monotonic() - started < seconds, f"{execution} did not settle in {seconds} s: {done.stderr}"
            time.sleep(0.3)

    def refuse(admin: psycopg.Connection, refused: bool) -> None:
        admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS {'false' if refused else 'true'}")
        if refused:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))

    log = (tmp_path / "worker.log").open("w")
    worker = None
    try:
        assert xflow("setup", "flow.yaml", "--transport", "local", "--provider", "local", "--tracker",
                     "postgres").returncode == 0
        worker = subprocess.Popen([sys.executable, "-m", "xflow.cli", "--state-dir", str(tmp_path / "state"),
                                   "worker", "flow.yaml"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
        assert xflow("publish", "flow.yaml", "Started", "{}", "--execution-id", "before").returncode == 0
        settled("before", 60)
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            refuse(admin, True)
            try:
                down = xflow("publish", "flow.yaml", "Started", "{}", "--execution-id", "during")
                assert down.returncode == 1 and "cannot reach" in down.stderr, down.stderr
                assert "published all the same" in down.stderr  # the event log took it: only tracking waits
                time.sleep(3)
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            finally:
                refuse(admin, False)
        recovered = settled("during", 60)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            worker.wait(30)
        log.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    text = (tmp_path / "worker.log").read_text()
    print(f"postgres refusing connections: the execution published meanwhile settled {recovered:.1f} s after")
    assert worker.returncode == 0 and "Traceback" not in text, text
    assert text.count("waiting for the tracker") == 1 and "is back after" in text, text


def test_a_dropped_connection_is_reopened(tracker, postgres_dsn):
    tracker.record_event(EventRecord("ex2", "ev1", "Uploaded", 1.0))
    pid = tracker._connect().info.backend_pid
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert [e.event_id for e in tracker.history("ex2").events] == ["ev1"]


def test_bad_schema_option(tmp_path):
    with pytest.raises(XflowError, match="not a plain SQL name"):
        PostgresTrackerStore(PluginContext("w", {"schema": "x; drop table y"}, tmp_path))


def test_installed_plugin_is_found_by_name(monkeypatch, tmp_path):
    from xflow.core.plugins import PluginRegistry, check_options

    info = PluginRegistry().get("tracker", "postgres")
    assert info.cls is PostgresTrackerStore
    assert info.distribution == "xflow-tracker-postgres"
    with pytest.raises(XflowError, match="it accepts: dsn, schema"):
        check_options(info, {"url": "x"}, "--option")
    monkeypatch.setenv("XFLOW_POSTGRES_DSN", "postgresql://u@db.example:5433/x")
    assert PostgresTrackerStore(PluginContext("w", {}, tmp_path)).dsn == "postgresql://u@db.example:5433/x"


def test_record_batch_is_one_statement_and_all_or_nothing(tracker, monkeypatch):
    from xflow.core.interfaces import DeliveryRecord

    seen = []
    connect = tracker._connect

    class Counting:
        def __init__(self, connection):
            self.connection = connection

        def execute(self, query, params=None):
            seen.append(query)
            return self.connection.execute(query, params)

    monkeypatch.setattr(tracker, "_connect", lambda: Counting(connect()))
    events = [EventRecord("x", f"e{i}", "Uploaded", float(i), "kit", {"i": i}) for i in range(50)]
    deliveries = [DeliveryRecord("x", f"e{i}", "Uploaded", "reader", 1, "succeeded", i + 0.5, 0.1) for i in range(50)]
    tracker.record_batch(events, deliveries)
    assert len(seen) == 1, "one round trip for the events and the deliveries"
    history = tracker.history("x")
    assert (len(history.events), len(history.deliveries)) == (50, 50)
    assert tracker.has_succeeded("x", "e7", "reader")
    seen.clear()
    refused = DeliveryRecord("y", "y1", None, "reader", 1, "succeeded", 1.5, 0.1)  # no event: NOT NULL
    with pytest.raises(Exception, match="null"):
        tracker.record_batch([EventRecord("y", "y1", "Uploaded", 1.0, "kit", {"n": 1})], [refused])
    assert tracker.history("y").events == [], "the events and the deliveries are one statement: all or nothing"
