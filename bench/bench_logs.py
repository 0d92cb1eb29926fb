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

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Run, best_rates, chain_arguments, parse_chain_arguments, run_chain  # noqa: E402

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


def chain(folder: Path, executions: int, isolation: str, routed: bool) -> Run:
    """One run, with the file route or without; the routed run checks that every record reached the file."""
    handled, span = run_chain(folder, executions, isolation, steps=STEPS, extra_yaml=ROUTE if routed else "")
    if routed:
        written = sum(1 for path in rotated_files(folder / "logs" / "chain.jsonl") for _ in read_json_lines(path))
        assert written == 3 * handled, f"{written} records in the file, {3 * handled} expected"
    return Run(handled, span)


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
    args = parse_chain_arguments(chain_arguments(__doc__), argv)
    best = best_rates({False: "no route  ", True: "file route"}, args.repeat, "xflow-bench-logs-",
                      lambda folder, routed: chain(folder, args.executions, args.isolation, routed))
    cost = 1 - best[True] / best[False]
    print(f"\nbest: no route {best[False]:,.0f}/s, file route {best[True]:,.0f}/s: routed/unrouted = "
          f"{best[True] / best[False]:.3f}, cost {cost:+.1%} (goal: at most 15%)")
    micro = record_cost()
    print(f"the file route's own work: {micro:.2f} us per record, {3 * micro * best[False] / 1e6:.1%} of a delivery's "
          "time at the unrouted rate (3 records per delivery)")


if __name__ == "__main__":
    main()
