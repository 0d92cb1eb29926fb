"""The three plugin interfaces (Transport, FunctionProvider, TrackerStore) and the records they exchange.

Every backend, built-in or third-party, implements one of these classes and is registered
through the pluggy hooks in :mod:`xflow.core.hookspecs`. Keep them small: the engine relies
only on what is declared here, and :mod:`xflow.testing` checks exactly this behaviour.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from xflow.core.errors import XflowError
from xflow.core.options import Option, declared_options, env_values, resolve_options

if TYPE_CHECKING:
    from xflow.core.model import Workflow

Action = Literal["create", "update", "delete"]
#: ``PluginContext.option``'s default: the declared one
_DECLARED: Any = object()


@dataclass(frozen=True)
class Step:
    """One change that setup or teardown makes, as data: shown by ``--dry-run``, run by the executor.

    ``resource`` reads ``KIND:NAME`` (``stream:word_count-FileUploaded``). A planner describes the
    change as ``call`` (the backend operation, ``"kinesis:CreateStream"``) with JSON-able ``params``;
    the executor hands the step to the owning plugin's :meth:`Plugin.execute`, which performs it.
    ``depends_on`` names resources that earlier steps of the same plan create or that must exist.
    ``apply`` is the older form (a closure run by the default ``execute``), kept for third-party plugins.
    Nothing runs on a dry run.
    """

    action: Action
    resource: str
    apply: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    detail: str = ""
    call: str = ""
    params: Mapping[str, Any] = field(default_factory=dict, compare=False)
    depends_on: tuple[str, ...] = ()

    def as_change(self) -> dict[str, str]:
        return {"action": self.action, "resource": self.resource}

    def describe(self) -> dict[str, Any]:
        """Everything about the step as data (``as_change`` plus the call, its parameters and dependencies)."""
        return {**self.as_change(), "call": self.call, "params": dict(self.params),
                "depends_on": list(self.depends_on), "detail": self.detail}


@dataclass(frozen=True)
class PluginContext:
    """What every plugin is constructed with.

    ``options`` holds the values given for the plugin (the workflow file's block, ``XFLOW_*`` variables,
    ``--option``), converted to the types the plugin declares (:class:`~xflow.core.options.Option`); ``declared``
    holds those declarations, so :meth:`option` answers the default of an option not given. The engine passes a
    context bound to the plugin's declarations; :class:`Plugin` binds one made by hand (tests, the kit) itself, so
    read options through ``self.context``. ``workflow`` is None when a plugin is used on its own (for example by
    the conformance kit).
    """

    workflow_id: str
    options: Mapping[str, Any]
    state_dir: Path
    workflow: Workflow | None = None
    declared: Mapping[str, Option] = field(default_factory=dict, compare=False, repr=False)

    def option(self, key: str, default: Any = _DECLARED) -> Any:
        """The value of option ``key``, converted to its declared type; when it was not given (or given empty),
        ``default`` if one is passed, else the declared default (None for an undeclared key)."""
        value = self.options.get(key)
        if value is None or value == "":
            if default is not _DECLARED:
                return default
            declared = self.declared.get(key)
            return declared.default if declared is not None else None
        return value

    def number_option(self, key: str, default: float, minimum: float, kind: type = int) -> Any:
        """A numeric option (``kind`` int or float) of at least ``minimum``; anything else is a one-line error.

        For plugins that declare their options in the older form (key -> description); a typed declaration
        (``Option(key, int, default, ..., minimum=1)``) has the engine do this, and :meth:`option` returns the number."""
        value = self.option(key, default)
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = None
        if number is None or number < minimum:
            what = "a whole number" if kind is int else "a number"
            raise XflowError(f"option {key}={value!r} must be {what} of at least {minimum:g}")
        return number

    def bound_to(self, declared: Mapping[str, Option], owner: str, kind: str | None = None,
                 plugin: str | None = None) -> PluginContext:
        """This context with its options converted to ``declared`` (itself when already bound to them).

        Options not given are looked up in ``XFLOW_<PLUGIN>_<KEY>`` variables (when ``plugin`` is given); keys that
        are not declared pass through unchanged. A bad value is an XflowError naming ``owner``.
        """
        if self.declared is declared:
            return self
        given = {key: (value, "the plugin's context") for key, value in self.options.items()}
        if plugin is not None:
            for key, found in env_values(plugin, kind, declared).items():
                given.setdefault(key, (found[0], f"environment variable {found[1]}"))
        options = resolve_options(owner, declared, given, unknown="keep")
        return replace(self, options=options, declared=declared)


@dataclass(frozen=True)
class Record:
    """A message to publish: ``key`` is the partition key (the execution id)."""

    key: str
    value: bytes


@dataclass(frozen=True)
class Delivery:
    """A message read from a stream by a consumer group.

    ``position`` is the transport's own offset/sequence number (as text); ``partition``
    identifies the shard/partition it came from. ``event`` is the workflow event name of
    the stream it was read from. ``timestamp`` is the record's own time on the transport
    (seconds since the epoch: Kafka's record timestamp, Kinesis' approximate arrival time),
    or None when the transport has none; it dates records that other producers wrote.
    """

    event: str
    partition: str
    position: str
    key: str | None
    value: bytes
    timestamp: float | None = None


@dataclass(frozen=True)
class PartitionLag:
    """How far a consumer group is behind on one partition (shard) of an event's stream: what
    :meth:`Transport.lag` reports.

    ``records``: records after the group's committed position (None: the transport cannot count them; with
    ``exact`` False, a lower bound: it counted that many and stopped). ``seconds``: how long the oldest of them has
    waited on the transport (0.0 when there are none; None: unknown). ``committed`` and ``latest``: the transport's
    own positions (as text) of the last committed record and of the last record (None: none yet). ``held``: whether a
    live member of the group holds the partition now (None: unknown).
    """

    event: str
    partition: str
    records: int | None
    seconds: float | None = None
    committed: str | None = None
    latest: str | None = None
    held: bool | None = None
    exact: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.event, "partition": self.partition, "records": self.records, "seconds": self.seconds,
                "committed": self.committed, "latest": self.latest, "held": self.held, "exact": self.exact}


class Consumer(abc.ABC):
    """A consumer group's view of some streams. Not thread-safe; one per worker thread."""

    @abc.abstractmethod
    def poll(self, max_records: int, timeout: float) -> list[Delivery]:
        """Return up to ``max_records`` deliveries, waiting at most ``timeout`` seconds for one.

        Deliveries of one partition come in order. Deliveries returned but not committed are
        delivered again to the group after this consumer closes or dies.
        """

    @abc.abstractmethod
    def commit(self, deliveries: Sequence[Delivery]) -> None:
        """Mark these deliveries (and everything before them in their partitions) as done."""

    def close(self) -> None:
        """Leave the group; uncommitted deliveries go to other members."""

    def keep_alive(self) -> None:  # noqa: B027
        """Tell the group that this member is alive while its handlers run and it does not poll.

        A runner calls it often (every pass of its loop, at least every second) from the thread that polls, so it
        must be cheap: do the work only when it is due (renew leases a third of the way through them, say). The
        default does nothing: for transports whose clients send heartbeats by themselves."""


