"""Prometheus metrics of a worker (``xflow worker --metrics-port PORT``): the observer that counts what the runners
report, the collector that reads lag and executions at scrape time, and the HTTP exposition server.

Metrics (every one labelled with ``workflow``):

- ``xflow_events_published_total{event}``: events published to the transport, by handlers and from outside;
- ``xflow_deliveries_total{function, status}``: settled delivery attempts, ``status`` one of ``succeeded``,
  ``retrying``, ``failed`` (for good) and ``skipped-duplicate``;
- ``xflow_handler_duration_seconds{function}``: a histogram of handler run times;
- ``xflow_dead_letters_total{function, event}``: deliveries dead-lettered;
- ``xflow_deliveries_in_flight{function}``: handler calls started and not finished;
- ``xflow_consumer_lag_records{function, event, partition}`` and ``xflow_consumer_lag_seconds{...}``: what the
  transport's :meth:`~xflow.core.interfaces.Transport.lag` says, read at scrape time (at most every
  ``lag_interval`` seconds; absent for a transport that cannot tell);
- ``xflow_recent_executions{status}``: the statuses (as ``xflow track`` gives them) of the workflow's most recent
  executions, where the tracker can list them. A tracker stores no status: each reading rebuilds those executions'
  histories, so it is read on an interval of its own: at most every ``executions_interval`` (30 s), and less often
  when a reading is slow (reading takes at most :data:`EXECUTIONS_SHARE` of the time).

Counts are taken in the process that runs the dispatcher (handler processes count nothing), so one worker's metrics
need nothing more. Several worker processes on one machine may share a folder named by ``PROMETHEUS_MULTIPROC_DIR``
(prometheus-client's multiprocess mode): each then serves the counts of all of them added up.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from xflow.core.errors import XflowError
from xflow.core.observe import Observer, SettledStatus

if TYPE_CHECKING:
    from xflow.core.engine import Engine

log = logging.getLogger("xflow")

#: handler run times, in seconds: from a quick in-thread call to a long batch job
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: how many of the most recent executions ``xflow_recent_executions`` counts by status
RECENT_EXECUTIONS = 100
#: seconds a reading of ``xflow_recent_executions`` is kept at least: it reads the history of each of those executions
EXECUTIONS_INTERVAL = 30.0
#: the share of the time spent reading executions at most: a reading that took T seconds is kept T / share seconds
EXECUTIONS_SHARE = 0.02


def multiprocess_dir() -> str | None:
    """The folder of prometheus-client's multiprocess mode, when ``PROMETHEUS_MULTIPROC_DIR`` names one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class PrometheusObserver(Observer):
    """Counts what runners report (:class:`~xflow.core.observe.Observer`) in prometheus-client metrics registered
    in ``registry``. Each label set is looked up once (dictionaries hold the children); the runners' threads call it
    at once, and a dictionary's get and set are atomic, so at worst a child is looked up twice."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.published_total = Counter("xflow_events_published", "Events published to the transport.",
                                       ("workflow", "event"), registry=registry)
        self.deliveries = Counter("xflow_deliveries", "Delivery attempts settled, by status (succeeded, retrying, "
                                  "failed for good, skipped-duplicate).", ("workflow", "function", "status"),
                                  registry=registry)
        self.duration = Histogram("xflow_handler_duration_seconds", "How long handlers ran.", ("workflow", "function"),
                                  buckets=DURATION_BUCKETS, registry=registry)
        self.dead_letters = Counter("xflow_dead_letters", "Deliveries dead-lettered.", ("workflow", "function", "event"),
                                    registry=registry)
        self.running = Gauge("xflow_deliveries_in_flight", "Handler calls started and not finished.",
                             ("workflow", "function"), multiprocess_mode="livesum", registry=registry)
        #: children per label set, looked up once each (``labels()`` costs more than what it returns)
        self._published: dict[tuple[str, str], Any] = {}
        self._deliveries: dict[tuple[str, str, str], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}
        self._dead: dict[tuple[str, str, str], Any] = {}
        self._running: dict[tuple[str, str], list[Any]] = {}

    def published(self, workflow_id: str, event: str, count: int) -> None:
        key = (workflow_id, event)
        child = self._published.get(key)
        if child is None:
            child = self._published[key] = self.published_total.labels(*key)
        child.inc(count)

    def settled(self, workflow_id: str, function: str, status: SettledStatus, duration: float | None) -> None:
        key = (workflow_id, function, status)
        child = self._deliveries.get(key)
        if child is None:
            child = self._deliveries[key] = self.deliveries.labels(*key)
        child.inc()
        if duration is not None:
            timed = self._durations.get((workflow_id, function))
            if timed is None:
                timed = self._durations[(workflow_id, function)] = self.duration.labels(workflow_id, function)
            timed.observe(duration)

    def dead_lettered(self, workflow_id: str, function: str, event: str) -> None:
        key = (workflow_id, function, event)
        child = self._dead.get(key)
        if child is None:
            child = self._dead[key] = self.dead_letters.labels(*key)
        child.inc()

    def in_flight(self, workflow_id: str, function: str, count: int) -> None:
        """Called by each runner loop's pass: the gauge is set only when the count changed."""
        key = (workflow_id, function)
        held = self._running.get(key)
        if held is None:
            held = self._running[key] = [self.running.labels(*key), None]
        if held[1] != count:
            held[1] = count
            held[0].set(count)


