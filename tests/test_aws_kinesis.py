"""The kinesis transport against a moto server process: setup plans, publish limits, consumers."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from xflow.core.errors import XflowError
from xflow.core.interfaces import PluginContext, Record
from xflow.core.runtime import decode_event, encode_event
from xflow.testing import apply_steps

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

pytestmark = pytest.mark.aws


def make_transport(tmp_path: Path, workflow_id: str | None = None, **options):
    from xflow.transports.kinesis import KinesisTransport

    wid = workflow_id or f"wf{uuid.uuid4().hex[:8]}"
    return KinesisTransport(PluginContext(wid, options, tmp_path))


def apply(plugin, steps):
    """Run a plan as the engine does (through the executor and ``plugin.execute``); the changes it made."""
    apply_steps(steps, plugin)
    return [step.as_change() for step in steps]


def test_setup_is_idempotent_and_removes_dropped_streams(aws_endpoint, tmp_path):  # noqa: F811
    import boto3

    transport = make_transport(tmp_path, shards=2)
    wid = transport.workflow_id
    changes = apply(transport, transport.plan_setup(["A", "B"]))
    assert changes == [{"action": "create", "resource": f"stream:{wid}-A"},
                       {"action": "create", "resource": f"stream:{wid}-B"}]
    client = boto3.client("kinesis")
    summary = client.describe_stream_summary(StreamName=f"{wid}-A")["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 2
    assert transport.plan_setup(["A", "B"]) == []
    # a foreign stream sharing the prefix but not the tag is left alone
    client.create_stream(StreamName=f"{wid}-foreign", ShardCount=1)
    changes = apply(transport, transport.plan_setup(["A"]))
    assert changes == [{"action": "delete", "resource": f"stream:{wid}-B"}]
    names = client.list_streams()["StreamNames"]
    assert f"{wid}-B" not in names and f"{wid}-foreign" in names
    resharded = make_transport(tmp_path, wid, shards=3)
    assert apply(resharded, resharded.plan_setup(["A"])) == [{"action": "update", "resource": f"stream:{wid}-A"}]
    assert apply(resharded, resharded.plan_teardown(["A"])) == [{"action": "delete", "resource": f"stream:{wid}-A"}]
    assert resharded.plan_teardown(["A"]) == []


def _event(i: int, execution_id: str, size: int = 10) -> Record:
    value = encode_event("A", {"i": i, "pad": "x" * size}, execution_id, f"id-{execution_id}-{i}", "test")
    return Record(key=execution_id, value=value)


def test_publish_batches_and_consumer_group_reads_each_record_once(aws_endpoint, tmp_path):  # noqa: F811
    transport = make_transport(tmp_path, shards=2)
    apply(transport, transport.plan_setup(["A"]))
    records = [_event(i, f"exec-{i % 601}") for i in range(1203)]  # two or three records per execution
    transport.publish("A", records)
    assert transport.put_calls == 3  # 500 + 500 + 203, at most one record of an execution in a call
    consumer = transport.subscribe("fn", ["A"])
    seen = []
    while True:
        batch = consumer.poll(500, 1.0)
        if not batch:
            break
        seen.extend(batch)
        consumer.commit(batch)
    assert sorted(decode_event(d.value, "x").data["i"] for d in seen) == list(range(1203))
    # per execution (partition key) order is kept
    by_key: dict[str, list[int]] = {}
    for d in seen:
        by_key.setdefault(d.key, []).append(decode_event(d.value, "x").data["i"])
    assert all(v == sorted(v) for v in by_key.values())
    consumer.close()
    # a new member of the group starts after the checkpoints; another group starts from the beginning
    transport.publish("A", [_event(5000, "exec-x")])
    again = transport.subscribe("fn", ["A"])
    got = again.poll(100, 3.0)
    assert [decode_event(d.value, "x").data["i"] for d in got] == [5000]
    again.close()
    other = transport.subscribe("other", ["A"])
    total = 0
    while batch := other.poll(1000, 1.0):
        total += len(batch)
    assert total == 1204
    other.close()
    apply(transport, transport.plan_teardown(["A"]))


def test_uncommitted_deliveries_come_back_to_the_group(aws_endpoint, tmp_path):  # noqa: F811
    transport = make_transport(tmp_path)
    apply(transport, transport.plan_setup(["A"]))
    transport.publish("A", [_event(i, "e1") for i in range(10)])
    first = transport.subscribe("fn", ["A"])
    batch = first.poll(4, 2.0)
    assert len(batch) == 4
    first.commit(batch[:2])
    # while the first member holds the lease, a second member of the group reads nothing
    second = transport.subscribe("fn", ["A"])
    assert second.poll(10, 0.5) == []
    first.close()
    second.shards and [setattr(s, "tried_at", 0.0) for s in second.shards.values()]
    rest = second.poll(100, 3.0)
    assert [decode_event(d.value, "x").data["i"] for d in rest] == list(range(2, 10))
    second.close()
    apply(transport, transport.plan_teardown(["A"]))


def test_publish_errors_are_clear(aws_endpoint, tmp_path):  # noqa: F811
    transport = make_transport(tmp_path)
    with pytest.raises(XflowError, match="stream .*-Missing does not exist"):
        transport.publish("Missing", [_event(1, "e")])
    apply(transport, transport.plan_setup(["A"]))
    with pytest.raises(XflowError, match="event A: a record of .* bytes is over the Kinesis limit"):
        transport.publish("A", [_event(1, "e", size=1024 * 1024)])
    apply(transport, transport.plan_teardown(["A"]))


def test_unreachable_endpoint_is_an_xflow_error_in_seconds(tmp_path, monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    for key, value in {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    transport = make_transport(tmp_path)
    with pytest.raises(XflowError, match="cannot be reached"):
        transport.plan_setup(["A"])


def test_two_members_of_a_group_share_the_shards(aws_endpoint, tmp_path):  # noqa: F811
    transport = make_transport(tmp_path, shards=2, lease_seconds=3)
    apply(transport, transport.plan_setup(["A"]))
    transport.publish("A", [_event(i, f"exec-{i}") for i in range(200)])
    first = transport.subscribe("fn", ["A"])
    seen: list[int] = []
    batch = first.poll(20, 3.0)
    assert batch
    first.commit(batch)
    seen += [decode_event(d.value, "x").data["i"] for d in batch]
    assert sum(s.owned for s in first.shards.values()) == 2  # alone in the group: every shard
    second = make_transport(tmp_path, transport.workflow_id, shards=2, lease_seconds=3).subscribe("fn", ["A"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for consumer in (first, second):
            got = consumer.poll(20, 0.2)
            consumer.commit(got)
            seen += [decode_event(d.value, "x").data["i"] for d in got]
        owned = [sum(s.owned for s in c.shards.values()) for c in (first, second)]
        if owned == [1, 1] and len(seen) == 200:
            break
    assert owned == [1, 1]
    assert sorted(seen) == list(range(200))  # nothing lost, nothing twice
    first.close()
    second.close()
    apply(transport, transport.plan_teardown(["A"]))


WORKER_STEPS = '''
import os


def _note(ctx):
    with open(os.environ["XFLOW_TEST_NOTES"], "a") as notes:
        notes.write(f"{ctx.execution_id} {ctx.function_name} {os.environ['XFLOW_TEST_WORKER']}\\n")


def double(event, ctx):
    _note(ctx)
    return {"n": event["n"] * 2}


def note(event, ctx):
    _note(ctx)
'''


def test_two_worker_processes_share_a_kinesis_workflow(aws_endpoint, tmp_path):  # noqa: F811
    import os
    import subprocess

    from xflow.core.engine import Engine

    wid = f"kw{uuid.uuid4().hex[:6]}"
    (tmp_path / "steps.py").write_text(WORKER_STEPS)
    (tmp_path / "wf.yaml").write_text(f"""
