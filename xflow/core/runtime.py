"""How a handler is called, on every provider: event decoding, ids, the ``ctx`` object.

This module uses the standard library only and imports nothing from xflow, so that the
Lambda provider can ship it verbatim next to the user's code as the runtime shim's core.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import re
import sys
import threading
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
    last = _last_time
    if type(epoch) is float and epoch == last[0]:  # a batch of events published at one time: formatted once
        return last[1]
    try:
        seconds = float(epoch)
    except (TypeError, ValueError, OverflowError):
        seconds = 0.0
    if math.isnan(seconds):
        seconds = 0.0
    seconds = min(max(seconds, MIN_EPOCH), MAX_EPOCH)
    moment = _EPOCH + timedelta(seconds=seconds)
    text = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
            f"{moment.second:02d}.{moment.microsecond:06d}Z")
    _remember_time(epoch, text)
    return text


#: the last time :func:`iso_time` formatted, and its text (one tuple: replaced at once, read by any thread)
_last_time: tuple[Any, str] = (None, "")


def _remember_time(epoch: Any, text: str) -> None:
    global _last_time
    _last_time = (epoch, text)


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
    return encode_event_json(event, json_text(payload), execution_id, event_id, producer, published_at, hops)


def json_text(data: Any) -> str:
    """``data`` as the compact JSON text events carry (not escaped to ASCII; NaN and infinities refused)."""
    return _ENCODER.encode(data)


def encode_event_json(event: str, data_json: str, execution_id: str, event_id: str, producer: str,
                      published_at: float | None = None, hops: int = 0) -> bytes:
    """:func:`encode_event` for data already encoded by :func:`json_text` (an object that holds ``execution_id``):
    the same bytes, without encoding the data again."""
    text = "".join(('{"specversion":"', SPEC_VERSION, '","id":', _quote(event_id), ',"type":', _quote(event),
                    ',"source":', _quote(source_uri(producer)), ',"time":"',
                    iso_time(time.time() if published_at is None else published_at),
                    '","datacontenttype":"application/json","', EXECUTION_ID_ATTRIBUTE, '":', _quote(execution_id),
                    ',"', HOPS_ATTRIBUTE, '":', str(int(hops)), ',"data":', data_json, "}"))
    return text.encode("utf-8")


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
#: a string as JSON (what ``json.dumps(..., ensure_ascii=False)`` writes for it)
_quote: Callable[[str], str] = json.encoder.encode_basestring


class JsonObject(dict[str, Any]):
    """A dict together with its JSON text (:func:`json_text`), so that what was encoded once is not encoded again
    (the tracker stores the text, the transport's record carries it). Read-only by convention: the text is not
    kept in step with changes."""

    __slots__ = ("json",)

    def __init__(self, data: Mapping[str, Any], text: str) -> None:
        super().__init__(data)
        self.json = text


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
    if not text or text.isspace():
        raise BadMessage("not a JSON document: an empty record")
    if len(text) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"{len(text)} characters, over the limit of {MAX_MESSAGE_BYTES}")
    if _nesting(text) > MAX_NESTING:
        raise BadMessage(f"nested more than {MAX_NESTING} levels deep")
    try:
        message = _DECODER.decode(text)
    except ValueError as exc:
        raise BadMessage(f"not a JSON document: {exc}") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
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
    event_id, producer, stamp = message.get("id"), message.get("source"), message.get("time")
    spec = message.get("specversion")
    if not (type(spec) is str and spec and type(event_id) is str and event_id
            and (producer is None or type(producer) is str) and (stamp is None or type(stamp) is str)):
        _check_attributes(message)  # raises BadMessage with the reason
    data = message.get("data")
    if data is None:
        if message.get("data_base64") is not None:
            raise BadMessage("a CloudEvent with binary data (data_base64); xflow events carry a JSON object")
        data = {}
    elif not isinstance(data, dict):
        raise BadMessage(f"the CloudEvent's data is a JSON {_JSON_TYPES.get(type(data).__name__, 'value')}, "
                         "not an object")
    execution_id = message.get(EXECUTION_ID_ATTRIBUTE)
    if not (type(execution_id) is str and execution_id):
        execution_id = _execution_id(((message, EXECUTION_ID_ATTRIBUTE, f"the attribute {EXECUTION_ID_ATTRIBUTE!r}"),
                                      (message, "execution_id", "the attribute 'execution_id'"),
                                      (data, "execution_id", "data.execution_id")))
    hops = message.get(HOPS_ATTRIBUTE)
    if type(hops) is int and hops >= 0:
        pass
    elif hops is None:
        hops = 0
    elif isinstance(hops, str) and hops.isascii() and hops.isdigit() and len(hops) <= 18:
        hops = int(hops)
    elif isinstance(hops, bool) or not isinstance(hops, int) or hops < 0:
        raise BadMessage(f"the attribute {HOPS_ATTRIBUTE!r} must be a whole number of at least 0, got {hops!r:.40}")
    published_at = None  # when ``time`` is missing, unreadable or absurd: the time of reading
    if stamp is not None:
        with contextlib.suppress(ValueError):
            published_at = parse_iso_time(stamp)
    # ``data`` belongs to this message alone (just decoded), so it is kept rather than copied
    data["execution_id"] = execution_id
    return DecodedEvent(str(event_id), execution_id, data, producer or "",
                        time.time() if published_at is None else published_at, hops)


def _check_attributes(message: dict[str, Any]) -> None:
    """BadMessage naming the first CloudEvents attribute (specversion, id, source, time) that is not as it must be."""
    for name, required in (("specversion", True), ("id", True), ("source", False), ("time", False)):
        found = message.get(name)
        if found is None and not required:
            continue
        if not isinstance(found, str) or (required and not found):
            got = "nothing" if found is None else f"a JSON {_JSON_TYPES.get(type(found).__name__, 'object')}"
            raise BadMessage(f"the CloudEvents attribute {name!r} must be a {'non-empty ' if required else ''}"
                             f"string, got {got}")


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


#: the most output (printed text and log lines) kept of one handler call, in characters; the rest is counted
MAX_OUTPUT_CHARS = 1_000_000
#: the most log records kept of one handler call for another logger (``AttemptOutput.records``)
MAX_RECORDS = 10_000
#: the attempt output of the handler call running in this thread (see :func:`current_output`)
_current = threading.local()


class AttemptOutput(io.TextIOBase):
    """One handler call's output, as lines in the order they were written: a text stream for ``print``/``write``
    and the target of the call's log handler.

    Keeps at most ``limit`` characters (then counts what it drops). ``mirror``: a file descriptor every complete
    line is also written to as it comes, so that a process killed mid-call leaves its output behind. ``records``:
    a list that also receives each log record as a dict (for :func:`logging.makeLogRecord`), or None.
    """

    def __init__(self, lines: list[str] | None = None, *, limit: int = MAX_OUTPUT_CHARS, mirror: int | None = None,
                 records: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.lines: list[str] = [] if lines is None else lines
        self.records = records
        self.mirror = mirror
        self._limit = self._room = limit
        self._dropped = 0
        self._partial = ""
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            if "\n" not in text:
                self._partial += text
                if len(self._partial) > self._room:
                    self._keep_locked(self._partial)
                    self._partial = ""
                return len(text)
            *complete, self._partial = (self._partial + text).split("\n")
            for line in complete:
                self._keep_locked(line)
        return len(text)

    def add_line(self, line: str) -> None:
        """One line (or several, for text with newlines), after anything written before it."""
        with self._lock:
            for part in line.split("\n"):
                self._keep_locked(part)

    def _keep_locked(self, line: str) -> None:
        if self._dropped or len(line) > self._room:
            self._dropped += 1
            return
        self._room -= len(line) + 1
        self.lines.append(line)
        if self.mirror is not None:
            with contextlib.suppress(OSError):
                os.write(self.mirror, (line + "\n").encode("utf-8", "backslashreplace"))

    def finish(self) -> list[str]:
        """The lines, with an unfinished last line and a note of what was dropped; the output stays usable."""
        with self._lock:
            if self._partial:
                self._keep_locked(self._partial)
                self._partial = ""
            if self._dropped:
                self.lines.append(f"[xflow: {self._dropped} more lines of output dropped, over {self._limit} "
                                  "characters]")
                self._dropped = 0
                self._room = 0
        return self.lines


def current_output() -> AttemptOutput | None:
    """The output of the handler call :func:`call_handler` is running in this thread, if any."""
    return getattr(_current, "output", None)


class OutputLogHandler(logging.Handler):
    """A log handler that writes each record as a line (``LEVEL message``) into an :class:`AttemptOutput`:
    a fixed one, or (``output=None``) the output of the call running in the thread that logs."""

    def __init__(self, output: AttemptOutput | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.output = output
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        output = self.output if self.output is not None else current_output()
        if output is None:
            return
        try:
            line = self.format(record)
            if output.records is not None and len(output.records) < MAX_RECORDS:
                output.records.append({"name": record.name, "levelno": record.levelno, "levelname": record.levelname,
                                       "msg": record.getMessage(), "created": record.created,
                                       "exc_text": record.exc_text, "stack_info": record.stack_info})
            output.add_line(line)
        except Exception:
            self.handleError(record)


def module_print(*values: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None,
                 flush: bool = False) -> None:
    """The ``print`` of a handler's module (:func:`load_handler` puts it in the module's globals): while the
    handler runs in this thread, what it prints to stdout or stderr goes to the call's output; otherwise, and for
    other files, it is the built-in ``print``."""
    output = getattr(_current, "output", None)
    if output is None or (file is not None and file is not sys.stdout and file is not sys.stderr):
        builtins.print(*values, sep=sep, end=end, file=file, flush=flush)
        return
    output.write((" " if sep is None else sep).join(map(str, values)) + ("\n" if end is None else end))


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


def exit_status(code: Any) -> int:
    """The exit status of a process that raised ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    return 1


