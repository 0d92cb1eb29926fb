"""Setup and teardown of the embedded backends as data: the sqlite tracker's and the local provider's steps name their
call and parameters, planning writes nothing, and ``execute`` performs them (through the Engine and plugin by plugin)."""

from __future__ import annotations

import json

import pytest

from xflow import Engine
from xflow.core.interfaces import PluginContext
from xflow.providers.local import LocalFunctionProvider
from xflow.trackers.sqlite import SqliteTrackerStore

pytestmark = pytest.mark.timeout(120)

FLOW = """
workflow_id: planned
lambdas:
  - {name: step, source: step.py, handler: step, publishes: [Done]}
subscriptions:
  - {name: Start, subscribers: [step]}
"""


def test_the_sqlite_trackers_plans_are_data_and_execute_performs_them(tmp_path):
    tracker = SqliteTrackerStore(PluginContext("planned", {}, tmp_path))
    database = tmp_path / "planned" / "tracker.db"
    plan = tracker.plan_setup(None)  # type: ignore[arg-type]
    assert [step.describe() for step in plan] == [
        {"action": "create", "resource": f"tracker:{database}", "call": "sqlite:CreateDatabase",
         "params": {"path": str(database)}, "depends_on": [], "detail": ""}]
    assert plan[0].apply is None and json.loads(json.dumps(plan[0].describe())) == plan[0].describe()
    assert not database.parent.exists()  # planning wrote nothing
    tracker.execute(plan[0])
    assert database.exists() and tracker.plan_setup(None) == []  # type: ignore[arg-type]
    assert tracker.executions() == []
    teardown = tracker.plan_teardown(None)  # type: ignore[arg-type]
    assert [(s.action, s.call, dict(s.params)) for s in teardown] == [
        ("delete", "sqlite:DeleteDatabase", {"path": str(database)})]
    tracker.execute(teardown[0])
    assert not database.exists() and not database.parent.exists()
    assert tracker.plan_teardown(None) == []  # type: ignore[arg-type]
    other = SqliteTrackerStore(PluginContext("other", {}, tmp_path))
    with pytest.raises(RuntimeError, match="given to the tracker of"):
        other.execute(plan[0])


def test_the_local_providers_teardown_is_data_and_execute_removes_the_source_cache(make_workflow, tmp_path):
    path = make_workflow(FLOW, {"step.py": "def step(event, ctx):\n    return {'ok': True}\n"})
    provider = LocalFunctionProvider(PluginContext("planned", {}, tmp_path / "state"))
    with Engine(path, state_dir=tmp_path / "state") as engine:
        folder = provider.sources_folder(engine.workflow)
        assert provider.plan_teardown(engine.workflow, engine.transport, engine.tracker) == []
        (folder / "fetched-1-abc").mkdir(parents=True)
        plan = provider.plan_teardown(engine.workflow, engine.transport, engine.tracker)
        assert [(s.action, s.resource, s.call, dict(s.params), s.apply) for s in plan] == [
            ("delete", f"source-cache:{folder}", "local:RemoveSourceCache", {"folder": str(folder)}, None)]
        assert folder.exists()  # planning removed nothing
        provider.execute(plan[0])
        assert not folder.exists()


def test_a_dry_run_of_the_embedded_setup_creates_nothing_and_the_real_one_creates_the_tracker(make_workflow, tmp_path):
    path = make_workflow(FLOW, {"step.py": "def step(event, ctx):\n    return {'ok': True}\n"})
    state = tmp_path / "state"
    with Engine(path, state_dir=state) as engine:
        report = engine.setup(dry_run=True)
        assert {"action": "create", "resource": f"tracker:{state / 'planned' / 'tracker.db'}"} in [
            step.as_change() for step in report.steps]
        assert not (state / "planned" / "tracker.db").exists()
    with Engine(path, state_dir=state) as engine:
        engine.setup()
        assert (state / "planned" / "tracker.db").exists()
        execution = engine.run(data={"x": 1})["execution_id"]
        assert engine.track(execution)["status"] == "succeeded"
        engine.teardown()
    assert not (state / "planned" / "tracker.db").exists()
