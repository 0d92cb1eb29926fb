"""The conformance kit run against the kinesis transport and the cloudwatch tracker on a moto server, and their plans as
data: each step names the AWS call and its parameters, planning only reads, a dry run changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from xflow.core.deploy import DisplayOnlyExecutor
from xflow.core.interfaces import PluginContext, Step

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

from xflow import testing  # noqa: E402

pytestmark = pytest.mark.aws


class TestKinesisTransport(testing.TransportContract):
    @pytest.fixture
    def transport_factory(self, aws_endpoint, tmp_path):  # noqa: F811
        from xflow.transports.kinesis import KinesisTransport

        def make(workflow_id):
            return KinesisTransport(PluginContext(workflow_id, {"lease_seconds": 6}, tmp_path))

        return make


class TestCloudWatchTracker(testing.TrackerStoreContract):
    @pytest.fixture
    def tracker_factory(self, aws_endpoint, tmp_path):  # noqa: F811
        from xflow.trackers.cloudwatch import CloudWatchTracker

        def make(workflow_id):
            return CloudWatchTracker(PluginContext(workflow_id, {}, tmp_path))

        return make


class TestLambdaProvider(testing.FunctionProviderContract):
    @pytest.fixture
    def provider_transport(self, aws_endpoint, workflow, tmp_path):  # noqa: F811
        from xflow.transports.kinesis import KinesisTransport

        transport = KinesisTransport(PluginContext(workflow.id, {}, tmp_path, workflow))
        testing.apply_steps(transport.plan_setup(workflow.events), transport)
        yield transport
        testing.apply_steps(transport.plan_teardown(workflow.events), transport)

    @pytest.fixture
    def provider_tracker(self, aws_endpoint, workflow, tmp_path):  # noqa: F811
        from xflow.trackers.cloudwatch import CloudWatchTracker

        tracker = CloudWatchTracker(PluginContext(workflow.id, {}, tmp_path, workflow))
        testing.apply_steps(tracker.plan_setup(workflow), tracker)
        yield tracker
        testing.apply_steps(tracker.plan_teardown(workflow), tracker)

    @pytest.fixture
    def provider_factory(self, aws_endpoint, workflow, tmp_path):  # noqa: F811
        from xflow.providers.aws_lambda import LambdaProvider

        def make(workflow_id):
            return LambdaProvider(PluginContext(workflow_id, {}, tmp_path, workflow))

        return make


# ---------------------------------------------------------------------------------------------- plans as data

READ_ONLY = ("Get", "List", "Describe")


def record_calls(plugin: Any) -> list[str]:
    """The names of the AWS operations the plugin's clients make from now on (clients made later included)."""
    calls: list[str] = []
    plugin.aws.session.events.register("before-call.*.*", lambda model, **_: calls.append(model.name))
    return calls


def shape(steps: list[Step]) -> list[tuple[str, str, str, dict[str, Any]]]:
    assert all(step.apply is None for step in steps), "a planner returns data-only steps"
    json.dumps([step.describe() for step in steps])  # JSON-able as a whole
    return [(step.action, step.resource, step.call, dict(step.params)) for step in steps]


