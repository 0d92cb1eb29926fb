"""The dispatch loop of ``xflow worker``: poll each function's consumer, run handlers, publish, commit.

Delivery rules: an event a function already handled successfully is dropped (re-deliveries
after a crash); a failing handler is retried with exponential backoff up to the function's
``retries``, then dead-lettered and recorded as failed; offsets are committed only after a
delivery is settled (succeeded or dead-lettered); undecodable records are dead-lettered.
No record stops the loop: a record that cannot be decoded, or whose content makes settling it
fail, is dead-lettered with the reason; only a problem with a backend stops it. An event more than
the workflow's hop limit of handler publishes away from the event published from outside
(``general: {hop_limit: N}``, default 1000) is not handled: it is dead-lettered and recorded as
failed, which ends a cycle.

Backend problems: a :class:`BackendUnavailable` (a full disk, a broker restart, throttling, a 5xx)
from a poll, a commit, a tracker write or a publish is waited out where it happened: the loop
logs "waiting for BACKEND: reason" once (then at most every 30 s), retries that same call with
exponential backoff and jitter (capped at a few seconds) and goes on by itself when the backend
is back. Nothing is lost or counted twice: a handler that already ran is not run again, its
outcome is written once the tracker takes writes again, and the delivery is committed after
that. After ``unavailable_give_up_seconds`` (0: never) the loop stops with that error (exit 1).
Any other :class:`XflowError` (bad configuration, a damaged or read-only state file, a plugin's
``connection_errors``) stops it at once; what was not committed is delivered again.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import sqlite3
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.interfaces import Consumer, Delivery, DeliveryRecord, EventRecord, Record, TrackerStore, Transport
from xflow.core.model import Function, Workflow
from xflow.core.runtime import (
    DEFAULT_HOP_LIMIT,
    MAX_EPOCH,
    MIN_EPOCH,
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
from xflow.core.sqlite_files import StateFileError

log = logging.getLogger("xflow")

T = TypeVar("T")
#: runs one backend call, waiting out :class:`BackendUnavailable`: ``call(BACKEND_LABEL, function)``
BackendCall = Callable[[str, Callable[[], Any]], Any]
#: how often a worker that waits for a backend says so again, in seconds
WAIT_LOG_INTERVAL = 30.0
#: the first and the longest wait between tries of a call to an unavailable backend, in seconds
UNAVAILABLE_FIRST_WAIT = 0.1
UNAVAILABLE_MAX_WAIT = 4.0


class _StopRequested(Exception):
    """``should_stop()`` became true while the loop waited for a backend: leave; what is not committed comes again."""


@dataclass(frozen=True)
class OutgoingEvent:
    event: str
    data: dict[str, Any]
    execution_id: str
    event_id: str
    producer: str
    #: handler publishes between the event published from outside and this one
    hops: int = 0


def hop_limit(workflow: Workflow) -> int:
    """How many handler publishes an event may be away from the one published from outside (default 1000)."""
    value = getattr(workflow, "hop_limit", None) or (workflow.general or {}).get("hop_limit") or DEFAULT_HOP_LIMIT
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return DEFAULT_HOP_LIMIT


def publish_events(workflow: Workflow, transport: Transport, tracker: TrackerStore,
                   events: Sequence[OutgoingEvent], call: BackendCall | None = None) -> None:
    """Publish events to their streams, then record them in the tracker (ids make both idempotent).

    ``call`` runs each backend call (the worker's waits out an unavailable backend); without it, a tracker that
    is unavailable after the transport took the events is reported as such: the events are out, do not publish
    them again.
    """
    for item in events:
        if item.event not in workflow.flow:
            raise XflowError(f"{item.producer} published {item.event!r}, which is not an event of workflow "
                             f"{workflow.id!r} (known: {', '.join(workflow.flow)})",
                             "declare it under the function's 'publishes:' or subscribe a function to it")
    now = time.time()
    by_event: dict[str, list[Record]] = {}
    for item in events:
        try:
            value = encode_event(item.event, item.data, item.execution_id, item.event_id, item.producer, now, item.hops)
        except (TypeError, ValueError) as exc:
            raise XflowError(f"the data of event {item.event!r} is not JSON-serialisable: {exc}") from None
        by_event.setdefault(item.event, []).append(Record(item.execution_id, value))
    run: BackendCall = call or (lambda backend, function: function())
    for event, records in by_event.items():
        run(f"transport {transport.name!r}", lambda event=event, records=records: transport.publish(event, records))
    try:
        for item in events:
            record = EventRecord(item.execution_id, item.event_id, item.event, now, item.producer, item.data)
            run(f"tracker {tracker.name!r}", lambda record=record: tracker.record_event(record))
    except BackendUnavailable as exc:
        if call is not None:
            raise
        raise BackendUnavailable(f"{exc.message}; the event was published all the same and a worker records it when it "
                                 "handles it, so do not publish it again", exc.hint) from None


def resolve_source(workflow: Workflow, function: Function, workdir: Path) -> Path:
    """The local file or folder holding a function's code, as the Lambda provider packages it.

    A remote source (git/GitHub link, s3://) is fetched into ``workdir``; s3:// sources use an AWS
    session made from the file's ``aws:`` block (only then is boto3 needed).
    """
    from xflow.sources.resolve import fetch_source

    aws = None
    if function.source_path is None and function.source.startswith("s3://"):
        from xflow.core.aws import AwsSession

        aws = AwsSession(dict(workflow.aws or {}))
    return fetch_source(function, workdir, aws)


class Dispatcher:
    """Runs the workflow's functions (or some of them) against a transport, recording in a tracker."""

    def __init__(self, workflow: Workflow, transport: Transport, tracker: TrackerStore, *,
                 functions: Iterable[str] | None = None, cache_dir: Path, batch_size: int = 100,
                 backoff_seconds: float = 0.2, backoff_max_seconds: float = 5.0, idle_sleep: float = 0.05,
                 unavailable_give_up_seconds: float = 0.0, unavailable_first_wait: float = UNAVAILABLE_FIRST_WAIT,
                 unavailable_max_wait: float = UNAVAILABLE_MAX_WAIT) -> None:
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
        self.hop_limit = hop_limit(workflow)
        #: how long an unavailable backend is waited for before the loop stops (0: for ever)
        self.give_up_seconds = max(0.0, float(unavailable_give_up_seconds))
        self.unavailable_first_wait = max(0.0, unavailable_first_wait)
        self.unavailable_max_wait = max(self.unavailable_first_wait, unavailable_max_wait)
        #: seconds spent waiting for unavailable backends, and how many waits there were
        self.waited_seconds = 0.0
        self.waits = 0
        self._last_wait_log = -math.inf
        self._wait_announced = False
        self._should_stop: Callable[[], bool] = _never
        self._transport_label = f"transport {getattr(transport, 'name', type(transport).__name__)!r}"
        self._tracker_label = f"tracker {getattr(tracker, 'name', type(tracker).__name__)!r}"
        self._handlers: dict[str, Callable[..., Any]] = {}
        #: what stops the loop: a problem with a backend, never a record's content
        self._fatal: tuple[type[BaseException], ...] = (
            XflowError, _StopRequested, *getattr(transport, "connection_errors", ()),
            *getattr(tracker, "connection_errors", ()))
        #: where this dispatcher fetches remote sources (workers may share ``cache_dir``); removed with it
        self._workdir = cache_dir / f"fetched-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        weakref.finalize(self, shutil.rmtree, self._workdir, True)

    def load_handlers(self) -> None:
        """Import every handler now, so a broken one is reported before anything runs."""
        for function in self.functions:
            self._handler(function)

    def _handler(self, function: Function) -> Callable[..., Any]:
        handler = self._handlers.get(function.name)
        if handler is None:
            if not self._handlers:
                _sweep_stale_fetches(self.cache_dir)
            workdir = self._workdir / function.name
            try:
                source = resolve_source(self.workflow, function, workdir)
            except OSError as exc:  # the state folder: full, read-only, not ours
                raise _state_folder_error(exc, f"function {function.name!r}: cannot prepare its source in "
                                               f"{workdir}") from None
            try:
                handler = load_handler(source, function.handler)
            except HandlerLoadError as exc:
                raise XflowError(f"function {function.name!r}: cannot load handler {function.handler!r}: {exc}",
                                 "fix the handler's source file or the 'handler:' name") from None
            self._handlers[function.name] = handler
        return handler

    def run(self, should_stop: Callable[[], bool], on_idle: Callable[[], None] | None = None) -> None:
        """Process until ``should_stop()`` is true (checked between batches, and while waiting for a backend)."""
        consumers: list[tuple[Function, Consumer]] = []
        self._should_stop = should_stop
        try:
            self._call(f"state folder {self.cache_dir.parent}", self.load_handlers)
            for function in self.functions:
                events = self.workflow.subscriptions_of(function.name)
                consumers.append((function, self._call(self._transport_label,
                                                       lambda name=function.name, events=events:
                                                       self.transport.subscribe(name, events))))
            while not should_stop():
                busy = False
                for function, consumer in consumers:
                    deliveries = self._call(self._transport_label,
                                            lambda consumer=consumer: consumer.poll(self.batch_size, 0))
                    if deliveries:
                        busy = True
                        self._settle(function, consumer, deliveries)
                    if should_stop():
                        break
                if not busy:
                    if on_idle is not None:
                        on_idle()
                    time.sleep(self.idle_sleep)
        except _StopRequested:
            log.info("stopped while waiting for a backend; what was not settled is delivered again")
        finally:
            self._should_stop = _never
            for _, consumer in consumers:
                try:
                    consumer.close()
                except XflowError as exc:  # leaving the group is best effort: the transport expires members
                    log.warning("could not leave the consumer group cleanly: %s", exc)

    def _settle(self, function: Function, consumer: Consumer, deliveries: list[Delivery]) -> None:
        """Handle a batch, committing at least every ``commit_interval`` seconds (keeps slow batches' leases alive)."""
        done: list[Delivery] = []
        last_commit = time.monotonic()
        try:
            for delivery in deliveries:
                self.handle(function, delivery)
                done.append(delivery)
                if time.monotonic() - last_commit >= self.commit_interval:
                    self._call(self._transport_label, lambda batch=done: consumer.commit(batch))
                    done, last_commit = [], time.monotonic()
        except BaseException:
            self._commit_settled(consumer, done)
            raise
        if done:
            self._call(self._transport_label, lambda: consumer.commit(done))

    def _commit_settled(self, consumer: Consumer, done: list[Delivery]) -> None:
        """On the way out, commit what was settled (best effort: fewer deliveries come again)."""
        if not done:
            return
        try:
            consumer.commit(done)
        except Exception as exc:
            log.debug("could not commit %d settled deliveries on the way out: %s", len(done), exc)

    # -- waiting out unavailable backends ---------------------------------------------------------
    def _call(self, backend: str, call: Callable[[], T]) -> T:
        """``call()``; if it raises :class:`BackendUnavailable`, wait (logging once) and try it again until it works,
        ``should_stop()`` is true (raises ``_StopRequested``) or the give-up time is over (raises the error)."""
        try:
            return call()
        except BackendUnavailable as exc:
            first = exc
        started = time.monotonic()
        self.waits += 1
        self._say_waiting(backend, first)
        retrying = Retrying(
            retry=retry_if_exception_type(BackendUnavailable),
            # exponential backoff capped at a few seconds, plus jitter so that many workers do not retry in step
            wait=wait_exponential(multiplier=self.unavailable_first_wait, max=self.unavailable_max_wait)
            + wait_random(0, self.unavailable_first_wait),
            stop=stop_after_delay(self.give_up_seconds) if self.give_up_seconds else stop_never,
            sleep=self._sleep,
            before_sleep=lambda state: self._say_waiting(backend, _exception(state)),
            reraise=True,
        )
        try:
            self._sleep(self.unavailable_first_wait)
            result = retrying(call)
        except BackendUnavailable as exc:
            waited = time.monotonic() - started
            self.waited_seconds += waited
            raise BackendUnavailable(f"gave up after waiting {waited:.0f} s for the {backend}: {exc.message}",
                                     exc.hint or "make the backend available again, then start the worker again "
                                     "(or raise the local provider's option unavailable_give_up_seconds)") from None
        except BaseException:
            self.waited_seconds += time.monotonic() - started
            raise
        waited = time.monotonic() - started
        self.waited_seconds += waited
        if self._wait_announced:
            self._wait_announced = False
            log.warning("the %s is back after %.1f s; going on", backend, waited)
        return result

    def _say_waiting(self, backend: str, exc: BaseException | None) -> None:
        """Log that the loop waits: once, then at most every WAIT_LOG_INTERVAL seconds (a flapping backend too)."""
        now = time.monotonic()
        if now - self._last_wait_log < WAIT_LOG_INTERVAL:
            return
        self._last_wait_log = now
        self._wait_announced = True
        limit = f"for up to {self.give_up_seconds:g} s" if self.give_up_seconds else "until it is back"
        reason = exc.message if isinstance(exc, XflowError) else str(exc)
        hint = f" (hint: {exc.hint})" if isinstance(exc, XflowError) and exc.hint else ""
        log.warning("waiting for the %s: %s; retrying with backoff %s%s", backend, reason, limit, hint)

    def _sleep(self, seconds: float) -> None:
        """Sleep, looking at ``should_stop()`` every 0.1 s."""
        deadline = time.monotonic() + seconds
        while True:
            if self._should_stop():
                raise _StopRequested()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    def handle(self, function: Function, delivery: Delivery) -> None:
        """Settle one delivery: skip a duplicate, or run the handler with retries, or dead-letter.

        Never raises because of the record: an undecodable one, one over the hop limit and one whose settling
        fails (say, a tracker that cannot store its content) are dead-lettered with the reason. An unreachable
        backend (XflowError, or a plugin's ``connection_errors``) is raised: the record is delivered again later.
        """
        where = f"{self.transport.stream_name(delivery.event)}:{delivery.partition}:{delivery.position}"
        try:
            event = decode_event(delivery.value, where)
        except BadMessage as exc:
            self._dead_letter(function, delivery, f"undecodable record at {where}: {exc}")
            return
        if event.producer == "external" and delivery.timestamp is not None and (
                MIN_EPOCH <= delivery.timestamp <= MAX_EPOCH):
            event.published_at = delivery.timestamp  # another producer's record: its time on the transport
        try:
            self._handle(function, delivery, event)
        except self._fatal:
            raise
        except Exception as exc:  # the record's content broke settling it: set it aside, go on with the others
            if _damaged_database(exc):
                raise  # a damaged state file (named by the engine), not the record's fault
            log.exception("%s: settling %s at %s (execution %r) failed", function.name, delivery.event, where,
                          event.execution_id)
            reason = (f"cannot settle the record at {where} (execution {event.execution_id!r}): "
                      f"{type(exc).__name__}: {exc}")
            self._record_failure(function, delivery.event, event, reason)
            self._dead_letter(function, delivery, reason)

    def _handle(self, function: Function, delivery: Delivery, event: DecodedEvent) -> None:
        record = EventRecord(event.execution_id, event.event_id, delivery.event, event.published_at, event.producer,
                             event.data)
        self._call(self._tracker_label, lambda: self.tracker.record_event(record))
        if self._call(self._tracker_label,
                      lambda: self.tracker.has_succeeded(event.execution_id, event.event_id, function.name)):
            return
        if event.hops > self.hop_limit:
            reason = (f"execution {event.execution_id} exceeded the hop limit of {self.hop_limit} events; a cycle? "
                      f"({delivery.event} {event.event_id} is {event.hops} handler publishes away from the event "
                      "published from outside; raise general.hop_limit in the workflow file if this is intended)")
            failure = DeliveryRecord(event.execution_id, event.event_id, delivery.event, function.name, 1, "failed",
                                     time.time(), 0.0, reason)
            self._call(self._tracker_label, lambda: self.tracker.record_delivery(failure))
            self._dead_letter(function, delivery, reason)
            return
        self.handled += 1
        outcome = self._run_with_retries(function, delivery.event, event)
        if not outcome.ok:
            self._dead_letter(function, delivery, outcome.error or "failed")

    def _dead_letter(self, function: Function, delivery: Delivery, reason: str) -> None:
        reason = _printable(reason)
        log.warning("%s: dead-lettered %s: %s", function.name, delivery.event, reason)
        try:
            self._call(self._transport_label, lambda: self.transport.dead_letter(function.name, delivery, reason))
        except self._fatal:
            raise
        except Exception:  # the transport cannot keep this record: say so loudly, but do not stop the others
            log.exception("%s: the transport could not keep the dead letter of %s at partition %s, position %s; "
                          "it is skipped", function.name, delivery.event, delivery.partition, delivery.position)

    def _record_failure(self, function: Function, event_name: str, event: DecodedEvent, reason: str) -> None:
        """Best effort: show the set-aside record as failed in ``track`` (the tracker may be what failed)."""
        failure = DeliveryRecord(event.execution_id, event.event_id, event_name, function.name, 1, "failed",
                                 time.time(), 0.0, _printable(reason))
        try:
            self._call(self._tracker_label, lambda: self.tracker.record_delivery(failure))
        except self._fatal:
            raise
        except Exception:
            log.exception("%s: cannot record the failure of %s in the tracker", function.name, event.event_id)

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
            record = DeliveryRecord(event.execution_id, event.event_id, event_name, function.name, attempt_number,
                                    status, started, outcome.duration, outcome.error, tuple(outcome.logs))
            # the handler ran: its outcome is written even if the tracker must be waited for (never run it again)
            self._call(self._tracker_label, lambda: self.tracker.record_delivery(record))
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
                                  f"xflow/{self.workflow.id}/{function.name}", event.hops + 1)
                    for i, (name, data) in enumerate(outcome.published)]
        try:
            # an unavailable backend is waited for here: the handler already ran and is not run again
            publish_events(self.workflow, self.transport, self.tracker, outgoing, self._call)
        except (BackendUnavailable, StateFileError):
            raise  # waited for until the give-up time, or a state file that cannot be used: stop, it comes again
        except XflowError as exc:  # what was published is refused (too large, not an event of the workflow)
            return HandlerOutcome(False, [], outcome.logs, f"publishing failed: {exc}", outcome.duration)
        return outcome


def _never() -> bool:
    return False


def _exception(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def _state_folder_error(exc: OSError, what: str) -> XflowError:
    """``exc``, met writing in the state folder, as a one-line error: a full disk may pass, the rest needs the user."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BackendUnavailable(f"{what}: {reason}", "free space in the state folder; workers wait and go on")
    return XflowError(f"{what}: {reason}", "make the state folder writable by this user, or choose another with "
                                           "--state-dir")


def _damaged_database(exc: BaseException) -> bool:
    """A damaged SQLite file ("file is not a database", "database disk image is malformed") raised as is by a plugin:
    it is the state's fault, not the record's."""
    return type(exc) is sqlite3.DatabaseError


def _sweep_stale_fetches(cache_dir: Path) -> None:
    """Remove the fetch folders of dispatchers whose process is gone (killed before it could clean up)."""
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


def _printable(text: str) -> str:
    """``text`` with what UTF-8 cannot carry (lone surrogates) written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _function_logger(workflow_id: str, function: str) -> logging.Logger:
    logger = logging.getLogger(f"xflow.functions.{workflow_id}.{function}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger
