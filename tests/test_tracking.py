"""Unit tests of the tracking rules (pure logic over records): fan-out, repeated events, duplicates."""

from __future__ import annotations

from pathlib import Path

from xflow.core.interfaces import DeliveryRecord, EventRecord, ExecutionHistory
from xflow.core.model import Function, Subscription, Workflow
from xflow.core.tracking import summarize


def _workflow() -> Workflow:
    fn = {n: Function(n, "h", "x.py", None) for n in ("a", "b", "c")}
    subs = (Subscription("Start", ("a", "b")), Subscription("Next", ("c",)))
    return Workflow("w", Path("w.yaml"), fn, subs, ("Start", "Next", "End"))


def _event(event_id, name, t=1.0):
    return EventRecord("x", event_id, name, t)


def _delivery(event_id, name, fn, status, attempt=1, error=None, logs=()):
    return DeliveryRecord("x", event_id, name, fn, attempt, status, 1.0, 0.1, error, tuple(logs))


def test_fan_out_waits_for_every_subscriber():
    history = ExecutionHistory([_event("1", "Start")], [_delivery("1", "Start", "a", "succeeded")])
    summary = summarize(_workflow(), "x", history)
    start = summary["events"][0]
    assert start["state"] == "pending" and summary["status"] == "running"
    assert [s["state"] for s in start["subscribers"]] == ["succeeded", "pending"]
    assert summary["last_unprocessed_event"] == "Start"


def test_repeated_event_and_duplicate_records_are_counted_once_each():
    events = [_event("1", "Start"), _event("2", "Next"), _event("3", "Next"), _event("3", "Next"), _event("4", "End")]
    deliveries = [_delivery("1", "Start", "a", "succeeded"), _delivery("1", "Start", "b", "succeeded"),
                  _delivery("2", "Next", "c", "succeeded"), _delivery("3", "Next", "c", "succeeded"),
                  _delivery("3", "Next", "c", "succeeded")]
    summary = summarize(_workflow(), "x", ExecutionHistory(events, deliveries))
    assert [e["count"] for e in summary["events"]] == [1, 2, 1]
    assert summary["status"] == "succeeded" and summary["last_unprocessed_event"] is None


def test_failure_on_one_occurrence_fails_the_event_with_logs():
    events = [_event("1", "Start"), _event("2", "Next"), _event("3", "Next")]
    deliveries = [_delivery("1", "Start", "a", "succeeded"), _delivery("1", "Start", "b", "succeeded"),
                  _delivery("2", "Next", "c", "succeeded"),
                  _delivery("3", "Next", "c", "retrying", 1, "E: boom", ["first try"]),
                  _delivery("3", "Next", "c", "failed", 2, "E: boom", ["second try"])]
    summary = summarize(_workflow(), "x", ExecutionHistory(events, deliveries))
    nxt = summary["events"][1]
    assert nxt["state"] == "failed" and summary["status"] == "failed"
    assert nxt["subscribers"][0] == {"name": "c", "state": "failed", "attempts": 3, "error": "E: boom",
                                     "logs": ["first try", "second try"]}
    assert summary["events"][2]["state"] == "not_reached"
    assert summary["last_unprocessed_event"] == "Next"


def test_unknown_execution_is_running_with_nothing_reached():
    summary = summarize(_workflow(), "nope", ExecutionHistory([], []))
    assert summary["status"] == "running"
    assert all(e["state"] == "not_reached" and e["count"] == 0 for e in summary["events"])
