"""AWS backend defects (issue 8), against a moto server process.

- the Kinesis consumer keeps within the GetRecords budget of a shard (5 calls per second, shared),
  idle or busy, and backs off (exponentially, with jitter, logged once) when throttled;
- after a reshard it reads a child shard only once its parents are read to their end: an
  execution's events keep their order;
- a record another producer wrote is dated by its ApproximateArrivalTimestamp;
- the Lambda role may read the s3:// sources it was built from, and takes extra permissions;
- each event is stored once in CloudWatch, with the lambda provider and with the local one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from xflow.core.interfaces import Delivery, PluginContext, Record
from xflow.core.runtime import encode_event
from xflow.testing import apply_steps

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

pytestmark = pytest.mark.aws


def boto(service: str) -> Any:
    import boto3

    return boto3.client(service)


def kinesis_transport(tmp_path: Path, workflow_id: str | None = None, **options: Any):
    from xflow.transports.kinesis import KinesisTransport

    return KinesisTransport(PluginContext(workflow_id or f"bd{uuid.uuid4().hex[:8]}", options, tmp_path))


@pytest.fixture
def kinesis(aws_endpoint, tmp_path):  # noqa: F811
    """Kinesis transports of one fresh workflow; streams and checkpoint table removed at the end."""
    made: list[Any] = []

    def make(events: list[str], **options: Any):
        transport = kinesis_transport(tmp_path, made[0].workflow_id if made else None, **options)
        if not made:
            apply_steps(transport.plan_setup(events), transport)
        made.append(transport)
        return transport

    yield make
    if made:
        apply_steps(made[0].plan_teardown(["A"]), made[0])


def count_calls(client: Any, operation: str) -> list[float]:
    """The times (monotonic) of every ``operation`` call the client makes from now on."""
    calls: list[float] = []
    client.meta.events.register(f"before-call.kinesis.{operation}", lambda **_: calls.append(time.monotonic()))
    return calls


def poll_like_a_worker(consumer, seconds: float, max_records: int, commit: bool = True) -> list[Delivery]:
    """Poll as the dispatcher does (``poll(n, 0)``, a short sleep when nothing came) for ``seconds``."""
    got: list[Delivery] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        batch = consumer.poll(max_records, 0)
        if batch:
            got.extend(batch)
            if commit:
                consumer.commit(batch)
        else:
            time.sleep(0.05)
    return got


def _event(execution_id: str, i: int) -> Record:
    return Record(execution_id, encode_event("A", {"i": i}, execution_id, f"{execution_id}-{i}", "test"))


# ---------------------------------------------------------------------------------------------- GetRecords budget


def test_an_idle_shard_is_read_at_most_four_times_a_second(kinesis):
    transport = kinesis(["A"])
    consumer = transport.subscribe("idle", ["A"])
    try:
        consumer.poll(10, 2.0)  # takes the lease, reads once
        calls = count_calls(transport.kinesis, "GetRecords")
        assert poll_like_a_worker(consumer, 3.0, 100) == []
        worker_calls = len(calls)
        # polls that wait (a timeout) wait for the shard's turn rather than reading again at once
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            assert consumer.poll(100, 0.3) == []
        waiting_calls = len(calls) - worker_calls
    finally:
        consumer.close()
    rate = worker_calls / 3.0
    assert rate <= 4.4, f"{worker_calls} GetRecords calls in 3 s on one idle shard ({rate:.1f}/s; the limit is 5/s)"
    assert rate >= 2.0, f"an idle shard is still read regularly ({rate:.1f}/s)"
    assert waiting_calls <= 10, f"{waiting_calls} GetRecords calls in 2 s of polls with a timeout"


def test_a_busy_shard_is_read_at_most_four_times_a_second(kinesis):
    transport = kinesis(["A"])
    transport.publish("A", [_event(f"busy-{i % 5}", i) for i in range(2000)])
    consumer = transport.subscribe("busy", ["A"])
    try:
        consumer.poll(20, 2.0)
        calls = count_calls(transport.kinesis, "GetRecords")
        got = poll_like_a_worker(consumer, 3.0, 20)
    finally:
        consumer.close()
    assert len(calls) <= 14, f"{len(calls)} GetRecords calls in 3 s on one busy shard; the limit is 5/s"
    # small polls are served from what one call read: the pace is not 20 records a call
    assert len(got) >= 300, f"the shard is still read at a good pace ({len(got)} records in 3 s)"
    values = [json.loads(d.value)["data"]["i"] for d in got]
    assert values == list(range(20, 20 + len(got))), "in order, each once"


def test_a_throttled_shard_backs_off_exponentially_and_says_so_once(kinesis, caplog):
    transport = kinesis(["A"])
    transport.publish("A", [_event("throttled", i) for i in range(3)])
    consumer = transport.subscribe("throttled", ["A"])
    consumer.THROTTLE_BASE = 0.2
    consumer.THROTTLE_MAX = 5.0
    calls: list[float] = []
    refusals = 4

    class Refused:
        status_code = 400
        headers: dict[str, str] = {}
        content = b""

    def throttle(**_: Any) -> Any:
        calls.append(time.monotonic())
        if len(calls) <= refusals:
            return Refused(), {"Error": {"Code": "ProvisionedThroughputExceededException",
                                         "Message": "Rate exceeded for shard"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}
        return None  # the real call

    transport.kinesis.meta.events.register("before-call.kinesis.GetRecords", throttle)
    try:
        with caplog.at_level(logging.DEBUG, logger="xflow.kinesis"):
            got = poll_like_a_worker(consumer, 6.0, 100)
    finally:
        consumer.close()
    assert [json.loads(d.value)["data"]["i"] for d in got] == [0, 1, 2]
    assert len(calls) > refusals
    gaps = [b - a for a, b in zip(calls, calls[1:refusals + 1], strict=False)]
    # each wait is in [w/2, w] for w = 0.2, 0.4, 0.8, 1.6 s: exponential, with jitter
    for i, gap in enumerate(gaps):
        assert 0.1 * 2 ** i - 0.02 <= gap <= 0.2 * 2 ** i + 0.4, f"wait {i + 1} after a throttle: {gap:.2f} s"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "throughput" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


# ---------------------------------------------------------------------------------------------- resharding


class ShardCalls:
    """Which shard each GetRecords call read, in order (iterators are followed through the responses)."""

    def __init__(self, client: Any) -> None:
        self.calls: list[str] = []
        self._shard_of: dict[str, str] = {}
        # the API parameters are seen before they are serialized; the context travels to the after-call event
        client.meta.events.register("before-parameter-build.kinesis.GetShardIterator", self._asking)
        client.meta.events.register("after-call.kinesis.GetShardIterator", self._iterator)
        client.meta.events.register("before-parameter-build.kinesis.GetRecords", self._before)
        client.meta.events.register("after-call.kinesis.GetRecords", self._after)

    @staticmethod
    def _asking(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["xflow_shard"] = params.get("ShardId")

    def _iterator(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if parsed.get("ShardIterator") and context.get("xflow_shard"):
            self._shard_of[parsed["ShardIterator"]] = context["xflow_shard"]

    def _before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        shard = self._shard_of.get(params.get("ShardIterator", ""), "?")
        context["xflow_shard"] = shard
        self.calls.append(shard)

    def _after(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if parsed.get("NextShardIterator"):
            self._shard_of[parsed["NextShardIterator"]] = context.get("xflow_shard", "?")


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)], ids=["merge", "split"])
def test_after_a_reshard_children_are_read_after_their_parents(kinesis, before, after):
    """moto keeps routing new records to the closed parents and copies old ones into a merged child (real
    Kinesis writes new records to the children only), so this checks the reading order itself: no child
    shard is read, nor delivers anything, before its parents were read to their end; and an execution's
    events come in order."""
    transport = kinesis(["A"], shards=before)
    stream = transport.stream_name("A")
    others = [f"other-{i}" for i in range(12)]  # executions spread over the shards
    transport.publish("A", [_event("ordered", i) for i in range(10)] + [_event(o, 0) for o in others])
    client = boto("kinesis")
    client.update_shard_count(StreamName=stream, TargetShardCount=after, ScalingType="UNIFORM_SCALING")
    client.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    transport.publish("A", [_event("ordered", i) for i in range(10, 20)] + [_event(o, 1) for o in others])
    shards = client.list_shards(StreamName=stream)["Shards"]
    parents_of = {s["ShardId"]: {p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p}
                  for s in shards}
    assert any(parents_of.values()), "the reshard made child shards"

    reads = ShardCalls(transport.kinesis)
    consumer = transport.subscribe("ordered", ["A"])
    got: list[Delivery] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = consumer.poll(4, 0.5)  # small batches: many reads, parents and children interleave if allowed
            got.extend(batch)
            consumer.commit(batch)
            seen = {json.loads(d.value)["id"] for d in got}
            children_read = all(child in reads.calls for child, parents in parents_of.items() if parents)
            if {f"ordered-{i}" for i in range(20)} | {f"{o}-1" for o in others} <= seen and children_read \
                    and not batch:
                break
    finally:
        consumer.close()

    ids = [json.loads(d.value)["id"] for d in got]
    first_seen = list(dict.fromkeys(i for i in ids if i.startswith("ordered-")))
    assert first_seen == [f"ordered-{i}" for i in range(20)], "an execution's events keep their order"
    position = {shard: [n for n, d in enumerate(got) if d.partition == shard] for shard in parents_of}
    for child, parents in parents_of.items():
        for parent in parents:
            if position[child] and position[parent]:
                assert max(position[parent]) < min(position[child]), (
                    f"{child} delivered records before its parent {parent} was done")
            child_reads = [n for n, s in enumerate(reads.calls) if s == child]
            parent_reads = [n for n, s in enumerate(reads.calls) if s == parent]
            assert parent_reads and child_reads, f"{parent} and its child {child} were both read"
            assert max(parent_reads) < min(child_reads), f"{child} was read before its parent {parent} ended"


def test_two_members_after_a_reshard_wait_for_each_others_parents(kinesis):
    transport = kinesis(["A"], shards=2, lease_seconds=3)
    stream = transport.stream_name("A")
    transport.publish("A", [_event(f"m-{k}", i) for i in range(8) for k in range(6)])
    client = boto("kinesis")
    client.update_shard_count(StreamName=stream, TargetShardCount=1, ScalingType="UNIFORM_SCALING")
    client.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    transport.publish("A", [_event(f"m-{k}", i) for i in range(8, 12) for k in range(6)])
    shards = client.list_shards(StreamName=stream)["Shards"]
    [child] = [s["ShardId"] for s in shards if s.get("ParentShardId")]

    members = [transport.subscribe("pair", ["A"]), kinesis(["A"], lease_seconds=3).subscribe("pair", ["A"])]
    log: list[tuple[int, Delivery]] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for n, member in enumerate(members):
                batch = member.poll(2, 0.05)  # small batches: the second member joins while parents are read
                log.extend((n, d) for d in batch)
                member.commit(batch)
            ids = {json.loads(d.value)["id"] for _, d in log}
            copies = sum(1 for _, d in log if d.partition == child)  # moto copies the parents' 48 records into it
            if {f"m-{k}-{i}" for k in range(6) for i in range(12)} <= ids and copies >= 48:
                break
    finally:
        for member in members:
            member.close()
    ids = [json.loads(d.value)["id"] for _, d in log]
    for k in range(6):
        first_seen = list(dict.fromkeys(i for i in ids if i.startswith(f"m-{k}-")))
        assert first_seen == [f"m-{k}-{i}" for i in range(12)]
    from_child = [n for n, (_, d) in enumerate(log) if d.partition == child]
    from_parents = [n for n, (_, d) in enumerate(log) if d.partition != child]
    assert from_child and from_parents
    assert {n for n, _ in log} == {0, 1}, "both members read"
    assert max(from_parents) < min(from_child), "the child shard was read before both parents were done"


# ---------------------------------------------------------------------------------------------- foreign records

STEP = """
import os

