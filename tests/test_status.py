"""``xflow status``: per function, lag, recent deliveries, failures, dead letters, the oldest unsettled event, workers;
exit 1 when a function is failing or behind. Through the CLI, on the embedded backends."""

from __future__ import annotations

import json

import pytest

LOCAL = ["--transport", "local", "--provider", "local", "--tracker", "sqlite"]

STEPS = """
def check(event, ctx):
    if event.get("bad"):
        raise ValueError("bad order " + event["execution_id"])
    return {"ok": True}

def ship(event, ctx):
    return None

def audit(event, ctx):
    return None
"""

FLOW = """
workflow_id: orders
lambdas:
  - {name: check, source: steps.py, handler: check, publishes: [Checked], retries: 0}
  - {name: ship, source: steps.py, handler: ship}
  - {name: audit, source: steps.py, handler: audit}
subscriptions:
  - {name: Ordered, subscribers: [check, audit]}
  - {name: Checked, subscribers: [ship]}
"""


@pytest.fixture
def orders(make_workflow):
    return make_workflow(FLOW, {"steps.py": STEPS})


def _functions(report):
    return {row["name"]: row for row in report["functions"]}


def test_a_failing_function_is_named_and_status_exits_1(cli, orders):
    assert cli("run", orders, "--data", json.dumps({"n": 1})).returncode == 0
    failed = cli("run", orders, "--data", json.dumps({"bad": True}))
    assert failed.returncode == 1, failed.stderr

    shown = cli("status", orders)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "check is failing: 1 deliveries failed for good in the last 5 minutes" in shown.stdout
    assert "ship is failing" not in shown.stdout and "audit is failing" not in shown.stdout

    report = cli.json("status", orders, expect=1)
    assert report["workflow_id"] == "orders" and report["status"] == "failing"
    assert report["executions_examined"] == 2 and report["complete"] is True
    rows = _functions(report)
    assert set(rows) == {"check", "ship", "audit"}
    check, ship, audit = rows["check"], rows["ship"], rows["audit"]
    assert check["state"] == "failing" and ship["state"] == "ok" and audit["state"] == "ok"
    assert check["deliveries"] == {"5m": 2, "60m": 2}
    assert check["succeeded"] == {"5m": 1, "60m": 1}
    assert check["failures"] == {"5m": 1, "60m": 1} and check["dead_letters"] == {"5m": 1, "60m": 1}
    assert ship["deliveries"] == {"5m": 1, "60m": 1} and ship["failures"] == {"5m": 0, "60m": 0}
    assert audit["deliveries"] == {"5m": 2, "60m": 2}
    # everything was read and committed: nothing waits, and an event that failed for good is settled
    for row in rows.values():
        assert row["lag"]["records"] == 0 and row["lag"]["exact"] is True
        assert row["oldest_unsettled_event"] is None and row["oldest_unsettled_seconds"] is None
    assert {p["event"] for p in check["lag"]["partitions"]} == {"Ordered"}
    assert {p["event"] for p in ship["lag"]["partitions"]} == {"Checked"}

    # a higher threshold accepts the one failure
    assert cli.json("status", orders, "--max-failures", "1", expect=0)["status"] == "ok"


def test_a_healthy_workflow_exits_0(cli, orders):
    assert cli("run", orders, "--data", json.dumps({"n": 1})).returncode == 0
    shown = cli("status", orders)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "orders  ok" in shown.stdout
    report = cli.json("status", orders)
    assert {row["state"] for row in report["functions"]} == {"ok"}
    assert _functions(report)["ship"]["succeeded"]["5m"] == 1


def test_events_no_worker_reads_are_behind(cli, orders):
    assert cli("setup", orders, *LOCAL).returncode == 0
    ids = [cli("publish", orders, "Ordered", json.dumps({"n": n})).stdout.strip() for n in range(3)]

    report = cli.json("status", orders, "--max-lag", "2", expect=1)
    assert report["status"] == "behind"
    rows = _functions(report)
    for name in ("check", "audit"):  # both read Ordered; nobody has read anything
        row = rows[name]
        assert row["state"] == "behind"
        assert row["lag"]["records"] == 3
        assert row["workers_hold_partitions"] is False
        assert "3 records behind (more than 2)" in row["reasons"]
        assert row["oldest_unsettled_event"]["execution_id"] in ids
        assert row["oldest_unsettled_event"]["event"] == "Ordered"
        assert row["oldest_unsettled_seconds"] >= 0
        assert sum(p["records"] for p in row["lag"]["partitions"]) == 3
        assert all(p["committed"] is None for p in row["lag"]["partitions"])
    assert rows["ship"]["lag"]["records"] == 0 and rows["ship"]["state"] == "ok"

    # within the default thresholds (1000 records, 300 s) the same backlog is fine
    assert cli.json("status", orders)["status"] == "ok"
    # and an event that waited longer than --max-age is behind
    aged = cli.json("status", orders, "--max-age", "0", expect=1)
    assert any("an event has waited" in reason for reason in _functions(aged)["check"]["reasons"])


def test_status_of_a_workflow_never_set_up_is_a_one_line_error(cli, orders):
    done = cli("status", orders, *LOCAL)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "tracker" in errors[0] and "Traceback" not in done.stderr
