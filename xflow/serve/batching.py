"""Group commit for ``xflow serve``'s publish routes: concurrent requests' events written together, per workflow.

A request hands its event to its workflow's :class:`PublishBatcher` and waits. At most one write is in flight per
workflow (in a worker thread: the backends block); events that arrive meanwhile wait and go together in the next write,
:meth:`Engine.publish_many <xflow.core.engine.Engine.publish_many>`: one transport append per event name and one
tracker transaction for all of them. Nothing waits on purpose: a request alone is written at once, as before; under
load the writes simply grow. Each request still gets its own execution id or its own error, and is answered only once
the write holding its event has returned. A write that fails past that (outcomes that do not match its events, the
writer cancelled) answers each of its requests, and those still waiting, with an error: none waits forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xflow.core.engine import Engine

log = logging.getLogger("xflow.serve")

#: the most events one write takes (more wait for the next one); transports split appends to their own limits
MAX_BATCH = 256

Blocking = Callable[..., Awaitable[Any]]


@dataclass(eq=False)
class _Waiting:
    event: str
    data: Mapping[str, Any]
    execution_id: str | None
    answer: asyncio.Future[str] = field(repr=False)


class PublishBatcher:
    """One workflow's publishes over HTTP, grouped: ``await batcher.publish(event, data, execution_id)`` returns the
    execution id or raises what refused the event, as ``Engine.publish`` would. ``blocking(call, *args)`` runs a
    blocking call off the event loop. ``writes`` and ``written`` count the writes made and the events they held."""

    def __init__(self, engine: Engine, blocking: Blocking, max_batch: int = MAX_BATCH) -> None:
        self.engine, self._blocking, self.max_batch = engine, blocking, max(1, max_batch)
        self._waiting: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None
        self.writes = self.written = 0

    async def publish(self, event: str, data: Mapping[str, Any], execution_id: str | None = None) -> str:
        loop = asyncio.get_running_loop()
        waiting = _Waiting(event, data, execution_id, loop.create_future())
        self._waiting.append(waiting)
        if self._writer is None:
            self._writer = loop.create_task(self._write_all(), name=f"xflow-serve publish {self.engine.workflow.id}")
        # a request cancelled meanwhile cancels only its answer: its event, handed over, is written all the same
        return await waiting.answer

    async def drain(self) -> None:
        """Wait until every event handed over so far is written (the server's shutdown calls this)."""
        while self._writer is not None:
            await asyncio.wait({self._writer})  # whatever ended it (its requests are answered either way)

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
                await self._write(batch)
        finally:
            self._writer = None
            # only when the loop was cut short (the writer cancelled): these events were never handed to a write
            left, self._waiting = self._waiting, []
            _fail(left, "the server stopped writing events before this one was written")

    async def _write(self, batch: list[_Waiting]) -> None:
        items = [(w.event, w.data, w.execution_id) for w in batch]
        try:
            try:
                outcomes: list[str | BaseException] = list(await self._blocking(self.engine.publish_many, items))
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"Engine.publish_many gave {len(outcomes)} outcomes for {len(batch)} events")
            except Exception as exc:  # noqa: BLE001 - each request answers it (a 500, logged by the app)
                outcomes = [exc] * len(batch)
            self.writes += 1
            self.written += len(batch)
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if waiting.answer.done():
                    continue
                if isinstance(outcome, BaseException):
                    waiting.answer.set_exception(outcome)
                else:
                    waiting.answer.set_result(outcome)
        finally:
            # the write was cancelled (or failed past the above): no request waits forever; whether its event was
            # written is not known (a cancelled write may still finish in its thread)
            _fail(batch, "the write holding this event was interrupted; whether it was written is not known")


def _fail(waiting: list[_Waiting], message: str) -> None:
    """Answer each request of ``waiting`` not answered yet with a RuntimeError (the app's 500)."""
    for one in waiting:
        if not one.answer.done():
            one.answer.set_exception(RuntimeError(message))