class Plugin(abc.ABC):
    """What the three kinds share: a name, a description, declared options, the errors they raise."""

    #: the name users type: ``--transport NAME``
    name: ClassVar[str]
    #: one line for ``xflow plugins``
    description: ClassVar[str] = ""
    #: the options it accepts, each declared once: ``(Option("partitions", int, 4, "partitions per stream",
    #: minimum=1), ...)``; any other key is a user error. (The older form, key -> one-line description, still works
    #: with a DeprecationWarning: its values arrive as given.)
    options: ClassVar[Sequence[Option] | Mapping[str, str]] = ()
    #: exceptions that mean "the backend could not be reached"; the engine reports them in one line
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, context: PluginContext) -> None:
        cls = type(self)
        kind = next((k for k, base in KINDS.items() if isinstance(self, base)), "plugin")
        name = getattr(cls, "name", cls.__name__)
        self.context = context.bound_to(declared_options(cls), f"{kind} {name!r}", kind, name)

    @property
    def workflow_id(self) -> str:
        return self.context.workflow_id

    def close(self) -> None:
        """Release connections. Called once by the engine."""

    def execute(self, step: Step) -> None:
        """Perform one step this plugin planned: the executor's only way into the backend.

        The default runs ``step.apply`` (the closure form). Plugins that plan data-only steps override
        it and dispatch on ``step.call`` (see :func:`xflow.core.deploy.dispatch`).
        """
        if step.apply is None:
            raise NotImplementedError(f"{type(self).__name__} planned {step.call or step.resource} "
                                      "but does not implement execute()")
        step.apply()


