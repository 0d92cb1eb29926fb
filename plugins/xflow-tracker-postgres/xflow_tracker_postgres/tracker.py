"""The ``postgres`` tracker store: one execution history shared by workers on many machines.

Connection: option ``dsn`` (``postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE`` or a libpq
``key=value`` string), also read from ``XFLOW_POSTGRES_DSN``; option ``schema`` (default
``public``) holds the tables. Uses psycopg 3.

Tables, shared by every workflow and keyed by ``workflow_id``:

- ``xflow_workflows`` — the workflows set up in this database;
- ``xflow_events`` — one row per event id (recording it again is a no-op), indexed by
  ``(workflow_id, execution_id, published_at)``;
- ``xflow_deliveries`` — one row per delivery attempt, indexed by
  ``(workflow_id, execution_id, started_at)``, and its succeeded rows by
  ``(workflow_id, event_id, function, execution_id)`` (``xflow_deliveries_succeeded``).

Reading one execution's history is two index range scans, so its cost does not grow with the
number of executions stored. ``has_succeeded`` is one look-up in the partial index of succeeded
deliveries; ``succeeded_among`` answers for a whole batch of keys in one query (the keys passed as
arrays, ``unnest``-ed and joined with that index). ``record_events`` / ``record_deliveries`` write a
batch in one statement (one round trip, atomic), the records passed as arrays the same way;
``record_batch`` writes a batch's events and deliveries in one statement too. A database set up before
that index existed keeps working, more slowly; ``xflow setup`` adds it.
Teardown deletes the workflow's rows; the tables stay for others.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from xflow.core.deploy import dispatch
from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.interfaces import DeliveryRecord, EventRecord, ExecutionHistory, PluginContext, Step, TrackerStore
from xflow.core.options import Option
from xflow.core.redact import redact, remember, remember_in_text, userinfo_is_ambiguous

if TYPE_CHECKING:
    from xflow.core.interfaces import ExecutionPage
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
CREATE INDEX IF NOT EXISTS xflow_events_by_time
    ON {s}.xflow_events (workflow_id, published_at, execution_id);
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
CREATE INDEX IF NOT EXISTS xflow_deliveries_succeeded
    ON {s}.xflow_deliveries (workflow_id, event_id, function, execution_id) WHERE status = 'succeeded';
"""
_RELATIONS = ("xflow_workflows", "xflow_events", "xflow_events_by_execution", "xflow_deliveries",
              "xflow_deliveries_by_execution", "xflow_deliveries_succeeded", "xflow_events_by_time")


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the environment
        raise XflowError("the postgres tracker needs psycopg 3",
                         "pip install xflow-tracker-postgres (or: pip install 'psycopg[binary]')") from None
    return psycopg


