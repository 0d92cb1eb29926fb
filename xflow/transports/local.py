"""The ``local`` transport: an append-only event log in SQLite (WAL mode) under the state folder.

Supports: one stream per event, split into ``partitions`` by the execution id, so order is kept
per execution; consumer groups whose members (any number of worker processes on this machine)
share the partitions through leases that expire when a member dies; offsets committed only
after the handler succeeded (at-least-once); a dead-letter table.

Options: ``path`` (database file, default ``STATE_DIR/WORKFLOW/events.db``), ``partitions``
(default 4), ``lease_seconds`` (how long a dead worker's partitions stay claimed, default 10),
``poll_interval`` (seconds between looks at an idle log, default 0.05), ``max_record_bytes``.
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import time
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from xflow.core.errors import XflowError
from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import Consumer, Delivery, PluginContext, Record, Step, Transport

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
    connection = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


class LocalTransport(Transport):
    name = "local"
    description = "Embedded append-only event log in SQLite under the state folder (no server needed)"
    options: ClassVar[dict[str, str]] = {
        "path": "database file (default STATE_DIR/WORKFLOW/events.db)",
        "partitions": "partitions per stream, chosen by execution id (default 4)",
        "lease_seconds": "seconds before a dead worker's partitions are taken over (default 10)",
        "poll_interval": "seconds between looks at an idle log (default 0.05)",
        "max_record_bytes": "largest event accepted, in bytes (default 1048576)",
    }
    connection_errors = (sqlite3.OperationalError,)

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        default = Path(context.state_dir) / context.workflow_id / "events.db"
        self.path = Path(context.option("path", default))
        self.partitions = context.number_option("partitions", 4, minimum=1)
        self.lease_seconds = context.number_option("lease_seconds", 10, minimum=0.5, kind=float)
        self.poll_interval = context.number_option("poll_interval", 0.05, minimum=0.001, kind=float)
        self.max_record_bytes = context.number_option("max_record_bytes", 1_048_576, minimum=1)
        self._connection: sqlite3.Connection | None = None
        self._partitions_of: dict[str, int] = {}

    # -- connection ---------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        if self._connection is None:
            if not self.path.exists():
                raise XflowError(f"the event log {self.path} does not exist",
                                 "run 'xflow setup FILE --transport local' (or 'xflow run') first")
            self._connection = connect(self.path)
        return self._connection

    def _create_log(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = connect(self.path)
            connection.executescript(SCHEMA)
        except (OSError, sqlite3.OperationalError) as exc:
            raise XflowError(f"cannot create the event log {self.path}: {exc}",
                             "choose a writable state folder with --state-dir") from None
        if self._connection is None:
            self._connection = connection
        else:
            connection.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _existing(self) -> dict[str, int]:
        if not self.path.exists():
            return {}
        prefix = f"{self.workflow_id}-"
        rows = self.db.execute("SELECT name, partitions FROM streams").fetchall()
        return {name: parts for name, parts in rows if name.startswith(prefix)}

    # -- setup / teardown ---------------------------------------------------------------------
    def plan_setup(self, events: Sequence[str]) -> list[Step]:
        existing = self._existing()
        wanted = {self.stream_name(e): e for e in events}
        steps = [Step("create", f"stream:{name}", lambda name=name: self._create_stream(name),
                      f"{self.partitions} partitions in {self.path}")
                 for name in wanted if name not in existing]
        steps += [Step("delete", f"stream:{name}", lambda name=name: self._delete_stream(name), "not in the file")
                  for name in existing if name not in wanted]
        return steps

    def plan_teardown(self, events: Sequence[str]) -> list[Step]:
        if not self.path.exists():
            return []
        steps = [Step("delete", f"stream:{name}", lambda name=name: self._delete_stream(name))
                 for name in self._existing()]
        return steps + [Step("delete", f"log:{self.path}", self._remove_log_if_empty)]

    def _create_stream(self, name: str) -> None:
        if not self.path.exists() or self._connection is None:
            self._create_log()
        self.db.execute("INSERT OR IGNORE INTO streams(name, partitions, created_at) VALUES (?, ?, ?)",
                        (name, self.partitions, time.time()))
        self._partitions_of.pop(name, None)

    def _delete_stream(self, name: str) -> None:
        with _immediate(self.db):
            for table in ("records", "offsets", "leases", "dead_letters"):
                self.db.execute(f"DELETE FROM {table} WHERE stream = ?", (name,))
            self.db.execute("DELETE FROM streams WHERE name = ?", (name,))
        self._partitions_of.pop(name, None)

    def _remove_log_if_empty(self) -> None:
        if self.db.execute("SELECT COUNT(*) FROM streams").fetchone()[0]:
            return  # other workflows share this log file
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        if self.path.parent.exists() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()

    # -- publish ------------------------------------------------------------------------------
    def partitions_of(self, stream: str) -> int:
        count = self._partitions_of.get(stream)
        if count is None:
            row = self.db.execute("SELECT partitions FROM streams WHERE name = ?", (stream,)).fetchone()
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
        with _immediate(self.db):
            self.db.executemany("INSERT INTO records(stream, part, key, value, appended_at) VALUES (?, ?, ?, ?, ?)",
                                rows)

    # -- consume ------------------------------------------------------------------------------
    def subscribe(self, group: str, events: Sequence[str]) -> Consumer:
        return LocalConsumer(self, group, [self.stream_name(e) for e in events], {self.stream_name(e): e for e in events})

    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        self.db.execute(
            "INSERT INTO dead_letters(grp, stream, part, position, key, value, reason, at) VALUES (?,?,?,?,?,?,?,?)",
            (group, self.stream_name(delivery.event), int(delivery.partition), int(delivery.position), delivery.key,
             delivery.value, reason, time.time()))

    def dead_letters(self, group: str | None = None) -> list[dict[str, object]]:
        """Dead-lettered deliveries (for inspection and tests)."""
        query = "SELECT grp, stream, part, position, key, value, reason FROM dead_letters"
        rows = self.db.execute(query + (" WHERE grp = ?" if group else "") + " ORDER BY id",
                               (group,) if group else ()).fetchall()
        keys = ("group", "stream", "partition", "position", "key", "value", "reason")
        return [dict(zip(keys, row, strict=True)) for row in rows]


class _immediate:
    """``with _immediate(db):`` a write transaction taken up front (no deadlock on upgrade)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: object, *rest: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


