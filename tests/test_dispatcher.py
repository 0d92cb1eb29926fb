"""The local provider's dispatcher through the front door (``xflow run`` / ``xflow worker`` on the embedded backend):
supervised handlers, order per execution under concurrency, retries that block no other execution, a SIGKILLed
worker, and leases kept while a long handler runs."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from xflow_cli_testing import CLI, NOTING_STEPS, read_notes

from xflow import Engine

# -- one handler per way of failing ------------------------------------------------------------------------------------
RISKY = """
import ctypes, os, sys, time

def _note(event):
    with open(os.environ["XFLOW_TEST_NOTES"], "a") as notes:
        notes.write(f"risky {event['execution_id']} {event.get('kind')}\\n")

def risky(event, ctx):
    kind = event.get("kind")
    print(f"risky handles {kind}")
    if kind == "exit":
        sys.exit(3)
    if kind == "os_exit":
        os._exit(4)
    if kind == "segfault":
        ctypes.string_at(0)
    if kind == "sleep":
        time.sleep(60)
    if kind == "unserialisable":
        return {"value": object()}
    if kind == "undeclared":
        ctx.publish("NoSuchEvent", {"x": 1})
        return None
    _note(event)
    return {"kind": kind}
"""

KINDS_FLOW = """
workflow_id: kinds
lambdas:
  - {name: risky, source: risky.py, handler: risky, publishes: [Done], retries: 1, timeout: 2}
subscriptions:
  - {name: Start, subscribers: [risky]}
workflows:
  - {id: kinds, flow: [Start, Done]}
"""

#: each failure kind and the reason ``track`` must show for it
REASONS = {
    "exit": "exited with status 3",
    "os_exit": "exited with status 4",
    "segfault": "killed by SIGSEGV",
    "sleep": "timed out after 2 s",
    "unserialisable": "not JSON",
    "undeclared": "'NoSuchEvent', which is not an event of workflow",
}


def _track(cli: CLI, path: Path, execution: str, *extra: str) -> dict:
    done = cli(*extra, "track", path, execution, "--output", "json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def _statuses(path: Path, state: Path, executions: list[str]) -> dict[str, dict]:
    with Engine(path, state_dir=state) as engine:
        return {execution: engine.track(execution) for execution in executions}


def _wait_settled(path: Path, state: Path, executions: list[str], timeout: float = 120.0,
                  worker: subprocess.Popen[str] | None = None) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        summaries = _statuses(path, state, executions)
        if all(s["status"] != "running" for s in summaries.values()):
            return summaries
        if worker is not None:
            assert worker.poll() is None, f"the worker exited with status {worker.returncode}"
        assert time.monotonic() < deadline, {e: s["status"] for e, s in summaries.items() if s["status"] == "running"}
        time.sleep(0.2)


def _stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=10)


def test_every_way_a_handler_fails_is_a_failed_attempt_with_its_reason_and_the_worker_goes_on(
        cli, make_workflow, tmp_path):
    path = make_workflow(KINDS_FLOW, {"risky.py": RISKY})
    notes = tmp_path / "notes.txt"
    env = {"XFLOW_TEST_NOTES": str(notes)}
    state = tmp_path / ".xflow"
    options = ("--option", "backoff_seconds=0.05", "--option", "concurrency=3")
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite", **env)
    failing = {f"bad-{kind}": kind for kind in REASONS}
    fine = [f"fine-{i}" for i in range(len(failing))]
    with Engine(path, state_dir=state) as engine:
        for (execution, kind), other in zip(failing.items(), fine, strict=True):  # failures among good executions
            engine.publish("Start", {"kind": kind}, execution)
            engine.publish("Start", {"kind": "fine"}, other)
    worker = cli.popen("worker", path, *options, **env)
    try:
        summaries = _wait_settled(path, state, [*failing, *fine], worker=worker)
        time.sleep(0.5)
        assert worker.poll() is None, (tmp_path / "proc-0.log").read_text()  # it survived every kind
    finally:
        status = _stop(worker)
    log = (tmp_path / "proc-0.log").read_text()
    assert status == 0, log
    for execution, kind in failing.items():
        summary = summaries[execution]
        assert summary["status"] == "failed", (kind, summary)
        subscriber = summary["events"][0]["subscribers"][0]
        assert subscriber["state"] == "failed" and subscriber["attempts"] == 2, (kind, subscriber)
        assert REASONS[kind] in subscriber["error"], (kind, subscriber["error"])
        assert any(f"risky handles {kind}" in line for line in subscriber["logs"]), (kind, subscriber["logs"])
        shown = _track(cli, path, execution)  # the CLI shows the same
        assert shown["events"][0]["subscribers"][0]["error"] == subscriber["error"]
    for execution in fine:
        summary = summaries[execution]
        assert summary["status"] == "succeeded", summary
        assert [e["count"] for e in summary["events"]] == [1, 1]
    effects = read_notes(notes)
    assert sorted(key[1] for key in effects) == sorted(fine) and set(effects.values()) == {1}, effects
    # what crashed left no handler process behind, and the worker never printed a traceback of its own
    assert "Traceback" not in log, log


@pytest.mark.parametrize("kind", ["segfault", "exit"])
def test_xflow_run_reports_a_crashing_handler_as_failed_with_its_reason(cli, make_workflow, tmp_path, kind):
    path = make_workflow(KINDS_FLOW.replace("retries: 1", "retries: 0"), {"risky.py": RISKY})
    done = cli("run", path, "--data", json.dumps({"kind": kind}), "--output", "json",
               XFLOW_TEST_NOTES=str(tmp_path / "notes.txt"))
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    subscriber = summary["events"][0]["subscribers"][0]
    assert summary["status"] == "failed" and subscriber["attempts"] == 1
    assert REASONS[kind] in subscriber["error"]
    assert "Traceback" not in done.stderr, done.stderr


# -- order per execution under concurrency ------------------------------------------------------------------------------
ORDER_FLOW = """
workflow_id: ordered
lambdas:
  - {name: step, source: order.py, handler: step, concurrency: 8}
