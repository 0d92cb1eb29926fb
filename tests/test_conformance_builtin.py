"""The conformance kit run against the built-in embedded backends: ``local`` transport, ``sqlite`` tracker, ``local`` provider.

They are looked up through the entry points, exactly as a third-party plugin would be.
"""

from __future__ import annotations

import pytest

from xflow.core.interfaces import PluginContext
from xflow.core.plugins import PluginRegistry
from xflow.testing import FunctionProviderContract, TrackerStoreContract, TransportContract


def builtin(kind: str, name: str) -> type:
    info = PluginRegistry().get(kind, name)
    assert info.cls is not None
    return info.cls


class TestLocalTransport(TransportContract):
    @pytest.fixture
    def transport_factory(self, tmp_path):
        cls = builtin("transport", "local")
        return lambda workflow_id: cls(PluginContext(workflow_id, {}, tmp_path))


class TestSqliteTracker(TrackerStoreContract):
    @pytest.fixture
    def tracker_factory(self, tmp_path):
        cls = builtin("tracker", "sqlite")
        return lambda workflow_id: cls(PluginContext(workflow_id, {}, tmp_path))


class TestLocalProvider(FunctionProviderContract):
    @pytest.fixture
    def provider_factory(self, tmp_path, workflow):
        cls = builtin("provider", "local")
        return lambda workflow_id: cls(PluginContext(workflow_id, {}, tmp_path, workflow))
