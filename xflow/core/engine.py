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

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xflow.core.config import MAPPING_NAME, load_workflow, load_workflow_mapping
from xflow.core.delivery import OutgoingEvent, publish_events
from xflow.core.deploy import DisplayOnlyExecutor, Executor
from xflow.core.errors import XflowError
from xflow.core.interfaces import (
    DeliveryRecord,
    FunctionProvider,
    Plugin,
    PluginContext,
    Runner,
    Step,
    TrackerStore,
    Transport,
)
from xflow.core.model import Workflow
from xflow.core.options import Option, declared_options, env_name, env_values, resolve_options
from xflow.core.plugins import PluginInfo, PluginRegistry
from xflow.core.redact import is_secret_name, redact, url_password, userinfo_is_ambiguous
from xflow.core.runtime import new_event_id
from xflow.core.stages import apply_stage
from xflow.core.tracking import final_result, summarize
from xflow.core.worker import Worker, stop_on_signals

log = logging.getLogger("xflow")

#: defaults of ``xflow run`` / ``worker`` (embedded) and of ``xflow setup`` (AWS)
LOCAL_DEFAULTS = {"transport": "local", "provider": "local", "tracker": "sqlite"}
AWS_DEFAULTS = {"transport": "kinesis", "provider": "lambda", "tracker": "cloudwatch"}
KIND_ORDER = ("transport", "provider", "tracker")
#: the most an event's data may be nested (objects and arrays inside each other)
MAX_DATA_DEPTH = 128
SQLITE_HEADER = b"SQLite format 3\x00"
JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
              type(None): "null"}


class UnknownExecutionError(XflowError):
    """``track`` of an execution id the tracker has no record of (exit status 1: nothing to report on).

    ``summary`` holds the track object all the same (every event ``not_reached``), for ``--output json``.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str, summary: dict[str, Any]) -> None:
        super().__init__(message, hint)
        self.summary = summary


def default_state_dir() -> Path:
    return Path(os.environ.get("XFLOW_STATE_DIR") or ".xflow")


def setup_record_path(state_dir: Path, workflow_id: str) -> Path:
    return Path(state_dir) / workflow_id / "setup.json"


def read_setup_record(state_dir: Path, workflow_id: str) -> dict[str, Any] | None:
    """What ``setup`` recorded for a workflow in this state folder, or None.

    A record that cannot be read, or is not the object setup writes, is a one-line error naming the file.
    """
    path = setup_record_path(state_dir, workflow_id)
    hint = f"move {path} away and run 'xflow setup' again, which writes a new one"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise XflowError(f"the setup record {path} is unreadable ({reason})", hint) from None
    problem = _record_problem(record)
    if problem:
        raise XflowError(f"the setup record {path} is damaged: {problem}", hint)
    return record


def _json_type(value: Any) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def _record_problem(record: Any) -> str | None:
    """What is wrong with a setup record's shape, or None."""
    if not isinstance(record, dict):
        return f"it holds a JSON {_json_type(record)}, not an object"
    if not isinstance(record.get("workflow_file"), str):
        return "'workflow_file' is missing or not a string"
    for kind in KIND_ORDER:
        entry = record.get(kind)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            return f"{kind!r} is a JSON {_json_type(entry)}, not an object"
        if not isinstance(entry.get("name"), str | None):
            return f"{kind}.name is a JSON {_json_type(entry['name'])}, not a string"
        if not isinstance(entry.get("options"), dict | None):
            return f"{kind}.options is a JSON {_json_type(entry['options'])}, not an object"
    return None


def check_event_data(data: Any, what: str = "the event's data") -> None:
    """An XflowError unless ``data`` is a JSON object that can go on the wire as strict JSON.

    Refused: anything ``json`` cannot encode, NaN and Infinity (not JSON), and nesting deeper than
    :data:`MAX_DATA_DEPTH`. ``what`` names the data in the message.
    """
    if not isinstance(data, Mapping):
        raise XflowError(f"{what} must be a JSON object, got {_json_type(data)}")
    depth, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        depth = max(depth, level)
        if depth > MAX_DATA_DEPTH:
            raise XflowError(f"{what} is nested more than {MAX_DATA_DEPTH} levels deep",
                             "flatten it, or publish a reference (a path or URL) to the document")
        stack.extend((child, level + 1) for child in children)
    try:
        json.dumps(dict(data), allow_nan=False)
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise XflowError(f"{what} holds NaN or Infinity, which JSON does not allow",
                             'use null, or a string such as "NaN"') from None
        raise XflowError(f"{what} cannot be sent as JSON: {exc}") from None
    except (TypeError, RecursionError) as exc:
        raise XflowError(f"{what} is not JSON-serialisable: {exc}",
                         "use only objects, arrays, strings, numbers, true, false and null") from None


