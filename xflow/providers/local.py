"""The ``local`` function provider: handlers run in ``xflow worker`` processes on this machine.

Works with every transport. Setup deploys nothing. Planning checks, without importing or running
anything, that every subscribed function's source exists and defines its handler (the file is
parsed with :mod:`ast`), so that a broken handler is reported before any event is published and
``setup --dry-run`` has no side effect. Handlers are imported when a worker starts. Scale out by
starting more workers. Teardown removes the folder where workers fetch remote sources.

The provider owns execution: :meth:`LocalFunctionProvider.runner` gives ``xflow worker``, ``xflow run`` and
:class:`xflow.Worker` the dispatcher of :mod:`xflow.providers.dispatcher`, which runs each function's handler
supervised (in handler processes by default), ``concurrency`` calls at once, keeping order per execution.

Options: ``batch_size`` (deliveries per poll, default 100), ``backoff_seconds`` (first retry
delay, doubled each retry, default 0.2), ``backoff_max_seconds`` (default 5),
``unavailable_give_up_seconds`` (how long a worker waits out an unavailable backend before it stops
with exit status 1; default 0, until the backend is back), ``concurrency`` (handler calls at once per
function, for functions whose ``concurrency:`` is not set; default 1), ``isolation`` (``process``, the default:
handlers run in handler processes, so a crash, ``os._exit`` or a timeout fails one attempt and nothing else;
``thread``: in threads of the worker, faster to call, unprotected), ``propagate_logs`` (handler log records also
go to the host's ``logging``, on ``xflow.functions.WORKFLOW.FUNCTION``; default false).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from xflow.core.errors import XflowError
from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import FunctionProvider, Runner, Step, TrackerStore, Transport

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
        "concurrency": "handler calls at once per function whose 'concurrency:' is not set (default 1)",
        "isolation": "process (default: each handler call in a handler process) or thread (in the worker's threads)",
        "propagate_logs": "true: handler log records also go to the host's logging (default false)",
    }

    def runner(self, workflow: Workflow, transport: Transport, tracker: TrackerStore,
               functions: Sequence[str] | None = None) -> Runner:
        """The dispatcher that runs ``functions`` (default: all) on this machine."""
        from xflow.providers.dispatcher import LocalDispatcher
        from xflow.providers.supervisor import ISOLATIONS

        options = self.context
        isolation = str(options.option("isolation", "process")).strip().lower()
        if isolation not in ISOLATIONS:
            raise XflowError(f"option isolation={isolation!r} must be one of: {', '.join(ISOLATIONS)}")
        return LocalDispatcher(
            workflow, transport, tracker, functions=functions, cache_dir=self.sources_folder(workflow),
            batch_size=options.number_option("batch_size", 100, minimum=1),
            backoff_seconds=options.number_option("backoff_seconds", 0.2, minimum=0, kind=float),
            backoff_max_seconds=options.number_option("backoff_max_seconds", 5.0, minimum=0, kind=float),
            unavailable_give_up_seconds=options.number_option("unavailable_give_up_seconds", 0, minimum=0, kind=float),
            concurrency=options.number_option("concurrency", 1, minimum=1),
            isolation=isolation, propagate_logs=_flag(options.option("propagate_logs", False), "propagate_logs"),
        )

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


def _flag(value: object, key: str) -> bool:
    """A true/false option, from YAML (a boolean) or text (--option, XFLOW_* variables)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0", ""):
        return False
    raise XflowError(f"option {key}={value!r} must be true or false")


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
        from xflow.aws import AwsSession

        aws = AwsSession(dict(workflow.aws or {}))
    with tempfile.TemporaryDirectory(prefix="xflow-check-") as tmp:
        for index, function in enumerate(functions):
            check_handler(function, fetch_source(function, Path(tmp) / str(index), aws))


@hookimpl
def xflow_function_providers() -> list[type[FunctionProvider]]:
    return [LocalFunctionProvider]
