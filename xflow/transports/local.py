"""The ``local`` transport: an append-only event log in SQLite (WAL mode) under the state folder.

Supports: one stream per event, split into ``partitions`` by the execution id, so order is kept
per execution; consumer groups whose members (any number of worker processes on this machine)
share the partitions through leases that expire when a member dies; offsets committed only
after the handler succeeded (at-least-once); a dead-letter table.

Options: ``path`` (database file, default ``STATE_DIR/WORKFLOW/events.db``), ``partitions``
(default 4), ``lease_seconds`` (how long a dead worker's partitions stay claimed, default 10),
``poll_interval`` (seconds between looks at an idle log, default 0.05), ``max_record_bytes``.

Disk and state errors are named in one line (:mod:`xflow.core.sqlite_files`): a full disk, a lock held too
long or an I/O error is :class:`BackendUnavailable` (workers wait it out, ``publish`` exits 1); a read-only
or damaged file is an :class:`XflowError`. Deleting ``events.db-wal`` (or replacing ``events.db``) under a
running process is detected by that process, which stops.

One transport may be shared by the threads of a process: they share its connection and take turns on it
(:meth:`SqliteFile.using` holds the connection's lock), and each consumer has a connection of its own.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
import zlib
from collections.abc import Sequence
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import ClassVar

from xflow.core.deploy import dispatch
from xflow.core.errors import XflowError
from xflow.core.fastrecords import new_delivery
from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import Consumer, Delivery, PartitionLag, PluginContext, Record, Step, Transport
from xflow.core.leases import LeaseCoordinator, LeaseStore
from xflow.core.options import Option
from xflow.core.sqlite_files import SharedConnection, SqliteFile, insert_rows

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams(name TEXT PRIMARY KEY, partitions INTEGER NOT NULL, created_at REAL);
CREATE TABLE IF NOT EXISTS records(id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL,
    part INTEGER NOT NULL, key TEXT, value BLOB NOT NULL, appended_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS records_by_partition ON records(stream, part, id);
CREATE TABLE IF NOT EXISTS offsets(grp TEXT, stream TEXT, part INTEGER, position INTEGER NOT NULL,
    PRIMARY KEY(grp, stream, part));
CREATE TABLE IF NOT EXISTS leases(grp TEXT, stream TEXT, part INTEGER, owner TEXT NOT NULL,
    expires_at REAL NOT NULL, PRIMARY KEY(grp, stream, part));
CREATE TABLE IF NOT EXISTS members(grp TEXT, owner TEXT, expires_at REAL NOT NULL, PRIMARY KEY(grp, owner));
CREATE TABLE IF NOT EXISTS dead_letters(id INTEGER PRIMARY KEY AUTOINCREMENT, grp TEXT, stream TEXT,
    part INTEGER, position INTEGER, key TEXT, value BLOB, reason TEXT, at REAL);
"""


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode with WAL and a generous busy timeout (many processes share the file)."""
    return SqliteFile(path, "SQLite file").connect()


class LocalTransport(Transport):
    name = "local"
    description = "Embedded append-only event log in SQLite under the state folder (no server needed)"
    options: ClassVar[tuple[Option, ...]] = (
        Option("path", str, None, "database file (default STATE_DIR/WORKFLOW/events.db)"),
        Option("partitions", int, 4, "partitions per stream, chosen by execution id", minimum=1),
        Option("lease_seconds", "duration", 10.0, "seconds before a dead worker's partitions are taken over", minimum=0.5),
        Option("poll_interval", "duration", 0.05, "seconds between looks at an idle log", minimum=0.001),
        Option("max_record_bytes", int, 1_048_576, "largest event accepted, in bytes", minimum=1),
    )
    connection_errors = (sqlite3.OperationalError,)

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        default = Path(context.state_dir) / context.workflow_id / "events.db"
        self.path = Path(self.context.option("path") or default)
        self.file = SqliteFile(self.path, "event log")
        self.partitions = self.context.option("partitions")
        self.lease_seconds = self.context.option("lease_seconds")
        self.poll_interval = self.context.option("poll_interval")
        self.max_record_bytes = self.context.option("max_record_bytes")
        self.shared = SharedConnection(self.file, "run 'xflow setup FILE --transport local' (or 'xflow run') first")
        self._partitions_of: dict[str, int] = {}

    # -- connection ---------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        return self.shared.get()

    @property
    def _connection(self) -> sqlite3.Connection | None:
        return self.shared.connection

    def _using(self) -> AbstractContextManager[sqlite3.Connection]:
        """The connection, checked to be on the file it opened; SQLite errors come out as one-line errors."""
        return self.shared.using()

    def _create_log(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise XflowError(f"cannot create the event log {self.path}: {exc}",
                             "choose a writable state folder with --state-dir") from None
        connection = self.file.connect()
        try:
            with self.file.using(connection):
                connection.executescript(SCHEMA)
        except BaseException:
            self.file.close(connection)
            raise
        if not self.shared.adopt(connection):
            self.file.close(connection)  # another thread opened the shared connection first

    def close(self) -> None:
        self.shared.close()

    def _existing(self) -> dict[str, int]:
        if not self.path.exists():
            return {}
        prefix = f"{self.workflow_id}-"
        with self._using() as db:
            rows = db.execute("SELECT name, partitions FROM streams").fetchall()
        return {name: parts for name, parts in rows if name.startswith(prefix)}

    # -- setup / teardown ---------------------------------------------------------------------
    def plan_setup(self, events: Sequence[str]) -> list[Step]:
        existing = self._existing()
        wanted = {self.stream_name(e): e for e in events}
        steps = [Step("create", f"stream:{name}", detail=f"{self.partitions} partitions in {self.path}",
                      call="local:CreateStream", params={"name": name, "partitions": self.partitions})
                 for name in wanted if name not in existing]
        steps += [Step("delete", f"stream:{name}", detail="not in the file", call="local:DeleteStream",
                       params={"name": name})
                  for name in existing if name not in wanted]
        return steps

    def plan_teardown(self, events: Sequence[str]) -> list[Step]:
        if not self.path.exists():
            return []
        steps = [Step("delete", f"stream:{name}", call="local:DeleteStream", params={"name": name})
                 for name in self._existing()]
        return steps + [Step("delete", f"log:{self.path}", call="local:RemoveLogIfEmpty")]

    def execute(self, step: Step) -> None:
        dispatch(step, {"local:CreateStream": self._create_stream, "local:DeleteStream": self._delete_stream,
                        "local:RemoveLogIfEmpty": self._remove_log_if_empty})

    def _create_stream(self, name: str, partitions: int) -> None:
        if not self.path.exists() or self._connection is None:
            self._create_log()
        with self._using() as db:
            db.execute("INSERT OR IGNORE INTO streams(name, partitions, created_at) VALUES (?, ?, ?)",
                       (name, partitions, time.time()))
        self._partitions_of.pop(name, None)

    def _delete_stream(self, name: str) -> None:
        with self._using() as db, _immediate(db):
            for table in ("records", "offsets", "leases", "dead_letters"):
                db.execute(f"DELETE FROM {table} WHERE stream = ?", (name,))
            db.execute("DELETE FROM streams WHERE name = ?", (name,))
        self._partitions_of.pop(name, None)

    def _remove_log_if_empty(self) -> None:
        with self._using() as db:
            if db.execute("SELECT COUNT(*) FROM streams").fetchone()[0]:
                return  # other workflows share this log file
        self.close()
        self.file.remove()
        if self.path.parent.exists() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()

    # -- publish ------------------------------------------------------------------------------
    def partitions_of(self, stream: str) -> int:
        count = self._partitions_of.get(stream)
        if count is None:
            with self._using() as db:
                row = db.execute("SELECT partitions FROM streams WHERE name = ?", (stream,)).fetchone()
            if row is None:
                raise XflowError(f"stream {stream!r} does not exist in {self.path}",
                                 "run 'xflow setup' for this workflow first")
            count = self._partitions_of[stream] = int(row[0])
        return count

    def publish(self, event: str, records: Sequence[Record]) -> None:
        stream = self.stream_name(event)
        for record in records:
            if len(record.value) > self.max_record_bytes:
                raise XflowError(f"event {event!r} of execution {record.key} is {len(record.value)} bytes, over the "
                                 f"local transport's limit of {self.max_record_bytes}",
                                 "publish a reference (a path or URL) instead of the payload")
        partitions = self.partitions_of(stream)
        now = time.time()
        rows = [(stream, zlib.crc32(r.key.encode()) % partitions, r.key, r.value, now) for r in records]
        with self._using() as db, _immediate(db):
            insert_rows(db, "INSERT INTO records(stream, part, key, value, appended_at) VALUES ", 5, rows)

    # -- consume ------------------------------------------------------------------------------
    def subscribe(self, group: str, events: Sequence[str]) -> Consumer:
        return LocalConsumer(self, group, [self.stream_name(e) for e in events], {self.stream_name(e): e for e in events})

    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        with self._using() as db:
            db.execute(
                "INSERT INTO dead_letters(grp, stream, part, position, key, value, reason, at) VALUES (?,?,?,?,?,?,?,?)",
                (group, self.stream_name(delivery.event), int(delivery.partition), int(delivery.position),
                 delivery.key, delivery.value, reason, time.time()))

    def dead_letters(self, group: str | None = None) -> list[dict[str, object]]:
        """Dead-lettered deliveries (for inspection and tests)."""
        query = "SELECT grp, stream, part, position, key, value, reason FROM dead_letters"
        with self._using() as db:
            rows = db.execute(query + (" WHERE grp = ?" if group else "") + " ORDER BY id",
                              (group,) if group else ()).fetchall()
        keys = ("group", "stream", "partition", "position", "key", "value", "reason")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def lag(self, group: str, events: Sequence[str]) -> list[PartitionLag]:
        """Per partition of each event's stream: the records after the group's committed offset, how long the oldest
        of them has waited, and whether a live member holds the partition's lease (read in one transaction)."""
        streams = [(event, self.stream_name(event)) for event in events]
        parts = {stream: self.partitions_of(stream) for _, stream in streams}
        now = time.time()
        found: list[PartitionLag] = []
        with self._using() as db:
            db.execute("BEGIN")
            try:
                for event, stream in streams:
                    committed = dict(db.execute("SELECT part, position FROM offsets WHERE grp = ? AND stream = ?",
                                                (group, stream)).fetchall())
                    held = {part for (part,) in db.execute(
                        "SELECT part FROM leases WHERE grp = ? AND stream = ? AND expires_at >= ?", (group, stream, now))}
                    for part in range(parts[stream]):
                        position = committed.get(part)
                        count, oldest, latest = db.execute(
                            "SELECT COUNT(*), MIN(appended_at), (SELECT MAX(id) FROM records WHERE stream = ?1 AND "
                            "part = ?2) FROM records WHERE stream = ?1 AND part = ?2 AND id > ?3",
                            (stream, part, position or 0)).fetchone()
                        found.append(PartitionLag(event, str(part), int(count),
                                                  max(0.0, now - oldest) if oldest is not None else 0.0,
                                                  None if position is None else str(position),
                                                  None if latest is None else str(latest), part in held))
            finally:
                db.execute("COMMIT")
        return found


