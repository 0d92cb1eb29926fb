"""Versions, the ``live`` alias, canary rollouts and rollback, through the CLI.

On a moto server (kinesis / lambda / cloudwatch): a code change publishes one version and moves the alias, an
unchanged setup publishes nothing and changes nothing, mappings invoke the alias; a canary splits the alias's
traffic, promotes after a clean bake, and rolls back by itself (exit 1, naming the function and the metric or the
alarm) when the new version's Errors metric or an alarm fires; ``xflow rollback`` restores the version live before
(or a given one). On the local provider a deployment is a copy under the state folder: after ``xflow rollback`` a
worker runs the old handler. Plus the strategy's grammar and the ``deploy:`` block's errors.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from xflow_cli_testing import clean_env, xflow_command

from xflow.core.rollout import Strategy, parse_strategy, rollback_target

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

AWS = ("--transport", "kinesis", "--provider", "lambda", "--tracker", "cloudwatch")
LOCAL = ("--transport", "local", "--provider", "local", "--tracker", "sqlite")
HANDLER = """
MARK = {mark!r}


def handle(event, ctx):
    if event.get("out"):
        with open(event["out"], "a") as notes:
            notes.write(MARK + "\\n")
    return None
"""


def flow_text(wid: str, deploy: str = "") -> str:
    return f"""
workflow_id: {wid}
functions:
  - name: {wid}_first
    source: first.py
    handler: handle
  - name: {wid}_second
    source: second.py
    handler: handle
subscriptions:
  - event: A
    subscribers: [{wid}_first]
  - event: B
    subscribers: [{wid}_second]
{deploy}
"""


def boto(service: str):
    import boto3

    return boto3.client(service)


def published(name: str) -> list[str]:
    return [v["Version"] for v in boto("lambda").list_versions_by_function(FunctionName=name)["Versions"]
            if v["Version"] != "$LATEST"]


def alias(name: str) -> tuple[str, dict[str, float]]:
    found = boto("lambda").get_alias(FunctionName=name, Name="live")
    return found["FunctionVersion"], dict((found.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {})


def changes(report: dict) -> set[tuple[str, str]]:
    return {(c["action"], c["resource"]) for c in report["changes"]}


@pytest.fixture
def wid() -> str:
    return f"v{uuid.uuid4().hex[:8]}"


@pytest.fixture
def flow(make_workflow, wid):
    return make_workflow(flow_text(wid), {"first.py": HANDLER.format(mark="v1"), "second.py": HANDLER.format(mark="v1")})


def start_setup(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(xflow_command("setup", *args, "--output", "json"), cwd=cwd, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_split(name: str, proc: subprocess.Popen[str], seconds: float = 90) -> dict[str, float]:
    """The alias's weights once the rollout has split its traffic (the setup still running)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            _, weights = alias(name)
        except Exception:  # noqa: BLE001 - not made yet
            weights = {}
        if weights:
            return weights
        time.sleep(0.2)
    raise AssertionError(f"the alias of {name} was never split")


