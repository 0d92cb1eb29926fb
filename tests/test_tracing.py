"""One trace per execution: a 5-step execution yields spans that all share one trace id, each step's deliver span a
child of the publish span of the event it handled and its handler span inside it (OpenTelemetry's in-memory
exporter), on the embedded backend and on Kafka; ``xflow run`` sends them to the endpoint the standard OTLP settings
name; without spans the W3C trace context is still carried in every event (the CloudEvents distributed-tracing
extension); the traceparent rules of W3C Trace Context."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from xflow import Engine
from xflow.monitoring import tracing
from xflow.testing import drain

try:
    from kafka_brokers import kafka_broker  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.kafka_brokers import kafka_broker  # noqa: F401

STEPS = 5
#: step N handles EN-1 and publishes EN; step 3 fails its first attempt (a retry is a second deliver span)
HANDLERS = '''
import os

def step(event, ctx):
    n = int(ctx.function_name[1:])
    if n == 3 and not os.path.exists(event["marker"]):
        open(event["marker"], "w").close()
        raise RuntimeError("the first attempt of s3 fails")
    ctx.publish(f"E{n}", {"marker": event["marker"], "path": event["path"] + [n]})
'''


def five_steps(transport: dict[str, Any] | None = None) -> dict[str, Any]:
    flow: dict[str, Any] = {
        "workflow_id": f"traced{uuid.uuid4().hex[:8]}",
        "provider": {"name": "local", "options": {"isolation": "process"}},
        "tracker": "sqlite",
        "lambdas": [{"name": f"s{n}", "source": "steps.py", "handler": "step", "publishes": [f"E{n}"], "retries": 1}
                    for n in range(1, STEPS + 1)],
        "subscriptions": [{"event": f"E{n}", "subscribers": [f"s{n + 1}"] if n < STEPS else []}
                          for n in range(STEPS + 1)],
    }
    if transport is not None:
        flow["transport"] = transport
    return flow


@pytest.fixture
def exporter():
    """Spans go to OpenTelemetry's in-memory exporter through a tracer provider given to xflow (tracing.install)."""
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    previous = tracing.install(provider)
    try:
        yield memory
    finally:
        tracing.install(previous)
        provider.shutdown()


def run_five_steps(tmp_path: Path, transport: dict[str, Any] | None = None) -> tuple[Engine, dict[str, Any]]:
    (tmp_path / "steps.py").write_text(HANDLERS)
    engine = Engine.from_mapping(five_steps(transport), base_dir=tmp_path, state_dir=tmp_path / "state")
    summary = engine.run("E0", {"marker": str(tmp_path / "s3-failed-once"), "path": []}, timeout=120)
    assert summary["status"] == "succeeded", json.dumps(summary, indent=1)
    assert summary["result"]["path"] == [1, 2, 3, 4, 5]
    return engine, summary


def check_one_trace(spans: list[Any], execution_id: str) -> None:
    """The story of a five-step execution in its spans (parents by span id, within one trace)."""
    mine = [s for s in spans if s.attributes.get("xflow.execution_id") == execution_id]
    assert {s.context.trace_id for s in mine} == {mine[0].context.trace_id}, "one trace id for the whole execution"
    by_id = {s.context.span_id: s for s in mine}
    names = sorted(s.name for s in mine)
    assert names.count("handler s3") == 2 and names.count("deliver E2") == 2, "a retry is one more delivery"
    assert len([n for n in names if n.startswith("publish ")]) == STEPS + 1
    publish = {s.attributes["messaging.destination.name"]: s for s in mine if s.name.startswith("publish ")}
    root = publish["E0"]
    assert root.parent is None and root.kind.name == "PRODUCER"
    for n in range(1, STEPS + 1):
        handled = f"E{n - 1}"
        delivers = [s for s in mine if s.name == f"deliver {handled}"]
        handlers = [s for s in mine if s.name == f"handler s{n}"]
        assert delivers and len(handlers) == len(delivers)
        for deliver in delivers:
            # the step's delivery is a child of the span that published the event it handled, across the stream hop
            assert deliver.parent.span_id == publish[handled].context.span_id, (deliver.name, handled)
            assert deliver.parent.is_remote and deliver.kind.name == "CONSUMER"
            assert deliver.attributes["messaging.message.id"] == publish[handled].attributes["messaging.message.id"]
        for handler in handlers:
            deliver = by_id[handler.parent.span_id]
            assert deliver.name == f"deliver {handled}" and handler.attributes["xflow.function"] == f"s{n}"
            assert handler.start_time >= deliver.start_time and handler.end_time <= deliver.end_time
        statuses = sorted(h.status.status_code.name for h in handlers)
        assert statuses == (["ERROR", "OK"] if n == 3 else ["OK"]), (n, statuses)
        # what the step published is a child of the delivery that published it (the one that succeeded)
        parent = by_id[publish[f"E{n}"].parent.span_id]
        assert parent.name == f"deliver {handled}" and parent.status.status_code.name == "OK"
    failed = next(h for h in mine if h.name == "handler s3" and h.status.status_code.name == "ERROR")
    assert "the first attempt of s3 fails" in failed.status.description


def test_a_five_step_execution_is_one_trace_on_the_embedded_backend(tmp_path, exporter):
    _, summary = run_five_steps(tmp_path)
    check_one_trace(list(exporter.get_finished_spans()), summary["execution_id"])


