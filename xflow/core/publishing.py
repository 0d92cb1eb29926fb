"""Publishing events from outside a handler (``xflow publish``, ``Engine.publish``, a re-drive, the test kit): to
their streams, grouped per stream, then recorded in the tracker.

The events' ids make both idempotent: publishing the same events again after a failure adds no duplicate to what
``track`` counts. Events a handler publishes are published by the delivery rules when its attempt is settled
(:meth:`xflow.core.delivery.FunctionDelivery.settle`), not here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from xflow.core import observe
from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.interfaces import EventRecord, Record, TrackerStore, Transport
from xflow.core.model import Workflow
from xflow.core.runtime import encode_event
from xflow.core.waiting import BackendCall
from xflow.monitoring import tracing


@dataclass(frozen=True)
class OutgoingEvent:
    event: str
    data: dict[str, Any]
    execution_id: str
    event_id: str
    producer: str
    #: handler publishes between the event published from outside and this one
    hops: int = 0


def publish_events(workflow: Workflow, transport: Transport, tracker: TrackerStore,
                   events: Sequence[OutgoingEvent], call: BackendCall | None = None) -> None:
    """Publish events to their streams, then record them in the tracker (ids make both idempotent).

    ``call`` runs each backend call (a worker's waits out an unavailable backend); without it, a tracker that
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
    spans = tracing.spans()  # OpenTelemetry, when on: a publish span per event (else a new trace is only carried)
    for item in events:
        trace, state = (tracing.started(), None) if spans is None else spans.publish(
            workflow.id, item.event, item.execution_id, item.event_id, at=now)
        try:
            value = encode_event(item.event, item.data, item.execution_id, item.event_id, item.producer, now, item.hops,
                                 trace, state)
        except (TypeError, ValueError) as exc:
            raise XflowError(f"the data of event {item.event!r} is not JSON-serialisable: {exc}") from None
        by_event.setdefault(item.event, []).append(Record(item.execution_id, value))
    run: BackendCall = call or (lambda backend, function: function())
    for event, records in by_event.items():
        run(f"transport {transport.name!r}", partial(transport.publish, event, records))
        if (observer := observe.current()) is not None:
            observer.published(workflow.id, event, len(records))
    event_records = [EventRecord(item.execution_id, item.event_id, item.event, now, item.producer, item.data)
                     for item in events]
    try:
        run(f"tracker {tracker.name!r}", partial(tracker.record_events, event_records))
    except BackendUnavailable as exc:
        if call is not None:
            raise
        raise BackendUnavailable(f"{exc.message}; the event was published all the same and a worker records it when it "
                                 "handles it, so do not publish it again", exc.hint) from None
