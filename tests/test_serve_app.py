"""xflow serve's application rules that span workflows or its lifetime.

Through a real ``xflow serve`` process serving two workflows with different transport limits: ``POST /publish``
checks the body against the limit of the workflow its stream belongs to (413), and never reads more than the largest
limit served. In-process (``create_app``, driven by the ASGI lifespan protocol): stopping the application joins its
workers off the event loop, which keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from serve_testing import start_server, write_shop

from xflow import Engine

SHOP_LIMIT = 2000
DEPOT_LIMIT = 20_000
DEPOT_FLOW = f"""
workflow_id: depot
lambdas:
  - {{name: pack, source: shop.py, handler: ship}}
subscriptions:
  - {{event: Packed, subscribers: [pack]}}
transport:
  options: {{max_record_bytes: {DEPOT_LIMIT}}}
"""


def _publish_body(stream: str, execution_id: str, size: int) -> bytes:
    """A ``POST /publish`` body of exactly ``size`` bytes."""
    empty = json.dumps({"stream": stream, "event": {"execution_id": execution_id, "note": ""}}).encode()
    body = json.dumps({"stream": stream, "event": {"execution_id": execution_id, "note": "x" * (size - len(empty))}})
    assert len(body) == size
    return body.encode()


def test_publish_checks_the_body_against_its_own_workflows_limit(tmp_path: Path) -> None:
    shop = write_shop(tmp_path / "flows", f"transport:\n  options: {{max_record_bytes: {SHOP_LIMIT}}}\n")
    depot = tmp_path / "flows" / "depot.yaml"
    depot.write_text(textwrap.dedent(DEPOT_FLOW))
    server = start_server(tmp_path, shop, depot, "--no-worker")
    try:
        def post(body: bytes) -> Any:
            return server.post("/publish", content=body, headers={"Content-Type": "application/json"})

        # over shop's limit, under depot's: refused for shop before anything is published
        refused = post(_publish_body("Placed", "shop-big", 5000))
        assert refused.status_code == 413, refused.text
        assert refused.json()["error"] == f"the body is 5000 bytes; workflow 'shop''s transport takes at most {SHOP_LIMIT}"
        # the same size to depot's stream is published
        taken = post(_publish_body("Packed", "depot-big", 5000))
        assert taken.status_code == 200, taken.text
        assert taken.json() == {"execution_id": "depot-big", "workflow_id": "depot", "event": "Packed"}
        assert post(_publish_body("Placed", "shop-small", 500)).status_code == 200
        # over the largest limit served: refused unread, whatever stream it names (even none served)
        for stream in ("Packed", "NoSuchStream"):
            over = post(_publish_body(stream, "huge", DEPOT_LIMIT + 1))
            assert over.status_code == 413, over.text
            assert f"the body is {DEPOT_LIMIT + 1} bytes" in over.json()["error"]
    finally:
        assert server.stop() == 0
    with Engine(shop, state_dir=tmp_path / ".xflow") as engine:
        assert set(engine.recent_executions(10)) == {"shop-small"}
    with Engine(depot, state_dir=tmp_path / ".xflow") as engine:
        assert set(engine.recent_executions(10)) == {"depot-big"}


class _Worker:
    """Stands for a started Worker: its thread ends only once the event loop has run again after ``join`` began (so
    a join made on the loop itself waits in vain: ``loop_stood_still``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.joining = threading.Event()
        self.loop_ran = threading.Event()
        self.stopped: list[float] = []
        self.loop_stood_still: bool | None = None

    def stop(self, timeout: float) -> None:
        self.stopped.append(timeout)

    def join(self, timeout: float | None = None) -> None:
        self.joining.set()
        self.loop_stood_still = not self.loop_ran.wait(3)


def test_stopping_the_app_joins_its_workers_off_the_event_loop(tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    from xflow.serve.app import create_app

    engine = Engine(write_shop(tmp_path / "flows"), state_dir=tmp_path / ".xflow")
    engine.setup()
    worker = _Worker(engine)
    app = create_app([engine], workers=[worker], stop_timeout=7.0)  # type: ignore[list-item]

    async def lifespan() -> list[str]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sent: list[str] = []

        async def receive() -> dict[str, Any]:
            return await inbox.get()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])

        await inbox.put({"type": "lifespan.startup"})
        running = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
        while "lifespan.startup.complete" not in sent:
            await asyncio.sleep(0.01)
        await inbox.put({"type": "lifespan.shutdown"})
        while not worker.joining.is_set():
            await asyncio.sleep(0.005)
        worker.loop_ran.set()  # runs only if the loop is free while the worker is joined
        await asyncio.wait_for(running, 10)
        return sent

    with engine:
        sent = asyncio.run(lifespan())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert worker.stopped == [7.0]
    assert worker.loop_stood_still is False, "the event loop was blocked while the worker was joined"
