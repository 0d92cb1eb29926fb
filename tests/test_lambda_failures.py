"""Lambda's on-failure destination, against a moto server through the CLI.

setup creates the workflow's SQS queue, points every subscriber's event source mapping at it and lets the role send
to it (idempotent, shown by --dry-run, removed by teardown); under ``xflow emulate`` a handler that sleeps past its
``timeout:`` and one that exits the process are sent there after their retries, as Lambda does, and ``xflow track``
shows them ``failed`` with the reason and the attempts of the record; a record read twice counts once.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from xflow.providers.aws_lambda.failures import kinesis_failure_record
from xflow.providers.aws_lambda.mappings import failure_queue_name

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

pytestmark = pytest.mark.aws

AWS = ("--transport", "kinesis", "--provider", "lambda", "--tracker", "cloudwatch")
STEPS = """
import os
import time


def slow(event, ctx):
    time.sleep(30)


def crash(event, ctx):
    os._exit(3)


def fine(event, ctx):
    return None
"""


def flow_text(wid: str) -> str:
    return f"""
workflow_id: {wid}
functions:
  - name: {wid}_slow
    source: steps.py
    handler: slow
    timeout: 1
    retries: 1
  - name: {wid}_crash
    source: steps.py
    handler: crash
    retries: 1
  - name: {wid}_fine
    source: steps.py
    handler: fine
subscriptions:
  - event: A
    subscribers: [{wid}_slow]
  - event: B
    subscribers: [{wid}_crash, {wid}_fine]
