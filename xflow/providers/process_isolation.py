"""Process isolation for a HandlerPool: each slot hands its calls to a handler process, and replaces one that dies.

The pool's ``isolation="process"`` (see :mod:`xflow.providers.supervisor`): a slot's process is started (or taken
ready), handed the slot's calls in one message and read back call by call, and replaced when a call ends it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xflow.core.runtime import HandlerOutcome
from xflow.providers.handler_calls import Attempt, Call, Slot, settle
from xflow.providers.handler_process import HandlerProcess, LoadFailed, describe_exit, pickled_call

log = logging.getLogger("xflow.supervisor")


class ProcessIsolation:
    """The part of :class:`~xflow.providers.supervisor.HandlerPool` that runs calls in handler processes."""

    # set by HandlerPool.__init__
    source: Path
    handler: str
    publishes: list[str]
    timeout: float | None
    propagate_logs: bool
    environment: Mapping[str, str]
    import_paths: tuple[str, ...]
    load_timeout: float
    label: str
    file: Path
    stopping: bool
    _context: Any
    _lock: threading.Lock
    _closed: bool
    _spare: list[HandlerProcess]
    _mean_duration: float | None

    def _start_spare(self) -> None:
        """Start a process for a slot to take (one that fails here is started again, and reported, by its slot)."""
        try:
            child = self._start_process()
        except Exception as exc:  # noqa: BLE001
            log.debug("%s: a handler process started ahead failed: %s", self.label, exc)
            return
        with self._lock:
            if not self._closed:
                self._spare.append(child)
                return
        child.stop(1.0)

    def _serve_in_process(self, slot: Slot, batch: list[Call]) -> None:
        """Run ``batch`` in the slot's process, in order: one message there, an answer per call back. A call that
        ends the process is failed with the reason; the calls after it go to another process."""
        calls: list[tuple[Call, bytes]] = []
        for job in batch:
            try:
                calls.append((job, pickled_call(job.data, job.attempt.as_tuple())))
            except Exception as exc:  # not picklable: this call fails, the others go on
                settle(job, HandlerOutcome(False, [], [], f"the event cannot be sent to the handler process: {exc}",
                                           0.0))
        while calls:
            job = calls[0][0]
            slot.job = job
            if self.stopping:
                for job, _ in calls:
                    settle(job, HandlerOutcome(False, [], [], "stopped: the handler pool was closed before the "
                                                              "handler ran", 0.0))
                return
            try:
                child = self._child(slot)
            except LoadFailed as exc:
                settle(job, HandlerOutcome(False, [], exc.lines, f"cannot load handler {self.handler!r}: {exc}", 0.0))
                calls.pop(0)
                continue
            if self.stopping:
                continue  # closed while the process started: the calls are reported stopped above
            started = time.perf_counter()
            child.send([call for _, call in calls])
            done = 0
            for job, _ in calls:
                slot.job = job
                job.started_at = time.time()  # the process starts it once it has answered the one before
                outcome, records, answered, began = child.receive(started, self.timeout)
                if began:
                    job.started_at = began
                started = time.perf_counter()
                done += 1
                self._measured(outcome.duration)
                if records:
                    self._reemit(records, job.attempt)
                if child.ended and not answered:  # this call ended the process (or it ended before): the rest go on
                    child.stop(1.0)
                    slot.child = None  # the next call of this slot starts another process
                    if self.stopping and not outcome.ok and not (outcome.error or "").startswith("timed out"):
                        outcome.error = "stopped: the handler pool was closed while the handler ran"
                    settle(job, outcome)
                    break
                settle(job, outcome)
            calls = calls[done:]

    def _measured(self, duration: float) -> None:
        mean = self._mean_duration
        self._mean_duration = duration if mean is None else mean + (duration - mean) * 0.1

    def _child(self, slot: Slot) -> HandlerProcess:
        """The slot's handler process: the one it has if alive, else a spare one, else a new one (LoadFailed)."""
        child = slot.child
        if child is not None and not child.alive():
            child.stop(1.0)
            log.warning("%s: handler process %d %s between calls; starting another", self.label, child.pid,
                        describe_exit(child.exitcode))
            child = slot.child = None
        if child is None:
            with self._lock:
                child = self._spare.pop() if self._spare else None
            if child is None:
                child = self._start_process()
            slot.child = child
        return child

    def _start_process(self) -> HandlerProcess:
        return HandlerProcess(self._context, self.source, self.handler, self.publishes, keep_records=self.propagate_logs,
                              environment=self.environment, load_timeout=self.load_timeout, file=self.file,
                              label=self.label, paths=self.import_paths)

    def _reemit(self, records: list[dict[str, Any]], attempt: Attempt) -> None:
        """Log records sent back by a handler process, on ``xflow.functions.<workflow>.<function>``."""
        logger = logging.getLogger(f"xflow.functions.{attempt.workflow_id}.{attempt.function_name}")
        for fields in records:
            record = logging.makeLogRecord(fields)
            record.name = logger.name
            record.msecs = (record.created - int(record.created)) * 1000
            logger.handle(record)
