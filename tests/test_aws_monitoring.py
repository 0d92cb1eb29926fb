"""AWS monitoring by setup, on a moto server through the CLI: the ``monitoring:`` block makes ``setup`` put CloudWatch
alarms on every function's Errors, Throttles and IteratorAge and on the on-failure queue's depth, the SNS topic they
notify (with an e-mail subscription) and one dashboard, all shown by ``--dry-run`` and made by nothing else; a second
setup changes nothing, a changed block changes only what it names, teardown removes them. The ``tracing`` option
turns on Lambda's active tracing. The Lambda shim (run by ``xflow emulate``) writes embedded-metric-format lines and
carries the trace context from event to event."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

from xflow.monitoring import tracing

pytestmark = pytest.mark.aws

FLOW = """
workflow_id: {workflow}
functions:
  - name: {workflow}_reader
    handler: h.reader
    source: h.py
    publishes: [Read]
  - name: {workflow}_counter
    handler: h.counter
    source: h.py
subscriptions:
  - event: Uploaded
    subscribers: [{workflow}_reader]
  - event: Read
    subscribers: [{workflow}_counter]
provider:
  name: lambda
  options: {{tracing: {tracing}}}
monitoring:
{monitoring}
"""
HANDLERS = """
def reader(event, ctx):
    return {"text": event["name"]}

def counter(event, ctx):
    ctx.logger.info("counted %s", event["text"])
