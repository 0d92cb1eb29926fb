"""Prometheus metrics from workers: a real Prometheus server (Debian's ``prometheus`` binary, on a free loopback port
with a config of its own) scrapes ``xflow worker --metrics-port``; PromQL through its HTTP API gives the run's
delivery counts, and the lag goes to 0 once the worker has drained its backlog. Also: the observer's counts through the
public API (a re-drive makes a duplicate), several worker processes adding up their counts (multiprocess mode), a
port that cannot be bound, and the recent executions read on an interval of their own (longer for a slow tracker)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

LOCAL = ["--transport", "local", "--provider", "local", "--tracker", "sqlite"]

STEPS = """
import os, time

def work(event, ctx):
    time.sleep(0.4)
    if event.get("fail"):
        raise RuntimeError("job refused")
    return {"job": event["job"]}

def tally(event, ctx):
    return None
"""

FLOW = """
workflow_id: scraped
lambdas:
  - {name: work, source: steps.py, handler: work, publishes: [Worked], retries: 1}
  - {name: tally, source: steps.py, handler: tally}
subscriptions:
  - {name: Job, subscribers: [work]}
  - {name: Worked, subscribers: [tally]}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a loopback URL of this test
        return response.read()


def _stop(process: subprocess.Popen, timeout: float = 30.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(10)
    return process.returncode


class Prometheus:
    """A Prometheus server scraping some loopback targets every second; PromQL through its HTTP API."""

    def __init__(self, folder: Path, targets: list[int]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = folder / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "xflow", "static_configs": [
                {"targets": [f"127.0.0.1:{port}" for port in targets]}]}],
        }))
        self.log = folder / "prometheus.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT, cwd=folder)
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(f"{self.url}/-/ready", 1.0):
                    return
            except (urllib.error.URLError, OSError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                _stop(self.process)
                raise RuntimeError(f"prometheus did not start:\n{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def query(self, promql: str) -> list[dict]:
        answer = json.loads(_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The single value a query gives (None when it gives nothing)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def by(self, promql: str, label: str) -> dict[str, float]:
        return {row["metric"].get(label, ""): float(row["value"][1]) for row in self.query(promql)}

    def stop(self) -> None:
        _stop(self.process)


PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[int]], Prometheus]]:
    if PROMETHEUS is None:
        pytest.skip("the Prometheus test needs Debian's prometheus package (.ci/install-prometheus.sh installs it)")
    started: list[Prometheus] = []

    def start(targets: list[int]) -> Prometheus:
        folder = tmp_path / f"prometheus-{len(started)}"
        folder.mkdir()
        started.append(Prometheus(folder, targets))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def _wait_for(what: str, check: Callable[[], bool], timeout: float, on_timeout: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s; {on_timeout()}")
        time.sleep(0.5)


def test_prometheus_scrapes_a_worker_delivery_counts_and_lag_to_zero(cli, make_workflow, prometheus, tmp_path):
    flow = make_workflow(FLOW, {"steps.py": STEPS})
    assert cli("setup", flow, *LOCAL).returncode == 0
    jobs = [{"job": n} for n in range(7)] + [{"job": 7, "fail": True}]
    for data in jobs:  # a backlog the worker finds when it starts
        assert cli("publish", flow, "Job", json.dumps(data)).returncode == 0

    metrics_port = _free_port()
    server = prometheus([metrics_port])
    worker = cli.popen("worker", flow, "--metrics-port", str(metrics_port))
    try:
        work = 'workflow="scraped",function="work"'

        def drained() -> bool:
            statuses = server.by(f"sum by (status) (xflow_deliveries_total{{{work}}})", "status")
            lag = server.value('sum(xflow_consumer_lag_records{workflow="scraped"})')
            work_lag = server.value(f"sum(xflow_consumer_lag_records{{{work}}})")
            return statuses == {"succeeded": 7, "retrying": 1, "failed": 1} and lag == 0 and work_lag == 0

        def shown() -> str:
            return (f"deliveries: {server.query('xflow_deliveries_total')}; lag: "
                    f"{server.query('sum(xflow_consumer_lag_records)')}; worker log: "
                    f"{''.join(p.read_text() for p in tmp_path.glob('proc-*.log'))[-2000:]}")

        _wait_for("Prometheus to see the run settled and the lag at 0", drained, 120, shown)

        assert server.by('sum by (status) (xflow_deliveries_total{workflow="scraped",function="tally"})',
                         "status") == {"succeeded": 7}
        assert server.value(f"sum(xflow_dead_letters_total{{{work},event=\"Job\"}})") == 1
        assert server.value('sum(xflow_events_published_total{workflow="scraped",event="Worked"})') == 7
        assert server.value(f"sum(xflow_handler_duration_seconds_count{{{work}}})") == 9  # 7 + 2 failed attempts
        assert server.value(f"sum(xflow_handler_duration_seconds_sum{{{work}}})") >= 9 * 0.4
        # each run of work took 0.4 s: none is in the buckets below, all are in the 0.5 s one
        assert server.value(f'sum(xflow_handler_duration_seconds_bucket{{{work},le="0.25"}})') == 0
        assert server.value(f'sum(xflow_handler_duration_seconds_bucket{{{work},le="2.5"}})') == 9
        assert server.value(f"sum(xflow_deliveries_in_flight{{{work}}})") == 0
        # read on an interval of its own (30 s): the reading after the run settled shows each execution's outcome
        _wait_for("the executions read after the run", lambda: server.by(
            'xflow_recent_executions{workflow="scraped"}', "status") == {"succeeded": 7, "failed": 1}, 75, shown)
        # the backlog was seen before the worker drained it: the lag of work's partitions went from 8 to 0
        seen = server.value(f"max(max_over_time(xflow_consumer_lag_records{{{work}}}[10m]))")
        # a scrape during the backlog is not guaranteed (the worker may drain it between two 1 s scrapes): the series
        # exists and never exceeded the backlog; test_lag.py checks lag figures for a known backlog exactly
        assert seen is not None and 0 <= seen <= len(jobs)
        assert server.value('sum(xflow_consumer_lag_records{workflow="scraped",function="work"})') == 0
    finally:
        assert _stop(worker) == 0


def test_observer_counts_a_redriven_duplicate_through_the_public_api(make_workflow, tmp_path):
    from prometheus_client import CollectorRegistry

    from xflow import Engine
    from xflow.core import observe
    from xflow.monitoring.metrics import PrometheusObserver

    flow = make_workflow("""
        workflow_id: redriven
        lambdas:
          - {name: flaky, source: steps.py, handler: flaky, retries: 0}
          - {name: steady, source: steps.py, handler: steady}
        subscriptions:
          - {name: Ordered, subscribers: [flaky, steady]}
        """, {"steps.py": f"""
        import os
        def flaky(event, ctx):
            if not os.path.exists({str(tmp_path / 'fixed')!r}):
                raise RuntimeError("not fixed yet")
        def steady(event, ctx):
            return None
        """})
    registry = CollectorRegistry()
    previous = observe.install(PrometheusObserver(registry))
    try:
        engine = Engine(flow, state_dir=tmp_path / ".xflow", options={"provider": {"isolation": "thread"}})
        first = engine.run(data={"n": 1}, timeout=60)
        assert first["status"] == "failed"
        (tmp_path / "fixed").touch()
        engine.redrive(first["execution_id"])  # Ordered again, same id: steady has handled it already
        engine.work(until=lambda: engine.track(first["execution_id"])["status"] != "running")
        assert engine.track(first["execution_id"])["status"] == "succeeded"
        engine.close()
    finally:
        observe.install(previous)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"workflow": "redriven", **labels})

    assert sample("xflow_deliveries_total", function="flaky", status="failed") == 1
    assert sample("xflow_deliveries_total", function="flaky", status="succeeded") == 1
    assert sample("xflow_deliveries_total", function="flaky", status="retrying") is None
    assert sample("xflow_deliveries_total", function="steady", status="succeeded") == 1
    assert sample("xflow_deliveries_total", function="steady", status="skipped-duplicate") == 1
    assert sample("xflow_dead_letters_total", function="flaky", event="Ordered") == 1
    assert sample("xflow_events_published_total", event="Ordered") == 2  # published, then re-driven
    assert sample("xflow_handler_duration_seconds_count", function="steady") == 1  # the duplicate ran no handler
    assert sample("xflow_deliveries_in_flight", function="flaky") == 0
    assert observe.current() is previous


