"""Benchmark of what a log route costs: the embedded backend's dispatch with a ``file`` route beside no route, in one
run.

    python bench/bench_logs.py [--executions 2000] [--repeat 3] [--isolation thread] [--quick]

A 3-step chain over ``--executions`` executions is run by ``Engine.work`` (as in bench_local.py); each handler logs a
line and prints one, so every attempt makes three records (two lines and its outcome). With no route nothing is
installed (the runners test for an observer and find none); with the route, the workflow file's ``logging:`` block
sends every record to a ``file`` destination (JSON lines, rotated at 10 MB) from the route's own thread. Runs
alternate without/with ``--repeat`` times and the best of each is kept; rates are deliveries/s from the first
delivery's start to the last one's end, as the tracker recorded them. The routed runs check that every record reached
the file.

The goal: routing to ``file`` costs at most 15% of the dispatch rate. Not a test: machines are noisy, read the ratio.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_local import CHAIN, _Count, _tracker_span, rate  # noqa: E402

from xflow import Engine  # noqa: E402
from xflow.logs.reading import read_json_lines, rotated_files  # noqa: E402

STEPS = """
def step(event, ctx):
    ctx.logger.info("step %s of %s", ctx.function_name, ctx.execution_id)
    print("n is", event.get("n", 0))
    return {"n": event.get("n", 0) + 1}
"""
ROUTE = """
logging:
  routes:
    - name: file
      options: {path: logs/chain.jsonl, max_bytes: 10000000, backups: 50}
"""


def chain(folder: Path, executions: int, isolation: str, routed: bool) -> tuple[int, float]:
    """One run; (deliveries, their span in seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "steps.py").write_text(STEPS)
    (folder / "chain.yaml").write_text(textwrap.dedent(CHAIN) + (ROUTE if routed else ""))
    engine = Engine(folder / "chain.yaml", state_dir=folder / "state", options={"provider": {"isolation": isolation}})
    engine.setup()
    ids = [engine.publish("A", {"n": 0}) for _ in range(executions)]
    done = _Count(folder, "bench_chain", "events", "event = 'D'")
    try:
        engine.work(until=lambda: done() >= executions)
    finally:
        done.close()
        engine.close()
    handled, span = _tracker_span(folder, "bench_chain", set(ids))
    assert handled == 3 * executions, (handled, 3 * executions)
    if routed:
        written = sum(1 for path in rotated_files(folder / "logs" / "chain.jsonl") for _ in read_json_lines(path))
        assert written == 3 * handled, f"{written} records in the file, {3 * handled} expected"
    return handled, span


def record_cost(records: int = 100_000) -> float:
    """Microseconds the file route takes per record (converted, buffered, written), timed apart from any run."""
    from xflow.core.interfaces import DeliveryRecord, PluginContext
    from xflow.logs.file import FileDestination
    from xflow.logs.router import LogRouter, Route

    with tempfile.TemporaryDirectory(prefix="xflow-bench-logs-") as tmp:
        destination = FileDestination(PluginContext("bench", {"path": str(Path(tmp) / "l.jsonl")}, Path(tmp)))
        router = LogRouter([Route("file", destination, capacity=records)])
        attempt = DeliveryRecord("x", "e", "A", "s1", 1, "succeeded", time.time(), 0.001, None,
                                 ("INFO step s1 of x", "n is 0"))
        start = time.perf_counter()
        for _ in range(records // 3):
            router.attempts("bench", [attempt])
        router.close(60)
        return (time.perf_counter() - start) / (records // 3 * 3) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, alternating; the best is kept")
    parser.add_argument("--isolation", choices=("thread", "process"), default="thread")
    parser.add_argument("--quick", action="store_true", help="a tenth of the executions, two runs of each")
    args = parser.parse_args(argv)
    if args.quick:
        args.executions, args.repeat = max(50, args.executions // 10), 2
    logging.getLogger("xflow").setLevel(logging.ERROR)
    best: dict[bool, float] = {}
    with tempfile.TemporaryDirectory(prefix="xflow-bench-logs-") as tmp:
        for round_ in range(args.repeat):
            for routed in (False, True):
                handled, span = chain(Path(tmp) / f"{round_}-{int(routed)}", args.executions, args.isolation, routed)
                speed = rate(handled, span)
                print(f"round {round_ + 1} {'file route' if routed else 'no route  '}: {handled} deliveries in "
                      f"{span:.2f} s = {speed:,.0f}/s")
                best[routed] = max(best.get(routed, 0.0), speed)
    cost = 1 - best[True] / best[False]
    print(f"\nbest: no route {best[False]:,.0f}/s, file route {best[True]:,.0f}/s: routed/unrouted = "
          f"{best[True] / best[False]:.3f}, cost {cost:+.1%} (goal: at most 15%)")
    micro = record_cost()
    print(f"the file route's own work: {micro:.2f} us per record, {3 * micro * best[False] / 1e6:.1%} of a delivery's "
          "time at the unrouted rate (3 records per delivery)")


if __name__ == "__main__":
    main()
