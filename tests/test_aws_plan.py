"""The lambda provider's plans against a moto server: read-only when unchanged, precise when the file changes."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import uuid
from pathlib import Path

import pytest

from xflow.core.deploy import DisplayOnlyExecutor, Executor
from xflow.core.errors import XflowError
from xflow.core.interfaces import PluginContext
from xflow.core.model import Function, Subscription, Workflow
from xflow.providers.aws_lambda import artifact_path

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

pytestmark = pytest.mark.aws

READ_ONLY = ("Get", "List", "Describe")


def make_workflow(tmp_path: Path, wid: str, **changes) -> Workflow:
    src = tmp_path / "steps.py"
    if not src.exists():
        src.write_text("def one(event, ctx):\n    return {'x': 1}\n\ndef two(event, ctx):\n    return None\n")
    one = Function(name=f"{wid}_one", handler="one", source="steps.py", source_path=src, publishes=("B",))
    two = Function(name=f"{wid}_two", handler="two", source="steps.py", source_path=src)
    functions = {one.name: one, two.name: two}
    subscriptions = (Subscription("A", (one.name,)), Subscription("B", (two.name,)))
    if "one" in changes:
        functions[one.name] = dataclasses.replace(one, **changes["one"])
    if changes.get("drop_two"):
        del functions[two.name]
        subscriptions = (Subscription("A", (one.name,)),)
    return Workflow(id=wid, path=tmp_path / "wf.yaml", functions=functions, subscriptions=subscriptions,
                    flow=("A", "B"))


def plugins(workflow: Workflow, state: Path):
    from xflow.providers.aws_lambda import LambdaProvider
    from xflow.trackers.cloudwatch import CloudWatchTracker
    from xflow.transports.kinesis import KinesisTransport

    ctx = PluginContext(workflow.id, {}, state, workflow)
    return KinesisTransport(ctx), CloudWatchTracker(ctx), LambdaProvider(ctx)


#: which plugin planned each step (by id), as the engine keeps it: the executor hands a step to its own plugin
OWNERS: dict[int, object] = {}


def owned(plugin, steps):
    for step in steps:
        OWNERS[id(step)] = plugin
    return steps


def plan_all(workflow: Workflow, state: Path, calls: list[str] | None = None):
    transport, tracker, provider = plugins(workflow, state)
    if calls is not None:
        for plugin in (transport, tracker, provider):
            plugin.aws.session.events.register("before-call.*.*", lambda model, **kw: calls.append(model.name))
    return (owned(transport, transport.plan_setup(workflow.events)) + owned(tracker, tracker.plan_setup(workflow))
            + owned(provider, provider.plan_setup(workflow, transport, tracker))), (transport, tracker, provider)


def plan_teardown(workflow: Workflow, transport, tracker, provider):
    return (owned(provider, provider.plan_teardown(workflow, transport, tracker))
            + owned(tracker, tracker.plan_teardown(workflow)) + owned(transport, transport.plan_teardown(workflow.events)))


def apply(steps) -> list[tuple[str, str]]:
    Executor(lambda step: OWNERS[id(step)].execute(step)).execute(steps)
    return [(s.action, s.resource) for s in steps]


def versions_moved(wid: str, *functions: str) -> list[tuple[str, str]]:
    """What follows a change of a function: a new version, and its alias ``live`` moved to it."""
    return [step for f in functions for step in (("create", f"version:{wid}_{f}"), ("update", f"alias:{wid}_{f}"))]


def test_plans_follow_the_file(aws_endpoint, tmp_path):  # noqa: F811
    wid = f"p{uuid.uuid4().hex[:6]}"
    state = tmp_path / "state"
    workflow = make_workflow(tmp_path, wid)
    steps, _ = plan_all(workflow, state)
    apply(steps)

    calls: list[str] = []
    steps, _ = plan_all(workflow, state, calls)
    assert steps == []
    assert calls and all(name.startswith(READ_ONLY) for name in calls), calls

    # new code → only that function's code; a batch size → only that mapping
    (tmp_path / "steps.py").write_text("def one(event, ctx):\n    return {'x': 2}\n\ndef two(event, ctx):\n"
                                       "    return None\n")
    changed = make_workflow(tmp_path, wid, one={"batch_size": 10})
    steps, _ = plan_all(changed, state)
    assert sorted(apply(steps)) == sorted([
        ("update", f"function-code:{wid}_one"), ("update", f"function-code:{wid}_two"),
        ("update", f"mapping:{wid}-A->{wid}_one"), *versions_moved(wid, "one", "two")])
    assert plan_all(changed, state)[0] == []

    # a new starting position cannot be changed in place; memory is configuration
    changed = make_workflow(tmp_path, wid, one={"batch_size": 10, "starting_position": "LATEST", "memory": 256})
    steps, _ = plan_all(changed, state)
    assert sorted(apply(steps)) == sorted([
        ("update", f"function-config:{wid}_one"), ("delete", f"mapping:{wid}-A->{wid}_one"),
        ("create", f"mapping:{wid}-A->{wid}_one"), *versions_moved(wid, "one")])

    # a removed function goes, with its mapping and log group; the policy follows
    dropped = make_workflow(tmp_path, wid, one={"batch_size": 10, "starting_position": "LATEST", "memory": 256},
                            drop_two=True)
    steps, (transport, tracker, provider) = plan_all(dropped, state)
    applied = apply(steps)
    assert (("delete", f"function:{wid}_two")) in applied
    assert (("delete", f"mapping:{wid}-B->{wid}_two")) in applied
    assert (("delete", f"log-group:/aws/lambda/{wid}_two")) in applied
    assert (("update", f"role-policy:xflow-{wid}-lambda/xflow-{wid}")) in applied
    assert plan_all(dropped, state)[0] == []

    apply(plan_teardown(dropped, transport, tracker, provider))
    assert plan_all(dropped, state)[0] and provider.plan_teardown(dropped, transport, tracker) == []


def test_a_function_of_another_workflow_is_not_taken_over(aws_endpoint, tmp_path):  # noqa: F811
    first = f"p{uuid.uuid4().hex[:6]}"
    workflow = make_workflow(tmp_path, first)
    steps, (transport, tracker, provider) = plan_all(workflow, tmp_path / "s1")
    apply(steps)
    try:
        other = dataclasses.replace(workflow, id=f"q{uuid.uuid4().hex[:6]}")
        with pytest.raises(XflowError, match="already exists and does not belong to workflow"):
            plan_all(other, tmp_path / "s2")
    finally:
        apply(plan_teardown(workflow, transport, tracker, provider))


CALL = re.compile(r"^(lambda|iam|sqs|logs|xflow):[A-Z][A-Za-z]+$")


def _no_bytes(value) -> bool:
    if isinstance(value, bytes | bytearray):
        return False
    if isinstance(value, dict):
        return all(_no_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_no_bytes(v) for v in value)
    return True


def test_every_lambda_step_is_data_and_its_executor_builds_the_zip(aws_endpoint, tmp_path):  # noqa: F811
    import boto3

    wid = f"p{uuid.uuid4().hex[:6]}"
    state = tmp_path / "state"
    workflow = make_workflow(tmp_path, wid)
    steps, (transport, tracker, provider) = plan_all(workflow, state)
    ours = [s for s in steps if OWNERS[id(s)] is provider]
    for step in ours:
        assert step.apply is None and CALL.match(step.call), step
        assert _no_bytes(step.params) and json.loads(json.dumps(step.params)) == step.params, step.call
    assert {s.call for s in ours} == {"sqs:CreateQueue", "iam:CreateRole", "logs:CreateLogGroup",
                                      "lambda:CreateFunction", "lambda:CreateEventSourceMapping",
                                      "lambda:PublishVersion", "lambda:CreateAlias"}
    role = f"role:xflow-{wid}-lambda"
    queue = f"queue:xflow-{wid}-failures"
    functions = {s.params["FunctionName"]: s for s in ours if s.call == "lambda:CreateFunction"}
    assert set(functions) == {f"{wid}_one", f"{wid}_two", f"tracker_{wid}"}
    for name, step in functions.items():
        artifact = step.params["Code"]["ZipFile"]
        assert re.fullmatch(r"[0-9a-f]{64}", artifact["Sha256"]) and artifact["Size"] > 0
        assert artifact["Manifest"]["function"] == name
        assert step.params["Handler"].startswith("lambda_shim.") and step.params["Role"].endswith(f"/xflow-{wid}-lambda")
        assert step.depends_on == (role,)
    for step in (s for s in ours if s.call == "lambda:CreateEventSourceMapping"):
        alias, stream = step.params["FunctionName"], step.params["EventSourceArn"].rpartition("/")[2]
        function = alias.rpartition(":function:")[2].removesuffix(":live")  # mappings invoke the function's alias
        assert alias.endswith(f":function:{function}:live"), alias
        expected = {f"function:{function}", f"alias:{function}", f"stream:{stream}"} | (
            {queue} if function != f"tracker_{wid}" else set())
        assert set(step.depends_on) == expected, step
        # what it needs is planned before it (the transport's streams, the queue, the function)
        assert all(steps.index(next(s for s in steps if s.resource == r and s.action == "create")) < steps.index(step)
                   for r in expected)
    shown = DisplayOnlyExecutor()
    shown.execute(steps)
    assert any(line.startswith(f"create function:{wid}_one  lambda:CreateFunction(") for line in shown.lines())

    # a provider that did not plan it builds the zip again, checks it against the planned SHA-256 and keeps it
    fresh = plugins(workflow, state)[2]
    for step in ours:
        OWNERS[id(step)] = fresh
    apply(steps)
    lam = boto3.client("lambda")
    for name, step in functions.items():
        digest = bytes.fromhex(step.params["Code"]["ZipFile"]["Sha256"])
        assert lam.get_function(FunctionName=name)["Configuration"]["CodeSha256"] == base64.b64encode(digest).decode()
        assert artifact_path(state, base64.b64encode(digest).decode()).is_file()

    # code that changes between the plan and the apply is refused, not deployed
    (tmp_path / "steps.py").write_text("def one(event, ctx):\n    return {'x': 3}\n\ndef two(event, ctx):\n"
                                       "    return None\n")
    steps, (transport, tracker, provider) = plan_all(workflow, state)
    assert {s.call for s in steps} == {"lambda:UpdateFunctionCode", "lambda:PublishVersion", "lambda:UpdateAlias"}
    (tmp_path / "steps.py").write_text("def one(event, ctx):\n    return {'x': 4}\n\ndef two(event, ctx):\n"
                                       "    return None\n")
    fresh = plugins(workflow, state)[2]
    with pytest.raises(XflowError, match="changed since it was planned"):
        fresh.execute(steps[0])
    # the provider that planned it deploys what it planned
    apply(steps)
    assert plan_all(workflow, state)[0] != []  # the file's code (x: 4) is not what was deployed (x: 3)

    teardown = plan_teardown(workflow, transport, tracker, provider)
    assert all(s.apply is None and CALL.match(s.call) for s in teardown if OWNERS[id(s)] is provider)
    assert {"lambda:DeleteEventSourceMapping", "lambda:DeleteFunction", "logs:DeleteLogGroup", "sqs:DeleteQueue",
            "iam:DeleteRolePolicy", "iam:DeleteRole", "xflow:DeleteFiles"} <= {s.call for s in teardown}
    apply(teardown)
    assert not (state / "lambda-artifacts").exists()


def test_the_provider_asks_transport_and_tracker_for_capabilities_not_names(aws_endpoint, tmp_path):  # noqa: F811
    from xflow.trackers.cloudwatch import CloudWatchTracker
    from xflow.transports.kinesis import KinesisTransport

    class Renamed(KinesisTransport):
        name = "my-streams"

    class Unreadable(KinesisTransport):  # named kinesis, but declares no event source
        def lambda_event_source(self, event):
            return None

    class Elsewhere(CloudWatchTracker):
        name = "my-logs"

        def lambda_tracking_target(self):
            return {"log_group": f"/elsewhere/{self.workflow_id}", "retention_days": 3}

    class Mute(CloudWatchTracker):  # named cloudwatch, but Lambda cannot write to it
        def lambda_tracking_target(self):
            return None

    wid = f"p{uuid.uuid4().hex[:6]}"
    workflow = make_workflow(tmp_path, wid)
    ctx = PluginContext(wid, {}, tmp_path / "state", workflow)
    _, _, provider = plugins(workflow, tmp_path / "state")
    steps = provider.plan_setup(workflow, Renamed(ctx), Elsewhere(ctx))
    by_call: dict[str, list] = {}
    for step in steps:
        by_call.setdefault(step.call, []).append(step)
    tracker_fn = next(s for s in by_call["lambda:CreateFunction"] if s.params["FunctionName"] == f"tracker_{wid}")
    deployment = json.loads(tracker_fn.params["Environment"]["Variables"]["XFLOW_DEPLOYMENT"])  # the stage's names
    assert deployment["log_group"] == f"/elsewhere/{wid}"
    assert {s.params["retentionInDays"] for s in by_call["logs:CreateLogGroup"]} == {3}
    policy = by_call["iam:CreateRole"][0].params["InlinePolicy"]["PolicyDocument"]
    resources = [r for statement in policy["Statement"] for r in statement["Resource"]]
    assert any(r.endswith(f":log-group:/elsewhere/{wid}") for r in resources)
    assert any(r.endswith(f":stream/{wid}-A") for r in resources)
    assert all(f"stream:{wid}-" in " ".join(s.depends_on) for s in by_call["lambda:CreateEventSourceMapping"])

    with pytest.raises(XflowError, match="'kinesis' does not declare one"):
        provider.plan_setup(workflow, Unreadable(ctx), Elsewhere(ctx))
    with pytest.raises(XflowError, match="'cloudwatch' does not declare one") as refused:
        provider.plan_setup(workflow, Renamed(ctx), Mute(ctx))
    assert refused.value.hint == "use --tracker cloudwatch"
