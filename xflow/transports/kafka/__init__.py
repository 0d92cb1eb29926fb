"""The ``kafka`` transport (Apache Kafka or a compatible broker): the plugin's entry point and public names.

- :mod:`~xflow.transports.kafka.transport`: :class:`KafkaTransport` (options, setup and teardown as data-only
  steps, publish, dead letters);
- :mod:`~xflow.transports.kafka.consumer`: :class:`KafkaConsumer`, a member of a function's consumer group;
- :mod:`~xflow.transports.kafka.clients`: the client libraries (kafka-python, confluent-kafka) behind one small
  protocol, one module each.
"""

from __future__ import annotations

from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import Transport
from xflow.transports.kafka.clients import CLIENTS
from xflow.transports.kafka.clients.base import ClientSettings, KafkaClientError, Outgoing, group_offsets
from xflow.transports.kafka.consumer import KEEP_ALIVE_AFTER, KafkaConsumer
from xflow.transports.kafka.transport import DLQ_SUFFIX, EVENT_HEADERS, KafkaTransport, log

__all__ = [
    "CLIENTS",
    "DLQ_SUFFIX",
    "EVENT_HEADERS",
    "KEEP_ALIVE_AFTER",
    "ClientSettings",
    "KafkaClientError",
    "KafkaConsumer",
    "KafkaTransport",
    "Outgoing",
    "group_offsets",
    "log",
    "xflow_transports",
]


@hookimpl
def xflow_transports() -> list[type[Transport]]:
    return [KafkaTransport]