@pytest.mark.aws
def test_a_change_publishes_one_version_moves_the_alias_and_rollback_restores_it(aws_endpoint, cli, flow, wid):  # noqa: F811
    first, second = f"{wid}_first", f"{wid}_second"
    report = cli.json("setup", flow, *AWS)
    try:
        assert {("create", f"version:{first}"), ("create", f"alias:{first}"), ("create", f"version:{second}"),
                ("create", f"alias:{second}")} <= changes(report)
        assert published(first) == published(second) == ["1"]
        assert alias(first) == ("1", {}) and alias(second) == ("1", {})
        # the mappings invoke the alias, not $LATEST
        lam = boto("lambda")
        alias_arn = lam.get_alias(FunctionName=first, Name="live")["AliasArn"]
        assert [m["EventSourceArn"].rpartition("/")[2] for m in
                lam.list_event_source_mappings(FunctionName=alias_arn)["EventSourceMappings"]] == [f"{wid}-A"]
        assert lam.list_event_source_mappings(FunctionName=first)["EventSourceMappings"] == []

        # unchanged: nothing planned, nothing published, the aliases as they were
        def aliases() -> dict[str, dict]:
            return {name: {k: v for k, v in lam.get_alias(FunctionName=name, Name="live").items()
                           if k != "ResponseMetadata"} for name in (first, second)}

        before = aliases()
        assert cli.json("setup", flow)["changes"] == []
        assert published(first) == published(second) == ["1"]
        assert aliases() == before

        # new code of one function: one new version of it, its alias moved; the other untouched
        (flow.parent / "first.py").write_text(HANDLER.format(mark="v2"))
        assert changes(cli.json("setup", flow)) == {("update", f"function-code:{first}"),
                                                    ("create", f"version:{first}"), ("update", f"alias:{first}")}
        assert published(first) == ["1", "2"] and published(second) == ["1"]
        assert alias(first) == ("2", {}) and alias(second) == ("1", {})

        listed = {f["function"]: f for f in cli.json("versions", flow)["functions"]}
        assert set(listed) == {first, second, f"tracker_{wid}"}
        rows = {r["version"]: r for r in listed[first]["versions"]}
        assert (listed[first]["live"], rows["2"]["live"], rows["1"]["live"]) == ("2", True, False)
        config = lam.get_function(FunctionName=first, Qualifier="2")["Configuration"]
        assert rows["2"]["sha256"] == config["CodeSha256"] != rows["1"]["sha256"] and rows["2"]["created_at"]
        assert listed[first]["previous"] == ["1"]

        # rollback: back to the version live before
        back = cli.json("rollback", flow, "--function", first)["rolled_back"]
        assert [(r["function"], r["from"], r["to"]) for r in back] == [(first, "2", "1")]
        assert alias(first) == ("1", {})
        assert {f["function"]: f["live"] for f in cli.json("versions", flow)["functions"]}[first] == "1"
        # nothing live before that any more: exit 1, each function says so
        none = cli("rollback", flow, "--output", "json")
        assert none.returncode == 1, none.stderr
        assert {r["function"]: r["to"] for r in json.loads(none.stdout)["rolled_back"]} == {first: None, second: None}
        # a given version
        assert cli.json("rollback", flow, "--function", first, "--to", "2")["rolled_back"][0]["to"] == "2"
        assert alias(first) == ("2", {})
        wrong = cli("rollback", flow, "--function", first, "--to", "9")
        assert wrong.returncode == 2 and "no version 9" in wrong.stderr and "Traceback" not in wrong.stderr
    finally:
        cli.json("teardown", flow)


@pytest.mark.aws
def test_a_canary_splits_the_traffic_then_promotes_after_a_clean_bake(aws_endpoint, cli, flow, wid):  # noqa: F811
    first = f"{wid}_first"
    cli.json("setup", flow, *AWS)
    try:
        (flow.parent / "first.py").write_text(HANDLER.format(mark="v2"))
        # the plan of a linear rollout: 25% more each step, a bake after each, then everything
        plan = cli.json("setup", flow, "--dry-run", "--strategy", "linear 25 1m")["changes"]
        assert [c["action"] for c in plan if c["resource"] == f"rollout:{wid}"] == ["update"] * 3
        assert [c["resource"] for c in plan].count(f"alias:{first}") == 4
        assert published(first) == ["1"] and alias(first) == ("1", {})  # a dry run changes nothing

        proc = start_setup(cli.cwd, str(flow), "--strategy", "canary 50 4s")
        assert wait_for_split(first, proc) == {"2": 0.5}
        assert alias(first)[0] == "1"  # the stable version keeps the rest
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert ("update", f"rollout:{wid}") in changes(json.loads(out))
        assert alias(first) == ("2", {})
        assert cli.json("setup", flow)["changes"] == []
    finally:
        cli.json("teardown", flow)