def note(event, ctx):
    with open(os.environ["XFLOW_TEST_NOTES"], "a") as notes:
        notes.write(ctx.execution_id + "\\n")
"""


def test_a_foreign_record_is_dated_by_its_arrival_on_kinesis(aws_endpoint, make_workflow, tmp_path,  # noqa: F811
                                                             monkeypatch):
    from xflow.core.engine import Engine

    workflow_id = f"bdk{uuid.uuid4().hex[:8]}"
    path = make_workflow(f"""
        workflow_id: {workflow_id}
        functions:
          - {{name: noter, source: steps.py, handler: note}}
        subscriptions:
          - {{event: Uploaded, subscribers: [noter]}}
        """, {"steps.py": STEP})
    notes = tmp_path / "notes.txt"
    monkeypatch.setenv("XFLOW_TEST_NOTES", str(notes))
    with Engine(path, transport="kinesis", provider="local", tracker="sqlite", state_dir=tmp_path / ".xflow") as engine:
        engine.setup()
        try:
            client = boto("kinesis")
            stream = engine.transport.stream_name("Uploaded")
            client.put_record(StreamName=stream, PartitionKey="k-ext",
                              Data=json.dumps({"execution_id": "k-ext", "note": "from elsewhere"}).encode())
            iterator = client.get_shard_iterator(StreamName=stream, ShardId="shardId-000000000000",
                                                 ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            [raw] = client.get_records(ShardIterator=iterator)["Records"]
            arrived = raw["ApproximateArrivalTimestamp"].timestamp()
            time.sleep(2.0)  # read well after it arrived
            deadline = time.monotonic() + 60
            read_from = time.time()
            engine.work(until=lambda: notes.exists() or time.monotonic() > deadline)
            assert notes.read_text() == "k-ext\n"
            [event] = engine.tracker.history("k-ext").events
            assert event.producer == "external"
            assert event.published_at == pytest.approx(arrived, abs=0.001)
            assert event.published_at < read_from - 1.5
        finally:
            engine.teardown()


# ---------------------------------------------------------------------------------------------- Lambda role, tracking

HANDLERS = """
def first(event, ctx):
    ctx.publish("Middle", {"n": event.get("n", 0) + 1})


