"""``xflow logs`` on the embedded backend: one execution's records across its functions in time order, from the
tracker or from the workflow's file route; filters; ``--follow`` printing what comes after it started."""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from xflow_cli_testing import CLI, clean_env, xflow_command

FLOW = """
workflow_id: logged
functions:
  - name: reader
    handler: h.reader
    source: .
    publishes: [Read]
  - name: counter
    handler: h.counter
    source: .
subscriptions:
  - event: Uploaded
    subscribers: [reader]
  - event: Read
    subscribers: [counter]
"""
HANDLERS = {"h.py": """
def reader(event, ctx):
    ctx.logger.info("reading %s", event["name"])
    print("read", len(event["name"]), "characters")
    return {"text": event["name"]}

def counter(event, ctx):
    ctx.logger.warning("counting %s", event["text"])
"""}
FILE_ROUTE = "logging:\n  routes:\n    - {name: file, options: {path: routed.jsonl}}\n"


def lines_of(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(r["function"], r["level"], r["message"]) for r in records]


def expected(name: str) -> list[tuple[str, str, str]]:
    return [("reader", "INFO", f"reading {name}"), ("reader", "INFO", f"read {len(name)} characters"),
            ("reader", "INFO", "Uploaded handled: succeeded"), ("counter", "WARNING", f"counting {name}"),
            ("counter", "INFO", "Read handled: succeeded")]


def without_times(found: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The outcome lines without their durations ("succeeded in 0.3 ms")."""
    return [(f, level, m.split(" in ")[0] if "handled: succeeded in" in m else m) for f, level, m in found]


@pytest.mark.parametrize("routed", [False, True], ids=["tracker", "file-route"])
def test_logs_of_one_execution_in_time_order(cli: CLI, make_workflow, tmp_path: Path, routed: bool) -> None:
    path = make_workflow(FLOW + (FILE_ROUTE if routed else ""), HANDLERS)
    first = cli.json("run", path, "--data", '{"name": "alpha"}')["execution_id"]
    second = cli.json("run", path, "--data", '{"name": "beta"}')["execution_id"]
    if routed:
        assert (path.parent / "routed.jsonl").exists()  # relative to the workflow file
    found = cli.json("logs", path, "--execution-id", first)
    assert found["source"] == ("file" if routed else "tracker") and found["execution_id"] == first
    assert without_times(lines_of(found["records"])) == expected("alpha")
    times = [r["time"] for r in found["records"]]
    assert times == sorted(times)
    assert {(r["workflow"], r["execution_id"]) for r in found["records"]} == {("logged", first)}
    assert all(r["event_id"] and r["attempt"] == 1 for r in found["records"])
    assert [r["event"] for r in found["records"]] == ["Uploaded"] * 3 + ["Read"] * 2
    text = cli("logs", path, "--execution-id", second)
    assert text.returncode == 0 and "counting beta" in text.stdout and "alpha" not in text.stdout
    lines = text.stdout.splitlines()
    assert len(lines) == 5 and lines[0].split()[2] == "reader#1" and lines[3].split()[1] == "WARNING"
    both = cli.json("logs", path)  # the workflow's records of the last hour: both executions, in time order
    assert [r["execution_id"] for r in both["records"]] == [first] * 5 + [second] * 5
    counter_only = cli.json("logs", path, "--execution-id", second, "--function", "counter")
    assert without_times(lines_of(counter_only["records"])) == expected("beta")[3:]


def test_since_keeps_only_later_records_and_bad_arguments_are_one_line(cli: CLI, make_workflow) -> None:
    path = make_workflow(FLOW, HANDLERS)
    cli.json("run", path, "--data", '{"name": "old"}')
    time.sleep(1.1)
    cut = datetime.datetime.now(datetime.timezone.utc).isoformat()
    later = cli.json("run", path, "--data", '{"name": "new"}')["execution_id"]
    found = cli.json("logs", path, "--since", cut)
    assert {r["execution_id"] for r in found["records"]} == {later}
    assert len(cli.json("logs", path, "--since", "10m")["records"]) == 10
    done = cli("logs", path, "--execution-id", "nope")
    assert done.returncode == 1 and "no log records of execution nope" in done.stderr
    done = cli("logs", path, "--function", "writer")
    assert done.returncode == 2 and "has no function 'writer'" in done.stderr
    done = cli("logs", path, "--since", "yesterday-ish")
    assert done.returncode == 2 and "--since 'yesterday-ish'" in done.stderr and "Traceback" not in done.stderr
    done = cli("logs", path, "--source", "file")
    assert done.returncode == 2 and "has no file route" in done.stderr


def test_follow_prints_a_line_published_after_it_started(cli: CLI, make_workflow, tmp_path: Path) -> None:
    path = make_workflow(FLOW, HANDLERS)
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite")
    out, err = (tmp_path / "follow.out").open("w"), (tmp_path / "follow.err").open("w")
    follower = subprocess.Popen(xflow_command("logs", str(path), "--execution-id", "later-1", "--follow", "-o", "json",
                                              "--interval", "0.2"),
                                cwd=tmp_path, env=clean_env(), stdout=out, stderr=err, text=True)
    try:
        deadline = time.monotonic() + 60
        while "following the records of later-1" not in (tmp_path / "follow.err").read_text():
            assert follower.poll() is None and time.monotonic() < deadline, (tmp_path / "follow.err").read_text()
            time.sleep(0.1)
        assert (tmp_path / "follow.out").read_text() == ""  # nothing yet: the execution starts now
        assert cli.json("run", path, "--data", '{"name": "gamma"}', "--execution-id", "later-1")["status"] == "succeeded"
        while len((tmp_path / "follow.out").read_text().splitlines()) < 5:
            assert follower.poll() is None and time.monotonic() < deadline, (tmp_path / "follow.err").read_text()
            time.sleep(0.1)
        follower.send_signal(signal.SIGINT)
        assert follower.wait(30) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
        out.close()
        err.close()
    records = [json.loads(line) for line in (tmp_path / "follow.out").read_text().splitlines()]
    assert without_times(lines_of(records)) == expected("gamma")
    assert {r["execution_id"] for r in records} == {"later-1"}