@dataclass
class _Reading:
    at: float = -1e18
    families: list[Any] = field(default_factory=list)


class WorkflowCollector(Collector):
    """Reads, at scrape time, each workflow's consumer lag (per function and partition) and the statuses of its
    recent executions, through the engines ``engines`` gives (a worker's own: its plugins are shared by threads, and
    another engine's SQLite files opened once more in a worker process would be unsafe). The lag read is kept for
    ``lag_interval`` seconds and the executions' for ``executions_interval`` or 1 / :data:`EXECUTIONS_SHARE` times
    what reading them took, whichever is longer (the tracker has no count by status: each reading rebuilds
    ``recent_executions`` histories per workflow), so frequent scrapes do not load the backends; a backend that
    cannot be read leaves its metrics out of that reading (and is logged)."""

    def __init__(self, engines: Callable[[], Sequence[Engine]], lag_interval: float = 5.0,
                 recent_executions: int = RECENT_EXECUTIONS, executions_interval: float = EXECUTIONS_INTERVAL) -> None:
        self._make_engines = engines
        self._engines: Sequence[Engine] | None = None
        self.lag_interval = lag_interval
        self.executions_interval = executions_interval
        self.recent_executions = recent_executions
        self._lock = threading.Lock()
        self._lag = _Reading()
        self._executions = _Reading()
        self._executions_kept = executions_interval  # grows when a reading is slow
        self._warned: set[str] = set()

    def describe(self) -> list[Any]:
        return []  # read at scrape time only (registering it reads no backend)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            now = time.monotonic()
            if self._engines is None:
                self._engines = list(self._make_engines())
            if now - self._lag.at >= self.lag_interval:
                self._lag = _Reading(now, self._read_lags(self._engines))
            if now - self._executions.at >= self._executions_kept:
                started = time.monotonic()
                self._executions = _Reading(now, self._read_all_executions(self._engines))
                took = time.monotonic() - started
                self._executions_kept = max(self.executions_interval, took / EXECUTIONS_SHARE)
            yield from self._lag.families
            yield from self._executions.families

    def _read_lags(self, engines: Sequence[Engine]) -> list[Any]:
        labels = ["workflow", "function", "event", "partition"]
        records = GaugeMetricFamily("xflow_consumer_lag_records", "Records after the consumer group's committed "
                                    "position, per partition (a lower bound where the transport stops counting).",
                                    labels=labels)
        seconds = GaugeMetricFamily("xflow_consumer_lag_seconds", "How long the oldest record not committed has "
                                    "waited on the transport, per partition.", labels=labels)
        for engine in engines:
            self._read_lag(engine, records, seconds)
        return [records, seconds]

    def _read_all_executions(self, engines: Sequence[Engine]) -> list[Any]:
        executions = GaugeMetricFamily(
            "xflow_recent_executions", f"Statuses of the workflow's {self.recent_executions} most recent executions "
            f"(read at most every {self.executions_interval:g} s, less often when reading is slow: each reading "
            "rebuilds their histories).",
            labels=["workflow", "status"])
        for engine in engines:
            self._read_executions(engine, executions)
        return [executions]

    def _read_lag(self, engine: Engine, records: GaugeMetricFamily, seconds: GaugeMetricFamily) -> None:
        from xflow.monitoring.status import function_lag

        workflow = engine.workflow
        for function in workflow.functions:
            try:
                lag = function_lag(engine, function)
            except Exception as exc:  # noqa: BLE001 - a scrape goes on without this backend's figures
                self._warn(f"lag of {workflow.id}/{function}", exc)
                continue
            for part in lag or ():
                labels = [workflow.id, function, part.event, part.partition]
                if part.records is not None:
                    records.add_metric(labels, part.records)
                if part.seconds is not None:
                    seconds.add_metric(labels, part.seconds)

    def _read_executions(self, engine: Engine, executions: GaugeMetricFamily) -> None:
        from xflow.serve.catalog import MAX_LIMIT, list_executions

        try:
            listing = list_executions(engine, None, min(self.recent_executions, MAX_LIMIT))
        except Exception as exc:  # noqa: BLE001
            self._warn(f"executions of {engine.workflow.id}", exc)
            return
        counts: dict[str, int] = {}
        for row in listing["executions"]:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        for status, count in sorted(counts.items()):
            executions.add_metric([engine.workflow.id, status], count)

    def _warn(self, what: str, exc: Exception) -> None:
        level = logging.DEBUG if what in self._warned else logging.WARNING
        self._warned.add(what)
        log.log(level, "metrics: cannot read the %s: %s", what, exc)

    def close(self) -> None:
        """Read nothing more (the engines are their owner's to close)."""
        with self._lock:
            self._engines = []


