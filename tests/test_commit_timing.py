"""A busy function commits what it settled at most every ``COMMIT_EVERY`` seconds, not after every batch: while the
worker keeps running, what was handled is committed soon after (the transport's lag falls to 0 without a stop), and
what was settled but not yet committed when a worker stops is committed at the stop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from xflow import Engine, Worker
from xflow.providers import lane

STEP = "def step(event, ctx):\n    return None\n"
EVENTS = 500


def tick_flow() -> dict[str, Any]:
    return {
        "workflow_id": "ticks",
        "provider": {"name": "local", "options": {"isolation": "thread"}},
        "lambdas": [{"name": "step", "source": "steps.py", "handler": "step"}],
        "subscriptions": [{"event": "Tick", "subscribers": ["step"]}],
    }


def behind(engine: Engine) -> int:
    lag = engine.transport.lag("step", ["Tick"])
    assert lag is not None
    return sum(partition.records for partition in lag)


def handled(engine: Engine, executions: list[str]) -> bool:
    return all(engine.track(execution)["status"] == "succeeded" for execution in executions)


def wait_for(check: Any, timeout: float) -> float:
    """Seconds until ``check()`` held (fails after ``timeout``)."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - began


def test_a_running_worker_commits_what_it_handled_soon_after_without_stopping(tmp_path: Path) -> None:
    (tmp_path / "steps.py").write_text(STEP)
    engine = Engine.from_mapping(tick_flow(), base_dir=tmp_path, state_dir=tmp_path / "state")
    engine.setup()
    executions = [engine.publish("Tick", {"n": n}) for n in range(EVENTS)]
    assert behind(engine) == EVENTS
    with Worker(engine, poll_interval=0.05) as worker:
        wait_for(lambda: worker.handled >= EVENTS and handled(engine, executions), 60)
        # settled: committed within a commit interval and a poll interval or two, while the worker still runs
        took = wait_for(lambda: behind(engine) == 0, 5)
        assert worker.running
        assert took < lane.COMMIT_EVERY + 1.0, f"committed {took:.2f} s after the last delivery was settled"
        more = [engine.publish("Tick", {"n": n}) for n in range(3)]
        wait_for(lambda: handled(engine, more) and behind(engine) == 0, 10)  # an idle worker commits too
    assert not worker.running and behind(engine) == 0
    engine.close()


def test_what_is_settled_but_not_yet_committed_is_committed_at_stop(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(lane, "COMMIT_EVERY", 3600.0)  # no commit while running: only the one at stop
    (tmp_path / "steps.py").write_text(STEP)
    engine = Engine.from_mapping(tick_flow(), base_dir=tmp_path, state_dir=tmp_path / "state")
    engine.setup()
    executions = [engine.publish("Tick", {"n": n}) for n in range(EVENTS)]
    with Worker(engine, poll_interval=0.05) as worker:
        wait_for(lambda: worker.handled >= EVENTS and handled(engine, executions), 60)
        time.sleep(0.3)
        assert behind(engine) > 0, "committed while running although the interval is an hour"
    assert behind(engine) == 0
    engine.close()
