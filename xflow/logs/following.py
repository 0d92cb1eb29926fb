"""Following a workflow's log records as they come (``xflow logs --follow``): each tick reads only what is new.

- ``file``: each file is read from where the last tick stopped (an offset per file, kept by inode, so a file renamed
  by rotation goes on from where it was); a rotated file already read costs a ``stat``.
- ``tracker``: the histories of the executions still *active* are read again: those started since the newest one
  seen (less :data:`STARTED_MARGIN`), and those whose last attempt ended less than :data:`QUIET_SECONDS` ago (less
  than :data:`STALE_SECONDS` ago while their status is ``running``); at most :data:`MAX_ACTIVE` of them (the least
  recently active go first). An execution that went quiet is not read again (a re-drive of it later, or a retry due
  more than :data:`STALE_SECONDS` after its last attempt, is not followed).
- ``cloudwatch``: FilterLogEvents from the start of the previous tick (less :data:`CLOUDWATCH_MARGIN`, for ingestion
  delays) on.

What was printed is remembered only as long as it can come back (the active executions' attempts, the records of
the last two CloudWatch windows), so memory stays bounded however long it follows.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from xflow.core.errors import XflowError
from xflow.logs.reading import LogReader, Query, merged, rotated_files
from xflow.logs.records import LogRecord, records_of

#: new executions are looked for among those started since the newest seen less this, in seconds
STARTED_MARGIN = 60.0
#: a settled execution is read again until its last attempt ended this long ago, in seconds
QUIET_SECONDS = 60.0
#: a running execution is read again until its last attempt ended this long ago, in seconds
STALE_SECONDS = 600.0
#: executions read again each tick, at most
MAX_ACTIVE = 1000
#: executions known to be settled, remembered so as not to print them again, at most
MAX_RETIRED = 10_000
#: how far before the previous tick CloudWatch Logs is read again, in seconds
CLOUDWATCH_MARGIN = 120.0


class FileTail:
    """The new complete lines of a ``file`` route's files since the last call."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        #: (device, inode) -> bytes already read
        self.offsets: dict[tuple[int, int], int] = {}

    def read(self) -> list[LogRecord]:
        found: list[LogRecord] = []
        present: set[tuple[int, int]] = set()
        for path in self.paths:
            for file in rotated_files(path):
                found.extend(self._new_lines(file, present))
        self.offsets = {key: offset for key, offset in self.offsets.items() if key in present}
        return found

    def _new_lines(self, file: Path, present: set[tuple[int, int]]) -> list[LogRecord]:
        try:
            with file.open("rb") as stream:
                info = os.fstat(stream.fileno())
                key = (info.st_dev, info.st_ino)
                present.add(key)
                offset = self.offsets.get(key, 0)
                if info.st_size < offset:  # truncated: read it again from the start
                    offset = 0
                if info.st_size == offset:
                    return []
                stream.seek(offset)
                data = stream.read()
        except FileNotFoundError:  # rotated away between the listing and the reading
            return []
        except OSError as exc:
            raise XflowError(f"cannot read {file}: {exc}") from None
        complete = data.rfind(b"\n") + 1  # a line still being written is read at the next tick
        self.offsets[key] = offset + complete
        return list(parse_lines(data[:complete]))


def parse_lines(data: bytes) -> Iterator[LogRecord]:
    """The records of JSON lines; lines that are not records are skipped."""
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            yield LogRecord.from_dict(json.loads(line))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue


