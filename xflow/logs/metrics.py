"""The log routes' counters as Prometheus metrics, read at scrape time from the routers running in the worker
(``xflow worker --metrics-port``; imported by :mod:`xflow.monitoring.metrics`, with prometheus-client):

- ``xflow_log_records_sent_total{workflow, route}``: records the route's destination took;
- ``xflow_log_records_dropped_total{workflow, route}``: records lost: the buffer was full while the destination was
  away, the destination refused them, or they were left when the worker stopped;
- ``xflow_log_records_buffered{workflow, route}``: records waiting in the route's buffer now.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from xflow.logs.routing import running_stats


class LogRoutesCollector(Collector):
    """The counters of every route running in this process."""

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        labels = ["workflow", "route"]
        sent = CounterMetricFamily("xflow_log_records_sent", "Log records a route's destination took.", labels=labels)
        dropped = CounterMetricFamily("xflow_log_records_dropped", "Log records a route lost (buffer full while its "
                                      "destination was away, refused, or left at stop).", labels=labels)
        buffered = GaugeMetricFamily("xflow_log_records_buffered", "Log records waiting in a route's buffer.",
                                     labels=labels)
        for row in running_stats():
            key = [row["workflow"], row["route"]]
            sent.add_metric(key, row["sent"])
            dropped.add_metric(key, row["dropped"])
            buffered.add_metric(key, row["buffered"])
        yield from (sent, dropped, buffered)
