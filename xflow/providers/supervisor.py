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

This module holds the pool and its slots' loop; the calls and slots are in :mod:`~xflow.providers.handler_calls`,
each isolation's way of running a call in :mod:`~xflow.providers.thread_isolation` and
:mod:`~xflow.providers.process_isolation`, the handler processes in :mod:`~xflow.providers.handler_process` (the
parent's end) and :mod:`~xflow.providers.handler_child` (the loop they run).
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
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xflow.core.errors import XflowError
from xflow.core.runtime import HandlerLoadError, HandlerOutcome, handler_file
from xflow.providers.handler_calls import Attempt, Call, Slot, settle
from xflow.providers.handler_process import HandlerProcess, LoadFailed
from xflow.providers.process_isolation import ProcessIsolation
from xflow.providers.thread_isolation import ThreadIsolation

log = logging.getLogger("xflow.supervisor")
ISOLATIONS = ("process", "thread")
#: how handler processes are started: a fork of a clean server process where there is one, else a fresh interpreter
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
#: the most calls a slot hands its handler process in one message
BATCH = 64
#: about how long (by the handler's mean duration) the calls a slot hands its process together take, in seconds
BATCH_SECONDS = 0.005


_live_pools: weakref.WeakSet[HandlerPool] = weakref.WeakSet()
_numbers = itertools.count(1)


class HandlerPool(ThreadIsolation, ProcessIsolation):
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
        self._slots: list[Slot] = []
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
                settle(job, HandlerOutcome(False, [], list(job.output.lines) if job.output else [],
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
        slot = Slot()
        slot.thread = threading.Thread(target=self._serve, args=(slot,), daemon=True,
                                       name=f"xflow-handler-{self._number}-{len(self._slots) + 1}")
        self._slots.append(slot)
        slot.thread.start()

    def _serve(self, slot: Slot) -> None:
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
                        settle(job, HandlerOutcome(False, [], [], f"{type(exc).__name__}: {exc}", 0.0))
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


@atexit.register
def _close_live_pools() -> None:
    """Pools left open at exit: their handler processes are stopped (before multiprocessing waits for them)."""
    for pool in list(_live_pools):
        with contextlib.suppress(Exception):
            pool.close(timeout=0.5)
