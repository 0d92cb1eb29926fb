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
import math
import re
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

SPEC_VERSION = "1.0"
#: the CloudEvents extension attribute that carries the execution id (attribute names: a-z and 0-9 only)
EXECUTION_ID_ATTRIBUTE = "executionid"
#: the CloudEvents extension attribute that counts hops: 0 for an event published from outside,
#: the handled event's count + 1 for each event a handler publishes
HOPS_ATTRIBUTE = "xflowhops"
#: the hop limit when the workflow file sets none (``general: {hop_limit: N}``)
DEFAULT_HOP_LIMIT = 1000
#: the largest record :func:`decode_event` reads, in bytes
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: the deepest nesting of arrays and objects :func:`decode_event` accepts
MAX_NESTING = 256


class BadMessage(ValueError):
    """A record that is not an event: not JSON, not an object, without an execution id, or malformed otherwise."""


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


# -- times ------------------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: the times xflow keeps: years 1 to 9999 (with a day of margin, so that every UTC offset stays representable)
MIN_EPOCH = (datetime(1, 1, 2, tzinfo=timezone.utc) - _EPOCH).total_seconds()
MAX_EPOCH = (datetime(9999, 12, 30, tzinfo=timezone.utc) - _EPOCH).total_seconds()
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:[.,](\d+))?(?:([Zz])|([+-])(\d\d):?(\d\d))?", re.ASCII)


def iso_time(epoch: float) -> str:
    """RFC 3339 in UTC with microseconds. Total: a time outside years 1 to 9999 is shown at the nearest end of that
    range, and a value that is not a number as the epoch."""
    try:
        seconds = float(epoch)
    except (TypeError, ValueError, OverflowError):
        seconds = 0.0
    if math.isnan(seconds):
        seconds = 0.0
    seconds = min(max(seconds, MIN_EPOCH), MAX_EPOCH)
    moment = _EPOCH + timedelta(seconds=seconds)
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
            f"{moment.second:02d}.{moment.microsecond:06d}Z")