subscriptions:
  - {name: Tick, subscribers: [step]}
"""

ORDER = """
import os, random, time

def step(event, ctx):
    started = time.time()
    time.sleep(random.uniform(0.0, 0.03))
    with open(os.environ["XFLOW_TEST_NOTES"], "a") as notes:
        notes.write(f"{event['execution_id']} {event['n']} {started} {time.time()}\\n")
"""


def test_order_per_execution_holds_under_concurrency_8_with_partitions_interleaved(cli, make_workflow, tmp_path):
    path = make_workflow(ORDER_FLOW, {"order.py": ORDER})
    notes = tmp_path / "notes.txt"
    env = {"XFLOW_TEST_NOTES": str(notes)}
    state = tmp_path / ".xflow"
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite",
             "--option", "partitions=2", **env)
    executions = [f"x{i}" for i in range(16)]
    steps = 12
    partitions = {execution: zlib.crc32(execution.encode()) % 2 for execution in executions}  # as the log does
    assert set(partitions.values()) == {0, 1}, "the executions must share two partitions"
    with Engine(path, state_dir=state) as engine:
        for n in range(steps):  # step n of every execution before step n + 1 of any: the partitions interleave
            for execution in executions:
                engine.publish("Tick", {"n": n}, execution)
    worker = cli.popen("worker", path, **env)
    try:
        deadline = time.monotonic() + 120
        while len(notes.read_text().splitlines() if notes.exists() else []) < len(executions) * steps:
            assert worker.poll() is None, (tmp_path / "proc-0.log").read_text()
            assert time.monotonic() < deadline, "not every step ran"
            time.sleep(0.2)
    finally:
        assert _stop(worker) == 0
    rows = [line.split() for line in notes.read_text().splitlines()]
    assert len(rows) == len(executions) * steps  # each step ran once
    for execution in executions:
        seen = [int(n) for e, n, _, _ in rows if e == execution]
        assert seen == list(range(steps)), (execution, seen)
    # the handlers did run at once (else the order would prove nothing)
    spans = sorted((float(start), float(end)) for _, _, start, end in rows)
    overlapping = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert overlapping >= 3, f"at most {overlapping} handler calls overlapped"


# -- a failing execution holds up no other ------------------------------------------------------------------------------
HOL_FLOW = """
workflow_id: hol
lambdas:
  - {name: work, source: hol.py, handler: work, publishes: [Worked], retries: 5}
subscriptions:
  - {name: Job, subscribers: [work]}
workflows:
  - {id: hol, flow: [Job, Worked]}
"""

HOL = """
import time

