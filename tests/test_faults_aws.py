"""AWS backends ride out transient faults (issue 9), against a moto server behind a fault proxy.

- errors are classified: throttling, 5xx and dropped connections are BackendUnavailable (exit 1), a
  missing resource is a plain XflowError; an endpoint that is not there fails a command within seconds;
- PutRecords keeps each execution's order when some entries are refused (the proxy takes them out of
  the request and reports them failed, as Kinesis does);
- ``xflow publish`` rides out dropped connections and names a persistent drop as such;
- a burst of faults on one operation of the Kinesis consumer (GetRecords, the lease UpdateItem, the
  heartbeat PutItem, DescribeTable, the checkpoint UpdateItem) leaves ``xflow worker`` running;
- chaos: two ``xflow worker`` processes (kinesis / local / cloudwatch) with 15% of all AWS calls failing
  in every way the proxy knows: every execution succeeds, each effect is recorded once, order is kept.

Figures (faults injected, times) are printed; run with ``-s`` to see them. The chaos test runs
``XFLOW_CHAOS_EXECUTIONS`` executions (default 300) with ``XFLOW_CHAOS_RATE`` of the calls failing
(default 0.15); ``XFLOW_FAULT_SEED`` repeats a run's choices of faults.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FAULTS, FaultProxy, Rule
from xflow_cli_testing import CLI

from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.interfaces import PluginContext, Record
from xflow.core.runtime import encode_event
from xflow.testing import apply_steps

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

pytestmark = pytest.mark.aws


@pytest.fixture
def proxy(aws_endpoint: str) -> Iterator[FaultProxy]:  # noqa: F811
    seed = int(os.environ.get("XFLOW_FAULT_SEED", "0")) or int.from_bytes(os.urandom(4), "big")
    print(f"\nfault proxy seed {seed} (XFLOW_FAULT_SEED)")
    with FaultProxy(aws_endpoint, seed=seed) as running:
        yield running


def wait_for(condition: Callable[[], bool], seconds: float, what: str, step: float = 0.2) -> float:
    """Wait until ``condition()``; the seconds it took. Fails the test after ``seconds``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds:g} s: {what}")
        time.sleep(step)
    return time.monotonic() - started


def _kinesis(tmp_path: Path, **options: Any) -> Any:
    from xflow.transports.kinesis import KinesisTransport

    return KinesisTransport(PluginContext(f"ft{uuid.uuid4().hex[:8]}", options, tmp_path))


def _apply(plugin: Any, steps: list[Any]) -> None:
    apply_steps(steps, plugin)


# ---------------------------------------------------------------------------------------------- classification


