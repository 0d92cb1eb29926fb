"""Thread isolation for a HandlerPool: calls run in the pool's threads, with a watchdog for their deadlines.

The pool's ``isolation="thread"`` (see :mod:`xflow.providers.supervisor`): a slot's thread runs one call at a time
with the slot's logger and output; a call past its timeout is failed and its slot given up on and replaced.
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xflow.core.fastrecords import maker
from xflow.core.runtime import (
    AttemptOutput,
    HandlerContext,
    HandlerLoadError,
    HandlerOutcome,
    JsonObject,
    OutputLogHandler,
    call_handler,
    load_handler,
)
from xflow.providers.handler_calls import Attempt, Call, Slot, settle
from xflow.providers.handler_child import sendable
from xflow.providers.handler_process import seconds

log = logging.getLogger("xflow.supervisor")
#: ``HandlerContext(...)`` with every field given (a context is made per call)
_new_context = maker(HandlerContext)


@contextlib.contextmanager
def requirements_importable(paths: Sequence[str]) -> Iterator[None]:
    """``paths`` in front of ``sys.path`` meanwhile (thread isolation: while a handler's module is imported)."""
    added = [path for path in paths if path not in sys.path]
    sys.path[0:0] = added
    try:
        yield
    finally:
        for path in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(path)


class ThreadIsolation:
    """The part of :class:`~xflow.providers.supervisor.HandlerPool` that runs calls in its threads."""

    # set by HandlerPool.__init__
    source: Path
    handler: str
    publishes: list[str]
    timeout: float | None
    propagate_logs: bool
    import_paths: tuple[str, ...]
    label: str
    _function: Any
    _closed: bool
    _slots: list[Slot]
    _loggers: dict[tuple[str, str], logging.Logger]
    _watch: threading.Condition
    _wake_at: float

    if TYPE_CHECKING:
        def _add_slot(self) -> None: ...

    def _serve_in_thread(self, slot: Slot, job: Call) -> None:
        slot.job = job
        job.slot = slot
        job.started_at = time.time()
        try:
            outcome = self._run_in_thread(slot, job)
        except BaseException as exc:  # a bug here, or a BaseException the handler raised in thread mode
            log.exception("%s: the call of %s failed unexpectedly", self.label, job.attempt.event_id)
            outcome = HandlerOutcome(False, [], [], f"{type(exc).__name__}: {exc}", 0.0)
        job._end(outcome)

    def _load(self) -> Any:
        if self._function is None:
            with requirements_importable(self.import_paths):
                self._function = load_handler(self.source, self.handler)
        return self._function

    def _logger(self, slot: Slot, attempt: Attempt) -> tuple[logging.Logger, OutputLogHandler]:
        """The slot's logger for the function, below the function's, with the handler that captures its records."""
        key = attempt.workflow_id, attempt.function_name
        found = slot.loggers.get(key)
        if found is None:
            parent = self._loggers.get(key)
            if parent is None:
                parent = self._loggers[key] = logging.getLogger(f"xflow.functions.{key[0]}.{key[1]}")
            logger = logging.Logger(parent.name, logging.DEBUG)
            logger.parent = parent
            logger.propagate = self.propagate_logs
            capture = OutputLogHandler(None)
            logger.addHandler(capture)
            found = slot.loggers[key] = logger, capture
        return found

    def _run_in_thread(self, slot: Slot, job: Call) -> HandlerOutcome:
        function = self._function
        if function is None:
            try:
                function = self._load()
            except HandlerLoadError as exc:
                return HandlerOutcome(False, [], [], f"cannot load handler {self.handler!r}: {exc}", 0.0)
        attempt = job.attempt
        logger, capture = slot.loggers.get((attempt.workflow_id, attempt.function_name)) or self._logger(slot, attempt)
        ctx = _new_context(attempt.execution_id, attempt.event_name, attempt.event_id, attempt.attempt,
                           attempt.workflow_id, attempt.function_name, logger, [], [])
        output = slot.output
        if output is None:
            output = slot.output = AttemptOutput(ctx.logs)
        else:
            output.reset(ctx.logs)
        job.output = capture.output = output
        data = job.data if job.owned else _private_copy(job.data)  # what the handler changes stays out of a retry's
        if self.timeout is not None:
            self._watch_job(job)
        try:
            outcome = call_handler(function, data, ctx, self.publishes, redirect=False, output=output,
                                   capture_logs=False, private=True)
        finally:
            capture.output = None
        if not outcome.published:
            return outcome
        outcome, texts = sendable(outcome)
        if texts:
            outcome.published = [(name, JsonObject(data, text))
                                 for (name, data), text in zip(outcome.published, texts, strict=True)]
        return outcome

    def _watch_job(self, job: Call) -> None:
        """Give the call its deadline. The watchdog is woken only when it would wake after that deadline: it sets
        ``_wake_at`` to infinity while it looks at the slots (a call that starts meanwhile is seen by it, or wakes
        it), then to the earliest deadline of the calls it saw, or, seeing none, to one timeout from then. Every
        call's deadline is one timeout after it starts, so it is never earlier than that: the watchdog is not woken
        per call (calls shorter than the scheduler's turn would otherwise wake it for nothing, once each)."""
        assert self.timeout is not None
        job.deadline = deadline = time.monotonic() + self.timeout
        if deadline < self._wake_at:
            with self._watch:
                self._watch.notify()

    def _watch_deadlines(self) -> None:
        """Thread isolation with a timeout: fail the calls past it and give their slots to new threads."""
        with self._watch:
            while not self._closed:
                self._wake_at = math.inf
                now = time.monotonic()
                earliest = math.inf
                for slot in list(self._slots):
                    job = slot.job
                    if job is None or slot.abandoned or not job.deadline or job.done:
                        continue
                    if job.deadline <= now:
                        self._abandon(job)
                    elif job.deadline < earliest:
                        earliest = job.deadline
                if earliest == math.inf:  # no call to watch: look again one timeout from now (or when woken)
                    assert self.timeout is not None
                    earliest = now + self.timeout
                self._wake_at = earliest
                self._watch.wait(max(0.0, earliest - now))

    def _abandon(self, job: Call) -> None:
        lines = job.output.finish()[:] if job.output is not None else []
        assert self.timeout is not None
        settle(job, HandlerOutcome(False, [], lines, f"timed out after {seconds(self.timeout)}", self.timeout))
        slot = job.slot
        if slot is None or slot.abandoned:
            return
        slot.abandoned = True
        log.warning("%s: the call of %s timed out after %s; its thread is left running (Python cannot stop a "
                    "thread) and another takes its place", self.label, job.attempt.event_id, seconds(self.timeout))
        if not self._closed:
            self._add_slot()


def _private_copy(data: dict[str, Any]) -> dict[str, Any]:
    try:
        return pickle.loads(pickle.dumps(data, pickle.HIGHEST_PROTOCOL))
    except Exception:
        return data