@pytest.mark.aws
@pytest.mark.parametrize("watched", ["metric", "alarm"])
def test_a_canary_whose_errors_rise_rolls_back_by_itself(aws_endpoint, cli, make_workflow, wid, watched):  # noqa: F811
    first = f"{wid}_first"
    cloudwatch = boto("cloudwatch")
    alarm = f"{wid}-canary-errors"
    deploy = "deploy: canary 10 30s"
    if watched == "alarm":
        cloudwatch.put_metric_alarm(AlarmName=alarm, Namespace="AWS/Lambda", MetricName="Errors", Statistic="Sum",
                                    Dimensions=[{"Name": "FunctionName", "Value": first}], Period=60,
                                    EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold")
        deploy = f"deploy:\n  strategy: canary 10 30s\n  alarms: [{alarm}]"
    flow = make_workflow(flow_text(wid, deploy), {"first.py": HANDLER.format(mark="v1"),
                                                  "second.py": HANDLER.format(mark="v1")})
    cli.json("setup", flow, *AWS)
    try:
        (flow.parent / "first.py").write_text(HANDLER.format(mark="v2"))
        proc = start_setup(cli.cwd, str(flow))
        weights = wait_for_split(first, proc)
        assert list(weights.values()) == [0.1]
        version = next(iter(weights))
        if watched == "metric":  # the new version fails through the alias
            cloudwatch.put_metric_data(Namespace="AWS/Lambda", MetricData=[{
                "MetricName": "Errors", "Value": 3, "Unit": "Count",
                "Dimensions": [{"Name": "FunctionName", "Value": first}, {"Name": "Resource", "Value": f"{first}:live"},
                               {"Name": "ExecutedVersion", "Value": version}]}])
        else:
            cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="3 errors in the canary")
        started = time.monotonic()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        assert time.monotonic() - started < 25  # it did not wait for the end of the bake
        assert first in err and "rolled back" in err and "Traceback" not in err
        assert (f"alarm {alarm} is in ALARM" if watched == "alarm" else "Errors") in err
        assert alias(first) == ("1", {})  # every invocation on the stable version again
    finally:
        cli.json("teardown", flow)
        cloudwatch.delete_alarms(AlarmNames=[alarm])


@pytest.mark.aws
@pytest.mark.parametrize("case", ["named alarm in ALARM before the bake", "own alarm on the stable version's errors",
                                  "own alarm on the new version's errors"])
def test_a_canary_is_rolled_back_only_for_the_new_version_s_errors(aws_endpoint, cli, make_workflow, wid, case):  # noqa: F811
    first = f"{wid}_first"
    cloudwatch = boto("cloudwatch")
    named = case.startswith("named")
    if named:  # an alarm the file names, already firing before the rollout
        alarm = f"{wid}-firing"
        cloudwatch.put_metric_alarm(AlarmName=alarm, Namespace="AWS/Lambda", MetricName="Errors", Statistic="Sum",
                                    Dimensions=[{"Name": "FunctionName", "Value": first}], Period=60,
                                    EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold")
        deploy = f"deploy:\n  strategy: canary 10 4s\n  alarms: [{alarm}]"
    else:  # the function's own errors alarm, which monitoring: makes (dimension FunctionName: every version)
        alarm = f"xflow/{wid}/{first}/errors"
        deploy = "deploy: canary 10 4s\nmonitoring:\n  errors: 1\n  dashboard: false"
    flow = make_workflow(flow_text(wid, deploy), {"first.py": HANDLER.format(mark="v1"),
                                                  "second.py": HANDLER.format(mark="v1")})
    cli.json("setup", flow, *AWS)
    try:
        if named:
            cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="errors before the rollout")
        (flow.parent / "first.py").write_text(HANDLER.format(mark="v2"))
        proc = start_setup(cli.cwd, str(flow))
        weights = wait_for_split(first, proc)
        if not named:  # errors of one version through the alias, and the function's alarm fires
            failing = "1" if "stable" in case else next(iter(weights))
            cloudwatch.put_metric_data(Namespace="AWS/Lambda", MetricData=[{
                "MetricName": "Errors", "Value": 3, "Unit": "Count",
                "Dimensions": [{"Name": "FunctionName", "Value": first}, {"Name": "Resource", "Value": f"{first}:live"},
                               {"Name": "ExecutedVersion", "Value": failing}]}])
            cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="3 errors")
        _, err = proc.communicate(timeout=120)
        if "new version" in case:
            assert proc.returncode == 1, err
            assert f"alarm {alarm} is in ALARM" in err and "had 3 errors" in err and "rolled back" in err
            assert alias(first) == ("1", {})
        else:  # not the new version's errors: the bake passes and the alias moves
            assert proc.returncode == 0, err
            assert alias(first) == ("2", {})
    finally:
        cli.json("teardown", flow)
        if named:
            cloudwatch.delete_alarms(AlarmNames=[alarm])


