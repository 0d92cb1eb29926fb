"""The ``local`` function provider: handlers run in ``xflow worker`` processes on this machine.

Works with every transport. Setup deploys nothing; it imports every handler so that a broken
one is reported before any event is published. Scale out by starting more workers.

Options: ``batch_size`` (deliveries per poll, default 100), ``backoff_seconds`` (first retry
delay, doubled each retry, default 0.2), ``backoff_max_seconds`` (default 5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import FunctionProvider, Step, TrackerStore, Transport
from xflow.core.worker import Dispatcher

if TYPE_CHECKING:
    from xflow.core.model import Workflow


class LocalFunctionProvider(FunctionProvider):
    name = "local"
    description = "Runs handlers in xflow worker processes on this machine (any transport)"
    runs_locally = True
    options: ClassVar[dict[str, str]] = {
        "batch_size": "deliveries taken per poll (default 100)",
        "backoff_seconds": "delay before the first retry, doubled on each retry (default 0.2)",
        "backoff_max_seconds": "longest delay between retries (default 5)",
    }

    def plan_setup(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        Dispatcher(workflow, transport, tracker,
                   cache_dir=self.context.state_dir / workflow.id / "sources").load_handlers()
        return []

    def plan_teardown(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        return []


@hookimpl
def xflow_function_providers() -> list[type[FunctionProvider]]:
    return [LocalFunctionProvider]
