"""word_count on the AWS defaults (kinesis / lambda / cloudwatch) through the CLI, against a moto server.

setup → resources exist as specified → second setup changes nothing → publish → emulate → track
succeeded with exact counts → a failing handler is tracked as failed with its logs → teardown
leaves nothing. Plus the errors users get before anything is created.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections import Counter
from pathlib import Path

import pytest

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

pytestmark = pytest.mark.aws

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "word_count"
TEXT = "The cat and the hat. The CAT sat; a hat? 42 cats, naïve café!\nand the end\n"
EVENTS = ["FileUploaded", "FileDownloaded", "FileParsed", "FileAggregated", "FileFiltered", "FileSummarized"]
FUNCTIONS = ["lambda_file_reader", "lambda_parser", "lambda_combiner", "lambda_filter", "lambda_summarize"]


def xflow(*args: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["xflow", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ))
    if check and done.returncode != 0:
        raise AssertionError(f"xflow {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def expected_counts(text: str) -> Counter[str]:
    return Counter(w.lower() for w in re.findall(r"[^\W\d_]+", text))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    shutil.copytree(EXAMPLE, folder / "word_count", ignore=shutil.ignore_patterns("__pycache__", ".xflow"))
    (folder / "input.txt").write_text(TEXT, encoding="utf-8")
    return folder


def boto(service: str):
    import boto3

    return boto3.client(service)


def test_word_count_on_lambda_end_to_end(aws_endpoint, project):  # noqa: F811
    wf = "word_count/word_count.yaml"
    setup = json.loads(xflow("setup", wf, "--output", "json", cwd=project).stdout)
    assert (setup["transport"], setup["provider"], setup["tracker"]) == ("kinesis", "lambda", "cloudwatch")
    created = {c["resource"] for c in setup["changes"] if c["action"] == "create"}
    assert {f"stream:word_count-{e}" for e in EVENTS} <= created
    assert {f"function:{f}" for f in [*FUNCTIONS, "tracker_word_count"]} <= created

    # --- resources exist as specified
    kinesis, lam, iam, logs = boto("kinesis"), boto("lambda"), boto("iam"), boto("logs")
    streams = {s for s in kinesis.list_streams()["StreamNames"] if s.startswith("word_count-")}
    assert streams == {f"word_count-{e}" for e in EVENTS}
    arn = {e: kinesis.describe_stream_summary(StreamName=f"word_count-{e}")["StreamDescriptionSummary"]["StreamARN"]
           for e in EVENTS}
    subscribers = {"FileUploaded": "lambda_file_reader", "FileDownloaded": "lambda_parser",
                   "FileParsed": "lambda_combiner", "FileAggregated": "lambda_filter",
                   "FileFiltered": "lambda_summarize"}
    mapped: dict[str, set[str]] = {e: set() for e in EVENTS}
    for name in [*FUNCTIONS, "tracker_word_count"]:
        config = lam.get_function(FunctionName=name)["Configuration"]
        assert config["Runtime"] == "python3.12"
        assert config["Role"].endswith(":role/xflow-word-count-lambda")
        alias = lam.get_alias(FunctionName=name, Name="live")["AliasArn"]  # the mappings invoke the alias
        for mapping in lam.list_event_source_mappings(FunctionName=alias)["EventSourceMappings"]:
            event = next(e for e, a in arn.items() if a == mapping["EventSourceArn"])
            mapped[event].add(name)
            assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
            assert mapping["StartingPosition"] == "TRIM_HORIZON"
            if name != "tracker_word_count":
                assert (mapping["BatchSize"], mapping["MaximumRetryAttempts"]) == (100, 2)
                assert mapping["BisectBatchOnFunctionError"] is True
    for event in EVENTS:
        expected = {subscribers[event]} if event in subscribers else set()
        assert mapped[event] == expected | {"tracker_word_count"}, event
    policy = iam.get_role_policy(RoleName="xflow-word-count-lambda", PolicyName="xflow-word_count")["PolicyDocument"]
    resources = [r for s in policy["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str)
                                                          else s["Resource"])]
    assert "*" not in resources and all(r.startswith("arn:aws:") and "*" not in r.rstrip(":*") for r in resources)
    assert set(arn.values()) <= set(resources)
    assert all(("word_count" in r) or ("lambda_" in r) or ("tracker_word_count" in r) for r in resources)
    group = logs.describe_log_groups(logGroupNamePrefix="/xflow/word_count")["logGroups"]
    assert [(g["logGroupName"], g.get("retentionInDays")) for g in group] == [("/xflow/word_count", 7)]

    # --- idempotent
    again = json.loads(xflow("setup", wf, "--output", "json", cwd=project).stdout)
    assert again["changes"] == []

    # --- a run that succeeds
    path = str(project / "input.txt")
    execution = xflow("publish", wf, "FileUploaded", json.dumps({"path": path}), "--execution-id", "ok-1",
                      cwd=project).stdout.strip()
    assert execution.endswith("ok-1")
    emulated = json.loads(xflow("emulate", wf, "--until-idle", "--output", "json", cwd=project).stdout)
    assert emulated["idle"] and emulated["failed_invocations"] == 0
    assert emulated["records"] == 11  # 5 function deliveries + 6 tracker deliveries
    summary = json.loads(xflow("track", "-flow", "word_count", "-execution_id", "ok-1", "--output", "json",
                               cwd=project).stdout)
    assert summary["status"] == "succeeded"
    assert [(e["name"], e["state"], e["count"]) for e in summary["events"]] == [
        (e, "processed", 1) for e in EVENTS]
    assert summary["last_unprocessed_event"] is None
    for event in summary["events"]:
        assert [(s["name"], s["state"], s["attempts"]) for s in event["subscribers"]] == (
            [(subscribers[event["name"]], "succeeded", 1)] if event["name"] in subscribers else [])
    # the result the summarizer published, as the tracker function stored it
    stream = logs.get_log_events(logGroupName="/xflow/word_count", logStreamName="ok-1", startFromHead=True)
    lines = [json.loads(e["message"]) for e in stream["events"]]
    final = [x for x in lines if x.get("event") == "FileSummarized"]
    assert len({x["event_id"] for x in final}) == 1
    expected = expected_counts(TEXT)
    assert final[0]["data"]["counts"] == dict(expected) and final[0]["data"]["total"] == sum(expected.values())
    # the functions' output went to /aws/lambda/<name> as on Lambda
    reader_lines = logs.filter_log_events(logGroupName="/aws/lambda/lambda_file_reader")["events"]
    assert any(e["message"].startswith("START RequestId") for e in reader_lines)
    assert any('"status": "succeeded"' in e["message"] and "ok-1" in e["message"] for e in reader_lines)

    # --- a run whose first handler fails: retried, then failed with its logs
    missing = str(project / "no-such-file.txt")
    xflow("publish", wf, "FileUploaded", json.dumps({"path": missing}), "--execution-id", "bad-1", cwd=project)
    xflow("emulate", wf, "--until-idle", cwd=project)
    failed = xflow("track", "-flow", "word_count", "-execution_id", "bad-1", "--output", "json", cwd=project,
                   check=False)
    assert failed.returncode != 0
    summary = json.loads(failed.stdout)
    assert summary["status"] == "failed"
    first = summary["events"][0]
    assert (first["name"], first["state"]) == ("FileUploaded", "failed")
    reader = first["subscribers"][0]
    assert (reader["name"], reader["state"], reader["attempts"]) == ("lambda_file_reader", "failed", 3)
    assert "FileNotFoundError" in reader["error"]
    assert any("no-such-file.txt" in line for line in reader["logs"])
    assert [e["state"] for e in summary["events"][1:]] == ["not_reached"] * 5
    assert summary["last_unprocessed_event"] == "FileUploaded"
    # the failing execution did not hold back a later one
    xflow("publish", wf, "FileUploaded", json.dumps({"path": path}), "--execution-id", "ok-2", cwd=project)
    xflow("emulate", wf, "--until-idle", cwd=project)
    later = json.loads(xflow("track", "-flow", "word_count", "-execution_id", "ok-2", "--output", "json",
                             cwd=project).stdout)
    assert later["status"] == "succeeded"

    # --- emulate refuses code it cannot match with what is deployed
    artifacts = project / ".xflow" / "lambda-artifacts"
    artifacts.rename(project / "moved")
    refused = xflow("emulate", wf, "--until-idle", cwd=project, check=False)
    assert refused.returncode == 2 and "CodeSha256" in refused.stderr and "Traceback" not in refused.stderr
    (project / "moved").rename(artifacts)

    # --- teardown leaves nothing
    xflow("teardown", wf, cwd=project)
    assert not [s for s in kinesis.list_streams()["StreamNames"] if s.startswith("word_count-")]
    names = {f["FunctionName"] for f in lam.list_functions()["Functions"]}
    assert not names & {*FUNCTIONS, "tracker_word_count"}
    assert lam.list_event_source_mappings()["EventSourceMappings"] == []
    assert "xflow-word-count-lambda" not in {r["RoleName"] for r in iam.list_roles()["Roles"]}
    groups = {g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]}
    assert not {g for g in groups if g == "/xflow/word_count" or g.startswith("/aws/lambda/")}
    again = xflow("teardown", wf, "--output", "json", cwd=project, check=False)
    assert again.returncode == 2 and "no setup record" in again.stderr  # setup's record went with the rest
    aws = ["--transport", "kinesis", "--provider", "lambda", "--tracker", "cloudwatch"]
    assert json.loads(xflow("teardown", wf, *aws, "--output", "json", cwd=project).stdout)["changes"] == []


def _workflow(project: Path, text: str) -> str:
    path = project / "word_count" / "variant.yaml"
    path.write_text(text, encoding="utf-8")
    return "word_count/variant.yaml"


def _streams(prefix: str) -> list[str]:
    return [s for s in boto("kinesis").list_streams()["StreamNames"] if s.startswith(prefix)]


def test_seed_runtime_is_refused_before_anything_is_created(aws_endpoint, project):  # noqa: F811
    text = (EXAMPLE / "word_count.yaml").read_text().replace("python3.12", "python2.7")
    text = text.replace("- id: word_count", "- id: wc_runtime")
    done = xflow("setup", _workflow(project, text), cwd=project, check=False)
    assert done.returncode == 2
    assert "python2.7" in done.stderr and "python3.12" in done.stderr and "Traceback" not in done.stderr
    assert _streams("wc_runtime-") == []


def test_lambda_needs_the_cloudwatch_tracker(aws_endpoint, project):  # noqa: F811
    text = (EXAMPLE / "word_count.yaml").read_text().replace("- id: word_count", "- id: wc_tracker")
    done = xflow("setup", _workflow(project, text), "--tracker", "sqlite", cwd=project, check=False)
    assert done.returncode == 2 and "cloudwatch" in done.stderr and "Traceback" not in done.stderr
    assert _streams("wc_tracker-") == []


def test_missing_handler_is_refused(aws_endpoint, project):  # noqa: F811
    text = (EXAMPLE / "word_count.yaml").read_text().replace("- id: word_count", "- id: wc_handler")
    text = text.replace("handler: summarize", "handler: summarise")
    done = xflow("setup", _workflow(project, text), cwd=project, check=False)
    assert done.returncode == 2
    assert "lambda_summarize" in done.stderr and "summarise" in done.stderr
    assert _streams("wc_handler-") == []


def test_unfetchable_source_is_refused(aws_endpoint, project):  # noqa: F811
    text = (EXAMPLE / "word_count.yaml").read_text().replace("- id: word_count", "- id: wc_source")
    text = text.replace("source: summary.py", "source: s3://no-such-bucket/flows/summary.py")
    done = xflow("setup", _workflow(project, text), cwd=project, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "s3://no-such-bucket/flows/summary.py" in done.stderr and "NoSuchBucket" in done.stderr
    assert _streams("wc_source-") == []


def test_oversize_publish_names_the_event(aws_endpoint, project):  # noqa: F811
    text = (EXAMPLE / "word_count.yaml").read_text().replace("- id: word_count", "- id: wc_big")
    wf = _workflow(project, text)
    xflow("setup", wf, "--provider", "local", "--tracker", "sqlite", cwd=project)
    try:
        (project / "big.json").write_text(json.dumps({"path": "x" * (1024 * 1024 + 10)}))
        done = xflow("publish", wf, "FileUploaded", "@big.json", cwd=project, check=False)
        assert done.returncode == 2 and "FileUploaded" in done.stderr and "limit" in done.stderr
    finally:
        xflow("teardown", wf, cwd=project)
    assert _streams("wc_big-") == []


def test_local_provider_runs_on_kinesis_and_cloudwatch(aws_endpoint, project):  # noqa: F811
    text = (EXAMPLE / "word_count.yaml").read_text().replace("- id: word_count", "- id: wc_local")
    wf = _workflow(project, text)
    data = json.dumps({"path": str(project / "input.txt")})
    done = xflow("run", wf, "--transport", "kinesis", "--provider", "local", "--tracker", "cloudwatch",
                 "--data", data, "--output", "json", cwd=project)
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded"
    assert [(e["state"], e["count"]) for e in summary["events"]] == [("processed", 1)] * 6
    expected = expected_counts(TEXT)
    assert summary["result"]["counts"] == dict(expected) and summary["result"]["total"] == sum(expected.values())
    tracked = json.loads(xflow("track", "-flow", "wc_local", "-execution_id", summary["execution_id"],
                               "--output", "json", cwd=project).stdout)
    assert tracked["status"] == "succeeded"
    xflow("teardown", wf, cwd=project)
    assert _streams("wc_local-") == []


def test_unreachable_endpoint_and_missing_credentials(project, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y",
               AWS_DEFAULT_REGION="us-east-1")
    done = xflow("setup", "word_count/word_count.yaml", cwd=project, check=False, env=env, timeout=60)
    # a backend failure, not bad input: exit 1
    assert done.returncode == 1 and "cannot be reached" in done.stderr and "Traceback" not in done.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_DEFAULT_REGION="us-east-1",
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    done = xflow("setup", "word_count/word_count.yaml", cwd=project, check=False, env=env, timeout=60)
    assert done.returncode == 2 and "credentials" in done.stderr and "Traceback" not in done.stderr


def test_credentials_in_the_file_are_used_but_never_shown(aws_endpoint, project):  # noqa: F811
    secret = "s3cr3t-Value-xflow-7261"
    text = (EXAMPLE / "word_count.yaml").read_text().replace("- id: word_count", "- id: wc_creds")
    text = text.replace("  lambda_execution_role_name:",
                        f"  aws_access_key_id: AKIAXFLOWTEST7261\n  aws_secret_access_key: {secret}\n"
                        "  lambda_execution_role_name:")
    wf = _workflow(project, text)
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                             "AWS_SESSION_TOKEN")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(project / "none"), AWS_CONFIG_FILE=str(project / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    done = xflow("-vv", "setup", wf, "--dry-run", "--output", "json", cwd=project, env=env)
    assert json.loads(done.stdout)["changes"]  # the endpoint answered: the file's credentials were used
    shown = done.stdout + done.stderr
    for path in (project / ".xflow").rglob("*"):
        if path.is_file() and path.suffix != ".zip":
            shown += path.read_text(errors="replace")
    assert secret not in shown and "AKIAXFLOWTEST7261" not in shown