@dataclass
class SetupReport:
    """What ``setup`` or ``teardown`` changed (or, on a dry run, would change)."""

    workflow_id: str
    plugins: dict[str, str]
    steps: list[Step]
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"workflow_id": self.workflow_id, **self.plugins, "changes": [s.as_change() for s in self.steps]}


@dataclass
class _Choice:
    kind: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    instance: Plugin | None = None
    #: where each of ``options`` came from (the workflow file, the setup record)
    sources: dict[str, str] = field(default_factory=dict)


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
        self._lock = threading.RLock()  # plugins are made once, whichever thread needs them first
        self._setup_lock = threading.Lock()  # one setup or teardown at a time
        self.workflow = _as_workflow(workflow, base_dir, workflow_id)
        if stage is not None:  # the file's stage: is applied by the loader; this one wins over it
            self.workflow = apply_stage(self.workflow, stage)
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self._registry = registry
        self.record = read_setup_record(self.state_dir, self.workflow.id) if use_setup_record else None
        given = {"transport": transport, "provider": provider, "tracker": tracker}
        options = options or {}
        self._choices: dict[str, _Choice] = {}
        for kind in KIND_ORDER:
            value = given[kind]
            if isinstance(value, Plugin):
                self._choices[kind] = _Choice(kind, value.name, dict(value.context.options), value)
                continue
            recorded = (self.record or {}).get(kind) or {}
            block = self.workflow.plugin_choice(kind)
            name = value or recorded.get("name") or block.name or defaults[kind]
            merged: dict[str, Any] = {}
            sources: dict[str, str] = {}
            if block.name in (None, name):
                merged.update(block.options)
                sources.update(dict.fromkeys(block.options, f"the workflow file {self.workflow.path} ({kind}.options)"))
            if recorded.get("name") == name:
                merged.update(recorded.get("options") or {})
                sources.update(dict.fromkeys(recorded.get("options") or {},
                                             f"the setup record {setup_record_path(self.state_dir, self.workflow.id)}"))
            self._choices[kind] = _Choice(kind, name, merged, sources=sources)
        self._explicit_options = {k: dict(v) for k, v in options.items()}
        self._options_source = options_source
        self._step_owner: dict[int, str] = {}
        self._routed: dict[str, dict[str, Any]] | None = None

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
        if self._registry is None:
            self._registry = PluginRegistry()
        return self._registry

    def plugin_names(self) -> dict[str, str]:
        return {kind: choice.name for kind, choice in self._choices.items()}

    def _info(self, kind: str) -> PluginInfo:
        return self.registry.get(kind, self._choices[kind].name)

    def _options(self, kind: str) -> dict[str, Any]:
        """The chosen plugin's options, each converted to its declared type (an XflowError naming where a bad one
        came from)."""
        choice = self._choices[kind]
        info = self._info(kind)
        declared = info.declared()
        given: dict[str, tuple[Any, str]] = {key: (value, choice.sources.get(key, "the workflow file"))
                                             for key, value in choice.options.items()}
        for key, (value, variable) in env_values(choice.name, kind, declared).items():
            given[key] = (value, f"environment variable {variable}")
        for key, value in self._given_options(kind).items():
            given[key] = (value, self._options_source)
        return resolve_options(info.label, declared, given)

    def _declared(self, kind: str) -> Mapping[str, Option]:
        instance = self._choices[kind].instance
        if instance is not None:
            return declared_options(type(instance))
        return self._info(kind).declared()

    def _given_options(self, kind: str) -> dict[str, Any]:
        """Options given in code or by --option: per kind, plus un-prefixed keys routed to the plugin that declares them."""
        if self._routed is None:
            routed: dict[str, dict[str, Any]] = {k: dict(self._explicit_options.get(k, {})) for k in KIND_ORDER}
            for key, value in self._explicit_options.get("any", {}).items():
                takers = [k for k in KIND_ORDER if key in self._declared(k)]
                if not takers:
                    accepted = "; ".join(f"{k} {self._choices[k].name}: {', '.join(sorted(self._declared(k))) or 'none'}"
                                         for k in KIND_ORDER)
                    raise XflowError(f"no chosen plugin accepts option {key!r} ({accepted})")
                if len(takers) > 1:
                    raise XflowError(f"option {key!r} is accepted by the {' and the '.join(takers)}",
                                     f"say which: --option {takers[0]}.{key}=VALUE")
                routed[takers[0]][key] = value
            self._routed = routed
        return self._routed[kind]

    def check_plugins(self) -> None:
        """Resolve every plugin and check its options, creating nothing."""
        for kind in KIND_ORDER:
            if self._choices[kind].instance is None:
                self._options(kind)

    def _plugin(self, kind: str) -> Any:
        choice = self._choices[kind]
        if choice.instance is not None:
            return choice.instance
        with self._lock:
            if choice.instance is None:
                info = self._info(kind)
                options = self._options(kind)
                context = PluginContext(self.workflow.id, options, self.state_dir, self.workflow, info.declared())
                assert info.cls is not None
                choice.instance = _guard(info, "start", lambda: info.cls(context), self._damaged)  # type: ignore[misc]
                choice.options = options
                # a file that is not SQLite at all (its header alone; nothing is opened, nothing written) is refused
                # now, before a publish reaches the other plugins or a worker takes records it could not settle
                damaged = self._damaged_file([kind], thorough=False)
                if damaged is not None:
                    raise damaged
            return choice.instance

    @property
    def transport(self) -> Transport:
        return self._plugin("transport")

    @property
    def provider(self) -> FunctionProvider:
        return self._plugin("provider")

    @property
    def tracker(self) -> TrackerStore:
        return self._plugin("tracker")

    def close(self) -> None:
        for choice in self._choices.values():
            if choice.instance is not None:
                choice.instance.close()

    def __enter__(self) -> Engine:
        return self

    def _damaged(self, exc: BaseException) -> XflowError | None:
        """A user-facing error when ``exc`` says a plugin's SQLite file is damaged (it is the user's file, not a bug)."""
        if type(exc) is not sqlite3.DatabaseError:  # corruption and "not a database" only; not locks or SQL errors
            return None
        return self._damaged_file() or XflowError(
            f"a database file of the state is damaged: {exc}",
            f"look in {self.state_dir / self.workflow.id}; move the damaged file away (what it held is lost) or "
            "restore it from a backup, then run 'xflow setup' again")

    def _damaged_file(self, kinds: Sequence[str] = KIND_ORDER, thorough: bool = True) -> XflowError | None:
        """The error naming the first plugin file (a plugin's ``path``: the embedded log, the sqlite tracker) that is
        not a sound SQLite database, or None."""
        for kind in kinds:
            instance = self._choices[kind].instance
            path = getattr(instance, "path", None)
            if not isinstance(path, str | os.PathLike):
                continue
            reason = _sqlite_damage(Path(path), thorough)
            if reason is not None:
                return XflowError(f"{path} is damaged ({reason}): the {kind} {self._choices[kind].name!r} cannot use it",
                                  "move it away (what it held is lost) or restore it from a backup, then run "
                                  "'xflow setup' again")
        return None

    @contextmanager
    def _state_files(self) -> Iterator[None]:
        """Turn "file is not a database" and the like, raised by any plugin call inside, into a one-line error."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            error = self._damaged(exc)
            if error is None:
                raise
            raise error from None

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- setup / teardown ---------------------------------------------------------------------
    def _planned(self, kind: str, call: Callable[[], list[Step]]) -> list[Step]:
        info = self._info(kind)
        steps = list(_guard(info, "plan", call, self._damaged))
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
                self._write_record()
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
                record = setup_record_path(self.state_dir, self.workflow.id)
                record.unlink(missing_ok=True)
                for folder in (record.parent, self.state_dir):
                    if folder.exists() and not any(folder.iterdir()):
                        folder.rmdir()
        return SetupReport(self.workflow.id, self.plugin_names(), steps, dry_run)

    def _execute(self, steps: Sequence[Step], dry_run: bool, on_step: Callable[[Step, int, int], None] | None) -> None:
        """Apply a plan through each step's own plugin, or on a dry run only walk it."""
        if dry_run:
            DisplayOnlyExecutor().execute(steps)
            return

        def perform(step: Step) -> None:
            kind = self._step_owner.get(id(step), "transport")
            plugin = {"transport": self.transport, "tracker": self.tracker, "provider": self.provider}[kind]
            _guard(self._info(kind), f"{step.action} {step.resource}", lambda: plugin.execute(step), self._damaged)

        Executor(perform, on_step).execute(steps)

    def _write_record(self) -> None:
        path = setup_record_path(self.state_dir, self.workflow.id)
        record = {
            "workflow_id": self.workflow.id,
            "workflow_file": str(self.workflow.path),
            "set_up_at": time.time(),
            "stage": self.workflow.stage,
        }
        for kind, choice in self._choices.items():
            explicit = self._given_options(kind)
            declared = self._declared(kind)
            kept = {k: v for k, v in explicit.items() if not _looks_secret(k, v, declared.get(k))}
            for key in sorted(set(explicit) - set(kept)):
                log.warning("option %s of %s %r holds a secret and is not recorded in %s: give it again to later "
                            "commands, or set %s", key, kind, choice.name, path, env_name(choice.name, key))
            record[kind] = {"name": choice.name, "options": kept}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2, default=str))
        except OSError as exc:
            raise XflowError(f"cannot write {path}: {exc}", "choose a writable state folder with --state-dir") from None

    # -- publish ------------------------------------------------------------------------------
    def publish(self, event: str, data: Mapping[str, Any], execution_id: str | None = None) -> str:
        """Publish one event; returns the execution id (``data['execution_id']``, the argument, or a new one)."""
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
        with self._state_files():
            publish_events(self.workflow, self.transport, self.tracker, [
                OutgoingEvent(event, dict(data, execution_id=execution_id), execution_id, new_event_id(),
                              f"xflow/{self.workflow.id}")])
        return execution_id

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
            tracker = self._choices["tracker"].name
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
                                 f"the {self._choices['tracker'].name!r} tracker did not keep its data")
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


