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

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Run, best_rates, chain_arguments, parse_chain_arguments, run_chain  # noqa: E402

from xflow.core import observe  # noqa: E402
from xflow.core.wire import decode_event, encode_event  # noqa: E402
from xflow.monitoring import tracing  # noqa: E402

MODES = ("off", "spans", "metrics")


def chain(folder: Path, executions: int, isolation: str, mode: str) -> Run:
    """One run in ``mode``; the spans run notes the spans exported."""
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
    try:
        handled, span = run_chain(folder, executions, isolation)
    finally:
        tracing.install(None)
        observe.install(None)
    if provider is None or exporter is None:
        return Run(handled, span)
    provider.force_flush()
    exported = len(exporter.get_finished_spans())
    provider.shutdown()
    return Run(handled, span, f" ({exported} spans)")


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
    args = parse_chain_arguments(chain_arguments(__doc__, each="each mode"), argv)
    best = best_rates({mode: f"{mode:>7}" for mode in MODES}, args.repeat, "xflow-bench-tracing-",
                      lambda folder, mode: chain(folder, args.executions, args.isolation, mode))
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
