"""The collector settings of a process that exists to run a worker: ``xflow run`` and ``xflow worker`` freeze what
is alive at start-up and make young collections rarer while they run, and put both back; a Worker embedded in an
application leaves the application's collector as it found it."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

from xflow_cli_testing import CLI

from xflow import Engine, Worker
from xflow.core.collector import YOUNG_THRESHOLD, worker_collector

PROBE = """
import gc


def probe(event, ctx):
    return {"frozen": gc.get_freeze_count(), "young": gc.get_threshold()[0]}
"""
FLOW = """
workflow_id: probe
provider: {name: local, options: {isolation: thread}}
lambdas:
  - {name: probe, source: probe.py, handler: probe, publishes: [Probed]}
subscriptions:
  - {event: Asked, subscribers: [probe]}
  - {event: Probed, subscribers: []}
"""


def test_the_context_freezes_start_up_objects_and_puts_everything_back() -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    with worker_collector():
        assert gc.get_freeze_count() > frozen
        assert gc.get_threshold() == (max(YOUNG_THRESHOLD, threshold[0]), *threshold[1:])
        garbage: list[object] = []
        garbage.append(garbage)  # a cycle made while it runs is still collected
        del garbage
        assert gc.collect() >= 1
        with worker_collector():  # nested: changes nothing, undoes nothing
            assert gc.get_threshold()[0] == max(YOUNG_THRESHOLD, threshold[0])
        assert gc.get_freeze_count() > frozen
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == 0


def test_xflow_run_runs_its_worker_with_the_collector_set(cli: CLI, make_workflow: Callable[..., Path]) -> None:
    flow = make_workflow(FLOW, {"probe.py": PROBE})
    summary = cli.json("run", flow)
    assert summary["status"] == "succeeded", summary
    seen = summary["result"]
    assert seen["young"] == YOUNG_THRESHOLD and seen["frozen"] > 1000, seen  # the modules, classes, plugins


def test_an_embedded_worker_leaves_the_collector_alone(tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(PROBE)
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    engine = Engine(_write(tmp_path), state_dir=tmp_path / "state")
    engine.setup()
    execution = engine.publish("Asked", {})
    with Worker(engine, poll_interval=0.05) as worker:
        while engine.track(execution)["status"] != "succeeded":
            assert worker.running
            worker.join(0.05)
    seen = engine.result(execution)
    assert seen is not None and (seen["frozen"], seen["young"]) == (frozen, threshold[0]), seen
    assert gc.get_threshold() == threshold
    engine.close()


def _write(folder: Path) -> Path:
    path = folder / "flow.yaml"
    path.write_text(FLOW)
    return path



def test_xflow_serve_running_the_functions_sets_the_collector_too(tmp_path: Path) -> None:
    from serve_testing import start_server, wait_for

    (tmp_path / "probe.py").write_text(PROBE)
    flow = _write(tmp_path)
    server = start_server(tmp_path, flow)  # not set up before: it sets up and runs the functions
    try:
        answer = server.post("/workflows/probe/events/Asked", json={})
        assert answer.status_code == 200, answer.text
        execution = answer.json()["execution_id"]
        wait_for(lambda: server.get(f"/workflows/probe/executions/{execution}").json()["status"] == "succeeded", 60,
                 "the probe")
    finally:
        assert server.stop() == 0
    with Engine(flow, state_dir=tmp_path / ".xflow") as engine:
        seen = engine.result(execution)
    assert seen is not None
    assert seen["young"] == YOUNG_THRESHOLD and seen["frozen"] > 1000, seen
