"""The log destination plugin interface: where routed log records are sent (the fourth plugin kind, ``log``).

A destination is discovered like transports, providers and trackers: a module in the ``xflow`` entry-point group
implements the hook ``xflow_log_destinations`` and returns its classes. Each class has a ``name`` (what a route's
``name:`` says), a one-line ``description``, its typed ``options`` and :meth:`LogDestination.send`::

    from xflow import hookimpl
    from xflow.core.options import Option
    from xflow.logs import LogDestination

    class Loki(LogDestination):
        name = "loki"
        description = "Grafana Loki's push API"
        options = (Option("url", str, None, "the push endpoint"),)

        def send(self, records):
            ...  # raise on failure: the router keeps the records and sends them again later

    @hookimpl
    def xflow_log_destinations():
        return [Loki]

``send`` is called from the route's own background thread, never from a handler's: a destination may block (a
slow server) without slowing handlers; records wait in the route's bounded buffer meanwhile. When the route is
closing, :attr:`LogDestination.give_up_at` is the time after which a send should not go on: a destination that waits
or retries bounds each wait with :meth:`LogDestination.time_left`. One still sending then is not closed under it:
the route counts its batch as dropped and the sending thread closes the destination when ``send`` returns.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Sequence
from typing import ClassVar

from xflow.core.interfaces import Plugin, PluginContext
from xflow.core.options import declared_options
from xflow.logs.records import LogRecord

KIND = "log"


class DeliveryRefused(Exception):  # noqa: N818 - reads as what happened
    """The destination answered that it will never take these records (a 400, a record too large): the router drops
    the batch (counted as dropped) instead of sending it again."""


class LogDestination(Plugin):
    """Sends log records somewhere. Made once per route; :meth:`send` is called from one thread at a time."""

    #: records per :meth:`send` call, at most
    batch_size: ClassVar[int] = 200
    #: how long the route waits for a batch to fill before sending what it has, in seconds
    linger: ClassVar[float] = 0.0

    #: when the route is closing: the time (``time.monotonic()``) after which :meth:`send` should give up
    give_up_at: float = math.inf

    def __init__(self, context: PluginContext) -> None:
        cls = type(self)
        name = getattr(cls, "name", cls.__name__)
        self.context = context.bound_to(declared_options(cls), f"log destination {name!r}", KIND, name)

    @abc.abstractmethod
    def send(self, records: Sequence[LogRecord]) -> None:
        """Deliver ``records`` (in this order), or raise: any exception means "not delivered, try again later"
        (:class:`DeliveryRefused`: "never"). Called with at most :attr:`batch_size` records, never with none."""

    def time_left(self, limit: float) -> float:
        """``limit`` seconds, or less when the route gives up sooner (at least 0): what a send may still wait."""
        return max(0.0, min(limit, self.give_up_at - time.monotonic()))

    def close(self) -> None:
        """Release connections and files; called once, after the last :meth:`send`."""
