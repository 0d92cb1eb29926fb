"""What ``xflow serve`` and ``xflow executions`` show: a workflow's description and its executions with their status.

Nothing here needs the web extra, and the CLI imports it at start-up (its heavier imports are made on use).
The status of each listed execution is the one ``xflow track`` computes
(:func:`xflow.core.tracking.summarize` over the execution's history); the tracker only lists executions by time
(:meth:`~xflow.core.interfaces.TrackerStore.list_executions`), narrowing by status where it can.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xflow.core.errors import XflowError

if TYPE_CHECKING:
    from xflow.core.engine import Engine
    from xflow.core.interfaces import ExecutionHistory

#: the statuses an execution can have (``unknown``: records may be lost, see ``xflow track``)
STATUSES = ("failed", "running", "succeeded", "unknown")
DEFAULT_LIMIT = 20
MAX_LIMIT = 200
#: executions one listing examines at most when filtering by status; past it, a shorter page is returned with the
#: cursor to go on from (so a rare status never makes one request read the whole history of a workflow)
SCAN_BUDGET = 1000


def check_listing(status: str | None, limit: int) -> None:
    """An XflowError for a status or limit that ``list_executions`` does not take."""
    if status is not None and status not in STATUSES:
        raise XflowError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise XflowError(f"limit {limit} is out of range", f"give a number from 1 to {MAX_LIMIT}")


def list_executions(engine: Engine, status: str | None = None, limit: int = DEFAULT_LIMIT,
                    cursor: str | None = None) -> dict[str, Any]:
    """The executions of ``engine``'s workflow, most recently started first, with the status ``track`` gives each.

    Returns ``{"workflow_id", "status", "executions": [row...], "next_cursor"}``; a row is ``{"execution_id",
    "status", "started_at", "updated_at", "last_unprocessed_event", "failed_functions"}``. ``next_cursor`` (None at
    the end) continues the listing. With ``status``, fewer than ``limit`` rows may come back with a cursor when
    :data:`SCAN_BUDGET` executions were examined.
    """
    check_listing(status, limit)
    tracker = engine.tracker
    rows: list[dict[str, Any]] = []
    examined = 0
    while True:
        # never more than the rows still wanted: the page's cursor then points just past the last row returned
        page = tracker.list_executions(limit - len(rows), cursor, status)
        for info in page.executions:
            row = execution_row(engine, info.execution_id, tracker.history(info.execution_id), info.started_at)
            if status is None or row["status"] == status:
                rows.append(row)
        examined += len(page.executions)
        cursor = page.next_cursor
        if cursor is None or len(rows) >= limit or examined >= SCAN_BUDGET or not page.executions:
            break
    return {"workflow_id": engine.workflow.id, "status": status, "executions": rows, "next_cursor": cursor}


def execution_row(engine: Engine, execution_id: str, history: ExecutionHistory, started_at: float) -> dict[str, Any]:
    """One line of the executions table, from the execution's history."""
    from xflow.core.tracking import summarize

    summary = summarize(engine.workflow, execution_id, history)
    times = [e.published_at for e in history.events]
    times += [d.started_at + (d.duration or 0.0) for d in history.deliveries]
    failed = sorted({s["name"] for e in summary["events"] for s in e["subscribers"] if s["state"] == "failed"})
    return {
        "execution_id": execution_id,
        "status": summary["status"],
        "started_at": _iso(started_at),
        "updated_at": _iso(max(times, default=started_at)),
        "last_unprocessed_event": summary["last_unprocessed_event"],
        "failed_functions": failed,
    }


def describe_workflow(engine: Engine) -> dict[str, Any]:
    """A workflow as ``GET /workflows/{id}`` shows it: functions, events in flow order with their streams and
    subscribers, the plugins it runs on (names only: options may hold secrets) and the graph."""
    from xflow.core.graph import to_mermaid

    workflow = engine.workflow
    transport = engine.transport
    publishers: dict[str, list[str]] = {}
    for function in workflow.functions.values():
        for event in function.publishes:
            publishers.setdefault(event, []).append(function.name)
    return {
        "workflow_id": workflow.id,
        "file": workflow.path.name,
        "plugins": engine.plugin_names(),
        "flow": list(workflow.flow),
        "events": [{"name": event, "stream": transport.stream_name(event),
                    "subscribers": list(workflow.subscribers(event)), "publishers": publishers.get(event, [])}
                   for event in workflow.flow],
        "functions": [{"name": f.name, "description": f.description, "runtime": f.runtime,
                       "subscribes": list(workflow.subscriptions_of(f.name)), "publishes": list(f.publishes),
                       "retries": f.retries}
                      for f in workflow.functions.values()],
        "graph": {"mermaid": to_mermaid(workflow), "svg": f"/workflows/{workflow.id}/graph.svg"},
    }


def _iso(epoch: float) -> str:
    """RFC 3339 to the millisecond (``track`` gives seconds; a table of runs started close together needs more)."""
    from xflow.core.runtime import iso_time

    return iso_time(epoch)[:23] + "Z"
