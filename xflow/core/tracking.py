"""Computes an execution's state, in flow order, from the tracker's records (pure logic, no I/O).

The rules (see ``xflow track``):

- an event's ``count`` is the number of distinct event ids published with its name;
- a subscriber is ``failed`` if its latest outcome on any of those events is a failure for good,
  ``succeeded`` if it succeeded on all of them, else ``pending`` (a re-driven failure is pending again).
  It succeeded on an event when a success is recorded, or, if its outcome record was lost (a damaged
  tracker file), when the first event it published while handling it is recorded: handlers publish
  only after they succeed, and that event's id is derived from the handled one;
- an event is ``not_reached`` when never published, ``failed`` when a subscriber failed,
  ``processed`` when every subscriber succeeded on every occurrence (or it has none), else ``pending``;
- the execution is ``failed`` if an event failed, ``running`` if one is pending, else ``succeeded``;
  when the tracker warns that records of the execution may be lost (``ExecutionHistory.warnings``), an
  execution that would be ``running`` is ``unknown`` instead, and the object gets a ``warning`` key;
- ``last_unprocessed_event`` is the first event in flow order that is not ``processed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xflow.core.interfaces import DeliveryRecord, ExecutionHistory
from xflow.core.model import Workflow
from xflow.core.runtime import derive_event_id, iso_time


def summarize(workflow: Workflow, execution_id: str, history: ExecutionHistory) -> dict[str, Any]:
    """The ``xflow track --output json`` object for one execution."""
    ids_by_event: dict[str, list[str]] = {}
    first_seen: dict[str, float] = {}
    for record in history.events:
        ids = ids_by_event.setdefault(record.event, [])
        if record.event_id not in ids:
            ids.append(record.event_id)
            first_seen[record.event] = min(first_seen.get(record.event, record.published_at), record.published_at)

    attempts: dict[tuple[str, str], list[DeliveryRecord]] = {}
    for delivery in history.deliveries:
        attempts.setdefault((delivery.function, delivery.event_id), []).append(delivery)
        # A delivery proves its event exists even if the publish record was lost.
        ids = ids_by_event.setdefault(delivery.event, [])
        if delivery.event_id not in ids:
            ids.append(delivery.event_id)
            first_seen.setdefault(delivery.event, delivery.started_at)

    known_ids = {record.event_id for record in history.events}
    events = []
    for name in workflow.flow:
        event_ids = ids_by_event.get(name, [])
        subscribers = [_subscriber(fn, event_ids, attempts, known_ids) for fn in workflow.subscribers(name)]
        if not event_ids:
            state = "not_reached"
        elif any(s["state"] == "failed" for s in subscribers):
            state = "failed"
        elif all(s["state"] == "succeeded" for s in subscribers):
            state = "processed"
        else:
            state = "pending"
        events.append({
            "name": name,
            "state": state,
            "count": len(event_ids),
            "first_published_at": _iso_seconds(first_seen[name]) if name in first_seen else None,
            "subscribers": subscribers,
        })

    states = {e["state"] for e in events}
    status = "failed" if "failed" in states else "running" if "pending" in states else "succeeded"
    if not ids_by_event:
        status = "running"  # nothing recorded yet: published but not seen, or an unknown execution
    warnings = list(getattr(history, "warnings", None) or ())
    if status == "running" and warnings and ids_by_event:
        status = "unknown"  # pending only for want of records that may have been lost: not known to be running
    last_unprocessed = next((e["name"] for e in events if e["state"] != "processed"), None)
    summary = {
        "workflow_id": workflow.id,
        "execution_id": execution_id,
        "status": status,
        "events": events,
        "last_unprocessed_event": last_unprocessed,
    }
    if status == "unknown":
        summary["warning"] = " ".join(warnings)
    return summary


def _subscriber(function: str, event_ids: list[str], attempts: dict[tuple[str, str], list[DeliveryRecord]],
                known_ids: set[str]) -> dict[str, Any]:
    outcomes = []
    total_attempts = 0
    last_error = None
    logs: list[str] = []
    for event_id in event_ids:
        records = attempts.get((function, event_id), [])
        total_attempts += len({(r.attempt, r.status, r.started_at) for r in records if r.attempt > 0})
        if any(r.status == "succeeded" for r in records):
            outcomes.append("succeeded")
        elif records and records[-1].status == "failed":
            outcomes.append("failed")
            failed = [r for r in records if r.status != "succeeded"]
            last_error = failed[-1].error
            for record in failed:
                logs.extend(record.logs)
        elif derive_event_id(event_id, function, 0) in known_ids:
            outcomes.append("succeeded")  # its success record was lost, but what it published is recorded
        else:
            outcomes.append("pending")
            if records:
                last_error = records[-1].error
    if "failed" in outcomes:
        state = "failed"
    elif event_ids and all(o == "succeeded" for o in outcomes):
        state = "succeeded"
    else:
        state = "pending"
    return {
        "name": function,
        "state": state,
        "attempts": total_attempts,
        "error": last_error if state != "succeeded" else None,
        "logs": logs if state == "failed" else [],
    }


def _iso_seconds(epoch: float) -> str:
    """RFC 3339 to the second; total (``iso_time`` clamps a time outside years 1 to 9999 into that range)."""
    return iso_time(epoch)[:19] + "Z"


def final_result(workflow: Workflow, history: ExecutionHistory) -> dict[str, Any] | None:
    """The data of the last event, in flow order, that this execution published."""
    latest: dict[str, Any] | None = None
    for name in workflow.flow:
        records = [r for r in history.events if r.event == name and isinstance(r.data, Mapping)]
        if records:
            latest = dict(records[-1].data or {})
    return latest
