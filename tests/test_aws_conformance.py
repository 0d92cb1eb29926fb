"""The conformance kit run against the kinesis transport and the cloudwatch tracker on a moto server."""

from __future__ import annotations

import pytest

from xflow.core.interfaces import PluginContext

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

testing = pytest.importorskip("xflow.testing")

pytestmark = pytest.mark.aws


class TestKinesisTransport(testing.TransportContract):
    @pytest.fixture
    def transport_factory(self, aws_endpoint, tmp_path):  # noqa: F811
        from xflow.transports.kinesis import KinesisTransport

        def make(workflow_id):
            return KinesisTransport(PluginContext(workflow_id, {"lease_seconds": 6}, tmp_path))

        return make


class TestCloudWatchTracker(testing.TrackerStoreContract):
    @pytest.fixture
    def tracker_factory(self, aws_endpoint, tmp_path):  # noqa: F811
        from xflow.trackers.cloudwatch import CloudWatchTracker

        def make(workflow_id):
            return CloudWatchTracker(PluginContext(workflow_id, {}, tmp_path))

        return make
