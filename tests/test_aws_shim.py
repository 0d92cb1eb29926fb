"""The Lambda runtime shim, run from a deployment zip built by the lambda provider, on recorded Kinesis events."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from xflow.core.interfaces import PluginContext
from xflow.core.model import Function, Subscription, Workflow
from xflow.core.runtime import decode_event, derive_event_id, encode_event

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

pytestmark = pytest.mark.aws

HANDLER = '''
def step(event, ctx):
    ctx.logger.info("handling %s", event["n"])
    if event.get("fail"):
        raise ValueError("asked to fail")
    ctx.publish("Out", {"n": event["n"] * 2})
'''

#: what Lambda passes for a Kinesis event source (shape recorded from the Lambda documentation's sample)
RECORD = {
    "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": "", "sequenceNumber": "", "data": "",
                "approximateArrivalTimestamp": 1545084650.987},
    "eventSource": "aws:kinesis", "eventVersion": "1.0",
    "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588898",
    "eventName": "aws:kinesis:record", "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
    "awsRegion": "us-east-1", "eventSourceARN": "",
}


def build(tmp_path: Path, workflow_id: str, retries: int, folder: bool = False) -> Path:
    from xflow.providers.aws_lambda import LambdaProvider

    (tmp_path / "src" / "helpers").mkdir(parents=True)
    (tmp_path / "src" / "step.py").write_text(HANDLER)
    (tmp_path / "src" / "helpers" / "__init__.py").write_text("FACTOR = 2\n")
    (tmp_path / "src" / "__pycache__").mkdir()
    (tmp_path / "src" / "__pycache__" / "junk.pyc").write_bytes(b"x")
    if folder:  # a folder source: handler module.function, helpers importable
        (tmp_path / "src" / "step.py").write_text(HANDLER.replace("* 2", "* __import__('helpers').FACTOR"))
        function = Function(name="step", handler="step.step", source="src", source_path=tmp_path / "src",
                            publishes=("Out",), retries=retries)
    else:
        function = Function(name="step", handler="step", source="src/step.py",
                            source_path=tmp_path / "src" / "step.py", publishes=("Out",), retries=retries)
    workflow = Workflow(id=workflow_id, path=tmp_path / "wf.yaml", functions={"step": function},
                        subscriptions=(Subscription("In", ("step",)),), flow=("In", "Out"))
    provider = LambdaProvider(PluginContext(workflow_id, {}, tmp_path / "state", workflow))
    transport = SimpleNamespace(stream_name=lambda e: f"{workflow_id}-{e}")
    tracker = SimpleNamespace(lambda_tracking_target=lambda: {"log_group": f"/xflow/{workflow_id}", "retention_days": 7})
    spec = next(s for s in provider.desired_functions(workflow, transport, tracker) if s.name == "step")
    root = tmp_path / "task"
    zipfile.ZipFile(io.BytesIO(spec.zip_bytes)).extractall(root)
    assert sorted(p.name for p in root.iterdir()) == ["function", "lambda_shim.py", "xflow_function.json",
                                                      "xflow_logrecords.py", "xflow_runtime.py", "xflow_tracing.py",
                                                      "xflow_wire.py"]
    return root


def kinesis_event(workflow_id: str, values: list[bytes]) -> dict:
    records = []
    for i, value in enumerate(values):
        record = json.loads(json.dumps(RECORD))
        seq = str(49590338271490256608559692538361571095921575989136588898 + i)
        record["kinesis"].update(sequenceNumber=seq, data=base64.b64encode(value).decode(), partitionKey="ex")
        record["eventID"] = f"shardId-000000000000:{seq}"
        record["eventSourceARN"] = f"arn:aws:kinesis:us-east-1:123456789012:stream/{workflow_id}-In"
        records.append(record)
    return {"Records": records}


def run_shim(root: Path, event: dict) -> tuple[dict, list[dict]]:
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import lambda_shim; "
            "print('RESULT ' + json.dumps(lambda_shim.handle(json.load(sys.stdin))))")
    done = subprocess.run([sys.executable, "-c", code, str(root)], input=json.dumps(event), capture_output=True,
                          text=True, cwd=root, env=dict(os.environ), timeout=60, check=True)
    lines = done.stdout.splitlines()
    result = json.loads(next(x for x in lines if x.startswith("RESULT "))[7:])
    return result, [json.loads(x) for x in lines if x.startswith('{"xflow"')]


def test_shim_handles_a_batch_reports_the_first_failure_and_publishes(aws_endpoint, tmp_path):  # noqa: F811
    import boto3

    wid = f"shim{uuid.uuid4().hex[:6]}"
    root = build(tmp_path, wid, retries=2)
    kinesis = boto3.client("kinesis")
    kinesis.create_stream(StreamName=f"{wid}-Out", ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=f"{wid}-Out")
    values = [encode_event("In", {"n": 1}, "ex", "ev-1", "test"), b"not json at all",
              encode_event("In", {"n": 2, "fail": True}, "ex", "ev-2", "test"),
              json.dumps({"execution_id": "ex", "n": 3}).encode()]
    event = kinesis_event(wid, values)
    result, lines = run_shim(root, event)
    seqs = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
    # the failing record and every one after it on the shard are retried; the undecodable one is dropped
    assert result == {"batchItemFailures": [{"itemIdentifier": seqs[2]}, {"itemIdentifier": seqs[3]}]}
    assert [(x["xflow"], x.get("event_id"), x.get("status")) for x in lines] == [
        ("delivery", "ev-1", "succeeded"), ("dead_letter", f"{wid}-In:shardId-000000000000:{seqs[1]}", None),
        ("delivery", "ev-2", "retrying")]
    ok, failed = lines[0], lines[2]
    assert (ok["execution_id"], ok["function"], ok["attempt"], ok["error"]) == ("ex", "step", 1, None)
    assert "INFO handling 1" in ok["logs"]
    assert failed["error"] == "ValueError: asked to fail" and failed["attempt"] == 1
    assert any("Traceback" in line for line in failed["logs"])
    shard = kinesis.list_shards(StreamName=f"{wid}-Out")["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=f"{wid}-Out", ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    out = kinesis.get_records(ShardIterator=iterator)["Records"]
    assert len(out) == 1 and out[0]["PartitionKey"] == "ex"
    published = decode_event(out[0]["Data"], "x")
    assert published.event_id == derive_event_id("ev-1", "step", 0)
    assert published.data == {"n": 2, "execution_id": "ex"} and published.producer == f"xflow/{wid}/step"
    kinesis.delete_stream(StreamName=f"{wid}-Out")


def test_shim_gives_up_after_the_last_retry(aws_endpoint, tmp_path):  # noqa: F811
    wid = f"shim{uuid.uuid4().hex[:6]}"
    root = build(tmp_path, wid, retries=0)
    event = kinesis_event(wid, [encode_event("In", {"n": 2, "fail": True}, "ex", "ev-9", "test")])
    result, lines = run_shim(root, event)
    assert result == {"batchItemFailures": []}  # dropped, as Lambda does after MaximumRetryAttempts
    assert [(x["event_id"], x["status"], x["attempt"]) for x in lines] == [("ev-9", "failed", 1)]


def test_folder_source_with_a_module_handler(aws_endpoint, tmp_path):  # noqa: F811
    import boto3

    wid = f"shim{uuid.uuid4().hex[:6]}"
    root = build(tmp_path, wid, retries=0, folder=True)
    assert sorted(p.relative_to(root / "function").as_posix() for p in (root / "function").rglob("*")
                  if p.is_file()) == ["helpers/__init__.py", "step.py"]
    boto3.client("kinesis").create_stream(StreamName=f"{wid}-Out", ShardCount=1)
    boto3.client("kinesis").get_waiter("stream_exists").wait(StreamName=f"{wid}-Out")
    result, lines = run_shim(root, kinesis_event(wid, [encode_event("In", {"n": 5}, "ex", "ev-5", "test")]))
    assert result == {"batchItemFailures": []}
    assert [(x["event_id"], x["status"]) for x in lines] == [("ev-5", "succeeded")]
    boto3.client("kinesis").delete_stream(StreamName=f"{wid}-Out")


def test_shim_pays_deliveries_from_the_budget_and_refuses_an_event_that_has_none_left(aws_endpoint, tmp_path):  # noqa: F811
    """As the local worker: an event whose budget is below its number of subscribers is recorded failed with the
    reason and not handled; the events a handler publishes carry what is left, shared among them."""
    import boto3

    wid = f"shim{uuid.uuid4().hex[:6]}"
    root = build(tmp_path, wid, retries=0)
    manifest = json.loads((root / "xflow_function.json").read_text())
    assert manifest["event_limit"] == 100_000 and manifest["subscribers"] == {"In": 1}
    kinesis = boto3.client("kinesis")
    kinesis.create_stream(StreamName=f"{wid}-Out", ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=f"{wid}-Out")
    spent = encode_event("In", {"n": 1}, "ex", "ev-spent", "xflow/w/up", budget=0)
    funded = encode_event("In", {"n": 2}, "ex", "ev-funded", "xflow/w/up", budget=9)
    result, lines = run_shim(root, kinesis_event(wid, [spent, funded]))
    assert result == {"batchItemFailures": []}
    refused, handled = lines[0], lines[1]
    assert refused["event_id"] == "ev-spent" and refused["status"] == "failed"
    assert refused["error"].startswith("execution ex exceeded the event limit of 100000 deliveries")
    assert handled["event_id"] == "ev-funded" and handled["status"] == "succeeded"
    shard = kinesis.list_shards(StreamName=f"{wid}-Out")["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=f"{wid}-Out", ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    (out,) = kinesis.get_records(ShardIterator=iterator)["Records"]
    assert json.loads(out["Data"])["xflowbudget"] == 8  # 9, less its one delivery, for its one event
    kinesis.delete_stream(StreamName=f"{wid}-Out")
