"""The conformance kit run against the kafka transport, with both clients, on each test broker."""

from __future__ import annotations

import pytest

from xflow.core.interfaces import PluginContext

try:
    from kafka_brokers import kafka_broker  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.kafka_brokers import kafka_broker  # noqa: F401

from xflow import testing  # noqa: E402

pytestmark = pytest.mark.kafka


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request):
    pytest.importorskip("kafka" if request.param == "kafka-python" else "confluent_kafka")
    return request.param


class TestKafkaTransport(testing.TransportContract):
    @pytest.fixture
    def transport_factory(self, kafka_broker, kafka_client, tmp_path):  # noqa: F811
        from xflow.transports.kafka import KafkaTransport

        def make(workflow_id):
            options = kafka_broker.transport_options(client=kafka_client, partitions="3")
            return KafkaTransport(PluginContext(workflow_id, options, tmp_path))

        return make
