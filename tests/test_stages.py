"""Stages: dev, staging and prod of one workflow side by side (``--stage``, ``stage:``), on the embedded backends and on
Kinesis + Lambda + CloudWatch (a moto server), each set up, used and torn down on its own; no stage keeps the plain
names."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from aws_server import aws_endpoint  # noqa: F401
from xflow_cli_testing import CLI

FLOW = """
workflow_id: {wid}
{stage}
lambdas:
  - name: {fn}
    handler: steps.double
    source: .
    publishes: [Doubled]
subscriptions:
  - event: Number
    subscribers: [{fn}]
  - event: Doubled
    subscribers: []
"""

STEPS = """
import os

def double(event, ctx):
    return {"n": event["n"] * 2, "workflow": ctx.workflow_id, "stage": os.environ.get("STAGE_SEEN", "")}
"""


def write_flow(folder: Path, wid: str, stage: str | None = None, fn: str = "double") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "steps.py").write_text(STEPS)
    path = folder / "flow.yaml"
    path.write_text(FLOW.format(wid=wid, stage=f"stage: {stage}" if stage else "", fn=fn))
    return path


def test_two_stages_coexist_on_the_embedded_backends_and_tear_down_independently(cli: CLI, tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "flows", "numbers")
    state = tmp_path / ".xflow"
    runs = {}
    for stage in ("dev", "prod", None):
        args = ["--stage", stage] if stage else []
        runs[stage] = cli.json("run", flow, "--event", "Number", "--data", json.dumps({"n": 21}), *args)
    assert runs["dev"]["workflow_id"] == "numbers-dev" and runs["prod"]["workflow_id"] == "numbers-prod"
    assert runs[None]["workflow_id"] == "numbers"  # no stage: the names of before
    for run in runs.values():
        assert run["status"] == "succeeded" and run["result"]["n"] == 42
        assert run["result"]["workflow"] == run["workflow_id"]  # the handler's ctx.workflow_id is the deployment's
    assert sorted(p.name for p in state.iterdir()) == ["numbers", "numbers-dev", "numbers-prod"]
    for name in ("numbers-dev", "numbers-prod", "numbers"):
        assert {"events.db", "tracker.db", "setup.json"} <= {p.name for p in (state / name).iterdir()}
    record = json.loads((state / "numbers-dev" / "setup.json").read_text())
    assert record["stage"] == "dev" and record["workflow_id"] == "numbers-dev"
    assert json.loads((state / "numbers" / "setup.json").read_text())["stage"] is None

    # each stage tracks its own executions only
    dev_id, prod_id = runs["dev"]["execution_id"], runs["prod"]["execution_id"]
    assert cli.json("track", flow, dev_id, "--stage", "dev")["status"] == "succeeded"
    assert cli("track", flow, dev_id, "--stage", "prod").returncode == 1  # unknown there
    assert cli.json("track", "-flow", "numbers", dev_id, "--stage", "dev")["status"] == "succeeded"
    assert cli.json("track", flow, prod_id, XFLOW_STAGE="prod")["status"] == "succeeded"  # the variable works too

    # teardown of dev leaves prod and the unstaged deployment as they were
    down = cli.json("teardown", flow, "--stage", "dev")
    assert down["workflow_id"] == "numbers-dev" and down["changes"]
    assert all("numbers-dev" in c["resource"] or "dev" in c["resource"] for c in down["changes"]), down
    assert sorted(p.name for p in state.iterdir()) == ["numbers", "numbers-prod"]
    assert cli.json("track", flow, prod_id, "--stage", "prod")["status"] == "succeeded"
    assert cli.json("track", flow, runs[None]["execution_id"])["status"] == "succeeded"
    again = cli.json("run", flow, "--event", "Number", "--data", '{"n": 1}', "--stage", "prod")
    assert again["status"] == "succeeded" and again["result"]["n"] == 2


def test_the_stage_named_in_the_file_applies_and_the_command_line_wins(cli: CLI, tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "flows", "filed", stage="staging")
    valid = cli.json("validate", flow)
    assert valid["workflow_id"] == "filed-staging"
    assert cli.json("setup", flow, "--transport", "local", "--provider", "local", "--tracker", "sqlite")[
        "workflow_id"] == "filed-staging"
    overridden = cli.json("setup", flow, "--stage", "qa", "--transport", "local", "--provider", "local",
                          "--tracker", "sqlite")
    assert overridden["workflow_id"] == "filed-qa"
    assert sorted(p.name for p in (tmp_path / ".xflow").iterdir()) == ["filed-qa", "filed-staging"]


@pytest.mark.parametrize("stage", ["Prod", "-dev", "dev-", "a b", "x" * 21, "dev/../prod", ""])
def test_a_bad_stage_name_is_a_one_line_error(cli: CLI, tmp_path: Path, stage: str) -> None:
    flow = write_flow(tmp_path / "flows", "badstage")
    done = cli("run", flow, "--stage", stage)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "is not a valid stage name" in done.stderr
    assert not (tmp_path / ".xflow").exists()  # nothing was created


def test_a_bad_stage_in_the_file_is_reported_with_its_line(cli: CLI, tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "flows", "badfile", stage="'Not Valid'")
    done = cli("validate", flow)
    assert done.returncode == 2
    assert f"{flow}:3: stage: 'Not Valid' is not a valid stage name" in done.stderr


def test_the_staged_id_keeps_the_id_length_limit(cli: CLI, tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "flows", "w" * 60)
    done = cli("setup", flow, "--stage", "staging", "--transport", "local", "--provider", "local", "--tracker", "sqlite")
    assert done.returncode == 2 and "longer than 64 characters" in done.stderr


@pytest.mark.aws
def test_two_stages_coexist_on_kinesis_and_lambda_and_tear_down_independently(aws_endpoint, tmp_path: Path) -> None:  # noqa: F811
    import boto3

    wid = f"st{os.getpid()}{int(time.time() * 1000) % 100000}"
    fn = f"d{wid}"  # Lambda function names are the account's: one of this test's own
    flow = write_flow(tmp_path / "flows", wid, fn=fn)
    cli = CLI(tmp_path)
    lam, kinesis, logs, iam, sqs = (boto3.client(s) for s in ("lambda", "kinesis", "logs", "iam", "sqs"))

    def owned() -> dict[str, set[str]]:
        return {"functions": {f["FunctionName"] for f in lam.list_functions()["Functions"] if wid in f["FunctionName"]},
                "streams": {s for s in kinesis.list_streams()["StreamNames"] if s.startswith(wid)},
                "groups": {g["logGroupName"] for g in logs.describe_log_groups()["logGroups"] if wid in g["logGroupName"]},
                "roles": {r["RoleName"] for r in iam.list_roles()["Roles"] if wid in r["RoleName"]},
                "queues": {u.rpartition("/")[2] for u in sqs.list_queues().get("QueueUrls", []) if wid in u}}

    for stage in ("dev", "prod"):
        created = cli.json("setup", flow, "--stage", stage, timeout=300)
        assert created["workflow_id"] == f"{wid}-{stage}" and created["changes"]
    found = owned()
    for stage in ("dev", "prod"):
        assert {f"{wid}-{stage}-Number", f"{wid}-{stage}-Doubled"} <= found["streams"]
        assert {f"{fn}-{stage}", f"tracker_{wid}-{stage}"} <= found["functions"]
        assert {f"/xflow/{wid}-{stage}", f"/aws/lambda/{fn}-{stage}"} <= found["groups"]
        assert f"xflow-{wid}-{stage}-lambda" in found["roles"] and f"xflow-{wid}-{stage}-failures" in found["queues"]
        mappings = [m for m in lam.list_event_source_mappings()["EventSourceMappings"]  # of the function or its alias
                    if m["FunctionArn"].split(":function:")[1].split(":")[0] == f"{fn}-{stage}"]
        assert {m["EventSourceArn"].rpartition("/")[2] for m in mappings} == {f"{wid}-{stage}-Number"}
        variables = lam.get_function(FunctionName=f"{fn}-{stage}")["Configuration"]["Environment"]["Variables"]
        assert variables["XFLOW_WORKFLOW_ID"] == f"{wid}-{stage}"
        assert json.loads(variables["XFLOW_DEPLOYMENT"])["stream_prefix"] == f"{wid}-{stage}-"
    assert fn not in found["functions"]  # no unstaged function was made
    # one zip for every stage: the same code, the same CodeSha256
    shas = {stage: lam.get_function(FunctionName=f"{fn}-{stage}")["Configuration"]["CodeSha256"]
            for stage in ("dev", "prod")}
    assert shas["dev"] == shas["prod"]
    assert cli.json("setup", flow, "--stage", "dev", timeout=300)["changes"] == []  # unchanged: a no-op

    down = cli.json("teardown", flow, "--stage", "dev", timeout=300)
    assert down["changes"] and not any("-prod" in c["resource"] for c in down["changes"])
    left = owned()
    assert not any(name.endswith("-dev") or f"{wid}-dev" in name for names in left.values() for name in names), left
    assert {f"{fn}-prod", f"tracker_{wid}-prod"} <= left["functions"]
    assert {f"{wid}-prod-Number", f"{wid}-prod-Doubled"} <= left["streams"]
    assert cli.json("setup", flow, "--stage", "prod", timeout=300)["changes"] == []  # prod untouched by dev's teardown
    kept = tmp_path / ".xflow" / "lambda-artifacts"  # the zips both stages share stay while prod is set up
    assert sorted(kept.glob("*.zip")), "dev's teardown removed the zips prod still uses"
    cli.json("teardown", flow, "--stage", "prod", timeout=300)
    assert not any(names for names in owned().values()), owned()
    assert not kept.exists() or not list(kept.glob("*.zip")), sorted(kept.iterdir())
