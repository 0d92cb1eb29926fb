"""Benchmark of the embedded backend: xflow's worker beside hand-written sqlite3 loops doing the same reads and writes.

    python bench/bench_local.py [--executions 3000] [--concurrency-events 200] [--hol-executions 1000] [--repeat 3]
                                [--quick]

Cases, each measured in the same run so that the ratios hold on a busy machine:

- publish: ``LocalTransport.publish`` beside plain INSERTs into the same schema;
- end to end: a 3-step no-op chain over ``--executions`` executions, run by ``Engine.work`` with
  ``isolation: thread`` and with ``isolation: process``, beside a hand-written loop doing the same reads and
  writes with one transaction per batch of 100 on each file (read, decode, dedup lookup, record event and
  delivery, encode, append, move the offset). Rates are deliveries/s from the first delivery's start to the last
  one's end, as the tracker recorded them (start-up is not counted);
- concurrency: a handler that sleeps 50 ms, ``--concurrency-events`` events, ``concurrency: 8`` beside 1;
- head-of-line: ``--hol-executions`` executions of the chain with one of them failing on the second step
  (``retries: 5``, ``backoff_seconds: 1``): how long the others take, beside the same run without it.

The end-to-end and head-of-line cases run ``--repeat`` rounds (each measuring both sides anew) and print every
round and the median. The tracker records an attempt as starting when its handler began, so a call that waited for a
free slot is not counted from when it was handed over. Everything runs under the garbage-collector settings of
``xflow worker`` (:mod:`xflow.core.collector`), xflow and the hand-written loops alike. Not a test: machines are
noisy, so read the ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any

from xflow import Engine
from xflow.core.collector import worker_collector
from xflow.core.interfaces import PluginContext, Record
from xflow.core.runtime import encode_event, new_event_id
from xflow.core.wire import derive_event_id
from xflow.trackers.sqlite import SCHEMA as TRACKER_SCHEMA
from xflow.transports.local import SCHEMA, LocalTransport, connect


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def values(insert: str, width: int, rows: list[tuple[Any, ...]], db: sqlite3.Connection) -> None:
    """The hand loops' batch insert: every row in one ``INSERT ... VALUES (...), (...)`` statement (a batch here is at
    most a few hundred rows, well within SQLite's parameter limit), as xflow writes its batches."""
    if rows:
        db.execute(insert + ",".join(["(" + ",".join("?" * width) + ")"] * len(rows)), [v for row in rows for v in row])


# -- publish ------------------------------------------------------------------------------------------------------------
def raw_publish(path: Path, payloads: list[bytes], batch: int) -> float:
    """The ceiling: the same INSERTs into the same schema, with plain sqlite3."""
    db = connect(path)
    db.executescript(SCHEMA)
    start = time.perf_counter()
    for i in range(0, len(payloads), batch):
        db.execute("BEGIN IMMEDIATE")
        values("INSERT INTO records(stream, part, key, value, appended_at) VALUES ", 5,
               [("s", zlib.crc32(b"k") % 4, "k", p, time.time()) for p in payloads[i:i + batch]], db)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def xflow_publish(folder: Path, payloads: list[bytes], batch: int) -> float:
    transport = LocalTransport(PluginContext("bench", {}, folder))
    for step in transport.plan_setup(["E"]):
        transport.execute(step)
    start = time.perf_counter()
    for i in range(0, len(payloads), batch):
        transport.publish("E", [Record("k", p) for p in payloads[i:i + batch]])
    elapsed = time.perf_counter() - start
    transport.close()
    return elapsed


# -- end to end ---------------------------------------------------------------------------------------------------------
CHAIN = """
workflow_id: bench_chain
lambdas:
  - {name: s1, source: steps.py, handler: step, publishes: [B]}
  - {name: s2, source: steps.py, handler: step, publishes: [C], retries: 5}
  - {name: s3, source: steps.py, handler: step, publishes: [D]}
subscriptions:
  - {name: A, subscribers: [s1]}
  - {name: B, subscribers: [s2]}
  - {name: C, subscribers: [s3]}
"""

