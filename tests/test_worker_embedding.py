"""``xflow.Worker`` embedded in another application: it runs in a thread of the host, honours stop within one poll
interval, raises what stopped it from ``join``, and leaves the host's signals, ``sys.path``, streams and logging as
it found them while host threads publish and print."""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import xflow
from xflow import Engine, Worker, XflowError

HANDLERS = '''
import logging

def charge(event, ctx):
    print("charging inside the handler", event["order"])
    ctx.logger.info("charged %s", event["order"])
    logging.getLogger("host.app").warning("the handler logs through the host's logger")
    return {"order": event["order"], "charged": True}

def ship(event, ctx):
    return {"order": event["order"], "shipped": True}
'''

PUBLISHERS = 8
EXECUTIONS = 200


def orders_flow(isolation: str) -> dict[str, Any]:
    return {
        "workflow_id": "orders",
        "provider": {"name": "local", "options": {"isolation": isolation}},
        "lambdas": [
            {"name": "charge", "source": "handlers.py", "handler": "charge", "publishes": ["OrderCharged"],
             "concurrency": 4},
            {"name": "ship", "source": "handlers.py", "handler": "ship", "publishes": ["OrderShipped"]},
        ],
        "subscriptions": [
            {"event": "OrderPlaced", "subscribers": ["charge"]},
            {"event": "OrderCharged", "subscribers": ["ship"]},
            {"event": "OrderShipped", "subscribers": []},
        ],
    }


