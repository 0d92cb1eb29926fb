"""Group commit of xflow serve's publishes: concurrent requests' events are written together, each keeps its own outcome.

``Engine.publish_many`` through the public Python API (one transport append per event name and one tracker write for
all; a refused event gets its own error and the others are written; an unavailable backend fails them all);
``PublishBatcher`` over a real engine (requests arriving while a write is in flight go together in the next one; a
write cancelled, or giving a wrong number of outcomes, still answers every request, the latter with a 500); and
through a real ``xflow serve`` process: concurrent requests share appends, an invalid request among them fails alone,
and stopping the server while batches are being written loses no answered event and leaves nothing half-written.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_testing import Server, start_server, write_shop

from xflow import Engine
from xflow.core.errors import BackendUnavailable, XflowError
from xflow.serve.batching import PublishBatcher

#: the local transport's limit in these workflows: small, so a body under it can make a record over it
RECORD_LIMIT = 2000
SMALL_RECORDS = f"""
transport:
  options: {{max_record_bytes: {RECORD_LIMIT}}}
"""


def _engine(tmp_path: Path) -> Engine:
    engine = Engine(write_shop(tmp_path / "flows", SMALL_RECORDS), state_dir=tmp_path / ".xflow")
    engine.setup()
    return engine


def _count_calls(target: Any, name: str) -> list[int]:
    """Wrap ``target.name`` so each call appends its batch size to the returned list."""
    calls: list[int] = []
    original = getattr(target, name)

    def counted(*args: Any) -> Any:
        calls.append(len(args[-1]))
        return original(*args)

    setattr(target, name, counted)
    return calls


def _published_count(engine: Engine, execution_id: str, event: str = "Placed") -> int:
    summary = engine.track(execution_id, known=True)
    return int(next(e["count"] for e in summary["events"] if e["name"] == event))


def _appends(engine: Engine) -> tuple[int, int, set[str]]:
    """From the event log itself: records of Placed, distinct append times among them (one per append), their keys."""
    with sqlite3.connect(f"file:{engine.transport.path}?mode=ro", uri=True) as db:  # type: ignore[attr-defined]
        rows = db.execute("SELECT key, appended_at FROM records WHERE stream = ?",
                          (engine.transport.stream_name("Placed"),)).fetchall()
    return len(rows), len({at for _, at in rows}), {key for key, _ in rows}


# -- Engine.publish_many ------------------------------------------------------------------------------------------------
def test_publish_many_writes_one_append_per_event_name_and_one_tracker_write(tmp_path: Path) -> None:
    with _engine(tmp_path) as engine:
        appends = _count_calls(engine.transport, "publish")
        tracker_writes = _count_calls(engine.tracker, "record_events")
        items = [("Placed", {"order": n}, None) for n in range(8)] + [("Charged", {"order": 1}, "given-1"),
                                                                      ("Placed", {"order": 9, "execution_id": "given-2"},
                                                                       None)]
        outcomes = engine.publish_many(items)
        assert sorted(appends) == [1, 9] and tracker_writes == [10]
        assert all(isinstance(o, str) for o in outcomes) and len(set(outcomes)) == 10
        assert outcomes[8:] == ["given-1", "given-2"]
        for outcome, (event, _, _) in zip(outcomes, items, strict=True):
            assert _published_count(engine, str(outcome), event) == 1


def test_publish_many_gives_a_refused_event_its_own_error_and_writes_the_others(tmp_path: Path) -> None:
    with _engine(tmp_path) as engine:
        appends = _count_calls(engine.transport, "publish")
        items: list[tuple[str, dict[str, Any], str | None]] = [
            ("Placed", {"order": 1}, None),
            ("Refunded", {"order": 2}, None),                          # no such event
            ("Placed", {"order": 3, "execution_id": 7}, None),         # not a string
            ("Placed", {"order": 4, "execution_id": "a"}, "b"),        # contradicts
            ("Placed", {"order": 5, "note": "x" * RECORD_LIMIT}, None),  # checks pass; the transport refuses the record
            ("Placed", {"order": 6}, "six"),
        ]
        outcomes = engine.publish_many(items)
        errors = {i: str(o) for i, o in enumerate(outcomes) if isinstance(o, XflowError)}
        assert sorted(errors) == [1, 2, 3, 4]
        assert "no event 'Refunded'" in errors[1] and "must be a string" in errors[2] and "contradicts" in errors[3]
        assert "over the local transport's limit" in errors[4]
        assert isinstance(outcomes[0], str) and outcomes[5] == "six"
        # the grouped append (3 events) failed as a whole; each was then written alone and got its own outcome
        assert appends == [3, 1, 1, 1]
        for execution_id in (outcomes[0], "six"):
            assert _published_count(engine, str(execution_id)) == 1
        records, _, keys = _appends(engine)
        assert records == 2 and keys == {outcomes[0], "six"}


def test_publish_many_fails_every_event_when_a_backend_is_unavailable(tmp_path: Path) -> None:
    with _engine(tmp_path) as engine:
        def unavailable(event: str, records: Any) -> None:
            raise BackendUnavailable("the event log is busy")

        engine.transport.publish = unavailable  # type: ignore[method-assign]
        outcomes = engine.publish_many([("Placed", {"order": 1}, None), ("Nope", {}, None), ("Placed", {}, None)])
        assert [type(o) for o in outcomes] == [BackendUnavailable, XflowError, BackendUnavailable]


# -- PublishBatcher -----------------------------------------------------------------------------------------------------
def test_requests_arriving_while_a_write_is_in_flight_are_written_together(tmp_path: Path) -> None:
    with _engine(tmp_path) as engine:
        release = threading.Event()
        first_write_started = threading.Event()

        async def blocking(call: Callable[..., Any], *args: Any) -> Any:
            def held() -> Any:
                first_write_started.set()
                assert release.wait(30)
                return call(*args)
            return await asyncio.get_running_loop().run_in_executor(None, held)

        async def scenario() -> tuple[list[Any], PublishBatcher]:
            batcher = PublishBatcher(engine, blocking)
            first = asyncio.create_task(batcher.publish("Placed", {"order": 0}))
            while not first_write_started.is_set():
                await asyncio.sleep(0.01)
            later = [asyncio.create_task(batcher.publish("Placed", {"order": n})) for n in range(1, 21)]
            # refused alone: its data's execution id contradicts the one given
            later.append(asyncio.create_task(batcher.publish("Placed", {"order": 21, "execution_id": "y"}, "x")))
            later.append(asyncio.create_task(batcher.publish("Placed", {"order": 22}, "gone")))
            await asyncio.sleep(0.05)
            later[-1].cancel()  # its client went away: the event, handed over, is written all the same
            release.set()
            answers = await asyncio.gather(first, *later, return_exceptions=True)
            await batcher.drain()
            return answers, batcher

        answers, batcher = asyncio.run(scenario())
        assert (batcher.writes, batcher.written) == (2, 23)
        ids = [a for a in answers[:21] if isinstance(a, str)]
        assert len(set(ids)) == 21
        assert isinstance(answers[21], XflowError) and "contradicts" in str(answers[21])
        assert isinstance(answers[22], asyncio.CancelledError)
        for execution_id in [*ids, "gone"]:
            assert _published_count(engine, execution_id) == 1


def test_a_cancelled_write_answers_its_request_and_those_waiting_behind_it(tmp_path: Path) -> None:
    """The writer task cancelled mid-write (the server's loop shutting down): the request in the write and those queued
    behind it get an error each instead of waiting forever, and drain() returns. The events never handed to a write are
    not written; the one in the write finishes in its thread (hence "not known" in its error)."""
    with _engine(tmp_path) as engine:
        release = threading.Event()
        write_started = threading.Event()

        async def blocking(call: Callable[..., Any], *args: Any) -> Any:
            def held() -> Any:
                write_started.set()
                assert release.wait(30)
                return call(*args)
            return await asyncio.get_running_loop().run_in_executor(None, held)

        async def scenario() -> list[Any]:
            batcher = PublishBatcher(engine, blocking)
            first = asyncio.create_task(batcher.publish("Placed", {"order": 0}, "in-the-write"))
            while not write_started.is_set():
                await asyncio.sleep(0.01)
            queued = [asyncio.create_task(batcher.publish("Placed", {"order": n}, f"queued-{n}")) for n in range(1, 4)]
            await asyncio.sleep(0.05)
            (writer,) = [t for t in asyncio.all_tasks() if t.get_name() == "xflow-serve publish shop"]
            writer.cancel()
            try:
                answers = await asyncio.wait_for(asyncio.gather(first, *queued, return_exceptions=True), 10)
                await asyncio.wait_for(batcher.drain(), 10)
            finally:
                release.set()
            return answers

        answers = asyncio.run(scenario())
        assert [type(a) for a in answers] == [RuntimeError] * 4
        assert "interrupted; whether it was written is not known" in str(answers[0])
        assert all("stopped writing events before this one was written" in str(a) for a in answers[1:])
        assert set(engine.recent_executions(10)) == {"in-the-write"}


def test_a_write_giving_the_wrong_number_of_outcomes_answers_each_request_with_a_500(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Engine.publish_many's outcomes do not match its events one to one: no request is left waiting; each gets the
    app's one-line 500 JSON, and the log says why."""
    from xflow.serve.app import create_app

    with _engine(tmp_path) as engine:
        publish_many = engine.publish_many
        engine.publish_many = lambda items: publish_many(items)[:-1]  # type: ignore[method-assign]
        app = create_app([engine])

        async def scenario() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                posts = [client.post("/workflows/shop/events/Placed", json={"order": n}) for n in range(6)]
                return list(await asyncio.wait_for(asyncio.gather(*posts), 10))

        answers = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [500] * 6
    assert {a.text for a in answers} == {'{"error":"the server failed on this request; its log says why","hint":null}'}
    assert "outcomes for" in caplog.text and "Engine.publish_many gave" in caplog.text


# -- through xflow serve ------------------------------------------------------------------------------------------------
async def _post_many(url: str, bodies: list[tuple[dict[str, Any], dict[str, str]]], clients: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(clients)

        async def one(body: dict[str, Any], params: dict[str, str]) -> httpx.Response:
            async with gate:
                return await client.post("/workflows/shop/events/Placed", json=body, params=params)

        return list(await asyncio.gather(*(one(b, p) for b, p in bodies)))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("serve-batching")
    flow = write_shop(folder / "flows", SMALL_RECORDS)
    server = start_server(folder, flow, "--no-worker")
    try:
        yield server, folder
    finally:
        assert server.stop() == 0


def test_concurrent_requests_share_appends_and_each_gets_its_own_execution(served: tuple[Server, Path]) -> None:
    server, folder = served
    answers = asyncio.run(_post_many(server.url, [({"order": n, "batch": "shared"}, {}) for n in range(320)], 64))
    assert [a.status_code for a in answers] == [200] * 320
    ids = [a.json()["execution_id"] for a in answers]
    assert len(set(ids)) == 320
    with Engine(folder / "flows" / "shop.yaml", state_dir=folder / ".xflow") as engine:
        records, appends, keys = _appends(engine)
        assert set(ids) <= keys
        assert appends < records, "64 clients at once never shared an append"
        for execution_id in ids[::16]:
            assert _published_count(engine, execution_id) == 1


def test_an_invalid_request_among_concurrent_ones_fails_alone(served: tuple[Server, Path]) -> None:
    server, _ = served
    bodies: list[tuple[dict[str, Any], dict[str, str]]] = []
    for n in range(120):
        if n % 10 == 3:  # the query's execution id contradicts the body's: refused by publish's own checks
            bodies.append(({"order": n, "execution_id": f"body-{n}"}, {"execution_id": f"query-{n}"}))
        elif n % 10 == 7:  # under the body limit, but the event's record is over the transport's
            bodies.append(({"order": n, "note": "x" * (RECORD_LIMIT - 40)}, {}))
        else:
            bodies.append(({"order": n}, {"execution_id": f"fine-{n}"}))
    answers = asyncio.run(_post_many(server.url, bodies, 32))
    for n, answer in enumerate(answers):
        if n % 10 in (3, 7):
            assert answer.status_code == 400, answer.text
            message = answer.json()["error"]
            assert "\n" not in message
            assert ("contradicts" if n % 10 == 3 else "over the local transport's limit") in message
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"execution_id": f"fine-{n}"}


def test_stopping_the_server_while_batches_are_written_loses_no_answered_event(tmp_path: Path) -> None:
    flow = write_shop(tmp_path / "flows")
    server = start_server(tmp_path, flow, "--no-worker")
    answered: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()
    signalled: list[float] = []
    answered_after_signal: list[str] = []

    async def client(index: int) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            for n in range(10_000):
                if stop.is_set() and server.process.poll() is not None:
                    return
                try:
                    answer = await http.post("/workflows/shop/events/Placed", json={"order": n, "client": index})
                except httpx.HTTPError:
                    if server.process.poll() is not None or stop.is_set():
                        return
                    await asyncio.sleep(0.01)
                    continue
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    answered.append(answer.json()["execution_id"])
                    if signalled:
                        answered_after_signal.append(answered[-1])

    async def load() -> None:
        tasks = [asyncio.create_task(client(i)) for i in range(32)]
        deadline = time.monotonic() + 30
        while len(answered) < 300 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        server.process.send_signal(15)
        signalled.append(time.monotonic())
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

    asyncio.run(load())
    assert server.stop() == 0, server.output()[-3000:]
    assert len(answered) >= 300 and set(statuses) == {200}, (len(answered), set(statuses))
    assert answered_after_signal, "no request in flight when the server was told to stop was answered"
    assert "Traceback" not in server.output() and "ERROR" not in server.output()
    with Engine(flow, state_dir=tmp_path / ".xflow") as engine:
        records, appends, keys = _appends(engine)
        tracked = set(engine.recent_executions(records + 10))
        assert set(answered) <= keys, "an answered event is not in the event log"
        assert keys == tracked, "the event log and the tracker disagree: a write was cut in half"
        assert records == len(keys)
        assert appends < records
