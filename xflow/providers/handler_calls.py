"""A handler pool's calls and slots: a call's state from waiting to its outcome, and the unit of concurrency that runs it.

:class:`Call` (with its :class:`Attempt`) and :class:`Slot` are shared by :mod:`xflow.providers.supervisor` and its
two isolations, :mod:`~xflow.providers.thread_isolation` and :mod:`~xflow.providers.process_isolation`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from xflow.core.runtime import AttemptOutput, HandlerOutcome, OutputLogHandler
from xflow.providers.handler_process import HandlerProcess


class Attempt(NamedTuple):
    """What a handler call needs besides the event's data."""

    workflow_id: str
    function_name: str
    execution_id: str
    event_name: str
    event_id: str
    attempt: int  # 1-based

    def as_tuple(self) -> tuple[str, str, str, int, str, str]:
        """The order the handler process reads (:func:`xflow.providers.handler_child.main`)."""
        return self.execution_id, self.event_name, self.event_id, self.attempt, self.workflow_id, self.function_name


_PENDING, _RUNNING, _FINISHED, _CANCELLED = range(4)
#: held while a call changes state (a few instructions: one lock serves every call)
_state_lock = threading.Lock()


class Call:
    """One handler call handed to a pool (:meth:`HandlerPool.start`): cancelled before it starts, or run to its
    :attr:`outcome`, after which ``done(call)`` is called (from the pool's thread). Lighter than a ``Future``, which
    :meth:`HandlerPool.submit` gives for those who want one."""

    __slots__ = ("data", "attempt", "owned", "outcome", "output", "deadline", "slot", "started_at", "_state", "_done",
                 "_future")

    def __init__(self, data: dict[str, Any], attempt: Attempt, owned: bool,
                 done: Callable[[Call], None] | None = None,
                 future: concurrent.futures.Future[HandlerOutcome] | None = None) -> None:
        self.data = data
        self.attempt = attempt
        self.owned = owned
        self.outcome: HandlerOutcome | None = None
        self.output: AttemptOutput | None = None
        self.deadline = 0.0
        self.slot: Slot | None = None
        #: when (``time.time()``) the handler started on it: a call waits in the pool until a slot is free
        self.started_at = 0.0
        self._state = _PENDING
        self._done = done
        self._future = future

    @property
    def done(self) -> bool:
        """Whether it ended (with an outcome) or was cancelled."""
        return self._state >= _FINISHED

    @property
    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def cancel(self) -> bool:
        """Cancel the call unless it has started; whether it is cancelled."""
        with _state_lock:
            if self._state == _PENDING:
                self._state = _CANCELLED
            elif self._state != _CANCELLED:
                return False
        if self._future is not None:
            self._future.cancel()
        return True

    def _begin(self) -> bool:
        """Mark it running, unless it was cancelled."""
        if self._future is not None and not self._future.set_running_or_notify_cancel():
            with _state_lock:
                self._state = _CANCELLED
            return False
        with _state_lock:
            if self._state != _PENDING:
                return False
            self._state = _RUNNING
        return True

    def _end(self, outcome: HandlerOutcome) -> None:
        """Its outcome (the first one given; a call given up on may end again later)."""
        with _state_lock:
            if self._state != _RUNNING:
                return
            self._state = _FINISHED
            self.outcome = outcome
        if self._future is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                self._future.set_result(outcome)
        if self._done is not None:
            self._done(self)


class Slot:
    """One unit of concurrency: a thread, and in process mode the handler process it talks to."""

    def __init__(self) -> None:
        self.child: HandlerProcess | None = None
        self.job: Call | None = None
        #: the calls this slot took (in process mode, handed to its process together); ``job`` is the one running
        self.batch: list[Call] = []
        #: its thread was given up on (a call that timed out in thread mode); another slot took its place
        self.abandoned = False
        self.thread: threading.Thread | None = None
        #: thread mode: the call's ``ctx.logger`` and the handler on it that writes into the running call's output
        #: (made once per slot: a slot runs one call at a time, so concurrent calls never see each other's lines)
        self.loggers: dict[tuple[str, str], tuple[logging.Logger, OutputLogHandler]] = {}
        #: thread mode: the output the slot's calls write into, started over for each call (an abandoned slot's stays
        #: with the call it was running)
        self.output: AttemptOutput | None = None


def settle(job: Call, outcome: HandlerOutcome) -> None:
    job._end(outcome)
