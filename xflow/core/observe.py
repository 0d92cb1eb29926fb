"""What runners tell an observer (metrics) as they work: events published, deliveries settled, dead letters, calls
in flight.

The delivery rules (:mod:`xflow.core.delivery`) and the local provider's dispatcher call the observer installed in
the process, if any; with none installed (the default) they only test ``current() is None``, so metrics that are off
cost nothing. ``xflow worker --metrics-port`` installs :class:`xflow.monitoring.metrics.PrometheusObserver`; an
application embedding a :class:`~xflow.core.worker.Worker` may install its own (a subclass of :class:`Observer`)::

    from xflow.core import observe

    class Counting(observe.Observer):
        def settled(self, workflow_id, function, status, duration):
            ...

    observe.install(Counting())

The observer is read when a runner starts (install it first); its methods are called from the runners' threads,
so they must be quick and thread-safe, and must not raise.
"""

from __future__ import annotations

import threading
from typing import Literal

#: how a delivery was settled: ``succeeded``; ``retrying`` (failed, tried again later); ``failed`` (failed for
#: good: dead-lettered); ``skipped-duplicate`` (the function had handled this event already)
SettledStatus = Literal["succeeded", "retrying", "failed", "skipped-duplicate"]
STATUSES: tuple[SettledStatus, ...] = ("succeeded", "retrying", "failed", "skipped-duplicate")


class Observer:
    """What a runner reports; each method does nothing here (subclass and override what you need)."""

    def published(self, workflow_id: str, event: str, count: int) -> None:
        """``count`` events named ``event`` were published (to the transport) by a handler or from outside."""

    def settled(self, workflow_id: str, function: str, status: SettledStatus, duration: float | None) -> None:
        """One delivery attempt of ``function`` was settled with ``status``; ``duration`` is the handler's run time in
        seconds (None when no handler ran: a duplicate skipped)."""

    def dead_lettered(self, workflow_id: str, function: str, event: str) -> None:
        """A delivery of ``event`` to ``function`` was dead-lettered (failed for good, or an unreadable record)."""

    def in_flight(self, workflow_id: str, function: str, count: int) -> None:
        """``function`` now has ``count`` handler calls started and not finished, in this runner."""


_lock = threading.Lock()
_current: Observer | None = None


def current() -> Observer | None:
    """The observer installed in this process, or None (metrics off)."""
    return _current


def install(observer: Observer | None) -> Observer | None:
    """Make ``observer`` the process's observer (None: none); returns the one it replaces. Runners started from now
    on report to it."""
    global _current
    with _lock:
        previous, _current = _current, observer
    return previous
