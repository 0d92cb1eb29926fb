"""Workflow files through `xflow validate` (and `run`): the seed example, and every kind of bad file."""

from __future__ import annotations

import re

import pytest
from xflow_cli_testing import SEED, WORD_COUNT


def test_seed_example_validates_as_written(cli):
    done = cli("validate", SEED)
    assert done.returncode == 0, done.stderr
    assert "workflow 'word_count', 5 functions, 5 events" in done.stdout
    data = cli.json("validate", SEED)
    assert data["workflow_id"] == "word_count"
    assert data["events"] == ["FileUploaded", "FileDownloaded", "FileParsed", "FileAggregated", "FileFiltered"]


def test_example_validates_with_flow_order(cli):
    data = cli.json("validate", WORD_COUNT)
    assert data["events"][-1] == "FileSummarized"
    assert data["functions"][0] == "lambda_file_reader"


def test_event_spelling_and_workflows_section(cli, make_workflow):
    path = make_workflow("""
        workflow_id: spelled
        functions:
          - {name: a, source: h.py, handler: go, publishes: [Second]}
          - {name: b, source: h.py, handler: go}
        subscriptions:
          - event: First
            subscribers: [a]
          - name: Second
            subscribers: [b]
        workflows:
          - id: spelled
            flow: [First, Second]
        """, {"h.py": "def go(event, ctx):\n    pass\n"})
    data = cli.json("validate", path)
    assert data["workflow_id"] == "spelled" and data["events"] == ["First", "Second"]


BAD_FILES = {
    "yaml syntax": ("lambdas: [\n  - name: a\n", r":\d+: \(yaml\): YAML syntax error"),
    "unknown key with suggestion": (
        "lambdas:\n  - name: a\n    source: s3://b/k.zip\n    handler: h\n    handlr: x\n"
        "subscriptions:\n  - name: E\n    subscribers: [a]\n",
        r":5: lambdas\.0\.handlr: unknown key \(did you mean 'handler'\?\)"),
    "missing required field": (
        "lambdas:\n  - name: a\n    source: s3://b/k.zip\nsubscriptions:\n  - name: E\n    subscribers: [a]\n",
        r":2: lambdas\.0\.handler: missing required field"),
    "undefined subscriber": (
        "lambdas:\n  - name: reader\n    source: s3://b/k.zip\n    handler: h\n"
        "subscriptions:\n  - name: E\n    subscribers: [reeder]\n",
        r":7: subscriptions\.0\.subscribers\.0: no function named 'reeder' \(did you mean 'reader'\?\)"),
    "duplicate function": (
        "lambdas:\n  - name: a\n    source: s3://b/k.zip\n    handler: h\n  - name: a\n    source: s3://b/k.zip\n"
        "    handler: h\nsubscriptions:\n  - name: E\n    subscribers: [a]\n",
        r":5: lambdas\.1\.name: duplicate function name 'a' \(first defined at line 2\)"),
    "bad handler name": (
        "lambdas:\n  - name: a\n    source: s3://b/k.zip\n    handler: 9-lives\nsubscriptions:\n  - name: E\n"
        "    subscribers: [a]\n",
        r":4: lambdas\.0\.handler: '9-lives' is not a valid handler"),
    "bad event name": (
        "lambdas:\n  - name: a\n    source: s3://b/k.zip\n    handler: h\nsubscriptions:\n  - name: File Uploaded\n"
        "    subscribers: [a]\n",
        r":6: subscriptions\.0\.name: 'File Uploaded' is not a valid event name"),
    "empty file": ("", r":1: \(top level\): the file is empty"),
    "not a mapping": ("- just\n- a list\n", r":1: \(top level\): the file holds a YAML list, not a mapping"),
    "missing local source": (
        "lambdas:\n  - name: a\n    source: ./nowhere.py\n    handler: h\nsubscriptions:\n  - name: E\n"
        "    subscribers: [a]\n",
        r":3: lambdas\.0\.source: './nowhere.py' does not exist"),
    "unset environment variable": (
        "lambdas:\n  - name: a\n    source: ${XFLOW_TEST_UNSET_VAR}\n    handler: h\nsubscriptions:\n  - name: E\n"
        "    subscribers: [a]\n",
        r":3: lambdas\.0\.source: environment variable XFLOW_TEST_UNSET_VAR is not set"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_reports_file_line_path_and_creates_nothing(cli, tmp_path, case):
    text, expected = BAD_FILES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for command in (["validate", path], ["run", path], ["setup", path, "--transport", "local", "--provider", "local",
                                                          "--tracker", "sqlite"]):
        done = cli(*command)
        assert done.returncode == 2, (case, command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        assert re.search(re.escape(str(path)) + expected, done.stderr), (case, done.stderr)
    assert not (tmp_path / ".xflow").exists()


def test_every_problem_is_reported_at_once(cli, tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("lambdas:\n  - name: a\n    source: s3://b/k\n    handler: 1x\n    colour: red\n"
                    "subscriptions:\n  - name: E\n    subscribers: [zz]\n")
    done = cli("validate", path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith(str(path) + ":")]
    assert len(lines) == 3, done.stderr
    assert [int(line.split(":")[1]) for line in lines] == [4, 5, 8]


def test_validate_json_lists_problems(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- 1\n")
    data = cli.json("validate", path, expect=2)
    assert data["valid"] is False and len(data["problems"]) == 1


def test_missing_file_is_a_one_line_error(cli, tmp_path):
    done = cli("validate", tmp_path / "nope.yaml")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no such workflow file" in done.stderr


def test_credentials_in_file_are_never_printed(cli, make_workflow):
    path = make_workflow("""
        aws:
          aws_access_key_id: AKIAEXAMPLESECRETKEY
          aws_secret_access_key: verysecretvalue
        lambdas:
          - {name: a, source: h.py, handler: go}
        subscriptions:
          - {name: E, subscribers: [a]}
        """, {"h.py": "def go(event, ctx):\n    pass\n"})
    done = cli("validate", path)
    assert done.returncode == 0
    assert "credential chain" in done.stderr
    assert "verysecretvalue" not in done.stdout + done.stderr
    assert "AKIAEXAMPLESECRETKEY" not in done.stdout + done.stderr
