"""The ``xflow status`` report: per function, its lag, recent deliveries, failures and dead letters, the oldest
unsettled event's age, whether a worker holds its partitions, and whether it is failing or falling behind.

Lag comes from the transport (:meth:`~xflow.core.interfaces.Transport.lag`; unknown for a transport that cannot tell,
and for a provider whose platform reads the streams itself, such as Lambda's event source mappings). The rest comes
from the tracker: the most recent executions (up to ``scan_limit``, newest first) are read, and their delivery
records counted by the time each attempt started, for the last 5 and 60 minutes. An event is unsettled for a function
subscribed to it while the function has neither succeeded on it nor failed on it for good.

A function is **failing** when it failed for good (dead-lettered) more than ``max_failures`` times in the last
5 minutes, or when it ran in that time and every attempt failed; it is **behind** when more than ``max_lag`` records
wait in its partitions or its oldest unsettled event waited longer than ``max_age`` seconds. ``xflow status`` exits 1
when any function is failing or behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from xflow.core.interfaces import DeliveryRecord, FunctionProvider, PartitionLag

if TYPE_CHECKING:
    from xflow.core.engine import Engine
    from xflow.core.interfaces import ExecutionHistory
    from xflow.core.model import Workflow

#: the two windows counted, in seconds, with their names in the report
WINDOWS = {"5m": 300.0, "60m": 3600.0}
#: how many of the most recent executions the report reads at most
SCAN_LIMIT = 1000
PAGE = 100


@dataclass(frozen=True)
class Thresholds:
    """When a function counts as behind or failing (see the module's docstring)."""

    max_lag: int = 1000
    max_age: float = 300.0
    max_failures: int = 0


def function_lag(engine: Engine, function: str) -> list[PartitionLag] | None:
    """The transport's lag for ``function``'s consumer group on the events it subscribes to; None when unknown (the
    transport cannot tell, or the provider's platform reads the streams, not xflow's consumer groups)."""
    events = engine.workflow.subscriptions_of(function)
    if not events or not _groups_are_xflows(engine.provider):
        return None
    return engine.transport.lag(function, list(events))


def _groups_are_xflows(provider: FunctionProvider) -> bool:
    """Whether the functions read their streams through the transport's consumer groups (xflow's runners), rather
    than through the platform's own readers (Lambda's event source mappings keep positions of their own)."""
    return bool(provider.runs_locally) or type(provider).runner is not FunctionProvider.runner


def status_report(engine: Engine, thresholds: Thresholds = Thresholds(), *, now: float | None = None,
                  scan_limit: int = SCAN_LIMIT) -> dict[str, Any]:
    """The ``xflow status -o json`` object (see the module's docstring)."""
    workflow = engine.workflow
    now = time.time() if now is None else now
    histories, complete = _recent_histories(engine, scan_limit)
    functions = [name for name in workflow.functions if workflow.subscriptions_of(name)]
    counts = {name: _Counts() for name in functions}
    for history in histories:
        _count(workflow, history, counts, now)
    rows = []
    for name in functions:
        lag = function_lag(engine, name)
        rows.append(_row(name, lag, counts[name], thresholds))
    states = {row["state"] for row in rows}
    overall = "failing" if "failing" in states else "behind" if "behind" in states else "ok"
    return {
        "workflow_id": workflow.id,
        "status": overall,
        "thresholds": asdict(thresholds),
        "executions_examined": len(histories),
        "complete": complete,
        "functions": rows,
    }


def _recent_histories(engine: Engine, limit: int) -> tuple[list[ExecutionHistory], bool]:
    """The histories of up to ``limit`` most recent executions, and whether that was all of them."""
    tracker = engine.tracker
    found: list[ExecutionHistory] = []
    cursor: str | None = None
    while len(found) < limit:
        page = tracker.list_executions(min(PAGE, limit - len(found)), cursor)
        found.extend(tracker.history(info.execution_id) for info in page.executions)
        cursor = page.next_cursor
        if cursor is None or not page.executions:
            return found, True
    return found, False


class _Counts:
    def __init__(self) -> None:
        self.attempts = dict.fromkeys(WINDOWS, 0)
        self.succeeded = dict.fromkeys(WINDOWS, 0)
        self.failures = dict.fromkeys(WINDOWS, 0)
        self.dead_letters = dict.fromkeys(WINDOWS, 0)
        self.oldest: tuple[float, dict[str, str]] | None = None

    def attempt(self, record: DeliveryRecord, now: float) -> None:
        for window, seconds in WINDOWS.items():
            if now - record.started_at > seconds:
                continue
            self.attempts[window] += 1
            if record.status == "succeeded":
                self.succeeded[window] += 1
            else:
                self.failures[window] += 1
                if record.status == "failed":
                    self.dead_letters[window] += 1

    def unsettled(self, age: float, where: dict[str, str]) -> None:
        if self.oldest is None or age > self.oldest[0]:
            self.oldest = (age, where)


def _count(workflow: Workflow, history: ExecutionHistory, counts: dict[str, _Counts], now: float) -> None:
    """Add one execution's attempts and unsettled events to ``counts``."""
    last: dict[tuple[str, str], DeliveryRecord] = {}
    succeeded: set[tuple[str, str]] = set()
    for record in history.deliveries:
        if record.function not in counts:
            continue
        if record.attempt > 0:  # attempt 0 is the marker a re-drive leaves, not an attempt
            counts[record.function].attempt(record, now)
        key = (record.function, record.event_id)
        last[key] = record
        if record.status == "succeeded":
            succeeded.add(key)
    seen: set[str] = set()
    for event in history.events:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        for function in workflow.subscribers(event.event):
            key = (function, event.event_id)
            if function not in counts or key in succeeded or (key in last and last[key].status == "failed"):
                continue
            counts[function].unsettled(max(0.0, now - event.published_at), {
                "execution_id": event.execution_id, "event": event.event, "event_id": event.event_id})


def _row(name: str, lag: list[PartitionLag] | None, counts: _Counts, thresholds: Thresholds) -> dict[str, Any]:
    records = _total(p.records for p in lag) if lag is not None else None
    seconds = max((p.seconds for p in lag if p.seconds is not None), default=None) if lag else None
    held = _held(lag)
    oldest_age = counts.oldest[0] if counts.oldest else None
    reasons = []
    if counts.dead_letters["5m"] > thresholds.max_failures:
        reasons.append(f"{counts.dead_letters['5m']} deliveries failed for good in the last 5 minutes")
    elif counts.failures["5m"] and not counts.succeeded["5m"]:
        reasons.append(f"all its {counts.attempts['5m']} attempts of the last 5 minutes failed")
    failing = bool(reasons)
    if records is not None and records > thresholds.max_lag:
        reasons.append(f"{records} records behind (more than {thresholds.max_lag})")
    waited = max((x for x in (oldest_age, seconds) if x is not None), default=None)
    if waited is not None and waited > thresholds.max_age:
        reasons.append(f"an event has waited {waited:.0f} s (more than {thresholds.max_age:g} s)")
    state = "failing" if failing else "behind" if reasons else "ok"
    return {
        "name": name,
        "state": state,
        "reasons": reasons,
        "lag": None if lag is None else {
            "records": records,
            "exact": all(p.exact for p in lag),
            "seconds": seconds,
            "partitions": [p.as_dict() for p in lag],
        },
        "workers_hold_partitions": held,
        "deliveries": dict(counts.attempts),
        "succeeded": dict(counts.succeeded),
        "failures": dict(counts.failures),
        "dead_letters": dict(counts.dead_letters),
        "oldest_unsettled_seconds": None if oldest_age is None else round(oldest_age, 3),
        "oldest_unsettled_event": counts.oldest[1] if counts.oldest else None,
    }


def _total(values: Iterable[int | None]) -> int | None:
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total


def _held(lag: list[PartitionLag] | None) -> bool | None:
    """Whether a worker holds any of the partitions: True if one does, False if the transport says none does."""
    if not lag:
        return None
    answers = [p.held for p in lag]
    if any(answers):
        return True
    return False if all(a is False for a in answers) else None
