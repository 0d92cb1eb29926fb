"""The ``sqlite`` tracker store: every event and delivery outcome of a workflow in one SQLite file.

Options: ``path`` (default ``STATE_DIR/WORKFLOW/tracker.db``). Safe for many worker processes on
one machine (WAL mode) and for the threads of one process (they take turns on one connection); events
are keyed by event id, so recording one twice is a no-op.
Any content is stored: text that UTF-8 cannot carry (lone surrogates) is kept as escapes, and
times that are not finite numbers are replaced by the time of recording.

Batches (``record_events``, ``record_deliveries``, and both at once with ``record_batch``) are written in one
transaction each; ``has_succeeded`` and ``succeeded_among`` (one query per batch of keys) look up the
``deliveries_by_event`` index, so their cost does not grow with an execution's history.

Disk and state errors are named in one line (:mod:`xflow.core.sqlite_files`): a full disk, a lock held
too long or an I/O error is :class:`BackendUnavailable` (workers wait it out); a read-only or damaged file
is an :class:`XflowError`. Deleting ``tracker.db-wal`` (or replacing ``tracker.db``) under a running process
is detected by that process, which writes back what it still sees, notes the incident in
``tracker.db.incidents`` and stops; ``history`` then warns about executions whose records may be missing.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from xflow.core.deploy import dispatch
from xflow.core.errors import XflowError
from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import (
    DeliveryRecord,
    EventRecord,
    ExecutionHistory,
    ExecutionInfo,
    ExecutionPage,
    PluginContext,
    Step,
    TrackerStore,
    decode_cursor,
    encode_cursor,
)
from xflow.core.options import Option
from xflow.core.runtime import JsonObject, iso_time
from xflow.core.sqlite_files import SharedConnection, SqliteFile, insert_rows

if TYPE_CHECKING:
    from xflow.core.model import Workflow

SCHEMA = """
CREATE TABLE IF NOT EXISTS events(event_id TEXT PRIMARY KEY, execution_id TEXT NOT NULL, event TEXT NOT NULL,
    published_at REAL NOT NULL, producer TEXT, data TEXT);
CREATE INDEX IF NOT EXISTS events_by_execution ON events(execution_id, published_at);
CREATE INDEX IF NOT EXISTS events_by_time ON events(published_at, execution_id);
CREATE TABLE IF NOT EXISTS deliveries(id INTEGER PRIMARY KEY AUTOINCREMENT, execution_id TEXT NOT NULL,
    event_id TEXT NOT NULL, event TEXT NOT NULL, function TEXT NOT NULL, attempt INTEGER NOT NULL,
    status TEXT NOT NULL, started_at REAL NOT NULL, duration REAL, error TEXT, logs TEXT);
