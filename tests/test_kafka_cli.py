"""xflow on Kafka through the CLI: word_count end to end, scale-out workers with a SIGKILL, dead letters,
and a broker restart under running workers, on Apache Kafka and on Tansu."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid

import pytest
from xflow_cli_testing import NOTING_STEPS, SAMPLE, WORD_COUNT, read_notes, word_counts

try:
    from aws_server import aws_endpoint  # noqa: F401
    from kafka_brokers import kafka_broker, read_topic  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401
    from tests.kafka_brokers import kafka_broker, read_topic  # noqa: F401

pytestmark = pytest.mark.kafka

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


@pytest.fixture(params=["kafka-python", "confluent"])
def client(request):
    pytest.importorskip("kafka" if request.param == "kafka-python" else "confluent_kafka")
    return request.param


def _kafka_options(kafka_broker, client: str, **more: str) -> list[str]:  # noqa: F811
    """--option flags: the broker, the client, short group timeouts, and a topic prefix of this test's own."""
    options = kafka_broker.transport_options(client=client, topic_prefix=f"t{uuid.uuid4().hex[:8]}.", **more)
    return [part for key, value in options.items() for part in ("--option", f"{key}={value}")]


@pytest.fixture
def chain(make_workflow, tmp_path):
    workflow_id = f"chain{uuid.uuid4().hex[:6]}"
    path = make_workflow(CHAIN.format(workflow_id=workflow_id), {"steps.py": NOTING_STEPS}, name="chain.yaml")
    notes = tmp_path / "notes.txt"
    return path, {"XFLOW_TEST_NOTES": str(notes)}, notes


def _engine(path):
    from xflow.core.engine import Engine

    return Engine(path, state_dir=path.parent.parent / ".xflow")


def _wait_settled(engine, execution_ids, timeout=150.0):
    deadline = time.monotonic() + timeout
    while True:
        summaries = {e: engine.track(e) for e in execution_ids}
        running = [e for e, s in summaries.items() if s["status"] == "running"]
        if not running:
            return summaries
        assert time.monotonic() < deadline, f"{len(running)} executions still running, e.g. {running[:3]}"
        time.sleep(0.5)


