"""Measure what tracking one execution costs with 10 and with 100,000 executions stored.

Starts a throw-away PostgreSQL server (xflow's tests/plugin_servers.py), fills the tables
with COPY (6 events and 5 deliveries per execution, like word_count), then times, for
executions picked at random: recording one execution (6 events + 5 deliveries) and reading
its history (what ``xflow track`` does). Run: ``python plugins/xflow-tracker-postgres/bench_history.py``.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from xflow_tracker_postgres.tracker import PostgresTrackerStore

from xflow.core.interfaces import DeliveryRecord, EventRecord, PluginContext
from xflow.testing import apply_steps, kit_workflow

sys.path.append(str(Path(__file__).resolve().parents[2] / "tests"))
from plugin_servers import running_postgres  # noqa: E402

EVENTS = ["FileUploaded", "FileDownloaded", "FileParsed", "FileAggregated", "FileFiltered", "FileSummarized"]
FUNCTIONS = ["reader", "parser", "combiner", "filter", "summarizer"]


def fill(tracker: PostgresTrackerStore, first: int, count: int) -> None:
    """Add executions ``first``..``first+count-1`` with COPY."""
    conn = tracker._connect()
    wf = tracker.workflow_id
    with conn.transaction():
        with conn.cursor().copy("COPY xflow_events (workflow_id, event_id, execution_id, event, published_at, "
                                "producer, data) FROM STDIN") as copy:
            for n in range(first, first + count):
                for i, event in enumerate(EVENTS):
                    copy.write_row((wf, f"e{n}-{i}", f"x{n}", event, n + i / 10, "bench", '{"n": 1}'))
        with conn.cursor().copy("COPY xflow_deliveries (workflow_id, execution_id, event_id, event, function, "
                                "attempt, status, started_at, duration, logs) FROM STDIN") as copy:
            for n in range(first, first + count):
                for i, function in enumerate(FUNCTIONS):
                    copy.write_row((wf, f"x{n}", f"e{n}-{i}", EVENTS[i], function, 1, "succeeded", n + i / 10 + 0.05,
                                    0.01, []))
    conn.execute("ANALYZE xflow_events")
    conn.execute("ANALYZE xflow_deliveries")


def track_one(tracker: PostgresTrackerStore, name: str) -> tuple[float, float]:
    """Record one execution's events and deliveries, then read its history: (write ms, read ms)."""
    started = time.perf_counter()
    for i, event in enumerate(EVENTS):
        tracker.record_event(EventRecord(name, f"{name}-{i}", event, time.time(), "bench", {"n": 1}))
        if i < len(FUNCTIONS):
            tracker.record_delivery(DeliveryRecord(name, f"{name}-{i}", event, FUNCTIONS[i], 1, "succeeded",
                                                   time.time(), 0.01))
    written = time.perf_counter()
    history = tracker.history(name)
    assert len(history.events) == 6 and len(history.deliveries) == 5
    return (written - started) * 1000, (time.perf_counter() - written) * 1000


def measure(tracker: PostgresTrackerStore, stored: int, rounds: int = 300) -> dict[str, float]:
    rng = random.Random(1)
    reads = []
    for _ in range(rounds):
        n = rng.randrange(stored)
        started = time.perf_counter()
        tracker.history(f"x{n}")
        reads.append((time.perf_counter() - started) * 1000)
    whole = [track_one(tracker, f"new-{stored}-{i}") for i in range(rounds // 3)]
    return {
        "history_ms_median": statistics.median(reads),
        "history_ms_p95": sorted(reads)[int(len(reads) * 0.95)],
        "record_one_execution_ms_median": statistics.median(w for w, _ in whole),
        "track_new_execution_ms_median": statistics.median(r for _, r in whole),
    }


def main() -> None:
    with running_postgres() as dsn, tempfile.TemporaryDirectory() as folder:
        workflow = kit_workflow("bench", Path(folder))
        tracker = PostgresTrackerStore(PluginContext("bench", {"dsn": dsn}, Path(folder)))
        apply_steps(tracker.plan_setup(workflow), tracker)
        fill(tracker, 0, 10)
        small = measure(tracker, 10)
        started = time.perf_counter()
        fill(tracker, 10, 100_000 - 10)
        filled = time.perf_counter() - started
        large = measure(tracker, 100_000)
        tracker.close()
    print(f"filled 100,000 executions (600,000 events, 500,000 deliveries) in {filled:.1f} s")
    print(f"{'measure':34} {'10 stored':>10} {'100,000 stored':>15}")
    for key in small:
        print(f"{key:34} {small[key]:10.3f} {large[key]:15.3f}")


if __name__ == "__main__":
    main()
