"""The public Python API: an :class:`Engine` sets up, publishes to, runs, tracks and tears down a workflow.

The CLI is a thin layer over this module. Embedding example::

    from xflow import Engine

    engine = Engine("examples/word_count/word_count.yaml")          # local / local / sqlite
    result = engine.run(data={"path": "examples/word_count/sample.txt"})
    print(result["status"], result["result"]["total"])

A workflow may also be given in code, as the mapping a workflow file parses to::

    engine = Engine.from_mapping({"workflow_id": "orders", "lambdas": [...], "subscriptions": [...]},
                                 base_dir=Path(__file__).parent)

One Engine may be shared by the threads of an application (request threads publishing and tracking while a
worker thread runs). The engine leaves the host's process state alone: ``publish``, ``track``, ``setup``, ``run`` and
the other calls install no signal handler (only ``work(install_signal_handlers=True)`` does, and puts the previous
ones back), configure no logging and change no environment variable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xflow.core.config import MAPPING_NAME, load_workflow, load_workflow_mapping
from xflow.core.deploy import DisplayOnlyExecutor, Executor
from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.event_data import JSON_TYPES, MAX_DATA_DEPTH, check_event_data
from xflow.core.interfaces import (
    DeliveryRecord,
    FunctionProvider,
    PluginContext,
    Runner,
    Step,
    TrackerStore,
    Transport,
)
from xflow.core.model import Workflow
from xflow.core.options import declared_options
from xflow.core.plugin_choice import AWS_DEFAULTS, KIND_ORDER, LOCAL_DEFAULTS, PluginChoices
from xflow.core.plugins import PluginRegistry
from xflow.core.publishing import OutgoingEvent, publish_events
from xflow.core.runtime import new_event_id
from xflow.core.setup_record import (
    default_state_dir,
    read_setup_record,
    remove_setup_record,
    setup_record_path,
    write_setup_record,
)
from xflow.core.stages import apply_stage
from xflow.core.state_files import SQLITE_HEADER, state_files
from xflow.core.tracking import final_result, summarize
from xflow.core.worker import Worker, stop_on_signals

__all__ = ["AWS_DEFAULTS", "JSON_TYPES", "KIND_ORDER", "LOCAL_DEFAULTS", "MAX_DATA_DEPTH", "SQLITE_HEADER", "Engine",
           "SetupReport", "UnknownExecutionError", "check_event_data", "default_state_dir", "read_setup_record",
           "setup_record_path"]

log = logging.getLogger("xflow")


class UnknownExecutionError(XflowError):
    """``track`` of an execution id the tracker has no record of (exit status 1: nothing to report on).

    ``summary`` holds the track object all the same (every event ``not_reached``), for ``--output json``.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str, summary: dict[str, Any]) -> None:
        super().__init__(message, hint)
        self.summary = summary


@dataclass
class SetupReport:
    """What ``setup`` or ``teardown`` changed (or, on a dry run, would change)."""

    workflow_id: str
    plugins: dict[str, str]
    steps: list[Step]
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"workflow_id": self.workflow_id, **self.plugins, "changes": [s.as_change() for s in self.steps]}


