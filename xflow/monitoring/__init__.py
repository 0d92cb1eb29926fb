"""Monitoring of workflows: Prometheus metrics from workers (:mod:`.metrics`, the ``monitoring`` extra) and the
``xflow status`` report (:mod:`.status`).

Nothing here is imported by the core or at the CLI's start-up: ``prometheus_client`` is imported only when metrics
are asked for (``--metrics-port``).
"""
