"""Waiting out an unavailable backend where it happened: one call retried with backoff until it works, a stop is
asked for, or a give-up time is over; said once in the log, and again when the backend is back."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

from xflow.core.errors import BackendUnavailable, XflowError

log = logging.getLogger("xflow")

T = TypeVar("T")
#: runs one backend call, waiting out :class:`BackendUnavailable`: ``call(BACKEND_LABEL, function)``
BackendCall = Callable[[str, Callable[[], Any]], Any]
#: how often a worker that waits for a backend says so again, in seconds
WAIT_LOG_INTERVAL = 30.0
#: the first and the longest wait between tries of a call to an unavailable backend, in seconds
UNAVAILABLE_FIRST_WAIT = 0.1
UNAVAILABLE_MAX_WAIT = 4.0


class StopRequested(Exception):
    """The runner was asked to stop while it waited for a backend: leave; what is not committed comes again."""


class BackendWaiter:
    """Runs backend calls, waiting out :class:`BackendUnavailable` where it happened; shared by a runner's threads.

    It logs "waiting for the BACKEND: reason" once (then at most every 30 s, whichever thread waits), retries that
    same call with exponential backoff and jitter (capped at a few seconds), and says when the backend is back.
    After ``give_up_seconds`` (0: never) of one call it raises the error; once ``should_stop()`` is true it raises
    :class:`StopRequested` within 0.1 s.
    """

    def __init__(self, should_stop: Callable[[], bool], *, give_up_seconds: float = 0.0,
                 first_wait: float = UNAVAILABLE_FIRST_WAIT, max_wait: float = UNAVAILABLE_MAX_WAIT) -> None:
        self.should_stop = should_stop
        self.give_up_seconds = max(0.0, float(give_up_seconds))
        self.first_wait = max(0.0, first_wait)
        self.max_wait = max(self.first_wait, max_wait)
        #: seconds spent waiting for unavailable backends, and how many waits there were
        self.waited_seconds = 0.0
        self.waits = 0
        self._lock = threading.Lock()
        self._last_log = -math.inf
        self._announced = False

    def call(self, backend: str, call: Callable[[], T]) -> T:
        """``call()``; if it raises :class:`BackendUnavailable`, wait (logging once) and try it again until it works,
        ``stop`` is set (raises :class:`StopRequested`) or the give-up time is over (raises the error)."""
        try:
            return call()
        except BackendUnavailable as exc:
            first = exc
        started = time.monotonic()
        with self._lock:
            self.waits += 1
        self._say_waiting(backend, first)
        retrying = Retrying(
            retry=retry_if_exception_type(BackendUnavailable),
            # exponential backoff capped at a few seconds, plus jitter so that many workers do not retry in step
            wait=wait_exponential(multiplier=self.first_wait, max=self.max_wait) + wait_random(0, self.first_wait),
            stop=stop_after_delay(self.give_up_seconds) if self.give_up_seconds else stop_never,
            sleep=self.sleep,
            before_sleep=lambda state: self._say_waiting(backend, _exception(state)),
            reraise=True,
        )
        try:
            self.sleep(self.first_wait)
            result = retrying(call)
        except BackendUnavailable as exc:
            waited = self._add_wait(started)
            raise BackendUnavailable(f"gave up after waiting {waited:.0f} s for the {backend}: {exc.message}",
                                     exc.hint or "make the backend available again, then start the worker again "
                                     "(or raise the local provider's option unavailable_give_up_seconds)") from None
        except BaseException:
            self._add_wait(started)
            raise
        waited = self._add_wait(started)
        with self._lock:
            announced, self._announced = self._announced, False
        if announced:
            log.warning("the %s is back after %.1f s; going on", backend, waited)
        return result

    def _add_wait(self, started: float) -> float:
        waited = time.monotonic() - started
        with self._lock:
            self.waited_seconds += waited
        return waited

    def _say_waiting(self, backend: str, exc: BaseException | None) -> None:
        """Log that the runner waits: once, then at most every WAIT_LOG_INTERVAL seconds (a flapping backend too)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_log < WAIT_LOG_INTERVAL:
                return
            self._last_log = now
            self._announced = True
        limit = f"for up to {self.give_up_seconds:g} s" if self.give_up_seconds else "until it is back"
        reason = exc.message if isinstance(exc, XflowError) else str(exc)
        hint = f" (hint: {exc.hint})" if isinstance(exc, XflowError) and exc.hint else ""
        log.warning("waiting for the %s: %s; retrying with backoff %s%s", backend, reason, limit, hint)

    def sleep(self, seconds: float) -> None:
        """Sleep, raising :class:`StopRequested` within 0.1 s of ``should_stop()`` becoming true."""
        deadline = time.monotonic() + seconds
        while True:
            if self.should_stop():
                raise StopRequested()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))


def _exception(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


