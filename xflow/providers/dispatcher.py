"""The local provider's runner: prepares each function's handler pool, runs one lane per function, and stops them.

Each function has a lane (:class:`~xflow.providers.lane.Lane`: a thread of its own, so a consumer group that is
joining, or a slow poll, holds up no other function) that polls its consumer and runs the handler concurrently in a
supervised pool, keeping order per execution, retrying without blocking, settling and committing in batches. This
module fetches the functions' sources, starts their handler pools (importing every handler first, so a broken one is
reported before anything runs), shares the lanes' locks, backend waiter and counters, and ends them.

Stopping: a lane notices ``stop`` within one poll interval, starts nothing new, gives the handlers in flight
``grace_seconds`` to finish, settles what finished and commits it; the rest stays uncommitted and is delivered
again later. An error that stops one lane (a backend's) stops the others at once, and is raised by :meth:`run`.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.interfaces import Runner, TrackerStore, Transport
from xflow.core.model import Function, Workflow
from xflow.core.waiting import BackendWaiter, StopRequested
from xflow.providers.lane import Lane
from xflow.providers.supervisor import HandlerPool
from xflow.sources.fetch import resolve_source

log = logging.getLogger("xflow")


class LocalDispatcher(Runner):
    """Runs the workflow's functions (or some of them) on this machine, one lane per function."""

    def __init__(self, workflow: Workflow, transport: Transport, tracker: TrackerStore, *,
                 functions: Iterable[str] | None = None, cache_dir: Path, batch_size: int = 100,
                 backoff_seconds: float = 0.2, backoff_max_seconds: float = 5.0, concurrency: int = 1,
                 isolation: str = "process", propagate_logs: bool = False, unavailable_give_up_seconds: float = 0.0,
                 grace_seconds: float = 30.0, import_paths: Mapping[str, Sequence[str]] | None = None) -> None:
        self.workflow, self.transport, self.tracker = workflow, transport, tracker
        #: per function, the folders its handler imports packages from (its installed requirements)
        self.import_paths = dict(import_paths or {})
        names = list(functions) if functions else list(workflow.functions)
        unknown = [n for n in names if n not in workflow.functions]
        if unknown:
            raise XflowError(f"no function named {unknown[0]!r} in {workflow.path}",
                             f"known functions: {', '.join(workflow.functions)}")
        self.functions = [workflow.functions[n] for n in names if workflow.subscriptions_of(n)]
        self.cache_dir = cache_dir
        self.batch_size = max(1, int(batch_size))
        self.backoff_seconds, self.backoff_max_seconds = backoff_seconds, backoff_max_seconds
        self.default_concurrency = concurrency
        self.isolation, self.propagate_logs = isolation, propagate_logs
        self.grace_seconds = grace_seconds
        self.handled = 0
        #: per event, when (``time.monotonic()``) a lane of this runner last published it
        self.published_at: dict[str, float] = {}
        #: held around every call of the lanes to the transport, and to the tracker (plugins need not be safe to share;
        #: one lock each, so that one lane's tracker writes do not wait for another's publishes)
        self.transport_lock = threading.RLock()
        self.tracker_lock = threading.RLock()
        #: set when the lanes must stop: ``stop`` was set, or a lane failed
        self.halt = threading.Event()
        self._stop: threading.Event | None = None
        self.grace_deadline = math.inf
        self.waiter = BackendWaiter(self._stopping, give_up_seconds=unavailable_give_up_seconds)
        self._pools: dict[str, HandlerPool] = {}
        self._errors: list[BaseException] = []
        self._state = threading.Lock()
        #: where this runner fetches remote sources (workers may share ``cache_dir``); removed when it ends
        self._workdir = cache_dir / f"fetched-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def concurrency_of(self, function: Function) -> int:
        """The function's ``concurrency:``, else the provider's option."""
        return int(getattr(function, "concurrency", None) or self.default_concurrency)

    def _stopping(self) -> bool:
        return self.halt.is_set() or (self._stop is not None and self._stop.is_set())

    # -- preparing ----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Fetch every source and import every handler (in a handler process), so a broken one is reported first."""
        if not self._pools:
            self.waiter.call(f"state folder {self.cache_dir.parent}", self._make_pools)

    def _make_pools(self) -> None:
        _sweep_stale_fetches(self.cache_dir)
        try:
            for function in self.functions:
                if function.name in self._pools:
                    continue
                workdir = self._workdir / function.name
                try:
                    source = resolve_source(self.workflow, function, workdir)
                except OSError as exc:  # the state folder: full, read-only, not ours
                    raise _state_folder_error(exc, f"function {function.name!r}: cannot prepare its source in "
                                                   f"{workdir}") from None
                pool = HandlerPool(source, function.handler, function.publishes, isolation=self.isolation,
                                   concurrency=self.concurrency_of(function), timeout=function.timeout,
                                   propagate_logs=self.propagate_logs, function_name=function.name,
                                   environment=function.environment,
                                   import_paths=self.import_paths.get(function.name, ()))
                try:
                    pool.check()
                except BaseException:
                    pool.close(0)
                    raise
                self._pools[function.name] = pool
        except BaseException:
            self._close_pools()
            raise

    # -- running ------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        lanes: list[Lane] = []
        try:
            self.prepare()
            lanes = [Lane(self, function, self._pools[function.name]) for function in self.functions]
            for lane in lanes:
                lane.thread.start()
            while not stop.wait(self.poll_interval):
                if self._errors or not any(lane.thread.is_alive() for lane in lanes):
                    break
            with self._state:
                self.grace_deadline = time.monotonic() + (0.0 if self._errors else max(0.0, self.grace_seconds))
        except StopRequested:
            log.info("stopped while waiting for a backend; what was not settled is delivered again")
        except BaseException as exc:
            self.fail(exc)
        finally:
            with self._state:
                self.grace_deadline = min(self.grace_deadline, time.monotonic() + max(0.0, self.grace_seconds))
            self.halt.set()
            for lane in lanes:
                lane.thread.join()
            self._close_pools()
            shutil.rmtree(self._workdir, ignore_errors=True)
        if self._errors:
            raise self._errors[0]

    def fail(self, exc: BaseException) -> None:
        """A lane (or the preparation) failed: keep the first error, and stop every lane at once."""
        with self._state:
            self._errors.append(exc)
            self.grace_deadline = time.monotonic()
        self.halt.set()

    def count_handled(self, count: int = 1) -> None:
        with self._state:
            self.handled += count

    def _close_pools(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            try:
                pool.close(0)
            except Exception as exc:  # closing must not hide what happened before
                log.debug("closing a handler pool: %s", exc)


def _state_folder_error(exc: OSError, what: str) -> XflowError:
    """``exc``, met writing in the state folder, as a one-line error: a full disk may pass, the rest needs the user."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BackendUnavailable(f"{what}: {reason}", "free space in the state folder; workers wait and go on")
    return XflowError(f"{what}: {reason}", "make the state folder writable by this user, or choose another with "
                                           "--state-dir")


def _sweep_stale_fetches(cache_dir: Path) -> None:
    """Remove the fetch folders of runners whose process is gone (killed before it could clean up)."""
    try:
        folders = list(cache_dir.glob("fetched-*-*"))
    except OSError:
        return
    for folder in folders:
        pid = folder.name.split("-")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or cannot tell: keep its folder
        return True
    return True

