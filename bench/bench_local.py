"""Benchmark of the embedded backend: xflow's local transport beside plain sqlite3 doing the same writes.

    python bench/bench_local.py [--events 20000] [--executions 300]

Prints events/s for each case and the ratio xflow / raw. Not a test: machines are noisy, so read
the ratios, and run it a few times.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

from xflow import Engine
from xflow.core.interfaces import PluginContext, Record
from xflow.core.runtime import encode_event, new_event_id
from xflow.transports.local import SCHEMA, LocalTransport, connect


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def raw_publish(path: Path, payloads: list[bytes], batch: int) -> float:
    """The ceiling: the same INSERTs into the same schema, with plain sqlite3."""
    db = connect(path)
    db.executescript(SCHEMA)
    start = time.perf_counter()
    for i in range(0, len(payloads), batch):
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO records(stream, part, key, value, appended_at) VALUES (?, ?, ?, ?, ?)",
                       [("s", zlib.crc32(b"k") % 4, "k", p, time.time()) for p in payloads[i:i + batch]])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def xflow_publish(folder: Path, payloads: list[bytes], batch: int) -> float:
    transport = LocalTransport(PluginContext("bench", {}, folder))
    for step in transport.plan_setup(["E"]):
        step.apply()
    start = time.perf_counter()
    for i in range(0, len(payloads), batch):
        transport.publish("E", [Record("k", p) for p in payloads[i:i + batch]])
    elapsed = time.perf_counter() - start
    transport.close()
    return elapsed


CHAIN = """
workflow_id: bench_chain
lambdas:
  - {name: s1, source: steps.py, handler: step, publishes: [B]}
  - {name: s2, source: steps.py, handler: step, publishes: [C]}
  - {name: s3, source: steps.py, handler: step, publishes: [D]}
subscriptions:
  - {name: A, subscribers: [s1]}
  - {name: B, subscribers: [s2]}
  - {name: C, subscribers: [s3]}
"""


def xflow_end_to_end(folder: Path, executions: int) -> tuple[float, int]:
    (folder / "steps.py").write_text("def step(event, ctx):\n    return {'n': event.get('n', 0) + 1}\n")
    (folder / "chain.yaml").write_text(textwrap.dedent(CHAIN))
    engine = Engine(folder / "chain.yaml", state_dir=folder / "state")
    engine.setup()
    ids = [engine.publish("A", {"n": 0}) for _ in range(executions)]
    last = ids[-1]
    start = time.perf_counter()
    handled = engine.work(until=lambda: engine.track(last)["status"] != "running" and _all_done(engine, ids))
    elapsed = time.perf_counter() - start
    engine.close()
    return elapsed, handled


def _all_done(engine: Engine, ids: list[str]) -> bool:
    tracker = engine.tracker
    done = tracker.db.execute("SELECT COUNT(*) FROM events WHERE event = 'D'").fetchone()[0]
    return done >= len(ids)


def raw_end_to_end(folder: Path, executions: int) -> tuple[float, int]:
    """The same reads and writes per delivery with plain sqlite3: read record, append output,
    record the event and the delivery, move the offset."""
    log, tracker = connect(folder / "raw-log.db"), connect(folder / "raw-tracker.db")
    log.executescript(SCHEMA)
    tracker.executescript("""
        CREATE TABLE events(event_id TEXT PRIMARY KEY, execution_id TEXT, event TEXT, published_at REAL, producer TEXT,
                            data TEXT);
        CREATE TABLE deliveries(id INTEGER PRIMARY KEY AUTOINCREMENT, execution_id TEXT, event_id TEXT, event TEXT,
                                function TEXT, attempt INTEGER, status TEXT, started_at REAL, duration REAL, error TEXT,
                                logs TEXT);
        CREATE INDEX deliveries_by_event ON deliveries(event_id, function, status);""")
    for _ in range(executions):
        log.execute("INSERT INTO records(stream, part, key, value, appended_at) VALUES ('A', 0, 'k', ?, 0)",
                    (json.dumps({"n": 0, "execution_id": "k"}).encode(),))
    handled = 0
    start = time.perf_counter()
    for source, target in (("A", "B"), ("B", "C"), ("C", "D")):
        position = 0
        while True:
            rows = log.execute("SELECT id, key, value FROM records WHERE stream = ? AND part = 0 AND id > ? "
                               "ORDER BY id LIMIT 100", (source, position)).fetchall()
            if not rows:
                break
            for record_id, key, value in rows:
                data = json.loads(value)
                event_id = new_event_id()
                tracker.execute("SELECT 1 FROM deliveries WHERE event_id = ? AND function = ? AND status = 'succeeded'",
                                (event_id, source)).fetchone()
                out = json.dumps({"n": data["n"] + 1, "execution_id": key}).encode()
                log.execute("BEGIN IMMEDIATE")
                log.execute("INSERT INTO records(stream, part, key, value, appended_at) VALUES (?, 0, ?, ?, 0)",
                            (target, key, out))
                log.execute("COMMIT")
                tracker.execute("INSERT INTO events VALUES (?, ?, ?, 0, '', ?)", (event_id, key, target, out.decode()))
                tracker.execute("INSERT INTO deliveries(execution_id, event_id, event, function, attempt, status, "
                                "started_at) VALUES (?, ?, ?, ?, 1, 'succeeded', 0)", (key, event_id, source, source))
                handled += 1
                position = record_id
            log.execute("BEGIN IMMEDIATE")
            log.execute("INSERT OR REPLACE INTO offsets VALUES (?, 'x', 0, ?)", (source, position))
            log.execute("COMMIT")
    return time.perf_counter() - start, handled


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--executions", type=int, default=300)
    args = parser.parse_args(argv)
    payload = encode_event("E", {"word": "x" * 200}, "k", new_event_id(), "bench")
    payloads = [payload] * args.events
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {args.events} events of {len(payload)} B")
    print(f"{'case':44} {'xflow ev/s':>12} {'raw ev/s':>12} {'ratio':>7}")
    for batch in (100, 1):
        count = args.events if batch > 1 else min(args.events, 3000)
        with tempfile.TemporaryDirectory() as folder:
            raw = raw_publish(Path(folder) / "raw.db", payloads[:count], batch)
        with tempfile.TemporaryDirectory() as folder:
            ours = xflow_publish(Path(folder), payloads[:count], batch)
        print(f"{f'publish, batches of {batch}':44} {rate(count, ours):12.0f} {rate(count, raw):12.0f} "
              f"{raw / ours:7.2f}")
    with tempfile.TemporaryDirectory() as folder:
        raw_seconds, raw_count = raw_end_to_end(Path(folder), args.executions)
    with tempfile.TemporaryDirectory() as folder:
        ours_seconds, ours_count = xflow_end_to_end(Path(folder), args.executions)
    print(f"{f'end to end, 3 no-op steps x {args.executions} executions':44} {rate(ours_count, ours_seconds):12.0f} "
          f"{rate(raw_count, raw_seconds):12.0f} {rate(ours_count, ours_seconds) / rate(raw_count, raw_seconds):7.2f}")
    print("ratio = xflow rate / raw sqlite3 rate for the same writes (1.00 = no overhead)")


if __name__ == "__main__":
    main()