def call_handler(handler: Callable[..., Any], data: dict[str, Any], ctx: HandlerContext, publishes: list[str], *,
                 redirect: bool = True, output: AttemptOutput | None = None,
                 exit_as_status: bool = False, capture_logs: bool = True) -> HandlerOutcome:
    """Call ``handler(event, ctx)``; capture its output; never raise for what the handler does (an exception or
    ``sys.exit()``: a failed outcome with the reason and the traceback in ``logs``).

    A handler that returns a dict publishes it as its single declared ``publishes`` event.

    Captured, as lines in order (into ``output``, by default a new one over ``ctx.logs``): ``ctx.logger``'s
    records, and the handler module's ``print`` calls (see :func:`module_print`). ``redirect``: also everything
    written to ``sys.stdout`` meanwhile; that is process-wide, so only for a process that runs one handler at a
    time (Lambda's); a caller that runs handlers in threads passes False. ``exit_as_status``: a handler that
    raises ``SystemExit`` is reported as "exited with status N" (where the process is the handler's own), else
    as "called sys.exit(N)". ``capture_logs``: False when ``ctx.logger`` already writes into ``output`` (a caller
    that keeps one logger and one :class:`OutputLogHandler` for many calls, rather than making them per call).
    """
    if output is None:
        output = AttemptOutput(ctx.logs)
    log_handler = OutputLogHandler(output) if capture_logs else None
    if log_handler is not None:
        ctx.logger.addHandler(log_handler)
    previous = getattr(_current, "output", None)
    _current.output = output
    started = time.perf_counter()
    error = None
    try:
        with contextlib.redirect_stdout(output) if redirect else contextlib.nullcontext():
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
    except SystemExit as exc:  # not the worker's exit: the handler's attempt failed
        status = exit_status(exc.code)
        if exit_as_status:
            error = f"exited with status {status}"
        else:
            error = "called sys.exit()" if exc.code is None else f"called sys.exit({exc.code!r})"
        output.add_line(_handler_traceback(exc))
        if exc.code is not None and status == 1 and not isinstance(exc.code, int):
            output.add_line(str(exc.code))
    except Exception as exc:  # the user's code failed: report it, do not crash the worker
        error = f"{type(exc).__name__}: {exc}"
        output.add_line(_handler_traceback(exc))
    finally:
        duration = time.perf_counter() - started
        _current.output = previous
        if log_handler is not None:
            ctx.logger.removeHandler(log_handler)
    logs = output.finish()
    if error:
        return HandlerOutcome(False, [], logs, error, duration)
    return HandlerOutcome(True, list(ctx.published), logs, None, duration)