class MetricsServer:
    """The exposition server of one process: ``/metrics`` on ``host:port`` (prometheus-client's HTTP server, in a
    daemon thread), fed by a :class:`PrometheusObserver` and a :class:`WorkflowCollector`."""

    def __init__(self, observer: PrometheusObserver, registry: CollectorRegistry, collector: WorkflowCollector,
                 server: Any, thread: threading.Thread, host: str, port: int) -> None:
        self.observer, self.registry, self.collector = observer, registry, collector
        self._server, self._thread = server, thread
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and counting (the observer is removed)."""
        from xflow.core import observe

        observe.remove(self.observer)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self.collector.close()


def start_metrics_server(port: int, host: str = "127.0.0.1", engines: Callable[[], Sequence[Engine]] = list,
                         lag_interval: float = 5.0, executions_interval: float = EXECUTIONS_INTERVAL) -> MetricsServer:
    """Serve Prometheus metrics on ``host:port`` and add the observer that feeds them
    (:func:`xflow.core.observe.add`: start it before the runners). ``engines`` gives the engines whose lag and
    executions are read at scrape time (called once, at the first scrape): those of the process's workers; the lag
    at most every ``lag_interval`` seconds, the executions every ``executions_interval``. A port that cannot be
    bound is an XflowError."""
    from prometheus_client import start_http_server

    from xflow.core import observe

    counted = CollectorRegistry()
    folder = multiprocess_dir()
    if folder:
        from prometheus_client import multiprocess

        exposed = CollectorRegistry()
        multiprocess.MultiProcessCollector(exposed, path=folder)
        pid = os.getpid()
        atexit.register(lambda: multiprocess.mark_process_dead(pid, folder))
    else:
        exposed = counted
    observer = PrometheusObserver(counted)
    collector = WorkflowCollector(engines, lag_interval, executions_interval=executions_interval)
    exposed.register(collector)
    from xflow.logs.metrics import LogRoutesCollector

    exposed.register(LogRoutesCollector())  # the log routes' counters: sent, dropped, buffered (none without routes)
    try:
        server, thread = start_http_server(port, addr=host, registry=exposed)
    except OSError as exc:
        raise XflowError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
                         "choose a free port with --metrics-port (and an address of this machine with --metrics-host)"
                         ) from None
    observe.add(observer)  # beside the log routes' observer, if any
    return MetricsServer(observer, exposed, collector, server, thread, host, server.server_address[1])