Unit = tuple[str, int]


class LocalConsumer(Consumer):
    """A member of a consumer group; members share (stream, partition) units through leases."""

    def __init__(self, transport: LocalTransport, group: str, streams: list[str], events: dict[str, str]) -> None:
        self.transport, self.group, self.events = transport, group, events
        self.db = connect(transport.path) if transport.path.exists() else transport.db
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.units: list[Unit] = [(s, p) for s in streams for p in range(transport.partitions_of(s))]
        self.fetched: dict[Unit, int] = {}
        self.next_heartbeat = 0.0
        self.next_renewal = 0.0

    def _rebalance(self) -> None:
        now = time.time()
        expires = now + self.transport.lease_seconds
        with _immediate(self.db) as db:
            db.execute("INSERT OR REPLACE INTO members(grp, owner, expires_at) VALUES (?, ?, ?)",
                       (self.group, self.owner, expires))
            db.execute("DELETE FROM members WHERE grp = ? AND expires_at < ?", (self.group, now))
            db.execute("DELETE FROM leases WHERE grp = ? AND expires_at < ?", (self.group, now))
            members = db.execute("SELECT COUNT(*) FROM members WHERE grp = ?", (self.group,)).fetchone()[0]
            share = math.ceil(len(self.units) / max(members, 1))
            db.execute("UPDATE leases SET expires_at = ? WHERE grp = ? AND owner = ?", (expires, self.group, self.owner))
            leased = {(s, p): o for s, p, o in db.execute(
                "SELECT stream, part, owner FROM leases WHERE grp = ?", (self.group,))}
            mine = [u for u in self.units if leased.get(u) == self.owner]
            for unit in mine[share:]:
                db.execute("DELETE FROM leases WHERE grp = ? AND stream = ? AND part = ?", (self.group, *unit))
            mine = mine[:share]
            for unit in self.units:
                if len(mine) >= share:
                    break
                if unit not in leased:
                    db.execute("INSERT INTO leases(grp, stream, part, owner, expires_at) VALUES (?, ?, ?, ?, ?)",
                               (self.group, *unit, self.owner, expires))
                    mine.append(unit)
            committed = {(s, p): pos for s, p, pos in db.execute(
                "SELECT stream, part, position FROM offsets WHERE grp = ?", (self.group,))}
        self.fetched = {u: self.fetched.get(u, committed.get(u, 0)) for u in mine}
        self.next_heartbeat = self.next_renewal = now + self.transport.lease_seconds / 3

    def poll(self, max_records: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            if time.time() >= self.next_heartbeat:
                self._rebalance()
            deliveries: list[Delivery] = []
            for unit, position in self.fetched.items():
                if len(deliveries) >= max_records:
                    break
                rows = self.db.execute(
                    "SELECT id, key, value FROM records WHERE stream = ? AND part = ? AND id > ? ORDER BY id LIMIT ?",
                    (*unit, position, max_records - len(deliveries))).fetchall()
                for record_id, key, value in rows:
                    deliveries.append(Delivery(self.events[unit[0]], str(unit[1]), str(record_id), key, bytes(value)))
                if rows:
                    self.fetched[unit] = rows[-1][0]
            if deliveries or time.monotonic() >= deadline:
                return deliveries
            time.sleep(min(self.transport.poll_interval, max(0.0, deadline - time.monotonic())))

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        latest: dict[Unit, int] = {}
        for delivery in deliveries:
            unit = (self.transport.stream_name(delivery.event), int(delivery.partition))
            latest[unit] = max(latest.get(unit, 0), int(delivery.position))
        if not latest:
            return
        with _immediate(self.db) as db:
            now = time.time()
            if now >= self.next_renewal:
                expires = now + self.transport.lease_seconds
                db.execute("UPDATE leases SET expires_at = ? WHERE grp = ? AND owner = ?", (expires, self.group, self.owner))
                db.execute("UPDATE members SET expires_at = ? WHERE grp = ? AND owner = ?", (expires, self.group, self.owner))
                self.next_renewal = now + self.transport.lease_seconds / 3
            for (stream, part), position in latest.items():
                owner = db.execute("SELECT owner FROM leases WHERE grp = ? AND stream = ? AND part = ?",
                                   (self.group, stream, part)).fetchone()
                if owner is None or owner[0] != self.owner:
                    continue  # the partition moved to another member, which will deliver again
                db.execute(
                    "INSERT INTO offsets(grp, stream, part, position) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(grp, stream, part) DO UPDATE SET position = MAX(position, excluded.position)",
                    (self.group, stream, part, position))

    def close(self) -> None:
        try:
            with _immediate(self.db) as db:
                db.execute("DELETE FROM leases WHERE grp = ? AND owner = ?", (self.group, self.owner))
                db.execute("DELETE FROM members WHERE grp = ? AND owner = ?", (self.group, self.owner))
        except sqlite3.Error:
            pass
        if self.db is not self.transport._connection:
            self.db.close()


@hookimpl
def xflow_transports() -> list[type[Transport]]:
    return [LocalTransport]
