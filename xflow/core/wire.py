"""Events on the wire: the CloudEvents 1.0 JSON records xflow publishes and reads, on every transport and provider.

:func:`encode_event` writes one (:func:`encode_event_json` for data encoded already, :class:`JsonObject` keeps a
dict's text); :func:`decode_event` reads any record, total: a :class:`DecodedEvent`, or :class:`BadMessage` with the
reason. Also the ids (:func:`new_event_id`, :func:`derive_event_id`: deterministic, so a re-delivery republishes
the same ids) and the RFC 3339 times records carry (:func:`iso_time`, :func:`parse_iso_time`).

This module uses the standard library only and imports nothing from xflow: the Lambda provider ships it verbatim
next to the user's code (as ``xflow_wire.py``, beside the handler runtime :mod:`xflow.core.runtime`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

SPEC_VERSION = "1.0"
#: the CloudEvents extension attribute that carries the execution id (attribute names: a-z and 0-9 only)
EXECUTION_ID_ATTRIBUTE = "executionid"
#: the CloudEvents extension attribute that counts hops: 0 for an event published from outside,
#: the handled event's count + 1 for each event a handler publishes
HOPS_ATTRIBUTE = "xflowhops"
#: the hop limit when the workflow file sets none (``general: {hop_limit: N}``)
DEFAULT_HOP_LIMIT = 1000
#: the CloudEvents extension attribute that carries an event's budget: how many deliveries the event and the events
#: that follow from it may still make (absent on an event published from outside: it gets the workflow's event
#: limit; see :func:`child_budget`)
BUDGET_ATTRIBUTE = "xflowbudget"
#: the event limit when the workflow file sets none (``general: {event_limit: N}``)
DEFAULT_EVENT_LIMIT = 100_000
#: the largest record :func:`decode_event` reads, in bytes
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: the deepest nesting of arrays and objects :func:`decode_event` accepts
MAX_NESTING = 256


class BadMessage(ValueError):
    """A record that is not an event: not JSON, not an object, without an execution id, or malformed otherwise."""


def new_event_id() -> str:
    """A new event or execution id: 32 hex digits laid out as a UUID of version 7 (RFC 9562), the time in
    milliseconds first and 74 random bits after it. Ids made later sort later, so the indexes a tracker keeps by
    id grow at their end instead of at random places (a random id dirties another page of each index per row)."""
    random_bits = int.from_bytes(os.urandom(10), "big")
    value = ((time.time_ns() // 1_000_000) & _MILLISECONDS) << 80 | _VERSION_7 | (random_bits >> 62 & 0xFFF) << 64 \
        | _VARIANT | (random_bits & _RANDOM_B)
    return f"{value:032x}"


_MILLISECONDS = (1 << 48) - 1
_VERSION_7 = 0x7 << 76
_VARIANT = 0b10 << 62
_RANDOM_B = (1 << 62) - 1


def derive_event_id(parent_event_id: str, function: str, index: int) -> str:
    """The id of the ``index``-th event ``function`` publishes while handling ``parent_event_id``.

    Deterministic, so a re-delivery after a crash republishes the same ids.
    """
    digest = hashlib.sha256(f"{parent_event_id}\x1f{function}\x1f{index}".encode()).hexdigest()
    if len(parent_event_id) == 32 and parent_event_id[12] == "7" and _TIME_ORDERED.fullmatch(parent_event_id):
        # a parent made by new_event_id (or derived from one): its time first, then bits of the digest, so the
        # events of an execution sort near the time it began (see new_event_id) and a tracker's indexes grow at
        # their end. Older ids (version 4) and other producers' ids give the digest, as they always did.
        bits = int(digest[:20], 16)
        value = int(parent_event_id[:12], 16) << 80 | _VERSION_7 | (bits >> 62 & 0xFFF) << 64 | _VARIANT \
            | (bits & _RANDOM_B)
        return f"{value:032x}"
    return digest[:32]


#: an id :func:`new_event_id` makes: a version-7 UUID as 32 lowercase hex digits
_TIME_ORDERED = re.compile(r"[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}")


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
    last = _last_parsed
    if text == last[0] and type(text) is str:  # the records of a batch were published at one time: read once
        return last[1]
    epoch = _parse_iso_time(text)
    _remember_parsed(text, epoch)
    return epoch


#: the last time :func:`parse_iso_time` read, and its value (one tuple: replaced at once, read by any thread)
_last_parsed: tuple[Any, float] = (None, 0.0)


def _remember_parsed(text: str, epoch: float) -> None:
    global _last_parsed
    _last_parsed = (text, epoch)


def _parse_iso_time(text: str) -> float:
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
            epoch = parsed.timestamp()  # (what ``(parsed - _EPOCH).total_seconds()`` gives, in one call)
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
    found = _SOURCES.get(producer)
    if found is None:
        text = producer or "xflow"
        found = _URI_UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")),
                                text)
        if len(_SOURCES) < 1024 and type(producer) is str:  # a worker has a few producers: its functions
            _SOURCES[producer] = found
    return found


#: :func:`source_uri` of the producers met so far
_SOURCES: dict[str, str] = {}


def encode_event(event: str, data: Mapping[str, Any], execution_id: str, event_id: str,
                 producer: str, published_at: float | None = None, hops: int = 0,
                 traceparent: str | None = None, tracestate: str | None = None, budget: int | None = None) -> bytes:
    """An xflow message: a CloudEvents 1.0 event in the structured JSON format.

    ``type`` is the event name, ``source`` the producer (``xflow/<workflow>/<function>``), the execution id the
    extension ``executionid`` (and ``execution_id`` inside ``data``), the hop count the extension ``xflowhops``,
    the budget (when given: events a handler publishes) the extension ``xflowbudget``, the W3C trace context (when
    given) the distributed-tracing extension ``traceparent`` and ``tracestate``.
    Raises ValueError (or TypeError) for data that is not JSON: NaN and infinities, lone surrogates, other types.
    """
    payload = dict(data)
    payload["execution_id"] = execution_id
    return encode_event_json(event, json_text(payload), execution_id, event_id, producer, published_at, hops,
                             traceparent, tracestate, budget)


def child_budget(budget: int, subscribers: int, published: int) -> int:
    """The budget of each event a handler publishes while handling an event of budget ``budget`` that has
    ``subscribers`` subscribers, when it publishes ``published`` events.

    An event's budget bounds the deliveries it and the events that follow from it make: its own deliveries (one per
    subscriber) come out of it, and the rest is shared among the events its subscribers publish. So however a cycle
    fans out, one event published from outside leads to at most the workflow's event limit of deliveries; an event
    whose budget is below its number of subscribers is not delivered (it is dead-lettered with the reason)."""
    subscribers, published = max(1, subscribers), max(1, published)
    return max(0, (budget - subscribers) // (subscribers * published))


def json_text(data: Any) -> str:
    """``data`` as the compact JSON text events carry (not escaped to ASCII; NaN and infinities refused): what
    ``json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))`` gives, without building an
    encoder for every call."""
    if _C_ENCODER is None:
        return _ENCODER.encode(data)
    try:
        return "".join(_C_ENCODER(data, 0))
    except RecursionError:  # (the one encoder does not track the containers it is in)
        raise ValueError("Circular reference detected, or data nested too deep") from None


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def encode_event_json(event: str, data_json: str, execution_id: str, event_id: str, producer: str,
                      published_at: float | None = None, hops: int = 0, traceparent: str | None = None,
                      tracestate: str | None = None, budget: int | None = None) -> bytes:
    """:func:`encode_event` for data already encoded by :func:`json_text` (an object that holds ``execution_id``):
    the same bytes, without encoding the data again."""
    text = "".join(('{"specversion":"', SPEC_VERSION, '","id":', _quote(event_id), ',"type":', _quote(event),
                    ',"source":', _quote(source_uri(producer)), ',"time":"',
                    iso_time(time.time() if published_at is None else published_at),
                    '","datacontenttype":"application/json","', EXECUTION_ID_ATTRIBUTE, '":', _quote(execution_id),
                    ',"', HOPS_ATTRIBUTE, '":', str(int(hops)),
                    "" if budget is None else f',"{BUDGET_ATTRIBUTE}":{int(budget)}',
                    _trace_attributes(traceparent, tracestate) if traceparent else "", ',"data":', data_json, "}"))
    return text.encode("utf-8")


def _trace_attributes(traceparent: str, tracestate: str | None) -> str:
    """The distributed-tracing extension's attributes, as they follow the others in a record."""
    state = f',"tracestate":{_quote(tracestate)}' if tracestate else ""
    return f',"traceparent":{_quote(traceparent)}{state}'


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
#: the C encoder ``_ENCODER`` builds for each call, built once (None without the C accelerator)
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER: Callable[[Any, int], Any] | None = (
    None if _make_c_encoder is None else
    _make_c_encoder(None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False))
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
    #: the W3C trace context it carried (the CloudEvents distributed-tracing extension), as text; None when absent
    traceparent: str | None = None
    tracestate: str | None = None
    #: deliveries it and the events that follow from it may still make (:func:`child_budget`); None when it carries
    #: none (an event published from outside: the workflow's event limit)
    budget: int | None = None


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
    if type(value) is not bytes and isinstance(value, str):
        text = value
        if _SURROGATE.search(text):
            raise BadMessage("not a JSON document: not valid Unicode (a lone surrogate)")
    elif type(value) is bytes or isinstance(value, bytes | bytearray | memoryview):
        raw = value if type(value) is bytes else bytes(value)
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
    if len(text) > MAX_NESTING and _nesting(text) > MAX_NESTING:  # (deeper needs more brackets than that)
        raise BadMessage(f"nested more than {MAX_NESTING} levels deep")
    message = _parse(text)
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
    budget = message.get(BUDGET_ATTRIBUTE)
    if budget is None or (type(budget) is int and budget >= 0):
        pass
    elif isinstance(budget, str) and budget.isascii() and budget.isdigit() and len(budget) <= 18:
        budget = int(budget)
    else:
        raise BadMessage(f"the attribute {BUDGET_ATTRIBUTE!r} must be a whole number of at least 0, "
                         f"got {budget!r:.40}")
    published_at = None  # when ``time`` is missing, unreadable or absurd: the time of reading
    if stamp is not None:
        try:
            published_at = parse_iso_time(stamp)
        except ValueError:  # (not contextlib.suppress: a context manager per record costs more than the rest here)
            published_at = None
    # ``data`` belongs to this message alone (just decoded), so it is kept rather than copied
    data["execution_id"] = execution_id
    trace, state = message.get("traceparent"), message.get("tracestate")  # read as text; checked where used
    return DecodedEvent(str(event_id), execution_id, data, producer or "",
                        time.time() if published_at is None else published_at, hops,
                        trace if type(trace) is str else None, state if type(state) is str else None, budget)


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
_scan_once: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _parse(text: str) -> Any:
    """``_DECODER.decode(text)``, or BadMessage. A text that is an object from its first character to its last (what
    xflow writes) is read by the scanner at once, without the two matches of white space ``decode`` makes; anything
    else, and any error, goes through ``decode`` (and its message)."""
    if text[0] == "{" and text[-1] == "}":
        try:
            message, end = _scan_once(text, 0)
        except (StopIteration, ValueError):
            pass
        else:
            if end == len(text):
                return message
    try:
        return _DECODER.decode(text)
    except ValueError as exc:
        raise BadMessage(f"not a JSON document: {exc}") from None


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
