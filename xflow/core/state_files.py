"""Telling a damaged SQLite state file (the embedded log, the sqlite tracker) from a bug, as a one-line error."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from xflow.core.errors import XflowError

SQLITE_HEADER = b"SQLite format 3\x00"


def _sqlite_damage(path: Path, thorough: bool = True) -> str | None:
    """Why the SQLite file at ``path`` is damaged, or None when it is missing, empty or sound.

    Without ``thorough``, only the file's header is read (cheap, and no SQLite connection leaves files behind).
    """
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError:
        return None
    if not header:
        return None
    if header != SQLITE_HEADER:
        return "it is not an SQLite database"
    if not thorough:
        return None
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("PRAGMA quick_check(1)").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc) if type(exc) is sqlite3.DatabaseError else None
    if rows and rows[0][0] != "ok":
        return f"integrity check: {rows[0][0]}"
    return None


def damaged_file(plugins: Iterable[tuple[str, str, object]], thorough: bool = True) -> XflowError | None:
    """The error naming the first plugin file (a plugin's ``path``: the embedded log, the sqlite tracker) that is
    not a sound SQLite database, or None. ``plugins`` are ``(kind, name, instance or None)``."""
    for kind, name, instance in plugins:
        path = getattr(instance, "path", None)
        if not isinstance(path, str | os.PathLike):
            continue
        reason = _sqlite_damage(Path(path), thorough)
        if reason is not None:
            return XflowError(f"{path} is damaged ({reason}): the {kind} {name!r} cannot use it",
                              "move it away (what it held is lost) or restore it from a backup, then run "
                              "'xflow setup' again")
    return None


def damaged_error(exc: BaseException, plugins: Iterable[tuple[str, str, object]], folder: Path) -> XflowError | None:
    """A user-facing error when ``exc`` says a plugin's SQLite file is damaged (it is the user's file, not a bug);
    ``folder`` is the workflow's state folder, named when no single file is found damaged."""
    if type(exc) is not sqlite3.DatabaseError:  # corruption and "not a database" only; not locks or SQL errors
        return None
    return damaged_file(plugins) or XflowError(
        f"a database file of the state is damaged: {exc}",
        f"look in {folder}; move the damaged file away (what it held is lost) or "
        "restore it from a backup, then run 'xflow setup' again")


@contextmanager
def state_files(damaged: Callable[[BaseException], XflowError | None]) -> Iterator[None]:
    """Turn "file is not a database" and the like, raised by any plugin call inside, into a one-line error."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        error = damaged(exc)
        if error is None:
            raise
        raise error from None
