"""Monitoring of workflows: Prometheus metrics from workers (:mod:`.metrics`, the ``monitoring`` extra), the
``xflow status`` report (:mod:`.status`) and one trace per execution (:mod:`.tracing`: W3C trace context in every
event, spans with the ``otel`` extra).

The core imports only :mod:`.tracing` (the standard library alone; OpenTelemetry is imported when spans are on).
Nothing else here is imported by the core or at the CLI's start-up: ``prometheus_client`` is imported only when
metrics are asked for (``--metrics-port``).
"""