def _metrics(port: int) -> dict[tuple[str, str], float]:
    """``xflow_deliveries_total`` samples of one /metrics page, by (function, status)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(_get(f"http://127.0.0.1:{port}/metrics").decode()):
        for sample in family.samples:
            if sample.name == "xflow_deliveries_total":
                key = (sample.labels["function"], sample.labels["status"])
                found[key] = found.get(key, 0) + sample.value
    return found


def test_worker_processes_sharing_a_multiprocess_folder_add_up(cli, make_workflow, tmp_path):
    flow = make_workflow(FLOW.replace("time.sleep(0.4)", ""), {"steps.py": STEPS.replace("time.sleep(0.4)", "")})
    assert cli("setup", flow, *LOCAL).returncode == 0
    shared = tmp_path / "prometheus-multiproc"
    shared.mkdir()
    ports = [_free_port(), _free_port()]
    workers = [cli.popen("worker", flow, "--metrics-port", str(port), PROMETHEUS_MULTIPROC_DIR=str(shared))
               for port in ports]
    try:
        # jobs keep coming until both workers have handled some (the second may join after the first took all)
        published = 0
        deadline = time.monotonic() + 120
        while published < 6 or (len(list(shared.glob("counter_*.db"))) < 2 and time.monotonic() < deadline):
            assert cli("publish", flow, "Job", json.dumps({"job": published})).returncode == 0
            published += 1
        assert len(list(shared.glob("counter_*.db"))) == 2, "each process counts in a file of its own"

        def both_see_all() -> bool:
            try:
                pages = [_metrics(port) for port in ports]
            except (urllib.error.URLError, OSError):
                return False
            return all(page.get(("work", "succeeded")) == published and page.get(("tally", "succeeded")) == published
                       for page in pages)

        _wait_for("both workers' pages to show every job of both", both_see_all, 120,
                  lambda: str([p.read_text()[-1000:] for p in tmp_path.glob("proc-*.log")]))
    finally:
        for worker in workers:
            assert _stop(worker) == 0


def test_a_metrics_port_in_use_is_a_one_line_error(cli, make_workflow):
    flow = make_workflow(FLOW, {"steps.py": STEPS})
    assert cli("setup", flow, *LOCAL).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("worker", flow, "--metrics-port", str(port), timeout=60)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [errors[0]] and f"cannot serve metrics on 127.0.0.1:{port}" in errors[0]
    assert "Traceback" not in done.stderr


def test_metrics_are_not_imported_without_the_option(make_workflow, tmp_path):
    """Start-up stays light: the worker command's module imports no prometheus_client until --metrics-port."""
    code = "import sys, xflow.cli; assert 'prometheus_client' not in sys.modules, sorted(sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr



