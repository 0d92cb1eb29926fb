"""The SQLite files of the embedded backends (the ``local`` event log, the ``sqlite`` tracker).

One place opens them and says what their errors mean to the user:

- a full disk, a lock held too long and an I/O error may pass: :class:`BackendUnavailable` (a worker waits
  and goes on by itself; a command exits 1);
- a file or folder that cannot be written, and a damaged file, need the user: :class:`XflowError` (exit 2);

each in one line naming the file. It also watches that the file and its write-ahead log stay the ones a
connection opened. Deleting ``FILE-wal`` (or replacing ``FILE``) under a running process throws away what the
log held and splits the processes between two logs, which loses records for good. The connection that notices
checkpoints what it still sees into the file, notes the incident beside it (``FILE.incidents``, read by the
tracker to warn that records may be missing) and raises an error: the process stops instead of writing on.

A connection may be shared by the threads of a process (an application publishing from request threads while a
worker runs): each ``using`` block holds the connection's lock, so one thread's transaction never takes in
another thread's statements. ``bench/bench_sqlite_threads.py`` measured this against one connection per thread:
the same throughput (0.8-1.2x from 1 to 32 threads) and a like 99th percentile, with one connection (three open
files) per process instead of one for every thread that ever touched the file, none left behind by threads that end.

Only the standard library is used: the core imports no backend.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xflow.core.errors import BackendUnavailable, XflowError

log = logging.getLogger("xflow")

#: SQLite's primary result codes (the low byte of an extended code)
SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM, SQLITE_READONLY = 3, 5, 6, 7, 8
SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_PROTOCOL = 10, 11, 13, 14, 15
SQLITE_AUTH, SQLITE_NOTADB = 23, 26
SQLITE_IOERR_SHORT_READ = SQLITE_IOERR | (2 << 8)
SQLITE_READONLY_DBMOVED = SQLITE_READONLY | (4 << 8)

#: the messages SQLite gives for those codes (Python < 3.11 has no ``sqlite_errorcode``)
MESSAGES = {
    "database or disk is full": SQLITE_FULL,
    "disk i/o error": SQLITE_IOERR,
    "database is locked": SQLITE_BUSY,
    "database table is locked": SQLITE_LOCKED,
    "attempt to write a readonly database": SQLITE_READONLY,
    "file is not a database": SQLITE_NOTADB,
    "database disk image is malformed": SQLITE_CORRUPT,
    "unable to open database file": SQLITE_CANTOPEN,
    "access permission denied": SQLITE_PERM,
    "out of memory": SQLITE_NOMEM,
}
DAMAGED_HINT = "move it away (what it held is lost) or restore it from a backup, then run 'xflow setup' again"
WRITABLE_HINT = "make the state folder and its files writable by this user, or choose another with --state-dir"
#: how long a connection that found its log removed waits for others before checkpointing what it sees
CHECKPOINT_BUSY_MS = 5000
#: the most parameters one statement of :func:`insert_rows` binds (SQLite's limit: 32766 since 3.32, 999 before)
MAX_PARAMETERS = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
#: the most rows one statement of :func:`insert_rows` inserts
MAX_ROWS_PER_INSERT = 500


def insert_rows(db: sqlite3.Connection, insert: str, width: int, rows: Sequence[Sequence[Any]]) -> None:
    """``insert`` (``"INSERT [OR ...] INTO t(a, b) VALUES "``) for every row of ``width`` values, in order, in as few
    statements as SQLite's parameter limit allows (rows of one statement are inserted one after another, so a
    conflict clause treats them as ``executemany`` would). One statement is one step of SQLite, where
    ``executemany`` takes one per row and gives up the interpreter's lock around each: with other threads busy,
    taking it back a hundred times is what a batch of a hundred rows would spend its time on."""
    per = max(1, min(MAX_ROWS_PER_INSERT, MAX_PARAMETERS // width))
    one = "(" + ",".join("?" * width) + ")"
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per] if start or len(rows) > per else rows
        db.execute(insert + ",".join([one] * len(chunk)), [value for row in chunk for value in row])


class DiskFull(BackendUnavailable):
    """The disk holding a state file is full: workers wait until space is freed; a command exits 1."""


class StateFileError(XflowError):
    """A file in the state folder that cannot be used as it is: damaged, read-only, or removed or replaced
    under a running process. Never the fault of the record being handled: a worker stops on it (exit 2)."""


def error_code(exc: sqlite3.Error) -> int | None:
    """SQLite's extended result code of ``exc``, from the exception or, failing that, its message."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code
    text = str(exc).lower()
    return next((value for message, value in MESSAGES.items() if message in text), None)


