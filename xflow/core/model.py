"""The validated workflow: plain dataclasses, no I/O. Built by :mod:`xflow.core.config`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from xflow.core.rollout import DeployChoice

#: ``general.hop_limit`` when the file gives none
DEFAULT_HOP_LIMIT = 1000
#: ``general.event_limit`` when the file gives none (the same as :data:`xflow.core.wire.DEFAULT_EVENT_LIMIT`)
DEFAULT_EVENT_LIMIT = 100_000


@dataclass(frozen=True)
class Function:
    """One step: a handler that subscribes to events and may publish others."""

    name: str
    handler: str
    source: str
    #: ``source`` resolved against the workflow file's folder when it is a local path
    source_path: Path | None
    runtime: str = "python3.12"
    #: the processor it runs on where a provider asks (AWS Lambda): ``x86_64`` or ``arm64``
    architecture: str = "x86_64"
    #: its third-party packages: requirement lines given in the file (``requirements: [...]``), else None
    requirements: tuple[str, ...] | None = None
    #: a requirements file named in the file (``requirements: path``), resolved against the file's folder
    requirements_file: Path | None = None
    description: str = ""
    publishes: tuple[str, ...] = ()
    retries: int = 2
    timeout: float = 30.0
    memory: int = 128
    batch_size: int = 100
    starting_position: str = "TRIM_HORIZON"
    bisect_on_error: bool = True
    environment: Mapping[str, str] = field(default_factory=dict)
    #: handler calls a worker runs at once (None: the provider's ``concurrency`` option, default 1)
    concurrency: int | None = None


@dataclass(frozen=True)
class Subscription:
    """An event and the functions subscribed to it (none for a terminal or externally consumed event)."""

    event: str
    subscribers: tuple[str, ...]


@dataclass(frozen=True)
class PluginChoice:
    """A ``transport:`` / ``provider:`` / ``tracker:`` block: an optional default name and its options."""

    name: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LogRoute:
    """One ``logging.routes`` entry: a log destination's name, its options, the least level it gets (None: the
    block's)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    level: str | None = None


@dataclass(frozen=True)
class LoggingChoice:
    """The ``logging:`` block: where handlers' log records go (:mod:`xflow.logs`), and on AWS what setup subscribes
    the log groups to (``aws``)."""

    routes: tuple[LogRoute, ...] = ()
    #: the least level routed: DEBUG, INFO, WARNING, ERROR or CRITICAL
    level: str = "DEBUG"
    #: records each route holds while its destination is away
    buffer: int = 10_000
    aws: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MonitoringChoice:
    """The ``monitoring:`` block: what setup makes on AWS to watch the functions (the lambda provider): CloudWatch
    alarms that notify an SNS topic, and a dashboard. A threshold of None leaves its alarm out."""

    #: a function's alarm on ``Errors`` (sum per period) at or above this
    errors: int | None = 1
    #: a function's alarm on ``Throttles`` (sum per period) at or above this
    throttles: int | None = 1
    #: a function's alarm on ``IteratorAge`` (its maximum, in seconds) at or above this
    iterator_age: float | None = 60.0
    #: the alarm on the on-failure queue's depth (messages visible) at or above this
    dead_letters: int | None = 1
    #: seconds each alarm's statistic covers, and how many periods in a row must breach
    period: int = 60
    evaluation_periods: int = 1
    #: addresses subscribed to the topic setup makes
    email: tuple[str, ...] = ()
    #: an existing topic to notify instead (setup makes none)
    sns_topic_arn: str | None = None
    #: one CloudWatch dashboard for the workflow
    dashboard: bool = True


@dataclass(frozen=True)
class Workflow:
    id: str
    path: Path
    functions: Mapping[str, Function]
    subscriptions: tuple[Subscription, ...]
    #: every event name, in flow order (the ``flow:`` list if given, else subscriptions' order,
    #: then events that are only published)
    flow: tuple[str, ...]
    general: Mapping[str, Any] = field(default_factory=dict)
    aws: Mapping[str, Any] = field(default_factory=dict)
    plugins: Mapping[str, PluginChoice] = field(default_factory=dict)
    #: ``general.hop_limit``: how many hops (events published one from another) an execution may make
    hop_limit: int = DEFAULT_HOP_LIMIT
    #: ``general.event_limit``: how many deliveries one event published from outside may lead to, however the
    #: events that follow from it fan out (a cycle that fans out ends there)
    event_limit: int = DEFAULT_EVENT_LIMIT
    #: the ``logging:`` block (no routes when absent)
    logging: LoggingChoice = field(default_factory=LoggingChoice)
    #: the ``monitoring:`` block (None when absent: setup makes no alarms, topic or dashboard)
    monitoring: MonitoringChoice | None = None
    #: the stage deployed (``stage:`` in the file, or ``--stage``); ``id`` is then ``<workflow_id>-<stage>``, the id
    #: every name the deployment owns derives from (:mod:`xflow.core.stages`). None: no stage, the plain names
    stage: str | None = None
    #: the ``deploy:`` block: how setup moves traffic to new versions (all at once when absent)
    deploy: DeployChoice = field(default_factory=DeployChoice)

    @property
    def events(self) -> tuple[str, ...]:
        return self.flow

    @property
    def unstaged_id(self) -> str:
        """The workflow's own id (``workflow_id:`` or the file's name), without its stage."""
        return self.id[: len(self.id) - len(self.stage) - 1] if self.stage else self.id

    def resource_name(self, name: str) -> str:
        """The name of what a backend deploys for function ``name`` where such names are not per workflow (an AWS
        Lambda function): ``name`` itself, or ``<name>-<stage>`` for a staged deployment."""
        return f"{name}-{self.stage}" if self.stage else name

    def subscribers(self, event: str) -> tuple[str, ...]:
        return self._subscribers_by_event.get(event, ())

    def subscriptions_of(self, function: str) -> tuple[str, ...]:
        """The events ``function`` subscribes to, in flow order."""
        return self._events_by_function.get(function, ())

    @cached_property
    def _subscribers_by_event(self) -> dict[str, tuple[str, ...]]:
        """Each event's subscribers, first mention first (built once: lookups stay linear in the workflow's size)."""
        found: dict[str, dict[str, None]] = {}
        for sub in self.subscriptions:
            found.setdefault(sub.event, {}).update(dict.fromkeys(sub.subscribers))
        return {event: tuple(names) for event, names in found.items()}

    @cached_property
    def _events_by_function(self) -> dict[str, tuple[str, ...]]:
        found: dict[str, list[str]] = {}
        for event in self.flow:
            for name in self.subscribers(event):
                found.setdefault(name, []).append(event)
        return {name: tuple(events) for name, events in found.items()}

    @property
    def first_event(self) -> str:
        return self.flow[0]

    def plugin_choice(self, kind: str) -> PluginChoice:
        return self.plugins.get(kind, PluginChoice())