def host_state() -> dict[str, Any]:
    def logger_state(logger: logging.Logger) -> tuple[Any, ...]:
        return logger.level, list(logger.handlers), logger.propagate, logger.disabled

    return {
        "signals": {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)},
        "sys.path": list(sys.path),
        "handler modules": sorted(m for m in sys.modules if m.startswith("xflow_handler_")),
        "stdout": sys.stdout, "stderr": sys.stderr,
        "root logger": logger_state(logging.getLogger()),
        "xflow logger": logger_state(logging.getLogger("xflow")),
        "host logger": logger_state(logging.getLogger("host.app")),
    }


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    return tmp_path


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_a_worker_thread_beside_eight_publishing_threads_leaves_the_host_alone(app_dir, capfd, isolation):
    before = host_state()
    engine = Engine.from_mapping(orders_flow(isolation), base_dir=app_dir, state_dir=app_dir / "state")
    engine.setup()
    published: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(PUBLISHERS)

    def publisher(number: int) -> None:
        try:
            start.wait()
            for index in range(EXECUTIONS // PUBLISHERS):
                published.append(engine.publish("OrderPlaced", {"order": f"{number}-{index}"}))
                print(f"host line {number}-{index}")  # the host's own output, from its own threads
        except BaseException as exc:
            errors.append(exc)

    with Worker(engine) as worker:
        assert worker.running
        threads = [threading.Thread(target=publisher, args=(n,)) for n in range(PUBLISHERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        deadline = time.monotonic() + 120
        while True:
            statuses = {e: engine.track(e)["status"] for e in published}
            if all(s != "running" for s in statuses.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert host_state() == before  # while it runs, too
    assert not errors, errors
    assert len(published) == EXECUTIONS and sorted(statuses.values()) == ["succeeded"] * EXECUTIONS
    assert worker.handled == 2 * EXECUTIONS and not worker.running
    assert engine.result(published[0])["shipped"] is True
    engine.close()
    out, _ = capfd.readouterr()
    host_lines = set(re.findall(r"host line \d+-\d+", out))  # print() from threads may interleave its newline
    assert len(host_lines) == EXECUTIONS, f"{len(host_lines)} of the host's {EXECUTIONS} lines reached its stdout"
    assert "charging inside the handler" not in out  # a handler's output is captured per attempt, not the host's
    assert host_state() == before


def test_stop_is_honoured_within_a_poll_interval_and_engine_run_installs_no_signal_handler(app_dir):
    engine = Engine.from_mapping(orders_flow("thread"), base_dir=app_dir, state_dir=app_dir / "state")
    signals = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    summary = engine.run("OrderPlaced", {"order": "one"})  # on the main thread: no handler installed
    assert summary["status"] == "succeeded" and summary["result"]["shipped"] is True
    assert {sig: signal.getsignal(sig) for sig in signals} == signals
    worker = Worker(engine, poll_interval=0.05).start()
    time.sleep(0.5)
    asked = time.monotonic()
    worker.stop(timeout=10)
    took = time.monotonic() - asked
    assert not worker.running and took < 1.0, f"an idle worker took {took:.2f} s to stop"
    worker.join()
    with pytest.raises(XflowError, match="started already"):
        worker.start()
    engine.close()


def test_the_error_that_stops_a_worker_comes_out_of_join_and_the_with_block(app_dir):
    (app_dir / "broken.py").write_text("import no_such_module_here\n\ndef go(event, ctx):\n    pass\n")
    flow = orders_flow("process")
    flow["lambdas"][0].update(source="broken.py", handler="go")
    engine = Engine.from_mapping(flow, base_dir=app_dir, state_dir=app_dir / "state")
    engine.setup()
    with pytest.raises(XflowError, match="cannot load handler 'go'.*no_such_module_here"), Worker(engine) as worker:
        assert worker.wait(60), "the worker did not stop on a handler it cannot load"
    assert not worker.running
    with pytest.raises(XflowError, match="no function named 'nope'"):
        Worker(engine, ["nope"]).start()
    engine.close()


def test_a_provider_that_runs_functions_itself_has_no_worker(app_dir):
    flow = orders_flow("process")
    flow.pop("provider")
    engine = Engine.from_mapping(flow, base_dir=app_dir, state_dir=app_dir / "state", provider="lambda")
    with pytest.raises(XflowError, match="runs functions itself") as raised:
        Worker(engine).start()
    assert "xflow emulate" in (raised.value.hint or "")
    assert xflow.Worker is Worker


SLOW = '''
import os, time

def slow(event, ctx):
    with open(os.environ["XFLOW_TEST_NOTES"], "a") as notes:
        notes.write(f"{event['execution_id']}\\n")
    if not os.path.exists(os.environ["XFLOW_TEST_QUICK"]):
        time.sleep(60)
    return {"done": True}
'''


def test_a_handler_still_running_at_stop_is_left_uncommitted_and_runs_again_later(app_dir, monkeypatch):
    (app_dir / "slow.py").write_text(SLOW)
    notes, quick = app_dir / "notes.txt", app_dir / "quick"
    monkeypatch.setenv("XFLOW_TEST_NOTES", str(notes))
    monkeypatch.setenv("XFLOW_TEST_QUICK", str(quick))
    flow = {"workflow_id": "slow", "lambdas": [{"name": "slow", "source": "slow.py", "handler": "slow",
                                                "publishes": ["Done"], "timeout": 120}],
            "subscriptions": [{"event": "Go", "subscribers": ["slow"]}, {"event": "Done", "subscribers": []}]}
    engine = Engine.from_mapping(flow, base_dir=app_dir, state_dir=app_dir / "state")
    engine.setup()
    execution = engine.publish("Go", {})
    worker = Worker(engine).start()
    deadline = time.monotonic() + 60
    while not notes.exists():
        assert time.monotonic() < deadline and worker.running, "the handler never started"
        time.sleep(0.05)
    asked = time.monotonic()
    worker.stop(timeout=1.0)
    took = time.monotonic() - asked
    worker.join()
    assert took < 5.0, f"stop(timeout=1) took {took:.1f} s"
    assert engine.track(execution)["status"] == "running"  # not settled, not committed
    quick.touch()
    with Worker(engine):
        deadline = time.monotonic() + 60
        while engine.track(execution)["status"] == "running":
            assert time.monotonic() < deadline, "the delivery did not come again"
            time.sleep(0.05)
    summary = engine.track(execution)
    assert summary["status"] == "succeeded" and summary["events"][0]["subscribers"][0]["attempts"] == 1
    assert notes.read_text().split() == [execution, execution]  # it ran again, in full
    engine.close()


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_handler_logs_reach_the_host_logging_only_when_asked(app_dir, isolation):
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    keeper = Keep()
    host = logging.getLogger("xflow.functions.orders")
    host.addHandler(keeper)
    try:
        for propagate in (False, True):
            flow = orders_flow(isolation)
            flow["provider"]["options"]["propagate_logs"] = propagate
            engine = Engine.from_mapping(flow, base_dir=app_dir, state_dir=app_dir / f"state-{propagate}")
            summary = engine.run("OrderPlaced", {"order": f"logged-{propagate}"})
            assert summary["status"] == "succeeded"
            engine.close()
    finally:
        host.removeHandler(keeper)
    assert "charged logged-True" in seen and "charged logged-False" not in seen, seen