lambdas:
  - {{name: double, source: steps.py, handler: double, publishes: [Doubled]}}
  - {{name: note, source: steps.py, handler: note}}
subscriptions:
  - {{name: Start, subscribers: [double]}}
  - {{name: Doubled, subscribers: [note]}}
workflows:
  - id: {wid}
""")
    notes = tmp_path / "notes.txt"
    env = dict(os.environ, XFLOW_TEST_NOTES=str(notes))
    plugins = ["--transport", "kinesis", "--provider", "local", "--tracker", "cloudwatch",
               "--option", "shards=2", "--option", "lease_seconds=3"]
    subprocess.run(["xflow", "setup", "wf.yaml", *plugins], cwd=tmp_path, env=env, check=True, capture_output=True)
    # handlers run in each worker's own handler processes, which see the worker's environment
    workers = [subprocess.Popen(["xflow", "worker", "wf.yaml"], cwd=tmp_path, env=dict(env, XFLOW_TEST_WORKER=str(n)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for n in range(2)]
    executions = [f"run-{i}" for i in range(20)]
    try:
        time.sleep(6)  # let the two members find each other and split the shards
        engine = Engine(tmp_path / "wf.yaml", state_dir=tmp_path / ".xflow")
        for execution in executions:
            engine.publish("Start", {"n": 1}, execution)
        deadline = time.monotonic() + 90
        while True:
            summaries = {e: engine.track(e) for e in executions}
            if all(s["status"] != "running" for s in summaries.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        engine.close()
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
    assert {e: s["status"] for e, s in summaries.items()} == dict.fromkeys(executions, "succeeded")
    assert all([ev["count"] for ev in s["events"]] == [1, 1] for s in summaries.values())
    lines = [line.split() for line in notes.read_text().splitlines()]
    assert sorted((e, f) for e, f, _ in lines) == sorted((e, f) for e in executions for f in ("double", "note"))
    assert len({worker for _, _, worker in lines}) == 2  # both workers took part
    subprocess.run(["xflow", "teardown", "wf.yaml"], cwd=tmp_path, env=env, check=True, capture_output=True)


REGION_FLOW = """
workflow_id: {wid}
lambdas:
  - {{name: double, source: steps.py, handler: double, publishes: [Doubled]}}
