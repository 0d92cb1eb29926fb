"""The ``otlp`` log destination: OpenTelemetry logs over OTLP/HTTP (protobuf), for an OpenTelemetry Collector or any
backend with an OTLP intake. Needs the ``otel`` extra (``pip install 'xflow[otel]'``: OpenTelemetry's protocol
classes), imported when the route starts.

Each batch is one ``ExportLogsServiceRequest`` POSTed to ``url`` (default ``$OTEL_EXPORTER_OTLP_LOGS_ENDPOINT``, else
``$OTEL_EXPORTER_OTLP_ENDPOINT/v1/logs``, else ``http://localhost:4318/v1/logs``), with the ``http`` destination's
gzip, bearer token, headers and retries. The resource says ``service.name`` (option ``service_name``); each log
record has the record's time, its level as severity (number and text), its message as body, its trace id when
present, and the other fields as attributes named ``xflow.workflow``, ``xflow.execution_id``, ``xflow.event``,
``xflow.event_id``, ``xflow.function``, ``xflow.attempt``, ``xflow.kind``, ``xflow.status`` and ``xflow.seq``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from xflow.core.errors import XflowError
from xflow.core.interfaces import PluginContext
from xflow.core.options import Option
from xflow.logs.http import HttpDestination
from xflow.logs.records import LogRecord

DEFAULT_URL = "http://localhost:4318/v1/logs"
#: OpenTelemetry's severity numbers (the first of each range)
SEVERITY_NUMBERS = {"DEBUG": 5, "INFO": 9, "WARNING": 13, "ERROR": 17, "CRITICAL": 21}
ATTRIBUTES = ("workflow", "execution_id", "event", "event_id", "function", "attempt", "kind", "status", "seq")
_TRACE_ID = re.compile(r"[0-9a-f]{32}\Z")


class OtlpDestination(HttpDestination):
    name: ClassVar[str] = "otlp"
    description: ClassVar[str] = "OpenTelemetry logs over OTLP/HTTP (needs the otel extra)"
    options: ClassVar[tuple[Option, ...]] = (
        Option("url", str, None, "the OTLP/HTTP logs endpoint (default: $OTEL_EXPORTER_OTLP_LOGS_ENDPOINT, "
                                 f"$OTEL_EXPORTER_OTLP_ENDPOINT/v1/logs, {DEFAULT_URL})"),
        Option("service_name", str, "xflow", "the resource's service.name"),
        *(option for option in HttpDestination.options if option.name != "url"),
    )
    content_type: ClassVar[str] = "application/x-protobuf"

    def __init__(self, context: PluginContext) -> None:
        try:
            from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
            from opentelemetry.proto.common.v1 import common_pb2
            from opentelemetry.proto.logs.v1 import logs_pb2
            from opentelemetry.proto.resource.v1 import resource_pb2
        except ImportError as exc:
            raise XflowError(f"log destination 'otlp' needs the otel extra ({exc.name} is not installed)",
                             "pip install 'xflow[otel]'") from None
        self._pb: Any = (logs_service_pb2, common_pb2, logs_pb2, resource_pb2)
        super().__init__(context)

    def default_url(self) -> str:
        logs = os.environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
        if logs:
            return logs
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return base.rstrip("/") + "/v1/logs" if base else DEFAULT_URL

    def encode(self, records: Sequence[LogRecord]) -> bytes:
        service, common, logs, resource = self._pb

        def value(item: Any) -> Any:
            if isinstance(item, bool):
                return common.AnyValue(bool_value=item)
            if isinstance(item, int):
                return common.AnyValue(int_value=item)
            return common.AnyValue(string_value=str(item))

        converted = []
        for record in records:
            fields = record.as_dict()
            entry = logs.LogRecord(
                time_unix_nano=int(record.time * 1e9), observed_time_unix_nano=int(record.time * 1e9),
                severity_number=SEVERITY_NUMBERS.get(record.level, 9), severity_text=record.level,
                body=common.AnyValue(string_value=record.message),
                attributes=[common.KeyValue(key=f"xflow.{name}", value=value(fields[name]))
                            for name in ATTRIBUTES if fields.get(name) is not None])
            if record.trace_id and _TRACE_ID.match(record.trace_id.lower()):
                entry.trace_id = bytes.fromhex(record.trace_id)
            converted.append(entry)
        request = service.ExportLogsServiceRequest(resource_logs=[logs.ResourceLogs(
            resource=resource.Resource(attributes=[
                common.KeyValue(key="service.name", value=value(self.context.option("service_name"))),
                common.KeyValue(key="xflow.workflow", value=value(self.context.workflow_id))]),
            scope_logs=[logs.ScopeLogs(scope=common.InstrumentationScope(name="xflow"), log_records=converted)])])
        return bytes(request.SerializeToString())