def translate(exc: sqlite3.Error, path: Path, role: str) -> XflowError | None:
    """The one-line error that ``exc``, raised on the SQLite file ``path`` (the ``role``, e.g. "event log"), means
    to the user; None for errors that are not about the file (an SQL mistake is a bug and keeps its traceback)."""
    code = error_code(exc)
    if code is None:
        return None
    primary = code & 0xFF
    reason = str(exc)
    name = getattr(exc, "sqlite_errorname", None)
    if name and name not in reason:
        reason = f"{reason}, {name}"
    if primary == SQLITE_FULL or (primary == SQLITE_IOERR and _no_room(path)):  # an I/O error from ENOSPC too
        return DiskFull(f"the disk holding the {role} {path} is full ({reason})",
                                  "free space there, or choose another state folder with --state-dir; workers "
                                  "wait and go on by themselves")
    if primary in (SQLITE_BUSY, SQLITE_LOCKED):
        return BackendUnavailable(f"the {role} {path} stayed locked by another process ({reason})",
                                  "another xflow process holds a long transaction on it; it is tried again")
    if primary == SQLITE_IOERR:
        hint = ("check the disk, and that nothing removes the file or its -wal/-shm files while xflow uses them")
        if code == SQLITE_IOERR_SHORT_READ:
            hint = (f"{path.name}-wal was probably removed while another process used it: stop every xflow process "
                    f"using {path.parent}; the last one to stop writes back what that log held")
        return BackendUnavailable(f"the {role} {path} cannot be read or written ({reason})", hint)
    if primary in (SQLITE_NOMEM, SQLITE_PROTOCOL):
        return BackendUnavailable(f"the {role} {path} is unavailable ({reason})", "it is tried again")
    if code == SQLITE_READONLY_DBMOVED:
        return StateFileError(f"the {role} {path} was moved, deleted or replaced while this process used it ({reason})",
                          "stop every xflow process using it, put the file back, then start them again")
    if primary in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return StateFileError(f"{path} is damaged ({reason}): the {role} cannot use it", DAMAGED_HINT)
    if primary in (SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_PERM, SQLITE_AUTH):
        why = read_only_reason(path)
        if why:
            return StateFileError(f"the {role} {path} cannot be written: {why} ({reason})", WRITABLE_HINT)
        if primary == SQLITE_READONLY:
            return StateFileError(f"the {role} {path} is read-only ({reason})", WRITABLE_HINT)
        return StateFileError(f"the {role} {path} cannot be opened ({reason})", WRITABLE_HINT)
    return None


def read_only_reason(path: Path) -> str | None:
    """Why this process cannot write ``path`` and the files SQLite keeps beside it (-wal, -shm), or None."""
    folder = path.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"{folder} is on a read-only file system"
    except OSError:
        return None
    for candidate, what in ((folder, "its folder"), (path, "the file")):
        if candidate.exists() and not os.access(candidate, os.W_OK):
            return f"{what} is not writable by this user"
    return None


def _no_room(path: Path) -> bool:
    """Whether the file system holding ``path`` is (nearly) full: under 64 KiB left for this user."""
    try:
        status = os.statvfs(path.parent)
    except OSError:
        return False
    return status.f_bavail * status.f_frsize < 65536


Identity = tuple[int, int]


def _identity(path: str | Path) -> Identity | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


@dataclass
class _Opened:
    """What a connection opened: the file, its write-ahead log, and the error once either went away."""

    database: Identity | None
    log: Identity | None
    broken: StateFileError | None = None
    #: held by each ``using`` block and by ``close``: the threads sharing the connection take turns
    lock: threading.RLock = field(default_factory=threading.RLock)


