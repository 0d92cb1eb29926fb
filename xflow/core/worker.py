"""The :class:`Worker`: a workflow's functions, run by the provider's runner in a thread of the calling application.

Embedding example (a web application publishes from its request threads while the worker runs)::

    from xflow import Engine, Worker

    engine = Engine("orders.yaml")
    with Worker(engine):                      # starts a thread; stops it (and raises its error) on the way out
        engine.publish("OrderPlaced", {"order": 42})
        ...

A worker installs no signal handler and leaves ``sys.path``, ``sys.modules``, the standard streams and the
``logging`` configuration as it found them (handlers run in handler processes by default; see the local
provider's ``isolation`` option). Handler processes import the application's main module again, as those of any
``multiprocessing`` program do: keep the application's start-up under ``if __name__ == "__main__":``.

The delivery rules live in :mod:`xflow.core.delivery`; this module also keeps the
names older code imported from it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from xflow.core.delivery import hop_limit  # noqa: F401  (older imports)
from xflow.core.errors import XflowError
from xflow.core.interfaces import Runner
from xflow.core.publishing import OutgoingEvent, publish_events  # noqa: F401  (older imports)

if TYPE_CHECKING:
    from xflow.core.engine import Engine
    from xflow.logs.routing import Routing

#: the default of :meth:`Worker.stop`: how long handlers in flight may take to finish, in seconds
STOP_TIMEOUT = 30.0


class Worker:
    """Runs ``engine``'s workflow functions (``functions``, default all) in a background thread.

    ``start()`` starts it, ``stop(timeout)`` asks it to stop and waits, ``join()`` waits for it to end and raises
    the error that stopped it, if any; ``with Worker(engine):`` does all three. Stop is honoured within
    ``poll_interval`` seconds (default: the runner's, 0.05). What the provider's runner raised (a backend that
    stayed unavailable past its give-up time, a damaged state file, a handler that cannot be loaded) stops the
    worker and is raised by :meth:`join` (and by leaving the ``with`` block).
    """

    def __init__(self, engine: Engine, functions: Sequence[str] | None = None, *,
                 poll_interval: float | None = None) -> None:
        if poll_interval is not None and not poll_interval > 0:
            raise XflowError(f"poll_interval must be a number of seconds above 0, not {poll_interval!r}")
        self.engine = engine
        self.functions = list(functions) if functions else None
        self.poll_interval = poll_interval
        self._runner: Runner | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._error: BaseException | None = None
        self._raised = False
        self._logs: Routing | None = None

    @property
    def runner(self) -> Runner | None:
        """The provider's runner, once started."""
        return self._runner

    @property
    def handled(self) -> int:
        """Deliveries whose handler ran so far."""
        return self._runner.handled if self._runner is not None else 0

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._ended.is_set()

    def start(self) -> Worker:
        """Start the worker's thread. A provider that runs no functions here, or an unknown function name, is an
        XflowError raised now; anything later (a handler that cannot be loaded) comes from :meth:`join`."""
        if self._thread is not None:
            raise XflowError("this worker was started already; make a new Worker to start again")
        from xflow.logs.routing import start_routing  # the workflow's log routes, if any: the runner reports to them

        self._logs = start_routing(self.engine)
        try:
            runner = self.engine.dispatcher(self.functions)
        except BaseException:
            if self._logs is not None:
                self._logs.close()
                self._logs = None
            raise
        if self.poll_interval is not None:
            runner.poll_interval = self.poll_interval
        self._runner = runner
        self._thread = threading.Thread(target=self._main, name=f"xflow-worker-{self.engine.workflow.id}", daemon=True)
        self._thread.start()
        return self

    def _main(self) -> None:
        assert self._runner is not None
        try:
            self._runner.run(self._stop)
        except BaseException as exc:  # handed to join(), in the application's thread
            self._error = exc
        finally:
            if self._logs is not None:  # what the routes hold is sent (for a few seconds at most)
                self._logs.close()
            self._ended.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the worker to end (by itself: an error); True if it has ended."""
        return self._ended.wait(timeout)

    def stop(self, timeout: float | None = STOP_TIMEOUT) -> None:
        """Ask the worker to stop: nothing new starts, handlers in flight get until ``timeout`` (None: as long as
        they take) to finish and are settled; those still running then are left uncommitted and delivered again
        later. Waits for the worker's thread up to ``timeout`` (plus a moment to settle). Does not raise the
        worker's error: :meth:`join` does."""
        if self._runner is not None:
            if timeout is None:
                self._runner.grace_seconds = float("inf")
            else:
                # leave a part of the time for settling and committing what finished
                self._runner.grace_seconds = max(0.0, timeout - min(1.0, timeout / 4))
        self._stop.set()
        if self._thread is not None:
            self._thread.join(None if timeout is None else timeout + 1.0)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker's thread to end (``timeout``: at most that long) and raise the error that stopped it,
        once."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self._error is not None and self._ended.is_set() and not self._raised:
            self._raised = True
            raise self._error

    def run_until(self, until: Any = None, stop: threading.Event | None = None, *,
                  stop_timeout: float = STOP_TIMEOUT, check_every: float | None = None) -> None:
        """Start, then wait in this thread until ``until()`` is true, ``stop`` is set, or the worker ends by itself;
        then stop and join (raising the worker's error)."""
        self.start()
        interval = check_every or (self._runner.poll_interval if self._runner is not None else 0.05)
        try:
            while not self._ended.wait(interval):
                if stop is not None and stop.is_set():
                    break
                if until is not None and until():
                    break
        finally:
            self.stop(stop_timeout)
        self.join()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, kind: object, *rest: object) -> None:
        self.stop()
        if kind is None:
            self.join()
        else:
            self._join_quietly()

    def _join_quietly(self) -> None:
        """Join without raising over an exception already on its way."""
        deadline = time.monotonic() + 1.0
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.1)


@contextmanager
def stop_on_signals(stop: threading.Event, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """``with stop_on_signals(stop):`` SIGTERM and SIGINT set ``stop`` (the way ``xflow worker`` and ``xflow run``
    stop); the handlers found are put back on the way out. Only the main thread may do this (Python's rule)."""
    previous = {sig: signal.getsignal(sig) for sig in signals}
    try:
        for sig in signals:
            signal.signal(sig, lambda *_: stop.set())
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
