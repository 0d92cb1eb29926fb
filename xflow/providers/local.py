"""The ``local`` function provider: handlers run in ``xflow worker`` processes on this machine.

Works with every transport. Setup deploys each function's code and environment as a version, a copy under the
state folder that workers run (:mod:`xflow.providers.local_versions`; ``xflow rollback`` switches back).
Planning checks, without importing or running anything, that every subscribed function's source exists and
defines its handler (the file is
parsed with :mod:`ast`), so that a broken handler is reported before any event is published and
``setup --dry-run`` has no side effect. Handlers are imported when a worker starts. Scale out by
starting more workers. A function's requirements (a ``requirements.txt`` beside its source, or ``requirements:``)
are installed into an environment of its own under the state folder (:mod:`xflow.providers.local_requirements`),
which its handler imports from. Teardown removes the folder where workers fetch remote sources, and the
environments.

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
from typing import TYPE_CHECKING, Any, ClassVar

from xflow.core.deploy import dispatch
from xflow.core.errors import XflowError
from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import FunctionProvider, Runner, Step, TrackerStore, Transport
from xflow.core.options import Option
from xflow.providers.local_versions import LocalVersions

if TYPE_CHECKING:
    from xflow.core.model import Function, Workflow


class LocalFunctionProvider(FunctionProvider):
    name = "local"
    description = "Runs handlers in xflow worker processes on this machine (any transport)"
    runs_locally = True
    options: ClassVar[tuple[Option, ...]] = (
        Option("batch_size", int, 100, "deliveries taken per poll", minimum=1),
        Option("backoff_seconds", "duration", 0.2, "delay before the first retry, doubled on each retry", minimum=0),
        Option("backoff_max_seconds", "duration", 5.0, "longest delay between retries", minimum=0),
        Option("unavailable_give_up_seconds", "duration", 0.0, "how long a worker waits for an unavailable backend (a "
               "full disk, a broker restart) before it stops with exit status 1 (0: until it is back)", minimum=0),
        Option("concurrency", int, 1, "handler calls at once per function whose 'concurrency:' is not set", minimum=1),
        Option("isolation", "choice", "process", "process: each handler call in a handler process; thread: in the "
               "worker's threads", choices=("process", "thread")),
        Option("propagate_logs", bool, False, "handler log records also go to the host's logging"),
    )

    def runner(self, workflow: Workflow, transport: Transport, tracker: TrackerStore,
               functions: Sequence[str] | None = None) -> Runner:
        """The dispatcher that runs ``functions`` (default: all) on this machine."""
        from xflow.providers.dispatcher import LocalDispatcher
        from xflow.providers.local_requirements import import_paths

        options = self.context  # typed values (Option declarations above), defaults included
        workflow = self.versions.live_workflow(workflow)  # each function's live version (local_versions)
        names = list(functions) if functions else list(workflow.functions)
        return LocalDispatcher(
            workflow, transport, tracker, functions=functions, cache_dir=self.sources_folder(workflow),
            batch_size=options.option("batch_size"), backoff_seconds=options.option("backoff_seconds"),
            backoff_max_seconds=options.option("backoff_max_seconds"),
            unavailable_give_up_seconds=options.option("unavailable_give_up_seconds"),
            concurrency=options.option("concurrency"), isolation=options.option("isolation"),
            propagate_logs=options.option("propagate_logs"),
            import_paths=import_paths(workflow, self.context.state_dir, [n for n in names if n in workflow.functions]),
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
        from xflow.providers.local_requirements import plan_environments

        return (plan_environments(workflow, self.context.state_dir)  # each function's requirements, installed
                + self.versions.plan_setup(workflow, [f for n, f in workflow.functions.items()
                                                      if workflow.subscriptions_of(n)]))

    def plan_teardown(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        from xflow.providers.local_requirements import teardown_steps

        folder = self.sources_folder(workflow)
        steps = teardown_steps(workflow, self.context.state_dir) + self.versions.plan_teardown()
        if not folder.exists():
            return steps
        return [Step("delete", f"source-cache:{folder}", call="local:RemoveSourceCache", params={"folder": str(folder)}),
                *steps]

    def execute(self, step: Step) -> None:
        from xflow.providers.local_requirements import operations

        dispatch(step, {"local:RemoveSourceCache": _remove_folder, **operations(), **self.versions.operations()})

    @property
    def versions(self) -> LocalVersions:
        """The functions' deployed versions under the state folder (:mod:`xflow.providers.local_versions`)."""
        return LocalVersions(self.context.state_dir, self.workflow_id)

    def deployed_versions(self, workflow: Workflow) -> list[dict[str, Any]]:
        """Each function's versions, with their code's SHA-256 and time, and which one is live (``xflow versions``)."""
        return [self.versions.describe(name) for name in self.versions.deployed(workflow)]

    def rollback(self, workflow: Workflow, function: str | None = None, to: str | None = None) -> list[dict[str, Any]]:
        """Make the version live before (or version ``to``) live again (``xflow rollback``)."""
        return self.versions.rollback(workflow, function, to)


def _remove_folder(folder: str) -> None:
    """Remove the folder where workers fetched remote sources (what is gone already is no error)."""
    shutil.rmtree(folder, ignore_errors=True)


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
    from xflow.sources.fetch import fetch_source
    from xflow.sources.resolve import check_handler

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
