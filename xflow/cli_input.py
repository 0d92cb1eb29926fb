"""Reading an event's data as ``xflow publish`` and ``xflow run`` take it (text or ``@FILE``), and as xflow serve's
publish routes take a request body: a strict JSON object, UTF-8, at most :data:`MAX_DATA_BYTES`.

Each refusal is one XflowError line naming where the data came from.
"""

from __future__ import annotations

import json
from typing import Any

#: the largest event data the CLI reads (each transport also has its own, usually smaller, limit)
MAX_DATA_BYTES = 10 * 1024 * 1024


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def json_object_argument(text: str, what: str) -> dict[str, Any]:
    """DATA given as text or @FILE: a strict JSON object (no NaN/Infinity), at most MAX_DATA_BYTES, UTF-8."""
    from xflow.core.errors import XflowError

    example = """write a JSON object, e.g. '{"path": "in.txt"}' or @data.json"""
    source = what
    if text.startswith("@"):
        name = text[1:]
        source = f"{what} file {name}"
        try:
            with open(name, "rb") as file:
                raw = file.read(MAX_DATA_BYTES + 1)
        except OSError as exc:
            raise XflowError(f"{what}: cannot read {name}: {exc.strerror or exc}") from None
    else:
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            raise XflowError(f"{what} is not valid UTF-8 text", example) from None
    return json_object(raw, source, what, example)


def json_object(raw: bytes, source: str, what: str,
                example: str = """write a JSON object, e.g. '{"path": "in.txt"}'""") -> dict[str, Any]:
    """``raw`` as publish takes DATA (also the body of xflow serve's publish routes): a strict JSON object (no
    NaN/Infinity), at most MAX_DATA_BYTES, UTF-8; else an XflowError naming ``source`` (or ``what``).

    What only the decoded object can show (nesting deeper than ``MAX_DATA_DEPTH``, a number too large for a float)
    is refused by the engine's ``check_event_data`` when the event is published, before anything is written.
    """
    from xflow.core.errors import XflowError
    from xflow.core.event_data import MAX_DATA_DEPTH

    if len(raw) > MAX_DATA_BYTES:
        raise XflowError(f"{source} is larger than {MAX_DATA_BYTES // (1024 * 1024)} MiB",
                         "publish a reference (a path or URL) to the data instead")
    try:
        decoded = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise XflowError(f"{source} is not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}; a binary file?)",
                         example) from None
    try:
        data = json.loads(decoded, parse_constant=_not_json)
    except RecursionError:
        raise XflowError(f"{source} is nested too deeply (at most {MAX_DATA_DEPTH} levels)",
                         "flatten it, or publish a reference (a path or URL) to the document") from None
    except ValueError as exc:
        hint = 'use null, or a string such as "NaN"' if "is not a JSON value" in str(exc) else example
        raise XflowError(f"{source} is not valid JSON: {exc}", hint) from None
    if not isinstance(data, dict):
        kind = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(data), "null")
        raise XflowError(f"{what} must be a JSON object, got a JSON {kind}", example)
    return data
