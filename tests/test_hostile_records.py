"""No record stops a worker; a cycle stops at the hop limit; remote (git, s3) sources run on the local provider.

The property tests write arbitrary bytes and arbitrary JSON (deep nesting, lone surrogates, huge
numbers, NaN, envelopes with wrong-typed attributes) onto the embedded SQLite log, interleaved
with valid events in the same partitions, and let a worker run: it must go on, every valid
execution must succeed, and every bad record must be dead-lettered with a reason.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xflow import Engine
from xflow.core.errors import XflowError
from xflow.core.interfaces import EventRecord, PluginContext, Record
from xflow.core.runtime import (
    MAX_NESTING,
    BadMessage,
    DecodedEvent,
    decode_event,
    encode_event,
    iso_time,
    parse_iso_time,
)
from xflow.trackers.sqlite import SqliteTrackerStore
from xflow.transports.local import LocalTransport

STEP = """
def step(event, ctx):
    ctx.logger.info("handling %s", event["execution_id"])
    return {"seen": event["execution_id"]}
"""

HOSTILE = """
workflow_id: hostile
general: {retries: 0}
lambdas:
  - {name: step, source: step.py, handler: step, publishes: [Done]}
subscriptions:
  - {name: Start, subscribers: [step]}
workflows:
  - {id: hostile, flow: [Start, Done]}
"""

RFC3339_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
#: Python 3.11+ refuses to read integers of more than 4300 digits (a record holding one is bad there)
HUGE_INT_IS_BAD = hasattr(sys, "get_int_max_str_digits")
HUGE_INT = "9" * 5000

# -- strategies --------------------------------------------------------------------------------
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates included
CLEAN_TEXT = st.text(max_size=12)  # valid Unicode only
WITH_SURROGATE = st.tuples(CLEAN_TEXT, SURROGATE, CLEAN_TEXT).map("".join)
KEYS = st.sampled_from(["p0", "p1", "p2", "p3", "p4"])  # few partition keys: bad and good records share partitions
NO_ID_KEY = ANY_TEXT.filter(lambda k: "execution" not in k and k != "specversion")

HOSTILE_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10 ** 40)
                   | st.floats(allow_nan=True, allow_infinity=True) | ANY_TEXT)
HOSTILE_JSON = st.recursive(HOSTILE_SCALARS, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(NO_ID_KEY, inner, max_size=4), max_leaves=10)
CLEAN_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                 | CLEAN_TEXT)
CLEAN_JSON = st.recursive(CLEAN_SCALARS, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(CLEAN_TEXT, inner, max_size=3), max_leaves=8)
CLEAN_DATA = st.dictionaries(CLEAN_TEXT.filter(lambda k: "execution" not in k and k != "specversion"), CLEAN_JSON,
                             max_size=4)


def dumps(value: Any) -> bytes:
    """JSON the way a careless producer writes it: NaN/Infinity literals, lone surrogates as \\udXXX escapes."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


def _envelope(execution_id: str = "env", data: dict[str, Any] | None = None) -> dict[str, Any]:
    return json.loads(encode_event("Start", data or {"n": 1}, execution_id, f"id-{execution_id}", "xflow/other/producer"))


WRONG_TYPES = {
    "id": st.sampled_from([7, "", [], {}, True, 1.5]),
    "specversion": st.sampled_from([1, 1.0, "", [], {}, False]),
    "source": st.sampled_from([3, [], {}, True]),
    "time": st.sampled_from([5, 1.5e9, [], {}, True]),
    "data": st.sampled_from([[], ["a"], "text", 3, True]),
    "executionid": st.sampled_from([4, "", [], {}, True]),
    "xflowhops": st.sampled_from([-1, "x", "-3", 1.5, True, [], {}]),
}


@st.composite
def bad_envelopes(draw: st.DrawFn) -> bytes:
    envelope = _envelope(draw(CLEAN_TEXT.filter(bool)))
    field = draw(st.sampled_from(sorted(WRONG_TYPES)))
    envelope[field] = draw(WRONG_TYPES[field])
    return dumps(envelope)


