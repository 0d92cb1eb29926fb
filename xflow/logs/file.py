"""The ``file`` log destination: JSON lines, one record per line, rotated by size.

The file is ``path`` (relative to the workflow file's folder; default ``STATE_DIR/WORKFLOW/logs.jsonl``). When a
write would take it past ``max_bytes`` it is renamed ``path.1`` (``path.1`` to ``path.2``, and so on up to
``backups``; the oldest is removed) and a new one is started: the standard library's
:class:`logging.handlers.RotatingFileHandler` does it. Each process should write its own file (rotation is not
coordinated between processes): give each worker its own ``path``. ``xflow logs`` reads these files (the rotated
ones too) when the workflow has a ``file`` route whose file exists.
"""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from xflow.core.errors import XflowError
from xflow.core.interfaces import PluginContext
from xflow.core.options import Option
from xflow.logs.destination import LogDestination
from xflow.logs.records import LogRecord

DEFAULT_NAME = "logs.jsonl"


def route_path(given: str | None, context: PluginContext) -> Path:
    """The file of a ``file`` route: ``given`` (relative to the workflow file's folder, like ``source:``; to the
    current folder for a destination made without a workflow), or ``STATE_DIR/WORKFLOW/logs.jsonl``."""
    if not given:
        return Path(context.state_dir) / context.workflow_id / DEFAULT_NAME
    path = Path(given).expanduser()
    workflow = context.workflow
    if not path.is_absolute() and workflow is not None:
        path = Path(workflow.path).parent / path
    return path


class FileDestination(LogDestination):
    name: ClassVar[str] = "file"
    description: ClassVar[str] = "JSON lines in a local file, rotated by size"
    options: ClassVar[tuple[Option, ...]] = (
        Option("path", str, None, "the file (default STATE_DIR/WORKFLOW/logs.jsonl); relative to the workflow file"),
        Option("max_bytes", int, 10_000_000, "rotate when the file would grow past this many bytes (0: never)",
               minimum=0),
        Option("backups", int, 5, "rotated files kept: path.1 (newest) to path.N", minimum=1),
    )
    batch_size: ClassVar[int] = 500
    linger: ClassVar[float] = 0.1

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.path = route_path(self.context.option("path"), self.context)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = logging.handlers.RotatingFileHandler(
                self.path, maxBytes=self.context.option("max_bytes"), backupCount=self.context.option("backups"),
                encoding="utf-8", errors="backslashreplace")
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            raise XflowError(f"log destination 'file' cannot open {str(self.path)!r}: {exc}",
                             "choose a writable path with the route's path option") from None
        self.max_bytes = self.context.option("max_bytes")
        self._size: int | None = None
        #: the records of a batch written before its rollover failed (the router sends the whole batch again)
        self._written: list[LogRecord] = []

    def send(self, records: Sequence[LogRecord]) -> None:
        # the handler rotates; the size is counted here (its shouldRollover formats and stats per record), and lines
        # are written here (its emit() swallows write errors, which must reach the router: it sends them again)
        handler = self._handler
        if self._written:  # the router sends again the batch whose rollover failed: its first records are written
            done = {id(record) for record in self._written}  # the same objects: the list keeps them alive
            skip = 0
            while skip < len(records) and id(records[skip]) in done:
                skip += 1
            records, self._written = records[skip:], []
            if not records:
                return
        if handler.stream is None:
            handler.stream = handler._open()
        if self._size is None:
            self._size = handler.stream.seek(0, 2)
        try:
            self._write(records)
        except OSError:
            self._size = None  # counted again from the file before the next try
            raise

    def _write(self, records: Sequence[LogRecord]) -> None:
        handler = self._handler
        assert self._size is not None and handler.stream is not None
        pending: list[str] = []
        start = 0  # records[start:] are not written yet
        for index, record in enumerate(records):
            line = record.to_json() + "\n"
            size = len(line) if line.isascii() else len(line.encode("utf-8", "backslashreplace"))
            if self.max_bytes and self._size + size > self.max_bytes and self._size > 0:
                if pending:
                    handler.stream.write("".join(pending))
                    pending.clear()
                    start = index
                try:
                    handler.doRollover()  # closes the file (its lines are in it), reopens handler.stream
                except OSError:
                    # the lines before are in the old file: remembered, so that sending the batch again skips them
                    self._written = list(records[:start])
                    raise
                self._size = 0
            pending.append(line)
            self._size += size
        stream = handler.stream
        assert stream is not None
        stream.write("".join(pending))
        stream.flush()

    def close(self) -> None:
        self._handler.close()
