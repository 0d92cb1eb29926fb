"""The log router: each route's bounded buffer and background sender, so that a slow or absent destination never
slows a handler.

:meth:`LogRouter.emit` only appends to each route's buffer (a deque under a lock) and wakes its sender thread; the
sender takes up to the destination's ``batch_size`` records at a time and calls its ``send``. A batch that fails
goes back to the front of the buffer and is sent again after a backoff (exponential, capped), so records keep their
order and nothing is lost while the destination is away, as long as the buffer holds them: past ``capacity``, the
oldest records are dropped and counted (:attr:`Route.dropped`), and a warning says so once per outage.

Closing gives every route one shared deadline: the destination is told it (``give_up_at``) so that its sends end by
then; a send still going past it is counted as dropped, and the destination is closed by its own thread when that
send returns, never under it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from xflow.core.observe import Observer
from xflow.logs.destination import DeliveryRefused, LogDestination
from xflow.logs.records import LEVEL_NUMBERS, LogRecord, records_of
from xflow.monitoring.tracing import trace_id

log = logging.getLogger("xflow")

#: records a route holds while its destination is away, by default
DEFAULT_CAPACITY = 10_000
#: the first and the longest wait before a failed batch is sent again, in seconds
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
#: how long ``close`` waits for the buffers to empty, by default, in seconds
CLOSE_TIMEOUT = 5.0
#: how long past the deadline ``close`` waits for a send that honours it to return, in seconds
CLOSE_GRACE = 0.5


@dataclass(frozen=True)
class RouteStats:
    """A route's counters: records sent, dropped (buffer full, refused, or left at close), held now, failed sends."""

    route: str
    sent: int
    dropped: int
    buffered: int
    failures: int
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"route": self.route, "sent": self.sent, "dropped": self.dropped, "buffered": self.buffered,
                "failures": self.failures, "last_error": self.last_error}


