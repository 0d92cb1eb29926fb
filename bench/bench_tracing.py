"""Benchmark of what tracing costs: the embedded backend's dispatch with spans off, spans on, and metrics on with
spans off, in one run; and the per-event cost of carrying the trace context.

    python bench/bench_tracing.py [--executions 2000] [--repeat 3] [--isolation thread] [--quick]

A 3-step no-op chain over ``--executions`` executions is run by ``Engine.work`` (as in bench_local.py and
bench_metrics.py), in three modes, alternating ``--repeat`` times (the best of each is kept): ``off`` (no tracer
provider: every event still carries its ``traceparent``, continued by each handler), ``spans`` (an OpenTelemetry SDK
tracer provider given with ``tracing.install``, a batch span processor and an in-memory exporter: publish, deliver
and handler spans for every step) and ``metrics`` (spans off, the Prometheus observer counting: the issue's
"tracing off, metrics on"). Rates are deliveries/s from the first delivery's start to the last one's end, as the
tracker recorded them. Then, apart from any run: microseconds per event of continuing the context and of encoding
and decoding the two attributes, beside a delivery's time at the ``off`` rate.

Not a test: machines are noisy, read the ratios.
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

from bench_local import CHAIN, STEPS, _Count, _tracker_span, rate  # noqa: E402

from xflow import Engine  # noqa: E402
from xflow.core import observe  # noqa: E402
from xflow.core.wire import decode_event, encode_event  # noqa: E402
from xflow.monitoring import tracing  # noqa: E402

MODES = ("off", "spans", "metrics")


def chain(folder: Path, executions: int, isolation: str, mode: str) -> tuple[int, float, int]:
    """One run; (deliveries, their span in seconds, spans exported)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "steps.py").write_text(STEPS)
    (folder / "chain.yaml").write_text(textwrap.dedent(CHAIN))
    provider = exporter = None
    if mode == "spans":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter, provider = InMemorySpanExporter(), TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 16))
        tracing.install(provider)
    elif mode == "metrics":
        from prometheus_client import CollectorRegistry

        from xflow.monitoring.metrics import PrometheusObserver

        observe.install(PrometheusObserver(CollectorRegistry()))
    engine = Engine(folder / "chain.yaml", state_dir=folder / "state", options={"provider": {"isolation": isolation}})
    engine.setup()
    ids = [engine.publish("A", {"n": 0}) for _ in range(executions)]
    done = _Count(folder, "bench_chain", "events", "event = 'D'")
    try:
        engine.work(until=lambda: done() >= executions)
    finally:
        done.close()
        engine.close()
        tracing.install(None)
        observe.install(None)
    exported = 0
    if provider is not None and exporter is not None:
        provider.force_flush()
        exported = len(exporter.get_finished_spans())
        provider.shutdown()
    handled, span = _tracker_span(folder, "bench_chain", set(ids))
    assert handled == 3 * executions, (handled, 3 * executions)
    return handled, span, exported


def context_cost(events: int = 100_000) -> tuple[float, float, float]:
    """Microseconds per event: continuing the context; encoding with it beyond encoding without; decoding likewise."""
    parent = tracing.started()
    ids = [f"{i:032x}" for i in range(events)]
    start = time.perf_counter()
    for event_id in ids:
        tracing.continued(parent, None, event_id, "execution")
    continuing = (time.perf_counter() - start) / events * 1e6
    data = {"n": 1, "fail": False}

    def encode(trace: str | None) -> tuple[float, list[bytes]]:
        out = []
        begin = time.perf_counter()
        for event_id in ids:
            out.append(encode_event("B", data, "execution", event_id, "xflow/bench/s1", 1.0, 1, trace))
        return (time.perf_counter() - begin) / events * 1e6, out

    (bare, plain), (traced, carried) = encode(None), encode(parent)
    begin = time.perf_counter()
    for value in plain:
        decode_event(value, "x")
    bare_decode = time.perf_counter() - begin
    begin = time.perf_counter()
    for value in carried:
        decode_event(value, "x")
    traced_decode = time.perf_counter() - begin
    return continuing, traced - bare, (traced_decode - bare_decode) / events * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode, alternating; the best is kept")
    parser.add_argument("--isolation", choices=("thread", "process"), default="thread")
    parser.add_argument("--quick", action="store_true", help="a tenth of the executions, two runs of each")
    args = parser.parse_args(argv)
    if args.quick:
        args.executions, args.repeat = max(50, args.executions // 10), 2
    logging.getLogger("xflow").setLevel(logging.ERROR)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="xflow-bench-tracing-") as tmp:
        for round_ in range(args.repeat):
            for mode in MODES:
                handled, span, exported = chain(Path(tmp) / f"{round_}-{mode}", args.executions, args.isolation, mode)
                speed = rate(handled, span)
                print(f"round {round_ + 1} {mode:>7}: {handled} deliveries in {span:.2f} s = {speed:,.0f}/s"
                      + (f" ({exported} spans)" if mode == "spans" else ""))
                best[mode] = max(best.get(mode, 0.0), speed)
    print(f"\nbest: spans off {best['off']:,.0f}/s, spans on {best['spans']:,.0f}/s (on/off = "
          f"{best['spans'] / best['off']:.3f}), metrics on and spans off {best['metrics']:,.0f}/s (/off = "
          f"{best['metrics'] / best['off']:.3f})")
    continuing, encoding, decoding = context_cost()
    per_delivery = 1e6 / best["off"]
    carried = continuing + encoding + decoding
    print(f"carrying the context, per event: continue {continuing:.2f} us, encode +{encoding:.2f} us, decode "
          f"+{decoding:.2f} us = {carried:.2f} us, {carried / per_delivery:.1%} of a delivery ({per_delivery:.0f} us) "
          "at the spans-off rate")


if __name__ == "__main__":
    main()
