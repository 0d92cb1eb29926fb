"""The embedding API: the Engine in a few lines, with plugins by name or as instances."""

from __future__ import annotations

from xflow_cli_testing import SAMPLE, WORD_COUNT, word_counts

from xflow import Engine, XflowError
from xflow.core.interfaces import PluginContext
from xflow.trackers.sqlite import SqliteTrackerStore
from xflow.transports.local import LocalTransport


def test_engine_runs_word_count_by_name(tmp_path):
    with Engine(WORD_COUNT, state_dir=tmp_path / "state") as engine:
        summary = engine.run(data={"path": str(SAMPLE)})
    assert summary["status"] == "succeeded"
    assert summary["result"]["counts"] == word_counts(SAMPLE.read_text(encoding="utf-8"))


def test_engine_accepts_plugin_instances(tmp_path):
    transport = LocalTransport(PluginContext("word_count", {"partitions": 1, "path": str(tmp_path / "log.db")}, tmp_path))
    tracker = SqliteTrackerStore(PluginContext("word_count", {"path": str(tmp_path / "t.db")}, tmp_path))
    with Engine(WORD_COUNT, transport=transport, tracker=tracker, state_dir=tmp_path / "state") as engine:
        report = engine.setup()
        assert f"tracker:{tmp_path / 't.db'}" in [c["resource"] for c in report.as_dict()["changes"]]
        execution = engine.publish("FileUploaded", {"path": str(SAMPLE)})
        engine.work(until=lambda: engine.track(execution)["status"] != "running")
        assert engine.track(execution)["status"] == "succeeded"
        assert engine.result(execution)["total"] == 31
        assert engine.setup().steps == []
    assert (tmp_path / "log.db").exists()


def test_engine_errors_are_xflow_errors(tmp_path):
    engine = Engine(WORD_COUNT, transport="nope", state_dir=tmp_path)
    try:
        engine.setup()
    except XflowError as exc:
        assert "unknown transport 'nope'" in str(exc)
    else:
        raise AssertionError("expected an XflowError")
