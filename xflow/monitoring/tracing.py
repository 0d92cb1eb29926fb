"""One trace per execution: W3C trace context in every event, and spans through OpenTelemetry when it is installed.

Every event carries the CloudEvents distributed-tracing extension: ``traceparent`` (``00-TRACE_ID-SPAN_ID-FLAGS``,
the span that published the event) and, when set, ``tracestate``. An event published from outside starts a trace
(:func:`started`); each event a handler publishes continues the trace of the event it handled, with a span id of its
own (:func:`continued`), so all the steps of one execution form one trace, with a parent link across every stream
hop. Without OpenTelemetry this is all that happens (a few string operations per event): the context is carried.

With the ``otel`` extra (``pip install 'xflow[otel]'``) and a tracer provider to report to, runners also emit spans
(:class:`Spans`): ``publish EVENT`` (producer) for each event published, ``deliver EVENT`` (consumer) for each
delivery attempt, a child of the span that published the event, and ``handler FUNCTION`` inside it, whose status
says how the handler ended; the publish spans of the events an attempt published are children of its deliver span.
Each span carries ``xflow.workflow`` and ``xflow.execution_id`` (search a tracing backend for ``xflow.execution_id``
to find one execution's trace), deliveries and handler calls also ``xflow.function`` and ``xflow.attempt``, publish
and deliver spans OpenTelemetry's messaging attributes (``messaging.destination.name``: the event,
``messaging.message.id``: the event's id). The tracer provider is the one given to :func:`install` (an embedding
application's), else OpenTelemetry's global one if an application set it, else one made here from the standard
settings when they ask for export (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; protocol ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL``, default
``http/protobuf``; ``OTEL_SERVICE_NAME``, default ``xflow``; sampling ``OTEL_TRACES_SAMPLER``).
``OTEL_SDK_DISABLED=true`` turns spans off.

This module uses the standard library only and imports nothing from xflow: the Lambda provider ships it next to
the runtime shim (as ``xflow_tracing.py``). OpenTelemetry is imported only when spans are on.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys
import threading
from collections.abc import Mapping
from typing import Any

#: the CloudEvents extension attributes of the distributed-tracing extension
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: a traceparent's version, trace id, parent id and flags (lowercase hex); a later version may add fields after "-"
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?\Z")
#: the usual case, version 00, as one pattern (checked first: it is the one xflow writes)
_VERSION_00 = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")
#: an event id that is already 32 random-looking hex digits (xflow's own: a UUID's or a SHA-256's)
_HEX_ID = re.compile(r"[0-9a-f]{32}\Z")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
#: the longest tracestate carried on (the W3C limit: 32 members of at most 256 characters, and commas)
MAX_TRACESTATE = 32 * 257
EXPORT_SETTINGS = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def parse(traceparent: Any) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a ``traceparent`` as W3C Trace Context reads it, or None when it is not one
    (not text, version ``ff``, version ``00`` with more than its four fields, an id of zeros, upper-case hex...)."""
    if type(traceparent) is not str:
        return None
    if _VERSION_00.match(traceparent):  # the fast path: what xflow writes
        trace_id, span_id = traceparent[3:35], traceparent[36:52]
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
            return None
        return trace_id, span_id, traceparent[53:55]
    found = _TRACEPARENT.match(traceparent)
    if found is None:
        return None
    version, trace_id, span_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, flags


def traceparent(trace_id: str, span_id: str, flags: str = "01") -> str:
    return f"00-{trace_id}-{span_id}-{flags}"


def started() -> str:
    """The ``traceparent`` of an event published from outside: a new trace (random ids), sampled."""
    return traceparent(os.urandom(16).hex(), os.urandom(8).hex())