def _executions_collector(make_workflow: Callable[..., Path], tmp_path: Path, runs: int, delay: float = 0.0,
                          **options: float) -> tuple[Any, Any, list[str], list[str]]:
    """A WorkflowCollector over a real engine with ``runs`` executions published (never run: all running), in a
    registry of its own; the lists record the transport's lag reads and the tracker's history reads (each of these
    taking ``delay`` seconds more: a slow tracker)."""
    from prometheus_client import CollectorRegistry

    from xflow import Engine
    from xflow.monitoring.metrics import WorkflowCollector

    engine = Engine(make_workflow(FLOW, {"steps.py": STEPS}), state_dir=tmp_path / ".xflow")
    engine.setup()
    for n in range(runs):
        engine.publish("Job", {"job": n})
    lag_reads: list[str] = []
    history_reads: list[str] = []
    lag, history = engine.transport.lag, engine.tracker.history

    def counted_lag(group: str, events: list[str]) -> Any:
        lag_reads.append(group)
        return lag(group, events)

    def counted_history(execution_id: str) -> Any:
        history_reads.append(execution_id)
        time.sleep(delay)
        return history(execution_id)

    engine.transport.lag = counted_lag
    engine.tracker.history = counted_history
    registry = CollectorRegistry()
    registry.register(WorkflowCollector(lambda: [engine], **options))
    return engine, registry, lag_reads, history_reads


