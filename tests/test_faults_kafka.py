"""Kafka chaos: Apache Kafka stopped (SIGTERM, then SIGKILL, twice each) and restarted on the same ports and data
folder under three running ``xflow worker`` processes and a publishing loop, with either client.

What must hold at the end: every execution whose publish succeeded ends ``succeeded`` in ``track`` (nothing lost),
no event is counted twice, every publish call came back within its deadline, and the publisher and the workers are
the processes that started (none exited, none restarted). The time from the broker's return to the first settled
delivery is measured, printed and bounded.

A second test holds the broker down and looks at single calls: a publish (``xflow publish`` and ``Engine.publish``),
a poll and a commit fail as ``BackendUnavailable`` (exit 1) within their deadlines, never as another error, and the
same publisher and consumer work again once the broker is back; a setting the client refuses is exit 2.

Tansu keeps its data in memory only, so it cannot be restarted keeping the topics: it is skipped there.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from xflow_cli_testing import NOTING_STEPS, clean_env, read_notes

try:
    from kafka_brokers import kafka_broker  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.kafka_brokers import kafka_broker  # noqa: F401

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

CHAIN = """
workflow_id: {workflow_id}
lambdas:
  - {{name: first, source: steps.py, handler: first, publishes: [Middle], retries: 1}}
  - {{name: second, source: steps.py, handler: second, publishes: [Done], retries: 1}}
subscriptions:
  - {{name: Start, subscribers: [first]}}
  - {{name: Middle, subscribers: [second]}}
workflows:
  - {{id: {workflow_id}, flow: [Start, Middle, Done]}}
"""

#: a long-lived publisher: one Engine (one producer) for the whole run, publishing until the stop file appears;
#: one JSON line per publish: execution, ok, error, start time, duration
PUBLISHER = """
import json, sys, time
from pathlib import Path
from xflow.core.engine import Engine
from xflow.core.errors import XflowError

workflow, state_dir, out, stop, pause = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), float(sys.argv[5])
with Engine(Path(workflow), state_dir=Path(state_dir)) as engine, open(out, "a") as log:
    n = 0
    while not stop.exists():
        execution = f"p{n:05d}"
        n += 1
        started = time.time()
        try:
            engine.publish("Start", {"n": 1}, execution_id=execution)
            ok, error = True, None
        except XflowError as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        log.write(json.dumps({"execution": execution, "ok": ok, "error": error, "at": started,
                              "took": time.time() - started}) + "\\n")
        log.flush()
        time.sleep(pause)