@st.composite
def deep_records(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(MAX_NESTING + 1, 100_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    inner = opener * depth + "1" + closer * depth if draw(st.booleans()) else opener * depth
    return f'{{"execution_id": "deep", "d": {inner}}}'.encode() if draw(st.booleans()) else inner.encode()


BAD_RECORDS = st.one_of(
    # bytes of any kind that cannot name an execution
    st.binary(max_size=120).filter(lambda b: b"execution" not in b and b"\\u" not in b),
    # JSON that is not an object
    HOSTILE_JSON.filter(lambda v: not isinstance(v, dict)).map(dumps),
    # objects without an execution id, full of NaN, infinities, huge numbers, surrogates
    st.dictionaries(NO_ID_KEY, HOSTILE_JSON, max_size=5).map(dumps),
    # an execution id that is not a non-empty string of valid Unicode
    st.builds(lambda bad, data: dumps({**data, "execution_id": bad}),
              st.one_of(st.integers(), st.just(""), st.booleans(), st.lists(st.integers(), max_size=2), WITH_SURROGATE),
              CLEAN_DATA),
    # a good execution id, but data JSON cannot carry: NaN, infinities, lone surrogates
    st.builds(lambda eid, poison, data: dumps({**data, "execution_id": eid, "poison": poison}),
              CLEAN_TEXT.filter(bool),
              st.sampled_from([float("nan"), float("inf"), float("-inf")]) | WITH_SURROGATE, CLEAN_DATA),
    st.builds(lambda eid: f'{{"execution_id": "{eid}", "n": 1e999}}'.encode(), st.sampled_from(["a", "b"])),
    # a CloudEvent with a lone surrogate in its execution id
    WITH_SURROGATE.map(lambda eid: dumps({**_envelope(), "executionid": eid})),
    deep_records(),
    bad_envelopes(),
    st.builds(lambda: f'{{"n": {HUGE_INT}}}'.encode()),  # no id, and a number Python will not read
)

ABSURD_TIMES = st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0000-00-00T00:00:00Z",
                                "99999-01-01T00:00:00Z", "garbage", "", "2024-13-45T99:99:99Z",
                                "1969-07-20T20:17:40Z", "2024-02-29T12:00:00.123456789+05:30"]) | CLEAN_TEXT

_ids = itertools.count()


@st.composite
def good_records(draw: st.DrawFn) -> tuple[str, bytes]:
    """(execution id, record): a unique execution id made of any valid text (rich markup, quotes, NUL...)."""
    execution_id = f"{draw(CLEAN_TEXT)}#{next(_ids)}"
    data = draw(CLEAN_DATA)
    form = draw(st.sampled_from(["envelope", "absurd_time", "foreign", "foreign_executionid", "old_envelope",
                                 "huge_int"]))
    if form == "foreign":
        return execution_id, dumps({**data, "execution_id": execution_id})
    if form == "foreign_executionid":
        return execution_id, dumps({**data, "executionid": execution_id})
    if form == "huge_int" and not HUGE_INT_IS_BAD:
        return execution_id, f'{{"execution_id": {json.dumps(execution_id)}, "n": {HUGE_INT}}}'.encode()
    envelope = json.loads(encode_event("Start", data, execution_id, f"id-{execution_id}", "xflow/other/producer",
                                       hops=draw(st.integers(0, 1000))))
    if form == "absurd_time":
        envelope["time"] = draw(ABSURD_TIMES)
    if form == "old_envelope":  # what xflow wrote before the executionid extension
        envelope["execution_id"] = envelope.pop("executionid")
        del envelope["xflowhops"]
    return execution_id, dumps(envelope)


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """45 bad records and 15 valid events (plus, where Python refuses huge integers, one such), shuffled."""
    items: list[tuple[str, Any]] = [("bad", value) for value in draw(st.lists(BAD_RECORDS, min_size=45, max_size=45))]
    items += [("good", item) for item in draw(st.lists(good_records(), min_size=15, max_size=15))]
    if HUGE_INT_IS_BAD:
        items.append(("bad", f'{{"execution_id": "big", "n": {HUGE_INT}}}'.encode()))
    return [items[i] for i in draw(st.permutations(range(len(items))))]