class Route:
    """One destination, its buffer of at most ``capacity`` records and the thread that sends them."""

    def __init__(self, label: str, destination: LogDestination, capacity: int = DEFAULT_CAPACITY,
                 level: str = "DEBUG", backoff: tuple[float, float] = (BACKOFF_FIRST, BACKOFF_MAX)) -> None:
        self.label, self.destination = label, destination
        self.capacity = max(1, int(capacity))
        self.min_level = LEVEL_NUMBERS.get(level.upper(), 10)
        self.backoff_first, self.backoff_max = backoff
        self.batch_size = max(1, int(getattr(destination, "batch_size", 200)))
        self.linger = max(0.0, float(getattr(destination, "linger", 0.0)))
        self.sent = self.dropped = self.failures = 0
        self.last_error: str | None = None
        self._buffer: collections.deque[LogRecord] = collections.deque()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._closing = False
        self._give_up_at = float("inf")
        self._warned = False
        #: the thread has ended / close stopped waiting for it (it closes the destination itself when it ends)
        self._finished = self._abandoned = self._destination_closed = False
        self._thread = threading.Thread(target=self._run, name=f"xflow-log-{label}", daemon=True)
        self._thread.start()

    # -- the producers' side (handlers' settling threads): never blocks on the destination -----------------------
    def offer(self, records: Iterable[LogRecord]) -> None:
        kept = [r for r in records if r.levelno >= self.min_level] if self.min_level > 10 else list(records)
        if not kept:
            return
        with self._cond:
            if self._closing:
                self.dropped += len(kept)
                return
            was_empty = not self._buffer
            self._buffer.extend(kept)
            over = len(self._buffer) - self.capacity
            if over > 0:
                self._drop_oldest(over)
            # wake the sender when it waits for a first record or a full batch (not for each record: it lingers)
            if was_empty or len(self._buffer) >= self.batch_size:
                self._cond.notify()

    def _drop_oldest(self, count: int) -> None:
        for _ in range(count):
            self._buffer.popleft()
        self.dropped += count
        if not self._warned:
            self._warned = True
            log.warning("log route %s: its buffer of %d records is full (destination unavailable: %s); the oldest "
                        "records are dropped", self.label, self.capacity, self.last_error or "too slow")

    # -- the sender thread ---------------------------------------------------------------------------------------
    def _take(self) -> list[LogRecord] | None:
        """The next batch, waiting for one; None when closing and there is nothing more to send."""
        with self._cond:
            while not self._buffer or self._closing and time.monotonic() >= self._give_up_at:
                if self._closing:
                    return None  # nothing more, or past the deadline: what is left is counted by close
                self._cond.wait()
            if self.linger:  # let a batch fill: fewer, larger sends, and fewer wake-ups beside the runners
                end = time.monotonic() + self.linger
                while len(self._buffer) < self.batch_size and not self._closing and (left := end - time.monotonic()) > 0:
                    self._cond.wait(left)
            count = min(self.batch_size, len(self._buffer))
            batch = [self._buffer.popleft() for _ in range(count)]
            self._in_flight = count
            return batch

    def _run(self) -> None:
        try:
            self._send_all()
        finally:
            with self._cond:
                self._finished = True
                abandoned = self._abandoned
                self._cond.notify_all()
            if abandoned:  # close stopped waiting while a send was going: the destination is closed now
                self._close_destination()

    def _send_all(self) -> None:
        delay = self.backoff_first
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self.destination.send(batch)
            except DeliveryRefused as exc:
                with self._cond:
                    if self._abandoned:  # counted as dropped by close already
                        return
                    self._in_flight = 0
                    self.dropped += len(batch)
                    self.last_error = f"refused: {exc}"
                    self._cond.notify_all()
                log.warning("log route %s refused %d records, which are dropped: %s", self.label, len(batch), exc)
                continue
            except Exception as exc:  # noqa: BLE001 - any failure: keep the records, try again later
                if self._requeue(batch, exc):
                    return
                self._pause(delay)
                delay = min(self.backoff_max, delay * 2)
                continue
            with self._cond:
                if self._abandoned:  # close counted it as dropped: it went after all, but too late to say
                    return
                self._in_flight = 0
                self.sent += len(batch)
                if self.last_error is not None:
                    log.warning("log route %s: the destination is back; sending again", self.label)
                self.last_error = None
                self._warned = False
                self._cond.notify_all()
            delay = self.backoff_first

    def _requeue(self, batch: list[LogRecord], exc: Exception) -> bool:
        """Put a batch that failed back in front; True when closing has given up on the destination."""
        reason = f"{type(exc).__name__}: {exc}"
        with self._cond:
            if self._abandoned:
                return True
            self._in_flight = 0
            self.failures += 1
            first = self.last_error is None
            self.last_error = reason
            if self._closing and time.monotonic() >= self._give_up_at:
                left = len(batch) + len(self._buffer)
                self._buffer.clear()
                self.dropped += left
                self._cond.notify_all()
                log.warning("log route %s: %d records not sent before stopping (%s)", self.label, left, reason)
                return True
            self._buffer.extendleft(reversed(batch))
            over = len(self._buffer) - self.capacity
            if over > 0:
                self._drop_oldest(over)
            self._cond.notify_all()
        if first:
            log.warning("log route %s: cannot send (%s); records are kept (up to %d) and sent when it is back",
                        self.label, reason, self.capacity)
        return False

    def _pause(self, seconds: float) -> None:
        with self._cond:
            end = min(time.monotonic() + seconds, self._give_up_at)
            while (left := end - time.monotonic()) > 0:
                self._cond.wait(left)

    # -- waiting and stopping ------------------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        with self._cond:
            return len(self._buffer) + self._in_flight

    def flush(self, timeout: float) -> bool:
        """Wait until everything offered so far was sent (or dropped); False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._buffer or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    @property
    def stopped(self) -> bool:
        """Whether the sending thread has ended."""
        with self._cond:
            return self._finished

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Send what is buffered (for at most ``timeout`` seconds: a destination still away then loses it, counted),
        stop the thread, close the destination (see :meth:`LogRouter.close` for several routes)."""
        deadline = time.monotonic() + timeout
        self.begin_close(deadline)
        self.end_close(deadline + CLOSE_GRACE)

    def begin_close(self, deadline: float) -> None:
        """Stop taking records and tell the thread and the destination to give up at ``deadline`` (monotonic)."""
        with self._cond:
            self._closing = True
            self._give_up_at = deadline
            self.destination.give_up_at = deadline
            self._cond.notify_all()

    def end_close(self, wait_until: float) -> None:
        """Wait (until ``wait_until``, monotonic) for the thread to end, count what was not sent as dropped, and close
        the destination; a thread still inside ``send`` then closes it itself when the send returns."""
        with self._cond:
            while not self._finished and (left := wait_until - time.monotonic()) > 0:
                self._cond.wait(left)
            finished = self._finished
            left_over = len(self._buffer) + (0 if finished else self._in_flight)
            self._buffer.clear()
            if not finished:
                self._abandoned = True
                self._in_flight = 0
            self.dropped += left_over
        if left_over:
            log.warning("log route %s: %d records not sent before stopping (%s)", self.label, left_over,
                        "a send was still going" if not finished else self.last_error or "out of time")
        if finished:
            self._close_destination()

    def _close_destination(self) -> None:
        with self._cond:
            if self._destination_closed:
                return
            self._destination_closed = True
        try:
            self.destination.close()
        except Exception as exc:  # noqa: BLE001 - closing must not fail the worker's stop
            log.warning("log route %s: closing: %s", self.label, exc)

    def stats(self) -> RouteStats:
        with self._cond:
            return RouteStats(self.label, self.sent, self.dropped, len(self._buffer) + self._in_flight, self.failures,
                              self.last_error)


class LogRouter(Observer):
    """Routes the records of settled attempts to its routes: an :class:`~xflow.core.observe.Observer` that runners
    report to (:meth:`attempts`), installed beside any other with :func:`xflow.core.observe.add`.

    ``workflow``: only that workflow's attempts are routed (None: every workflow's in the process).
    """

    def __init__(self, routes: Sequence[Route], workflow: str | None = None) -> None:
        self.routes = list(routes)
        self.workflow = workflow

    def attempts(self, workflow_id: str, records: Sequence[Any], traces: Sequence[str | None] | None = None) -> None:
        if self.workflow is not None and workflow_id != self.workflow:
            return
        found: list[LogRecord] = []
        for index, delivery in enumerate(records):
            parent = traces[index] if traces is not None and index < len(traces) else None
            found.extend(records_of(workflow_id, delivery, trace_id(parent) if parent else None))
        self.emit(found)

    def emit(self, records: Sequence[LogRecord]) -> None:
        """Hand records to every route (returns at once)."""
        for route in self.routes:
            route.offer(records)

    def flush(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        return all([route.flush(max(0.0, deadline - time.monotonic())) for route in self.routes])

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close every route within one shared deadline (``timeout`` seconds from now, not one each)."""
        deadline = time.monotonic() + timeout
        for route in self.routes:
            route.begin_close(deadline)
        for route in self.routes:
            route.end_close(deadline + CLOSE_GRACE)

    def stats(self) -> list[RouteStats]:
        return [route.stats() for route in self.routes]

    @property
    def dropped(self) -> int:
        return sum(route.stats().dropped for route in self.routes)
