"""The conformance kit: pytest test classes every Transport, TrackerStore, FunctionProvider and LogDestination passes.

A backend's test module subclasses one class and provides one fixture that builds the
backend under test for a given workflow id; the kit does the rest::

    import pytest
    from xflow.core.interfaces import PluginContext
    from xflow.testing import TransportContract

    class TestRedisTransport(TransportContract):
        @pytest.fixture
        def transport_factory(self, redis_url, tmp_path):
            def make(workflow_id):
                return RedisTransport(PluginContext(workflow_id, {"url": redis_url}, tmp_path))
            return make

The factory may be called several times with the same workflow id (a restarted worker is a
new instance); every instance must see the same streams or records. Each test uses its own
fresh workflow id, so tests can share one server and run in parallel. Whatever a test sets
up is torn down at its end.

Timing knobs are class attributes (``poll_timeout``, ``quiet_timeout``,
``consistency_timeout``): raise them for backends that are slow to deliver or to read back,
never lower the checks themselves.
"""

from xflow.testing.kit import KIT_EVENTS as KIT_EVENTS
from xflow.testing.kit import apply_steps, drain, kit_workflow, new_workflow_id
from xflow.testing.logs import LogDestinationContract
from xflow.testing.logs import LogDestinationFactory as LogDestinationFactory
from xflow.testing.provider import FunctionProviderContract
from xflow.testing.provider import ProviderFactory as ProviderFactory
from xflow.testing.tracker import TrackerFactory as TrackerFactory
from xflow.testing.tracker import TrackerStoreContract
from xflow.testing.transport import TransportContract
from xflow.testing.transport import TransportFactory as TransportFactory

__all__ = [
    "FunctionProviderContract",
    "LogDestinationContract",
    "TrackerStoreContract",
    "TransportContract",
    "apply_steps",
    "drain",
    "kit_workflow",
    "new_workflow_id",
]
