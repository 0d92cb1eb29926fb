"""Constructors for the frozen dataclasses made once per delivery on the hot path (``Delivery``, ``EventRecord``,
``DeliveryRecord``, ``Record``) that build the same objects several times faster.

A frozen dataclass's generated ``__init__`` sets each field through ``object.__setattr__`` (it must go around the
class's own ``__setattr__``, which refuses): for the ten fields of a ``DeliveryRecord`` that is about 3 µs, as much as
a whole no-op handler call. :func:`maker` gives a function that takes every field positionally and writes them into
the new instance's ``__dict__`` one store each (the function is written out per class, as
dataclasses writes ``__init__``): an object equal to, hashing as and printing as the one the class makes. A
class for which that would not hold (``__slots__``, ``__post_init__``, a field left out of ``__init__``) gets its own
constructor back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from xflow.core.interfaces import Delivery, DeliveryRecord, EventRecord, Record

T = TypeVar("T")


def maker(cls: type[T]) -> Callable[..., T]:
    """``cls(*values)`` for the dataclass ``cls``, every field given positionally in order (see the module)."""
    if not dataclasses.is_dataclass(cls):
        return cls
    fields = dataclasses.fields(cls)
    names = tuple(field.name for field in fields)
    if ("__slots__" in vars(cls) or hasattr(cls, "__post_init__") or not all(field.init for field in fields)
            or any(isinstance(field.type, dataclasses.InitVar) for field in fields)):
        return cls
    # the constructor is written out for the fields (as dataclasses writes ``__init__``): one store per field into
    # the new instance's ``__dict__`` and an unpacking that refuses a wrong count, about 2.5x faster than filling it
    # from ``zip``; the names are the class's own identifiers, so the text holds nothing from outside
    text = (f"def make(*values):\n    record = new(cls)\n    fields = record.__dict__\n"
            f"    {', '.join(f'fields[{name!r}]' for name in names)}{',' if len(names) == 1 else ''} = values\n"
            f"    return record\n")
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    exec(compile(text, f"<xflow record constructor of {cls.__name__}>", "exec"), namespace)  # noqa: S102
    make: Callable[..., T] = namespace["make"]

    make.__doc__ = f"A {cls.__name__} from its {len(names)} fields, in order."
    return make


#: ``Delivery(event, partition, position, key, value, timestamp)``
new_delivery: Callable[[str, str, str, str | None, bytes, float | None], Delivery] = maker(Delivery)
#: ``EventRecord(execution_id, event_id, event, published_at, producer, data)``
new_event_record: Callable[..., EventRecord] = maker(EventRecord)
#: ``DeliveryRecord(execution_id, event_id, event, function, attempt, status, started_at, duration, error, logs)``
new_delivery_record: Callable[..., DeliveryRecord] = maker(DeliveryRecord)
#: ``Record(key, value)``
new_record: Callable[[str, bytes], Record] = maker(Record)