@pytest.mark.kafka
def test_a_five_step_execution_is_one_trace_on_kafka(tmp_path, exporter, kafka_broker):  # noqa: F811
    pytest.importorskip("kafka")
    engine, summary = run_five_steps(tmp_path, {"name": "kafka", "options": kafka_broker.transport_options()})
    try:
        check_one_trace(list(exporter.get_finished_spans()), summary["execution_id"])
    finally:
        engine.teardown()


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP traces intake: keeps each ExportTraceServiceRequest's body."""

    bodies: list[bytes]

    def do_POST(self) -> None:  # noqa: N802 - the http.server name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf":
            type(self).bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[bytes]]]:
    handler = type("Collector", (_Collector,), {"bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.bodies
    finally:
        server.shutdown()
        server.server_close()


def test_xflow_run_sends_one_trace_to_the_otlp_endpoint_of_the_standard_settings(cli, tmp_path, collector):
    """Through the CLI: OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME are all it takes."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the otel extra is not installed")
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    url, bodies = collector
    (tmp_path / "steps.py").write_text(HANDLERS)
    flow = five_steps()
    (tmp_path / "flow.json").write_text(json.dumps(flow))
    done = cli("run", tmp_path / "flow.json", "--event", "E0", "--data",
               json.dumps({"marker": str(tmp_path / "s3-failed-once"), "path": []}), "-o", "json",
               OTEL_EXPORTER_OTLP_ENDPOINT=url, OTEL_SERVICE_NAME="traced-run", OTEL_BSP_SCHEDULE_DELAY="100")
    assert done.returncode == 0, done.stdout + done.stderr
    execution_id = json.loads(done.stdout)["execution_id"]
    spans = []
    for body in bodies:
        for resource_spans in trace_service_pb2.ExportTraceServiceRequest.FromString(body).resource_spans:
            resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
            assert resource["service.name"] == "traced-run"
            spans += [span for scope in resource_spans.scope_spans for span in scope.spans]
    mine = [s for s in spans if any(kv.key == "xflow.execution_id" and kv.value.string_value == execution_id
                                    for kv in s.attributes)]
    assert {s.trace_id for s in mine} == {mine[0].trace_id}
    names = sorted(s.name for s in mine)
    assert names == sorted([*(f"publish E{n}" for n in range(STEPS + 1)), "deliver E2", "handler s3",
                            *(f"deliver E{n - 1}" for n in range(1, STEPS + 1)),
                            *(f"handler s{n}" for n in range(1, STEPS + 1))])
    by_id = {s.span_id: s for s in mine}
    for span in mine:
        if span.name.startswith("deliver "):
            assert by_id[span.parent_span_id].name == "publish " + span.name.split()[1]


def test_without_spans_the_context_is_carried_in_every_event(tmp_path, monkeypatch):
    """No tracer provider: each event still carries a traceparent of the execution's one trace, each with a span id
    of its own, as CloudEvents extension attributes (read back with the CloudEvents SDK)."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")  # OpenTelemetry's own switch: no spans, whatever is installed
    assert tracing.spans() is None
    engine, summary = run_five_steps(tmp_path)
    events = [f"E{n}" for n in range(STEPS + 1)]
    consumer = engine.transport.subscribe("trace-reader", events)
    try:
        records = drain(consumer, STEPS + 1, 30.0)
    finally:
        consumer.close()
    json_format = pytest.importorskip("cloudevents.core.formats.json", reason="cloudevents 2.x is not installed")
    read = {d.event: json_format.JSONFormat().read(None, d.value) for d in records}  # the SDK validates attributes
    assert sorted(read) == events
    parents = {name: tracing.parse(event.get_extension("traceparent")) for name, event in read.items()}
    assert all(parents.values()), parents
    assert len({p[0] for p in parents.values()}) == 1, "one trace id"
    assert len({p[1] for p in parents.values()}) == STEPS + 1, "a span id per event"
    for name, event in read.items():
        if name != "E0":  # a handler's event: its span id follows from its id (a re-delivery republishes the same)
            assert parents[name][1] == tracing.span_id_of(event.get_id())
    assert {event.get_extension("executionid") for event in read.values()} == {summary["execution_id"]}


@pytest.mark.parametrize("text, expected", [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
     ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")),
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-later-fields",
     ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "00")),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),
    ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),
    (42, None), (None, None), ("", None),
])
def test_traceparent_is_read_as_w3c_trace_context_says(text, expected):
    assert tracing.parse(text) == expected


def test_a_handled_event_without_context_continues_the_executions_trace():
    first = tracing.continued(None, None, "event-a", "exec-1")
    second = tracing.continued("garbage", "k=v", "event-b", "exec-1")
    assert tracing.trace_id(first[0]) == tracing.trace_id(second[0]) == tracing.trace_of("exec-1")
    assert second[1] is None, "no state without a valid parent"
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    child, state = tracing.continued(given, "vendor=1", "event-c", "exec-1")
    assert tracing.parse(child) == ("4bf92f3577b34da6a3ce929d0e0e4736", tracing.span_id_of("event-c"), "00")
    assert state == "vendor=1"
    assert tracing.continued(given, "x" * (tracing.MAX_TRACESTATE + 1), "event-c", "exec-1")[1] is None