def test_kinesis_plans_name_the_calls_and_planning_only_reads(aws_endpoint, tmp_path):  # noqa: F811
    import boto3

    from xflow.transports.kinesis import KinesisTransport

    wid = testing.new_workflow_id("pd")
    transport = KinesisTransport(PluginContext(wid, {"shards": 2}, tmp_path))
    calls = record_calls(transport)
    plan = transport.plan_setup(["A", "B"])
    assert calls and all(name.startswith(READ_ONLY) for name in calls), calls
    tags = {"xflow:workflow": wid}
    assert shape(plan) == [
        ("create", f"stream:{wid}-{e}", "kinesis:CreateStream",
         {"StreamName": f"{wid}-{e}", "ShardCount": 2, "StreamModeDetails": {"StreamMode": "PROVISIONED"}, "Tags": tags})
        for e in ("A", "B")]
    dry = DisplayOnlyExecutor()
    dry.execute(plan)
    assert next(iter(dry.lines())).startswith(f"create stream:{wid}-A  kinesis:CreateStream(StreamName='{wid}-A'")
    kinesis = boto3.client("kinesis")
    assert not [n for n in kinesis.list_streams()["StreamNames"] if n.startswith(wid)], "a dry run creates nothing"

    calls.clear()
    testing.apply_steps(plan, transport)
    assert calls.count("CreateStream") == 2 and calls.count("AddTagsToStream") == 2
    assert kinesis.list_tags_for_stream(StreamName=f"{wid}-B")["Tags"] == [{"Key": "xflow:workflow", "Value": wid}]

    resharded = KinesisTransport(PluginContext(wid, {"shards": 3}, tmp_path))
    plan = resharded.plan_setup(["A"])
    assert shape(plan) == [
        ("update", f"stream:{wid}-A", "kinesis:UpdateShardCount",
         {"StreamName": f"{wid}-A", "TargetShardCount": 3, "ScalingType": "UNIFORM_SCALING"}),
        ("delete", f"stream:{wid}-B", "kinesis:DeleteStream", {"StreamName": f"{wid}-B", "EnforceConsumerDeletion": True})]
    testing.apply_steps(plan, resharded)
    summary = kinesis.describe_stream_summary(StreamName=f"{wid}-A")["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 3

    # the lease table is made by the first subscribe (a dynamodb:CreateTable step) and removed by teardown
    calls = record_calls(resharded)
    resharded.subscribe("fn", ["A"]).close()
    assert "CreateTable" in calls
    table = f"xflow-{wid}-checkpoints"
    plan = resharded.plan_teardown(["A"])
    assert shape(plan) == [
        ("delete", f"stream:{wid}-A", "kinesis:DeleteStream", {"StreamName": f"{wid}-A", "EnforceConsumerDeletion": True}),
        ("delete", f"table:{table}", "dynamodb:DeleteTable", {"TableName": table})]
    testing.apply_steps(plan, resharded)
    assert table not in boto3.client("dynamodb").list_tables()["TableNames"]
    assert resharded.plan_teardown(["A"]) == []


def test_cloudwatch_plans_name_the_calls_and_planning_only_reads(aws_endpoint, tmp_path):  # noqa: F811
    import boto3

    from xflow.trackers.cloudwatch import CloudWatchTracker

    wid = testing.new_workflow_id("pd")
    workflow = testing.kit_workflow(wid, tmp_path / "kit")
    group = f"/xflow/{wid}"
    tracker = CloudWatchTracker(PluginContext(wid, {"retention_days": 3}, tmp_path, workflow))
    calls = record_calls(tracker)
    plan = tracker.plan_setup(workflow)
    assert calls and all(name.startswith(READ_ONLY) for name in calls), calls
    assert shape(plan) == [("create", f"log-group:{group}", "logs:CreateLogGroup",
                            {"logGroupName": group, "tags": {"xflow:workflow": wid}, "retentionInDays": 3})]
    logs = boto3.client("logs")
    assert logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"] == [], "planning creates nothing"
    testing.apply_steps(plan, tracker)
    [made] = logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    assert made["retentionInDays"] == 3
    assert logs.list_tags_log_group(logGroupName=group)["tags"] == {"xflow:workflow": wid}

    longer = CloudWatchTracker(PluginContext(wid, {"retention_days": 5}, tmp_path, workflow))
    plan = longer.plan_setup(workflow)
    assert shape(plan) == [("update", f"log-group:{group}", "logs:PutRetentionPolicy",
                            {"logGroupName": group, "retentionInDays": 5})]
    testing.apply_steps(plan, longer)
    assert longer.plan_setup(workflow) == []

    plan = longer.plan_teardown(workflow)
    assert shape(plan) == [("delete", f"log-group:{group}", "logs:DeleteLogGroup", {"logGroupName": group})]
    testing.apply_steps(plan, longer)
    assert logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"] == []
    assert longer.plan_teardown(workflow) == []