class TrackerTail:
    """The new attempts' records of the executions still active in the tracker."""

    def __init__(self, reader: LogReader, query: Query) -> None:
        self.reader, self.query = reader, query
        #: execution id -> (when its last attempt ended or it was found, epoch seconds; the attempts printed)
        self.active: collections.OrderedDict[str, tuple[float, set[tuple[Any, ...]]]] = collections.OrderedDict()
        self.retired: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.newest_started: float | None = None

    def read(self) -> list[LogRecord]:
        for execution_id in self._new_executions():
            if execution_id not in self.active and execution_id not in self.retired:
                self.active[execution_id] = (time.time(), set())
        found: list[LogRecord] = []
        for execution_id in list(self.active):
            found.extend(self._read_execution(execution_id))
        while len(self.active) > MAX_ACTIVE:
            self._retire(next(iter(self.active)))
        return found

    def _new_executions(self) -> list[str]:
        if self.query.execution_id is not None:
            return [self.query.execution_id]
        infos = self.reader.executions_since(None if self.newest_started is None
                                             else self.newest_started - STARTED_MARGIN)
        if infos:
            newest = max(info.started_at for info in infos)
            self.newest_started = newest if self.newest_started is None else max(self.newest_started, newest)
        return [info.execution_id for info in reversed(infos)]  # oldest first: the newest are retired last

    def _read_execution(self, execution_id: str) -> list[LogRecord]:
        from xflow.core.tracking import summarize

        engine = self.reader.engine
        found_at, printed = self.active[execution_id]
        history = engine.tracker.history(execution_id)
        found: list[LogRecord] = []
        for delivery in history.deliveries:
            key = (delivery.event_id, delivery.function, delivery.attempt, delivery.status)
            if key in printed:
                continue
            printed.add(key)
            if not self.query.functions or delivery.function in self.query.functions:
                found.extend(r for r in records_of(engine.workflow.id, delivery) if self.query.wants(r))
        if found:
            self.active.move_to_end(execution_id)
        if self.query.execution_id is None:
            ends = [d.started_at + max(0.0, d.duration) for d in history.deliveries]
            quiet = time.time() - (max(ends) if ends else found_at)
            if quiet >= STALE_SECONDS or ends and quiet >= QUIET_SECONDS and \
                    summarize(engine.workflow, execution_id, history)["status"] != "running":
                self._retire(execution_id)
        return found

    def _retire(self, execution_id: str) -> None:
        del self.active[execution_id]
        self.retired[execution_id] = None
        while len(self.retired) > MAX_RETIRED:
            self.retired.popitem(last=False)


class CloudWatchTail:
    """The records of the log events since shortly before the previous read."""

    def __init__(self, reader: LogReader, query: Query) -> None:
        self.reader, self.query = reader, query
        self.window_start = query.since
        #: the keys printed in the last two windows: what a window that overlaps the previous one can bring again
        self.printed: list[set[tuple[Any, ...]]] = [set(), set()]

    def read(self) -> list[LogRecord]:
        started = time.time()
        records = list(self.reader.cloudwatch_records(self.query, self.window_start))
        fresh = [r for r in records if r.key not in self.printed[0] and r.key not in self.printed[1]
                 and self.query.wants(r)]
        self.printed = [self.printed[1], {r.key for r in records}]
        self.window_start = max(self.query.since or 0.0, started - CLOUDWATCH_MARGIN)
        return fresh


def follow(reader: LogReader, query: Query, interval: float = 1.0, stop: Any = None,
           caught_up: Callable[[], None] | None = None) -> Iterator[LogRecord]:
    """The records ``query`` wants, then every new one as it comes (looked for every ``interval`` seconds), until
    ``stop`` (an Event) is set or the caller stops iterating. ``caught_up`` is called once, after the records there
    were when it started. Each tick's records come in time order."""
    tail: FileTail | TrackerTail | CloudWatchTail
    if reader.source == "file":
        tail = FileTail(reader.files)
    elif reader.source == "cloudwatch":
        tail = CloudWatchTail(reader, query)
    else:
        tail = TrackerTail(reader, query)
    while True:
        yield from merged(tail.read(), query)
        if caught_up is not None:
            caught_up()
            caught_up = None
        if stop is not None and stop.wait(interval):
            return
        if stop is None:
            time.sleep(interval)