"""


def write_flow(folder: Path, workflow: str, monitoring: str, tracing_on: bool = True) -> Path:
    (folder / "h.py").write_text(HANDLERS)
    path = folder / "flow.yaml"
    path.write_text(FLOW.format(workflow=workflow, monitoring=monitoring, tracing=str(tracing_on).lower()))
    return path


def changes(cli, *args: str) -> set[tuple[str, str]]:
    return {(c["action"], c["resource"]) for c in cli.json(*args)["changes"]}


def our_alarms(cloudwatch: Any, workflow: str) -> dict[str, dict[str, Any]]:
    return {a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNamePrefix=f"xflow/{workflow}/")["MetricAlarms"]}


def dashboard(cloudwatch: Any, workflow: str) -> dict[str, Any] | None:
    try:
        return json.loads(cloudwatch.get_dashboard(DashboardName=f"xflow-{workflow}")["DashboardBody"])
    except cloudwatch.exceptions.ResourceNotFound:
        return None


def topics(sns: Any) -> list[str]:
    return [t["TopicArn"] for t in sns.list_topics()["Topics"]]


def test_setup_makes_alarms_topic_and_dashboard_once_and_teardown_removes_them(aws_endpoint, cli, tmp_path):  # noqa: F811
    import boto3

    cloudwatch, sns, lam, iam = (boto3.client(s) for s in ("cloudwatch", "sns", "lambda", "iam"))
    workflow = f"mon{uuid.uuid4().hex[:6]}"
    functions = [f"{workflow}_reader", f"{workflow}_counter", f"tracker_{workflow}"]
    topic = f"arn:aws:sns:us-east-1:123456789012:xflow-{workflow}-alarms"
    path = write_flow(tmp_path, workflow, "  email: ops@example.com\n  errors: 2\n  iterator_age: 30\n")
    expected_alarms = {f"xflow/{workflow}/{f}/{kind}" for f in functions for kind in ("errors", "throttles",
                                                                                        "iterator-age")}
    expected_alarms.add(f"xflow/{workflow}/dead-letters")

    # --dry-run lists every alarm, the topic and its subscription, the dashboard, and makes nothing
    planned = changes(cli, "setup", path, "--dry-run")
    assert {("create", f"alarm:{name}") for name in expected_alarms} <= planned
    assert {("create", f"sns-topic:xflow-{workflow}-alarms"), ("create", f"dashboard:xflow-{workflow}"),
            ("create", f"sns-subscription:xflow-{workflow}-alarms/ops@example.com")} <= planned
    shown = cli("setup", path, "--dry-run")
    assert shown.returncode == 0, shown.stderr
    for call in ("cloudwatch:PutMetricAlarm", "sns:CreateTopic", "sns:Subscribe", "cloudwatch:PutDashboard"):
        assert call in shown.stdout, (call, shown.stdout[-3000:])
    assert our_alarms(cloudwatch, workflow) == {} and topic not in topics(sns) and dashboard(cloudwatch, workflow) is None

    made = changes(cli, "setup", path)
    assert {("create", f"alarm:{name}") for name in expected_alarms} <= made
    alarms = our_alarms(cloudwatch, workflow)
    assert set(alarms) == expected_alarms
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [topic] and alarm["OKActions"] == [topic], name
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold" and alarm["EvaluationPeriods"] == 1
    reader = f"xflow/{workflow}/{workflow}_reader"
    assert [(alarms[f"{reader}/{k}"]["MetricName"], alarms[f"{reader}/{k}"]["Statistic"],
             alarms[f"{reader}/{k}"]["Threshold"]) for k in ("errors", "throttles", "iterator-age")] == [
        ("Errors", "Sum", 2.0), ("Throttles", "Sum", 1.0), ("IteratorAge", "Maximum", 30000.0)]
    assert alarms[f"{reader}/errors"]["Dimensions"] == [{"Name": "FunctionName", "Value": f"{workflow}_reader"}]
    depth = alarms[f"xflow/{workflow}/dead-letters"]
    assert (depth["Namespace"], depth["MetricName"], depth["Dimensions"]) == (
        "AWS/SQS", "ApproximateNumberOfMessagesVisible", [{"Name": "QueueName", "Value": f"xflow-{workflow}-failures"}])
    assert topic in topics(sns)
    assert {"Key": "xflow:workflow", "Value": workflow} in sns.list_tags_for_resource(ResourceArn=topic)["Tags"]
    assert [(s["Protocol"], s["Endpoint"]) for s in sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]] \
        == [("email", "ops@example.com")]
    body = dashboard(cloudwatch, workflow)
    assert body is not None
    graphs = {w["properties"]["title"]: w["properties"] for w in body["widgets"] if w["type"] == "metric"}
    for title, metric in (("Invocations", "Invocations"), ("Errors", "Errors"), ("Duration (ms)", "Duration"),
                          ("Iterator age (ms)", "IteratorAge")):
        assert graphs[title]["metrics"] == [["AWS/Lambda", metric, "FunctionName", f] for f in functions], title
    assert graphs["Events per stream"]["metrics"] == [
        ["AWS/Kinesis", "IncomingRecords", "StreamName", f"{workflow}-{event}"] for event in ("Uploaded", "Read")]
    # active tracing: every function traced, the role allowed to write segments
    for function in functions:
        assert lam.get_function(FunctionName=function)["Configuration"]["TracingConfig"] == {"Mode": "Active"}
    policy = iam.get_role_policy(RoleName=f"xflow-{workflow}-lambda", PolicyName=iam.list_role_policies(
        RoleName=f"xflow-{workflow}-lambda")["PolicyNames"][0])["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    assert any("xray:PutTraceSegments" in s["Action"] for s in policy["Statement"])

    assert changes(cli, "setup", path) == set()  # compared with DescribeAlarms, GetDashboard, the topic: unchanged

    # a threshold changed, the address gone, no dashboard: only those change
    write_flow(tmp_path, workflow, "  errors: 5\n  iterator_age: 30\n  dashboard: false\n")
    changed = changes(cli, "setup", path)
    assert changed == {*(("update", f"alarm:xflow/{workflow}/{f}/errors") for f in functions),
                       ("delete", f"sns-subscription:xflow-{workflow}-alarms/ops@example.com"),
                       ("delete", f"dashboard:xflow-{workflow}")}, changed
    assert our_alarms(cloudwatch, workflow)[f"{reader}/errors"]["Threshold"] == 5.0
    assert dashboard(cloudwatch, workflow) is None and sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []

    removed = changes(cli, "teardown", path)
    assert {("delete", f"alarm:{name}") for name in expected_alarms} | {
        ("delete", f"sns-topic:xflow-{workflow}-alarms")} <= removed
    assert our_alarms(cloudwatch, workflow) == {} and topic not in topics(sns)


def test_the_shim_writes_embedded_metrics_and_carries_the_trace(aws_endpoint, cli, tmp_path):  # noqa: F811
    """Run by ``xflow emulate`` (the deployed zips, the shim as Lambda calls it): each delivery line is a CloudWatch
    embedded-metric-format document, and every event of the execution carries one trace id."""
    import boto3

    logs, kinesis = boto3.client("logs"), boto3.client("kinesis")
    workflow = f"emf{uuid.uuid4().hex[:6]}"
    path = write_flow(tmp_path, workflow, "  dashboard: false\n", tracing_on=False)
    cli.json("setup", path)
    try:
        execution = "exec-emf-1"
        done = cli("publish", path, "Uploaded", '{"name": "delta"}', "--execution-id", execution)
        assert done.returncode == 0, done.stderr
        done = cli("emulate", path, "--until-idle", "--timeout", "180", "--poll-interval", "0.2", timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr

        documents = []
        for function in (f"{workflow}_reader", f"{workflow}_counter"):
            for item in logs.filter_log_events(logGroupName=f"/aws/lambda/{function}")["events"]:
                start = item["message"].find("{")
                if start >= 0 and '"_aws"' in item["message"]:
                    documents.append(json.loads(item["message"][start:]))
        assert sorted(d["function"] for d in documents) == [f"{workflow}_counter", f"{workflow}_reader"]
        for document in documents:
            check_embedded_metrics(document)
            assert (document["workflow_id"], document["status"], document["Deliveries"]) == (workflow, "succeeded", 1)
            assert document["HandlerDuration"] >= 0
        assert {d["function"]: d["EventsPublished"] for d in documents} == {f"{workflow}_reader": 1,
                                                                            f"{workflow}_counter": 0}

        # the trace: Uploaded (published by the CLI) and Read (by the reader in the shim) share one trace id
        contexts = {}
        for event in ("Uploaded", "Read"):
            stream = f"{workflow}-{event}"
            shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
            iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard,
                                                  ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            [record] = kinesis.get_records(ShardIterator=iterator)["Records"]
            contexts[event] = tracing.parse(json.loads(record["Data"])["traceparent"])
        assert contexts["Uploaded"] and contexts["Read"]
        assert contexts["Uploaded"][0] == contexts["Read"][0] and contexts["Uploaded"][1] != contexts["Read"][1]
    finally:
        cli.json("teardown", path)


def check_embedded_metrics(document: dict[str, Any]) -> None:
    """The rules of CloudWatch's embedded metric format specification for one log document."""
    meta = document["_aws"]
    assert isinstance(meta["Timestamp"], int) and meta["Timestamp"] > 1_600_000_000_000
    [directive] = meta["CloudWatchMetrics"]
    assert directive["Namespace"] == "xflow"
    for dimension_set in directive["Dimensions"]:
        assert 1 <= len(dimension_set) <= 30
        assert all(isinstance(document[name], str) and document[name] for name in dimension_set)
    for metric in directive["Metrics"]:
        assert metric["Unit"] in ("Count", "Milliseconds")
        assert isinstance(document[metric["Name"]], int | float)


def test_a_bad_monitoring_block_is_refused_in_one_line_per_problem(cli, tmp_path):
    path = write_flow(tmp_path, "refused", "  email: not-an-address\n  period: 45\n  dashbord: false\n")
    done = cli("validate", path)
    assert done.returncode == 2
    problems = [line for line in done.stderr.splitlines() if "monitoring." in line]
    assert any("monitoring.email.0: not a valid email address" in line for line in problems), done.stderr
    assert any("monitoring.period: must be 10, 30 or a multiple of 60" in line for line in problems), done.stderr
    assert any("monitoring.dashbord: unknown key (did you mean 'dashboard'?)" in line for line in problems), done.stderr
    both = write_flow(tmp_path, "refused", "  email: ops@example.com\n"
                                           "  sns_topic_arn: arn:aws:sns:us-east-1:123456789012:mine\n")
    done = cli("validate", both)
    assert done.returncode == 2 and "give 'email'" in done.stderr and "not both" in done.stderr