CREATE INDEX IF NOT EXISTS deliveries_by_execution ON deliveries(execution_id, started_at);
CREATE INDEX IF NOT EXISTS deliveries_by_event ON deliveries(event_id, function, status);
"""


class SqliteTrackerStore(TrackerStore):
    name = "sqlite"
    description = "Embedded tracker: events and delivery outcomes in a SQLite file under the state folder"
    options: ClassVar[tuple[Option, ...]] = (Option("path", str, None, "database file (default STATE_DIR/WORKFLOW/tracker.db)"),)
    connection_errors = (sqlite3.OperationalError,)

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.path = Path(self.context.option("path") or Path(context.state_dir) / context.workflow_id / "tracker.db")
        self.file = SqliteFile(self.path, "tracker database")
        self.shared = SharedConnection(self.file, "run 'xflow setup FILE --tracker sqlite' (or 'xflow run') first")
        self._time_index = False  # events_by_time made sure of (files made before it existed lack it)

    @property
    def db(self) -> sqlite3.Connection:
        """The connection the threads of this process share (opened on first use)."""
        return self.shared.get()

    def _using(self) -> AbstractContextManager[sqlite3.Connection]:
        """The connection, checked to be on the file it opened; SQLite errors come out as one-line errors."""
        return self.shared.using()

    def close(self) -> None:
        self.shared.close()

    def plan_setup(self, workflow: Workflow) -> list[Step]:
        if self.path.exists():
            return []
        return [Step("create", f"tracker:{self.path}", call="sqlite:CreateDatabase", params={"path": str(self.path)})]

    def plan_teardown(self, workflow: Workflow) -> list[Step]:
        if not self.path.exists():
            return []
        return [Step("delete", f"tracker:{self.path}", call="sqlite:DeleteDatabase", params={"path": str(self.path)})]

    def execute(self, step: Step) -> None:
        dispatch(step, {"sqlite:CreateDatabase": self._create, "sqlite:DeleteDatabase": self._remove})

    def _create(self, path: str) -> None:
        self._check_path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise XflowError(f"cannot create the tracker database {self.path}: {exc}",
                             "choose a writable state folder with --state-dir") from None
        connection = self.file.connect()
        try:
            with self.file.using(connection):
                connection.executescript(SCHEMA)
        finally:
            self.file.close(connection)

    def _check_path(self, path: str) -> None:
        if Path(path) != self.path:  # a step planned by another instance of this store
            raise RuntimeError(f"a step for {path} given to the tracker of {self.path}")

    def _remove(self, path: str) -> None:
        self._check_path(path)
        self.close()
        self.file.remove()
        if self.path.parent.exists() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()

    def record_event(self, record: EventRecord) -> None:
        with self._using() as db:
            db.execute(INSERT_EVENT, _event_row(record))

    def record_delivery(self, record: DeliveryRecord) -> None:
        with self._using() as db:
            db.execute(INSERT_DELIVERY, _delivery_row(record))

    def record_events(self, records: Sequence[EventRecord]) -> None:
        """All in one transaction: the first record of an ``event_id`` (stored before, or earlier in the batch) wins."""
        rows = [_event_row(record) for record in records]
        if rows:
            with self._using() as db, _transaction(db):
                insert_rows(db, INSERT_EVENT_ROWS, 6, rows)

    def record_deliveries(self, records: Sequence[DeliveryRecord]) -> None:
        """All in one transaction."""
        rows = [_delivery_row(record) for record in records]
        if rows:
            with self._using() as db, _transaction(db):
                insert_rows(db, INSERT_DELIVERY_ROWS, 10, rows)

    def record_batch(self, events: Sequence[EventRecord], deliveries: Sequence[DeliveryRecord]) -> None:
        """The events, then the deliveries, in one transaction."""
        event_rows = [_event_row(record) for record in events]
        delivery_rows = [_delivery_row(record) for record in deliveries]
        if event_rows or delivery_rows:
            with self._using() as db, _transaction(db):
                if event_rows:
                    insert_rows(db, INSERT_EVENT_ROWS, 6, event_rows)
                if delivery_rows:
                    insert_rows(db, INSERT_DELIVERY_ROWS, 10, delivery_rows)

    def history(self, execution_id: str) -> ExecutionHistory:
        with self._using() as db:
            events = [
                EventRecord(execution_id, event_id, event, published_at, producer or "", _loads(data))
                for event_id, event, published_at, producer, data in db.execute(
                    "SELECT event_id, event, published_at, producer, data FROM events WHERE execution_id = ? "
                    "ORDER BY published_at, rowid", (_text(execution_id),)).fetchall()
            ]
            deliveries = [
                DeliveryRecord(execution_id, event_id, event, function, attempt, status, started_at, duration or 0.0,
                               error, _lines(_loads(logs)))
                for event_id, event, function, attempt, status, started_at, duration, error, logs in db.execute(
                    "SELECT event_id, event, function, attempt, status, started_at, duration, error, logs "
                    "FROM deliveries WHERE execution_id = ? ORDER BY started_at, id", (_text(execution_id),)).fetchall()
            ]
        return ExecutionHistory(events, deliveries, self._warnings(events, deliveries))

    def _warnings(self, events: list[EventRecord], deliveries: list[DeliveryRecord]) -> list[str]:
        """Incidents on the file (its write-ahead log removed under running processes) that happened after the
        execution began: records of it may have been lost, so missing outcomes prove nothing."""
        times = [e.published_at for e in events] + [d.started_at for d in deliveries]
        if not times:
            return []
        began = min(times)
        return [f"{self.path}: {item['what']} at {iso_time(item['at'])[:19]}Z; records of this execution written "
                "before then may be lost, so it may have finished although some outcomes are missing"
                for item in self.file.incidents() if item["at"] >= began]

    def has_succeeded(self, execution_id: str, event_id: str, function: str) -> bool:
        """One look-up in the ``deliveries_by_event`` index (the rows of that event id), never a whole history."""
        with self._using() as db:
            return db.execute(
                "SELECT 1 FROM deliveries WHERE event_id = ? AND function = ? AND status = 'succeeded' "
                "AND execution_id = ? LIMIT 1",
                (_text(event_id), _text(function), _text(execution_id))).fetchone() is not None

    def succeeded_among(self, keys: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        """One query per batch (per ``KEYS_PER_QUERY`` keys): the keys, as a ``VALUES`` list, joined with the
        ``deliveries_by_event`` index."""
        wanted: dict[tuple[str | None, ...], tuple[str, str, str]] = {}
        for execution_id, event_id, function in keys:
            key = (str(execution_id), str(event_id), str(function))
            wanted[(_text(key[0]), _text(key[1]), _text(key[2]))] = key
        stored = list(wanted)
        found: set[tuple[str, str, str]] = set()
        with self._using() as db:
            for start in range(0, len(stored), KEYS_PER_QUERY):
                chunk = stored[start:start + KEYS_PER_QUERY]
                values = ", ".join(["(?, ?, ?)"] * len(chunk))
                rows = db.execute(
                    f"WITH wanted(execution_id, event_id, function) AS (VALUES {values}) "
                    "SELECT DISTINCT w.execution_id, w.event_id, w.function FROM wanted AS w "
                    "JOIN deliveries AS d ON d.event_id = w.event_id "
                    "AND d.function = w.function AND d.status = 'succeeded' AND d.execution_id = w.execution_id",
                    [part for key in chunk for part in key]).fetchall()
                found.update(wanted[tuple(row)] for row in rows)
        return found

    def executions(self) -> list[str]:
        """Execution ids known to this store, most recent first."""
        with self._using() as db:
            rows = db.execute("SELECT execution_id, MAX(published_at) AS t FROM events GROUP BY execution_id "
                              "ORDER BY t DESC").fetchall()
        return [row[0] for row in rows]

    def recent_executions(self, limit: int) -> list[str]:
        with self._using() as db:
            rows = db.execute("SELECT execution_id FROM events GROUP BY execution_id ORDER BY MAX(published_at) DESC "
                              "LIMIT ?", (max(0, int(limit)),)).fetchall()
        return [row[0] for row in rows]

    def list_executions(self, limit: int, cursor: str | None = None, status: str | None = None) -> ExecutionPage:
        """Walks the ``events_by_time`` index newest first and keeps each execution's first event (one probe of
        ``events_by_execution`` each); with ``status='failed'``, only executions that have a failed delivery."""
        self._ensure_time_index()
        where, params = [], []
        if cursor:
            position = decode_cursor(cursor)
            if not (isinstance(position, list) and len(position) == 2 and isinstance(position[0], int | float)
                    and isinstance(position[1], str)):
                raise XflowError(f"cursor {cursor!r} is not one this tracker gave",
                                 "pass the next_cursor of the previous page, or no cursor for the newest")
            where.append("(e.published_at < ? OR (e.published_at = ? AND e.execution_id < ?))")
            params += [position[0], position[0], position[1]]
        if status == "failed":
            where.append("EXISTS (SELECT 1 FROM deliveries AS d WHERE d.execution_id = e.execution_id "
                         "AND d.status = 'failed')")
        where.append("NOT EXISTS (SELECT 1 FROM events AS p WHERE p.execution_id = e.execution_id AND "
                     "(p.published_at < e.published_at OR (p.published_at = e.published_at AND p.rowid < e.rowid)))")
        limit = max(0, int(limit))
        with self._using() as db:
            rows = db.execute(f"SELECT e.execution_id, e.published_at FROM events AS e WHERE {' AND '.join(where)} "
                              "ORDER BY e.published_at DESC, e.execution_id DESC LIMIT ?", (*params, limit + 1)).fetchall()
        listed = [ExecutionInfo(execution_id, started_at) for execution_id, started_at in rows[:limit]]
        more = len(rows) > limit and listed
        return ExecutionPage(listed, encode_cursor([listed[-1].started_at, listed[-1].execution_id]) if more else None)

    def _ensure_time_index(self) -> None:
        """Add ``events_by_time`` to a file made before it existed (once; a read-only file is listed without it)."""
        if self._time_index:
            return
        with suppress(XflowError), self._using() as db:
            db.execute("CREATE INDEX IF NOT EXISTS events_by_time ON events(published_at, execution_id)")
            self._time_index = True


INSERT_EVENT = ("INSERT OR IGNORE INTO events(event_id, execution_id, event, published_at, producer, data) "
                "VALUES (?, ?, ?, ?, ?, ?)")
INSERT_DELIVERY = ("INSERT INTO deliveries(execution_id, event_id, event, function, attempt, status, started_at, "
                   "duration, error, logs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
#: the two inserts for many rows at once (:func:`~xflow.core.sqlite_files.insert_rows`)
INSERT_EVENT_ROWS = INSERT_EVENT[:INSERT_EVENT.index("VALUES") + 7]
INSERT_DELIVERY_ROWS = INSERT_DELIVERY[:INSERT_DELIVERY.index("VALUES") + 7]
#: keys one ``succeeded_among`` query holds (3 parameters each: well under SQLite's 999-parameter floor)
KEYS_PER_QUERY = 300


def _event_row(record: EventRecord) -> tuple[Any, ...]:
    data = record.data
    text = None
    if data is not None:
        # data a handler published carries the JSON text it was encoded to once (valid UTF-8): stored as it is
        text = data.json if type(data) is JsonObject else _json(dict(data))
    names = (record.event_id, record.execution_id, record.event, record.producer)
    if not _plain(names):
        names = tuple(_text(name) for name in names)  # type: ignore[assignment]
    at = record.published_at
    if not (type(at) is float and -math.inf < at < math.inf):  # (the usual case checked here: a row per event)
        at = _time(at)
    return names[0], names[1], names[2], at, names[3], text


def _delivery_row(record: DeliveryRecord) -> tuple[Any, ...]:
    names = (record.execution_id, record.event_id, record.event, record.function)
    if not _plain(names):
        names = tuple(_text(name) for name in names)  # type: ignore[assignment]
    started, duration, error = record.started_at, record.duration, record.error
    # (the usual cases checked here, without a call each: a row per delivery)
    if not (type(started) is float and -math.inf < started < math.inf):
        started = _time(started)
    if not (type(duration) is float and -math.inf < duration < math.inf):
        duration = _time(duration, 0.0)
    return (*names, int(record.attempt), record.status, started, duration, None if error is None else _text(error),
            _json([str(line) for line in record.logs]) if record.logs else "[]")


def _plain(values: tuple[Any, ...]) -> bool:
    """Whether every value is ASCII text, which is stored as it is (one check for a row's names)."""
    try:
        return "".join(values).isascii()
    except TypeError:  # None, or a value that is not text
        return False


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction taken up front (``BEGIN IMMEDIATE``: no deadlock on upgrade), committed at the end.

    On any failure, a failed ``COMMIT`` included (a full disk), it is rolled back, so no transaction stays open
    behind it and the next batch on this connection starts afresh.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR)
            with suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _text(value: str | None) -> str | None:
    """``value`` as SQLite can store it: lone surrogates (which UTF-8 cannot carry) become ``\\udXXX`` escapes."""
    if value is None:
        return None
    if type(value) is str and value.isascii():
        return value
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _json(value: Any) -> str:
    """JSON text; escaped as ASCII when it holds what UTF-8 cannot carry (reads back the same)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, default=str)
    return text


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:  # not written by this store: show it as text rather than fail the whole history
        return {"unreadable": text}


def _lines(value: Any) -> tuple[str, ...]:
    return tuple(str(line) for line in value) if isinstance(value, list) else ()


def _time(value: float, default: float | None = None) -> float:
    """A finite number (else ``default``, or now): SQLite stores NaN as NULL, which the NOT NULL columns refuse."""
    if type(value) is float and -math.inf < value < math.inf:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if math.isfinite(number):
        return number
    return time.time() if default is None else default


@hookimpl
def xflow_tracker_stores() -> list[type[TrackerStore]]:
    return [SqliteTrackerStore]