# -- decode_event is total -------------------------------------------------------------------------
def _check_decoded(value: bytes) -> DecodedEvent | None:
    try:
        event = decode_event(value, "fallback-id")
    except BadMessage as exc:
        assert str(exc)
        return None
    # what comes out can be stored and published again as UTF-8 JSON, and its time can be shown
    assert isinstance(event.execution_id, str) and event.execution_id
    assert isinstance(event.event_id, str) and event.event_id
    assert isinstance(event.data, dict) and event.data["execution_id"] == event.execution_id
    json.dumps(event.data, allow_nan=False, ensure_ascii=False).encode("utf-8")
    event.execution_id.encode("utf-8")
    assert isinstance(event.hops, int) and event.hops >= 0
    assert RFC3339_SECONDS.match(iso_time(event.published_at)[:19] + "Z")
    return event


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(value=st.one_of(st.binary(max_size=300), HOSTILE_JSON.map(dumps), BAD_RECORDS,
                       good_records().map(lambda g: g[1]), st.dictionaries(ANY_TEXT, HOSTILE_JSON).map(dumps)))
def test_decode_event_returns_an_event_or_raises_bad_message_for_any_bytes(value: bytes) -> None:
    _check_decoded(value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bad=BAD_RECORDS, good=good_records())
def test_the_bad_records_are_refused_and_the_good_ones_read(bad: bytes, good: tuple[str, bytes]) -> None:
    assert _check_decoded(bad) is None
    execution_id, value = good
    event = _check_decoded(value)
    assert event is not None and event.execution_id == execution_id


@settings(max_examples=500, deadline=None)
@given(epoch=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10 ** 20, 10 ** 20),
       text=st.text(max_size=40) | ABSURD_TIMES)
def test_time_parsing_and_rendering_are_total(epoch: float, text: str) -> None:
    assert RFC3339_SECONDS.match(iso_time(epoch)[:19] + "Z")
    try:
        parsed = parse_iso_time(text)
    except ValueError:
        return
    assert RFC3339_SECONDS.match(iso_time(parsed)[:19] + "Z")
    assert 1 <= int(iso_time(parsed)[:4]) <= 9999


def test_decode_refuses_the_records_that_used_to_stop_a_worker() -> None:
    cases = {
        b"[" * 100_000: "nested more than",
        b'{"execution_id": "\\ud800"}': "lone surrogate",
        b'{"execution_id": "x", "text": "a\\udfffb"}': "lone surrogate",
        dumps({**_envelope(), "time": 5}): "'time' must be a string",
        b'{"execution_id": "x", "n": NaN}': "NaN is not a JSON number",
        dumps({**_envelope(), "data": [1]}): "not an object",
        dumps({**_envelope(), "executionid": 3}): "no execution_id",
    }
    for value, reason in cases.items():
        with pytest.raises(BadMessage, match=reason):
            decode_event(value, "f")
    before = time.time()
    event = decode_event(dumps({**_envelope("old"), "time": "0001-01-01T00:00:00+14:00"}), "f")
    assert before <= event.published_at <= time.time()  # out of range: the time of reading
    assert decode_event(b'{"execution_id": "ok", "emoji": "\\ud83d\\ude00"}', "f").data["emoji"] == "\U0001F600"


# -- the worker goes on ----------------------------------------------------------------------------
def _dead_letters(engine: Engine) -> list[dict[str, Any]]:
    transport = engine.transport
    assert isinstance(transport, LocalTransport)
    return transport.dead_letters("step")