#: what the server says when it answers but refuses the user, the password or the database: the user's to fix
_REFUSED = ("password authentication failed", "does not exist", "no pg_hba.conf entry", "authentication failed",
            "permission denied")


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
    options: ClassVar[tuple[Option, ...]] = (
        Option("dsn", str, DEFAULT_DSN, "postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE (or a libpq key=value "
               "string) to connect to; its password is masked"),
        Option("schema", str, "public", "schema that holds the xflow_* tables; must exist"),
    )

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.dsn = self.context.option("dsn")  # also XFLOW_POSTGRES_DSN, as every option has its variable
        self.schema = self.context.option("schema")
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
            if first_line.startswith("connection is bad:"):  # libpq refused an option before connecting
                raise XflowError(f"postgres tracker: option dsn ({_safe_dsn(self.dsn)}) is not usable: "
                                 f"{first_line.removeprefix('connection is bad:').strip()}",
                                 "correct the option dsn (or XFLOW_POSTGRES_DSN)") from None
            if any(words in first_line for words in _REFUSED):  # the server answered: no such role or database
                raise XflowError(f"postgres tracker: {_safe_dsn(self.dsn)} refused the connection while {doing}: "
                                 f"{first_line}", "check the user, password and database in option dsn "
                                 "(or XFLOW_POSTGRES_DSN)") from None
            # not there, restarting, or a connection lost: may pass (exit 1; a worker waits and goes on)
            raise BackendUnavailable(f"postgres tracker: cannot reach {_safe_dsn(self.dsn)} while {doing}: "
                                     f"{first_line}", "start PostgreSQL, or pass --option "
                                     "dsn=postgresql://USER@HOST:PORT/DB (or set XFLOW_POSTGRES_DSN)") from None

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
                steps.append(Step("create", f"tables:{self.schema}.xflow_*", detail="missing: " + ", ".join(missing),
                                  call="postgres:CreateTables", params={"schema": self.schema}))
            if "xflow_workflows" in missing or not self._workflow_known(conn, workflow.id):
                steps.append(Step("create", f"tracker:{workflow.id}", detail=f"postgres {_safe_dsn(self.dsn)}",
                                  call="postgres:AddWorkflow", params={"workflow_id": workflow.id},
                                  depends_on=(f"tables:{self.schema}.xflow_*",)))
            return steps

        return self._run("planning setup", plan)

    def execute(self, step: Step) -> None:
        dispatch(step, {"postgres:CreateTables": self._create_tables, "postgres:AddWorkflow": self._add_workflow,
                        "postgres:DeleteWorkflow": self._delete_workflow})

    def _create_tables(self, schema: str) -> None:
        def create(conn: Any) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('xflow tracker tables'))")
                for statement in _TABLES.format(s=schema).split(";"):
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
            return [Step("delete", f"tracker:{workflow.id}", detail="the workflow's events and deliveries",
                         call="postgres:DeleteWorkflow", params={"workflow_id": workflow.id})]

        return self._run("planning teardown", plan)

    def _delete_workflow(self, workflow_id: str) -> None:
        def delete(conn: Any) -> None:
            with conn.transaction():
                for table in ("xflow_deliveries", "xflow_events", "xflow_workflows"):
                    conn.execute(f"DELETE FROM {self._table(table)} WHERE workflow_id = %s", (workflow_id,))

        self._run("removing the workflow's records", delete)

    # -- records -------------------------------------------------------------------------------

    def _insert_event(self) -> str:
        return (f"INSERT INTO {self._table('xflow_events')} "
                "(workflow_id, event_id, execution_id, event, published_at, producer, data) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (workflow_id, event_id) DO NOTHING")

    def _insert_delivery(self) -> str:
        return (f"INSERT INTO {self._table('xflow_deliveries')} (workflow_id, execution_id, event_id, event, "
                "function, attempt, status, started_at, duration, error, logs) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")

    def _event_row(self, record: EventRecord) -> tuple[Any, ...]:
        data = None if record.data is None else json.dumps(dict(record.data), ensure_ascii=False)
        return (self.workflow_id, record.event_id, record.execution_id, record.event, record.published_at,
                record.producer or "", data)

    def _delivery_row(self, record: DeliveryRecord) -> tuple[Any, ...]:
        return (self.workflow_id, record.execution_id, record.event_id, record.event, record.function, record.attempt,
                record.status, record.started_at, record.duration, _text(record.error),
                [_text(line) for line in record.logs])

    def record_event(self, record: EventRecord) -> None:
        row = self._event_row(record)
        self._run("recording an event", lambda conn: conn.execute(self._insert_event(), row))

    def record_delivery(self, record: DeliveryRecord) -> None:
        row = self._delivery_row(record)
        self._run("recording a delivery", lambda conn: conn.execute(self._insert_delivery(), row))

    def record_events(self, records: Sequence[EventRecord]) -> None:
        """One statement (one round trip, atomic): the batch as arrays, ``unnest``-ed in order, so the first record
        of an ``event_id`` (stored before, or earlier in the batch) wins, as with ``record_event``."""
        if records:
            query, params = self._insert_events(records)
            self._run("recording events", lambda conn: conn.execute(query, params))

    def record_deliveries(self, records: Sequence[DeliveryRecord]) -> None:
        """One statement (one round trip, atomic): the batch as arrays, ``unnest``-ed in order; each record's log
        lines travel as one JSON array (PostgreSQL arrays cannot be ragged)."""
        if records:
            query, params = self._insert_deliveries(records)
            self._run("recording deliveries", lambda conn: conn.execute(query, params))

    def record_batch(self, events: Sequence[EventRecord], deliveries: Sequence[DeliveryRecord]) -> None:
        """Both inserts as one statement (one round trip, atomic): the events' insert in a ``WITH`` clause (a
        data-modifying one, run once whether or not it is read), the deliveries' as the statement itself."""
        if not events or not deliveries:
            self.record_events(events)
            self.record_deliveries(deliveries)
            return
        (event_query, event_params), (delivery_query, delivery_params) = (self._insert_events(events),
                                                                          self._insert_deliveries(deliveries))
        query = f"WITH recorded_events AS ({event_query}) {delivery_query}"
        self._run("recording events and deliveries", lambda conn: conn.execute(query, (*event_params, *delivery_params)))

    def _insert_events(self, records: Sequence[EventRecord]) -> tuple[str, tuple[Any, ...]]:
        rows = [self._event_row(record) for record in records]
        _, event_ids, execution_ids, events, published, producers, data = (list(c) for c in zip(*rows, strict=True))
        return (
            f"INSERT INTO {self._table('xflow_events')} "
            "(workflow_id, event_id, execution_id, event, published_at, producer, data) "
            "SELECT %s, k.event_id, k.execution_id, k.event, k.published_at, k.producer, k.data::json "
            "FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::text[]) WITH ORDINALITY "
            "AS k(event_id, execution_id, event, published_at, producer, data, n) ORDER BY k.n "
            "ON CONFLICT (workflow_id, event_id) DO NOTHING",
            (self.workflow_id, event_ids, execution_ids, events, [float(t) for t in published], producers, data))

    def _insert_deliveries(self, records: Sequence[DeliveryRecord]) -> tuple[str, tuple[Any, ...]]:
        columns = (
            [r.execution_id for r in records], [r.event_id for r in records], [r.event for r in records],
            [r.function for r in records], [int(r.attempt) for r in records], [r.status for r in records],
            [float(r.started_at) for r in records], [float(r.duration) for r in records],
            [_text(r.error) for r in records],
            [json.dumps([_text(line) for line in r.logs], ensure_ascii=False) for r in records],
        )
        return (
            f"INSERT INTO {self._table('xflow_deliveries')} (workflow_id, execution_id, event_id, event, function, "
            "attempt, status, started_at, duration, error, logs) "
            "SELECT %s, k.execution_id, k.event_id, k.event, k.function, k.attempt, k.status, k.started_at, "
            "k.duration, k.error, ARRAY(SELECT json_array_elements_text(k.logs::json)) "
            "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[], %s::float8[], "
            "%s::float8[], %s::text[], %s::text[]) WITH ORDINALITY "
            "AS k(execution_id, event_id, event, function, attempt, status, started_at, duration, error, logs, n) "
            "ORDER BY k.n",
            (self.workflow_id, *columns))

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
        """One look-up in the partial index ``xflow_deliveries_succeeded``."""
        return self._run("checking a delivery", lambda conn: conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM {self._table('xflow_deliveries')} WHERE workflow_id = %s "
            "AND event_id = %s AND function = %s AND execution_id = %s AND status = 'succeeded')",
            (self.workflow_id, event_id, function, execution_id)).fetchone()[0])

    def succeeded_among(self, keys: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        """One query for the whole batch: the keys as three arrays, ``unnest``-ed and joined with the index."""
        unique = list(dict.fromkeys((str(x), str(e), str(f)) for x, e, f in keys))
        if not unique:
            return set()
        columns = [list(column) for column in zip(*unique, strict=True)]
        rows = self._run("checking deliveries", lambda conn: conn.execute(
            "SELECT k.execution_id, k.event_id, k.function "
            "FROM unnest(%s::text[], %s::text[], %s::text[]) AS k(execution_id, event_id, function) "
            # LATERAL ... LIMIT 1 keeps it one index probe per key, whatever the statistics say (a hash join would
            # read every success of the workflow)
            f"CROSS JOIN LATERAL (SELECT 1 FROM {self._table('xflow_deliveries')} AS d WHERE d.workflow_id = %s "
            "AND d.event_id = k.event_id AND d.function = k.function AND d.execution_id = k.execution_id "
            "AND d.status = 'succeeded' LIMIT 1) AS found",
            (*columns, self.workflow_id)).fetchall())
        return {(x, e, f) for x, e, f in rows}

    def list_executions(self, limit: int, cursor: str | None = None, status: str | None = None) -> ExecutionPage:
        """Walks ``xflow_events_by_time`` newest first, keeping each execution's first event (one probe of
        ``xflow_events_by_execution`` each); with ``status='failed'``, only executions that have a failed delivery.
        A database set up before that index existed is listed all the same, more slowly (setup adds it)."""
        from xflow.core.interfaces import ExecutionInfo, ExecutionPage, decode_cursor, encode_cursor

        where, params = ["e.workflow_id = %s"], list[object]([self.workflow_id])
        if cursor:
            position = decode_cursor(cursor)
            if not (isinstance(position, list) and len(position) == 2 and isinstance(position[0], int | float)
                    and isinstance(position[1], str)):
                raise XflowError(f"cursor {cursor!r} is not one this tracker gave",
                                 "pass the next_cursor of the previous page, or no cursor for the newest")
            where.append("(e.published_at, e.execution_id) < (%s, %s)")
            params += [position[0], position[1]]
        if status == "failed":
            where.append(f"EXISTS (SELECT 1 FROM {self._table('xflow_deliveries')} AS d WHERE d.workflow_id = "
                         "e.workflow_id AND d.execution_id = e.execution_id AND d.status = 'failed')")
        where.append(f"NOT EXISTS (SELECT 1 FROM {self._table('xflow_events')} AS p WHERE p.workflow_id = e.workflow_id "
                     "AND p.execution_id = e.execution_id AND (p.published_at, p.seq) < (e.published_at, e.seq))")
        limit = max(0, int(limit))
        rows = self._run("listing executions", lambda conn: conn.execute(
            f"SELECT e.execution_id, e.published_at FROM {self._table('xflow_events')} AS e WHERE {' AND '.join(where)} "
            "ORDER BY e.published_at DESC, e.execution_id DESC LIMIT %s", (*params, limit + 1)).fetchall())
        listed = [ExecutionInfo(execution_id, started_at) for execution_id, started_at in rows[:limit]]
        more = len(rows) > limit and listed
        return ExecutionPage(listed, encode_cursor([listed[-1].started_at, listed[-1].execution_id]) if more else None)

    def executions(self) -> list[str]:
        """Execution ids of this workflow, most recent first."""
        return self._run("listing executions", lambda conn: [row[0] for row in conn.execute(
            f"SELECT execution_id FROM {self._table('xflow_events')} WHERE workflow_id = %s "
            "GROUP BY execution_id ORDER BY max(published_at) DESC", (self.workflow_id,))])


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL characters; handlers' logs and errors may."""
    return value.replace("\x00", "\\0") if value else value
