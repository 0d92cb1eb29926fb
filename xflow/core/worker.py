"""The dispatch loop of ``xflow worker``: poll each function's consumer, run handlers, publish, commit.

Delivery rules: an event a function already handled successfully is dropped (re-deliveries
after a crash); a failing handler is retried with exponential backoff up to the function's
``retries``, then dead-lettered and recorded as failed; offsets are committed only after a
delivery is settled (succeeded or dead-lettered); undecodable records are dead-lettered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_exponential

from xflow.core.errors import XflowError
from xflow.core.interfaces import Consumer, Delivery, DeliveryRecord, EventRecord, Record, TrackerStore, Transport
from xflow.core.model import Function, Workflow
from xflow.core.runtime import (
    BadMessage,
    DecodedEvent,
    HandlerContext,
    HandlerLoadError,
    HandlerOutcome,
    call_handler,
    decode_event,
    derive_event_id,
    encode_event,
    load_handler,
)

log = logging.getLogger("xflow")


@dataclass(frozen=True)
class OutgoingEvent:
    event: str
    data: dict[str, Any]
    execution_id: str
    event_id: str
    producer: str


def publish_events(workflow: Workflow, transport: Transport, tracker: TrackerStore,
                   events: Sequence[OutgoingEvent]) -> None:
    """Publish events to their streams, then record them in the tracker (ids make both idempotent)."""
    for item in events:
        if item.event not in workflow.flow:
            raise XflowError(f"{item.producer} published {item.event!r}, which is not an event of workflow "
                             f"{workflow.id!r} (known: {', '.join(workflow.flow)})",
                             "declare it under the function's 'publishes:' or subscribe a function to it")
    now = time.time()
    by_event: dict[str, list[Record]] = {}
    for item in events:
        try:
            value = encode_event(item.event, item.data, item.execution_id, item.event_id, item.producer, now)
        except (TypeError, ValueError) as exc:
            raise XflowError(f"the data of event {item.event!r} is not JSON-serialisable: {exc}") from None
        by_event.setdefault(item.event, []).append(Record(item.execution_id, value))
    for event, records in by_event.items():
        transport.publish(event, records)
    for item in events:
        tracker.record_event(EventRecord(item.execution_id, item.event_id, item.event, now, item.producer, item.data))


def resolve_source(workflow: Workflow, function: Function, cache_dir: Path) -> Path:
    """The local folder or file holding a function's code (remote sources are fetched into ``cache_dir``)."""
    if function.source_path is not None:
        return function.source_path
    try:
        from xflow.sources import materialize
    except ImportError:
        raise XflowError(f"function {function.name!r}: source {function.source!r} is not a local path, and this "
                         "installation cannot fetch remote sources") from None
    return materialize(function, workflow, cache_dir)


