"""Centralized logging: every handler's log lines, printed lines and delivery outcomes as structured records
(:mod:`xflow.logs.records`), routed to log destinations (:mod:`xflow.logs.router`), the fourth plugin kind.

Built-in destinations, registered through the ``xflow`` entry point like every backend: ``file`` (JSON lines,
rotated by size), ``syslog`` (RFC 5424 over UDP, TCP or TLS), ``http`` (JSON batches) and ``otlp`` (OpenTelemetry
logs, with the ``otel`` extra). A workflow file's ``logging:`` block, or ``--log-route`` on ``xflow worker`` and
``xflow run``, chooses them; ``xflow logs`` reads an execution's records back.
"""

from __future__ import annotations

from xflow.core.hookspecs import hookimpl
from xflow.logs.destination import DeliveryRefused, LogDestination
from xflow.logs.records import FIELDS, LogRecord, records_of

__all__ = ["FIELDS", "DeliveryRefused", "LogDestination", "LogRecord", "records_of"]


@hookimpl
def xflow_log_destinations() -> list[type[LogDestination]]:
    from xflow.logs.file import FileDestination
    from xflow.logs.http import HttpDestination
    from xflow.logs.otlp import OtlpDestination
    from xflow.logs.syslog import SyslogDestination

    return [FileDestination, SyslogDestination, HttpDestination, OtlpDestination]