@pytest.mark.aws
def test_an_alias_step_run_by_another_process_goes_to_the_planned_code_not_the_newest_version(
        aws_endpoint, cli, flow, wid):  # noqa: F811
    import io
    import zipfile

    from xflow.aws import AwsSession
    from xflow.core.engine import Engine
    from xflow.core.errors import XflowError
    from xflow.providers.aws_lambda.versions import PUBLISHED, Releases

    first = f"{wid}_first"
    lam = boto("lambda")
    cli.json("setup", flow, *AWS)
    try:
        (flow.parent / "first.py").write_text(HANDLER.format(mark="v2"))
        # one process plans the new code and publishes it
        planner = Engine(flow, state_dir=cli.cwd / ".xflow")
        steps = planner.plan()
        assert [s.call for s in steps] == ["lambda:UpdateFunctionCode", "lambda:PublishVersion", "lambda:UpdateAlias"]
        for step in steps[:2]:
            planner.provider.execute(step)
        assert published(first) == ["1", "2"]
        planned = lam.get_function(FunctionName=first, Qualifier="2")["Configuration"]["CodeSha256"]
        assert steps[2].params["CodeSha256"] == planned  # the alias step carries the code it was planned with
        # meanwhile other code is published by hand: the newest version is not the planned one
        other = io.BytesIO()
        with zipfile.ZipFile(other, "w") as archive:
            archive.writestr("lambda_shim.py", "def handle(event, context):\n    return None\n")
        lam.update_function_code(FunctionName=first, ZipFile=other.getvalue())
        assert lam.publish_version(FunctionName=first)["Version"] == "3"
        # another process moves the alias: to the version with the planned code
        Engine(flow, state_dir=cli.cwd / ".xflow").provider.execute(steps[2])
        assert alias(first) == ("2", {})
        # no version with the planned code: one line, and the alias stays
        with pytest.raises(XflowError) as refused:
            Releases(AwsSession(), wid).resolve(first, PUBLISHED, "A" * 43 + "=")
        assert "no published version with CodeSha256" in str(refused.value) and "\n" not in str(refused.value)
    finally:
        cli.json("teardown", flow)


