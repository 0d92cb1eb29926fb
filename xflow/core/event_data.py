"""Checking an event's data before it is published: a JSON object, strict JSON, nested at most so deep."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from xflow.core.errors import XflowError

#: the most an event's data may be nested (objects and arrays inside each other)
MAX_DATA_DEPTH = 128
JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
              type(None): "null"}


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type (``object``, ``array``, ...), or its Python type's name."""
    return JSON_TYPES.get(type(value), type(value).__name__)


def check_event_data(data: Any, what: str = "the event's data") -> None:
    """An XflowError unless ``data`` is a JSON object that can go on the wire as strict JSON.

    Refused: anything ``json`` cannot encode, NaN and Infinity (not JSON), and nesting deeper than
    :data:`MAX_DATA_DEPTH`. ``what`` names the data in the message.
    """
    if not isinstance(data, Mapping):
        raise XflowError(f"{what} must be a JSON object, got {json_type(data)}")
    depth, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        depth = max(depth, level)
        if depth > MAX_DATA_DEPTH:
            raise XflowError(f"{what} is nested more than {MAX_DATA_DEPTH} levels deep",
                             "flatten it, or publish a reference (a path or URL) to the document")
        stack.extend((child, level + 1) for child in children)
    try:
        json.dumps(dict(data), allow_nan=False)
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise XflowError(f"{what} holds NaN or Infinity, which JSON does not allow",
                             'use null, or a string such as "NaN"') from None
        raise XflowError(f"{what} cannot be sent as JSON: {exc}") from None
    except (TypeError, RecursionError) as exc:
        raise XflowError(f"{what} is not JSON-serialisable: {exc}",
                         "use only objects, arrays, strings, numbers, true, false and null") from None
