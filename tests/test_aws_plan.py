"""The lambda provider's plans against a moto server: read-only when unchanged, precise when the file changes."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from xflow.core.errors import XflowError
from xflow.core.interfaces import PluginContext
from xflow.core.model import Function, Subscription, Workflow

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


def plan_all(workflow: Workflow, state: Path, calls: list[str] | None = None):
    transport, tracker, provider = plugins(workflow, state)
    if calls is not None:
        for plugin in (transport, tracker, provider):
            plugin.aws.session.events.register("before-call.*.*", lambda model, **kw: calls.append(model.name))
    return (transport.plan_setup(workflow.events) + tracker.plan_setup(workflow)
            + provider.plan_setup(workflow, transport, tracker)), (transport, tracker, provider)


def apply(steps) -> list[tuple[str, str]]:
    for step in steps:
        step.apply()
    return [(s.action, s.resource) for s in steps]


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
        ("update", f"mapping:{wid}-A->{wid}_one")])
    assert plan_all(changed, state)[0] == []

    # a new starting position cannot be changed in place; memory is configuration
    changed = make_workflow(tmp_path, wid, one={"batch_size": 10, "starting_position": "LATEST", "memory": 256})
    steps, _ = plan_all(changed, state)
    assert sorted(apply(steps)) == sorted([
        ("update", f"function-config:{wid}_one"), ("delete", f"mapping:{wid}-A->{wid}_one"),
        ("create", f"mapping:{wid}-A->{wid}_one")])

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

    steps = (provider.plan_teardown(dropped, transport, tracker) + tracker.plan_teardown(dropped)
             + transport.plan_teardown(dropped.events))
    apply(steps)
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
        apply(provider.plan_teardown(workflow, transport, tracker) + tracker.plan_teardown(workflow)
              + transport.plan_teardown(workflow.events))