def second(event, ctx):
    return {"n": event["n"] + 1}
"""

FLOW = """
workflow_id: {workflow_id}
aws: {{lambda_execution_role_name: {role}}}
functions:
  - {{name: {workflow_id}_first, source: "{first_source}", handler: first, publishes: [Middle]}}
  - {{name: {workflow_id}_second, source: steps.py, handler: second, publishes: [Done]}}
subscriptions:
  - {{event: Start, subscribers: [{workflow_id}_first]}}
  - {{event: Middle, subscribers: [{workflow_id}_second]}}
workflows:
  - {{id: {workflow_id}, flow: [Start, Middle, Done]}}
"""


def _role_policy(role: str, workflow_id: str) -> dict[str, Any]:
    document = boto("iam").get_role_policy(RoleName=role, PolicyName=f"xflow-{workflow_id}")["PolicyDocument"]
    return json.loads(document) if isinstance(document, str) else document


def _stored_event_ids(workflow_id: str, execution_id: str) -> list[str]:
    logs = boto("logs")
    found: list[str] = []
    token = None
    while True:
        kwargs: dict[str, Any] = {"logGroupName": f"/xflow/{workflow_id}", "logStreamName": execution_id,
                                  "startFromHead": True}
        if token:
            kwargs["nextToken"] = token
        page = logs.get_log_events(**kwargs)
        found += [json.loads(e["message"])["event_id"] for e in page["events"]
                  if json.loads(e["message"]).get("xflow") == "event"]
        if not page["events"] or page.get("nextForwardToken") == token:
            return found
        token = page["nextForwardToken"]


@pytest.fixture
def lambda_flow(aws_endpoint, make_workflow) -> Callable[..., tuple[Path, str, str]]:  # noqa: F811
    """A two-step workflow whose first function comes from s3://; returns (file, workflow id, role name)."""

    def make() -> tuple[Path, str, str]:
        workflow_id = f"bdl{uuid.uuid4().hex[:8]}"
        bucket, key = f"bd-src-{uuid.uuid4().hex[:8]}", f"code/{workflow_id}/first.py"
        s3 = boto("s3")
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=key, Body=HANDLERS.encode())
        role = f"xflow-{workflow_id}-role"
        path = make_workflow(FLOW.format(workflow_id=workflow_id, role=role, first_source=f"s3://{bucket}/{key}"),
                             {"steps.py": HANDLERS}, name=f"{workflow_id}.yaml", folder=workflow_id)
        return path, workflow_id, role

    return make