class SqliteFile:
    """One SQLite file shared by many processes: opens connections in WAL mode, names its errors, and watches
    that the file and its write-ahead log are not removed or replaced under an open connection."""

    def __init__(self, path: str | os.PathLike[str], role: str) -> None:
        self.path = Path(path)
        self.role = role
        #: the file and its write-ahead log as text, for the check made on every ``using`` block
        self._path_text = str(self.path)
        self._wal_text = f"{self._path_text}-wal"
        self._opened: dict[int, _Opened] = {}
        #: the incident this process found (noted and written back once, whichever connection found it)
        self._incident: str | None = None
        self._incident_lock = threading.Lock()
        #: the lock of connections this object did not open
        self._lock = threading.RLock()

    @property
    def wal(self) -> Path:
        return Path(self._wal_text)

    @property
    def incidents_path(self) -> Path:
        return Path(f"{self.path}.incidents")

    def error(self, exc: sqlite3.Error) -> XflowError | None:
        return translate(exc, self.path, self.role)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn SQLite errors about the file, raised inside, into one-line errors naming it."""
        try:
            yield
        except sqlite3.Error as exc:
            error = self.error(exc)
            if error is None:
                raise
            raise error from None

    def connect(self) -> sqlite3.Connection:
        """A connection in autocommit mode with WAL and a generous busy timeout (many processes share the file)."""
        with self.errors():
            connection = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
            try:
                connection.execute("PRAGMA busy_timeout=30000")
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                connection.close()
                raise
        self._opened[id(connection)] = _Opened(_identity(self.path), _identity(self.wal))
        return connection

    def lock(self, connection: sqlite3.Connection) -> threading.RLock:
        """The lock that threads sharing ``connection`` take turns with (held by :meth:`using`)."""
        opened = self._opened.get(id(connection))
        return opened.lock if opened is not None else self._lock

    def close(self, connection: sqlite3.Connection | None) -> None:
        """Close ``connection`` (once no thread uses it); if its log was removed meanwhile, write back what it sees
        and note it first."""
        if connection is None:
            return
        with self.lock(connection):
            try:
                self.check(connection)
            except XflowError as exc:
                log.debug("closing a connection to %s: %s", self.path, exc)
            self._opened.pop(id(connection), None)
            with suppress(sqlite3.Error):
                connection.close()

    @contextmanager
    def using(self, connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """``with file.using(db) as db:`` check that the file and its log are still the ones ``db`` opened, then
        run the block, turning SQLite errors about the file into one-line errors. On a full disk, the write-ahead
        log is written back and truncated first, which often frees the room the next try needs.

        The block holds the connection's lock: other threads using the same connection wait until it ends, so a
        transaction begun inside is the only one on the connection and takes in no other thread's statements."""
        with self.lock(connection):
            self.check(connection)
            try:
                yield connection
            except sqlite3.Error as exc:
                error = self.error(exc)
                if isinstance(error, DiskFull):
                    self._make_room(connection)
                if error is None:
                    raise
                raise error from None

    def _make_room(self, connection: sqlite3.Connection) -> None:
        """Best effort after SQLITE_FULL: move the write-ahead log into the file and truncate it (the log holds every
        version of the pages written since the last checkpoint, so it is often much larger than what it adds)."""
        if connection.in_transaction:
            return
        try:
            connection.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS // 5}")
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            log.debug("%s: no room made by a checkpoint: %s", self.path, exc)
        finally:
            with suppress(sqlite3.Error):
                connection.execute("PRAGMA busy_timeout=30000")

    def check(self, connection: sqlite3.Connection) -> None:
        """Raise an XflowError if the file or its write-ahead log was removed or replaced since ``connection``
        opened them (the first time: checkpoint what the connection still sees and note the incident)."""
        opened = self._opened.get(id(connection))
        if opened is None:
            return
        if opened.broken is not None:
            raise opened.broken
        database, wal = _identity(self._path_text), _identity(self._wal_text)
        if opened.log is None and database == opened.database:
            opened.log = wal  # the log was created after the connection opened (a new, empty file)
            return
        if database == opened.database and wal == opened.log:
            return
        if database != opened.database:
            what = (f"{self.path} was deleted" if database is None else f"{self.path} was replaced by another file")
        else:
            what = f"its write-ahead log {self.wal.name} was {'deleted' if wal is None else 'replaced'}"
        with self._incident_lock:
            first, self._incident = self._incident is None, self._incident or what
        if first:
            if database == opened.database:
                self._checkpoint(connection)
            if database is not None:  # the file (the same or another) is there to be read: say what it may miss
                self.note_incident(f"{what} while processes used it")
        opened.broken = StateFileError(
            f"the {self.role} {self.path} cannot be used safely: {what} while this process used it (records written "
            "since its last checkpoint may be lost)",
            f"stop every xflow process using {self.path.parent}, then start them again; never delete a database's "
            "-wal or -shm file while it is in use")
        raise opened.broken

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        """Write back into the file what the removed log held, as this connection still reads it (best effort)."""
        try:
            connection.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
            _, frames, done = connection.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
            log.warning("%s: its write-ahead log was removed under this process, which wrote back the %s of its %s "
                        "frames it still saw", self.path, done, frames)
        except sqlite3.Error as exc:
            log.warning("%s: could not write back its removed write-ahead log: %s", self.path, exc)

    def note_incident(self, what: str) -> None:
        """Append to ``FILE.incidents`` what happened to the file (best effort: the disk may be the problem)."""
        try:
            with self.incidents_path.open("a", encoding="utf-8") as file:
                file.write(json.dumps({"at": time.time(), "pid": os.getpid(), "what": what}) + "\n")
        except OSError as exc:
            log.warning("cannot note the incident on %s in %s: %s", self.path, self.incidents_path, exc)

    def incidents(self) -> list[dict[str, Any]]:
        """The incidents noted beside the file, oldest first ([] when none)."""
        try:
            text = self.incidents_path.read_text(encoding="utf-8")
        except OSError:
            return []
        found = []
        for line in text.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and isinstance(item.get("at"), int | float) and isinstance(item.get("what"), str):
                found.append(item)
        return found

    def remove(self) -> None:
        """Delete the file, its -wal and -shm files and its incident notes (after every connection is closed)."""
        for path in (self.path, self.wal, Path(f"{self.path}-shm"), self.incidents_path):
            path.unlink(missing_ok=True)


