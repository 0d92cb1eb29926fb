"""Tracker ``cloudwatch``: a CloudWatch Logs group per workflow, a log stream per execution.

- :mod:`.tracker`: the plugin (setup and teardown of the group, writing records once, success look-ups);
- :mod:`.lines`: the records as JSON log lines, and PutLogEvents batches within the call's limits;
- :mod:`.history`: reading an execution's history (its stream, and what Lambda functions printed).

Registered through the entry point ``cloudwatch = xflow.trackers.cloudwatch`` (group ``xflow``).
"""

from __future__ import annotations

from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import TrackerStore
from xflow.trackers.cloudwatch.history import LAMBDA_LOG_PREFIX
from xflow.trackers.cloudwatch.lines import (
    MAX_DATA_CHARS,
    MAX_ERROR_CHARS,
    PUT_EVENT_OVERHEAD,
    PUT_MAX_BYTES,
    PUT_MAX_EVENTS,
    delivery_line,
    event_line,
    log_stream_name,
    parse_line,
    put_ranges,
)
from xflow.trackers.cloudwatch.tracker import (
    KNOWN_EXECUTIONS,
    LOOKUP_LIMIT,
    LOOKUP_PAGES,
    WRITE_SECONDS,
    CloudWatchTracker,
)

__all__ = [
    "KNOWN_EXECUTIONS", "LAMBDA_LOG_PREFIX", "LOOKUP_LIMIT", "LOOKUP_PAGES", "MAX_DATA_CHARS", "MAX_ERROR_CHARS",
    "PUT_EVENT_OVERHEAD", "PUT_MAX_BYTES", "PUT_MAX_EVENTS", "WRITE_SECONDS", "CloudWatchTracker", "delivery_line",
    "event_line", "log_stream_name", "parse_line", "put_ranges", "xflow_tracker_stores",
]


@hookimpl
def xflow_tracker_stores() -> list[type[TrackerStore]]:
    return [CloudWatchTracker]