class Engine:
    """One workflow bound to a transport, a function provider and a tracker store.

    ``workflow`` is a workflow file's path, a loaded :class:`Workflow`, or a mapping holding what a workflow file
    holds (then ``base_dir``, the folder relative ``source:`` paths are read from, is required, and ``workflow_id``
    names the workflow if the mapping does not; see :meth:`from_mapping`). A mapping is validated exactly as a
    file is: every problem at once, in one :class:`~xflow.core.errors.WorkflowFileError` whose lines read
    ``<mapping>: dotted.path: message`` (a mapping has no lines).

    ``transport`` / ``provider`` / ``tracker`` are plugin names or ready instances. Names not given
    come from what ``setup`` recorded in ``state_dir``, then the workflow file's blocks, then
    ``defaults`` (:data:`LOCAL_DEFAULTS`). ``options`` maps a kind (or ``"any"``: the plugin that declares the key)
    to ``{key: value}``; they are merged over the file's block options, what setup recorded, and ``XFLOW_<KIND>_<KEY>``
    then ``XFLOW_<PLUGIN>_<KEY>`` variables, and converted to the types the plugins declare (a bad value is an
    XflowError naming the plugin, the option and where the value came from; ``options_source`` names ``options``
    there, ``--option`` for the CLI).

    ``stage`` deploys the workflow as a stage of its own (``dev``, ``prod``: :mod:`xflow.core.stages`), over the
    file's ``stage:``; ``workflow.id`` is then ``<workflow_id>-<stage>``, and so are the names of everything it owns.

    Threads: one Engine may be shared by many threads at once (``publish``, ``track``, ``result``, ``redrive``,
    ``recent_executions``, ``setup`` from request threads while a worker thread runs). Plugins are made once, by
    the first thread that needs them; ``setup`` and ``teardown`` run one at a time. The embedded backends share one
    SQLite connection per file among the threads, which take turns on it. ``close`` when no thread uses it any more.
    """

    def __init__(self, workflow: Workflow | str | os.PathLike[str] | Mapping[str, Any], *,
                 transport: str | Transport | None = None, provider: str | FunctionProvider | None = None,
                 tracker: str | TrackerStore | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None,
                 state_dir: str | os.PathLike[str] | None = None,
                 defaults: Mapping[str, str] = LOCAL_DEFAULTS,
                 registry: PluginRegistry | None = None, use_setup_record: bool = True,
                 base_dir: str | os.PathLike[str] | None = None, workflow_id: str | None = None,
                 options_source: str = "Engine(options=...)", stage: str | None = None) -> None:
        self._setup_lock = threading.Lock()  # one setup or teardown at a time
        self.workflow = _as_workflow(workflow, base_dir, workflow_id)
        if stage is not None:  # the file's stage: is applied by the loader; this one wins over it
            self.workflow = apply_stage(self.workflow, stage)
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.record = read_setup_record(self.state_dir, self.workflow.id) if use_setup_record else None
        given = {"transport": transport, "provider": provider, "tracker": tracker}
        self._plugins = PluginChoices(self.workflow, self.state_dir, given, record=self.record,
                                      record_path=setup_record_path(self.state_dir, self.workflow.id),
                                      options=options or {}, defaults=defaults, registry=registry,
                                      options_source=options_source)
        self._step_owner: dict[int, str] = {}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, base_dir: str | os.PathLike[str], workflow_id: str | None = None,
                     name: str = MAPPING_NAME, **engine_kwargs: Any) -> Engine:
        """An Engine for a workflow given as a mapping (what a workflow file holds, e.g. built in code).

        ``base_dir`` is the folder relative ``source:`` paths are read from; ``workflow_id`` names the workflow
        when the mapping has no ``workflow_id`` (when both are given they must agree). The mapping is validated
        as a file is: every problem at once in one WorkflowFileError, each line ``NAME: dotted.path: message``
        (``name`` defaults to ``<mapping>``). ``engine_kwargs`` are :class:`Engine`'s (``state_dir``,
        ``transport``, ``options``, ...).
        """
        workflow = load_workflow_mapping(data, base_dir, name=name, workflow_id=workflow_id)
        return cls(workflow, **engine_kwargs)

    # -- plugins ------------------------------------------------------------------------------
    @property
    def registry(self) -> PluginRegistry:
        return self._plugins.registry

    def plugin_names(self) -> dict[str, str]:
        return self._plugins.names()

    def check_plugins(self) -> None:
        """Resolve every plugin and check its options, creating nothing."""
        self._plugins.check()

    @property
    def transport(self) -> Transport:
        return self._plugins.plugin("transport")

    @property
    def provider(self) -> FunctionProvider:
        return self._plugins.plugin("provider")

    @property
    def tracker(self) -> TrackerStore:
        return self._plugins.plugin("tracker")

    def close(self) -> None:
        self._plugins.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _state_files(self) -> AbstractContextManager[None]:
        """Turn "file is not a database" and the like, raised by any plugin call inside, into a one-line error."""
        return state_files(self._plugins.damaged)

    # -- setup / teardown ---------------------------------------------------------------------
    def _planned(self, kind: str, call: Callable[[], list[Step]]) -> list[Step]:
        steps = list(self._plugins.guard(kind, "plan", call))
        for step in steps:
            self._step_owner[id(step)] = kind
        return steps

    def plan(self) -> list[Step]:
        """The steps ``setup`` would take: transport streams, tracker store, then functions."""
        self.check_plugins()
        transport, tracker, provider = self.transport, self.tracker, self.provider
        return (self._planned("transport", lambda: transport.plan_setup(self.workflow.events))
                + self._planned("tracker", lambda: tracker.plan_setup(self.workflow))
                + self._planned("provider", lambda: provider.plan_setup(self.workflow, transport, tracker)))

    def setup(self, dry_run: bool = False,
              on_step: Callable[[Step, int, int], None] | None = None) -> SetupReport:
        """Create or update everything the workflow needs; idempotent. ``dry_run`` only plans."""
        with self._setup_lock:
            steps = self.plan()
            self._execute(steps, dry_run, on_step)
            if not dry_run:
                write_setup_record(self.state_dir, self.workflow, self._plugins)
        return SetupReport(self.workflow.id, self.plugin_names(), steps, dry_run)

    def teardown(self, dry_run: bool = False,
                 on_step: Callable[[Step, int, int], None] | None = None) -> SetupReport:
        """Remove everything ``setup`` created (functions, tracker store, streams)."""
        with self._setup_lock:
            self.check_plugins()
            transport, tracker, provider = self.transport, self.tracker, self.provider
            steps = (self._planned("provider", lambda: provider.plan_teardown(self.workflow, transport, tracker))
                     + self._planned("tracker", lambda: tracker.plan_teardown(self.workflow))
                     + self._planned("transport", lambda: transport.plan_teardown(self.workflow.events)))
            self._execute(steps, dry_run, on_step)
            if not dry_run:
                remove_setup_record(self.state_dir, self.workflow.id)
        return SetupReport(self.workflow.id, self.plugin_names(), steps, dry_run)

    def _execute(self, steps: Sequence[Step], dry_run: bool, on_step: Callable[[Step, int, int], None] | None) -> None:
        """Apply a plan through each step's own plugin, or on a dry run only walk it."""
        if dry_run:
            DisplayOnlyExecutor().execute(steps)
            return

        def perform(step: Step) -> None:
            kind = self._step_owner.get(id(step), "transport")
            plugin = {"transport": self.transport, "tracker": self.tracker, "provider": self.provider}[kind]
            self._plugins.guard(kind, f"{step.action} {step.resource}", lambda: plugin.execute(step))

        Executor(perform, on_step).execute(steps)

    # -- publish ------------------------------------------------------------------------------
    def publish(self, event: str, data: Mapping[str, Any], execution_id: str | None = None) -> str:
        """Publish one event; returns the execution id (``data['execution_id']``, the argument, or a new one)."""
        outgoing = self._outgoing(event, data, execution_id)
        with self._state_files():
            publish_events(self.workflow, self.transport, self.tracker, [outgoing])
        return outgoing.execution_id

    def publish_many(self, items: Sequence[tuple[str, Mapping[str, Any], str | None]]) -> list[str | XflowError]:
        """Publish several events, each ``(event, data, execution_id)`` as :meth:`publish` takes them, grouped: one
        transport append per event name and one tracker write for all. Returns, in order, each one's execution id or
        the XflowError that refused it; one refused does not stop the others.

        Each event is checked as ``publish`` checks it first. If the grouped write then fails with anything but an
        unavailable backend (which fails them all), each event is written again on its own, with the same event id (so
        neither the tracker nor a subscriber counts it twice), and gets its own outcome.
        """
        outcomes: list[str | XflowError] = []
        accepted: list[tuple[int, OutgoingEvent]] = []
        for index, (event, data, execution_id) in enumerate(items):
            try:
                outgoing = self._outgoing(event, data, execution_id)
            except XflowError as exc:
                outcomes.append(exc)
                continue
            outcomes.append(outgoing.execution_id)
            accepted.append((index, outgoing))
        if not accepted:
            return outcomes
        try:
            with self._state_files():
                publish_events(self.workflow, self.transport, self.tracker, [item for _, item in accepted])
        except BackendUnavailable as exc:
            for index, _ in accepted:
                outcomes[index] = exc
        except XflowError as exc:
            if len(accepted) == 1:
                outcomes[accepted[0][0]] = exc
                return outcomes
            for index, item in accepted:
                try:
                    with self._state_files():
                        publish_events(self.workflow, self.transport, self.tracker, [item])
                except XflowError as own:
                    outcomes[index] = own
        return outcomes

    def _outgoing(self, event: str, data: Mapping[str, Any], execution_id: str | None) -> OutgoingEvent:
        """The event ``publish`` would write, after its checks (XflowError for a user mistake)."""
        if event not in self.workflow.flow:
            raise XflowError(f"workflow {self.workflow.id!r} has no event {event!r}",
                             f"its events are: {', '.join(self.workflow.flow)}")
        check_event_data(data, f"the data of {event!r}")
        in_data = data.get("execution_id")
        if in_data is not None and not isinstance(in_data, str):
            raise XflowError(f"execution_id in the data must be a string, got {type(in_data).__name__}")
        if execution_id and in_data and execution_id != in_data:
            raise XflowError(f"--execution-id {execution_id!r} contradicts execution_id {in_data!r} in the data",
                             "give one of them, or the same value in both")
        execution_id = execution_id or in_data or new_event_id()
        return OutgoingEvent(event, dict(data, execution_id=execution_id), execution_id, new_event_id(),
                             f"xflow/{self.workflow.id}")

    # -- work ---------------------------------------------------------------------------------
    def dispatcher(self, functions: Sequence[str] | None = None) -> Runner:
        """What runs ``functions`` (default: all) of the workflow here: the provider's runner.

        A provider written before runners existed that sets ``runs_locally`` gets the local provider's runner.
        """
        provider, transport, tracker = self.provider, self.transport, self.tracker
        runner = provider.runner(self.workflow, transport, tracker, functions)
        if runner is None and provider.runs_locally and type(provider).runner is FunctionProvider.runner:
            local = self.registry.get("provider", "local")
            assert local.cls is not None and issubclass(local.cls, FunctionProvider)  # the registry checked its kind
            options = {k: v for k, v in provider.context.options.items() if k in declared_options(local.cls)}
            stand_in = local.cls(PluginContext(self.workflow.id, options, self.state_dir, self.workflow))
            runner = stand_in.runner(self.workflow, transport, tracker, functions)
        if runner is None:
            hint = ("'xflow emulate' runs them on this machine against an emulator" if provider.name == "lambda" else
                    "run them with --provider local")
            raise XflowError(f"the {provider.name!r} provider runs functions itself: 'xflow worker' and 'xflow run' "
                             "have nothing to run", hint)
        return runner

    def work(self, functions: Sequence[str] | None = None, *, until: Callable[[], bool] | None = None,
             install_signal_handlers: bool = False, stop: threading.Event | None = None,
             stop_timeout: float = 10.0) -> int:
        """Run the provider's runner (a :class:`~xflow.core.worker.Worker`, in a thread) until ``until()`` is true
        (checked from this thread) or ``stop`` is set; returns the deliveries handled. Handlers in flight then get
        ``stop_timeout`` seconds to finish. The worker's error, if one stopped it, is raised.

        No signal handler is installed unless ``install_signal_handlers`` (then SIGTERM and SIGINT set ``stop``,
        and the previous handlers are put back on return; the main thread only)."""
        stop = stop if stop is not None else threading.Event()
        worker = Worker(self, functions)
        with self._state_files(), stop_on_signals(stop) if install_signal_handlers else nullcontext():
            worker.run_until(until, stop, stop_timeout=stop_timeout)
        return worker.handled

    # -- track --------------------------------------------------------------------------------
    def track(self, execution_id: str, *, known: bool = False) -> dict[str, Any]:
        """The tracking summary (the ``xflow track --output json`` object).

        With ``known=True``, an execution id the tracker has no record of raises
        :class:`UnknownExecutionError` (which carries the summary) naming the most recent known ids.
        """
        with self._state_files():
            self._collect_failures()
            history = self.tracker.history(execution_id)
        summary = summarize(self.workflow, execution_id, history)
        if known and not history.events and not history.deliveries:
            recent = self.recent_executions()
            hint = (f"the most recent executions: {', '.join(recent)}" if recent else
                    "check the id; the tracker names no recent execution of this workflow to choose from")
            tracker = self._plugins.names()["tracker"]
            raise UnknownExecutionError(f"execution {execution_id!r} is unknown to the {tracker} tracker of workflow "
                                        f"{self.workflow.id!r}: nothing was published or recorded with that id",
                                        hint, summary)
        return summary

    def _collect_failures(self) -> None:
        """Let the provider record the failures its platform kept outside the tracker (never fails ``track``)."""
        provider = self.provider
        if type(provider).collect_failures is FunctionProvider.collect_failures:
            return  # the default records nothing: no transport is opened for it
        try:
            provider.collect_failures(self.workflow, self.transport, self.tracker)
        except Exception as exc:  # noqa: BLE001 - track reads what is recorded all the same
            log.warning("reading the %s provider's failure records: %s", provider.name, exc)

    def recent_executions(self, limit: int = 5) -> list[str]:
        """Up to ``limit`` execution ids the tracker knows, most recent first ([] if it cannot list them)."""
        with self._state_files():
            return list(self.tracker.recent_executions(limit))[:limit]

    def result(self, execution_id: str) -> dict[str, Any] | None:
        """The data of the last event, in flow order, that the execution published."""
        with self._state_files():
            return final_result(self.workflow, self.tracker.history(execution_id))

    def redrive(self, execution_id: str, functions: Sequence[str] | None = None) -> list[dict[str, str]]:
        """Publish again, with their original ids, the events a function failed on for good.

        Subscribers that already handled such an event skip it (its id is known), so only the
        failed functions run it again. Returns what was re-driven: event, event id, function.
        """
        with self._state_files():
            history = self.tracker.history(execution_id)
        succeeded = {(d.function, d.event_id) for d in history.deliveries if d.status == "succeeded"}
        failed = [d for d in history.deliveries if d.status == "failed" and (d.function, d.event_id) not in succeeded
                  and (not functions or d.function in functions)]
        events = {record.event_id: record for record in history.events}
        outgoing: dict[str, OutgoingEvent] = {}
        for delivery in failed:
            record = events.get(delivery.event_id)
            if record is None or record.data is None:
                raise XflowError(f"cannot re-drive {delivery.event!r} ({delivery.event_id}) of execution {execution_id}: "
                                 f"the {self._plugins.names()['tracker']!r} tracker did not keep its data")
            outgoing.setdefault(delivery.event_id, OutgoingEvent(
                delivery.event, dict(record.data), execution_id, delivery.event_id,
                record.producer or f"xflow/{self.workflow.id}"))
        with self._state_files():
            publish_events(self.workflow, self.transport, self.tracker, list(outgoing.values()))
            now = time.time()
            for delivery in failed:  # attempt 0: a marker that makes the subscriber pending again, not an attempt
                self.tracker.record_delivery(DeliveryRecord(execution_id, delivery.event_id, delivery.event,
                                                            delivery.function, 0, "retrying", now, 0.0, "re-driven"))
        return [{"event": d.event, "event_id": d.event_id, "function": d.function} for d in failed]

    # -- run ----------------------------------------------------------------------------------
    def run(self, event: str | None = None, data: Mapping[str, Any] | None = None,
            execution_id: str | None = None, timeout: float = 300.0, setup: bool = True,
            stop: threading.Event | None = None) -> dict[str, Any]:
        """Set up, publish one event, process until the execution settles (or ``stop`` is set); the track object plus
        ``result``. Installs no signal handler (``xflow run`` sets ``stop`` on SIGTERM/SIGINT)."""
        event = event or self.workflow.first_event
        if event not in self.workflow.flow:
            raise XflowError(f"workflow {self.workflow.id!r} has no event {event!r}",
                             f"its events are: {', '.join(self.workflow.flow)}")
        check_event_data(data or {}, f"the data of {event!r}")
        if setup:
            self.setup()
        execution_id = self.publish(event, data or {}, execution_id)
        deadline = time.monotonic() + timeout
        last_check = 0.0
        summary: dict[str, Any] = {}

        def settled() -> bool:
            nonlocal last_check, summary
            now = time.monotonic()
            if now - last_check < 0.05:
                return False
            last_check = now
            summary = self.track(execution_id)
            return summary["status"] != "running" or now > deadline

        self.work(until=settled, stop=stop)
        summary = self.track(execution_id)
        summary["result"] = self.result(execution_id)
        if summary["status"] == "running":
            summary["timed_out_after_seconds"] = timeout
        return summary


def _as_workflow(workflow: Any, base_dir: str | os.PathLike[str] | None, workflow_id: str | None) -> Workflow:
    """The Engine's workflow from a file's path, a mapping (read from ``base_dir``) or a Workflow."""
    if isinstance(workflow, Mapping):
        if base_dir is None:
            raise XflowError("a workflow given as a mapping needs base_dir=, the folder its relative source: paths are "
                             "read from", "e.g. Engine.from_mapping(data, base_dir=Path(__file__).parent)")
        return load_workflow_mapping(workflow, base_dir, workflow_id=workflow_id)
    if not isinstance(workflow, Workflow | str | os.PathLike):
        raise XflowError(f"the workflow must be a workflow file's path, a mapping or a Workflow, not "
                         f"{type(workflow).__name__}")
    if base_dir is not None or workflow_id is not None:
        given = " and ".join(k for k, v in (("base_dir", base_dir), ("workflow_id", workflow_id)) if v is not None)
        raise XflowError(f"{given}= apply to a workflow given as a mapping only",
                         "a file's sources are read from its folder, and its id is its workflow_id: (or its name)")
    return workflow if isinstance(workflow, Workflow) else load_workflow(workflow)
