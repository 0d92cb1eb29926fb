"""``xflow logs --follow`` reads only what is new at each tick: a file route's files from where the last tick stopped
(rotation included), and the tracker's new or still active executions, not every history again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from xflow import Engine
from xflow.core.interfaces import DeliveryRecord, EventRecord
from xflow.logs import LogRecord
from xflow.logs.reading import LogReader, Query, follow
from xflow.testing.logs import kit_records

FLOW = """
workflow_id: followed
functions:
  - name: only
    handler: h.only
    source: .
subscriptions:
  - event: Started
    subscribers: [only]
"""
HANDLERS = {"h.py": "def only(event, ctx):\n    pass\n"}


class Ticks:
    """A stand-in for the stop Event: runs ``steps[n]`` between tick n and tick n+1, and stops after the last."""

    def __init__(self, steps: list[Callable[[], None]]) -> None:
        self.steps = steps
        self.count = 0

    def wait(self, timeout: float) -> bool:
        if self.count >= len(self.steps):
            return True
        self.steps[self.count]()
        self.count += 1
        return False


@pytest.fixture
def parsed(monkeypatch) -> list[int]:
    """How many records were parsed from JSON lines (one element per record)."""
    calls: list[int] = []
    original = LogRecord.from_dict.__func__  # type: ignore[attr-defined]

    def counting(cls: type[LogRecord], data: Any) -> LogRecord:
        calls.append(1)
        return original(cls, data)

    monkeypatch.setattr(LogRecord, "from_dict", classmethod(counting))
    return calls


def _append(path: Path, records: list[LogRecord], end: str = "\n") -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write("".join(record.to_json() + "\n" for record in records)[:-1] + end)


def test_follow_reads_a_file_route_from_where_it_stopped(make_workflow, tmp_path: Path, parsed: list[int]) -> None:
    path = make_workflow(FLOW + "logging:\n  routes:\n    - {name: file, options: {path: l.jsonl}}\n", HANDLERS)
    log = path.parent / "l.jsonl"
    _append(log, kit_records("followed", "old", 300))
    late = kit_records("followed", "late", 6)
    per_tick: list[int] = []

    def tick(action: Callable[[], None]) -> Callable[[], None]:
        def step() -> None:
            per_tick.append(len(parsed))
            parsed.clear()
            action()
        return step

    steps = [
        tick(lambda: _append(log, late[:2])),
        tick(lambda: _append(log, late[2:3], end="")),  # a line still being written: not read yet
        tick(lambda: _append(log, [], end="\n")),  # now it is complete
        tick(lambda: (log.rename(log.with_name("l.jsonl.1")), _append(log, late[3:5]))),  # rotated, then written
        tick(lambda: None),
        tick(lambda: None),
    ]
    with Engine(path, state_dir=tmp_path / ".xflow") as engine:
        reader = LogReader(engine, "file")
        found = [r.execution_id + ":" + str(r.seq) for r in follow(reader, Query(), 0.01, Ticks(steps))]
    assert found == [f"old:{n}" for n in range(300)] + [f"late:{n}" for n in range(5)]
    per_tick.append(len(parsed))
    assert per_tick[0] == 300 and per_tick[1:] == [2, 0, 1, 2, 0, 0]  # each line parsed once, the rotated file too


def test_follow_reads_again_only_the_tracker_executions_still_active(cli, make_workflow, tmp_path: Path) -> None:
    path = make_workflow(FLOW, HANDLERS)
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite")
    with Engine(path, state_dir=tmp_path / ".xflow", tracker="sqlite") as engine:
        tracker = engine.tracker
        settled = time.time() - 2 * 3600

        def execution(name: str, at: float, status: str = "succeeded", attempt: int = 1) -> None:
            tracker.record_event(EventRecord(name, f"ev-{name}", "Started", at))
            tracker.record_delivery(DeliveryRecord(name, f"ev-{name}", "Started", "only", attempt, status, at, 0.01,
                                                   None if status == "succeeded" else "boom", (f"INFO {name} {attempt}",)))

        for n in range(40):
            execution(f"old-{n}", settled + n)
        reads: list[str] = []
        history = tracker.history

        def counting(execution_id: str) -> Any:
            reads.append(execution_id)
            return history(execution_id)

        tracker.history = counting  # type: ignore[method-assign]
        per_tick: list[list[str]] = []

        def step(action: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                per_tick.append(list(reads))
                reads.clear()
                action()
            return run

        now = time.time()
        steps = [step(lambda: None),
                 step(lambda: execution("new-1", now, "retrying")),
                 step(lambda: execution("new-1", now, "succeeded", attempt=2)),
                 step(lambda: None)]
        reader = LogReader(engine, "tracker")
        found = [json.dumps([r.execution_id, r.attempt, r.kind]) for r in follow(reader, Query(), 0.01, Ticks(steps))]
        per_tick.append(list(reads))
    assert len(per_tick[0]) == 40  # the first tick reads what there is
    assert per_tick[1:] == [[], ["new-1"], ["new-1"], ["new-1"]]  # then only the execution still active
    lines = [json.loads(f) for f in found]
    assert lines[-4:] == [["new-1", 1, "line"], ["new-1", 1, "outcome"], ["new-1", 2, "line"], ["new-1", 2, "outcome"]]
    assert len(lines) == 40 * 2 + 4  # each record once