class Dispatcher:
    """Runs the workflow's functions (or some of them) against a transport, recording in a tracker."""

    def __init__(self, workflow: Workflow, transport: Transport, tracker: TrackerStore, *,
                 functions: Iterable[str] | None = None, cache_dir: Path, batch_size: int = 100,
                 backoff_seconds: float = 0.2, backoff_max_seconds: float = 5.0, idle_sleep: float = 0.05) -> None:
        self.workflow, self.transport, self.tracker = workflow, transport, tracker
        names = list(functions) if functions else list(workflow.functions)
        unknown = [n for n in names if n not in workflow.functions]
        if unknown:
            raise XflowError(f"no function named {unknown[0]!r} in {workflow.path}",
                             f"known functions: {', '.join(workflow.functions)}")
        self.functions = [workflow.functions[n] for n in names if workflow.subscriptions_of(n)]
        self.cache_dir = cache_dir
        self.batch_size, self.idle_sleep = batch_size, idle_sleep
        self.backoff_seconds, self.backoff_max_seconds = backoff_seconds, backoff_max_seconds
        self.handled = 0
        self.commit_interval = 1.0
        self._handlers: dict[str, Callable[..., Any]] = {}

    def load_handlers(self) -> None:
        """Import every handler now, so a broken one is reported before anything runs."""
        for function in self.functions:
            self._handler(function)

    def _handler(self, function: Function) -> Callable[..., Any]:
        handler = self._handlers.get(function.name)
        if handler is None:
            source = resolve_source(self.workflow, function, self.cache_dir)
            try:
                handler = load_handler(source, function.handler)
            except HandlerLoadError as exc:
                raise XflowError(f"function {function.name!r}: cannot load handler {function.handler!r}: {exc}",
                                 "fix the handler's source file or the 'handler:' name") from None
            self._handlers[function.name] = handler
        return handler

    def run(self, should_stop: Callable[[], bool], on_idle: Callable[[], None] | None = None) -> None:
        """Process until ``should_stop()`` is true (checked between batches)."""
        self.load_handlers()
        consumers: list[tuple[Function, Consumer]] = []
        try:
            for function in self.functions:
                consumers.append((function, self.transport.subscribe(function.name,
                                                                     self.workflow.subscriptions_of(function.name))))
            while not should_stop():
                busy = False
                for function, consumer in consumers:
                    deliveries = consumer.poll(self.batch_size, 0)
                    if deliveries:
                        busy = True
                        self._settle(function, consumer, deliveries)
                    if should_stop():
                        break
                if not busy:
                    if on_idle is not None:
                        on_idle()
                    time.sleep(self.idle_sleep)
        finally:
            for _, consumer in consumers:
                consumer.close()

    def _settle(self, function: Function, consumer: Consumer, deliveries: list[Delivery]) -> None:
        """Handle a batch, committing at least every ``commit_interval`` seconds (keeps slow batches' leases alive)."""
        done: list[Delivery] = []
        last_commit = time.monotonic()
        for delivery in deliveries:
            self.handle(function, delivery)
            done.append(delivery)
            if time.monotonic() - last_commit >= self.commit_interval:
                consumer.commit(done)
                done, last_commit = [], time.monotonic()
        if done:
            consumer.commit(done)

    def handle(self, function: Function, delivery: Delivery) -> None:
        """Settle one delivery: skip a duplicate, or run the handler with retries, or dead-letter."""
        fallback_id = f"{self.transport.stream_name(delivery.event)}:{delivery.partition}:{delivery.position}"
        try:
            event = decode_event(delivery.value, fallback_id)
        except BadMessage as exc:
            reason = f"undecodable record at {fallback_id}: {exc}"
            log.warning("%s: dead-lettered for %s: %s", function.name, delivery.event, reason)
            self.transport.dead_letter(function.name, delivery, reason)
            return
        self.tracker.record_event(EventRecord(event.execution_id, event.event_id, delivery.event, event.published_at,
                                              event.producer, event.data))
        if self.tracker.has_succeeded(event.execution_id, event.event_id, function.name):
            return
        self.handled += 1
        outcome = self._run_with_retries(function, delivery.event, event)
        if not outcome.ok:
            self.transport.dead_letter(function.name, delivery, outcome.error or "failed")

    def _run_with_retries(self, function: Function, event_name: str, event: DecodedEvent) -> HandlerOutcome:
        attempts = function.retries + 1
        attempt_number = 0

        def attempt() -> HandlerOutcome:
            nonlocal attempt_number
            attempt_number += 1
            started = time.time()
            outcome = self._attempt(function, event_name, event, attempt_number)
            status = "succeeded" if outcome.ok else "failed" if attempt_number >= attempts else "retrying"
            if not outcome.ok:
                log.warning("%s failed on %s (execution %s, attempt %d/%d): %s", function.name, event_name,
                            event.execution_id, attempt_number, attempts, outcome.error)
            self.tracker.record_delivery(DeliveryRecord(
                event.execution_id, event.event_id, event_name, function.name, attempt_number, status, started,
                outcome.duration, outcome.error, tuple(outcome.logs)))
            return outcome

        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=self.backoff_seconds, max=self.backoff_max_seconds),
            retry=retry_if_result(lambda outcome: not outcome.ok),
            retry_error_callback=lambda state: state.outcome.result(),
        )
        return retrying(attempt)

    def _attempt(self, function: Function, event_name: str, event: DecodedEvent, attempt: int) -> HandlerOutcome:
        ctx = HandlerContext(
            execution_id=event.execution_id, event_name=event_name, event_id=event.event_id, attempt=attempt,
            workflow_id=self.workflow.id, function_name=function.name,
            logger=_function_logger(self.workflow.id, function.name),
        )
        try:
            handler = self._handler(function)
        except XflowError as exc:
            return HandlerOutcome(False, [], [], str(exc), 0.0)
        outcome = call_handler(handler, event.data, ctx, list(function.publishes))
        if not outcome.ok:
            return outcome
        outgoing = [OutgoingEvent(name, data, event.execution_id, derive_event_id(event.event_id, function.name, i),
                                  f"xflow/{self.workflow.id}/{function.name}")
                    for i, (name, data) in enumerate(outcome.published)]
        try:
            publish_events(self.workflow, self.transport, self.tracker, outgoing)
        except XflowError as exc:
            return HandlerOutcome(False, [], outcome.logs, f"publishing failed: {exc}", outcome.duration)
        return outcome


def _function_logger(workflow_id: str, function: str) -> logging.Logger:
    logger = logging.getLogger(f"xflow.functions.{workflow_id}.{function}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger
