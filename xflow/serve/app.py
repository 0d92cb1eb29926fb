"""The ASGI application of ``xflow serve`` (Starlette): JSON routes over Engines, xFlow's original routes, the web view.

Every engine call is the one the CLI makes (``Engine.publish`` after the same body checks as ``xflow publish``,
``Engine.track`` for the ``track -o json`` object, ``redrive_result`` for ``redrive -o json``), run in a worker thread
because the backends block; concurrent publishes to one workflow are written together (:mod:`xflow.serve.batching`).
Errors are JSON ``{"error", "hint"}``: 400 for what ``xflow`` would call a user mistake,
401 without the token, 403 for a cross-site write, 404 for an unknown workflow, event, stream, execution or route,
413 for a body over the transport's ``max_record_bytes``, 503 when a backend is unavailable; never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from xflow import __version__
from xflow.core.engine import UnknownExecutionError
from xflow.core.errors import BackendUnavailable, XflowError
from xflow.serve.batching import PublishBatcher
from xflow.serve.catalog import DEFAULT_LIMIT, describe_workflow, list_executions
from xflow.serve.graph_svg import render_svg
from xflow.serve.openapi import openapi_document
from xflow.serve.security import Gate

if TYPE_CHECKING:
    from xflow.core.engine import Engine
    from xflow.core.worker import Worker

log = logging.getLogger("xflow.serve")
STATIC = Path(__file__).parent / "static"


#: the threads that make the engines' blocking calls (asyncio's executor: lighter per call than anyio's to_thread)
_THREADS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="xflow-serve")


async def _blocking(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)`` in a thread of :data:`_THREADS`, awaited without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_THREADS, functools.partial(call, *args, **kwargs))


class ApiError(Exception):
    """A JSON error answer: ``status``, a one-line ``message`` and an optional ``hint``."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint


class Served:
    """The workflows one server serves, by id: each one's Engine, its streams and its body limit."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        self.engines: dict[str, Engine] = {}
        for engine in engines:
            if engine.workflow.id in self.engines:
                other = self.engines[engine.workflow.id].workflow.path
                raise XflowError(f"{engine.workflow.path} and {other} both define workflow {engine.workflow.id!r}",
                                 "serve each workflow id once (its workflow_id: or the file's name)")
            self.engines[engine.workflow.id] = engine
        self.streams: dict[str, tuple[Engine, str]] = {}
        self.by_event: dict[str, list[Engine]] = {}
        self.max_body: dict[str, int] = {}
        self.svg: dict[str, str] = {}
        self.batchers = {workflow_id: PublishBatcher(engine, _blocking) for workflow_id, engine in self.engines.items()}
        for engine in self.engines.values():
            transport = engine.transport
            self.max_body[engine.workflow.id] = int(transport.max_record_bytes)
            for event in engine.workflow.flow:
                self.streams[transport.stream_name(event)] = (engine, event)
                self.by_event.setdefault(event, []).append(engine)

    def engine(self, workflow_id: str) -> Engine:
        engine = self.engines.get(workflow_id)
        if engine is None:
            raise ApiError(404, f"no workflow {workflow_id!r} is served here",
                           f"served: {', '.join(sorted(self.engines)) or 'none'}")
        return engine

    def stream(self, name: str) -> tuple[Engine, str]:
        """The workflow and event of ``name``: a stream's name, or an event's name in exactly one served workflow."""
        if name in self.streams:
            return self.streams[name]
        engines = self.by_event.get(name, [])
        if len(engines) == 1:
            return engines[0], name
        if engines:
            raise ApiError(400, f"event {name!r} is in several served workflows "
                                f"({', '.join(e.workflow.id for e in engines)})",
                           "name its stream instead, or POST /workflows/{id}/events/{event}")
        raise ApiError(404, f"no stream or event {name!r} is served here",
                       f"streams: {', '.join(sorted(self.streams)) or 'none'}")


def create_app(engines: Sequence[Engine], *, token: str | None = None, loopback_hosts_only: bool = True,
               workers: Sequence[Worker] = (), stop_timeout: float = 10.0) -> Any:
    """The ASGI application for ``engines`` (one per workflow). With ``token``, requests need it (see
    :mod:`xflow.serve.security`); ``workers`` (started by the caller) are stopped when the application stops."""
    served = Served(engines)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for batcher in served.batchers.values():
                await batcher.drain()
            for worker in workers:
                await _blocking(worker.stop, stop_timeout)
            for worker in workers:
                try:
                    await _blocking(worker.join)  # off the event loop: it waits for the worker's thread
                except Exception as exc:  # noqa: BLE001 - reported, the server is stopping anyway
                    log.error("the worker of %s stopped with an error: %s", worker.engine.workflow.id, exc)

    routes = _routes(served)
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        ApiError: _api_error, XflowError: _xflow_error, HTTPException: _http_error, Exception: _internal_error})
    app.state.served = served
    return Gate(app, token, loopback_hosts_only=loopback_hosts_only and token is None)


def _routes(served: Served) -> list[Any]:
    async def ping(request: Request) -> Response:
        return JSONResponse({"name": "xFlow", "version": __version__})

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def docs(request: Request) -> Response:
        return FileResponse(STATIC / "docs.html")

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(list(served.engines)))

    async def workflows(request: Request) -> Response:
        return JSONResponse({"workflows": [
            {"workflow_id": e.workflow.id, "file": e.workflow.path.name, "plugins": e.plugin_names(),
             "flow": list(e.workflow.flow), "functions": list(e.workflow.functions)} for e in served.engines.values()]})

    async def workflow(request: Request) -> Response:
        engine = served.engine(request.path_params["workflow_id"])
        return JSONResponse(await _blocking(describe_workflow, engine))

    async def graph(request: Request) -> Response:
        engine = served.engine(request.path_params["workflow_id"])
        if engine.workflow.id not in served.svg:
            served.svg[engine.workflow.id] = render_svg(engine.workflow)
        return Response(served.svg[engine.workflow.id], media_type="image/svg+xml")

    async def publish_event(request: Request) -> Response:
        engine = served.engine(request.path_params["workflow_id"])
        event = request.path_params["event"]
        if event not in engine.workflow.flow:
            raise ApiError(404, f"workflow {engine.workflow.id!r} has no event {event!r}",
                           f"its events are: {', '.join(engine.workflow.flow)}")
        data = await _json_body(request, served.max_body[engine.workflow.id], "the body")
        execution_id = request.query_params.get("execution_id") or None
        published = await served.batchers[engine.workflow.id].publish(event, data, execution_id)
        return JSONResponse({"execution_id": published})

    async def executions(request: Request) -> Response:
        engine = served.engine(request.path_params["workflow_id"])
        query = request.query_params
        limit = _whole_number(query.get("limit"), "limit", DEFAULT_LIMIT)
        listing = await _blocking(list_executions, engine, query.get("status") or None, limit,
                                          query.get("cursor") or None)
        return JSONResponse(listing)

    async def track(request: Request) -> Response:
        engine = served.engine(request.path_params["workflow_id"])
        summary = await _blocking(engine.track, request.path_params["execution_id"], known=True)
        return JSONResponse(summary)

    async def redrive(request: Request) -> Response:
        from xflow.cli_track import redrive_result

        engine = served.engine(request.path_params["workflow_id"])
        functions: list[str] = []
        raw = await _read_body(request, served.max_body[engine.workflow.id])
        if raw.strip():
            body = _parse_object(raw, "the body")
            functions = body.get("functions") or []
            if not isinstance(functions, list) or not all(isinstance(f, str) for f in functions):
                raise ApiError(400, "functions must be a list of function names")
            unknown = [f for f in functions if f not in engine.workflow.functions]
            if unknown:
                raise ApiError(400, f"workflow {engine.workflow.id!r} has no function {unknown[0]!r}",
                               f"its functions are: {', '.join(engine.workflow.functions)}")
        result = await _blocking(redrive_result, engine, request.path_params["execution_id"], functions)
        return JSONResponse(result)

    async def publish_original(request: Request) -> Response:
        # the stream is named in the body: read at most the largest limit served, then check its workflow's own
        raw = await _read_body(request, max(served.max_body.values(), default=1_000_000))
        body = _parse_object(raw, "the body")
        stream, data = body.get("stream"), body.get("event")
        if not isinstance(stream, str) or not stream:
            raise ApiError(400, "the body needs \"stream\": the name of an event or of its stream",
                           """send {"stream": "FileUploaded", "event": {"execution_id": "1", ...}}""")
        if not isinstance(data, dict):
            raise ApiError(400, "the body needs \"event\": a JSON object holding the event's data and execution_id")
        execution_id = data.get("execution_id")
        if not isinstance(execution_id, str) or not execution_id:
            raise ApiError(400, "the event has no execution_id (a non-empty string)",
                           """send {"stream": NAME, "event": {"execution_id": "1", ...}}""")
        engine, event = served.stream(stream)
        limit = served.max_body[engine.workflow.id]
        if len(raw) > limit:
            raise ApiError(413, f"the body is {len(raw)} bytes; workflow {engine.workflow.id!r}'s transport takes at "
                                f"most {limit}", "publish a reference (a path or URL) to the data instead")
        published = await served.batchers[engine.workflow.id].publish(event, data)
        return JSONResponse({"execution_id": published, "workflow_id": engine.workflow.id, "event": event})

    base = "/workflows/{workflow_id}"
    return [  # the publish route first: the hottest, matched without trying the others
        Route(base + "/events/{event}", publish_event, methods=["POST"]),
        Route("/", index, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/workflows", workflows, methods=["GET"]),
        Route(base, workflow, methods=["GET"]),
        Route(base + "/graph.svg", graph, methods=["GET"]),
        Route(base + "/executions", executions, methods=["GET"]),
        Route(base + "/executions/{execution_id}", track, methods=["GET"]),
        Route(base + "/executions/{execution_id}/redrive", redrive, methods=["POST"]),
        Route("/publish", publish_original, methods=["POST"]),
        Route("/track/workflows/{workflow_id}/executions/{execution_id}", track, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is {int(declared)} bytes; this workflow's transport takes at most {limit}",
                       "publish a reference (a path or URL) to the data instead")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is over {limit} bytes, the most this workflow's transport takes",
                           "publish a reference (a path or URL) to the data instead")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request, limit: int, what: str) -> dict[str, Any]:
    return _parse_object(await _read_body(request, limit), what)


def _parse_object(raw: bytes, what: str) -> dict[str, Any]:
    """The body as ``xflow publish`` takes DATA: the same checks, the same one-line messages."""
    from xflow.cli_input import json_object

    return json_object(raw, what, what, """send a JSON object, e.g. {"path": "in.txt"}""")


def _whole_number(text: str | None, name: str, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, not {text[:40]!r}") from None


def _error(status: int, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint}, status_code=status)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc.status, exc.message, exc.hint)


async def _xflow_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, XflowError)
    if isinstance(exc, UnknownExecutionError):
        return _error(404, exc.message, exc.hint)
    if isinstance(exc, BackendUnavailable):
        return _error(503, exc.message, exc.hint)
    return _error(400, exc.message, exc.hint)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error(404, f"no route {request.url.path!r}", "GET /openapi.json lists the routes")
    if exc.status_code == 405:
        answer = _error(405, f"{request.method} is not allowed on {request.url.path!r}")
        answer.headers.update(exc.headers or {})
        return answer
    return _error(exc.status_code, str(exc.detail))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc, exc_info=exc)
    return _error(500, "the server failed on this request; its log says why")