def _handler_traceback(exc: BaseException) -> str:
    """The traceback of what the handler raised, from the handler's frame on (without call_handler's)."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


_loaded_modules: dict[str, Any] = {}
_load_lock = threading.RLock()


def handler_search_path(source: Path) -> str:
    """The folder :func:`load_handler` makes importable while it imports a handler from ``source``."""
    source = Path(source)
    return str(source if source.is_dir() else source.parent)


def handler_file(source: Path, handler: str) -> tuple[Path, str]:
    """The file :func:`load_handler` imports for ``handler`` from ``source``, and the function's name in it."""
    source = Path(source)
    if not source.is_dir():
        return source, handler.rpartition(".")[2]
    module_name, _, function_name = handler.rpartition(".")
    if not module_name:
        candidates = [p for p in (source / "handler.py", source / "main.py", source / "__init__.py") if p.exists()]
        if not candidates:
            raise HandlerLoadError(f"{source}: a folder source needs 'handler: module.function'")
        return candidates[0], function_name
    file = source.joinpath(*module_name.split(".")).with_suffix(".py")
    if not file.exists():
        file = source.joinpath(*module_name.split("."), "__init__.py")
    return file, function_name


def load_handler(source: Path, handler: str, *, keep_imports: bool = False) -> Callable[..., Any]:
    """Import the handler from a ``.py`` file, or ``module.function`` from a folder.

    The handler's module is imported once per file and process and is not registered in ``sys.modules``; its
    globals get :func:`module_print` as ``print`` unless it defines its own. The source folder is put on
    ``sys.path`` for the import only: afterwards ``sys.path`` and ``sys.modules`` are as they were, apart from
    modules the import brought in from outside the folder (the standard library, installed packages). So modules
    next to the handler must be imported at the top of its module, and two functions may each have their own
    ``helpers.py``. ``keep_imports``: for a process that runs this one handler, leave the folder on ``sys.path``
    and its modules imported (imports made later, inside the handler, find them).
    """
    source = Path(source)
    file, function_name = handler_file(source, handler)
    search_path = handler_search_path(source)
    if not file.exists():
        raise HandlerLoadError(f"{file}: no such file")
    key = str(file.resolve())
    with _load_lock:
        module = _loaded_modules.get(key)
        if module is None:
            module = _import_file(file, key, search_path, keep_imports)
            _loaded_modules[key] = module
    function = getattr(module, function_name, None)
    if not callable(function):
        raise HandlerLoadError(f"{file}: defines no function {function_name!r}")
    return function


