"""The ``local`` function provider: handlers run in ``xflow worker`` processes on this machine.

Works with every transport. Setup deploys nothing. Planning checks, without importing or running
anything, that every subscribed function's source exists and defines its handler (the file is
parsed with :mod:`ast`), so that a broken handler is reported before any event is published and
``setup --dry-run`` has no side effect. Handlers are imported when a worker starts. Scale out by
starting more workers. Teardown removes the folder where workers fetch remote sources.

Options: ``batch_size`` (deliveries per poll, default 100), ``backoff_seconds`` (first retry
delay, doubled each retry, default 0.2), ``backoff_max_seconds`` (default 5),
``unavailable_give_up_seconds`` (how long a worker waits out an unavailable backend before it stops
with exit status 1; default 0, until the backend is back).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from xflow.core.errors import XflowError
from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import FunctionProvider, Step, TrackerStore, Transport

if TYPE_CHECKING:
    from xflow.core.model import Function, Workflow


class LocalFunctionProvider(FunctionProvider):
    name = "local"
    description = "Runs handlers in xflow worker processes on this machine (any transport)"
    runs_locally = True
    options: ClassVar[dict[str, str]] = {
        "batch_size": "deliveries taken per poll (default 100)",
        "backoff_seconds": "delay before the first retry, doubled on each retry (default 0.2)",
        "backoff_max_seconds": "longest delay between retries (default 5)",
        "unavailable_give_up_seconds": "how long a worker waits for an unavailable backend (a full disk, a broker "
                                       "restart) before it stops with exit status 1 (default 0: until it is back)",
    }

    def sources_folder(self, workflow: Workflow) -> Path:
        """Where workers fetch remote sources (the dispatcher's ``cache_dir``)."""
        return Path(self.context.state_dir) / workflow.id / "sources"

    def plan_setup(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        remote: list[Function] = []
        for name, function in workflow.functions.items():
            if not workflow.subscriptions_of(name):
                continue  # never runs (the file's loader warns about it)
            if function.source_path is None:
                remote.append(function)
            else:
                check_local_handler(function)
        if remote:
            check_remote_handlers(workflow, remote)
        return []

    def plan_teardown(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        folder = self.sources_folder(workflow)
        if not folder.exists():
            return []
        return [Step("delete", f"source-cache:{folder}", lambda: shutil.rmtree(folder, ignore_errors=True))]


def check_local_handler(function: Function) -> None:
    """An XflowError unless the local source exists and defines the handler (read and parsed, never imported)."""
    from xflow.sources.resolve import check_handler, narrow

    path = function.source_path
    assert path is not None
    if not path.exists():
        raise XflowError(f"function {function.name}: source {str(path)!r} does not exist",
                         "fix 'source:' (a relative path is read from the workflow file's folder)")
    check_handler(function, narrow(path, function.handler) if path.is_dir() else path)


def check_remote_handlers(workflow: Workflow, functions: list[Function]) -> None:
    """Fetch remote sources into a temporary folder (removed at once) and check their handlers there."""
    from xflow.sources.resolve import check_handler, fetch_source

    aws = None
    if any(f.source.startswith("s3://") for f in functions):
        from xflow.core.aws import AwsSession

        aws = AwsSession(dict(workflow.aws or {}))
    with tempfile.TemporaryDirectory(prefix="xflow-check-") as tmp:
        for index, function in enumerate(functions):
            check_handler(function, fetch_source(function, Path(tmp) / str(index), aws))


@hookimpl
def xflow_function_providers() -> list[type[FunctionProvider]]:
    return [LocalFunctionProvider]
