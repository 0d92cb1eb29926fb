"""One function's lane in the local provider's runner: a thread that polls its consumer, runs the handler
concurrently in a supervised pool keeping order per execution, retries without blocking, settles and commits in batches.

A lane polls up to ``batch_size`` records at a time and keeps what it polled in order per partition. Deliveries of
one execution run one after the other, in the order they were polled; different executions run at once, up to the
function's ``concurrency``. A failed attempt is tried again at a not-before time (exponential backoff with jitter)
while the lane goes on with other executions; only the later events of that execution wait. Attempts that finished
are settled together (:meth:`FunctionDelivery.settle`: a batch of tracker writes, publishes grouped per stream), and
each partition is committed up to its lowest unsettled record (the "lowest incomplete offset" of key-ordered
parallel consumers; at most every :data:`COMMIT_EVERY` seconds while busy, and at stop), so what was not settled, or
settled but not yet committed, is delivered again after a crash and dropped as already handled if it had succeeded.
While handlers run, the lane keeps its consumer alive (:meth:`Consumer.keep_alive`, which renews the local
transport's leases).

Stopping: a lane notices the runner's ``halt`` within one poll interval, starts nothing new, gives the handlers in
flight until the runner's grace deadline to finish, settles what finished and commits it; the rest stays
uncommitted and is delivered again later. An error that stops a lane is handed to the runner
(:meth:`LocalDispatcher.fail <xflow.providers.dispatcher.LocalDispatcher.fail>`), which stops the others.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import itertools
import logging
import math
import queue
import threading
import time
from collections import OrderedDict, deque
from functools import partial
from typing import TYPE_CHECKING, Any

from xflow.core.delivery import Finished, FunctionDelivery, Job
from xflow.core.interfaces import Consumer, Delivery
from xflow.core.model import Function
from xflow.core.runtime import BadMessage, HandlerOutcome, decode_event
from xflow.core.waiting import StopRequested
from xflow.providers.handler_calls import Attempt, Call
from xflow.providers.supervisor import HandlerPool

if TYPE_CHECKING:
    from xflow.providers.dispatcher import LocalDispatcher

log = logging.getLogger("xflow")

#: the most deliveries a lane holds (polled, not yet committed), in batches of ``batch_size``
PENDING_BATCHES = 50
#: how long an attempt that finished may wait for others to be settled with it, in seconds (an attempt that took
#: longer than this is settled at once)
SETTLE_AFTER = 0.01
#: how many event ids that succeeded a lane remembers (to skip a duplicate delivery held at the same time)
RECENT_SUCCESSES = 10_000
#: how many calls per unit of concurrency a lane hands the pool at once (of different executions): the pool runs
#: ``concurrency`` of them at a time and starts the next as soon as one ends, without waiting for the lane
SUBMIT_AHEAD = 64
#: an idle lane whose events another lane of this runner published less than ``HOT_SECONDS`` ago polls with this
#: timeout (seconds) rather than the poll interval: a chain of functions in one worker hands its events on at once
HOT_POLL = 0.005
HOT_SECONDS = 0.5
#: how often (seconds) a busy lane commits what it settled: a commit is a write on the transport (a transaction of
#: the local log, a request to Kafka), and what was settled but not yet committed is only delivered again after a
#: crash, where it is skipped as already handled (as a Kafka consumer's auto-commit interval leaves it)
COMMIT_EVERY = 0.1


class _Entry:
    """A delivery a lane holds, from its poll until its partition is committed past it."""

    __slots__ = ("delivery", "job", "settled", "started_at")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.job: Job | None = None
        self.settled = False
        self.started_at = 0.0


class Lane:
    """One function's loop: poll, admit, start, collect, settle, commit (see the module's docstring)."""

    def __init__(self, runner: LocalDispatcher, function: Function, pool: HandlerPool) -> None:
        self.runner, self.function, self.pool = runner, function, pool
        self.rules = FunctionDelivery(runner.workflow, runner.transport, runner.tracker, function, runner.waiter,
                                      backoff_seconds=runner.backoff_seconds,
                                      backoff_max_seconds=runner.backoff_max_seconds,
                                      transport_lock=runner.transport_lock, tracker_lock=runner.tracker_lock)
        self.concurrency = runner.concurrency_of(function)
        self.batch_size = runner.batch_size
        self.max_pending = runner.batch_size * PENDING_BATCHES
        self.label = f"transport {getattr(runner.transport, 'name', type(runner.transport).__name__)!r}"
        self.thread = threading.Thread(target=self._main, name=f"xflow-lane-{function.name}", daemon=True)
        self.consumer: Consumer | None = None
        #: what is held, per (event, partition), in polled order
        self.units: dict[tuple[str, str], deque[_Entry]] = {}
        self.positions: dict[tuple[str, str], set[str]] = {}
        self.pending = 0
        #: per execution, its jobs in order; the head runs (or waits for its not-before time) when the key is free
        self.keys: dict[str, deque[_Entry]] = {}
        #: the execution's entry that runs, or whose failed attempt awaits settling
        self.busy: dict[str, _Entry] = {}
        self.ready: deque[str] = deque()
        self.delayed: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        #: calls handed to the pool (running, or queued in it), and those that ended, as the pool ends them
        self.running: dict[Call, _Entry] = {}
        self.ended: queue.SimpleQueue[Call] = queue.SimpleQueue()
        self.window = max(self.concurrency, min(self.batch_size, self.concurrency * SUBMIT_AHEAD))
        self.finished: list[tuple[_Entry, Finished]] = []
        self.first_finished = math.inf
        self.dirty: set[tuple[str, str]] = set()
        self.committed_at = -math.inf
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.events = tuple(runner.workflow.subscriptions_of(function.name))

    # -- the thread ---------------------------------------------------------------------------
    def _main(self) -> None:
        events = self.runner.workflow.subscriptions_of(self.function.name)
        try:
            try:
                self.consumer = self.rules._transport(
                    lambda: self.runner.transport.subscribe(self.function.name, events))
                self._loop()
                self._drain()
            except StopRequested:
                log.info("%s: stopped while waiting for a backend; what was not settled is delivered again",
                         self.function.name)
        except BaseException as exc:
            self.runner.fail(exc)
        finally:
            if self.consumer is not None:
                try:
                    self.consumer.close()
                except Exception as exc:  # leaving the group is best effort: the transport expires members
                    log.warning("%s: could not leave the consumer group cleanly: %s", self.function.name, exc)

    def _loop(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        interval = max(0.001, self.runner.poll_interval)
        last_poll = -math.inf
        halt = self.runner.halt
        while not halt.is_set():
            began = time.monotonic()
            self.runner.waiter.call(self.label, consumer.keep_alive)
            self._release_due(began)
            room = self.max_pending - self.pending
            polled = asked = 0
            waited = False
            if room > 0 and (not self._startable() or began - last_poll >= interval):
                asked = min(self.batch_size, room)
                idle = not self.running and not self.ready and not self.finished
                timeout = min(interval, self._next_due(began)) if idle else 0.0
                if timeout > HOT_POLL and self._upstream_active(began):
                    timeout = HOT_POLL
                deliveries = self.runner.waiter.call(self.label, partial(consumer.poll, asked, timeout))
                last_poll = time.monotonic()
                waited = timeout > 0
                if deliveries:
                    polled = len(deliveries)
                    self._admit(deliveries)
            self._start()
            if self.rules.observer is not None:  # metrics (None: off)
                self.rules.observer.in_flight(self.runner.workflow.id, self.function.name, len(self.running))
            now = time.monotonic()
            wait = min(interval, self._next_due(now), self.first_finished + SETTLE_AFTER - now)
            if self._startable() or (polled and polled >= asked and self.pending < self.max_pending):
                wait = 0.0
            if self.running:
                self._collect(max(0.0, wait))
            elif wait > 0 and not waited and not polled:
                halt.wait(wait)
            if self.finished and (len(self.finished) >= self.batch_size or not (self.running or self._startable())
                                  or time.monotonic() - self.first_finished >= SETTLE_AFTER):
                self._settle()
            if self.dirty and (time.monotonic() - self.committed_at >= COMMIT_EVERY
                               or self.pending >= self.max_pending // 2):
                self._commit()

    def _drain(self) -> None:
        """Stopping: let the handlers in flight finish until the grace deadline, settle what finished, commit."""
        for call in list(self.running):
            if call.cancel():  # handed to the pool but not started: it is not run (it is delivered again)
                del self.running[call]
        while self.running:
            left = self.runner.grace_deadline - time.monotonic()
            if left <= 0:
                break
            self._collect(min(left, max(0.001, self.runner.poll_interval)))
        if self.running:
            log.info("%s: %d handlers still running at stop are left unsettled; their deliveries come again",
                     self.function.name, len(self.running))
        if self.finished:
            self._settle()
        self._commit()

    # -- scheduling ---------------------------------------------------------------------------
    def _startable(self) -> bool:
        return bool(self.ready) and len(self.running) < self.window

    def _upstream_active(self, now: float) -> bool:
        """Whether another lane of this runner published one of this lane's events a moment ago."""
        published = self.runner.published_at
        return any(now - published.get(event, -math.inf) < HOT_SECONDS for event in self.events)

    def _next_due(self, now: float) -> float:
        return max(0.0, self.delayed[0][0] - now) if self.delayed else math.inf

    def _release_due(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            _, _, key = heapq.heappop(self.delayed)
            if key in self.keys and key not in self.busy:
                self.ready.append(key)

    def _admit(self, deliveries: list[Delivery]) -> None:
        fresh: list[_Entry] = []
        for delivery in deliveries:
            unit = (delivery.event, delivery.partition)
            held = self.positions.get(unit)
            if held is None:
                held = self.positions[unit] = set()
                self.units[unit] = deque()
            elif delivery.position in held:
                continue  # polled again (the partition went away and came back): the held one settles it
            held.add(delivery.position)
            entry = _Entry(delivery)
            self.units[unit].append(entry)
            fresh.append(entry)
        self.pending += len(fresh)
        jobs = self.rules.admit([entry.delivery for entry in fresh])
        for entry, job in zip(fresh, jobs, strict=True):
            if job is None:
                self._settled(entry)
                continue
            entry.job = job
            key = job.execution_id
            queue = self.keys.get(key)
            if queue is None:
                queue = self.keys[key] = deque()
            queue.append(entry)
            if len(queue) == 1 and key not in self.busy:
                self.ready.append(key)

    def _start(self) -> None:
        now = time.monotonic()
        first = 0  # first attempts started (counted once for the batch)
        ready, keys, busy, running, window = self.ready, self.keys, self.busy, self.running, self.window
        workflow_id, function_name = self.runner.workflow.id, self.function.name
        start, ended = self.pool.start, self.ended.put
        while ready and len(running) < window:
            key = ready.popleft()
            queue = keys.get(key)
            if not queue or key in busy:
                continue
            entry = queue[0]
            job = entry.job
            assert job is not None
            if job.not_before > now:
                heapq.heappush(self.delayed, (job.not_before, next(self._sequence), key))
                continue
            if job.attempts == 0 and job.event.event_id in self.recent:
                # the same event, delivered twice, succeeded here a moment ago: a duplicate
                if self.rules.observer is not None:
                    self.rules.observer.settled(self.runner.workflow.id, self.function.name, "skipped-duplicate", None)
                queue.popleft()
                self._settled(entry)
                self._next_of(key)
                continue
            busy[key] = entry
            job.attempts += 1
            if job.attempts == 1:
                first += 1
            entry.started_at = time.time()
            attempt = Attempt(workflow_id, function_name, job.execution_id, job.delivery.event, job.event.event_id,
                              job.attempts)
            # the first attempt gets the decoded data itself; a retry decodes the record again (the first may have
            # changed what it got)
            data = job.event.data if job.attempts == 1 else self._data(job)
            running[start(data, attempt, ended, owned=True)] = entry
        if first:
            self.runner.count_handled(first)

    def _data(self, job: Job) -> dict[str, Any]:
        """The event's data as the record holds it."""
        try:
            return decode_event(job.delivery.value, self.rules.where(job.delivery)).data
        except BadMessage:  # it was decoded once: cannot happen, but never hand over the first attempt's dict
            return copy.deepcopy(job.event.data)

    def _next_of(self, key: str) -> None:
        """The execution's key is free: its next job may start (or the key is forgotten)."""
        queue = self.keys.get(key)
        if queue:
            if key not in self.busy:
                self.ready.append(key)
        else:
            self.keys.pop(key, None)

    def _collect(self, timeout: float) -> None:
        """Take the calls that ended, waiting up to ``timeout`` seconds for one."""
        try:
            done = [self.ended.get(timeout=timeout) if timeout > 0 else self.ended.get_nowait()]
        except queue.Empty:
            return
        with contextlib.suppress(queue.Empty):
            while True:
                done.append(self.ended.get_nowait())
        running, finished, recent = self.running, self.finished, self.recent
        if not finished:
            self.first_finished = time.monotonic()
        for call in done:
            entry = running.pop(call, None)
            if entry is None:
                continue  # cancelled at stop
            job = entry.job
            assert job is not None
            outcome = call.outcome
            if outcome is None:  # cannot happen: a call is ended with its outcome
                outcome = HandlerOutcome(False, [], [], "the handler could not be run", 0.0)
            if outcome.duration >= SETTLE_AFTER:
                # a slow handler gains nothing from waiting for others to settle with: settle it at once (what
                # ran and is not settled runs again after a crash)
                self.first_finished = -math.inf
            # when the handler started on it (the call may have waited in the pool for a free slot)
            finished.append((entry, Finished(job, outcome, call.started_at or entry.started_at)))
            if outcome.ok:  # the execution's next event may start now; a failure holds it until settled
                self._release(entry)
                recent[job.event.event_id] = None
        if not finished:  # every call taken was cancelled at stop
            self.first_finished = math.inf
        while len(recent) > RECENT_SUCCESSES:
            recent.popitem(last=False)

    def _release(self, entry: _Entry) -> None:
        """Take a job out of its execution's queue; the next one may start."""
        assert entry.job is not None
        key = entry.job.execution_id
        queue = self.keys.get(key)
        if queue:
            if queue[0] is entry:  # the usual case: the execution's head
                queue.popleft()
            elif entry in queue:
                queue.remove(entry)
        if self.busy.get(key) is entry:
            del self.busy[key]
        self._next_of(key)

    # -- settling and committing ----------------------------------------------------------------
    def _settle(self) -> None:
        finished, self.finished = self.finished, []
        self.first_finished = math.inf
        retry = {id(job) for job in self.rules.settle([item for _, item in finished])}
        published = {name for _, item in finished if item.outcome.ok for name, _ in item.outcome.published}
        if published:
            now = time.monotonic()
            for name in published:
                self.runner.published_at[name] = now
        dirty = self.dirty
        for entry, item in finished:
            job = item.job
            if id(job) not in retry:
                if not item.outcome.ok:
                    self._release(entry)
                entry.settled = True  # (what _settled does, inline: once per delivery)
                dirty.add((entry.delivery.event, entry.delivery.partition))
                continue
            self.recent.pop(job.event.event_id, None)
            key = job.execution_id
            queue = self.keys.setdefault(key, deque())
            if entry not in queue:  # it succeeded but its events could not be published: again, first
                queue.appendleft(entry)
            if self.busy.get(key) is entry:
                del self.busy[key]
            heapq.heappush(self.delayed, (job.not_before, next(self._sequence), key))

    def _settled(self, entry: _Entry) -> None:
        entry.settled = True
        self.dirty.add((entry.delivery.event, entry.delivery.partition))

    def _commit(self) -> None:
        """Commit each partition that moved up to its lowest unsettled record."""
        if not self.dirty:
            return
        done: list[Delivery] = []
        for unit in self.dirty:
            queue = self.units.get(unit)
            last = None
            while queue and queue[0].settled:
                last = queue.popleft()
                self.positions[unit].discard(last.delivery.position)
                self.pending -= 1
            if last is not None:
                done.append(last.delivery)
        self.dirty.clear()
        self.committed_at = time.monotonic()
        if done:
            consumer = self.consumer
            assert consumer is not None
            self.runner.waiter.call(self.label, lambda: consumer.commit(done))