def test_a_worker_survives_any_records_and_settles_every_valid_execution(make_workflow, tmp_path) -> None:
    path = make_workflow(HOSTILE, {"step.py": STEP})
    engine = Engine(path, state_dir=tmp_path / ".xflow", transport="local", provider="local", tracker="sqlite",
                    options={"provider": {"backoff_seconds": 0.01}})
    engine.setup()
    bad_total = good_total = 0

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(batch=batches(), keys=st.lists(KEYS, min_size=61, max_size=61))
    def run(batch: list[tuple[str, Any]], keys: list[str]) -> None:
        nonlocal bad_total, good_total
        before = len(_dead_letters(engine))
        bad = [value for kind, value in batch if kind == "bad"]
        good = [item for kind, item in batch if kind == "good"]
        records = [Record(key, value if kind == "bad" else value[1]) for key, (kind, value) in zip(keys, batch, strict=False)]
        engine.transport.publish("Start", records)
        deadline = time.monotonic() + 120
        last = 0.0
        pending = {execution_id for execution_id, _ in good}

        def settled() -> bool:
            nonlocal last
            if time.monotonic() - last < 0.1:
                return False
            last = time.monotonic()
            pending.difference_update([e for e in pending if engine.track(e)["status"] != "running"])
            return (not pending and len(_dead_letters(engine)) >= before + len(bad)) or time.monotonic() > deadline

        engine.work(until=settled)  # returns only through `until`: a record that raised would end the test here
        assert time.monotonic() <= deadline, f"not settled: {len(pending)} executions running"
        for execution_id, _ in good:
            summary = engine.track(execution_id)
            assert summary["status"] == "succeeded", summary
            assert [(e["name"], e["count"]) for e in summary["events"]] == [("Start", 1), ("Done", 1)]
            assert all(RFC3339_SECONDS.match(e["first_published_at"]) for e in summary["events"])
            assert engine.result(execution_id) == {"seen": execution_id, "execution_id": execution_id}
        letters = _dead_letters(engine)[before:]
        assert collections.Counter(bytes(x["value"]) for x in letters) == collections.Counter(bad)
        assert all(isinstance(x["reason"], str) and x["reason"] for x in letters)
        bad_total += len(bad)
        good_total += len(good)

    try:
        run()
    finally:
        engine.close()
    print(f"{bad_total} bad records dead-lettered by the worker, {good_total} valid executions succeeded")
    assert bad_total >= 1000 and good_total >= 300, (bad_total, good_total)  # 25 batches of 45 (46) bad, 15 valid


class _ContentSensitiveTracker(SqliteTrackerStore):
    """A tracker that breaks on some content (a bug of its own), or loses its database (an outage)."""

    def record_event(self, record: EventRecord) -> None:
        if record.data and record.data.get("explode"):
            raise TypeError("this tracker cannot store 'explode'")
        if record.data and record.data.get("outage"):
            raise sqlite3.OperationalError("disk I/O error")
        super().record_event(record)


def test_a_record_that_breaks_settling_is_dead_lettered_but_an_outage_stops_the_worker(make_workflow, tmp_path):
    path = make_workflow(HOSTILE, {"step.py": STEP})
    state = tmp_path / ".xflow"
    Engine(path, state_dir=state, transport="local", provider="local", tracker="sqlite").setup()
    tracker = _ContentSensitiveTracker(PluginContext("hostile", {}, state))
    with Engine(path, state_dir=state, transport="local", provider="local", tracker=tracker) as engine:
        engine.transport.publish("Start", [Record("k", b'{"execution_id": "boom", "explode": true}'),
                                           Record("k", b'{"execution_id": "fine"}')])
        engine.work(until=lambda: engine.track("fine")["status"] != "running" and len(_dead_letters(engine)) == 1)
        assert engine.track("fine")["status"] == "succeeded"
        (letter,) = _dead_letters(engine)
        assert "cannot settle the record" in letter["reason"] and "TypeError: this tracker cannot store" in letter["reason"]
        failed = engine.track("boom")["events"][0]["subscribers"][0]
        assert failed["state"] == "failed" and "cannot store 'explode'" in failed["error"]

        # an unreachable backend is not the record's fault: the worker stops, the record waits for the next one
        engine.transport.publish("Start", [Record("k", b'{"execution_id": "down", "outage": true}')])
        with pytest.raises((sqlite3.OperationalError, XflowError)):
            engine.work(until=lambda: False)
        assert len(_dead_letters(engine)) == 1


class _PickyTransport(LocalTransport):
    """A transport that cannot keep some dead letters (a bug of its own)."""

    def dead_letter(self, group: str, delivery: Any, reason: str) -> None:
        if b"unkeepable" in delivery.value:
            raise ValueError("this transport cannot keep that")
        super().dead_letter(group, delivery, reason)