def test_recent_executions_are_read_on_an_interval_of_their_own(make_workflow, tmp_path):
    """Each scrape may read the lag (lag_interval 0 here), but the executions' histories are rebuilt only once per
    executions_interval; the metric keeps its name, labels and values, and its help says how often it is read."""
    engine, registry, lag_reads, history_reads = _executions_collector(
        make_workflow, tmp_path, 4, lag_interval=0, executions_interval=3600)
    with engine:
        for _ in range(3):
            assert registry.get_sample_value("xflow_recent_executions",
                                             {"workflow": "scraped", "status": "running"}) == 4
        assert len(lag_reads) == 3 * 2  # per scrape, once per function (work and tally)
        assert len(history_reads) == 4, "the executions' histories were read again before their interval"
        (family,) = [f for f in registry.collect() if f.name == "xflow_recent_executions"]
        assert "read at most every 3600 s" in family.documentation
        assert {tuple(sorted(s.labels)) for s in family.samples} == {("status", "workflow")}


def test_a_slow_executions_reading_is_kept_longer(make_workflow, tmp_path):
    """With no interval of its own (0 s), a reading that took T seconds is still kept T / EXECUTIONS_SHARE seconds:
    reading executions never takes more than that share of the worker's time; then it is read again."""
    from xflow.monitoring.metrics import EXECUTIONS_SHARE

    engine, registry, _, history_reads = _executions_collector(
        make_workflow, tmp_path, 3, delay=0.01, lag_interval=0, executions_interval=0)
    with engine:
        labels = {"workflow": "scraped", "status": "running"}
        started = time.monotonic()
        assert registry.get_sample_value("xflow_recent_executions", labels) == 3
        took = time.monotonic() - started
        assert registry.get_sample_value("xflow_recent_executions", labels) == 3
        if time.monotonic() - started < 0.03 / EXECUTIONS_SHARE:  # a scrape within 1.5 s keeps the reading
            assert len(history_reads) == 3
        time.sleep(max(0.0, took / EXECUTIONS_SHARE - (time.monotonic() - started)) + 0.1)
        assert registry.get_sample_value("xflow_recent_executions", labels) == 3
        assert len(history_reads) == 6


def test_the_documented_way_to_count_for_oneself_keeps_the_metrics_counting(make_workflow, tmp_path):
    """The recipe of ``xflow.core.observe``'s docstring, run as written while a PrometheusObserver is in place: the
    application's observer is added beside it, so both are told of each delivery (replacing it would stop the
    metrics); the recipe's ``remove`` then leaves the metrics' observer alone."""
    import itertools
    import textwrap

    from prometheus_client import CollectorRegistry

    from xflow import Engine
    from xflow.core import observe
    from xflow.monitoring.metrics import PrometheusObserver

    block = observe.__doc__.split("::\n\n", 1)[1].splitlines()  # the indented block after the first "::"
    recipe = textwrap.dedent("\n".join(itertools.takewhile(lambda line: not line or line.startswith(" "), block)))
    adding, _, removing = recipe.partition("\n...\n")  # "..." stands for the application's own work
    registry = CollectorRegistry()
    metrics = PrometheusObserver(registry)
    previous = observe.current()
    observe.add(metrics)
    namespace: dict[str, Any] = {}
    try:
        exec(adding, namespace)  # noqa: S102 - the documentation's own example
        (counting,) = [value for value in namespace.values()
                       if isinstance(value, type) and issubclass(value, observe.Observer) and value is not observe.Observer]
        seen: list[str] = []
        counting.settled = lambda self, workflow_id, function, status, duration: seen.append(status)
        flow = make_workflow(FLOW.replace("time.sleep(0.4)", ""), {"steps.py": STEPS.replace("time.sleep(0.4)", "")})
        with Engine(flow, state_dir=tmp_path / ".xflow", options={"provider": {"isolation": "thread"}}) as engine:
            assert engine.run(data={"job": 1}, timeout=60)["status"] == "succeeded"
        assert seen == ["succeeded", "succeeded"]  # work, then tally
        assert registry.get_sample_value("xflow_deliveries_total", {"workflow": "scraped", "function": "work",
                                                                    "status": "succeeded"}) == 1
        exec(removing, namespace)  # noqa: S102
        assert observe.current() is metrics
    finally:
        observe.install(previous)
