"""The conformance kit run against the kinesis transport and the cloudwatch tracker on a moto server."""

from __future__ import annotations

import pytest

from xflow.core.interfaces import PluginContext

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

from xflow import testing  # noqa: E402

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


class TestLambdaProvider(testing.FunctionProviderContract):
    @pytest.fixture
    def provider_transport(self, aws_endpoint, workflow, tmp_path):  # noqa: F811
        from xflow.transports.kinesis import KinesisTransport

        transport = KinesisTransport(PluginContext(workflow.id, {}, tmp_path, workflow))
        testing.apply_steps(transport.plan_setup(workflow.events))
        yield transport
        testing.apply_steps(transport.plan_teardown(workflow.events))

    @pytest.fixture
    def provider_tracker(self, aws_endpoint, workflow, tmp_path):  # noqa: F811
        from xflow.trackers.cloudwatch import CloudWatchTracker

        tracker = CloudWatchTracker(PluginContext(workflow.id, {}, tmp_path, workflow))
        testing.apply_steps(tracker.plan_setup(workflow))
        yield tracker
        testing.apply_steps(tracker.plan_teardown(workflow))

    @pytest.fixture
    def provider_factory(self, aws_endpoint, workflow, tmp_path):  # noqa: F811
        from xflow.providers.aws_lambda import LambdaProvider

        def make(workflow_id):
            return LambdaProvider(PluginContext(workflow_id, {}, tmp_path, workflow))

        return make