"""


def boto(service: str):
    import boto3

    return boto3.client(service)


def queue_url(wid: str) -> str | None:
    try:
        return boto("sqs").get_queue_url(QueueName=failure_queue_name(wid))["QueueUrl"]
    except Exception as exc:  # noqa: BLE001
        assert "NonExistentQueue" in str(exc) or "QueueDoesNotExist" in str(exc), exc
        return None


def queue_depth(url: str) -> int:
    attributes = boto("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attributes["Attributes"].values())


def subscriber(summary: dict, event: str, function: str) -> dict:
    found = next(e for e in summary["events"] if e["name"] == event)
    return next(s for s in found["subscribers"] if s["name"] == function)


@pytest.fixture
def wid() -> str:
    return f"lf{os.getpid()}{uuid.uuid4().hex[:6]}"


def test_setup_gives_each_subscriber_mapping_the_failure_queue(aws_endpoint, cli, make_workflow, wid):  # noqa: F811
    flow = make_workflow(flow_text(wid), {"steps.py": STEPS})
    queue = failure_queue_name(wid)
    assert queue == f"xflow-{wid}-failures"

    plan = cli.json("setup", flow, *AWS, "--dry-run")
    assert {"action": "create", "resource": f"queue:{queue}"} in plan["changes"]
    assert queue_url(wid) is None  # a dry run creates nothing

    setup = cli.json("setup", flow, *AWS)
    assert {"action": "create", "resource": f"queue:{queue}"} in setup["changes"]
    url = queue_url(wid)
    assert url is not None
    assert boto("sqs").list_queue_tags(QueueUrl=url)["Tags"] == {"xflow:workflow": wid}
    arn = boto("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    lam = boto("lambda")
    destinations = {}
    for function in (f"{wid}_slow", f"{wid}_crash", f"{wid}_fine", f"tracker_{wid}"):
        alias = lam.get_alias(FunctionName=function, Name="live")["AliasArn"]  # the mappings invoke the alias
        for listed in lam.list_event_source_mappings(FunctionName=alias)["EventSourceMappings"]:
            mapping = lam.get_event_source_mapping(UUID=listed["UUID"])
            stream = mapping["EventSourceArn"].rpartition("/")[2]
            destination = ((mapping.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
            destinations[(stream, function)] = destination
    assert {k: v for k, v in destinations.items() if not k[1].startswith("tracker_")} == {
        (f"{wid}-A", f"{wid}_slow"): arn, (f"{wid}-B", f"{wid}_crash"): arn, (f"{wid}-B", f"{wid}_fine"): arn}
    assert {v for k, v in destinations.items() if k[1].startswith("tracker_")} == {None}

    policy = boto("iam").get_role_policy(RoleName=f"xflow-{wid}-lambda", PolicyName=f"xflow-{wid}")["PolicyDocument"]
    sends = [s for s in policy["Statement"] if "sqs:SendMessage" in s["Action"]]
    assert [(s["Action"], s["Resource"]) for s in sends] == [(["sqs:SendMessage"], [arn])]

    assert cli.json("setup", flow)["changes"] == []  # idempotent: the queue and destinations are seen as they are

    teardown = cli.json("teardown", flow)
    assert {"action": "delete", "resource": f"queue:{queue}"} in teardown["changes"]
    assert queue_url(wid) is None
    assert not [m for m in lam.list_event_source_mappings()["EventSourceMappings"] if f":function:{wid}_" in m["FunctionArn"]]


def test_timed_out_and_crashed_invocations_are_tracked_failed(aws_endpoint, cli, make_workflow, wid):  # noqa: F811
    flow = make_workflow(flow_text(wid), {"steps.py": STEPS})
    cli.json("setup", flow, *AWS)
    try:
        _check_failures(cli, flow, wid)
    finally:
        cli.json("teardown", flow)
    assert queue_url(wid) is None


def _check_failures(cli, flow: Path, wid: str) -> None:
    for event, execution in (("A", "slow-1"), ("B", "crash-1")):
        done = cli("publish", flow, event, "{}", "--execution-id", execution)
        assert done.returncode == 0, done.stderr
    started = time.monotonic()
    report = cli.json("emulate", flow, "--until-idle", "--timeout", "180", timeout=240)
    assert report["idle"] and report["failure_records"] == 2, report
    assert report["discarded_records"] == 2
    assert time.monotonic() - started < 180
    url = queue_url(wid)
    assert url is not None and queue_depth(url) == 0  # recorded by emulate, then deleted

    slow = cli.json("track", flow, "slow-1", expect=1)
    assert slow["status"] == "failed" and slow["last_unprocessed_event"] == "A"
    step = subscriber(slow, "A", f"{wid}_slow")
    assert (step["state"], step["attempts"]) == ("failed", 2), step
    assert step["error"].startswith("Lambda invocation failed: Task timed out after 1.00 seconds"), step["error"]
    assert "RetryAttemptsExhausted after 2 invocations" in step["error"]

    crashed = cli.json("track", flow, "crash-1", expect=1)
    assert crashed["status"] == "failed"
    step = subscriber(crashed, "B", f"{wid}_crash")
    assert (step["state"], step["attempts"]) == ("failed", 2), step
    assert "Runtime exited with error: exit status 3" in step["error"], step["error"]
    assert subscriber(crashed, "B", f"{wid}_fine")["state"] == "succeeded"  # the other subscriber went on

    # the same record delivered twice (SQS delivers at least once) is recorded once
    kinesis = boto("kinesis")
    shard = kinesis.list_shards(StreamName=f"{wid}-A")["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=f"{wid}-A", ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    first = kinesis.get_records(ShardIterator=iterator)["Records"][0]
    stream_arn = kinesis.describe_stream_summary(StreamName=f"{wid}-A")["StreamDescriptionSummary"]["StreamARN"]
    function_arn = boto("lambda").get_function(FunctionName=f"{wid}_slow")["Configuration"]["FunctionArn"]

    def record(invocations: int, sequence: dict) -> str:
        return json.dumps(kinesis_failure_record(
            request_id=str(uuid.uuid4()), function_arn=function_arn, invoke_count=invocations,
            function_error="Unhandled", shard_id=shard, start_sequence=sequence["SequenceNumber"],
            end_sequence=sequence["SequenceNumber"], batch_size=1, stream_arn=stream_arn,
            first_arrival=time.time(), last_arrival=time.time()))

    boto("sqs").send_message(QueueUrl=url, MessageBody=record(2, first))
    again = cli.json("track", flow, "slow-1", expect=1)
    assert subscriber(again, "A", f"{wid}_slow") == subscriber(slow, "A", f"{wid}_slow")
    assert queue_depth(url) == 0

    # track reads the queue itself: a batch Lambda gave up on after 3 invocations (its log not found: the reason is
    # the record's), attempts from the record
    done = cli("publish", flow, "A", "{}", "--execution-id", "slow-2")
    assert done.returncode == 0, done.stderr
    records = kinesis.get_records(ShardIterator=iterator)["Records"]
    second = next(r for r in records if b"slow-2" in r["Data"])
    boto("sqs").send_message(QueueUrl=url, MessageBody=record(3, second))
    later = cli.json("track", flow, "slow-2", expect=1)
    step = subscriber(later, "A", f"{wid}_slow")
    assert (step["state"], step["attempts"]) == ("failed", 3), step
    assert step["error"] == ("Lambda invocation failed: functionError Unhandled "
                             "(RetryAttemptsExhausted after 3 invocations)")
    assert queue_depth(url) == 0