"""

#: the publisher's and the workers' publish deadline: short, so that an outage makes some publishes fail
PUBLISH_TIMEOUT_S = 6
#: how long the broker stays away after it stopped
DOWN_S = 3.0
#: the bound on the time from the broker's return to the first settled delivery
RECOVERY_BOUND_S = 60.0
FAULTS = [signal.SIGTERM, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL]


@pytest.fixture(params=["confluent", "kafka-python"])
def client(request):
    pytest.importorskip("kafka" if request.param == "kafka-python" else "confluent_kafka")
    return request.param


def _published(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:.1f} s"


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _wait_until(condition, timeout: float, what: str, alive: list[subprocess.Popen]) -> float:
    """Poll ``condition()`` until true; returns the time it became true. Fails after ``timeout`` or if a process died."""
    deadline = time.monotonic() + timeout
    while not condition():
        dead = [p.pid for p in alive if p.poll() is not None]
        assert not dead, f"processes {dead} exited while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.2)
    return time.time()


def test_publisher_and_workers_ride_out_broker_stops_and_kills(cli, make_workflow, tmp_path, kafka_broker,  # noqa: F811
                                                               client, capsys):
    if not kafka_broker.can_restart:
        pytest.skip(f"the {kafka_broker.kind} broker cannot be restarted keeping its data (Tansu is memory-only)")
    from xflow.core.engine import Engine

    workflow_id = f"chaos{uuid.uuid4().hex[:6]}"
    path = make_workflow(CHAIN.format(workflow_id=workflow_id), {"steps.py": NOTING_STEPS}, name="chaos.yaml")
    notes = tmp_path / "notes.txt"
    env = {"XFLOW_TEST_NOTES": str(notes)}
    options = kafka_broker.transport_options(client=client, topic_prefix=f"t{uuid.uuid4().hex[:8]}.", partitions="6",
                                             publish_timeout_ms=str(PUBLISH_TIMEOUT_S * 1000))
    flags = [part for key, value in options.items() for part in ("--option", f"{key}={value}")]
    cli.json("setup", path, "--transport", "kafka", "--provider", "local", "--tracker", "sqlite", *flags, **env)

    out, stop_file = tmp_path / "published.jsonl", tmp_path / "stop-publishing"
    workers = [cli.popen("worker", path, **env) for _ in range(3)]
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(path), str(tmp_path / ".xflow"), str(out),
                                  str(stop_file), "0.15"], cwd=tmp_path, env=clean_env(**env),
                                 stdout=open(tmp_path / "publisher.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    processes = [publisher, *workers]
    faults: list[dict] = []
    engine = Engine(path, state_dir=tmp_path / ".xflow")
    try:
        def flowing_since(moment: float) -> bool:
            """An execution published after ``moment`` went through both steps."""
            fresh = [r["execution"] for r in _published(out) if r["ok"] and r["at"] >= moment]
            return any(engine.track(e)["status"] == "succeeded" for e in fresh[:3])

        started = time.time()
        _wait_until(lambda: flowing_since(started), 120, "execution through the workflow before the faults", processes)
        for sig in FAULTS:
            stopped = time.time()
            kafka_broker.stop(sig)
            time.sleep(DOWN_S)
            kafka_broker.start()
            back = time.time()
            faults.append({"signal": signal.Signals(sig).name, "stopped": stopped, "back": back})
            _wait_until(lambda back=back: flowing_since(back), 180, "execution through the workflow after the broker "
                        f"came back from {signal.Signals(sig).name}", processes)
            time.sleep(2)
        assert all(p.poll() is None for p in processes), "a process exited during the faults"
        stop_file.touch()
        publisher.wait(timeout=PUBLISH_TIMEOUT_S + 30)
        assert publisher.returncode == 0, (tmp_path / "publisher.log").read_text()[-3000:]

        records = _published(out)
        ok = [r["execution"] for r in records if r["ok"]]
        failed = [r for r in records if not r["ok"]]
        deadline = time.monotonic() + 180
        while True:
            summaries = {e: engine.track(e) for e in ok}
            running = [e for e, s in summaries.items() if s["status"] == "running"]
            if not running or time.monotonic() > deadline:
                break
            assert all(w.poll() is None for w in workers), "a worker exited while the last executions settled"
            time.sleep(1)
        exited = [w.pid for w in workers if w.poll() is not None]
        histories = {e: engine.tracker.history(e) for e in ok}
    finally:
        stop_file.touch()
        _stop(processes)
        engine.close()

    lost = [e for e, s in summaries.items() if s["status"] != "succeeded"]
    duplicates = {e: [x["count"] for x in s["events"]] for e, s in summaries.items()
                  if any(x["count"] > 1 for x in s["events"])}
    settled = sorted(d.started_at + d.duration for h in histories.values() for d in h.deliveries
                     if d.status == "succeeded")
    reruns = sum(n - 1 for n in read_notes(notes).values() if n > 1)
    for i, fault in enumerate(faults):
        until = faults[i + 1]["stopped"] if i + 1 < len(faults) else float("inf")
        window = [r for r in records if fault["stopped"] <= r["at"] < until]
        fault["published"] = sum(r["ok"] for r in window)
        fault["publish_failures"] = sum(not r["ok"] for r in window)
        first_ok = min((r["at"] + r["took"] for r in window if r["ok"] and r["at"] + r["took"] >= fault["back"]),
                       default=None)
        first_settled = next((t for t in settled if t >= fault["back"]), None)
        fault["down_s"] = fault["back"] - fault["stopped"]
        fault["first_publish_s"] = None if first_ok is None else first_ok - fault["back"]
        fault["first_settled_s"] = None if first_settled is None else first_settled - fault["back"]
    with capsys.disabled():
        print(f"\nkafka chaos ({client}): {len(ok)} executions published, {len(failed)} publishes failed, "
              f"{len(ok) - len(lost)} completed, {len(lost)} lost, {len(duplicates)} with duplicate effects in "
              f"tracking, {len(exited)} workers exited, {reruns} handler re-runs (at-least-once), slowest publish "
              f"{max(r['took'] for r in records):.1f} s")
        for fault in faults:
            print(f"  {fault['signal']}: down {fault['down_s']:.1f} s (stop, {DOWN_S:g} s away, start), "
                  f"{fault['published']} published and {fault['publish_failures']} failed publishes until the next "
                  f"fault; from the return: first publish {_seconds(fault['first_publish_s'])}, first settled "
                  f"delivery {_seconds(fault['first_settled_s'])}")

    assert not lost, f"{len(lost)} published executions did not succeed, e.g. {lost[:5]}: " \
                     f"{[summaries[e]['last_unprocessed_event'] for e in lost[:5]]}"
    assert not duplicates, f"events counted twice in tracking: {dict(list(duplicates.items())[:5])}"
    assert not exited, f"workers {exited} exited"
    for log in [tmp_path / "publisher.log", *tmp_path.glob("proc-*.log")]:
        assert "Traceback" not in log.read_text(), f"{log.name}:\n{log.read_text()[-3000:]}"
    slow = [r for r in records if r["took"] > PUBLISH_TIMEOUT_S + 15]
    assert not slow, f"publishes over their deadline: {slow[:3]}"
    for fault in faults:
        assert fault["first_settled_s"] is not None and fault["first_settled_s"] < RECOVERY_BOUND_S, fault
        assert fault["published"] > 0, fault
    # the front door agrees: `xflow track` of the first and last executions and the first published after each return
    after_returns = [next(r["execution"] for r in records if r["ok"] and r["at"] >= f["back"]) for f in faults]
    for execution in sorted({ok[0], ok[-1], *after_returns}):
        tracked = cli.json("track", path, execution)
        assert tracked["status"] == "succeeded" and [e["count"] for e in tracked["events"]] == [1, 1, 1], tracked
    cli.json("teardown", path)


#: a client setting each client refuses when it builds its producer
REFUSED_SETTING = {"kafka-python": '{"delivery_timeout_ms": 1}', "confluent": '{"acks": "sometimes"}'}


def test_calls_during_an_outage_are_backend_unavailable_within_deadlines(cli, make_workflow, tmp_path,  # noqa: F811
                                                                         kafka_broker, client):
    if not kafka_broker.can_restart:
        pytest.skip(f"the {kafka_broker.kind} broker cannot be restarted keeping its data (Tansu is memory-only)")
    from xflow.core.engine import Engine
    from xflow.core.errors import BackendUnavailable, XflowError

    workflow_id = f"down{uuid.uuid4().hex[:6]}"
    path = make_workflow(CHAIN.format(workflow_id=workflow_id), {"steps.py": NOTING_STEPS}, name="down.yaml")
    publish_timeout = 4.0
    options = kafka_broker.transport_options(client=client, topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
                                             publish_timeout_ms=str(int(publish_timeout * 1000)))
    flags = [part for key, value in options.items() for part in ("--option", f"{key}={value}")]
    cli.json("setup", path, "--transport", "kafka", "--provider", "local", "--tracker", "sqlite", *flags)
    # the longest a single call may take: connecting, then one request or one publish, and a margin for a busy machine
    connect, request = int(options["connect_timeout_ms"]) / 1000, int(options["request_timeout_ms"]) / 1000
    bound = connect + max(request, publish_timeout) + 10

    refused = cli("publish", path, "Start", "{}", "--option", f"client_config={REFUSED_SETTING[client]}")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("error: kafka transport:") and len(refused.stderr.strip().splitlines()) == 1

    with Engine(path, state_dir=tmp_path / ".xflow") as engine:
        transport = engine.transport
        consumer = transport.subscribe("first", ["Start"])
        try:
            engine.publish("Start", {"n": 1}, execution_id="before")
            before = _drain(consumer, 1, 60)
            assert [json.loads(d.value)["executionid"] for d in before] == ["before"]
            consumer.commit(before)

            kafka_broker.stop(signal.SIGKILL)
            try:
                started = time.monotonic()
                done = cli("publish", path, "Start", "{}", "--execution-id", "while-down", timeout=bound + 30)
                took = time.monotonic() - started
                assert done.returncode == 1, (done.returncode, done.stderr)
                assert done.stderr.startswith("error: kafka transport: cannot reach the brokers"), done.stderr
                assert len(done.stderr.strip().splitlines()) == 1, done.stderr
                assert took < bound + 5, f"xflow publish took {took:.1f} s with the broker down"

                started = time.monotonic()
                with pytest.raises(BackendUnavailable, match="cannot reach the brokers"):
                    engine.publish("Start", {"n": 1}, execution_id="down-engine")
                assert time.monotonic() - started < bound

                outcomes = []
                for _ in range(3):
                    started = time.monotonic()
                    try:
                        outcomes.append(("polled", consumer.poll(10, 1.0)))
                    except BackendUnavailable as exc:
                        outcomes.append(("unavailable", str(exc)))
                    except XflowError as exc:
                        pytest.fail(f"a poll with the broker down is not BackendUnavailable: {exc}")
                    assert time.monotonic() - started < bound
                assert all(kind == "unavailable" or got == [] for kind, got in outcomes), outcomes

                # kafka-python's commit waits for the broker: BackendUnavailable; confluent's is sent asynchronously
                # and returns at once (a failed one is made good by the next commit, checked below)
                started = time.monotonic()
                try:
                    consumer.commit(before)
                    waited = False
                except BackendUnavailable:
                    waited = True
                assert waited == (client == "kafka-python")
                assert time.monotonic() - started < bound
            finally:
                kafka_broker.start()

            # the same engine (its producer) and the same consumer go on: the producer that failed is replaced
            deadline = time.monotonic() + 90
            while True:
                try:
                    engine.publish("Start", {"n": 1}, execution_id="after")
                    break
                except BackendUnavailable:
                    assert time.monotonic() < deadline, "publishing did not recover within 90 s of the broker's return"
            after = _drain(consumer, 1, 90, skip={"down-engine"})
            read = [json.loads(d.value)["executionid"] for d in after]
            if client == "confluent" and read == ["before"]:
                # the commit of "before", sent asynchronously just before the kill, may have died with the broker:
                # "before" comes once more (a runner drops it as already handled), then "after"
                after += _drain(consumer, 1, 30, skip={"down-engine"})
                read = [json.loads(d.value)["executionid"] for d in after]
            # "before" and "after" lie on different partitions, so when "before" comes again it may come first or last
            assert read == ["after"] or (client == "confluent" and sorted(read) == ["after", "before"]), read
            consumer.commit(after)
        finally:
            consumer.close()
        # what was committed during and after the outage holds: the group's next member reads neither again
        consumer = transport.subscribe("first", ["Start"])
        try:
            again = [json.loads(d.value)["executionid"] for d in _drain(consumer, 1, 8)]
        finally:
            consumer.close()
        # a publish that failed may still have landed; with kafka-python a commit sent while the member rejoins its
        # group after the outage can be refused by the coordinator, so "after" may come once more (at least once:
        # a runner drops it as already handled); "before", committed during the outage, never comes again
        allowed = {"down-engine"} | ({"after"} if client == "kafka-python" else set())
        assert set(again) <= allowed, again
    cli.json("teardown", path)


def _drain(consumer, count: int, timeout: float, skip: set[str] = frozenset()) -> list:
    """Poll until ``count`` deliveries (not of the executions in ``skip``) came; a poll may find the broker away."""
    from xflow.core.errors import BackendUnavailable

    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        try:
            got.extend(d for d in consumer.poll(100, 0.5) if json.loads(d.value)["executionid"] not in skip)
        except BackendUnavailable:
            time.sleep(0.5)
    return got