def test_lambda_role_reads_its_s3_sources_and_takes_extra_policies(cli, lambda_flow):
    path, workflow_id, role = lambda_flow()
    source = path.read_text().split('source: "s3://', 1)[1].split('"', 1)[0]
    bucket, key = source.split("/", 1)
    iam = boto("iam")
    managed = iam.create_policy(PolicyName=f"bd-extra-{workflow_id}", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bd-inputs/*"}]}),
    )["Policy"]["Arn"]
    # statements in the file's provider block (YAML), a managed policy on the command line
    path.write_text(path.read_text() + """
provider:
  name: lambda
  options:
    policy_statements:
      - {Sid: Inputs, Effect: Allow, Action: [s3:GetObject], Resource: ["arn:aws:s3:::bd-data/in/*"]}
""")
    setup = cli.json("setup", path, "--option", f"provider.policy_arns={managed}", timeout=300)
    try:
        statements = {s.get("Sid"): s for s in _role_policy(role, workflow_id)["Statement"]}
        assert statements["FunctionSources"]["Action"] == ["s3:GetObject"]
        assert statements["FunctionSources"]["Resource"] == [f"arn:aws:s3:::{bucket}/{key}"]
        assert statements["Inputs"]["Resource"] == ["arn:aws:s3:::bd-data/in/*"]
        attached = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
        assert [p["PolicyArn"] for p in attached] == [managed]
        assert f"role-policy-attachment:{role}/{managed.rpartition('/')[2]}" in {
            c["resource"] for c in setup["changes"]}
        again = cli.json("setup", path, timeout=300)  # the options were recorded: nothing changes
        assert again["changes"] == []
    finally:
        done = cli.json("teardown", path, timeout=300)
    assert any(c["resource"] == f"role:{role}" for c in done["changes"]), done["changes"]
    assert role not in {r["RoleName"] for r in iam.list_roles()["Roles"]}
    iam.delete_policy(PolicyArn=managed)


def test_bad_extra_policy_options_are_one_line_errors(cli, lambda_flow):
    path, _, _ = lambda_flow()
    for option, words in [("policy_arns=not-an-arn", "policy_arns"),
                          ("policy_statements={nope", "policy_statements"),
                          ('policy_statements=[{"Effect": "Allow"}]', "Action")]:
        done = cli("setup", path, "--dry-run", "--option", f"provider.{option}", timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert words in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_each_event_is_stored_once_on_lambda(cli, lambda_flow):
    path, workflow_id, _ = lambda_flow()
    cli.json("setup", path, timeout=300)
    try:
        published = cli("publish", path, "Start", '{"n": 1}', "--execution-id", "once-1")
        assert published.returncode == 0, published.stderr
        # and a record another producer wrote: the tracker function dates it by its arrival on the stream
        kinesis = boto("kinesis")
        stream = f"{workflow_id}-Start"
        kinesis.put_record(StreamName=stream, PartitionKey="ext-l", Data=b'{"execution_id": "ext-l", "n": 5}')
        iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId="shardId-000000000000",
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        arrived = [r["ApproximateArrivalTimestamp"].timestamp() for r in kinesis.get_records(
            ShardIterator=iterator)["Records"] if r["PartitionKey"] == "ext-l"]
        time.sleep(1.5)
        emulated = cli.json("emulate", path, "--until-idle", timeout=300)
        assert emulated["failed_invocations"] == 0
        summary = cli.json("track", path, "once-1")
        assert summary["status"] == "succeeded"
        assert [(e["name"], e["count"]) for e in summary["events"]] == [("Start", 1), ("Middle", 1), ("Done", 1)]
        stored = _stored_event_ids(workflow_id, "once-1")
        assert len(stored) == 3 and len(set(stored)) == 3, f"each event is stored once: {stored}"
        lines = boto("logs").get_log_events(logGroupName=f"/xflow/{workflow_id}", logStreamName="ext-l",
                                            startFromHead=True)["events"]
        [external] = [json.loads(e["message"]) for e in lines if json.loads(e["message"])["event"] == "Start"]
        assert external["producer"] == "external"
        assert external["published_at"] == pytest.approx(arrived[0], abs=0.001)
    finally:
        cli.json("teardown", path, timeout=300)


def test_each_event_is_stored_once_with_the_local_provider(cli, lambda_flow):
    path, workflow_id, _ = lambda_flow()
    choice = ["--transport", "kinesis", "--provider", "local", "--tracker", "cloudwatch"]
    cli.json("setup", path, *choice, timeout=300)
    try:
        done = cli("run", path, "--event", "Start", "--data", '{"n": 1}', "--execution-id", "once-2",
                   "--output", "json", timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        stored = _stored_event_ids(workflow_id, "once-2")
        assert len(stored) == 3 and len(set(stored)) == 3, f"each event is stored once: {stored}"
        # an id never published is unknown (exit 1), and the hint names the executions CloudWatch holds
        unknown = cli("track", path, "never-published")
        assert unknown.returncode == 1, unknown.stdout + unknown.stderr
        assert "'never-published' is unknown to the cloudwatch tracker" in unknown.stderr
        assert "the most recent executions: once-2" in unknown.stderr, unknown.stderr
    finally:
        cli.json("teardown", path, timeout=300)


ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_moto_recipe_runs_word_count_as_written(tmp_path):
    """The README's "Run a deployment on your machine" block, run with bash as written (on a free port instead of
    5000). A plain moto server failed it twice: Lambda ran in Docker, and a put on a stream mapped to an alias was
    answered 500, so every publish was retried and every function failed."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (source .ci/install-aws.sh)")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("**Run a deployment on your machine**", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert "python tests/aws_server.py 5000 &" in block and "xflow emulate" in block
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "aws_server.py").write_bytes((ROOT / "tests" / "aws_server.py").read_bytes())
    shutil.copytree(ROOT / "examples" / "word_count", tmp_path / "examples" / "word_count")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    # this checkout's xflow and python, whatever is installed; wait for the server as a person would
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "xflow").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m xflow.cli "$@"\n')
    (bin_dir / "xflow").chmod(0o755)
    script = ("set -e\n" + block.replace("5000", port).replace(
                  "AWS_DEFAULT_REGION=us-east-1\n",
                  f"AWS_DEFAULT_REGION=us-east-1\nuntil curl -s {'http://127.0.0.1:' + port}/moto-api/ >/dev/null; "
                  "do sleep 0.2; done\nsleep 1\n", 1)
              + 'xflow track -flow word_count -execution_id "$id" -o json > track.json\nkill %1\nwait\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "XFLOW_"))}
    env.update(PYTHONPATH=str(ROOT), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "track.json").read_text())
    assert summary["status"] == "succeeded", summary
    assert [(e["name"], e["count"]) for e in summary["events"]] == [
        ("FileUploaded", 1), ("FileDownloaded", 1), ("FileParsed", 1), ("FileAggregated", 1), ("FileFiltered", 1),
        ("FileSummarized", 1)]
    assert "0 failed invocation(s)" in done.stdout + done.stderr