def work(event, ctx):
    if event.get("fail"):
        raise RuntimeError("this one always fails")
    time.sleep(0.02)
    return {"done": True}
"""


def _time_to_finish(cli: CLI, path: Path, state: Path, good: list[str], failing: str | None) -> tuple[float, dict]:
    options = ("--option", "partitions=1", "--option", "backoff_seconds=1", "--option", "backoff_max_seconds=4")
    cli.json("--state-dir", state, "setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite",
             *options)
    with Engine(path, state_dir=state) as engine:
        if failing:
            engine.publish("Job", {"fail": True}, failing)  # first in the only partition: ahead of every other
        for execution in good:
            engine.publish("Job", {}, execution)
    worker = cli.popen("--state-dir", state, "worker", path, *options)
    try:
        started = time.monotonic()
        deadline = started + 120
        while True:
            statuses = _statuses(path, state, good)
            if all(s["status"] == "succeeded" for s in statuses.values()):
                took = time.monotonic() - started
                break
            assert time.monotonic() < deadline, "the good executions did not finish"
            time.sleep(0.1)
        summary = _wait_settled(path, state, [failing], worker=worker)[failing] if failing else {}
    finally:
        _stop(worker)
    return took, summary


def test_an_execution_that_keeps_failing_holds_up_no_other(cli, make_workflow, tmp_path):
    path = make_workflow(HOL_FLOW, {"hol.py": HOL})
    good = [f"good-{i}" for i in range(60)]
    alone, _ = _time_to_finish(cli, path, tmp_path / "alone", good, None)
    beside, failed = _time_to_finish(cli, path, tmp_path / "beside", good, "always-fails")
    # the failing execution takes 1 + 2 + 4 + 4 + 4 s of backoff: the others must not wait for it
    print(f"head-of-line: {len(good)} executions took {alone:.2f} s alone and {beside:.2f} s beside one failing "
          f"with retries: 5 (its backoff alone is 15 s)")
    assert beside < max(2 * alone, alone + 3.0), (alone, beside)
    subscriber = failed["events"][0]["subscribers"][0]
    assert failed["status"] == "failed" and subscriber["attempts"] == 6, subscriber
    assert subscriber["error"] == "RuntimeError: this one always fails"


# -- a worker killed mid-batch under concurrency ------------------------------------------------------------------------
CHAIN = """
workflow_id: chain
lambdas:
  - {name: first, source: steps.py, handler: first, publishes: [Middle], concurrency: 4}
  - {name: second, source: steps.py, handler: second, publishes: [Done], concurrency: 4}
subscriptions:
  - {name: Start, subscribers: [first]}
  - {name: Middle, subscribers: [second]}
workflows:
  - {id: chain, flow: [Start, Middle, Done]}
"""


def test_a_sigkilled_worker_under_concurrency_loses_nothing_and_tracks_each_step_once(cli, make_workflow, tmp_path):
    path = make_workflow(CHAIN, {"steps.py": NOTING_STEPS})
    notes = tmp_path / "notes.txt"
    env = {"XFLOW_TEST_NOTES": str(notes)}
    state = tmp_path / ".xflow"
    options = ("--option", "lease_seconds=1")
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite", **env)
    executions = [f"kill-{i}" for i in range(40)]
    with Engine(path, state_dir=state) as engine:
        for execution in executions:
            engine.publish("Start", {"n": 1, "sleep": 0.1}, execution)
    victim = cli.popen("worker", path, *options, **env)
    deadline = time.monotonic() + 60
    while sum(read_notes(notes).values()) < 12:
        assert victim.poll() is None and time.monotonic() < deadline, "the first worker handled nothing"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    before = sum(read_notes(notes).values())
    assert before < 2 * len(executions), "the kill came too late to test anything"
    survivor = cli.popen("worker", path, *options, **env)
    try:
        summaries = _wait_settled(path, state, executions, worker=survivor)
    finally:
        assert _stop(survivor) == 0
    with Engine(path, state_dir=state) as engine:
        for execution, summary in summaries.items():
            assert summary["status"] == "succeeded", summary
            assert [e["count"] for e in summary["events"]] == [1, 1, 1], summary
            assert [s["attempts"] for e in summary["events"] for s in e["subscribers"]] == [1, 1], summary
            assert engine.result(execution)["n"] == 20
    effects = read_notes(notes)
    assert {key for key in effects} == {(f, e) for f in ("first", "second") for e in executions}  # nothing lost
    # only what ran at the moment of the kill may run again: at most each function's concurrency
    again = sum(n - 1 for n in effects.values())
    print(f"SIGKILL under concurrency 4: {before} effects before the kill, {again} handler calls ran again")
    assert again <= 8, effects


# -- a handler longer than the lease ------------------------------------------------------------------------------------
LONG_FLOW = """
workflow_id: long
lambdas:
  - {name: slow, source: slow.py, handler: slow, timeout: 30}