STEPS = """
def step(event, ctx):
    if event.get("fail") and ctx.function_name == "s2":
        raise RuntimeError("this execution fails on s2")
    return {"n": event.get("n", 0) + 1, "fail": bool(event.get("fail"))}
"""

SLEEPY = """
workflow_id: bench_sleepy
lambdas:
  - {name: nap, source: nap.py, handler: nap, concurrency: CONCURRENCY}
subscriptions:
  - {name: Tick, subscribers: [nap]}
"""


def _tracker_span(folder: Path, workflow_id: str, executions: set[str] | None = None) -> tuple[int, float]:
    """How many deliveries succeeded, and the seconds from the first one's start to the last one's end."""
    with sqlite3.connect(folder / "state" / workflow_id / "tracker.db") as db:
        rows = db.execute("SELECT execution_id, started_at, duration FROM deliveries WHERE status = 'succeeded'").fetchall()
    rows = [r for r in rows if executions is None or r[0] in executions]
    if not rows:
        return 0, 0.0
    return len(rows), max(s + (d or 0.0) for _, s, d in rows) - min(s for _, s, _ in rows)


class _Count:
    """Rows of a tracker table that match ``where``, counted as they are added (those past the last rowid seen): the
    check ``Engine.work(until=...)`` makes every poll interval costs as little at the end of a run as at its start
    (a COUNT over the whole table would take more of the worker's time the longer the run)."""

    def __init__(self, folder: Path, workflow_id: str, table: str, where: str) -> None:
        self.path, self.table, self.where = folder / "state" / workflow_id / "tracker.db", table, where
        self.db: sqlite3.Connection | None = None
        self.last, self.count = 0, 0

    def __call__(self) -> int:
        try:
            if self.db is None:
                self.db = sqlite3.connect(self.path)
            top = self.db.execute(f"SELECT MAX(rowid) FROM {self.table}").fetchone()[0] or 0
            self.count += self.db.execute(f"SELECT COUNT(*) FROM {self.table} WHERE rowid > ? AND rowid <= ? "
                                          f"AND {self.where}", (self.last, top)).fetchone()[0]
            self.last = top
        except sqlite3.Error:
            pass
        return self.count

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def xflow_chain(folder: Path, executions: int, isolation: str, failing: bool = False,
                options: dict[str, Any] | None = None) -> tuple[int, float]:
    """The chain run by Engine.work; (deliveries of the good executions, their span in seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "steps.py").write_text(STEPS)
    (folder / "chain.yaml").write_text(textwrap.dedent(CHAIN))
    engine = Engine(folder / "chain.yaml", state_dir=folder / "state",
                    options={"provider": {"isolation": isolation, **(options or {})}})
    engine.setup()
    ids = [engine.publish("A", {"n": 0}) for _ in range(executions)]
    if failing:
        engine.publish("A", {"n": 0, "fail": True}, "poison")
    expected = 3 * executions
    done = _Count(folder, "bench_chain", "events", "event = 'D'")
    failed = _Count(folder, "bench_chain", "deliveries", "status = 'failed'")

    def finished() -> bool:
        return done() >= executions and (not failing or failed() >= 1)

    engine.work(until=finished)
    engine.close()
    done.close()
    failed.close()
    handled, span = _tracker_span(folder, "bench_chain", set(ids))
    assert handled == expected, (handled, expected)
    return handled, span


def raw_chain(folder: Path, executions: int, batch: int = 100) -> tuple[int, float]:
    """A hand-written loop over the same files: per batch of ``batch`` records of a step, one transaction on the log
    (read, decode, dedup lookup in the tracker, encode, append the outputs, move the offset) and one on the tracker
    (record the events and the deliveries)."""
    log, tracker = connect(folder / "raw-log.db"), connect(folder / "raw-tracker.db")
    log.executescript(SCHEMA)
    tracker.executescript(TRACKER_SCHEMA)
    log.execute("BEGIN IMMEDIATE")
    for _ in range(executions):
        key = new_event_id()  # an execution id as Engine.publish gives one (32 random hex digits)
        log.execute("INSERT INTO records(stream, part, key, value, appended_at) VALUES ('A', ?, ?, ?, 0)",
                    (zlib.crc32(key.encode()) % 4, key, encode_event("A", {"n": 0}, key, new_event_id(), "bench")))
    log.execute("COMMIT")
    handled = 0
    start = time.perf_counter()
    for function, (source, target) in zip(("s1", "s2", "s3"), (("A", "B"), ("B", "C"), ("C", "D")), strict=True):
        for part in range(4):
            position = 0
            while True:
                log.execute("BEGIN IMMEDIATE")
                rows = log.execute("SELECT id, key, value FROM records WHERE stream = ? AND part = ? AND id > ? "
                                   "ORDER BY id LIMIT ?", (source, part, position, batch)).fetchall()
                if not rows:
                    log.execute("COMMIT")
                    break
                events = [json.loads(value) for _, _, value in rows]
                marks = ", ".join("?" * len(events))
                seen = {row[0] for row in tracker.execute(
                    f"SELECT event_id FROM deliveries WHERE function = ? AND status = 'succeeded' AND event_id IN ({marks})",
                    (function, *(e["id"] for e in events)))}
                outputs, event_rows, delivery_rows = [], [], []
                now = time.time()
                for (_, key, _), event in zip(rows, events, strict=True):
                    if event["id"] in seen:
                        continue
                    data = {"n": event["data"].get("n", 0) + 1, "execution_id": key}
                    out_id = derive_event_id(event["id"], function, 0)  # as a handler's event ids are made
                    outputs.append((target, part, key, json.dumps({**event, "id": out_id, "type": target, "data": data},
                                                                   separators=(",", ":")).encode(), now))
                    event_rows.append((out_id, key, target, now, function, json.dumps(data)))
                    delivery_rows.append((key, event["id"], source, function, 1, "succeeded", now, 0.0))
                values("INSERT INTO records(stream, part, key, value, appended_at) VALUES ", 5, outputs, log)
                position = rows[-1][0]
                log.execute("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?, ?)", (function, source, part, position))
                log.execute("COMMIT")
                tracker.execute("BEGIN IMMEDIATE")
                values("INSERT OR IGNORE INTO events VALUES ", 6, event_rows, tracker)
                values("INSERT INTO deliveries(execution_id, event_id, event, function, attempt, status, started_at, "
                       "duration) VALUES ", 8, delivery_rows, tracker)
                tracker.execute("COMMIT")
                handled += len(delivery_rows)
    elapsed = time.perf_counter() - start
    log.close()
    tracker.close()
    return handled, elapsed


def sleepy(folder: Path, events: int, concurrency: int) -> float:
    """Seconds from the first call's start to the last one's end: ``events`` calls of a 50 ms handler."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nap.py").write_text("import time\n\ndef nap(event, ctx):\n    time.sleep(0.05)\n")
    (folder / "sleepy.yaml").write_text(textwrap.dedent(SLEEPY).replace("CONCURRENCY", str(concurrency)))
    engine = Engine(folder / "sleepy.yaml", state_dir=folder / "state")
    engine.setup()
    for _ in range(events):
        engine.publish("Tick", {})
    succeeded = _Count(folder, "bench_sleepy", "deliveries", "status = 'succeeded'")
    engine.work(until=lambda: succeeded() >= events)
    engine.close()
    succeeded.close()
    handled, span = _tracker_span(folder, "bench_sleepy")
    assert handled == events, (handled, events)
    return span


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000, help="records of the publish cases")
    parser.add_argument("--executions", type=int, default=3000, help="executions of the end-to-end chain")
    parser.add_argument("--concurrency-events", type=int, default=200)
    parser.add_argument("--hol-executions", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of the end-to-end and head-of-line cases (each round measures both sides anew)")
    parser.add_argument("--quick", action="store_true", help="a tenth of every size")
    args = parser.parse_args(argv)
    logging.getLogger("xflow").setLevel(logging.ERROR)  # the failing execution's retries are expected
    if args.quick:
        args.events, args.executions = args.events // 10, args.executions // 10
        args.concurrency_events, args.hol_executions = args.concurrency_events // 4, args.hol_executions // 10
    # the collector as the xflow worker and run commands set it (xflow.core.collector), for both sides alike
    with worker_collector():
        payload = encode_event("E", {"word": "x" * 200}, "k", new_event_id(), "bench")
        payloads = [payload] * args.events
        print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}")
        print(f"{'case':58} {'xflow /s':>10} {'hand /s':>10} {'ratio':>7}")
        for batch in (100, 1):
            count = args.events if batch > 1 else min(args.events, 3000)
            with tempfile.TemporaryDirectory() as folder:
                raw = raw_publish(Path(folder) / "raw.db", payloads[:count], batch)
            with tempfile.TemporaryDirectory() as folder:
                ours = xflow_publish(Path(folder), payloads[:count], batch)
            print(f"{f'publish {count} events of {len(payload)} B, batches of {batch}':58} {rate(count, ours):10.0f} "
                  f"{rate(count, raw):10.0f} {raw / ours:7.2f}")

        ratios: dict[str, list[float]] = {"thread": [], "process": []}
        for round_ in range(1, max(1, args.repeat) + 1):
            with tempfile.TemporaryDirectory() as folder:
                raw_count, raw_seconds = raw_chain(Path(folder), args.executions)
            hand = rate(raw_count, raw_seconds)
            for isolation in ("thread", "process"):
                with tempfile.TemporaryDirectory() as folder:
                    count, seconds = xflow_chain(Path(folder), args.executions, isolation)
                ours = rate(count, seconds)
                ratios[isolation].append(ours / hand)
                goal = 0.5 if isolation == "thread" else 0.3
                print(f"{f'3 no-op steps x {args.executions}, isolation {isolation} (goal {goal}), #{round_}':58} "
                      f"{ours:10.0f} {hand:10.0f} {ours / hand:7.2f}")
        for isolation, values in ratios.items():
            print(f"{f'  median of {len(values)} rounds, isolation {isolation}':58} {'':21} {statistics.median(values):7.2f}")

        spans = {}
        for concurrency in (1, 8):
            with tempfile.TemporaryDirectory() as folder:
                spans[concurrency] = sleepy(Path(folder), args.concurrency_events, concurrency)
        print(f"concurrency: {args.concurrency_events} calls of a 50 ms handler: {spans[1]:.2f} s with concurrency 1, "
              f"{spans[8]:.2f} s with 8: {spans[1] / spans[8]:.1f}x faster (goal >= 6x)")

        slowdowns = []
        for _ in range(max(1, args.repeat)):
            hol = {}
            for failing in (False, True):
                with tempfile.TemporaryDirectory() as folder:
                    _, hol[failing] = xflow_chain(Path(folder), args.hol_executions, "process", failing,
                                                  {"backoff_seconds": 1})
            slowdowns.append(hol[True] / hol[False])
            print(f"head-of-line: {args.hol_executions} executions took {hol[False]:.2f} s alone and {hol[True]:.2f} s "
                  f"beside one that fails (retries: 5, backoff 1 s, 1 + 2 + 4 + 5 + 5 s of backoff): {slowdowns[-1]:.2f}x")
        print(f"head-of-line: median of {len(slowdowns)} rounds {statistics.median(slowdowns):.2f}x (goal <= 1.2x)")
        print("ratio = xflow rate / the hand-written loop's rate for the same reads and writes (1.00 = no overhead)")


if __name__ == "__main__":
    main()
