"""The delivery rules every runner of functions follows, in batches: admit what a poll returned, settle what ran.

Admitting a poll's deliveries for one function: a record that cannot be decoded is dead-lettered with the reason;
every decoded event is recorded (one ``record_events`` call), except those the workflow's handlers published,
which were recorded when their handler's attempt was settled; events the function already handled successfully are
skipped (one ``succeeded_among`` query: re-deliveries after a crash); an event more than the workflow's hop limit of
handler publishes away from the event published from outside (``general: {hop_limit: N}``, default 1000) is
recorded failed and dead-lettered, which ends a cycle; so is an event whose budget (the deliveries it and the events
that follow from it may still make, out of ``general: {event_limit: N}``, default 100,000, per event published from
outside; :func:`~xflow.core.wire.child_budget`) is smaller than its number of subscribers, which ends a cycle that
fans out. The rest become :class:`Job` s for the runner to run.

Settling the attempts that finished: the events each successful handler published are checked (events of the
workflow, JSON) and published grouped per stream, then recorded with every attempt's outcome (one
``record_batch`` call: one transaction where the tracker has them). A failed attempt with retries left is ``retrying`` and comes
back from :meth:`FunctionDelivery.settle` with a not-before time (exponential backoff with jitter), so the runner
keeps working on other executions meanwhile; the last failed attempt is ``failed`` and dead-lettered. A runner
commits a delivery only once it is settled (succeeded, skipped or dead-lettered).

No record stops a runner: a record whose content makes a batch call fail is found by calling again one record at a
time, recorded failed (best effort) and dead-lettered with the reason. Only a problem with a backend stops it:
:class:`XflowError`, a plugin's ``connection_errors``, a damaged SQLite file. A :class:`BackendUnavailable` (a full
disk, a broker restart, throttling) is waited out where it happened (:class:`~xflow.core.waiting.BackendWaiter`).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any, TypeVar

from xflow.core import observe
from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.fastrecords import new_delivery_record, new_event_record, new_record
from xflow.core.interfaces import Delivery, DeliveryRecord, DeliveryStatus, EventRecord, Record, TrackerStore, Transport
from xflow.core.model import Function, Workflow
from xflow.core.runtime import (
    DEFAULT_EVENT_LIMIT,
    DEFAULT_HOP_LIMIT,
    MAX_EPOCH,
    MIN_EPOCH,
    BadMessage,
    DecodedEvent,
    HandlerOutcome,
    JsonObject,
    child_budget,
    decode_event,
    derive_event_id,
    encode_event,
    encode_event_json,
)
from xflow.core.sqlite_files import StateFileError
from xflow.core.tracker_batches import batch_method, record_batch_method
from xflow.core.waiting import BackendWaiter, StopRequested
from xflow.monitoring import tracing

log = logging.getLogger("xflow")

T = TypeVar("T")
#: the id :func:`decode_event` gives a record that is not a CloudEvent (replaced by where the record lies)
_NO_ID = "\x00not-a-cloudevent"


def hop_limit(workflow: Workflow) -> int:
    """How many handler publishes an event may be away from the one published from outside (default 1000)."""
    value = getattr(workflow, "hop_limit", None) or (workflow.general or {}).get("hop_limit") or DEFAULT_HOP_LIMIT
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return DEFAULT_HOP_LIMIT


def event_limit(workflow: Workflow) -> int:
    """How many deliveries one event published from outside may lead to (default 100,000)."""
    value = getattr(workflow, "event_limit", None) or (workflow.general or {}).get("event_limit") or DEFAULT_EVENT_LIMIT
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return DEFAULT_EVENT_LIMIT


class Job:
    """A delivery whose handler is to run: its record, the event decoded, and the attempts made so far (a plain
    class with slots: one is made per delivery)."""

    __slots__ = ("delivery", "event", "attempts", "not_before", "execution_id")

    def __init__(self, delivery: Delivery, event: DecodedEvent, attempts: int = 0, not_before: float = 0.0) -> None:
        self.delivery = delivery
        self.event = event
        #: attempts made so far
        self.attempts = attempts
        #: ``time.monotonic()`` before which it is not tried again (after a failed attempt)
        self.not_before = not_before
        #: the event's execution id (read often: kept here)
        self.execution_id: str = event.execution_id

    def __repr__(self) -> str:
        return f"Job({self.delivery!r}, attempts={self.attempts})"


class Finished:
    """One attempt that ran: the job, the outcome and when (``time.time()``) it started."""

    __slots__ = ("job", "outcome", "started_at")

    def __init__(self, job: Job, outcome: HandlerOutcome, started_at: float) -> None:
        self.job = job
        self.outcome = outcome
        self.started_at = started_at


class FunctionDelivery:
    """The delivery rules of one function on a transport and a tracker, in batches (see the module's docstring).

    ``transport_lock`` and ``tracker_lock`` (optional) are held around every call of that plugin, for runners whose
    threads share plugins that are not safe to share (``lock``: one lock for both); ``waiter`` runs those calls,
    waiting out unavailable backends.
    """

    def __init__(self, workflow: Workflow, transport: Transport, tracker: TrackerStore, function: Function,
                 waiter: BackendWaiter, *, backoff_seconds: float = 0.2, backoff_max_seconds: float = 5.0,
                 lock: AbstractContextManager[Any] | None = None,
                 transport_lock: AbstractContextManager[Any] | None = None,
                 tracker_lock: AbstractContextManager[Any] | None = None) -> None:
        self.workflow, self.transport, self.tracker, self.function = workflow, transport, tracker, function
        self.waiter = waiter
        self.backoff_seconds, self.backoff_max_seconds = max(0.0, backoff_seconds), max(0.0, backoff_max_seconds)
        self.attempts = function.retries + 1
        self.hop_limit = hop_limit(workflow)
        self.event_limit = event_limit(workflow)
        #: each event's number of subscribers (what its budget pays for first)
        self._subscribers: dict[str, int] = {}
        self.producer = f"xflow/{workflow.id}/{function.name}"
        self._ours = f"xflow/{workflow.id}/"
        self.observer = observe.current()  # metrics, when a worker serves them (None: off)
        self.spans = tracing.spans()  # OpenTelemetry spans, when on (None: the trace context is only carried)
        self._transport_lock: AbstractContextManager[Any] = transport_lock or lock or nullcontext()
        self._tracker_lock: AbstractContextManager[Any] = tracker_lock or lock or nullcontext()
        self._transport_label = f"transport {getattr(transport, 'name', type(transport).__name__)!r}"
        self._tracker_label = f"tracker {getattr(tracker, 'name', type(tracker).__name__)!r}"
        # batch calls, unless a subclass of the tracker changed the single call they would bypass
        self._record_events = batch_method(tracker, "record_events", "record_event")
        self._record_deliveries = batch_method(tracker, "record_deliveries", "record_delivery")
        self._succeeded_among = batch_method(tracker, "succeeded_among", "has_succeeded")
        self._record_batch = record_batch_method(tracker, self._record_events, self._record_deliveries)
        #: what stops a runner: a problem with a backend, never a record's content
        self.fatal: tuple[type[BaseException], ...] = (
            XflowError, StopRequested, *getattr(transport, "connection_errors", ()),
            *getattr(tracker, "connection_errors", ()))

    # -- backend calls ------------------------------------------------------------------------
    def _tracker(self, call: Callable[[], T]) -> T:
        return self.waiter.call(self._tracker_label, partial(_locked, self._tracker_lock, call))

    def _transport(self, call: Callable[[], T]) -> T:
        return self.waiter.call(self._transport_label, partial(_locked, self._transport_lock, call))

    def is_fatal(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a backend's problem (stop the runner) rather than a record's (set the record aside)."""
        return isinstance(exc, self.fatal) or type(exc) is sqlite3.DatabaseError or not isinstance(exc, Exception)

    def _each(self, items: Sequence[Any], batch: Callable[[Sequence[Any]], Any],
              single: Callable[[Any], Any]) -> tuple[Any, dict[int, Exception]]:
        """``batch(items)`` through the tracker; if it fails because of the content, ``single(item)`` for each item.
        Returns the batch's result (None after the fallback) and the exception of each item that failed alone."""
        if not items:
            return None, {}
        try:
            return self._tracker(lambda: batch(items)), {}
        except Exception as exc:
            if self.is_fatal(exc):
                raise
        failures: dict[int, Exception] = {}
        for index, item in enumerate(items):
            try:
                self._tracker(partial(single, item))
            except Exception as exc:
                if self.is_fatal(exc):
                    raise
                failures[index] = exc
        return None, failures

    def subscriber_count(self, event: str) -> int:
        count = self._subscribers.get(event)
        if count is None:
            count = self._subscribers[event] = max(1, len(self.workflow.subscribers(event)))
        return count

    # -- admitting a poll -----------------------------------------------------------------------
    def where(self, delivery: Delivery) -> str:
        return f"{self.transport.stream_name(delivery.event)}:{delivery.partition}:{delivery.position}"

    def admit(self, deliveries: Sequence[Delivery]) -> list[Job | None]:
        """Per delivery, the job to run, or None when it is settled already (skipped, or dead-lettered)."""
        result: list[Job | None] = [None] * len(deliveries)
        decoded: list[tuple[int, Delivery, DecodedEvent]] = []
        for index, delivery in enumerate(deliveries):
            try:
                event = decode_event(delivery.value, _NO_ID)
            except BadMessage as exc:
                self.dead_letter(delivery, f"undecodable record at {self.where(delivery)}: {exc}")
                continue
            if event.event_id is _NO_ID:  # not a CloudEvent: it is known by where it lies
                event.event_id = self.where(delivery)
            if event.producer == "external" and delivery.timestamp is not None and (
                    MIN_EPOCH <= delivery.timestamp <= MAX_EPOCH):
                event.published_at = delivery.timestamp  # another producer's record: its time on the transport
            decoded.append((index, delivery, event))
        # events this workflow's handlers published were recorded when their handler's attempt was settled (before
        # it counted as succeeded; else it runs again and records them); the others are recorded here
        recorded = [position for position, (_, _, e) in enumerate(decoded) if not e.producer.startswith(self._ours)]
        records = [new_event_record(e.execution_id, e.event_id, d.event, e.published_at, e.producer, e.data)
                   for _, d, e in (decoded[position] for position in recorded)]
        _, broken = self._each(records, self._record_events, self.tracker.record_event)
        decoded = self._set_aside(decoded, {recorded[index]: problem for index, problem in broken.items()})
        function = self.function.name
        keys = [(e.execution_id, e.event_id, function) for _, _, e in decoded]
        succeeded, broken = self._succeeded(keys)
        decoded = self._set_aside(decoded, broken)
        failures: list[tuple[Delivery, DeliveryRecord]] = []
        for index, delivery, event in decoded:
            if succeeded and (event.execution_id, event.event_id, function) in succeeded:
                if self.observer is not None:
                    self.observer.settled(self.workflow.id, self.function.name, "skipped-duplicate", None)
                continue
            if event.hops > self.hop_limit:
                reason = (f"execution {event.execution_id} exceeded the hop limit of {self.hop_limit} events; a cycle? "
                          f"({delivery.event} {event.event_id} is {event.hops} handler publishes away from the event "
                          "published from outside; raise general.hop_limit in the workflow file if this is intended)")
                failures.append((delivery, DeliveryRecord(event.execution_id, event.event_id, delivery.event,
                                                          self.function.name, 1, "failed", time.time(), 0.0, reason)))
                continue
            if event.budget is not None and event.budget < self.subscriber_count(delivery.event):
                reason = (f"execution {event.execution_id} exceeded the event limit of {self.event_limit} deliveries "
                          f"from one event published from outside; a cycle that fans out? ({delivery.event} "
                          f"{event.event_id} has a budget of {event.budget} deliveries left for its "
                          f"{self.subscriber_count(delivery.event)} subscribers; raise general.event_limit in the "
                          "workflow file if this is intended)")
                failures.append((delivery, DeliveryRecord(event.execution_id, event.event_id, delivery.event,
                                                          self.function.name, 1, "failed", time.time(), 0.0, reason)))
                continue
            result[index] = Job(delivery, event)
        if failures:
            _, broken = self._each([r for _, r in failures], self._record_deliveries,
                                   self.tracker.record_delivery)
            if self.observer is not None:
                self.observer.attempts(self.workflow.id, [r for _, r in failures])
            for index, (delivery, record) in enumerate(failures):
                problem = broken.get(index)
                reason = (record.error or "") if problem is None else self._unsettled(delivery, problem)
                self.dead_letter(delivery, reason)
        return result

    def _succeeded(self, keys: list[tuple[str, str, str]]) -> tuple[set[tuple[str, str, str]], dict[int, Exception]]:
        if not keys:
            return set(), {}
        found, broken = self._each(keys, self._succeeded_among, lambda key: self.tracker.has_succeeded(*key))
        if found is not None:
            return set(found), {}
        # the batch failed because of some record: ask one at a time (the broken ones are set aside)
        succeeded = {key for index, key in enumerate(keys) if index not in broken
                     and self._tracker(partial(self.tracker.has_succeeded, *key))}
        return succeeded, broken

    def _set_aside(self, decoded: list[tuple[int, Delivery, DecodedEvent]],
                   broken: dict[int, Exception]) -> list[tuple[int, Delivery, DecodedEvent]]:
        """Dead-letter the records a tracker call failed on (their content broke it); the others go on."""
        if not broken:
            return decoded
        for position, problem in broken.items():
            _, delivery, event = decoded[position]
            reason = self._unsettled(delivery, problem, event)
            self.record_failure(delivery.event, event, reason)
            self.dead_letter(delivery, reason)
        return [item for position, item in enumerate(decoded) if position not in broken]

    def _unsettled(self, delivery: Delivery, exc: BaseException, event: DecodedEvent | None = None) -> str:
        where = self.where(delivery)
        execution = f" (execution {event.execution_id!r})" if event is not None else ""
        log.error("%s: settling %s at %s%s failed: %s: %s", self.function.name, delivery.event, where, execution,
                  type(exc).__name__, exc, exc_info=exc)
        return f"cannot settle the record at {where}{execution}: {type(exc).__name__}: {exc}"

    # -- settling attempts ----------------------------------------------------------------------
    def retry_delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1``: exponential from ``backoff_seconds``, capped, with jitter."""
        delay = min(self.backoff_max_seconds, self.backoff_seconds * 2 ** max(0, attempt - 1))
        return min(self.backoff_max_seconds, delay + random.uniform(0, self.backoff_seconds))

    def settle(self, finished: Sequence[Finished]) -> list[Job]:
        """Publish and record the outcomes of these attempts; dead-letter the last failures. Returns the jobs to try
        again (``not_before`` set); every other job is settled."""
        outcomes = [item.outcome for item in finished]
        outgoing: dict[int, list[tuple[EventRecord, Record]]] = {}
        now = time.time()
        spans = self.spans
        for index, item in enumerate(finished):
            parent = None if spans is None else self._spans(spans, item, now)
            if item.outcome.ok and item.outcome.published:
                events, problem = self._outgoing(item.job, outcomes[index], now, parent)
                if problem is None:
                    outgoing[index] = events
                else:
                    outcomes[index] = _failed(outcomes[index], f"publishing failed: {problem}")
        for index, refusal in self._publish(outgoing).items():
            outgoing.pop(index)
            outcomes[index] = _failed(outcomes[index], f"publishing failed: {refusal}")
        published = [e for events in outgoing.values() for e, _ in events]
        records: list[DeliveryRecord] = []
        retry: list[Job] = []
        function, attempts, observer = self.function.name, self.attempts, self.observer
        for index, item in enumerate(finished):
            outcome, job = outcomes[index], item.job
            if outcome.ok:
                status: DeliveryStatus = "succeeded"
            else:
                status = "failed" if job.attempts >= attempts else "retrying"
                log.warning("%s failed on %s (execution %s, attempt %d/%d): %s", function, job.delivery.event,
                            job.execution_id, job.attempts, attempts, outcome.error)
            records.append(new_delivery_record(job.execution_id, job.event.event_id, job.delivery.event, function,
                                               job.attempts, status, item.started_at, outcome.duration,
                                               _printable(outcome.error) if outcome.error else None,
                                               tuple(outcome.logs)))
            if observer is not None:
                observer.settled(self.workflow.id, function, status, outcome.duration)
        unsettled = self._record(published, [index for index, events in outgoing.items() for _ in events], records)
        if self.observer is not None:  # log routes: the attempts' outcomes and output (None: off)
            self.observer.attempts(self.workflow.id, records, [item.job.event.traceparent for item in finished])
        for index, item in enumerate(finished):
            job, outcome = item.job, outcomes[index]
            if outcome.ok and not unsettled:
                continue
            if index in unsettled:
                reason = self._unsettled(job.delivery, unsettled[index], job.event)
                self.record_failure(job.delivery.event, job.event, reason)
                self.dead_letter(job.delivery, reason)
            elif outcome.ok:
                continue
            elif job.attempts >= self.attempts:
                self.dead_letter(job.delivery, outcome.error or "failed")
            else:
                job.not_before = time.monotonic() + self.retry_delay(job.attempts)
                retry.append(job)
        return retry

    def _record(self, published: list[EventRecord], owner: list[int],
                records: list[DeliveryRecord]) -> dict[int, BaseException]:
        """Record the published events, then the attempts (one ``record_batch`` call). If that fails because of the
        content, the events and the attempts are recorded apart, one at a time where a batch fails: returns the
        attempts that could not be settled (those whose record, or one of whose events, the tracker refused)."""
        try:
            self._tracker(partial(self._record_batch, published, records))
            return {}
        except Exception as exc:
            if self.is_fatal(exc):
                raise
        unsettled: dict[int, BaseException] = {}
        _, broken = self._each(published, self._record_events, self.tracker.record_event)
        for position, error in broken.items():
            unsettled.setdefault(owner[position], error)
        # an attempt whose events were refused is recorded failed (by the caller), not with its own outcome
        kept = [index for index in range(len(records)) if index not in unsettled]
        _, broken = self._each([records[index] for index in kept], self._record_deliveries, self.tracker.record_delivery)
        for position, error in broken.items():
            unsettled.setdefault(kept[position], error)
        return unsettled

    def _spans(self, spans: tracing.Spans, item: Finished, now: float) -> Any:
        """The deliver and handler spans of an attempt; the context its publish spans are children of."""
        job, outcome = item.job, item.outcome
        return spans.attempt(self.workflow.id, self.function.name, job.delivery.event, job.execution_id,
                                  job.event.event_id, job.attempts, job.event.traceparent, job.event.tracestate,
                                  item.started_at, outcome.duration, now, outcome.error)

    def _outgoing(self, job: Job, outcome: HandlerOutcome, now: float,
                  parent: Any = None) -> tuple[list[tuple[EventRecord, Record]], str | None]:
        """The events an attempt published (as the tracker records them) and their records (data the handler pool
        encoded already is not encoded again); or the reason they cannot be published."""
        events: list[tuple[EventRecord, Record]] = []
        execution_id, hops = job.execution_id, job.event.hops + 1
        budget = child_budget(self.event_limit if job.event.budget is None else job.event.budget,
                              self.subscriber_count(job.delivery.event), len(outcome.published))
        for index, (name, data) in enumerate(outcome.published):
            if name not in self.workflow.flow:
                return [], (f"{self.producer} published {name!r}, which is not an event of workflow {self.workflow.id!r} "
                            f"(known: {', '.join(self.workflow.flow)})")
            event_id = derive_event_id(job.event.event_id, self.function.name, index)
            # the trace goes on: a publish span's context, or (no spans) the handled event's with a span id of its own
            trace, state = (self.spans.publish(self.workflow.id, name, execution_id, event_id, parent, now)
                            if parent is not None and self.spans is not None else
                            tracing.continued(job.event.traceparent, job.event.tracestate, event_id, execution_id))
            try:
                if type(data) is JsonObject and data.get("execution_id") == execution_id:
                    value = encode_event_json(name, data.json, execution_id, event_id, self.producer, now, hops,
                                              trace, state, budget)
                else:
                    value = encode_event(name, data, execution_id, event_id, self.producer, now, hops, trace, state,
                                         budget)
            except (TypeError, ValueError) as exc:
                return [], f"the data of event {name!r} is not JSON-serialisable: {exc}"
            events.append((new_event_record(execution_id, event_id, name, now, self.producer, data),
                           new_record(execution_id, value)))
        return events, None

    def _publish(self, outgoing: dict[int, list[tuple[EventRecord, Record]]]) -> dict[int, XflowError]:
        """Publish every attempt's events, one call per stream; an attempt whose events a stream refuses (too large)
        fails alone. Returns those attempts with the refusal."""
        by_event: dict[str, list[tuple[int, Record]]] = {}
        for index, events in outgoing.items():
            for item, record in events:
                by_event.setdefault(item.event, []).append((index, record))
        refused: dict[int, XflowError] = {}
        for event, items in by_event.items():
            try:
                self._transport(partial(self.transport.publish, event, [r for _, r in items]))
                if self.observer is not None:
                    self.observer.published(self.workflow.id, event, len(items))
                continue
            except (BackendUnavailable, StateFileError):
                raise  # waited for until the give-up time, or a state file that cannot be used: stop, it comes again
            except XflowError:  # something in the batch was refused: find what, attempt by attempt
                pass
            for index in dict.fromkeys(index for index, _ in items):
                if index in refused:
                    continue
                mine = [r for i, r in items if i == index]
                try:
                    self._transport(partial(self.transport.publish, event, mine))
                except (BackendUnavailable, StateFileError):
                    raise
                except XflowError as exc:
                    refused[index] = exc
                else:
                    if self.observer is not None:
                        self.observer.published(self.workflow.id, event, len(mine))
        return refused

    # -- dead letters ---------------------------------------------------------------------------
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        reason = _printable(reason)
        log.warning("%s: dead-lettered %s: %s", self.function.name, delivery.event, reason)
        if self.observer is not None:
            self.observer.dead_lettered(self.workflow.id, self.function.name, delivery.event)
        try:
            self._transport(lambda: self.transport.dead_letter(self.function.name, delivery, reason))
        except Exception as exc:
            if self.is_fatal(exc):
                raise
            # the transport cannot keep this record: say so loudly, but do not stop the others
            log.exception("%s: the transport could not keep the dead letter of %s at partition %s, position %s; "
                          "it is skipped", self.function.name, delivery.event, delivery.partition, delivery.position)

    def record_failure(self, event_name: str, event: DecodedEvent, reason: str) -> None:
        """Best effort: show the set-aside record as failed in ``track`` (the tracker may be what failed)."""
        failure = DeliveryRecord(event.execution_id, event.event_id, event_name, self.function.name, 1, "failed",
                                 time.time(), 0.0, _printable(reason))
        try:
            self._tracker(lambda: self.tracker.record_delivery(failure))
        except Exception as exc:
            if self.is_fatal(exc):
                raise
            log.exception("%s: cannot record the failure of %s in the tracker", self.function.name, event.event_id)


def _locked(lock: AbstractContextManager[Any], call: Callable[[], T]) -> T:
    with lock:
        return call()


def _failed(outcome: HandlerOutcome, error: str) -> HandlerOutcome:
    return HandlerOutcome(False, [], list(outcome.logs), error, outcome.duration)


def _printable(text: str) -> str:
    """``text`` with what UTF-8 cannot carry (lone surrogates) written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
