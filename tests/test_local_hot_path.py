"""What the local provider's fast path must keep: an event encoded once is the same bytes as one encoded from its data;
calls handed to a handler process in one message keep their failure rules (a call that kills the process or times
out fails alone, those before it keep their outcomes, those after it run once in the next process); a retry in a
thread gets the event as the record holds it, whatever the first attempt did to its dict; and the tracker stores the
data a handler published as it was encoded."""

from __future__ import annotations

import json
import sqlite3
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xflow import Engine
from xflow.core.interfaces import EventRecord, PluginContext
from xflow.core.runtime import JsonObject, encode_event, encode_event_json, json_text
from xflow.providers import handler_process
from xflow.providers.handler_calls import Attempt
from xflow.providers.supervisor import HandlerPool
from xflow.trackers.sqlite import SqliteTrackerStore

pytestmark = pytest.mark.timeout(180)

# -- encoded once -------------------------------------------------------------------------------------------------------
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(event=TEXT, data=st.dictionaries(TEXT, JSON, max_size=4), execution_id=TEXT, event_id=TEXT, producer=TEXT,
       published_at=st.floats(min_value=-1e10, max_value=1e11), hops=st.integers(0, 10**6))
def test_an_event_encoded_from_its_data_text_is_the_same_bytes_as_one_encoded_from_its_data(
        event, data, execution_id, event_id, producer, published_at, hops):
    payload = {**data, "execution_id": execution_id}
    expected = encode_event(event, data, execution_id, event_id, producer, published_at, hops)
    assert encode_event_json(event, json_text(payload), execution_id, event_id, producer, published_at, hops) == expected
    assert json.loads(expected)["data"] == payload


def test_the_tracker_stores_the_text_data_was_encoded_to_and_reads_back_the_same(tmp_path):
    tracker = SqliteTrackerStore(PluginContext("wf", {}, tmp_path))
    for step in tracker.plan_setup(None):  # type: ignore[arg-type]
        tracker.execute(step)
    data = {"word": "caf\u00e9 \u2028", "n": [1, 2.5, None], "execution_id": "x"}
    tracker.record_events([EventRecord("x", "e1", "E", 1.0, "p", JsonObject(data, json_text(data))),
                           EventRecord("x", "e2", "E", 2.0, "p", dict(data))])
    tracker.close()
    with sqlite3.connect(tmp_path / "wf" / "tracker.db") as db:
        stored = dict(db.execute("SELECT event_id, data FROM events").fetchall())
    assert stored["e1"] == json_text(data)
    assert json.loads(stored["e1"]) == json.loads(stored["e2"]) == data
    tracker = SqliteTrackerStore(PluginContext("wf", {}, tmp_path))
    assert [e.data for e in tracker.history("x").events] == [data, data]
    tracker.close()


# -- calls handed over together -----------------------------------------------------------------------------------------
STEP = """
import os, time

def handle(event, ctx):
    with open(event["notes"], "a") as notes:
        notes.write(f"{event['n']} {os.getpid()}\\n")
    if event.get("kind") == "os_exit":
        os._exit(4)
    if event.get("kind") == "sleep":
        time.sleep(60)
    return {"n": event["n"], "pid": os.getpid()}
"""


def _pool(tmp_path: Path, **options) -> HandlerPool:
    source = tmp_path / "src" / "step.py"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(textwrap.dedent(STEP))
    return HandlerPool(source, "handle", ["Out"], **options)


def _counting_messages(monkeypatch) -> list[int]:
    sizes: list[int] = []
    send = handler_process.HandlerProcess.send

    def counted(self, calls):
        sizes.append(len(calls))
        return send(self, calls)

    monkeypatch.setattr(handler_process.HandlerProcess, "send", counted)
    return sizes


@pytest.mark.parametrize("kind, error", [("os_exit", "exited with status 4"), ("sleep", "timed out after 2 s")])
def test_calls_handed_over_together_fail_one_at_a_time_and_none_runs_twice(tmp_path, monkeypatch, kind, error):
    notes = tmp_path / "notes.txt"
    sizes = _counting_messages(monkeypatch)
    with _pool(tmp_path, timeout=2) as pool:
        first = pool.submit({"notes": str(notes), "n": -1}, Attempt("wf", "step", "ex", "In", "ev", 1)).result(60)
        assert first.ok
        futures = [pool.submit({"notes": str(notes), "n": n, "kind": kind if n == 10 else None},
                               Attempt("wf", "step", f"ex-{n}", "In", f"ev-{n}", 1)) for n in range(30)]
        outcomes = [future.result(60) for future in futures]
    assert max(sizes) > 1, sizes  # some calls did go together
    assert [o.error for o in outcomes if not o.ok] == [error]
    assert not outcomes[10].ok and outcomes[10].published == []
    ran = [line.split() for line in notes.read_text().splitlines()]
    assert sorted(int(n) for n, _ in ran) == list(range(-1, 30))  # each call ran once, the failing one included
    pids = {int(n): pid for n, pid in ran}
    assert len({pids[n] for n in range(-1, 11)}) == 1  # the calls before it and the failing one: one process
    assert pids[11] != pids[10] and len({pids[n] for n in range(11, 30)}) == 1  # the others: the next process
    for n in range(30):
        if n != 10:
            assert outcomes[n].published == [("Out", {"n": n, "pid": int(pids[n]), "execution_id": f"ex-{n}"})]