class _immediate:
    """``with _immediate(db):`` a write transaction taken up front (no deadlock on upgrade).

    A failed COMMIT (a full disk) leaves no transaction open behind it: it is rolled back, so the next
    ``BEGIN`` on this connection works once the cause has passed.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self.db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR)
            with suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")


Unit = tuple[str, int]


class SqliteLeaseStore(LeaseStore[Unit]):
    """The local transport's lease store: the ``leases`` and ``members`` tables of the event log, one transaction
    per operation, expiry times on the wall clock (the processes sharing the file share it)."""

    def __init__(self, file: SqliteFile, db: sqlite3.Connection, group: str) -> None:
        self.file, self.db, self.group = file, db, group

    def heartbeat(self, member: str, ttl: float) -> None:
        with self.file.using(self.db) as db:
            db.execute("INSERT OR REPLACE INTO members(grp, owner, expires_at) VALUES (?, ?, ?)",
                       (self.group, member, time.time() + ttl))

    def live_members(self) -> int:
        now = time.time()
        with self.file.using(self.db) as db, _immediate(db):
            db.execute("DELETE FROM members WHERE grp = ? AND expires_at < ?", (self.group, now))
            return int(db.execute("SELECT COUNT(*) FROM members WHERE grp = ?", (self.group,)).fetchone()[0])

    def acquire(self, unit: Unit, member: str, ttl: float) -> bool:
        now = time.time()
        with self.file.using(self.db) as db, _immediate(db):
            db.execute("INSERT INTO leases(grp, stream, part, owner, expires_at) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT(grp, stream, part) DO UPDATE SET owner = excluded.owner, "
                       "expires_at = excluded.expires_at WHERE leases.owner = excluded.owner OR leases.expires_at < ?",
                       (self.group, *unit, member, now + ttl, now))
            return bool(db.execute("SELECT changes()").fetchone()[0])

    def renew(self, units: Sequence[Unit], member: str, ttl: float) -> set[Unit]:
        with self.file.using(self.db) as db, _immediate(db):
            db.execute("UPDATE leases SET expires_at = ? WHERE grp = ? AND owner = ?",
                       (time.time() + ttl, self.group, member))
            mine = {(s, p) for s, p in db.execute("SELECT stream, part FROM leases WHERE grp = ? AND owner = ?",
                                                  (self.group, member))}
        return mine & set(units)

    def release(self, units: Sequence[Unit], member: str) -> None:
        with self.file.using(self.db) as db, _immediate(db):
            db.executemany("DELETE FROM leases WHERE grp = ? AND stream = ? AND part = ? AND owner = ?",
                           [(self.group, *unit, member) for unit in units])

    def leave(self, member: str) -> None:
        with self.file.using(self.db) as db:
            db.execute("DELETE FROM members WHERE grp = ? AND owner = ?", (self.group, member))


class LocalConsumer(Consumer):
    """A member of a consumer group; members share (stream, partition) units through leases
    (:class:`~xflow.core.leases.LeaseCoordinator` over a :class:`SqliteLeaseStore`)."""

    def __init__(self, transport: LocalTransport, group: str, streams: list[str], events: dict[str, str]) -> None:
        self.transport, self.group, self.events = transport, group, events
        self.file = transport.file
        self.db = self.file.connect() if transport.path.exists() else transport.db
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.units: list[Unit] = [(s, p) for s in streams for p in range(transport.partitions_of(s))]
        self.leases = LeaseCoordinator(SqliteLeaseStore(self.file, self.db, group), self.owner,
                                       transport.lease_seconds, name=group)
        #: per unit held, the position of the last record handed out
        self.fetched: dict[Unit, int] = {}
        #: per unit held, the position this member committed (or found committed when it took the unit)
        self.acked: dict[Unit, int] = {}

    def _holds(self, unit: Unit) -> bool:
        """Whether deliveries of ``unit`` were handed out and not committed (a runner is handling them)."""
        return self.fetched.get(unit, 0) > self.acked.get(unit, 0)

    def rebalance(self, force: bool = False) -> None:
        """Let the coordinator renew, hand back and take leases when due (now with ``force``); follow its changes."""
        changes = self.leases.rebalance(self.units, self._holds, force=force)
        if not changes:
            return
        for unit in changes.dropped:
            self.fetched.pop(unit, None)
            self.acked.pop(unit, None)
        if changes.taken:
            with self.file.using(self.db) as db:
                committed = {(s, p): pos for s, p, pos in db.execute(
                    "SELECT stream, part, position FROM offsets WHERE grp = ?", (self.group,))}
            for unit in changes.taken:
                self.fetched[unit] = self.acked[unit] = committed.get(unit, 0)
        held = self.leases.held  # read in the order of the units, each poll
        self.fetched = {u: self.fetched[u] for u in self.units if u in held and u in self.fetched}
        self.acked = {u: self.acked[u] for u in self.units if u in held and u in self.acked}

    def poll(self, max_records: int, timeout: float) -> list[Delivery]:
        """Up to ``max_records`` deliveries. A poll that fails (a full disk, an I/O error) moves no position: the
        same records come again from the next poll."""
        deadline = time.monotonic() + timeout
        while True:
            self.rebalance()
            draining = self.leases.draining
            deliveries: list[Delivery] = []
            advanced: dict[Unit, int] = {}
            with self.file.using(self.db) as db:
                for unit, position in self.fetched.items():
                    if len(deliveries) >= max_records:
                        break
                    if unit in draining:
                        continue
                    rows = db.execute(
                        "SELECT id, key, value FROM records WHERE stream = ? AND part = ? AND id > ? ORDER BY id LIMIT ?",
                        (*unit, position, max_records - len(deliveries))).fetchall()
                    event, part = self.events[unit[0]], str(unit[1])
                    deliveries.extend([new_delivery(event, part, str(record_id), key, bytes(value), None)
                                       for record_id, key, value in rows])
                    if rows:
                        advanced[unit] = rows[-1][0]
            self.fetched.update(advanced)
            if deliveries or time.monotonic() >= deadline:
                return deliveries
            time.sleep(min(self.transport.poll_interval, max(0.0, deadline - time.monotonic())))

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        """Commit up to each delivery's position, in the partitions this member still holds (a partition taken over
        meanwhile is left to its new holder, which delivers again what was not committed)."""
        latest: dict[Unit, int] = {}
        for delivery in deliveries:
            unit = (self.transport.stream_name(delivery.event), int(delivery.partition))
            latest[unit] = max(latest.get(unit, 0), int(delivery.position))
        if not latest:
            return
        lost: list[Unit] = []
        with self.file.using(self.db) as db, _immediate(db):
            for (stream, part), position in latest.items():
                owner = db.execute("SELECT owner FROM leases WHERE grp = ? AND stream = ? AND part = ?",
                                   (self.group, stream, part)).fetchone()
                if owner is None or owner[0] != self.owner:
                    lost.append((stream, part))
                    continue
                db.execute(
                    "INSERT INTO offsets(grp, stream, part, position) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(grp, stream, part) DO UPDATE SET position = MAX(position, excluded.position)",
                    (self.group, stream, part, position))
                self.acked[(stream, part)] = max(self.acked.get((stream, part), 0), position)
        for unit in lost:
            self.leases.drop(unit)
            self.fetched.pop(unit, None)
            self.acked.pop(unit, None)
        self.leases.keep_alive()

    def keep_alive(self) -> None:
        """Renew this member's leases, a third of the way through them, while its handlers run without polling or
        committing (the lease keeper thread does it too; a handler longer than ``lease_seconds`` would otherwise
        lose its partition to another member, which would run it again)."""
        self.leases.keep_alive()

    def close(self) -> None:
        """Leave the group (best effort: on a full disk or a damaged log the leases simply expire)."""
        with suppress(sqlite3.Error, XflowError):
            self.leases.close()
        if self.db is not self.transport._connection:
            self.file.close(self.db)


@hookimpl
def xflow_transports() -> list[type[Transport]]:
    return [LocalTransport]