subscriptions:
  - {name: Begin, subscribers: [slow]}
"""

SLOW = """
import os, time

def slow(event, ctx):
    with open(os.environ["XFLOW_TEST_NOTES"], "a") as notes:
        notes.write(f"{event['execution_id']} {os.getpid()}\\n")
    time.sleep(3.0)
"""


def test_a_handler_running_three_leases_long_runs_once_with_two_workers(cli, make_workflow, tmp_path):
    path = make_workflow(LONG_FLOW, {"slow.py": SLOW})
    notes = tmp_path / "notes.txt"
    env = {"XFLOW_TEST_NOTES": str(notes)}
    state = tmp_path / ".xflow"
    options = ("--option", "lease_seconds=1", "--option", "partitions=4")
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite", *options, **env)
    workers = [cli.popen("worker", path, *options, **env) for _ in range(2)]
    executions = [f"long-{i}" for i in range(3)]
    try:
        time.sleep(2.0)  # both workers are members and share the partitions
        with Engine(path, state_dir=state) as engine:
            for execution in executions:
                engine.publish("Begin", {}, execution)
        summaries = _wait_settled(path, state, executions, timeout=90)
        time.sleep(2.0)  # a second run would start within a lease of the first
    finally:
        for worker in workers:
            assert _stop(worker) == 0
    assert all(s["status"] == "succeeded" for s in summaries.values()), summaries
    runs = [line.split()[0] for line in notes.read_text().splitlines()]
    assert sorted(runs) == sorted(executions), runs  # each ran once, though it held its partition for 3 leases


def test_a_member_that_does_not_poll_keeps_its_leases_alive_and_gives_up_a_busy_partition_only_once_committed(
        tmp_path):
    from xflow.core.interfaces import PluginContext, Record
    from xflow.transports.local import LocalTransport

    transport = LocalTransport(PluginContext("leases", {"lease_seconds": 1, "partitions": 2}, tmp_path))
    for step in transport.plan_setup(["E"]):
        transport.execute(step)
    keys = {zlib.crc32(k.encode()) % 2: k for k in (f"k{i}" for i in range(20))}
    transport.publish("E", [Record(keys[0], b"zero-1"), Record(keys[1], b"one-1")])
    first = transport.subscribe("group", ["E"])
    held = first.poll(10, 0)  # handed out, not committed: a runner is handling them
    assert sorted(d.value for d in held) == [b"one-1", b"zero-1"]
    second = transport.subscribe("group", ["E"])
    try:
        # the first member runs long handlers: it does not poll, it only keeps alive, for three leases
        deadline = time.monotonic() + 3.0
        taken = []
        while time.monotonic() < deadline:
            first.keep_alive()
            taken += second.poll(10, 0)
            time.sleep(0.05)
        assert taken == [], "a member that keeps alive lost its partitions while it handled their records"
        # the first member rebalances (it polls again): the second may share the partitions, but only once what
        # the first handed out is committed
        deadline = time.monotonic() + 1.5  # several heartbeats of both members
        while time.monotonic() < deadline:
            assert first.poll(10, 0) == []
            taken += second.poll(10, 0)
            time.sleep(0.05)
        assert taken == [], "a partition was given up while its records were being handled"
        first.commit(held)
        deadline = time.monotonic() + 5.0
        while not second.fetched and time.monotonic() < deadline:
            first.poll(10, 0)
            second.poll(10, 0)
            time.sleep(0.1)
        assert second.fetched, "the partition was never handed over"
        transport.publish("E", [Record(keys[0], b"zero-2"), Record(keys[1], b"one-2")])
        got = first.poll(10, 0) + second.poll(10, 0)
        assert sorted(d.value for d in got) == [b"one-2", b"zero-2"]  # each once, nothing from before again
    finally:
        first.close()
        second.close()
        transport.close()
