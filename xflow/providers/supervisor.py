"""Supervised handler calls: a pool that runs one function's handler with a concurrency limit and a timeout, and
turns whatever the handler does into a :class:`~xflow.core.runtime.HandlerOutcome`, never into a dead worker.

``isolation="process"`` (the default): each concurrency slot has a handler process, started from a
``forkserver`` (``spawn`` where there is none; never a plain fork of this threaded process), kept alive and
reused: the handler is imported once per process, a call is one round trip on a pipe. A process that exits
(``os._exit``), is killed by a signal (a segfault, the OOM killer) or runs past ``timeout`` (it is killed)
gives a failed outcome with that reason ("exited with status 4", "killed by SIGSEGV", "timed out after 2 s"),
and the slot starts another process for its next call. ``sys.exit()`` in the handler is reported "exited with
status N" without losing the process. Everything the handler prints or logs in its process (stdout, stderr,
``ctx.logger``, the root logger, from any thread) is captured per call; lines written before a crash or a
timeout are kept, with the stacks of the process's threads.

``isolation="thread"``: calls run in ``concurrency`` threads of this process. Nothing process-wide is touched:
``sys.stdout``/``sys.stderr`` are never redirected, so only ``ctx.logger``'s records and the handler module's
own ``print`` calls made in the handler's thread (the module's ``print`` is xflow's, per thread) are captured;
anything else (``sys.stdout.write``, other modules' prints, threads the handler starts, the root logger) goes to
the host's streams and logging. A call past ``timeout`` is reported failed and its thread abandoned (Python cannot
stop a thread; it runs on, and its result is dropped), and another thread takes the slot. ``sys.exit()`` is a
failed call ("called sys.exit(3)"); ``os._exit`` or a segfault end this process: use processes for code
that may do that.

Handler processes see the environment and working folder this process has when they start (plus
``environment``), and keep the handler's folder on ``sys.path``. As in any program whose processes start from a
forkserver or by spawn, each imports this program's main module again (as ``__mp_main__``): a script that builds
a pool must keep its work under ``if __name__ == "__main__":`` (the ``xflow`` command does). In thread mode the
handler's folder is on ``sys.path`` only while it is imported (:func:`~xflow.core.runtime.load_handler`): modules
next to it must be imported at the top of its module.

In process mode, a slot hands its process the calls waiting for it in one message (up to :data:`BATCH` of them,
and no more than its share when several slots wait, so that ``concurrency`` holds); the process answers each call
as it ends (its outcome, the published events' data as JSON text). A call that kills the process or times out is
the failed one; those after it in the message never started, and go to the slot's next process. Published data
must be JSON in both modes (it is what the event will carry): data that is not is a failed outcome saying which
event. The JSON text is kept with the data (:class:`~xflow.core.runtime.JsonObject`), so that it is encoded once.

Slots are daemon threads of this module rather than a ``ThreadPoolExecutor``: an executor can neither replace a
thread it has lost to a hung handler nor let the interpreter exit while one runs.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import itertools
import logging
import math
import multiprocessing
import multiprocessing.util  # noqa: F401  (imported first, so that its exit hook runs after this module's)
import pickle
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from xflow.core.errors import XflowError
from xflow.core.runtime import (
    AttemptOutput,
    HandlerContext,
    HandlerLoadError,
    HandlerOutcome,
    JsonObject,
    OutputLogHandler,
    call_handler,
    handler_file,
    load_handler,
)
from xflow.providers.handler_child import sendable
from xflow.providers.handler_process import HandlerProcess, LoadFailed, describe_exit, pickled_call, seconds

log = logging.getLogger("xflow.supervisor")
ISOLATIONS = ("process", "thread")
#: how handler processes are started: a fork of a clean server process where there is one, else a fresh interpreter
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
#: the most calls a slot hands its handler process in one message
BATCH = 64
#: about how long (by the handler's mean duration) the calls a slot hands its process together take, in seconds
BATCH_SECONDS = 0.005


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
        self.slot: _Slot | None = None
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


class _Slot:
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


def _settle(job: Call, outcome: HandlerOutcome) -> None:
    job._end(outcome)


_live_pools: weakref.WeakSet[HandlerPool] = weakref.WeakSet()
_numbers = itertools.count(1)


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


class HandlerPool:
    """Runs one function's handler, supervised (see the module's documentation)."""

    def __init__(self, source: Path, handler: str, publishes: Sequence[str], *, isolation: str = "process",
                 concurrency: int = 1, timeout: float | None = None, propagate_logs: bool = False,
                 function_name: str | None = None, environment: Mapping[str, str] | None = None,
                 load_timeout: float = 120.0, import_paths: Sequence[str] = ()) -> None:
        """``function_name``: named in errors; ``environment``: variables added to the handler processes'
        environment (process isolation only); ``load_timeout``: how long a handler process may take to import
        the handler; ``import_paths``: folders the handler imports packages from (its installed requirements: in
        front of ``sys.path`` in its processes; with thread isolation, while the handler's module is imported)."""
        if isolation not in ISOLATIONS:
            raise XflowError(f"unknown isolation {isolation!r}", f"use one of: {', '.join(ISOLATIONS)}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise XflowError(f"concurrency must be a whole number of at least 1, not {concurrency!r}")
        if timeout is not None and not timeout > 0:
            raise XflowError(f"timeout must be a number of seconds above 0, not {timeout!r}")
        environment = dict(environment or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in environment.items()):
            raise XflowError("the environment of a handler holds strings only", "quote the values")
        self.source = Path(source)
        self.handler = handler
        self.publishes = list(publishes)
        self.isolation = isolation
        self.timeout = None if timeout is None else float(timeout)
        self.propagate_logs = propagate_logs
        self.environment = environment
        self.import_paths = tuple(str(path) for path in import_paths)
        if environment and isolation == "thread":
            log.warning("%s: 'environment' is not applied with thread isolation (this process's environment is "
                        "shared by every handler); use process isolation", function_name or handler)
        self.load_timeout = load_timeout
        self.label = function_name or handler
        try:
            self.file: Path = handler_file(self.source, handler)[0]
        except HandlerLoadError:
            self.file = self.source
        self._context = multiprocessing.get_context(START_METHOD)
        #: set once the calls still running at close() are being stopped
        self.stopping = False
        self._concurrency = concurrency
        self._function: Any = None
        self._jobs: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._slots: list[_Slot] = []
        #: slots waiting for a call, and the handler's mean duration so far (how many calls a message carries)
        self._idle = 0
        self._mean_duration: float | None = None
        self._spare: list[HandlerProcess] = []  # started by check(), taken by the first slot that needs a process
        self._loggers: dict[tuple[str, str], logging.Logger] = {}
        self._watch = threading.Condition()
        #: when the watchdog (thread isolation with a timeout) wakes next: infinity while it waits for no call
        self._wake_at = math.inf
        self._watchdog: threading.Thread | None = None
        self._number = next(_numbers)
        for _ in range(concurrency):
            self._add_slot()
        if isolation == "thread" and self.timeout is not None:
            self._watchdog = threading.Thread(target=self._watch_deadlines, daemon=True,
                                              name=f"xflow-handler-{self._number}-watchdog")
            self._watchdog.start()
        _live_pools.add(self)

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def pids(self) -> list[int]:
        """The handler processes of this pool (process isolation); one that died is listed until its slot
        notices."""
        children = [slot.child for slot in self._slots] + list(self._spare)
        return [child.pid for child in children if child is not None]

    def __enter__(self) -> HandlerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the caller's side ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Import the handler now (in a handler process with process isolation): an XflowError naming the
        function's file when it cannot be loaded. With process isolation, the other slots' processes are then
        started too, all at once, so that the first calls do not wait for them (as a pre-forking server does)."""
        if self._closed:
            raise RuntimeError("the handler pool is closed")
        try:
            if self.isolation == "thread":
                self._load()
            elif not self._spare and not any(slot.child is not None for slot in self._slots):
                child = self._start_process()
                with self._lock:
                    self._spare.append(child)
                starting = [threading.Thread(target=self._start_spare, daemon=True,
                                             name=f"xflow-handler-{self._number}-start")
                            for _ in range(self._concurrency - 1)]
                for thread in starting:
                    thread.start()
                for thread in starting:
                    thread.join()
        except (HandlerLoadError, LoadFailed) as exc:
            where = f"function {self.label!r}: " if self.label != self.handler else ""
            raise XflowError(f"{where}cannot load handler {self.handler!r}: {exc}",
                             "fix the handler's source file or the 'handler:' name") from None

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

    def submit(self, data: dict[str, Any], attempt: Attempt, *,
               owned: bool = False) -> concurrent.futures.Future[HandlerOutcome]:
        """Run the handler on ``data``; the future's outcome says how it went. At most ``concurrency`` calls run
        at once; later ones wait their turn. Calls still queued when the pool is closed are cancelled.

        ``owned``: the caller hands ``data`` over (it does not use it again), so a handler in a thread may get it as
        it is; otherwise it gets a copy, and what it changes in it stays out of the caller's dict."""
        future: concurrent.futures.Future[HandlerOutcome] = concurrent.futures.Future()
        self._put(Call(data, attempt, owned, future=future))
        return future

    def start(self, data: dict[str, Any], attempt: Attempt, done: Callable[[Call], None], *,
              owned: bool = False) -> Call:
        """:meth:`submit` without a future: ``done(call)`` is called once the call has its outcome (not if it is
        cancelled: :meth:`Call.cancel` says so)."""
        call = Call(data, attempt, owned, done)
        self._put(call)
        return call

    def _put(self, call: Call) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the handler pool is closed")
            self._jobs.put(call)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel the calls not started, give those running ``timeout`` seconds, then stop them (their outcome:
        failed, "stopped: ..."), and stop the handler processes and threads. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _live_pools.discard(self)
        with contextlib.suppress(queue.Empty):
            while True:
                job = self._jobs.get_nowait()
                if job is not None:
                    job.cancel()
        slots = [slot for slot in self._slots if not slot.abandoned]
        running = [job for slot in slots for job in list(slot.batch)]
        deadline = time.monotonic() + max(0.0, timeout)
        while any(not job.done for job in running) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.stopping = True
        for _ in slots:
            self._jobs.put(None)
        for slot in slots:
            job = slot.job
            if all(waiting.done for waiting in list(slot.batch)):
                continue
            if slot.child is not None:
                slot.child.signal_kill()  # its thread reports the calls stopped, then stops itself
            elif self.isolation == "thread" and job is not None and not job.done:
                _settle(job, HandlerOutcome(False, [], list(job.output.lines) if job.output else [],
                                            "stopped: the handler pool was closed while the handler ran (its "
                                            "thread is left running: Python cannot stop a thread)", 0.0))
                slot.abandoned = True
        for slot in slots:
            if slot.thread is not None and not slot.abandoned:
                slot.thread.join(10)
        for child in self._spare:
            child.stop(1.0)
        self._spare.clear()
        with self._watch:
            self._watch.notify_all()

    # -- the slots -------------------------------------------------------------------------------------
    def _add_slot(self) -> None:
        slot = _Slot()
        slot.thread = threading.Thread(target=self._serve, args=(slot,), daemon=True,
                                       name=f"xflow-handler-{self._number}-{len(self._slots) + 1}")
        self._slots.append(slot)
        slot.thread.start()

    def _serve(self, slot: _Slot) -> None:
        try:
            last = False
            while not last:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:  # nothing waiting: this slot is idle until a call comes
                    with self._lock:
                        self._idle += 1
                    job = self._jobs.get()
                    with self._lock:
                        self._idle -= 1
                if job is None:
                    break
                if self.isolation == "thread":  # one call at a time
                    if not job._begin():
                        continue
                    batch = [job]
                else:
                    batch = [job]
                    for _ in range(self._batch_extra()):
                        try:
                            more = self._jobs.get_nowait()
                        except queue.Empty:
                            break
                        if more is None:
                            last = True
                            break
                        batch.append(more)
                    batch = [job for job in batch if job._begin()]
                    if not batch:
                        continue
                slot.batch = batch
                try:
                    if self.isolation == "thread":
                        self._serve_in_thread(slot, batch[0])
                    else:
                        self._serve_in_process(slot, batch)
                except BaseException as exc:  # a bug here (or no process can be started): fail what is left
                    log.exception("%s: the calls of %s failed unexpectedly", self.label,
                                  ", ".join(job.attempt.event_id for job in batch))
                    for job in batch:
                        _settle(job, HandlerOutcome(False, [], [], f"{type(exc).__name__}: {exc}", 0.0))
                finally:
                    slot.job = None
                    slot.batch = []
                if slot.abandoned:
                    return  # another slot has taken this one's place
        finally:
            if slot.child is not None and not slot.abandoned:
                slot.child.stop(1.0)
                slot.child = None

    def _batch_extra(self) -> int:
        """How many more waiting calls a slot that took one hands its process with it: none while another slot is
        idle (it takes them), else this slot's share of those waiting, and only as many as take about
        :data:`BATCH_SECONDS` (by the calls' mean duration so far: slow handlers are not batched)."""
        if self._idle:
            return 0
        waiting = self._jobs.qsize() // self._concurrency
        if not waiting:
            return 0
        mean = self._mean_duration
        if mean is None:
            return 0
        return min(BATCH - 1, waiting, int(BATCH_SECONDS / max(mean, 1e-6)))

    def _measured(self, duration: float) -> None:
        mean = self._mean_duration
        self._mean_duration = duration if mean is None else mean + (duration - mean) * 0.1

    def _serve_in_thread(self, slot: _Slot, job: Call) -> None:
        slot.job = job
        job.slot = slot
        job.started_at = time.time()
        try:
            outcome = self._run_in_thread(slot, job)
        except BaseException as exc:  # a bug here, or a BaseException the handler raised in thread mode
            log.exception("%s: the call of %s failed unexpectedly", self.label, job.attempt.event_id)
            outcome = HandlerOutcome(False, [], [], f"{type(exc).__name__}: {exc}", 0.0)
        job._end(outcome)

    def _serve_in_process(self, slot: _Slot, batch: list[Call]) -> None:
        """Run ``batch`` in the slot's process, in order: one message there, an answer per call back. A call that
        ends the process is failed with the reason; the calls after it go to another process."""
        calls: list[tuple[Call, bytes]] = []
        for job in batch:
            try:
                calls.append((job, pickled_call(job.data, job.attempt.as_tuple())))
            except Exception as exc:  # not picklable: this call fails, the others go on
                _settle(job, HandlerOutcome(False, [], [], f"the event cannot be sent to the handler process: {exc}",
                                            0.0))
        while calls:
            job = calls[0][0]
            slot.job = job
            if self.stopping:
                for job, _ in calls:
                    _settle(job, HandlerOutcome(False, [], [], "stopped: the handler pool was closed before the "
                                                               "handler ran", 0.0))
                return
            try:
                child = self._child(slot)
            except LoadFailed as exc:
                _settle(job, HandlerOutcome(False, [], exc.lines, f"cannot load handler {self.handler!r}: {exc}", 0.0))
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
                    _settle(job, outcome)
                    break
                _settle(job, outcome)
            calls = calls[done:]

    def _child(self, slot: _Slot) -> HandlerProcess:
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

    # -- thread isolation ------------------------------------------------------------------------------------
    def _load(self) -> Any:
        if self._function is None:
            with requirements_importable(self.import_paths):
                self._function = load_handler(self.source, self.handler)
        return self._function

    def _logger(self, slot: _Slot, attempt: Attempt) -> tuple[logging.Logger, OutputLogHandler]:
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

    def _run_in_thread(self, slot: _Slot, job: Call) -> HandlerOutcome:
        function = self._function
        if function is None:
            try:
                function = self._load()
            except HandlerLoadError as exc:
                return HandlerOutcome(False, [], [], f"cannot load handler {self.handler!r}: {exc}", 0.0)
        attempt = job.attempt
        logger, capture = slot.loggers.get((attempt.workflow_id, attempt.function_name)) or self._logger(slot, attempt)
        ctx = HandlerContext(attempt.execution_id, attempt.event_name, attempt.event_id, attempt.attempt,
                             attempt.workflow_id, attempt.function_name, logger)
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
                                   capture_logs=False)
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
        """Give the call its deadline. The watchdog is woken only when it waits for no call: it sets ``_wake_at``
        to infinity before it looks at the slots, so a call that starts meanwhile is seen by it, or wakes it (and
        every call's deadline is later than those of the calls that started before it)."""
        assert self.timeout is not None
        job.deadline = time.monotonic() + self.timeout
        if self._wake_at == math.inf:
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
                self._wake_at = earliest
                self._watch.wait(None if earliest == math.inf else max(0.0, earliest - now))

    def _abandon(self, job: Call) -> None:
        lines = job.output.finish()[:] if job.output is not None else []
        assert self.timeout is not None
        _settle(job, HandlerOutcome(False, [], lines, f"timed out after {seconds(self.timeout)}", self.timeout))
        slot = job.slot
        if slot is None or slot.abandoned:
            return
        slot.abandoned = True
        log.warning("%s: the call of %s timed out after %s; its thread is left running (Python cannot stop a "
                    "thread) and another takes its place", self.label, job.attempt.event_id, seconds(self.timeout))
        if not self._closed:
            self._add_slot()

    # -- logs --------------------------------------------------------------------------------------------
    def _reemit(self, records: list[dict[str, Any]], attempt: Attempt) -> None:
        """Log records sent back by a handler process, on ``xflow.functions.<workflow>.<function>``."""
        logger = logging.getLogger(f"xflow.functions.{attempt.workflow_id}.{attempt.function_name}")
        for fields in records:
            record = logging.makeLogRecord(fields)
            record.name = logger.name
            record.msecs = (record.created - int(record.created)) * 1000
            logger.handle(record)


def _private_copy(data: dict[str, Any]) -> dict[str, Any]:
    try:
        return pickle.loads(pickle.dumps(data, pickle.HIGHEST_PROTOCOL))
    except Exception:
        return data


@atexit.register
def _close_live_pools() -> None:
    """Pools left open at exit: their handler processes are stopped (before multiprocessing waits for them)."""
    for pool in list(_live_pools):
        with contextlib.suppress(Exception):
            pool.close(timeout=0.5)