def span_id_of(event_id: str) -> str:
    """A span id of the event ``event_id`` (the same for the same id: a re-delivery republishes the same context):
    half of an id that is a hash already (those xflow derives), else a hash of it."""
    found = event_id[16:] if _HEX_ID.match(event_id) else hashlib.blake2b(
        event_id.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return found if found != _ZERO_SPAN else "1".zfill(16)


def trace_of(execution_id: str) -> str:
    """The trace id of an execution whose events came without a context (from another producer): the same for all
    its steps."""
    found = hashlib.blake2b(execution_id.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return found if found != _ZERO_TRACE else "1".zfill(32)


def continued(handled: str | None, state: str | None, event_id: str, execution_id: str) -> tuple[str, str | None]:
    """The (traceparent, tracestate) of event ``event_id``, published while handling an event that carried
    ``handled`` and ``state``: its trace, flags and state, with the new event's span id. When the handled event
    carried no valid context (another producer's), the trace is the execution's (:func:`trace_of`)."""
    parent = parse(handled)
    if parent is None:
        return traceparent(trace_of(execution_id), span_id_of(event_id)), None
    return traceparent(parent[0], span_id_of(event_id), parent[2]), state if state and len(state) <= MAX_TRACESTATE else None


def received(handled: str | None, execution_id: str, event_id: str) -> str:
    """The context a handled event is delivered in: its ``traceparent`` when valid, else one in the execution's
    trace (:func:`trace_of`), so that the steps after another producer's event still form one trace."""
    if parse(handled) is not None:
        return str(handled)
    return traceparent(trace_of(execution_id), span_id_of(event_id))


def trace_id(traceparent_text: Any) -> str | None:
    """The trace id of a ``traceparent`` (None when it is not a valid one)."""
    parent = parse(traceparent_text)
    return parent[0] if parent is not None else None


# -- spans (OpenTelemetry) ---------------------------------------------------------------------------------------

class Spans:
    """xflow's spans through an OpenTelemetry tracer provider. Each method emits finished spans (start and end
    given: runners learn a handler's times when it ends) and never raises for a span it cannot make."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._kinds = trace.SpanKind
        self._ok, self._error = trace.Status(trace.StatusCode.OK), trace.StatusCode.ERROR
        self._propagator = TraceContextTextMapPropagator()
        self.provider = provider
        self.tracer = provider.get_tracer("xflow")

    def _parent(self, traceparent_text: str, state: str | None) -> Any:
        carrier = {TRACEPARENT: traceparent_text}
        if state:
            carrier[TRACESTATE] = state
        return self._propagator.extract(carrier)

    def publish(self, workflow_id: str, event: str, execution_id: str, event_id: str, parent: Any = None,
                at: float | None = None) -> tuple[str, str | None]:
        """A ``publish`` span for one event, child of ``parent`` (what :meth:`attempt` returned; None: the current
        context, such as an application's span around ``Engine.publish``); the event's (traceparent, tracestate)."""
        moment = None if at is None else int(at * 1e9)
        span = self.tracer.start_span(f"publish {event}", context=parent, kind=self._kinds.PRODUCER,
                                      start_time=moment, attributes={
                                          "messaging.system": "xflow", "messaging.operation.type": "send",
                                          "messaging.destination.name": event, "messaging.message.id": event_id,
                                          "xflow.workflow": workflow_id, "xflow.execution_id": execution_id})
        span.end(end_time=moment)
        context = span.get_span_context()
        if not context.is_valid:  # a tracer that makes no spans: carry a context all the same
            return started(), None
        # what the W3C propagator writes, without its round trip through a carrier
        return (traceparent(f"{context.trace_id:032x}", f"{context.span_id:016x}", f"{int(context.trace_flags):02x}"),
                context.trace_state.to_header() or None)

    def attempt(self, workflow_id: str, function: str, event: str, execution_id: str, event_id: str, attempt: int,
                traceparent_text: str | None, state: str | None, started_at: float, duration: float,
                ended_at: float, error: str | None) -> Any:
        """The ``deliver`` span of one attempt (child of the span that published the event: ``traceparent_text``),
        from ``started_at`` to ``ended_at``, and its ``handler`` span for ``duration`` seconds from ``started_at``.
        Returns the deliver span's context: the parent of the publish spans of the events the attempt published."""
        attributes = {"xflow.workflow": workflow_id, "xflow.function": function, "xflow.execution_id": execution_id,
                      "xflow.attempt": attempt}
        start, handler_end = int(started_at * 1e9), int((started_at + max(0.0, duration)) * 1e9)
        parent = self._parent(received(traceparent_text, execution_id, event_id), state)
        deliver = self.tracer.start_span(f"deliver {event}", context=parent, kind=self._kinds.CONSUMER,
                                         start_time=start, attributes={
                                             "messaging.system": "xflow", "messaging.operation.type": "process",
                                             "messaging.destination.name": event, "messaging.message.id": event_id,
                                             **attributes})
        context = self._trace.set_span_in_context(deliver)
        handler = self.tracer.start_span(f"handler {function}", context=context, kind=self._kinds.INTERNAL,
                                         start_time=start, attributes=attributes)
        status = self._ok if error is None else self._trace.Status(self._error, error[:500])
        handler.set_status(status)
        handler.end(end_time=handler_end)
        deliver.set_status(status)
        deliver.end(end_time=max(handler_end, int(ended_at * 1e9)))
        return context

    def flush(self, timeout_millis: int = 5000) -> None:
        """Send the spans still buffered (the Lambda shim, before its invocation returns)."""
        flush = getattr(self.provider, "force_flush", None)
        if flush is not None:
            flush(timeout_millis)


_lock = threading.Lock()
_installed: Any = None
_configured: Any = None


def install(provider: Any) -> Any:
    """Report spans to ``provider`` (an OpenTelemetry ``TracerProvider``; None: back to the default choice) in the
    runners started from now on; returns the one it replaces."""
    global _installed
    with _lock:
        previous, _installed = _installed, provider
    return previous


def spans(environ: Mapping[str, str] | None = None) -> Spans | None:
    """The span emitter for a runner starting now, or None when spans are off (see the module's docstring)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    provider = _installed
    if provider is None and "opentelemetry.trace" in sys.modules:  # an application may have set the global one
        provider = _global_provider()
    if provider is None and any(env.get(name) for name in EXPORT_SETTINGS):
        provider = _from_settings(env)
    if provider is None:
        return None
    try:
        return Spans(provider)
    except ImportError:
        return None


def _global_provider() -> Any:
    from opentelemetry import trace

    found = trace.get_tracer_provider()
    # the API's placeholders make no spans: only a provider someone set counts
    return None if type(found).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider") else found


def _from_settings(env: Mapping[str, str]) -> Any:
    """A tracer provider made once from the OTEL_ settings (None: OpenTelemetry's SDK is not installed, or the
    settings name no exporter)."""
    global _configured
    with _lock:
        if _configured is None:
            _configured = _make_provider(env) or False
        return _configured or None


def _make_provider(env: Mapping[str, str]) -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        return None
    names = [n.strip().lower() for n in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",") if n.strip()]
    exporters: list[Any] = []
    for name in names:
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            exporter = _otlp_exporter(env)
            if exporter is not None:
                exporters.append(exporter)
    if not exporters:
        return None
    provider = TracerProvider(resource=Resource.create({} if env.get("OTEL_SERVICE_NAME") else {"service.name": "xflow"}))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    """OpenTelemetry's OTLP span exporter for the protocol the settings name (it reads its endpoint, headers,
    timeout and compression from the same settings)."""
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    module = f"opentelemetry.exporter.otlp.proto.{'grpc' if protocol == 'grpc' else 'http'}.trace_exporter"
    try:
        exporter = importlib.import_module(module).OTLPSpanExporter
    except ImportError:
        print(f"xflow: spans are not sent: the OTLP exporter for {protocol} is not installed "
              "(pip install 'xflow[otel]')", file=sys.stderr)
        return None
    return exporter()
