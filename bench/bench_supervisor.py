"""Benchmark of supervised handler calls: HandlerPool (threads, processes) beside a plain loop calling the handler.

    python bench/bench_supervisor.py [--calls 5000] [--concurrency 1 4]

For each isolation and concurrency, times N no-op calls submitted at once (throughput) and N calls submitted
one after the other, each waited for (latency), and prints calls/s and the ratios to a plain loop (the handler
called directly with a fresh ctx) and to call_handler called inline (what the dispatcher did before); a raw
round trip of the same message to a process over a Pipe shows the floor of process isolation. Not a test:
machines are noisy, so read the ratios, and run it a few times.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from xflow.core.runtime import HandlerContext, call_handler, load_handler
from xflow.providers.handler_calls import Attempt
from xflow.providers.supervisor import START_METHOD, HandlerPool

HANDLER = "def noop(event, ctx):\n    return None\n"
ATTEMPT = Attempt("bench", "noop", "ex", "In", "ev", 1)
DATA = {"execution_id": "ex", "n": 1, "words": ["a", "b", "c"]}


def plain(source: Path, calls: int) -> float:
    function = load_handler(source, "noop")
    logger = logging.getLogger("xflow.functions.bench.noop")
    started = time.perf_counter()
    for _ in range(calls):
        ctx = HandlerContext("ex", "In", "ev", 1, "bench", "noop", logger)
        function(dict(DATA), ctx)
    return time.perf_counter() - started


def inline_call_handler(source: Path, calls: int) -> float:
    """What the dispatcher did before: call_handler in its own thread (capture by a process-wide redirect)."""
    function = load_handler(source, "noop")
    logger = logging.getLogger("xflow.functions.bench.noop")
    started = time.perf_counter()
    for _ in range(calls):
        ctx = HandlerContext("ex", "In", "ev", 1, "bench", "noop", logger)
        assert call_handler(function, DATA, ctx, []).ok
    return time.perf_counter() - started


def _echo(conn: Any) -> None:
    while (message := conn.recv()) is not None:
        conn.send(message)


def raw_round_trips(calls: int) -> float:
    """The floor of process isolation: the same message to a process and back over a Pipe, from this thread."""
    context = multiprocessing.get_context(START_METHOD)
    here, there = context.Pipe()
    process = context.Process(target=_echo, args=(there,))
    process.start()
    message = (DATA, ATTEMPT.as_tuple())
    for _ in range(100):
        here.send(message)
        here.recv()
    started = time.perf_counter()
    for _ in range(calls):
        here.send(message)
        here.recv()
    elapsed = time.perf_counter() - started
    here.send(None)
    process.join()
    return elapsed


def pooled(source: Path, calls: int, isolation: str, concurrency: int, one_by_one: bool) -> float:
    with HandlerPool(source, "noop", [], isolation=isolation, concurrency=concurrency) as pool:
        pool.check()
        # warm up: every slot has its process (or thread) ready
        concurrent.futures.wait([pool.submit(DATA, ATTEMPT) for _ in range(concurrency * 4)])
        started = time.perf_counter()
        if one_by_one:
            for _ in range(calls):
                outcome = pool.submit(DATA, ATTEMPT).result()
                assert outcome.ok, outcome.error
        else:
            futures = [pool.submit(DATA, ATTEMPT) for _ in range(calls)]
            assert all(f.result().ok for f in futures)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "noop.py"
        source.write_text(HANDLER)
        base = plain(source, args.calls)
        before = inline_call_handler(source, args.calls)
        print(f"{'case':<34} {'calls/s':>10} {'us/call':>9} {'x plain':>9} {'x inline':>9}")
        floor = raw_round_trips(args.calls)
        for name, seconds in (("plain loop", base), ("inline call_handler (before)", before),
                              ("raw pipe round trip to a process", floor)):
            print(f"{name:<34} {args.calls / seconds:>10.0f} {seconds / args.calls * 1e6:>9.1f} {seconds / base:>9.1f} "
                  f"{seconds / before:>9.1f}")
        for isolation in ("thread", "process"):
            for concurrency in args.concurrency:
                for one_by_one in (False, True):
                    seconds = pooled(source, args.calls, isolation, concurrency, one_by_one)
                    name = f"{isolation} c={concurrency} {'one by one' if one_by_one else 'all at once'}"
                    print(f"{name:<34} {args.calls / seconds:>10.0f} {seconds / args.calls * 1e6:>9.1f} "
                          f"{seconds / base:>9.1f} {seconds / before:>9.1f}")


if __name__ == "__main__":
    main()
