"""What runners tell an observer (metrics) as they work: events published, deliveries settled, dead letters, calls
in flight.

The delivery rules (:mod:`xflow.core.delivery`) and the local provider's dispatcher call the observer installed in
the process, if any; with none installed (the default) they only test ``current() is None``, so metrics that are off
cost nothing. ``xflow worker --metrics-port`` adds :class:`xflow.monitoring.metrics.PrometheusObserver` and log routes
(:mod:`xflow.logs`) add theirs; an application embedding a :class:`~xflow.core.worker.Worker` may add its own (a
subclass of :class:`Observer`) beside them::

    from xflow.core import observe

    class Counting(observe.Observer):
        def settled(self, workflow_id, function, status, duration):
            ...

    counting = Counting()
    observe.add(counting)      # runners started from now on report to it as well
    ...
    observe.remove(counting)   # the others stay

:func:`add` and :func:`remove` keep several observers at once; :func:`install` replaces whatever is installed
(metrics and log routes included) and returns it, for a test that puts it back.

The observer is read when a runner starts (add it first); its methods are called from the runners' threads,
so they must be quick and thread-safe, and must not raise.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from xflow.core.interfaces import DeliveryRecord

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

    def attempts(self, workflow_id: str, records: Sequence[DeliveryRecord],
                 traces: Sequence[str | None] | None = None) -> None:
        """These delivery attempts were settled and recorded: their outcomes, each with the lines its handler logged
        and printed (log routes, :mod:`xflow.logs`, send them on). ``traces``, when given, holds each attempt's event's
        W3C ``traceparent`` (None where it had none). Called once per settled batch."""


class Several(Observer):
    """Reports to each of ``observers`` in turn: metrics and log routes at once (see :func:`add`)."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)

    def published(self, workflow_id: str, event: str, count: int) -> None:
        for observer in self.observers:
            observer.published(workflow_id, event, count)

    def settled(self, workflow_id: str, function: str, status: SettledStatus, duration: float | None) -> None:
        for observer in self.observers:
            observer.settled(workflow_id, function, status, duration)

    def dead_lettered(self, workflow_id: str, function: str, event: str) -> None:
        for observer in self.observers:
            observer.dead_lettered(workflow_id, function, event)

    def in_flight(self, workflow_id: str, function: str, count: int) -> None:
        for observer in self.observers:
            observer.in_flight(workflow_id, function, count)

    def attempts(self, workflow_id: str, records: Sequence[DeliveryRecord],
                 traces: Sequence[str | None] | None = None) -> None:
        for observer in self.observers:
            observer.attempts(workflow_id, records, traces)


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


def _members(observer: Observer | None) -> tuple[Observer, ...]:
    if observer is None:
        return ()
    return observer.observers if isinstance(observer, Several) else (observer,)


def add(observer: Observer) -> None:
    """Report to ``observer`` as well as to the observer installed, if any (runners started from now on)."""
    global _current
    with _lock:
        members = _members(_current)
        _current = Several((*members, observer)) if members else observer


def remove(observer: Observer) -> None:
    """Stop reporting to ``observer`` (added with :func:`add` or installed); the others stay."""
    global _current
    with _lock:
        rest = tuple(member for member in _members(_current) if member is not observer)
        _current = None if not rest else rest[0] if len(rest) == 1 else Several(rest)