class SharedConnection:
    """The connection a plugin's threads share to one :class:`SqliteFile`: opened on first use (an
    :class:`XflowError` saying how to create the file when it does not exist), used by one thread at a time
    (:meth:`using`), closed once.

    ``missing_hint`` is the hint given when the file does not exist ("run 'xflow setup' first")."""

    def __init__(self, file: SqliteFile, missing_hint: str) -> None:
        self.file = file
        self.missing_hint = missing_hint
        self._connection: sqlite3.Connection | None = None
        self._opening = threading.Lock()  # threads opening the connection at once open one

    @property
    def connection(self) -> sqlite3.Connection | None:
        """The open connection, or None."""
        return self._connection

    def get(self) -> sqlite3.Connection:
        """The connection, opened if it is not."""
        connection = self._connection
        if connection is None:
            with self._opening:
                if self._connection is None:
                    if not self.file.path.exists():
                        raise XflowError(f"the {self.file.role} {self.file.path} does not exist", self.missing_hint)
                    self._connection = self.file.connect()
                connection = self._connection
        return connection

    def adopt(self, connection: sqlite3.Connection) -> bool:
        """Share ``connection`` (one that created the file, say) unless one is open already; False then (the caller
        closes its own)."""
        with self._opening:
            if self._connection is None:
                self._connection = connection
                return True
        return False

    @contextmanager
    def using(self) -> Iterator[sqlite3.Connection]:
        """``with shared.using() as db:`` the connection, for this thread alone, checked to be on the file it opened;
        SQLite errors come out as one-line errors (see :meth:`SqliteFile.using`)."""
        with self.file.using(self.get()) as db:
            yield db

    def close(self) -> None:
        """Close the connection (once no thread uses it); the next use opens another."""
        with self._opening:
            connection, self._connection = self._connection, None
        self.file.close(connection)
