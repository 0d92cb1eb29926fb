"""Benchmark of what metrics cost: the embedded backend's dispatch with Prometheus metrics on beside off, in one run.

    python bench/bench_metrics.py [--executions 2000] [--repeat 3] [--isolation thread] [--quick]

A 3-step no-op chain over ``--executions`` executions is run by ``Engine.work`` (as in bench_local.py), with metrics
off (no observer installed: the runners only test for one) and on (what ``xflow worker --metrics-port`` does: the
observer counting every publish, settled attempt, duration and calls in flight, the exposition server, and a scraper
reading ``/metrics`` every ``--scrape-interval`` seconds, which makes the server read the lag and the recent
executions through the worker's own engine). Runs alternate off/on ``--repeat`` times and the best of each is kept;
rates are deliveries/s from the first delivery's start to the last one's end, as the tracker recorded them.

The goal: metrics on cost at most 10% of the dispatch rate. Not a test: machines are noisy, read the ratio.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_local import CHAIN, STEPS, _Count, _tracker_span, rate  # noqa: E402

from xflow import Engine  # noqa: E402
from xflow.core import observe  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chain(folder: Path, executions: int, isolation: str, metrics: bool, scrape_interval: float) -> tuple[int, float,
                                                                                                         int]:
    """One run; (deliveries, their span in seconds, scrapes made)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "steps.py").write_text(STEPS)
    (folder / "chain.yaml").write_text(textwrap.dedent(CHAIN))
    engine = Engine(folder / "chain.yaml", state_dir=folder / "state", options={"provider": {"isolation": isolation}})
    engine.setup()
    ids = [engine.publish("A", {"n": 0}) for _ in range(executions)]
    server = None
    scrapes = 0
    stop = threading.Event()
    scraper = None
    if metrics:
        from xflow.monitoring.metrics import start_metrics_server

        server = start_metrics_server(_free_port(), engines=lambda: [engine])

        def scrape() -> None:
            nonlocal scrapes
            while not stop.wait(scrape_interval):
                with urllib.request.urlopen(server.url, timeout=10) as page:  # noqa: S310 - our loopback server
                    page.read()
                scrapes += 1

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
    done = _Count(folder, "bench_chain", "events", "event = 'D'")
    try:
        engine.work(until=lambda: done() >= executions)
    finally:
        stop.set()
        if scraper is not None:
            scraper.join()
        if server is not None:
            server.close()
            observe.install(None)
        done.close()
        engine.close()
    handled, span = _tracker_span(folder, "bench_chain", set(ids))
    assert handled == 3 * executions, (handled, 3 * executions)
    return handled, span, scrapes


def observer_cost(calls: int = 200_000) -> float:
    """Microseconds the observer takes per delivery: one settled attempt (counter and histogram), one in-flight update
    and one published event, timed apart from any run."""
    from prometheus_client import CollectorRegistry

    from xflow.monitoring.metrics import PrometheusObserver

    observer = PrometheusObserver(CollectorRegistry())
    start = time.perf_counter()
    for i in range(calls):
        observer.settled("bench", "s1", "succeeded", 0.001)
        observer.in_flight("bench", "s1", i & 7)
        observer.published("bench", "B", 1)
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, alternating; the best is kept")
    parser.add_argument("--isolation", choices=("thread", "process"), default="thread")
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="a tenth of the executions, two runs of each")
    args = parser.parse_args(argv)
    if args.quick:
        args.executions, args.repeat = max(50, args.executions // 10), 2
    logging.getLogger("xflow").setLevel(logging.ERROR)
    best: dict[bool, float] = {}
    scraped = 0
    with tempfile.TemporaryDirectory(prefix="xflow-bench-metrics-") as tmp:
        for round_ in range(args.repeat):
            for metrics in (False, True):
                handled, span, scrapes = chain(Path(tmp) / f"{round_}-{int(metrics)}", args.executions,
                                               args.isolation, metrics, args.scrape_interval)
                speed = rate(handled, span)
                scraped += scrapes
                print(f"round {round_ + 1} metrics {'on ' if metrics else 'off'}: {handled} deliveries in {span:.2f} s "
                      f"= {speed:,.0f}/s" + (f" ({scrapes} scrapes)" if metrics else ""))
                best[metrics] = max(best.get(metrics, 0.0), speed)
    cost = 1 - best[True] / best[False]
    print(f"\nbest: metrics off {best[False]:,.0f}/s, on {best[True]:,.0f}/s ({scraped} scrapes in all): on/off = "
          f"{best[True] / best[False]:.3f}, cost {cost:+.1%} (goal: at most 10%)")
    micro = observer_cost()
    print(f"the observer's own work: {micro:.2f} us per delivery, {micro * best[False] / 1e6:.1%} of a delivery at the "
          "metrics-off rate")


if __name__ == "__main__":
    main()