def _import_file(file: Path, key: str, search_path: str, keep_imports: bool) -> Any:
    name = "xflow_handler_" + hashlib.sha1(key.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise HandlerLoadError(f"{file}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    module.__dict__["print"] = module_print  # the module may define or import its own: that one wins
    path_before = list(sys.path)
    modules_before = dict(sys.modules)
    sys.path.insert(0, search_path)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        raise HandlerLoadError(f"{file}: import failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if not keep_imports:
            _restore_imports(search_path, path_before, modules_before)
        elif search_path in path_before:
            sys.path.remove(search_path)  # it was there already: do not leave a second copy in front
    return module


def _restore_imports(folder: str, path_before: list[str], modules_before: dict[str, Any]) -> None:
    """Put back ``sys.path`` and forget the modules imported from ``folder`` (or that replaced earlier ones)."""
    sys.path[:] = path_before
    inside = os.path.realpath(folder) + os.sep
    for name, module in list(sys.modules.items()):
        earlier = modules_before.get(name)
        if earlier is module:
            continue
        if earlier is not None:
            sys.modules[name] = earlier
            continue
        try:
            where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or ()), None)
        except Exception:  # an odd object in sys.modules (a lazy module that fails): not one of the folder's
            continue
        if isinstance(where, str) and os.path.realpath(where).startswith(inside):
            del sys.modules[name]
