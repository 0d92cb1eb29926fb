"""Garbage-collector settings for a process that exists to run a worker (``xflow worker``, ``run``, ``serve``).

A worker makes a few small objects per delivery (the delivery, the decoded event, the job, the attempt's outcome,
the records for the tracker) that live from a poll until they are settled, a few milliseconds, and are freed by
reference counting; none of them forms a cycle. Under the interpreter's default thresholds the cycle collector
runs a young collection every 700 new objects and, every hundred of those, a full collection that walks every
object alive: the modules, classes and plugins loaded at start-up and every delivery in flight. Measured on a busy
worker (a no-op handler, 40,000 deliveries in memory) that walking took a quarter to a third of its time.

:func:`worker_collector` moves what is alive at start-up out of the collector's sight (``gc.freeze()``, after one
collection so that start-up garbage is not kept) and makes young collections rarer (:data:`YOUNG_THRESHOLD`).
Cycles are still collected, only less often; the objects frozen are still freed when nothing refers to them. On the
way out the frozen objects are handed back to the collector and the thresholds found are put back.

Only the commands that own their process use it: :class:`~xflow.core.worker.Worker` embedded in another
application leaves the collector alone, as it leaves the rest of the process (the application may call
:func:`worker_collector` itself).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: new objects between two young collections while a worker runs (the interpreter's default is 700)
YOUNG_THRESHOLD = 10_000

_lock = threading.Lock()
_active = 0


@contextmanager
def worker_collector(young: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """``with worker_collector():`` start-up objects frozen and young collections every ``young`` new objects;
    both undone on the way out. Nested uses change nothing more (the outermost one undoes it)."""
    global _active
    with _lock:
        outermost = _active == 0
        _active += 1
        previous = gc.get_threshold()
        if outermost:
            gc.collect()
            gc.freeze()
            gc.set_threshold(max(young, previous[0]), *previous[1:])
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if outermost:
                gc.set_threshold(*previous)
                gc.unfreeze()