def test_slow_calls_are_not_handed_over_together_so_concurrency_holds(tmp_path, monkeypatch):
    notes = tmp_path / "notes.txt"
    sizes = _counting_messages(monkeypatch)
    slow = tmp_path / "src" / "slow.py"
    slow.parent.mkdir(parents=True, exist_ok=True)
    slow.write_text("import time\n\ndef handle(event, ctx):\n    time.sleep(0.2)\n")
    with HandlerPool(slow, "handle", [], concurrency=4) as pool:
        pool.check()
        warm = [pool.submit({"notes": str(notes), "n": n}, Attempt("wf", "s", "x", "In", f"w{n}", 1)) for n in range(4)]
        assert all(f.result(60).ok for f in warm)
        started = time.monotonic()
        futures = [pool.submit({"n": n}, Attempt("wf", "s", f"x{n}", "In", f"e{n}", 1)) for n in range(16)]
        assert all(f.result(60).ok for f in futures)
        took = time.monotonic() - started
    assert max(sizes) == 1, sizes
    assert took < 16 * 0.2 * 0.75, took  # four at a time: about 0.8 s, far from the 3.2 s of one at a time


# -- a retry's data -----------------------------------------------------------------------------------------------------
MUTATING = """
workflow_id: mutating
lambdas:
  - {name: grow, source: grow.py, handler: grow, publishes: [Grown], retries: 2}
subscriptions:
  - {name: Seed, subscribers: [grow]}
workflows:
  - {id: mutating, flow: [Seed, Grown]}
"""

GROW = """
def grow(event, ctx):
    event["items"].append(ctx.attempt)
    event["n"] += 100
    if ctx.attempt < 3:
        raise RuntimeError("not yet")
    return {"n": event["n"], "items": event["items"]}
"""


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_each_attempt_gets_the_event_as_published_whatever_an_earlier_one_did_to_it(make_workflow, tmp_path, isolation):
    path = make_workflow(MUTATING, {"grow.py": GROW})
    with Engine(path, state_dir=tmp_path / "state",
                options={"provider": {"isolation": isolation, "backoff_seconds": 0.01}}) as engine:
        engine.setup()
        execution = engine.publish("Seed", {"n": 1, "items": ["seed"]})
        engine.work(until=lambda: engine.track(execution)["status"] != "running")
        summary = engine.track(execution)
        result = engine.result(execution)
    assert summary["status"] == "succeeded", summary
    assert summary["events"][0]["subscribers"][0]["attempts"] == 3
    assert result == {"n": 101, "items": ["seed", 3], "execution_id": execution}


# -- when an attempt started --------------------------------------------------------------------------------------------
SLOW = """
workflow_id: slow
lambdas:
  - {name: nap, source: nap.py, handler: nap}
subscriptions:
  - {name: Tick, subscribers: [nap]}
"""


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_an_attempt_is_recorded_as_starting_when_its_handler_began_not_when_it_was_queued(make_workflow, tmp_path,
                                                                                         isolation):
    path = make_workflow(SLOW, {"nap.py": "import time\n\ndef nap(event, ctx):\n    time.sleep(0.3)\n"})
    with Engine(path, state_dir=tmp_path / "state", options={"provider": {"isolation": isolation}}) as engine:
        engine.setup()
        executions = [engine.publish("Tick", {"n": n}) for n in range(4)]
        engine.work(until=lambda: all(engine.track(e)["status"] != "running" for e in executions))
    with sqlite3.connect(tmp_path / "state" / "slow" / "tracker.db") as db:
        rows = db.execute("SELECT started_at, duration FROM deliveries ORDER BY started_at").fetchall()
    assert len(rows) == 4
    # concurrency 1: each began once the one before had ended (all four were handed over at once)
    for (before, took), (after, _) in zip(rows, rows[1:], strict=False):
        assert took >= 0.3 and after >= before + took - 0.05, rows