def test_on_the_local_provider_rollback_makes_the_worker_run_the_old_handler(cli, make_workflow, wid, tmp_path):
    flow = make_workflow(f"""
workflow_id: {wid}
functions:
  - name: one
    source: step.py
    handler: handle
subscriptions:
  - event: A
    subscribers: [one]
""", {"step.py": HANDLER.format(mark="v1")})
    notes = tmp_path / "notes.txt"
    data = json.dumps({"out": str(notes)})
    report = cli.json("setup", flow, *LOCAL)
    assert {("create", "version:one"), ("create", "alias:one")} <= changes(report)
    assert cli.json("setup", flow)["changes"] == []

    (flow.parent / "step.py").write_text(HANDLER.format(mark="v2"))
    assert cli.json("run", flow, "--data", data)["status"] == "succeeded"  # run sets up: version 2
    assert notes.read_text().split() == ["v2"]
    listed = cli.json("versions", flow)["functions"]
    assert [(f["function"], f["live"], [v["version"] for v in f["versions"]]) for f in listed] == [("one", "2", ["1", "2"])]
    copies = list((tmp_path / ".xflow" / wid / "deployments" / "code").iterdir())
    assert len(copies) == 2 and {(c / "step.py").read_text().count("v1") for c in copies} == {0, 1}

    assert [(r["from"], r["to"]) for r in cli.json("rollback", flow)["rolled_back"]] == [("2", "1")]
    assert cli.json("versions", flow)["functions"][0]["live"] == "1"
    published_id = cli("publish", flow, "A", data, "--execution-id", "after-rollback")
    assert published_id.returncode == 0, published_id.stderr
    worker = cli.popen("worker", flow)
    try:
        deadline = time.monotonic() + 60
        while notes.read_text().split() == ["v2"] and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert notes.read_text().split() == ["v2", "v1"]  # the version live again is the one that ran
    assert cli.json("track", flow, "after-rollback")["status"] == "succeeded"


@pytest.mark.parametrize(("text", "expected"), [
    ("all-at-once", Strategy()), ("AllAtOnce", Strategy()),
    ("canary 10 5", Strategy("canary", 10, 300)), ("canary 10% 30s", Strategy("canary", 10, 30)),
    ("Canary10Percent5Minutes", Strategy("canary", 10, 300)), ("linear 25 0.5", Strategy("linear", 25, 30)),
    ("Linear10PercentEvery1Minute", Strategy("linear", 10, 60)),
])
def test_strategies_are_read_as_written(text, expected):
    assert parse_strategy(text) == expected


def test_the_weights_of_each_strategy():
    assert Strategy().weights() == []
    assert Strategy("canary", 10, 60).weights() == [0.1]
    assert Strategy("linear", 25, 60).weights() == [0.25, 0.5, 0.75]
    assert Strategy("linear", 30, 60).weights() == [0.3, 0.6, 0.9]


@pytest.mark.parametrize("text", ["canary", "canary 0 5", "canary 100 5", "canary 10 0", "linear 10 25h", "blue-green",
                                  "canary ten 5", "canary 10 5 more"])
def test_a_strategy_that_is_not_one_is_refused_in_words(text):
    with pytest.raises(ValueError, match=r"strategy|percentage|bake time|takes a percentage"):
        parse_strategy(text)


def test_rollback_goes_to_the_version_live_before_else_the_one_before():
    assert rollback_target("f", "5", ["3", "1"], ["1", "2", "3", "4", "5"]) == ("3", ["1"])
    assert rollback_target("f", "5", [], ["1", "2", "3", "4", "5"]) == ("4", [])
    assert rollback_target("f", "5", ["3"], ["1", "2", "4", "5"]) == ("4", ["3"])  # 3 is gone
    assert rollback_target("f", "1", [], ["1"]) == (None, [])
    assert rollback_target("f", "3", ["1"], ["1", "2", "3"], to="2") == ("2", ["3", "1"])


def test_a_bad_deploy_block_is_reported_with_its_line(cli, make_workflow, wid):
    flow = make_workflow(flow_text(wid, "deploy:\n  strategy: canary 150 5\n  max_error: 1"),
                         {"first.py": HANDLER.format(mark="v1"), "second.py": HANDLER.format(mark="v1")})
    done = cli("validate", flow)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "deploy.strategy" in done.stderr and "less than 100" in done.stderr
    assert "deploy.max_error" in done.stderr and "max_errors" in done.stderr  # did you mean
    bad = cli("setup", flow, *LOCAL, "--strategy", "sometimes")
    assert bad.returncode == 2 and "--strategy" in bad.stderr and "Traceback" not in bad.stderr