def _stop(workers: list[subprocess.Popen[str]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)


def test_word_count_end_to_end_on_kafka(cli, kafka_broker, client):  # noqa: F811
    options = _kafka_options(kafka_broker, client)
    data = json.dumps({"path": str(SAMPLE)})
    result = cli.json("run", WORD_COUNT, "--transport", "kafka", *options, "--data", data, "--timeout", "120",
                      timeout=180)
    assert result["status"] == "succeeded"
    expected = word_counts(SAMPLE.read_text())
    assert result["result"]["counts"] == expected
    assert result["result"]["total"] == sum(expected.values())
    assert [e["count"] for e in result["events"]] == [1] * 6
    # setup was recorded: a second setup plans nothing, teardown removes the topics
    again = cli.json("setup", WORD_COUNT, "--transport", "kafka", "--provider", "local", "--tracker", "sqlite",
                     *options)
    assert again["changes"] == []
    removed = cli.json("teardown", WORD_COUNT)
    assert {c["resource"] for c in removed["changes"] if c["resource"].startswith("topic:")} >= {
        f"topic:{o.split('=', 1)[1]}word_count-FileUploaded" for o in options if o.startswith("topic_prefix=")}


def test_word_count_on_kafka_tracked_in_cloudwatch(cli, kafka_broker, aws_endpoint):  # noqa: F811
    import boto3

    log_group = f"/xflow/kafka-{uuid.uuid4().hex[:8]}"
    options = [*_kafka_options(kafka_broker, "kafka-python"), "--option", f"tracker.log_group={log_group}"]
    result = cli.json("run", WORD_COUNT, "--transport", "kafka", "--tracker", "cloudwatch", *options,
                      "--data", json.dumps({"path": str(SAMPLE)}), "--timeout", "120", timeout=180)
    assert result["status"] == "succeeded"
    assert result["result"]["counts"] == word_counts(SAMPLE.read_text())
    streams = boto3.client("logs").describe_log_streams(logGroupName=log_group)["logStreams"]
    assert [s["logStreamName"] for s in streams] == [result["execution_id"]]
    tracked = cli.json("track", WORD_COUNT, result["execution_id"])
    assert tracked["status"] == "succeeded" and [e["count"] for e in tracked["events"]] == [1] * 6
    removed = cli.json("teardown", WORD_COUNT)
    assert {"action": "delete", "resource": f"log-group:{log_group}"} in removed["changes"]


def test_scale_out_workers_survive_a_sigkill(cli, chain, kafka_broker, client):  # noqa: F811
    path, env, notes = chain
    options = _kafka_options(kafka_broker, client, partitions="6")
    cli.json("setup", path, "--transport", "kafka", "--provider", "local", "--tracker", "sqlite", *options, **env)
    workers = [cli.popen("worker", path, **env) for _ in range(3)]
    executions = [f"scale-{i}" for i in range(60)]
    try:
        with _engine(path) as engine:
            for execution in executions:
                engine.publish("Start", {"n": 1, "sleep": 0.05}, execution_id=execution)
            deadline = time.monotonic() + 90
            while sum(read_notes(notes).values()) < 15:
                assert time.monotonic() < deadline, "the workers processed nothing"
                assert all(w.poll() is None for w in workers), "a worker exited"
                time.sleep(0.05)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(timeout=10)
            assert sum(read_notes(notes).values()) < 2 * len(executions), "the kill came too late to test anything"
            summaries = _wait_settled(engine, executions)
            for execution, summary in summaries.items():
                assert summary["status"] == "succeeded", (execution, summary)
                assert [e["count"] for e in summary["events"]] == [1, 1, 1], (execution, summary)
                assert engine.result(execution)["n"] == 20
    finally:
        _stop(workers)
    counted = read_notes(notes)
    assert {key[1] for key in counted} == set(executions)
    assert {key[0] for key in counted} == {"first", "second"}
    assert len({line.split()[2] for line in notes.read_text().splitlines()}) >= 2, "the work was shared"
    cli.json("teardown", path)


def test_failed_and_undecodable_deliveries_go_to_the_dead_letter_topic(cli, chain, kafka_broker, client):  # noqa: F811
    path, env, notes = chain
    options = _kafka_options(kafka_broker, client)
    cli.json("setup", path, "--transport", "kafka", "--provider", "local", "--tracker", "sqlite", *options, **env)
    from xflow.core.interfaces import Record

    with _engine(path) as engine:
        engine.publish("Start", {"fail": True}, execution_id="bad")
        engine.transport.publish("Start", [Record("junk", b"\xff not json")])
        engine.publish("Start", {"n": 1}, execution_id="good")
        worker = cli.popen("worker", path, "--option", "backoff_seconds=0.05", **env)
        try:
            summaries = _wait_settled(engine, ["bad", "good"], timeout=90)
        finally:
            _stop([worker])
        assert summaries["good"]["status"] == "succeeded"
        bad = summaries["bad"]
        assert bad["status"] == "failed" and bad["last_unprocessed_event"] == "Start"
        assert bad["events"][0]["subscribers"][0]["attempts"] == 2
        dlq = engine.transport.stream_name("Start") + ".dlq"
    letters = read_topic(kafka_broker, dlq, 2)
    by_key = {key: (value, headers) for key, value, headers in letters}
    assert set(by_key) == {b"bad", b"junk"}
    assert b"asked to fail" in by_key[b"bad"][1]["xflow-reason"]
    assert json.loads(by_key[b"bad"][0])["executionid"] == "bad"
    assert by_key[b"junk"][0] == b"\xff not json"
    assert by_key[b"junk"][1]["xflow-group"] == engine.transport.group_id("first").encode()
    assert by_key[b"junk"][1]["xflow-function"] == b"first"
    cli.json("teardown", path)


def test_workers_survive_a_broker_restart(cli, chain, kafka_broker):  # noqa: F811
    if not kafka_broker.can_restart:
        pytest.skip(f"the {kafka_broker.kind} broker is memory-only: a restart loses the topics")
    path, env, notes = chain
    options = _kafka_options(kafka_broker, "kafka-python", partitions="4")
    cli.json("setup", path, "--transport", "kafka", "--provider", "local", "--tracker", "sqlite", *options, **env)
    workers = [cli.popen("worker", path, **env) for _ in range(2)]
    before = [f"before-{i}" for i in range(10)]
    after = [f"after-{i}" for i in range(10)]
    try:
        with _engine(path) as engine:
            for execution in before:
                engine.publish("Start", {"n": 1}, execution_id=execution)
            _wait_settled(engine, before, timeout=90)
            kafka_broker.restart()
            for execution in after:
                engine.publish("Start", {"n": 1}, execution_id=execution)
            summaries = _wait_settled(engine, before + after, timeout=120)
            assert all(s["status"] == "succeeded" for s in summaries.values()), \
                {e: s["status"] for e, s in summaries.items()}
            assert all(w.poll() is None for w in workers), "a worker died with the broker"
    finally:
        _stop(workers)
    counted = read_notes(notes)
    assert {key[1] for key in counted} == set(before + after)
    cli.json("teardown", path)


