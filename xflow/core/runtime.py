"""How a handler is called, on every provider: event decoding, ids, the ``ctx`` object.

This module uses the standard library only and imports nothing from xflow, so that the
Lambda provider can ship it verbatim next to the user's code as the runtime shim's core.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SPEC_VERSION = "1.0"


class BadMessage(ValueError):
    """A record that is not an event: not JSON, not an object, or without ``execution_id``."""


class HandlerLoadError(ImportError):
    """The handler's source cannot be imported or does not define the handler."""


def new_event_id() -> str:
    return uuid.uuid4().hex


def derive_event_id(parent_event_id: str, function: str, index: int) -> str:
    """The id of the ``index``-th event ``function`` publishes while handling ``parent_event_id``.

    Deterministic, so a re-delivery after a crash republishes the same ids.
    """
    digest = hashlib.sha256(f"{parent_event_id}\x1f{function}\x1f{index}".encode()).hexdigest()
    return digest[:32]


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def encode_event(event: str, data: Mapping[str, Any], execution_id: str, event_id: str,
                 producer: str, published_at: float | None = None) -> bytes:
    """An xflow message: CloudEvents 1.0 attribute names plus ``execution_id`` at the top."""
    payload = dict(data)
    payload["execution_id"] = execution_id
    envelope = {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "type": event,
        "source": producer,
        "time": iso_time(time.time() if published_at is None else published_at),
        "datacontenttype": "application/json",
        "execution_id": execution_id,
        "data": payload,
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass
class DecodedEvent:
    event_id: str
    execution_id: str
    data: dict[str, Any]
    producer: str
    published_at: float


def decode_event(value: bytes, fallback_id: str) -> DecodedEvent:
    """Read a message. A foreign JSON object with ``execution_id`` is an event whose id is ``fallback_id``."""
    try:
        message = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadMessage(f"not a JSON document: {exc}") from None
    if not isinstance(message, dict):
        raise BadMessage(f"a JSON {type(message).__name__}, not an object")
    if message.get("specversion") and isinstance(message.get("data"), dict) and message.get("id"):
        data = dict(message["data"])
        execution_id = message.get("execution_id") or data.get("execution_id")
        event_id = str(message["id"])
        producer = str(message.get("source", ""))
        try:
            published_at = parse_iso_time(message["time"]) if message.get("time") else time.time()
        except ValueError:
            published_at = time.time()
    else:
        data = message
        execution_id = message.get("execution_id")
        event_id, producer, published_at = fallback_id, "external", time.time()
    if not isinstance(execution_id, str) or not execution_id:
        raise BadMessage("no execution_id (a non-empty string) in the event")
    data["execution_id"] = execution_id
    return DecodedEvent(event_id, execution_id, data, producer, published_at)


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class HandlerContext:
    """The ``ctx`` a handler receives."""

    execution_id: str
    event_name: str
    event_id: str
    attempt: int
    workflow_id: str
    function_name: str
    logger: logging.Logger
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def publish(self, event_name: str, data: Mapping[str, Any]) -> None:
        """Publish ``event_name`` once the handler returns successfully; ``execution_id`` is added."""
        if not isinstance(event_name, str) or not event_name:
            raise TypeError("ctx.publish needs an event name (a string)")
        if not isinstance(data, Mapping):
            raise TypeError(f"ctx.publish({event_name!r}, ...) needs a dict of data, got {type(data).__name__}")
        payload = dict(data)
        payload["execution_id"] = self.execution_id
        self.published.append((event_name, payload))


@dataclass
class HandlerOutcome:
    ok: bool
    published: list[tuple[str, dict[str, Any]]]
    logs: list[str]
    error: str | None
    duration: float


def call_handler(handler: Callable[..., Any], data: dict[str, Any], ctx: HandlerContext,
                 publishes: list[str]) -> HandlerOutcome:
    """Call ``handler(event, ctx)``; capture its log lines and printed output; never raise.

    A handler that returns a dict publishes it as its single declared ``publishes`` event.
    """
    list_handler = _ListHandler(ctx.logs)
    ctx.logger.addHandler(list_handler)
    stdout = io.StringIO()
    started = time.perf_counter()
    error = None
    try:
        with contextlib.redirect_stdout(stdout):
            result = handler(dict(data), ctx)
        if isinstance(result, Mapping):
            if len(publishes) != 1:
                raise TypeError(
                    f"handler returned a dict, but function {ctx.function_name!r} declares "
                    f"{len(publishes)} 'publishes' events (exactly one is needed to publish a returned dict)"
                )
            ctx.publish(publishes[0], result)
        elif result is not None:
            raise TypeError(f"handler returned {type(result).__name__}; return a dict or None")
    except Exception as exc:  # the user's code failed: report it, do not crash the worker
        error = f"{type(exc).__name__}: {exc}"
        ctx.logs.extend(traceback.format_exc().rstrip().splitlines())
    finally:
        ctx.logger.removeHandler(list_handler)
    printed = stdout.getvalue().splitlines()
    logs = printed + ctx.logs
    duration = time.perf_counter() - started
    if error:
        return HandlerOutcome(False, [], logs, error, duration)
    return HandlerOutcome(True, list(ctx.published), logs, None, duration)


_loaded_modules: dict[str, Any] = {}


def load_handler(source: Path, handler: str) -> Callable[..., Any]:
    """Import the handler from a ``.py`` file, or ``module.function`` from a folder."""
    source = Path(source)
    if source.is_dir():
        module_name, _, function_name = handler.rpartition(".")
        if not module_name:
            candidates = [p for p in (source / "handler.py", source / "main.py", source / "__init__.py") if p.exists()]
            if not candidates:
                raise HandlerLoadError(f"{source}: a folder source needs 'handler: module.function'")
            file = candidates[0]
        else:
            file = source.joinpath(*module_name.split(".")).with_suffix(".py")
            if not file.exists():
                file = source.joinpath(*module_name.split("."), "__init__.py")
        search_path = str(source)
    else:
        file, function_name = source, handler.rpartition(".")[2]
        search_path = str(source.parent)
    if not file.exists():
        raise HandlerLoadError(f"{file}: no such file")
    key = str(file.resolve())
    module = _loaded_modules.get(key)
    if module is None:
        name = "xflow_handler_" + hashlib.sha1(key.encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise HandlerLoadError(f"{file}: cannot be imported")
        module = importlib.util.module_from_spec(spec)
        added = search_path not in sys.path
        if added:
            sys.path.insert(0, search_path)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise HandlerLoadError(f"{file}: import failed: {type(exc).__name__}: {exc}") from exc
        _loaded_modules[key] = module
    function = getattr(module, function_name, None)
    if not callable(function):
        raise HandlerLoadError(f"{file}: defines no function {function_name!r}")
    return function