def parse_iso_time(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (or one ``datetime.fromisoformat`` reads; no offset means UTC).

    Raises ValueError for anything else, and for times outside years 1 to 9999.
    """
    if not isinstance(text, str):
        raise ValueError(f"a time must be a string, not {type(text).__name__}")
    text = text.strip()
    try:
        parsed: datetime | None = datetime.fromisoformat(text)  # the usual case, fast (Python 3.11+ reads "Z")
    except ValueError:
        parsed = None
    match = _RFC3339.fullmatch(text) if parsed is None else None
    try:
        if parsed is not None:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            epoch = (parsed - _EPOCH).total_seconds()
        elif match is not None:
            year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
            fraction, _, sign, offset_hours, offset_minutes = match.groups()[6:]
            # a leap second (:60) is read as the last instant of its minute
            moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=timezone.utc)
            epoch = (moment - _EPOCH).total_seconds() + (second - min(second, 59))
            if fraction:
                epoch += int(fraction[:9]) / 10 ** len(fraction[:9])
            if sign:
                if int(offset_hours) > 23 or int(offset_minutes) > 59:
                    raise ValueError(f"the offset of {text!r} is out of range")
                offset = int(offset_hours) * 3600 + int(offset_minutes) * 60
                epoch -= offset if sign == "+" else -offset
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            epoch = (parsed - _EPOCH).total_seconds()
    except (OverflowError, TypeError) as exc:
        raise ValueError(f"{text!r} is not a time: {exc}") from None
    if not MIN_EPOCH <= epoch <= MAX_EPOCH:
        raise ValueError(f"{text!r} lies outside the years 1 to 9999")
    return epoch


# -- the wire format --------------------------------------------------------------------------
_URI_UNSAFE = re.compile(r"%(?![0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]")


def source_uri(producer: str) -> str:
    """``producer`` as a CloudEvents ``source`` (a URI reference): characters a URI cannot hold are percent-encoded."""
    text = producer or "xflow"
    return _URI_UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")), text)


def encode_event(event: str, data: Mapping[str, Any], execution_id: str, event_id: str,
                 producer: str, published_at: float | None = None, hops: int = 0) -> bytes:
    """An xflow message: a CloudEvents 1.0 event in the structured JSON format.

    ``type`` is the event name, ``source`` the producer (``xflow/<workflow>/<function>``), the execution id the
    extension ``executionid`` (and ``execution_id`` inside ``data``), the hop count the extension ``xflowhops``.
    Raises ValueError (or TypeError) for data that is not JSON: NaN and infinities, lone surrogates, other types.
    """
    payload = dict(data)
    payload["execution_id"] = execution_id
    envelope = {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "type": event,
        "source": source_uri(producer),
        "time": iso_time(time.time() if published_at is None else published_at),
        "datacontenttype": "application/json",
        EXECUTION_ID_ATTRIBUTE: execution_id,
        HOPS_ATTRIBUTE: int(hops),
        "data": payload,
    }
    return json.dumps(envelope, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


@dataclass
class DecodedEvent:
    event_id: str
    execution_id: str
    data: dict[str, Any]
    producer: str
    published_at: float
    #: handler publishes between the event published from outside and this one
    hops: int = 0


def decode_event(value: bytes, fallback_id: str) -> DecodedEvent:
    """Read a message. Total: for any input, a :class:`DecodedEvent` or :class:`BadMessage` with the reason.

    A CloudEvent (an object with ``specversion``) must be well formed: ``id`` a non-empty string, ``data`` an
    object, ``source`` and ``time`` strings when present, the execution id in ``executionid`` (or, from older
    producers, ``execution_id`` at the top or in ``data``). Any other JSON object with a non-empty string
    ``execution_id`` (or ``executionid``) is an event whose id is ``fallback_id``. A ``time`` that cannot be read,
    or lies outside years 1 to 9999, is replaced by the time of reading. Refused: more than
    :data:`MAX_MESSAGE_BYTES` bytes, nesting deeper than :data:`MAX_NESTING`, NaN or infinite numbers,
    strings with lone surrogates.
    """
    try:
        return _decode(value, fallback_id)
    except BadMessage:
        raise
    except RecursionError:
        raise BadMessage(f"nested more than {MAX_NESTING} levels deep") from None
    except Exception as exc:  # a record must never stop a worker: whatever else goes wrong, it is a bad record
        raise BadMessage(f"malformed record: {type(exc).__name__}: {exc}") from None


_JSON_TYPES = {"list": "list (array)", "str": "string", "int": "number", "float": "number", "bool": "boolean",
               "NoneType": "null"}
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _decode(value: Any, fallback_id: str) -> DecodedEvent:
    if isinstance(value, str):
        text = value
        if _SURROGATE.search(text):
            raise BadMessage("not a JSON document: not valid Unicode (a lone surrogate)")
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) > MAX_MESSAGE_BYTES:
            raise BadMessage(f"{len(raw)} bytes, over the limit of {MAX_MESSAGE_BYTES}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadMessage(f"not a JSON document: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    else:
        raise BadMessage(f"not a JSON document: a record of type {type(value).__name__}, not bytes")
    if not text.strip():
        raise BadMessage("not a JSON document: an empty record")
    if len(text) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"{len(text)} characters, over the limit of {MAX_MESSAGE_BYTES}")
    if _nesting(text) > MAX_NESTING:
        raise BadMessage(f"nested more than {MAX_NESTING} levels deep")
    try:
        message = _DECODER.decode(text)
    except ValueError as exc:
        raise BadMessage(f"not a JSON document: {exc}") from None
    if _SURROGATE_ESCAPE.search(text):
        _check_unicode(message)
    if not isinstance(message, dict):
        raise BadMessage(f"a JSON {_JSON_TYPES.get(type(message).__name__, type(message).__name__)}, not an object")
    if "specversion" in message:
        return _decode_cloudevent(message)
    data = message
    execution_id = _execution_id(((message, "execution_id", "'execution_id'"), (message, EXECUTION_ID_ATTRIBUTE,
                                                                              f"{EXECUTION_ID_ATTRIBUTE!r}")))
    data["execution_id"] = execution_id
    return DecodedEvent(fallback_id, execution_id, data, "external", time.time(), 0)


def _decode_cloudevent(message: dict[str, Any]) -> DecodedEvent:
    def attribute(name: str, required: bool = False) -> str | None:
        found = message.get(name)
        if found is None and not required:
            return None
        if not isinstance(found, str) or (required and not found):
            got = "nothing" if found is None else f"a JSON {_JSON_TYPES.get(type(found).__name__, 'object')}"
            raise BadMessage(f"the CloudEvents attribute {name!r} must be a {'non-empty ' if required else ''}"
                             f"string, got {got}")
        return found

    attribute("specversion", required=True)
    event_id = attribute("id", required=True)
    assert event_id is not None
    producer = attribute("source") or ""
    stamp = attribute("time")
    data = message.get("data")
    if data is None:
        if message.get("data_base64") is not None:
            raise BadMessage("a CloudEvent with binary data (data_base64); xflow events carry a JSON object")
        data = {}
    elif not isinstance(data, dict):
        raise BadMessage(f"the CloudEvent's data is a JSON {_JSON_TYPES.get(type(data).__name__, 'value')}, "
                         "not an object")
    else:
        data = dict(data)
    execution_id = _execution_id(((message, EXECUTION_ID_ATTRIBUTE, f"the attribute {EXECUTION_ID_ATTRIBUTE!r}"),
                                  (message, "execution_id", "the attribute 'execution_id'"),
                                  (data, "execution_id", "data.execution_id")))
    hops = message.get(HOPS_ATTRIBUTE)
    if hops is None:
        hops = 0
    elif isinstance(hops, str) and hops.isascii() and hops.isdigit() and len(hops) <= 18:
        hops = int(hops)
    elif isinstance(hops, bool) or not isinstance(hops, int) or hops < 0:
        raise BadMessage(f"the attribute {HOPS_ATTRIBUTE!r} must be a whole number of at least 0, got {hops!r:.40}")
    published_at = time.time()  # when ``time`` is missing, unreadable or absurd: the time of reading
    if stamp is not None:
        with contextlib.suppress(ValueError):
            published_at = parse_iso_time(stamp)
    data["execution_id"] = execution_id
    return DecodedEvent(event_id, execution_id, data, producer, published_at, hops)


def _execution_id(places: tuple[tuple[dict[str, Any], str, str], ...]) -> str:
    """The first execution id found in ``places`` (holder, key, description): a non-empty string."""
    for holder, key, where in places:
        found = holder.get(key)
        if found is None:
            continue
        if not isinstance(found, str) or not found:
            raise BadMessage(f"no execution_id: {where} must be a non-empty string, got {found!r:.40}")
        return found
    raise BadMessage("no execution_id (a non-empty string) in the event")


def _nesting(text: str) -> int:
    """How deep arrays and objects nest in a JSON text (brackets inside strings do not count); cheap when shallow."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return 0
    depth = peak = 0
    for char in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        depth += 1 if char in "[{" else -1
        if depth > peak:
            peak = depth
            if peak > MAX_NESTING:
                break
    return peak


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"the number {text[:40]} is too large for a float")
    return number


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def _check_unicode(message: Any) -> None:
    """BadMessage when a string (key or value) holds a lone surrogate, which UTF-8 cannot carry."""
    stack: list[tuple[Any, str]] = [(message, "$")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise BadMessage(f"not valid Unicode: a lone surrogate in {where[:200]}")
        elif isinstance(item, dict):
            for key, inner in item.items():
                if _SURROGATE.search(key):
                    raise BadMessage(f"not valid Unicode: a lone surrogate in a key of {where[:200]}")
                stack.append((inner, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((inner, f"{where}[{index}]") for index, inner in enumerate(item))


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
