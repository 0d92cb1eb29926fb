"""Benchmark of batched settlement in the trackers: records written one by one beside the same records in batches.

    python bench/bench_tracker.py [--deliveries 3000] [--batch 100] [--no-postgres]

For each store it times, on fresh workflows: recording N deliveries with ``record_delivery`` one by one and with
``record_deliveries`` in batches; the same for N events (``record_event`` / ``record_events``); a batch's events and
deliveries written with those two batch calls beside one ``record_batch`` (one transaction in sqlite and postgres;
"records/s" counts the pairs); and asking whether each of N keys has succeeded, with ``has_succeeded`` per key and
with ``succeeded_among`` per batch. It prints records/s for each and the ratio batched / one by one, measured in the
same run (machines are noisy: read the ratios, and run it a few times).

Stores: ``sqlite`` always; ``postgres`` (the plugin in ``plugins/xflow-tracker-postgres``) against
``XFLOW_TEST_POSTGRES_DSN`` when set, else a throw-away server started as the plugin's tests do (skipped when the
plugin or PostgreSQL is not installed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from xflow.core.interfaces import DeliveryRecord, EventRecord, PluginContext, TrackerStore
from xflow.testing import apply_steps, kit_workflow, new_workflow_id
from xflow.trackers.sqlite import SqliteTrackerStore

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))

Factory = Callable[[str], TrackerStore]


def deliveries(count: int, tag: str) -> list[DeliveryRecord]:
    """Like a worker's: one execution per 10 events, about one retry in seven."""
    now = time.time()
    return [DeliveryRecord(f"{tag}-x{i // 10}", f"{tag}-e{i}", "FileParsed", "combiner", 1,
                           "retrying" if i % 7 == 0 else "succeeded", now + i / 1000, 0.01,
                           "ValueError: bench" if i % 7 == 0 else None, ("INFO line one", "INFO line two"))
            for i in range(count)]


def events(count: int, tag: str) -> list[EventRecord]:
    now = time.time()
    return [EventRecord(f"{tag}-x{i // 10}", f"{tag}-e{i}", "FileParsed", now + i / 1000, "parser",
                        {"words": ["a", "b", "c"], "i": i}) for i in range(count)]


@contextlib.contextmanager
def fresh(factory: Factory, folder: Path) -> Iterator[TrackerStore]:
    workflow = kit_workflow(new_workflow_id("bench"), folder / new_workflow_id("wf"))
    tracker = factory(workflow.id)
    apply_steps(tracker.plan_setup(workflow), tracker)
    try:
        yield tracker
    finally:
        apply_steps(tracker.plan_teardown(workflow), tracker)
        tracker.close()


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def measure(name: str, factory: Factory, folder: Path, count: int, batch: int) -> None:
    print(f"\n{name}: {count} records, batches of {batch}")
    print(f"  {'what':<34}{'one by one /s':>15}{'batched /s':>13}{'ratio':>8}")

    def row(what: str, single: float, batched: float) -> None:
        print(f"  {what:<34}{count / single:>15,.0f}{count / batched:>13,.0f}{single / batched:>7.1f}x")

    with fresh(factory, folder) as tracker:
        single = timed(lambda: [tracker.record_delivery(r) for r in deliveries(count, "one")])
        batched = timed(lambda: [tracker.record_deliveries(c) for c in chunks(deliveries(count, "many"), batch)])
        row("record_delivery / record_deliveries", single, batched)

        single = timed(lambda: [tracker.record_event(r) for r in events(count, "one")])
        batched = timed(lambda: [tracker.record_events(c) for c in chunks(events(count, "many"), batch)])
        row("record_event / record_events", single, batched)

        def apart(tag: str) -> None:
            for e, d in zip(chunks(events(count, tag), batch), chunks(deliveries(count, tag), batch), strict=True):
                tracker.record_events(e)
                tracker.record_deliveries(d)

        def together(tag: str) -> None:
            for e, d in zip(chunks(events(count, tag), batch), chunks(deliveries(count, tag), batch), strict=True):
                tracker.record_batch(e, d)

        single = timed(lambda: apart("apart"))
        batched = timed(lambda: together("together"))
        row("events+deliveries: 2 calls / 1", single, batched)

        keys = [(r.execution_id, r.event_id, r.function) for r in deliveries(count, "one")]
        answers: list[object] = []
        single = timed(lambda: answers.append({k for k in keys if tracker.has_succeeded(*k)}))
        batched = timed(lambda: answers.append(set().union(*(tracker.succeeded_among(c) for c in chunks(keys, batch)))))
        assert answers[0] == answers[1] and len(answers[0]) == count - len(range(0, count, 7))
        row("has_succeeded / succeeded_among", single, batched)


@contextlib.contextmanager
def postgres_dsn() -> Iterator[str | None]:
    given = os.environ.get("XFLOW_TEST_POSTGRES_DSN")
    if given:
        yield given
        return
    try:
        from plugin_servers import running_postgres

        server = running_postgres()
        dsn = server.__enter__()
    except BaseException as exc:  # pytest.fail (not installed) is a BaseException
        print(f"\npostgres: skipped, no server ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        yield None
        return
    try:
        yield dsn
    finally:
        server.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=3000, help="records of each kind (default 3000)")
    parser.add_argument("--batch", type=int, default=100, help="records per batch (default 100)")
    parser.add_argument("--no-postgres", action="store_true", help="measure sqlite only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xflow-bench-tracker-") as tmp:
        folder = Path(tmp)
        measure("sqlite", lambda wf: SqliteTrackerStore(PluginContext(wf, {}, folder / "state")), folder,
                args.deliveries, args.batch)
        if args.no_postgres:
            return
        try:
            from xflow_tracker_postgres.tracker import PostgresTrackerStore
        except ImportError:
            print("\npostgres: skipped (pip install -e plugins/xflow-tracker-postgres)")
            return
        with postgres_dsn() as dsn:
            if dsn is not None:
                measure("postgres", lambda wf: PostgresTrackerStore(PluginContext(wf, {"dsn": dsn}, folder)), folder,
                        args.deliveries, args.batch)


if __name__ == "__main__":
    main()
