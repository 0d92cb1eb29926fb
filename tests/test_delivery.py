"""Delivery on the embedded backend: retries, dead letters, crashes, several workers on one state folder."""

from __future__ import annotations

import json
import signal
import time

import pytest
from xflow_cli_testing import NOTING_STEPS, read_notes

CHAIN = """
workflow_id: chain
lambdas:
  - {name: first, source: steps.py, handler: first, publishes: [Middle], retries: 2}
  - {name: second, source: steps.py, handler: second, publishes: [Done], retries: 2}
subscriptions:
  - {name: Start, subscribers: [first]}
  - {name: Middle, subscribers: [second]}
workflows:
  - {id: chain, flow: [Start, Middle, Done]}
"""


@pytest.fixture
def chain(make_workflow, tmp_path):
    path = make_workflow(CHAIN, {"steps.py": NOTING_STEPS}, name="chain.yaml")
    return path, {"XFLOW_TEST_NOTES": str(tmp_path / "notes.txt")}, tmp_path / "notes.txt"


def _wait_settled(cli, path, execution_ids, timeout=90.0):
    deadline = time.monotonic() + timeout
    while True:
        summaries = {e: _track(cli, path, e) for e in execution_ids}
        if all(s["status"] != "running" for s in summaries.values()):
            return summaries
        assert time.monotonic() < deadline, {e: s["status"] for e, s in summaries.items()}
        time.sleep(0.3)


def _track(cli, path, execution_id):
    done = cli("track", path, execution_id, "--output", "json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def test_failing_handler_is_retried_dead_lettered_and_others_still_succeed(cli, chain):
    path, env, notes = chain
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite", **env)
    assert cli("publish", path, "Start", '{"fail": true}', "--execution-id", "bad", **env).returncode == 0
    assert cli("publish", path, "Start", '{"n": 1}', "--execution-id", "good", **env).returncode == 0
    worker = cli.popen("worker", path, "--option", "backoff_seconds=0.05", **env)
    try:
        summaries = _wait_settled(cli, path, ["bad", "good"])
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=20)
    bad, good = summaries["bad"], summaries["good"]
    assert good["status"] == "succeeded"
    assert bad["status"] == "failed"
    assert bad["last_unprocessed_event"] == "Start"
    start = bad["events"][0]
    assert start["state"] == "failed"
    subscriber = start["subscribers"][0]
    assert subscriber["state"] == "failed" and subscriber["attempts"] == 3
    assert subscriber["error"] == "RuntimeError: asked to fail"
    assert any("refusing bad" in line for line in subscriber["logs"])
    assert any("RuntimeError: asked to fail" in line for line in subscriber["logs"])
    assert [e["state"] for e in bad["events"][1:]] == ["not_reached", "not_reached"]
    human = cli("track", path, "bad")
    assert human.returncode == 1
    assert "first failed on Start after 3 attempts" in human.stdout and "refusing bad" in human.stdout
    # the dead letter is kept with the event and the reason
    from xflow.core.interfaces import PluginContext
    from xflow.transports.local import LocalTransport

    transport = LocalTransport(PluginContext("chain", {}, path.parent.parent / ".xflow"))
    letters = transport.dead_letters("first")
    assert len(letters) == 1 and "asked to fail" in letters[0]["reason"]
    assert json.loads(letters[0]["value"])["executionid"] == "bad"
    transport.close()


def test_undecodable_records_are_dead_lettered_and_the_worker_keeps_going(cli, chain, tmp_path):
    path, env, notes = chain
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite", **env)
    from xflow.core.interfaces import PluginContext, Record
    from xflow.transports.local import LocalTransport

    transport = LocalTransport(PluginContext("chain", {}, tmp_path / ".xflow"))
    transport.publish("Start", [Record("x", b"\xff not json"), Record("y", b"[1, 2]"), Record("z", b'{"no": "id"}'),
                                Record("ext", b'{"execution_id": "external", "n": 4}')])
    worker = cli.popen("worker", path, **env)
    try:
        summary = _wait_settled(cli, path, ["external"])["external"]
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    assert summary["status"] == "succeeded"
    assert summary["events"][-1]["count"] == 1
    reasons = [letter["reason"] for letter in transport.dead_letters("first")]
    assert len(reasons) == 3
    assert any("not a JSON document" in r for r in reasons) and any("JSON list" in r for r in reasons)
    assert any("no execution_id" in r for r in reasons)
    transport.close()