def test_transient_failures_are_backend_unavailable_and_mistakes_are_not(proxy, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    transport = _kinesis(tmp_path)
    _apply(transport, transport.plan_setup(["A"]))
    name = transport.stream_name("A")
    try:
        # a missing stream is the user's problem: exit 2, not waited for
        with pytest.raises(XflowError) as missing:
            transport._open_shards(f"{name}-missing")
        assert not isinstance(missing.value, BackendUnavailable) and missing.value.exit_code == 2
        assert "ResourceNotFoundException" in missing.value.message
        # a 503 or throttling that outlasts botocore's tries is BackendUnavailable (exit 1) naming the code
        for fault, code in [("503", "ServiceUnavailable"), ("throttle", "ProvisionedThroughputExceededException")]:
            rule = proxy.add(Rule((fault,), operations=("DescribeStreamSummary",)))
            with pytest.raises(BackendUnavailable) as busy:
                transport._open_shards(name)
            assert busy.value.exit_code == 1 and code in busy.value.message, busy.value.message
            assert rule.used >= 3  # botocore tried more than once first
            proxy.clear()
        # a few of them in a row are retried away (botocore's standard retry mode)
        rule = proxy.add(Rule(("503", "500", "throttle", "drop"), operations=("DescribeStreamSummary",), count=2))
        assert transport._open_shards(name) == 1 and rule.used == 2
        # a dropped connection is said to be one, not an unreachable endpoint
        proxy.add(Rule(("drop",), operations=("DescribeStreamSummary",)))
        with pytest.raises(BackendUnavailable, match=r"the connection to http://127\.0\.0\.1:\d+ was dropped") as drop:
            transport._open_shards(name)
        assert "cannot be reached" not in drop.value.message
        proxy.clear()
    finally:
        _apply(transport, transport.plan_teardown(["A"]))


def test_an_endpoint_that_is_not_there_fails_a_command_within_seconds(tmp_path, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "a",
                       "AWS_SECRET_ACCESS_KEY": "b", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    transport = _kinesis(tmp_path)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="cannot be reached") as down:
        transport.publish("A", [Record("e", b'{"execution_id": "e"}')])
    assert time.monotonic() - started < 10
    assert down.value.exit_code == 1 and "was dropped" not in down.value.message


# ---------------------------------------------------------------------------------------------- PutRecords order


def _records(executions: int, per_execution: int) -> list[Record]:
    """``per_execution`` events of each execution, an execution's events one after the other."""
    return [Record(f"exec-{e}", encode_event("A", {"seq": s}, f"exec-{e}", f"id-{e}-{s}", "test"))
            for e in range(executions) for s in range(per_execution)]


def _stream_order(stream: str) -> dict[str, list[int]]:
    """Each execution's ``seq`` values in the order the stream holds them (read straight from moto)."""
    import boto3

    client = boto3.client("kinesis")
    order: dict[str, list[int]] = collections.defaultdict(list)
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=10000)
            for rec in page["Records"]:
                order[rec["PartitionKey"]].append(json.loads(rec["Data"])["data"]["seq"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return order


def test_partly_failed_putrecords_keep_each_execution_in_order(proxy, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    transport = _kinesis(tmp_path, shards=2)
    _apply(transport, transport.plan_setup(["A"]))
    try:
        rule = proxy.add(Rule(("partial",), operations=("PutRecords",), count=3))  # the first three calls
        transport.publish("A", _records(20, 3))  # 20 executions, 3 events each, in one publish
        proxy.clear()
        order = _stream_order(transport.stream_name("A"))
        print(f"partial PutRecords failures: {rule.used} calls, {proxy.failed_entries} entries refused, "
              f"{transport.put_calls} calls in all")
        assert rule.used == 3 and proxy.failed_entries >= 3
        # refused entries were not stored and were sent again: each event once, in its execution's order
        assert order == {f"exec-{e}": [0, 1, 2] for e in range(20)}
        assert transport.put_calls >= 3  # an execution's three events go in three calls
    finally:
        _apply(transport, transport.plan_teardown(["A"]))


# ---------------------------------------------------------------------------------------------- workers and CLI

ONE_STEP = """
lambdas:
  - {{name: note, source: steps.py, handler: note}}
subscriptions:
  - {{name: Start, subscribers: [note]}}
workflows:
  - id: {wid}
"""

CHAIN = """
lambdas:
  - {{name: split, source: steps.py, handler: split, publishes: [Part]}}
  - {{name: part, source: steps.py, handler: part, publishes: [Done]}}
  - {{name: finish, source: steps.py, handler: finish}}
subscriptions:
  - {{name: Start, subscribers: [split]}}
  - {{name: Part, subscribers: [part]}}
  - {{name: Done, subscribers: [finish]}}
workflows:
  - id: {wid}
"""

#: each effect appends "EXECUTION STEP SEQ EVENT_ID PID TIME" to $XFLOW_TEST_NOTES (one short write: atomic)
STEPS = '''
import os, time


def _note(ctx, step, seq):
    line = f"{ctx.execution_id} {step} {seq} {ctx.event_id} {os.getpid()} {time.time():.3f}\\n"
    fd = os.open(os.environ["XFLOW_TEST_NOTES"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def note(event, ctx):
    _note(ctx, "note", 0)


def split(event, ctx):
    _note(ctx, "split", 0)
    for seq in range(3):
        ctx.publish("Part", {"seq": seq})


def part(event, ctx):
    _note(ctx, "part", event["seq"])
    return {"seq": event["seq"]}


def finish(event, ctx):
    _note(ctx, "finish", event["seq"])
'''


class Flow:
    """A workflow set up on moto (kinesis / local / cloudwatch) in ``tmp_path``; workers talk to the proxy."""

    def __init__(self, tmp_path: Path, template: str, proxy: FaultProxy, *options: str,
                 tracker: str = "cloudwatch") -> None:
        self.wid = f"ft{uuid.uuid4().hex[:8]}"
        self.dir = tmp_path
        (tmp_path / "steps.py").write_text(STEPS)
        self.path = tmp_path / "wf.yaml"
        self.path.write_text(template.format(wid=self.wid))
        self.notes = tmp_path / "notes.txt"
        self.proxy = proxy
        self.cli = CLI(tmp_path, {"XFLOW_TEST_NOTES": str(self.notes)})
        self.workers: list[subprocess.Popen[str]] = []
        plugins = ["--transport", "kinesis", "--provider", "local", "--tracker", tracker, *options]
        if tracker == "cloudwatch":  # no Lambda function logs to look through in track
            plugins += ["--option", "tracker.function_logs=false"]
        done = self.cli("setup", self.path, *plugins, timeout=180)  # straight to moto: no faults
        assert done.returncode == 0, done.stderr

    def worker(self) -> subprocess.Popen[str]:
        proc = self.cli.popen("worker", self.path, AWS_ENDPOINT_URL=self.proxy.url)
        self.workers.append(proc)
        return proc

    def engine(self) -> Any:
        from xflow.core.engine import Engine

        return Engine(self.path, state_dir=self.dir / ".xflow")

    def note_lines(self) -> list[list[str]]:
        return [line.split() for line in self.notes.read_text().splitlines()] if self.notes.exists() else []

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("proc-*.log")))

    def stop_workers(self) -> list[int | None]:
        """SIGTERM every worker; their exit statuses (None: was still running when asked, then exited)."""
        codes = []
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                codes.append(proc.wait(timeout=60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes

    def teardown(self) -> None:
        self.stop_workers()
        self.cli("teardown", self.path, timeout=180)


@pytest.fixture
def flows(proxy: FaultProxy, tmp_path: Path) -> Iterator[Callable[..., Flow]]:
    made: list[Flow] = []

    def make(template: str, *options: str, tracker: str = "cloudwatch") -> Flow:
        flow = Flow(tmp_path, template, proxy, *options, tracker=tracker)
        made.append(flow)
        return flow

    yield make
    proxy.clear()
    for flow in made:
        flow.teardown()


def _reading(proxy: FaultProxy, workers: list[subprocess.Popen[str]], calls: int = 2) -> Callable[[], bool]:
    """True once ``calls`` GetRecords calls went through the proxy (the workers read), or a worker exited."""
    return lambda: proxy.forwarded["GetRecords"] >= calls or any(w.poll() is not None for w in workers)


def test_xflow_publish_rides_out_dropped_connections(flows, proxy):
    flow = flows(ONE_STEP)
    # more drops in a row than botocore tries a call: the publish still gets through, once
    rule = proxy.add(Rule(("drop",), operations=("PutRecords",), count=4))
    done = flow.cli("publish", flow.path, "Start", "{}", "--execution-id", "drops-1", AWS_ENDPOINT_URL=proxy.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "drops-1" and rule.used == 4
    import boto3

    client = boto3.client("kinesis")
    shard = client.list_shards(StreamName=f"{flow.wid}-Start")["Shards"][0]["ShardId"]
    iterator = client.get_shard_iterator(StreamName=f"{flow.wid}-Start", ShardId=shard,
                                         ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    assert [r["PartitionKey"] for r in client.get_records(ShardIterator=iterator)["Records"]] == ["drops-1"]
    # a connection dropped every time: one line naming the drop, exit 1, within a bounded time
    proxy.clear()
    proxy.add(Rule(("drop",), operations=("PutRecords",)))
    started = time.monotonic()
    done = flow.cli("publish", flow.path, "Start", "{}", "--execution-id", "drops-2", AWS_ENDPOINT_URL=proxy.url)
    took = time.monotonic() - started
    print(f"publish against a connection dropped every time failed after {took:.1f} s")
    assert done.returncode == 1, done.stderr
    assert "was dropped" in done.stderr and "cannot be reached" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert took < 60


#: (operation, fault, body filter, faults in a row, set before the worker starts)
BURSTS = {
    "503 on GetRecords": ("GetRecords", "503", None, 9, False),
    "throttled lease UpdateItem": ("UpdateItem", "throttle", "SET #o = :me", 5, False),
    "throttled heartbeat PutItem": ("PutItem", "throttle", None, 5, False),
    "500 on DescribeTable": ("DescribeTable", "500", None, 5, True),
    "dropped checkpoint UpdateItem": ("UpdateItem", "drop", "SET checkpoint = :seq", 5, False),
}


@pytest.mark.parametrize("burst", list(BURSTS))
def test_a_burst_of_faults_leaves_the_worker_running(flows, proxy, burst):
    operation, fault, body, count, before_start = BURSTS[burst]
    flow = flows(ONE_STEP, "--option", "lease_seconds=6")
    rule = Rule((fault,), operations=(operation,), body_contains=body, count=count)
    if before_start:
        proxy.add(rule)
    worker = flow.worker()
    wait_for(_reading(proxy, [worker]), 60, "the worker reads its shard")
    assert worker.poll() is None, f"the worker exited with {worker.returncode}:\n{flow.logs()}"
    if not before_start:
        proxy.add(rule)
    with flow.engine() as engine:
        started = time.monotonic()
        engine.publish("Start", {}, "burst-1")
        wait_for(lambda: rule.used == count or worker.poll() is not None, 60, f"{count} faults injected")
        wait_for(lambda: any(line[0] == "burst-1" for line in flow.note_lines()) or worker.poll() is not None,
                 60, "the execution is handled")
        recovered = time.monotonic() - started
        assert worker.poll() is None, f"the worker exited with {worker.returncode}:\n{flow.logs()}"
        wait_for(lambda: engine.track("burst-1")["status"] == "succeeded", 30, "the execution is recorded")
    print(f"{burst}: {rule.used} faults in a row, the execution done {recovered:.1f} s after it was published")
    assert rule.used == count
    assert [line[:2] for line in flow.note_lines()] == [["burst-1", "note"]]
    assert flow.stop_workers() == [0]
    assert "Traceback" not in flow.logs()


# ---------------------------------------------------------------------------------------------- chaos

PUBLISHER = """
import sys
from xflow import Engine

path, state, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Engine(path, state_dir=state) as engine:
    for i in range(count):
        engine.publish("Start", {"i": i}, f"chaos-{i:04d}")
print("published", count)
"""


#: (tracker, executions): the cloudwatch tracker makes about six AWS calls per delivery, each fault on them
#: costing botocore's backoff (half a second on average for a first retry), so it runs fewer
CHAOS = {"sqlite": 300, "cloudwatch": 40}


@pytest.mark.parametrize("tracker", list(CHAOS))
def test_chaos_two_workers_ride_out_15_percent_faults(flows, proxy, tracker):
    executions = int(os.environ.get("XFLOW_CHAOS_EXECUTIONS", CHAOS[tracker]))
    rate = float(os.environ.get("XFLOW_CHAOS_RATE", "0.15"))
    flow = flows(CHAIN, "--option", "shards=2", tracker=tracker)
    workers = [flow.worker(), flow.worker()]
    wait_for(_reading(proxy, workers, 12), 90, "both workers read their shards")
    forwarded_before = sum(proxy.forwarded.values())
    chaos = proxy.add(Rule(FAULTS, rate=rate))
    started = time.monotonic()
    publisher = subprocess.run([sys.executable, "-c", PUBLISHER, str(flow.path), str(flow.dir / ".xflow"),
                                str(executions)], cwd=flow.dir, capture_output=True, text=True, timeout=600,
                               env=dict(os.environ, AWS_ENDPOINT_URL=proxy.url))
    published_in = time.monotonic() - started
    assert publisher.returncode == 0, publisher.stderr[-3000:]
    expected = executions * 7  # split, 3 x part, 3 x finish

    def settled() -> bool:
        return len(flow.note_lines()) >= expected or any(w.poll() is not None for w in workers)

    wait_for(settled, 600, f"{expected} effects of {executions} executions", step=1.0)
    took = time.monotonic() - started
    time.sleep(3)  # anything handled twice late would show up now
    proxy.clear()
    injected = dict(proxy.injected)
    calls = chaos.used + sum(proxy.forwarded.values()) - forwarded_before  # AWS calls made during the chaos
    exits = [w.returncode for w in workers if w.poll() is not None]
    lines = flow.note_lines()

    # the figures
    by_fault = collections.Counter()
    for (_, kind), n in injected.items():
        by_fault[kind] += n
    by_operation = collections.Counter()
    for (operation, _), n in injected.items():
        by_operation[operation] += n
    effects = collections.Counter((e, step, int(seq)) for e, step, seq, *_ in lines)
    duplicates = sum(n - 1 for n in effects.values() if n > 1)
    spans = collections.defaultdict(list)
    for e, _, _, _, _, at in lines:
        spans[e].append(float(at))
    longest = max((max(v) - min(v) for v in spans.values()), default=0.0)
    waits = flow.logs().count("waiting for the")
    print(f"chaos ({tracker} tracker): {executions} executions published in {published_in:.0f} s, "
          f"all effects after {took:.0f} s; {calls} AWS calls, "
          f"faults injected {sum(by_fault.values())} ({dict(by_fault)}) over {dict(by_operation)}; "
          f"{proxy.failed_entries} PutRecords entries refused; worker exits {exits}; handler effects "
          f"{len(lines)} for {expected} expected ({duplicates} twice); longest execution {longest:.1f} s; "
          f"worker waits logged {waits}")

    assert exits == [], f"workers exited: {exits}\n{flow.logs()[-5000:]}"
    if rate >= 0.1:  # the faults did happen, at the rate asked for, of every kind that any call can get ("partial"
        # applies to PutRecords only, a few dozen calls among the leases' ~2,000: the ordered-PutRecords test covers it)
        general = set(FAULTS) - {"partial"}
        assert 0.6 * rate <= chaos.used / calls <= 1.4 * rate and general <= set(by_fault), (calls, by_fault)
    # nothing lost, nothing done twice, each execution's events in order
    want = {(f"chaos-{i:04d}", step, seq) for i in range(executions)
            for step, seq in [("split", 0), ("part", 0), ("part", 1), ("part", 2),
                              ("finish", 0), ("finish", 1), ("finish", 2)]}
    assert set(effects) == want and duplicates == 0, (len(set(effects) ^ want), duplicates)
    order = collections.defaultdict(list)
    for e, step, seq, *_ in lines:
        order[(e, step)].append(int(seq))
    misordered = sorted(k for k, v in order.items() if v != sorted(v))
    assert misordered == [], misordered[:10]
    # tracking counts each event and each effect once (the last outcomes may still be on their way: retried writes)
    with flow.engine() as engine:
        summaries: dict[str, Any] = {}
        running = [f"chaos-{i:04d}" for i in range(executions)]

        def recorded() -> bool:
            summaries.update((e, engine.track(e)) for e in running)
            running[:] = [e for e in running if summaries[e]["status"] == "running"]
            return not running

        recorded_in = wait_for(recorded, 180, "every execution's outcome is recorded", step=1.0)
    print(f"chaos ({tracker} tracker): every outcome recorded {recorded_in:.1f} s after the last effect")
    wrong = {}
    for execution, summary in summaries.items():
        got = (summary["status"], [e["count"] for e in summary["events"]],
               [[(s["state"], s["attempts"]) for s in e["subscribers"]] for e in summary["events"]])
        # each event counted once, each delivery handled and recorded once
        if got != ("succeeded", [1, 3, 3], [[("succeeded", 1)], [("succeeded", 3)], [("succeeded", 3)]]):
            wrong[execution] = got
    assert wrong == {}, list(wrong.items())[:5]
    assert [w.poll() for w in workers] == [None, None], flow.logs()[-5000:]
    assert flow.stop_workers() == [0, 0]
