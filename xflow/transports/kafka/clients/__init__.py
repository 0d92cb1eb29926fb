"""The Kafka client libraries the ``kafka`` transport can use, by the name its ``client`` option takes.

Each is a :class:`~xflow.transports.kafka.clients.base.KafkaClient`, in a module of its own that is imported
only when a transport picks it (and that imports its library only when a client is built).
"""

from __future__ import annotations

import importlib

from xflow.transports.kafka.clients.base import ClientSettings, KafkaClient

#: client name -> "module:class"
CLIENTS: dict[str, str] = {
    "kafka-python": "xflow.transports.kafka.clients.kafka_python:PythonKafkaClient",
    "confluent": "xflow.transports.kafka.clients.confluent:ConfluentClient",
}


def make_client(name: str, settings: ClientSettings) -> KafkaClient:
    """The client called ``name`` (a key of :data:`CLIENTS`), built with ``settings``."""
    module, _, attribute = CLIENTS[name].partition(":")
    client: KafkaClient = getattr(importlib.import_module(module), attribute)(settings)
    return client