class Transport(Plugin):
    """Carries events: one stream (topic) per workflow event, consumer groups per function."""

    #: the largest message ``publish`` accepts, in bytes (a class default; an instance may set its own from options)
    max_record_bytes: int = 1_000_000

    def stream_name(self, event: str) -> str:
        """The name of the stream (topic) that carries ``event`` for this workflow."""
        return f"{self.workflow_id}-{event}"

    @abc.abstractmethod
    def plan_setup(self, events: Sequence[str]) -> list[Step]:
        """Steps that make exactly these events' streams exist (and remove this workflow's others)."""

    @abc.abstractmethod
    def plan_teardown(self, events: Sequence[str]) -> list[Step]:
        """Steps that remove every stream this workflow has on the transport."""

    @abc.abstractmethod
    def publish(self, event: str, records: Sequence[Record]) -> None:
        """Append records to the event's stream, each partitioned by its key.

        Raises :class:`xflow.core.errors.XflowError` for a record over ``max_record_bytes`` or a
        missing stream; nothing of the batch may be lost silently.
        """

    @abc.abstractmethod
    def subscribe(self, group: str, events: Sequence[str]) -> Consumer:
        """A consumer in group ``group`` (a function name) reading these events' streams."""

    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:  # noqa: B027
        """Keep a delivery that failed for good, with the reason. Optional."""

    def lag(self, group: str, events: Sequence[str]) -> list[PartitionLag] | None:
        """How far consumer group ``group`` (a function name, as given to :meth:`subscribe`) is behind on these
        events' streams: one :class:`PartitionLag` per partition (shard) of each stream. Optional: the default returns
        None, which means "unknown". It only reads: it joins no group and moves no position (a group that never committed
        has every record of its streams behind it). ``xflow status`` calls it from a process of its own; a worker that
        serves metrics (``xflow_consumer_lag_records``) calls it at scrape time on the transport its consumers use, from
        another thread, so it must be safe to call alongside them."""
        return None

    def lambda_event_source(self, event: str) -> dict[str, Any] | None:
        """A capability for providers that deploy to AWS Lambda: what an event source mapping reads ``event`` from.

        ``None`` (the default) when Lambda cannot read this transport. Otherwise a dict: ``kind``, the kind of
        records Lambda hands the function (``"kinesis"``); ``arn``, the mapping's ``EventSourceArn``; ``resource``,
        the resource of this transport's own setup plan that makes it (``"stream:NAME"``), which a mapping depends
        on; ``actions``, the IAM actions a function needs on it to read it and to publish to it. It may read the
        backend (an account id), never write."""
        return None


