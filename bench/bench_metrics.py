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

import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Run, best_rates, chain_arguments, parse_chain_arguments, run_chain  # noqa: E402

from xflow import Engine  # noqa: E402
from xflow.core import observe  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Scraper:
    """What ``xflow worker --metrics-port`` adds to a run: the exposition server over the worker's engine, read at
    ``/metrics`` every ``interval`` seconds while the engine works; ``scrapes`` counts the reads made."""

    def __init__(self, interval: float) -> None:
        self.interval, self.scrapes = interval, 0

    @contextmanager
    def serving(self, engine: Engine) -> Iterator[None]:
        from xflow.monitoring.metrics import start_metrics_server

        server = start_metrics_server(_free_port(), engines=lambda: [engine])
        stop = threading.Event()

        def scrape() -> None:
            while not stop.wait(self.interval):
                with urllib.request.urlopen(server.url, timeout=10) as page:  # noqa: S310 - our loopback server
                    page.read()
                self.scrapes += 1

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
        try:
            yield
        finally:
            stop.set()
            scraper.join()
            server.close()
            observe.install(None)


def chain(folder: Path, executions: int, isolation: str, scraper: Scraper | None) -> Run:
    """One run, with metrics on (served and scraped by ``scraper``) or off; the metrics run notes the scrapes made."""
    if scraper is None:
        return Run(*run_chain(folder, executions, isolation))
    handled, span = run_chain(folder, executions, isolation, during=scraper.serving)
    return Run(handled, span, f" ({scraper.scrapes} scrapes)")


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
    parser = chain_arguments(__doc__)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    args = parse_chain_arguments(parser, argv)
    scrapers: list[Scraper] = []

    def run(folder: Path, metrics: bool) -> Run:
        scraper = Scraper(args.scrape_interval) if metrics else None
        if scraper is not None:
            scrapers.append(scraper)
        return chain(folder, args.executions, args.isolation, scraper)

    best = best_rates({False: "metrics off", True: "metrics on "}, args.repeat, "xflow-bench-metrics-", run)
    scraped = sum(scraper.scrapes for scraper in scrapers)
    cost = 1 - best[True] / best[False]
    print(f"\nbest: metrics off {best[False]:,.0f}/s, on {best[True]:,.0f}/s ({scraped} scrapes in all): on/off = "
          f"{best[True] / best[False]:.3f}, cost {cost:+.1%} (goal: at most 10%)")
    micro = observer_cost()
    print(f"the observer's own work: {micro:.2f} us per delivery, {micro * best[False] / 1e6:.1%} of a delivery at the "
          "metrics-off rate")


if __name__ == "__main__":
    main()
