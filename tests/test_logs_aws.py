"""Logging on AWS, against a moto server, through the CLI: the ``logging.aws`` block makes setup subscribe every
function's log group and the tracker's to one destination (with the role CloudWatch Logs assumes), shown by
--dry-run, unchanged by a second setup, removed by teardown; ``xflow logs`` reads an execution's records from the
functions' log groups (the Lambda shim's lines, run by ``xflow emulate``), where the shim also prints them one JSON line
each."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

pytestmark = pytest.mark.aws

FLOW = """
workflow_id: {workflow}
functions:
  - name: {workflow}_reader
    handler: h.reader
    source: .
    publishes: [Read]
  - name: {workflow}_counter
    handler: h.counter
    source: .
subscriptions:
  - event: Uploaded
    subscribers: [{workflow}_reader]
  - event: Read
    subscribers: [{workflow}_counter]
logging:
  aws:
    destination_arn: "{destination}"
    filter_pattern: ""
"""
HANDLERS = """
def reader(event, ctx):
    ctx.logger.info("reading %s", event["name"])
    print("printed", event["name"])
    return {"text": event["name"]}

def counter(event, ctx):
    ctx.logger.warning("counting %s", event["text"])
"""


def xflow(*args: str, cwd: Path, expect: int = 0, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["xflow", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))
    assert done.returncode == expect, f"xflow {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def changes(done: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    return [(c["action"], c["resource"]) for c in json.loads(done.stdout)["changes"]]


def filters(logs: Any, group: str) -> list[dict[str, Any]]:
    try:
        return list(logs.describe_subscription_filters(logGroupName=group)["subscriptionFilters"])
    except logs.exceptions.ResourceNotFoundException:
        return []


def test_setup_subscribes_every_log_group_and_logs_reads_an_execution(aws_endpoint, tmp_path: Path) -> None:  # noqa: F811
    import boto3

    workflow = "shipped"
    kinesis, logs, iam = boto3.client("kinesis"), boto3.client("logs"), boto3.client("iam")
    kinesis.create_stream(StreamName="central-logs", ShardCount=1)
    destination = kinesis.describe_stream_summary(StreamName="central-logs")["StreamDescriptionSummary"]["StreamARN"]
    (tmp_path / "h.py").write_text(textwrap.dedent(HANDLERS))
    path = tmp_path / "flow.yaml"
    path.write_text(FLOW.format(workflow=workflow, destination=destination))
    groups = [f"/xflow/{workflow}", *(f"/aws/lambda/{name}" for name in
                                      (f"{workflow}_reader", f"{workflow}_counter", f"tracker_{workflow}"))]

    planned = changes(xflow("setup", str(path), "--dry-run", "-o", "json", cwd=tmp_path))
    assert ("create", f"role:xflow-{workflow}-logs") in planned
    assert {("create", f"subscription-filter:{group}") for group in groups} <= set(planned)
    assert all(filters(logs, group) == [] for group in groups)  # a dry run made nothing

    made = changes(xflow("setup", str(path), "-o", "json", cwd=tmp_path))
    assert {("create", f"subscription-filter:{group}") for group in groups} <= set(made)
    role = iam.get_role(RoleName=f"xflow-{workflow}-logs")["Role"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "logs.amazonaws.com"}
    policy = iam.get_role_policy(RoleName=f"xflow-{workflow}-logs", PolicyName=f"xflow-{workflow}-logs")
    document = policy["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    assert document["Statement"][0]["Resource"] == [destination]
    assert "kinesis:PutRecords" in document["Statement"][0]["Action"]
    for group in groups:
        [found] = filters(logs, group)
        assert (found["filterName"], found["destinationArn"], found["roleArn"], found["filterPattern"]) == (
            f"xflow-{workflow}", destination, role["Arn"], "")

    assert changes(xflow("setup", str(path), "-o", "json", cwd=tmp_path)) == []  # unchanged: nothing to do

    execution = "exec-aws-1"
    xflow("publish", str(path), "Uploaded", '{"name": "delta"}', "--execution-id", execution, cwd=tmp_path)
    xflow("emulate", str(path), "--until-idle", "--timeout", "180", "--poll-interval", "0.2", cwd=tmp_path)
    found = json.loads(xflow("logs", str(path), "--execution-id", execution, "-o", "json", cwd=tmp_path).stdout)
    assert found["source"] == "cloudwatch"
    lines = [(r["function"], r["level"], r["message"]) for r in found["records"] if r["kind"] == "line"]
    assert lines == [(f"{workflow}_reader", "INFO", "reading delta"), (f"{workflow}_reader", "INFO", "printed delta"),
                     (f"{workflow}_counter", "WARNING", "counting delta")]
    outcomes = [(r["function"], r["status"]) for r in found["records"] if r["kind"] == "outcome"]
    assert outcomes == [(f"{workflow}_reader", "succeeded"), (f"{workflow}_counter", "succeeded")]
    assert {r["execution_id"] for r in found["records"]} == {execution}
    # the shim printed the same records, one JSON line each, into each function's group
    printed = [json.loads(e["message"]) for name in (f"{workflow}_reader", f"{workflow}_counter")
               for e in logs.filter_log_events(logGroupName=f"/aws/lambda/{name}", filterPattern=f'"{execution}"')["events"]
               if e["message"].startswith('{"time"')]
    assert sorted(printed, key=lambda r: (r["time"], r["seq"])) == found["records"]
    assert all(len(r.get("trace_id") or "") == 32 for r in printed) and len({r["trace_id"] for r in printed}) == 1

    removed = changes(xflow("teardown", str(path), "-o", "json", cwd=tmp_path))
    assert {("delete", f"subscription-filter:{group}") for group in groups} <= set(removed)
    assert ("delete", f"role:xflow-{workflow}-logs") in removed
    assert all(filters(logs, group) == [] for group in groups)
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName=f"xflow-{workflow}-logs")


def test_a_bad_destination_is_refused_before_anything_is_made(aws_endpoint, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "h.py").write_text(textwrap.dedent(HANDLERS))
    path = tmp_path / "flow.yaml"
    path.write_text(FLOW.format(workflow="refused", destination="arn:aws:sqs:us-east-1:123456789012:queue"))
    done = xflow("setup", str(path), cwd=tmp_path, expect=2)
    assert "logging.aws.destination_arn" in done.stderr and "is not the ARN of a Kinesis stream" in done.stderr


def statements(lam: Any, function: str) -> list[str]:
    """The ids of the statements in a function's resource policy."""
    try:
        return [s["Sid"] for s in json.loads(lam.get_policy(FunctionName=function)["Policy"])["Statement"]]
    except lam.exceptions.ResourceNotFoundException:
        return []