class Runner(abc.ABC):
    """What runs a workflow's functions on this machine: ``xflow worker``, ``xflow run`` and :class:`xflow.Worker`
    get it from the provider (:meth:`FunctionProvider.runner`) and call :meth:`run` in a thread of their own.

    Every runner follows the delivery rules of :mod:`xflow.core.delivery`: skip what already succeeded, retry with
    backoff without blocking other executions, dead-letter after ``retries``, commit only what is settled, keep
    order per ``execution_id``.
    """

    #: deliveries whose handler ran (counted once per delivery, whatever its attempts)
    handled: int = 0
    #: how often, at most, the runner's loops look for new records and for ``stop`` when idle, in seconds
    poll_interval: float = 0.05
    #: how long handlers in flight when ``stop`` is set may take to finish (set before ``stop``); the rest are left
    #: uncommitted, and delivered again later
    grace_seconds: float = 30.0

    def prepare(self) -> None:  # noqa: B027
        """Fetch sources and import (or check) every handler now, so that a broken one is an XflowError before
        anything is read. :meth:`run` calls it if it was not called."""

    @abc.abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Process until ``stop`` is set (noticed within ``poll_interval``), then return: handlers in flight are
        given ``grace_seconds`` to finish and are settled, or are left uncommitted; never is a delivery committed
        before it is settled. Errors that stop the runner (a backend's) are raised from here, once it has stopped.

        Installs no signal handler and changes no process-wide state (``sys.path``, streams, logging)."""


class FunctionProvider(Plugin):
    """Deploys functions, and supplies what runs them on this machine (:meth:`runner`), if anything does."""

    #: True when handlers run in xflow's own worker processes. Kept for providers written before :meth:`runner`:
    #: one that sets it and does not override :meth:`runner` has its functions run by the local provider's runner
    runs_locally: ClassVar[bool] = False

    def runner(self, workflow: Workflow, transport: Transport, tracker: TrackerStore,
               functions: Sequence[str] | None = None) -> Runner | None:
        """What runs ``functions`` (all the workflow's when None) for ``xflow worker``/``xflow run``; None when the
        provider's platform runs them (Lambda) and nothing runs here. The default is None."""
        return None

    def collect_failures(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> int:
        """Record in ``tracker`` the failures that the provider's platform kept outside xflow's records (Lambda's
        on-failure destination: invocations that timed out or crashed), each at most once; returns how many delivery
        records it added. ``track`` calls it before reading the tracker. The default records nothing."""
        return 0

    @abc.abstractmethod
    def plan_setup(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        """Steps that deploy and subscribe exactly the workflow's functions."""

    @abc.abstractmethod
    def plan_teardown(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        """Steps that remove everything ``plan_setup`` created."""


DeliveryStatus = Literal["succeeded", "retrying", "failed"]


@dataclass(frozen=True)
class EventRecord:
    """An event seen in an execution. ``event_id`` is unique; recording it twice is a no-op."""

    execution_id: str
    event_id: str
    event: str
    published_at: float
    producer: str = ""
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class DeliveryRecord:
    """One attempt of one function on one event.

    ``status`` is ``succeeded``, ``retrying`` (failed, will be tried again) or ``failed``
    (failed for good: dead-lettered).
    """

    execution_id: str
    event_id: str
    event: str
    function: str
    attempt: int
    status: DeliveryStatus
    started_at: float
    duration: float = 0.0
    error: str | None = None
    logs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExecutionHistory:
    """Everything a tracker knows about one execution, each list ordered by time.

    ``warnings`` says why the records may be incomplete (say, the store's files were damaged while the
    execution ran); ``track`` then reports an execution it would call ``running`` as ``unknown``.
    """

    events: list[EventRecord]
    deliveries: list[DeliveryRecord]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExecutionInfo:
    """One execution as :meth:`TrackerStore.list_executions` lists it: its id and the time of its first record."""

    execution_id: str
    started_at: float


@dataclass(frozen=True)
class ExecutionPage:
    """A page of :meth:`TrackerStore.list_executions`: most recently started first, and the cursor of the next page
    (None when there is no more)."""

    executions: list[ExecutionInfo]
    next_cursor: str | None = None


def encode_cursor(position: Any) -> str:
    """An opaque, URL-safe cursor holding ``position`` (any JSON value), for :class:`ExecutionPage`."""
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    """The position an :func:`encode_cursor` cursor holds; an XflowError for text that is not such a cursor."""
    import base64
    import binascii
    import json

    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, TypeError):
        shown = cursor if len(cursor) <= 40 else cursor[:40] + "..."
        raise XflowError(f"cursor {shown!r} is not one this tracker gave",
                         "pass the next_cursor of the previous page, or no cursor for the newest") from None


class TrackerStore(Plugin):
    """Records published events and delivery outcomes per execution, and reads them back."""

    @abc.abstractmethod
    def plan_setup(self, workflow: Workflow) -> list[Step]:
        """Steps that create the store for this workflow (idempotent: none when it exists)."""

    @abc.abstractmethod
    def plan_teardown(self, workflow: Workflow) -> list[Step]:
        """Steps that remove the store for this workflow."""

    @abc.abstractmethod
    def record_event(self, record: EventRecord) -> None:
        """Store an event; a second record with the same ``event_id`` is ignored."""

    @abc.abstractmethod
    def record_delivery(self, record: DeliveryRecord) -> None:
        """Store one delivery attempt's outcome."""

    @abc.abstractmethod
    def history(self, execution_id: str) -> ExecutionHistory:
        """All records of one execution, oldest first; empty lists when unknown."""

    def stored_events(self, execution_id: str) -> list[EventRecord]:
        """Every event record stored for one execution, as stored: a duplicate shows up twice.

        The conformance kit uses it to check that ``record_event`` stores an event id once. The
        default is ``history().events``; a store whose ``history`` drops duplicates on reading
        overrides it.
        """
        return list(self.history(execution_id).events)

    def recent_executions(self, limit: int) -> list[str]:
        """Up to ``limit`` execution ids this store knows, most recent first (``track`` suggests them for an
        unknown id). Optional: the default lists none."""
        return []

    def list_executions(self, limit: int, cursor: str | None = None, status: str | None = None) -> ExecutionPage:
        """Up to ``limit`` executions this store knows, most recently started first, from ``cursor`` on (the
        ``next_cursor`` of the previous page, made by this store; None: from the newest). ``xflow executions`` and
        ``xflow serve`` list executions with it. A cursor the store did not make is an XflowError.

        ``status`` (``failed``, ``running`` or ``succeeded``, as ``xflow track`` computes it) is a hint: a store may
        leave out executions that cannot have it (a failed execution has a ``failed`` delivery record), or ignore it;
        callers compute each listed execution's status from its history. The default pages through
        :meth:`recent_executions` (its cursor is an offset) and reads each listed execution's history for its start;
        a store overrides it with an indexed query.
        """
        offset = decode_cursor(cursor) if cursor else 0
        if not isinstance(offset, int) or offset < 0:
            raise XflowError(f"cursor {cursor!r} is not one this tracker gave",
                             "pass the next_cursor of the previous page, or no cursor for the newest")
        limit = max(0, int(limit))
        known = list(self.recent_executions(offset + limit + 1))
        listed = []
        for execution_id in known[offset:offset + limit]:
            history = self.history(execution_id)
            times = [e.published_at for e in history.events] + [d.started_at for d in history.deliveries]
            listed.append(ExecutionInfo(execution_id, min(times, default=0.0)))
        more = len(known) > offset + limit
        return ExecutionPage(listed, encode_cursor(offset + limit) if more else None)

    def has_succeeded(self, execution_id: str, event_id: str, function: str) -> bool:
        """Whether ``function`` already handled ``event_id`` of ``execution_id`` successfully (used to drop duplicates).

        Workers ask it before every delivery. The default reads the execution's whole history: a store overrides it
        with a direct, indexed look-up.
        """
        return any(
            d.event_id == event_id and d.function == function and d.status == "succeeded"
            for d in self.history(execution_id).deliveries
        )

    def record_events(self, records: Sequence[EventRecord]) -> None:
        """Store several events, as ``record_event`` would one by one (an ``event_id`` already stored, or met earlier
        in the batch, is ignored). Workers settle a poll's records with it. The default loops over ``record_event``;
        a store overrides it to write the batch at once (one transaction, one call)."""
        for record in records:
            self.record_event(record)

    def record_deliveries(self, records: Sequence[DeliveryRecord]) -> None:
        """Store several delivery attempts, as ``record_delivery`` would one by one (each is appended). The default
        loops over ``record_delivery``; a store overrides it to write the batch at once."""
        for record in records:
            self.record_delivery(record)

    def record_batch(self, events: Sequence[EventRecord], deliveries: Sequence[DeliveryRecord]) -> None:
        """Store a batch's events and delivery attempts together, as ``record_events(events)`` then
        ``record_deliveries(deliveries)`` would. Workers settle the attempts of a poll with it (the events the handlers
        published, then every attempt's outcome). The default makes those two calls; a store overrides it to write
        both at once (one transaction: an attempt is never stored without the events it published)."""
        if events:
            self.record_events(events)
        if deliveries:
            self.record_deliveries(deliveries)

    def succeeded_among(self, keys: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        """The keys ``(execution_id, event_id, function)`` among ``keys`` that have a succeeded delivery: what
        ``has_succeeded`` says of each, asked once for a whole poll. The default asks ``has_succeeded`` per key; a
        store overrides it with one query per batch."""
        unique = dict.fromkeys((str(x), str(e), str(f)) for x, e, f in keys)
        return {key for key in unique if self.has_succeeded(*key)}

    def lambda_tracking_target(self) -> dict[str, Any] | None:
        """A capability for providers that deploy to AWS Lambda: where functions running there record into this store.

        ``None`` (the default) when they cannot. Otherwise a dict: ``log_group``, the CloudWatch Logs group the Lambda
        shim writes every event to (one log stream per execution id, in this store's line format); ``retention_days``,
        how long the store keeps records (the functions' own log groups, which it also reads, are kept as long)."""
        return None


KINDS: dict[str, type[Plugin]] = {
    "transport": Transport,
    "provider": FunctionProvider,
    "tracker": TrackerStore,
}
