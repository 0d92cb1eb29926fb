"""The emulator's Lambda semantics on plain Lambda functions (no xflow shim), against a moto server:
partial batch responses, retry limits, bisect on a crashing function, logs in /aws/lambda/<name>."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from xflow.aws import AwsSession
from xflow.emulate import Emulator
from xflow.providers.aws_lambda import artifact_path, code_sha256

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

pytestmark = pytest.mark.aws

HANDLER = '''
import base64, os

def handler(event, context):
    for record in event["Records"]:
        value = base64.b64decode(record["kinesis"]["data"]).decode()
        print("saw", value)
        with open(os.environ["SEEN"], "a") as seen:
            seen.write(value + "\\n")
        if value == "crash":
            os._exit(3)
        if value == "bad":
            return {"batchItemFailures": [{"itemIdentifier": record["kinesis"]["sequenceNumber"]}]}
    return {"batchItemFailures": []}
'''


def deploy(tmp_path: Path, name: str, values: list[str], retries: int, bisect: bool) -> tuple[Path, Path]:
    import boto3

    stream = f"{name}-in"
    kinesis, lam, iam = boto3.client("kinesis"), boto3.client("lambda"), boto3.client("iam")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream)
    arn = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]
    role = iam.create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"Service": "lambda.amazonaws.com"}}]}))["Role"]["Arn"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", HANDLER)
    code = buffer.getvalue()
    state = tmp_path / "state"
    artifact = artifact_path(state, code_sha256(code))
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(code)
    seen = tmp_path / "seen.txt"
    lam.create_function(FunctionName=name, Runtime="python3.12", Role=role, Handler="main.handler",
                        Code={"ZipFile": code}, Timeout=30, Environment={"Variables": {"SEEN": str(seen)}})
    lam.create_event_source_mapping(EventSourceArn=arn, FunctionName=name, StartingPosition="TRIM_HORIZON",
                                    BatchSize=10, MaximumRetryAttempts=retries, BisectBatchOnFunctionError=bisect,
                                    FunctionResponseTypes=["ReportBatchItemFailures"])
    kinesis.put_records(StreamName=stream, Records=[{"Data": v.encode(), "PartitionKey": "k"} for v in values])
    return state, seen


def emulate(name: str, state: Path):
    emulator = Emulator(SimpleNamespace(id=name, functions={}), state, AwsSession({}), functions=[name])
    try:
        emulator.load()
        return emulator.run(until_idle=True)
    finally:
        emulator.close()


def test_partial_batch_failure_is_retried_then_dropped(aws_endpoint, tmp_path):  # noqa: F811
    import boto3

    name = f"emu{uuid.uuid4().hex[:6]}"
    state, seen = deploy(tmp_path, name, ["1", "2", "bad", "4"], retries=1, bisect=False)
    report = emulate(name, state)
    # 1,2 done; "bad" first try + 1 retry, then dropped; 4 done
    assert seen.read_text().split() == ["1", "2", "bad", "bad", "4"]
    assert (report.invocations, report.discarded_records, report.failed_invocations) == (3, 1, 0)
    events = boto3.client("logs").filter_log_events(logGroupName=f"/aws/lambda/{name}")["events"]
    messages = [e["message"] for e in events]
    assert "saw 1" in messages and sum(m.startswith("START RequestId") for m in messages) == 3
    # positions are kept: a second run has nothing to do
    assert emulate(name, state).invocations == 0


def test_crashing_function_is_bisected_and_its_batch_dropped_after_retries(aws_endpoint, tmp_path):  # noqa: F811
    name = f"emu{uuid.uuid4().hex[:6]}"
    state, seen = deploy(tmp_path, name, ["a", "crash", "b"], retries=2, bisect=True)
    report = emulate(name, state)
    # [a crash b] fails → [a] ok → [crash] fails 3 times (1 + 2 retries), dropped → [b] ok
    assert seen.read_text().split() == ["a", "crash", "a", "crash", "crash", "crash", "b"]
    assert (report.failed_invocations, report.discarded_records) == (4, 1)