def test_a_lambda_destination_loses_its_permission_when_the_destination_changes_or_the_block_goes(
        aws_endpoint, tmp_path: Path) -> None:  # noqa: F811
    import io
    import zipfile

    import boto3

    workflow = "shippedtofn"
    statement = f"xflow-{workflow}-logs"
    iam, lam, logs, kinesis = (boto3.client(s) for s in ("iam", "lambda", "logs", "kinesis"))
    role = iam.create_role(RoleName="central-logs-fn-role", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}))["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return None\n")
    function = lam.create_function(FunctionName="central-logs-fn", Runtime="python3.12", Role=role,
                                   Handler="index.handler", Code={"ZipFile": code.getvalue()})["FunctionArn"]
    kinesis.create_stream(StreamName="central-logs-to", ShardCount=1)
    stream = kinesis.describe_stream_summary(StreamName="central-logs-to")["StreamDescriptionSummary"]["StreamARN"]
    (tmp_path / "h.py").write_text(textwrap.dedent(HANDLERS))
    path = tmp_path / "flow.yaml"
    groups = [f"/xflow/{workflow}", *(f"/aws/lambda/{name}" for name in
                                      (f"{workflow}_reader", f"{workflow}_counter", f"tracker_{workflow}"))]

    def setup(destination: str | None) -> list[tuple[str, str]]:
        text = FLOW.format(workflow=workflow, destination=destination or "")
        path.write_text(text if destination else text[:text.index("logging:")])
        return changes(xflow("setup", str(path), "-o", "json", cwd=tmp_path))

    def destinations() -> set[str]:
        return {f["destinationArn"] for group in groups for f in filters(logs, group)}

    assert ("create", f"lambda-permission:{statement}") in setup(function)
    assert statement in statements(lam, function) and destinations() == {function}

    # from the Lambda to a stream: the function's statement goes
    moved = setup(stream)
    assert ("delete", f"lambda-permission:{statement}") in moved
    assert statement not in statements(lam, function) and destinations() == {stream}

    # back to the Lambda (the role made for the stream goes), then the block removed: the filters and the statement go
    assert ("delete", f"role:xflow-{workflow}-logs") in setup(function)
    assert statement in statements(lam, function) and destinations() == {function}
    removed = setup(None)
    assert ("delete", f"lambda-permission:{statement}") in removed
    assert statement not in statements(lam, function) and destinations() == set()
    assert setup(None) == []  # nothing left to remove
    xflow("teardown", str(path), cwd=tmp_path)
