"""The ``postgres`` tracker store: one execution history shared by workers on many machines.

Connection: option ``dsn`` (``postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE`` or a libpq
``key=value`` string), also read from ``XFLOW_POSTGRES_DSN``; option ``schema`` (default
``public``) holds the tables. Uses psycopg 3.

Tables, shared by every workflow and keyed by ``workflow_id``:

- ``xflow_workflows`` — the workflows set up in this database;
- ``xflow_events`` — one row per event id (recording it again is a no-op), indexed by
  ``(workflow_id, execution_id, published_at)``;
- ``xflow_deliveries`` — one row per delivery attempt, indexed by
  ``(workflow_id, execution_id, started_at)``.

Reading one execution's history is two index range scans, so its cost does not grow with the
number of executions stored. Teardown deletes the workflow's rows; the tables stay for others.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from xflow.core.errors import XflowError
from xflow.core.interfaces import DeliveryRecord, EventRecord, ExecutionHistory, PluginContext, Step, TrackerStore
from xflow.core.redact import redact, remember, remember_in_text, userinfo_is_ambiguous

if TYPE_CHECKING:
    from xflow.core.model import Workflow

DEFAULT_DSN = "postgresql://localhost/postgres"
T = TypeVar("T")

_TABLES = """
CREATE TABLE IF NOT EXISTS {s}.xflow_workflows (
    workflow_id text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.xflow_events (
    workflow_id text NOT NULL,
    event_id text NOT NULL,
    execution_id text NOT NULL,
    event text NOT NULL,
    published_at double precision NOT NULL,
    producer text NOT NULL DEFAULT '',
    data json,
    seq bigserial,
    PRIMARY KEY (workflow_id, event_id)
);
CREATE INDEX IF NOT EXISTS xflow_events_by_execution
    ON {s}.xflow_events (workflow_id, execution_id, published_at, seq);
CREATE TABLE IF NOT EXISTS {s}.xflow_deliveries (
    id bigserial PRIMARY KEY,
    workflow_id text NOT NULL,
    execution_id text NOT NULL,
    event_id text NOT NULL,
    event text NOT NULL,
    function text NOT NULL,
    attempt integer NOT NULL,
    status text NOT NULL CHECK (status IN ('succeeded', 'retrying', 'failed')),
    started_at double precision NOT NULL,
    duration double precision NOT NULL DEFAULT 0,
    error text,
    logs text[] NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS xflow_deliveries_by_execution
    ON {s}.xflow_deliveries (workflow_id, execution_id, started_at, id);
"""
_RELATIONS = ("xflow_workflows", "xflow_events", "xflow_events_by_execution", "xflow_deliveries",
              "xflow_deliveries_by_execution")


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the environment
        raise XflowError("the postgres tracker needs psycopg 3",
                         "pip install xflow-tracker-postgres (or: pip install 'psycopg[binary]')") from None
    return psycopg


def _safe_dsn(dsn: str) -> str:
    """The DSN as libpq reads it, without its password, for messages (nothing of it when libpq cannot read it)."""
    remember_in_text(dsn)
    try:
        params = _import_psycopg().conninfo.conninfo_to_dict(dsn)
    except Exception:  # unreadable: any piece of it might be the password
        return "(the dsn option, not shown)"
    if params.get("password"):
        remember(params["password"])
    shown = " ".join(f"{key}={value}" for key, value in params.items() if key not in ("password", "passfile"))
    return redact(shown) or "(default connection)"


class PostgresTrackerStore(TrackerStore):
    """Events and delivery outcomes in PostgreSQL, for workers on many machines."""

    name = "postgres"
    description = "Execution history in PostgreSQL, shared by workers on many machines (dsn=postgresql://...)"
    options: ClassVar[dict[str, str]] = {
        "dsn": f"postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE to connect to (default {DEFAULT_DSN})",
        "schema": "schema that holds the xflow_* tables; must exist (default public)",
    }

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.dsn = str(context.option("dsn") or os.environ.get("XFLOW_POSTGRES_DSN") or DEFAULT_DSN)
        self.schema = str(context.option("schema", "public"))
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", self.schema):
            raise XflowError(f"postgres tracker: option schema={self.schema!r} is not a plain SQL name",
                             "use letters, digits and underscores")
        if userinfo_is_ambiguous(self.dsn):
            raise XflowError("postgres tracker: the password in option dsn holds characters that end the password "
                             "early ('@', '#', '/' or '?'), so part of it would be read as the host",
                             "percent-encode them: '@' as %40, '#' as %23, '/' as %2F, '?' as %3F")
        self._connection: Any = None
        self._lock = threading.Lock()

    # -- connection ----------------------------------------------------------------------------

    def _connect(self) -> Any:
        psycopg = _import_psycopg()
        if self._connection is None or self._connection.closed:
            try:
                self._connection = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                                                   application_name=f"xflow {self.workflow_id}")
            except psycopg.ProgrammingError:
                # libpq's parse errors quote pieces of the DSN, password included: say only that it is malformed
                raise XflowError("postgres tracker: option dsn is not a valid connection string (the parser's "
                                 "message is not shown: it may quote the password)",
                                 "use postgresql://USER:PASSWORD@HOST:PORT/DATABASE with special characters "
                                 "percent-encoded, or a libpq 'host=... dbname=...' string") from None
        return self._connection

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        psycopg = _import_psycopg()
        try:
            yield
        except psycopg.errors.UndefinedTable:
            raise XflowError(f"postgres tracker: the xflow tables do not exist in schema {self.schema} of "
                             f"{_safe_dsn(self.dsn)}", "run xflow setup first") from None
        except psycopg.OperationalError as exc:
            self._drop_connection()
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise XflowError(f"postgres tracker: cannot reach {_safe_dsn(self.dsn)} while {doing}: {first_line}",
                             "start PostgreSQL, or pass --option dsn=postgresql://USER@HOST:PORT/DB "
                             "(or set XFLOW_POSTGRES_DSN)") from None

    def _drop_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

    def _run(self, doing: str, work: Callable[[Any], T]) -> T:
        """Run ``work(connection)``; a dropped connection is reopened once before giving up."""
        psycopg = _import_psycopg()
        with self._lock, self._errors(doing):
            try:
                return work(self._connect())
            except psycopg.OperationalError:
                if self._connection is None or not self._connection.closed:
                    raise
                self._drop_connection()
                return work(self._connect())

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def _table(self, name: str) -> str:
        return f"{self.schema}.{name}"

    # -- setup / teardown ----------------------------------------------------------------------

    def _missing_relations(self, conn: Any) -> list[str]:
        missing = []
        for relation in _RELATIONS:
            row = conn.execute("SELECT to_regclass(%s)", (self._table(relation),)).fetchone()
            if row[0] is None:
                missing.append(relation)
        return missing

    def _workflow_known(self, conn: Any, workflow_id: str) -> bool:
        row = conn.execute(f"SELECT 1 FROM {self._table('xflow_workflows')} WHERE workflow_id = %s",
                           (workflow_id,)).fetchone()
        return row is not None

    def plan_setup(self, workflow: Workflow) -> list[Step]:
        def plan(conn: Any) -> list[Step]:
            steps = []
            missing = self._missing_relations(conn)
            if missing:
                steps.append(Step("create", f"tables:{self.schema}.xflow_*", self._create_tables,
                                  "missing: " + ", ".join(missing)))
            if missing or not self._workflow_known(conn, workflow.id):
                steps.append(Step("create", f"tracker:{workflow.id}", partial(self._add_workflow, workflow.id),
                                  f"postgres {_safe_dsn(self.dsn)}"))
            return steps

        return self._run("planning setup", plan)

    def _create_tables(self) -> None:
        def create(conn: Any) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('xflow tracker tables'))")
                for statement in _TABLES.format(s=self.schema).split(";"):
                    if statement.strip():
                        conn.execute(statement)

        self._run("creating the tables", create)

    def _add_workflow(self, workflow_id: str) -> None:
        self._run("registering the workflow", lambda conn: conn.execute(
            f"INSERT INTO {self._table('xflow_workflows')} (workflow_id) VALUES (%s) ON CONFLICT DO NOTHING",
            (workflow_id,)))

    def plan_teardown(self, workflow: Workflow) -> list[Step]:
        def plan(conn: Any) -> list[Step]:
            if self._missing_relations(conn):
                return []
            row = conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM {self._table('xflow_workflows')} WHERE workflow_id = %(w)s) "
                f"OR EXISTS (SELECT 1 FROM {self._table('xflow_events')} WHERE workflow_id = %(w)s) "
                f"OR EXISTS (SELECT 1 FROM {self._table('xflow_deliveries')} WHERE workflow_id = %(w)s)",
                {"w": workflow.id}).fetchone()
            if not row[0]:
                return []
            return [Step("delete", f"tracker:{workflow.id}", partial(self._delete_workflow, workflow.id),
                         "the workflow's events and deliveries")]

        return self._run("planning teardown", plan)

    def _delete_workflow(self, workflow_id: str) -> None:
        def delete(conn: Any) -> None:
            with conn.transaction():
                for table in ("xflow_deliveries", "xflow_events", "xflow_workflows"):
                    conn.execute(f"DELETE FROM {self._table(table)} WHERE workflow_id = %s", (workflow_id,))

        self._run("removing the workflow's records", delete)

    # -- records -------------------------------------------------------------------------------

    def record_event(self, record: EventRecord) -> None:
        data = None if record.data is None else json.dumps(dict(record.data), ensure_ascii=False)
        self._run("recording an event", lambda conn: conn.execute(
            f"INSERT INTO {self._table('xflow_events')} "
            "(workflow_id, event_id, execution_id, event, published_at, producer, data) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (workflow_id, event_id) DO NOTHING",
            (self.workflow_id, record.event_id, record.execution_id, record.event, record.published_at,
             record.producer or "", data)))

    def record_delivery(self, record: DeliveryRecord) -> None:
        self._run("recording a delivery", lambda conn: conn.execute(
            f"INSERT INTO {self._table('xflow_deliveries')} (workflow_id, execution_id, event_id, event, function, "
            "attempt, status, started_at, duration, error, logs) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (self.workflow_id, record.execution_id, record.event_id, record.event, record.function, record.attempt,
             record.status, record.started_at, record.duration, _text(record.error),
             [_text(line) for line in record.logs])))

    def history(self, execution_id: str) -> ExecutionHistory:
        def read(conn: Any) -> ExecutionHistory:
            events = [
                EventRecord(execution_id, event_id, event, published_at, producer,
                            json.loads(data) if isinstance(data, str) else data)
                for event_id, event, published_at, producer, data in conn.execute(
                    f"SELECT event_id, event, published_at, producer, data FROM {self._table('xflow_events')} "
                    "WHERE workflow_id = %s AND execution_id = %s ORDER BY published_at, seq",
                    (self.workflow_id, execution_id))
            ]
            deliveries = [
                DeliveryRecord(execution_id, event_id, event, function, attempt, status, started_at, duration,
                               error, tuple(logs or ()))
                for event_id, event, function, attempt, status, started_at, duration, error, logs in conn.execute(
                    "SELECT event_id, event, function, attempt, status, started_at, duration, error, logs "
                    f"FROM {self._table('xflow_deliveries')} "
                    "WHERE workflow_id = %s AND execution_id = %s ORDER BY started_at, id",
                    (self.workflow_id, execution_id))
            ]
            return ExecutionHistory(events, deliveries)

        return self._run("reading an execution's history", read)

    def has_succeeded(self, execution_id: str, event_id: str, function: str) -> bool:
        return self._run("checking a delivery", lambda conn: conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM {self._table('xflow_deliveries')} WHERE workflow_id = %s "
            "AND execution_id = %s AND event_id = %s AND function = %s AND status = 'succeeded')",
            (self.workflow_id, execution_id, event_id, function)).fetchone()[0])

    def executions(self) -> list[str]:
        """Execution ids of this workflow, most recent first."""
        return self._run("listing executions", lambda conn: [row[0] for row in conn.execute(
            f"SELECT execution_id FROM {self._table('xflow_events')} WHERE workflow_id = %s "
            "GROUP BY execution_id ORDER BY max(published_at) DESC", (self.workflow_id,))])


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL characters; handlers' logs and errors may."""
    return value.replace("\x00", "\\0") if value else value
