"""The event limit: one event published from outside leads to at most ``general.event_limit`` deliveries, however the
events that follow from it fan out, so a cycle that fans out ends (the hop limit alone bounds only the depth)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xflow.core.interfaces import PluginContext
from xflow.core.runtime import BadMessage, child_budget, decode_event, encode_event
from xflow.transports.local import LocalTransport

FANNING_CYCLE = """
workflow_id: fanning
general: {event_limit: 200, retries: 0}
lambdas:
  - {name: ping, source: steps.py, handler: ping, publishes: [Pong]}
  - {name: echo, source: steps.py, handler: echo}
  - {name: pong, source: steps.py, handler: pong, publishes: [Ping]}
subscriptions:
  - {name: Ping, subscribers: [ping, echo]}
  - {name: Pong, subscribers: [pong]}
"""

FANNING_STEPS = """
def ping(event, ctx):
    ctx.publish("Pong", {"n": event.get("n", 0) + 1})
    ctx.publish("Pong", {"n": event.get("n", 0) + 1})

def echo(event, ctx):
    pass

def pong(event, ctx):
    ctx.publish("Ping", {"n": event["n"] + 1})
    ctx.publish("Ping", {"n": event["n"] + 1})
"""


def test_a_cycle_that_fans_out_stops_at_the_event_limit(cli, make_workflow, tmp_path):
    """Each step publishes two events, and Ping has two subscribers: without a bound on the deliveries the events
    double at every hop (the hop limit of 1000 would allow about 2**1000 of them)."""
    path = make_workflow(FANNING_CYCLE, {"steps.py": FANNING_STEPS})
    started = time.monotonic()
    done = cli("run", path, "--output", "json", "--timeout", "90")
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 80  # it stopped by itself
    summary = json.loads(done.stdout)
    assert summary["status"] == "failed"
    with sqlite3.connect(tmp_path / ".xflow" / "fanning" / "tracker.db") as db:
        handled = db.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'").fetchone()[0]
        refused = [row[0] for row in db.execute("SELECT error FROM deliveries WHERE status = 'failed'")]
    assert 20 <= handled <= 200
    expected = f"execution {summary['execution_id']} exceeded the event limit of 200 deliveries"
    assert refused and all(error.startswith(expected) for error in refused)
    transport = LocalTransport(PluginContext("fanning", {}, tmp_path / ".xflow"))
    letters = transport.dead_letters("ping") + transport.dead_letters("pong") + transport.dead_letters("echo")
    transport.close()
    assert letters and all(letter["reason"].startswith(expected) for letter in letters)
    human = cli("track", path, summary["execution_id"])
    assert human.returncode == 1 and "exceeded the event limit of 200 deliveries" in " ".join(human.stdout.split())


def test_the_event_limit_is_checked_like_the_other_numbers(cli, make_workflow):
    for value, message in (("0", "general.event_limit"), ("2.5", "must be a whole number"), ("-3", "event_limit")):
        path = make_workflow(FANNING_CYCLE.replace("event_limit: 200", f"event_limit: {value}"),
                             {"steps.py": FANNING_STEPS}, name=f"limit{value.replace('.', '_')}.yaml")
        done = cli("validate", path)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def _deliveries(limit: int, shape: list[tuple[int, int]]) -> int:
    """Deliveries one event published from outside leads to, each event having ``shape[i % len]`` = (subscribers,
    events each delivery publishes), by the rules of the local worker and the Lambda shim."""
    total = 0
    waiting = deque([(None, 0)])
    while waiting:
        budget, depth = waiting.popleft()
        subscribers, published = shape[depth % len(shape)]
        have = limit if budget is None else budget
        if have < max(1, subscribers):
            continue
        total += subscribers
        child = child_budget(have, subscribers, published)
        waiting.extend((child, depth + 1) for _ in range(subscribers * published))
    return total


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=5000),
       st.lists(st.tuples(st.integers(min_value=1, max_value=4), st.integers(min_value=0, max_value=4)),
                min_size=1, max_size=4))
def test_no_shape_of_fan_out_makes_more_deliveries_than_the_limit(limit, shape):
    assert _deliveries(limit, shape) <= limit


@pytest.mark.parametrize("limit", [1, 7, 1000])
def test_a_chain_that_does_not_fan_out_gets_the_whole_limit(limit):
    assert _deliveries(limit, [(1, 1)]) == limit


def test_a_fan_out_within_the_limit_is_handled_whole():
    """One event split into 10,000 (a file into its lines), each line through a 3-step chain, fits the default."""
    assert _deliveries(100_000, [(1, 10_000), (1, 1), (1, 1), (1, 0)]) == 1 + 3 * 10_000


def test_the_budget_travels_in_the_envelope():
    record = encode_event("Ping", {"n": 1}, "x1", "e1", "xflow/w/f", budget=41)
    assert json.loads(record)["xflowbudget"] == 41
    assert decode_event(record, "fallback").budget == 41
    assert decode_event(encode_event("Ping", {}, "x1", "e1", "outside"), "fallback").budget is None
    for bad in (-1, "many", 2.5, True, [3]):
        envelope = json.loads(record)
        envelope["xflowbudget"] = bad
        with pytest.raises(BadMessage, match="xflowbudget"):
            decode_event(json.dumps(envelope).encode(), "fallback")