subscriptions:
  - {{name: Start, subscribers: [double]}}
"""


@pytest.mark.parametrize("variable", ["AWS_REGION", "AWS_DEFAULT_REGION"])
def test_the_region_may_come_from_aws_region_or_aws_default_region_alone(aws_endpoint, tmp_path, variable):  # noqa: F811
    """botocore reads AWS_DEFAULT_REGION and the profile only; AWS_REGION alone (as Lambda and CI actions set it,
    with no AWS config file) is a region too. Without either a command says plainly that there is none."""
    import os
    import subprocess

    import boto3
    from xflow_cli_testing import xflow_command

    wid = f"rg{uuid.uuid4().hex[:6]}"
    (tmp_path / "steps.py").write_text("def double(event, ctx):\n    return {'n': 2}\n")
    (tmp_path / "wf.yaml").write_text(REGION_FLOW.format(wid=wid))
    home = tmp_path / "home"  # no ~/.aws/config to find a region in
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE",
                        "AWS_SHARED_CREDENTIALS_FILE") and not k.startswith("XFLOW_")}
    env["HOME"] = str(home)

    def xflow(*args: str, **more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(xflow_command(*args), cwd=tmp_path, env={**env, **more}, capture_output=True, text=True,
                              timeout=120)

    plugins = ["--transport", "kinesis", "--provider", "local", "--tracker", "sqlite"]
    nowhere = xflow("setup", "wf.yaml", *plugins)
    assert nowhere.returncode == 2, nowhere.stderr
    assert "no AWS region" in nowhere.stderr
    done = xflow("setup", "wf.yaml", *plugins, **{variable: "us-east-1"})
    assert done.returncode == 0, done.stderr
    streams = boto3.client("kinesis", region_name="us-east-1").list_streams()["StreamNames"]
    assert f"{wid}-Start" in streams
    gone = xflow("teardown", "wf.yaml", **{variable: "us-east-1"})
    assert gone.returncode == 0, gone.stderr
    assert f"{wid}-Start" not in boto3.client("kinesis", region_name="us-east-1").list_streams()["StreamNames"]