def test_worker_killed_mid_run_loses_nothing_and_counts_nothing_twice(cli, chain):
    path, env, notes = chain
    options = ["--option", "lease_seconds=1"]
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite", **env)
    executions = [f"crash-{i}" for i in range(12)]
    for execution in executions:
        assert cli("publish", path, "Start", json.dumps({"n": 1, "sleep": 0.1}), "--execution-id", execution,
                   **env).returncode == 0
    victim = cli.popen("worker", path, *options, **env)
    deadline = time.monotonic() + 60
    while sum(read_notes(notes).values()) < 5:
        assert time.monotonic() < deadline, "the first worker processed nothing"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    done_before = sum(read_notes(notes).values())
    assert done_before < 2 * len(executions), "the kill came too late to test anything"
    survivor = cli.popen("worker", path, *options, **env)
    try:
        summaries = _wait_settled(cli, path, executions)
    finally:
        survivor.terminate()
        survivor.wait(timeout=20)
    for execution, summary in summaries.items():
        assert summary["status"] == "succeeded", (execution, summary)
        assert [e["count"] for e in summary["events"]] == [1, 1, 1], (execution, summary)
        result = _result(cli, path, execution)
        assert result["n"] == 20
    counted = read_notes(notes)
    assert {key[1] for key in counted} == set(executions)


def _result(cli, path, execution):
    from xflow.core.engine import Engine

    with Engine(path, state_dir=path.parent.parent / ".xflow") as engine:
        return engine.result(execution)


def test_two_workers_on_one_state_folder_handle_each_delivery_once(cli, chain):
    path, env, notes = chain
    options = ["--option", "lease_seconds=2", "--option", "partitions=4"]
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite", *options, **env)
    workers = [cli.popen("worker", path, *options, **env) for _ in range(2)]
    executions = [f"pair-{i}" for i in range(30)]
    try:
        time.sleep(1.0)
        for execution in executions:
            assert cli("publish", path, "Start", json.dumps({"n": 2, "sleep": 0.02}), "--execution-id", execution,
                       **env).returncode == 0
        summaries = _wait_settled(cli, path, executions)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            assert worker.wait(timeout=20) == 0
    assert all(s["status"] == "succeeded" for s in summaries.values())
    counted = read_notes(notes)
    assert len(counted) == 2 * len(executions)
    assert set(counted.values()) == {1}, [k for k, v in counted.items() if v > 1]


FLAKY = """
import os

def first(event, ctx):
    if os.path.exists(os.environ["XFLOW_TEST_BROKEN_FLAG"]):
        raise RuntimeError("the disk is full")
    return {"n": 1}

def second(event, ctx):
    return {"n": event["n"] * 10}
"""


def test_redrive_runs_only_the_failed_step_again(cli, make_workflow, tmp_path):
    path = make_workflow(CHAIN, {"steps.py": FLAKY}, name="chain.yaml")
    flag = tmp_path / "broken"
    flag.write_text("")
    env = {"XFLOW_TEST_BROKEN_FLAG": str(flag)}
    failed = cli.json("run", path, "--execution-id", "again", "--option", "backoff_seconds=0.01", expect=1, **env)
    assert failed["status"] == "failed" and failed["last_unprocessed_event"] == "Start"
    nothing = cli.json("redrive", path, "no-such-execution", **env)
    assert nothing["redriven"] == []
    flag.unlink()
    redriven = cli.json("redrive", path, "again", **env)
    assert [(r["event"], r["function"]) for r in redriven["redriven"]] == [("Start", "first")]
    worker = cli.popen("worker", path, **env)
    try:
        summary = _wait_settled(cli, path, ["again"])["again"]
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    assert summary["status"] == "succeeded"
    assert [e["count"] for e in summary["events"]] == [1, 1, 1]
    assert summary["events"][0]["subscribers"][0]["attempts"] == 4  # three failed, then one success
    assert _result(cli, path, "again")["n"] == 10
    assert cli.json("redrive", path, "again", **env)["redriven"] == []
