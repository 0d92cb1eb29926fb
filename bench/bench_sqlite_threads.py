"""Benchmark: threads of one process on one SQLite file, sharing a connection under a lock or each with its own.

    python bench/bench_sqlite_threads.py [--operations 4000] [--threads 1 2 8 32] [--rounds 3]

What the embedded backends do for one publish from a request thread: append a record in a write transaction
(``BEGIN IMMEDIATE``, as the local transport's ``publish``), record the event (an autocommit ``INSERT OR
IGNORE``, as the sqlite tracker's ``record_event``) and read an execution's rows back (as ``track``). Both ways
run in the same process, interleaved; printed: the best throughput of ``--rounds`` with the ratio lock /
per-thread, and the 99th percentile of one publish's time (where SQLite's busy-wait sleeps show: a connection
that finds another connection's write transaction open sleeps 1, 2, 5, 10... ms before it tries again, while
threads waiting on a lock go on as soon as it is free). Not a test: read the ratios, and run it a few times.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import interleaved  # noqa: E402

from xflow.core.sqlite_files import SqliteFile  # noqa: E402
from xflow.trackers.sqlite import SCHEMA as TRACKER_SCHEMA  # noqa: E402
from xflow.transports.local import SCHEMA as LOG_SCHEMA  # noqa: E402


def publish_and_track(db: sqlite3.Connection, thread: int, index: int) -> None:
    execution = f"e{thread}-{index % 50}"
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO records(stream, part, key, value, appended_at) VALUES (?, ?, ?, ?, ?)",
               ("orders", index % 4, execution, b"x" * 300, time.time()))
    db.execute("COMMIT")
    db.execute("INSERT OR IGNORE INTO events(event_id, execution_id, event, published_at, producer, data) "
               "VALUES (?, ?, ?, ?, ?, ?)", (f"{thread}-{index}", execution, "OrderPlaced", time.time(), "bench", "{}"))
    db.execute("SELECT event_id, event, published_at FROM events WHERE execution_id = ? ORDER BY published_at",
               (execution,)).fetchall()


def run(kind: str, threads: int, operations: int) -> tuple[float, float]:
    """Operations per second, and the 99th percentile of one operation's seconds, with ``threads`` threads sharing
    ``operations`` publishes."""
    folder = Path(tempfile.mkdtemp(prefix="xflow-bench-"))
    try:
        file = SqliteFile(folder / "state.db", "bench database")
        shared = file.connect()
        shared.executescript(LOG_SCHEMA + TRACKER_SCHEMA)
        local = threading.local()
        opened = []
        opening = threading.Lock()
        times: list[float] = []

        def own() -> sqlite3.Connection:
            db = getattr(local, "db", None)
            if db is None:
                db = local.db = file.connect()
                with opening:
                    opened.append(db)
            return db

        def body(thread: int) -> None:
            mine = []
            for index in range(operations // threads):
                began = time.perf_counter()
                # both through ``using`` (its checks that the file and its log are still the ones opened included)
                with file.using(shared if kind == "lock" else own()) as db:
                    publish_and_track(db, thread, index)
                mine.append(time.perf_counter() - began)
            with opening:
                times.extend(mine)

        workers = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - start
        for db in [shared, *opened]:
            file.close(db)
        times.sort()
        return len(times) / seconds, times[int(len(times) * 0.99)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=4000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'threads':>7}  {'lock ops/s':>10}  {'per-thread ops/s':>16}  {'ratio':>5}  "
          f"{'lock p99 ms':>11}  {'per-thread p99 ms':>17}")
    for threads in args.threads:
        # interleaved, so that both see the same machine
        results = interleaved(("lock", "per-thread"), args.rounds, partial(run, threads=threads, operations=args.operations))
        lock, own = (max(rate for rate, _ in results[kind]) for kind in ("lock", "per-thread"))
        lock_p99, own_p99 = (min(p99 for _, p99 in results[kind]) * 1000 for kind in ("lock", "per-thread"))
        print(f"{threads:>7}  {lock:>10,.0f}  {own:>16,.0f}  {lock / own:>5.2f}  {lock_p99:>11.1f}  {own_p99:>17.1f}")


if __name__ == "__main__":
    main()