def _looks_secret(key: str, value: Any, option: Option | None = None) -> bool:
    """Options never written to the setup record: those declared secret (those with secret names when the plugin
    declares no type for them), values holding a URL password or a password= pair."""
    if option is not None and option.secret or option is None and is_secret_name(key):
        return True
    text = str(value)
    return url_password(text) is not None or userinfo_is_ambiguous(text) or redact(text) != text


def _sqlite_damage(path: Path, thorough: bool = True) -> str | None:
    """Why the SQLite file at ``path`` is damaged, or None when it is missing, empty or sound.

    Without ``thorough``, only the file's header is read (cheap, and no SQLite connection leaves files behind).
    """
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError:
        return None
    if not header:
        return None
    if header != SQLITE_HEADER:
        return "it is not an SQLite database"
    if not thorough:
        return None
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("PRAGMA quick_check(1)").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc) if type(exc) is sqlite3.DatabaseError else None
    if rows and rows[0][0] != "ok":
        return f"integrity check: {rows[0][0]}"
    return None


def _guard(info: PluginInfo, what: str, call: Callable[[], Any],
           damaged: Callable[[BaseException], XflowError | None] | None = None) -> Any:
    """Run a plugin call; turn its connection errors, damaged files and crashes into one-line errors naming it."""
    try:
        return call()
    except XflowError:
        raise
    except Exception as exc:
        error = damaged(exc) if damaged is not None else None
        if error is not None:
            raise error from None
        cls = info.cls
        expected = cls.connection_errors if cls is not None else ()
        label = f"{info.kind} {info.name!r} ({info.distribution} {info.version})".replace(" )", ")")
        if expected and isinstance(exc, expected):
            raise XflowError(f"{label} cannot reach its backend during {what}: {exc}",
                             "check that the server is running and the connection options") from None
        raise XflowError(f"{label} failed during {what}: {type(exc).__name__}: {exc}",
                         f"this is a problem in {info.distribution}; report it there") from exc