def test_a_dead_letter_the_transport_cannot_keep_does_not_stop_the_worker(make_workflow, tmp_path, caplog):
    path = make_workflow(HOSTILE, {"step.py": STEP})
    state = tmp_path / ".xflow"
    Engine(path, state_dir=state, transport="local", provider="local", tracker="sqlite").setup()
    transport = _PickyTransport(PluginContext("hostile", {}, state))
    with Engine(path, state_dir=state, transport=transport, provider="local", tracker="sqlite") as engine:
        engine.transport.publish("Start", [Record("k", b"unkeepable junk"), Record("k", b"kept junk"),
                                           Record("k", b'{"execution_id": "fine"}')])
        engine.work(until=lambda: engine.track("fine")["status"] != "running")
        assert engine.track("fine")["status"] == "succeeded"
        assert [bytes(x["value"]) for x in _dead_letters(engine)] == [b"kept junk"]
    assert "could not keep the dead letter" in caplog.text


POISON = [
    b"[" * 100_000,
    b'{"execution_id": "\\ud800", "n": 1}',
    b'{"execution_id": "surrogate-data", "text": "\\udc00"}',
    json.dumps({**_envelope("time-not-a-string"), "time": 1700000000}).encode(),
    f'{{"execution_id": "huge", "n": {HUGE_INT}}}'.encode() if HUGE_INT_IS_BAD else b'{"n": 1}',
    b'{"execution_id": "nan", "n": NaN}',
]


def _track(cli, path: Path, execution_id: str) -> dict[str, Any]:
    done = cli("track", path, execution_id, "--output", "json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def test_xflow_worker_process_survives_poison_and_track_renders_absurd_times(cli, make_workflow, tmp_path):
    path = make_workflow(HOSTILE, {"step.py": STEP})
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite")
    transport = LocalTransport(PluginContext("hostile", {}, tmp_path / ".xflow"))
    ancient = json.dumps({**_envelope("ancient"), "time": "0001-01-01T00:00:00+14:00"}).encode()
    future = json.dumps({**_envelope("[/bold]future"), "time": "9999-12-31T23:59:59-14:00"}).encode()
    published = time.time()
    # one partition (one key): every good record comes after the poison
    transport.publish("Start", [Record("same", v) for v in [*POISON, ancient, future, b'{"execution_id": "after"}']])
    worker = cli.popen("worker", path)
    try:
        deadline = time.monotonic() + 60
        while any(_track(cli, path, e)["status"] == "running" for e in ("ancient", "[/bold]future", "after")):
            assert worker.poll() is None, (tmp_path / "proc-0.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    reasons = [x["reason"] for x in transport.dead_letters("step")]
    assert len(reasons) == len(POISON)
    for phrase in ("nested more than", "lone surrogate in $.execution_id", "lone surrogate in $.text",
                   "'time' must be a string", "NaN is not a JSON number"):
        assert any(phrase in r for r in reasons), (phrase, reasons)
    for execution_id in ("ancient", "[/bold]future"):
        summary = _track(cli, path, execution_id)
        assert summary["status"] == "succeeded"
        # a time outside years 1..9999 is replaced by the time the worker read the record
        shown = summary["events"][0]["first_published_at"]
        assert published - 1 <= parse_iso_time(shown) <= time.time() + 1, shown
        human = cli("track", path, execution_id)
        assert human.returncode == 0, human.stderr
        assert execution_id in human.stdout and "Traceback" not in human.stderr
    # times stored before (or by another tracker writer) outside what datetime can show still render
    tracker = SqliteTrackerStore(PluginContext("hostile", {}, tmp_path / ".xflow"))
    tracker.record_event(EventRecord("stored", "e-stored", "Start", -1e15, "xflow/hostile", {"execution_id": "stored"}))
    tracker.record_event(EventRecord("stored", "e-done", "Done", float("nan"), "xflow/hostile/step", {}))
    tracker.close()
    stored = _track(cli, path, "stored")
    assert stored["events"][0]["first_published_at"] == "0001-01-02T00:00:00Z"
    assert RFC3339_SECONDS.match(stored["events"][1]["first_published_at"])
    assert cli("track", path, "stored").returncode == 0
    # the offsets moved past the poison: a new worker finds nothing to set aside
    again = cli.popen("worker", path)
    time.sleep(2.0)
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=20) == 0
    assert len(transport.dead_letters("step")) == len(reasons)
    transport.close()


# -- a cycle stops at the hop limit ----------------------------------------------------------------
CYCLE = """
workflow_id: cycle
general: {hop_limit: 4, retries: 0}
lambdas:
  - {name: ping, source: steps.py, handler: ping, publishes: [Pong]}
  - {name: pong, source: steps.py, handler: pong, publishes: [Ping]}
subscriptions:
  - {name: Ping, subscribers: [ping]}
  - {name: Pong, subscribers: [pong]}
"""

CYCLE_STEPS = """
def ping(event, ctx):
    return {"n": event.get("n", 0) + 1}

def pong(event, ctx):
    return {"n": event["n"] + 1}
"""


def test_a_cycle_stops_at_the_hop_limit_and_track_says_why(cli, make_workflow, tmp_path):
    path = make_workflow(CYCLE, {"steps.py": CYCLE_STEPS})
    started = time.monotonic()
    done = cli("run", path, "--output", "json", "--timeout", "60")
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 50  # it stopped; it did not run until the timeout
    summary = json.loads(done.stdout)
    assert summary["status"] == "failed"
    # hops 0..4 are handled (Ping 0, Pong 1, Ping 2, Pong 3, Ping 4); Pong at hop 5 is refused
    assert [(e["name"], e["count"], e["state"]) for e in summary["events"]] == [("Ping", 3, "processed"),
                                                                                 ("Pong", 3, "failed")]
    assert summary["result"] == {"n": 5, "execution_id": summary["execution_id"]}
    pong = summary["events"][1]["subscribers"][0]
    expected = f"execution {summary['execution_id']} exceeded the hop limit of 4 events; a cycle?"
    assert pong["state"] == "failed" and pong["error"].startswith(expected)
    human = cli("track", path, summary["execution_id"])
    assert human.returncode == 1
    assert "exceeded the hop limit of 4 events; a cycle?" in " ".join(human.stdout.split())
    transport = LocalTransport(PluginContext("cycle", {}, tmp_path / ".xflow"))
    (letter,) = transport.dead_letters("pong")
    assert letter["reason"].startswith(expected) and json.loads(letter["value"])["xflowhops"] == 5
    transport.close()


# -- remote sources on the local provider -------------------------------------------------------------
GIT_FLOW = """
workflow_id: from_git
lambdas:
  - {name: shout, source: "git+file://REPO@main#path=handler.py", handler: shout, publishes: [Shouted]}
subscriptions:
  - {name: Said, subscribers: [shout]}
workflows:
  - {id: from_git, flow: [Said, Shouted]}
"""


def test_a_git_source_runs_on_the_embedded_backend(cli, make_workflow, tmp_path):
    repo = tmp_path / "code" / "repo.git"
    repo.mkdir(parents=True)
    (repo / "handler.py").write_text("def shout(event, ctx):\n    return {'text': event['text'].upper() + '!'}\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    for args in (["init", "--quiet"], ["add", "handler.py"], ["commit", "--quiet", "-m", "handler"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    path = make_workflow(GIT_FLOW.replace("REPO", str(repo)))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / ".xflow" / "from_git" / "sources" / f"fetched-{gone.stdout.strip()}-0000" / "shout"
    stale.mkdir(parents=True)  # left by a worker that was killed
    summary = cli.json("run", path, "--data", '{"text": "hello"}')
    assert summary["status"] == "succeeded"
    assert summary["result"]["text"] == "HELLO!"
    # each worker process fetches into a folder of its own, removed when it finishes (or by the next one)
    sources = tmp_path / ".xflow" / "from_git" / "sources"
    assert sources.is_dir() and not list(sources.iterdir())


try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

S3_FLOW = """
workflow_id: from_s3
lambdas:
  - {name: shout, source: "s3://BUCKET/code/handler.py", handler: shout, publishes: [Shouted]}
subscriptions:
  - {name: Said, subscribers: [shout]}
workflows:
  - {id: from_s3, flow: [Said, Shouted]}
"""


@pytest.mark.aws
def test_an_s3_source_runs_on_the_embedded_backend(aws_endpoint, cli, make_workflow):  # noqa: F811
    import uuid

    import boto3

    bucket = f"code-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="code/handler.py",
                  Body=b"def shout(event, ctx):\n    return {'text': event['text'][::-1]}\n")
    path = make_workflow(S3_FLOW.replace("BUCKET", bucket))
    summary = cli.json("run", path, "--data", '{"text": "abc"}')
    assert summary["status"] == "succeeded" and summary["result"]["text"] == "cba"
