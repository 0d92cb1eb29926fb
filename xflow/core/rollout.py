"""Deployment strategies: how setup moves a function's traffic to its new version (the ``deploy:`` block of the
workflow file, or ``xflow setup --strategy``).

- ``all-at-once`` (the default): the new version takes every invocation at once.
- ``canary PERCENT MINUTES``: the new version takes PERCENT of the invocations for MINUTES while its errors are
  watched, then all of them; errors during the bake roll it back.
- ``linear PERCENT MINUTES``: PERCENT more every MINUTES (10, 20, ... 90, then all), watched the same way.

MINUTES may carry a unit instead (``30s``, ``5m``, ``1h``; a bare number is minutes, fractions allowed), so a test
bakes for seconds. AWS SAM's names are understood too: ``Canary10Percent5Minutes``, ``Linear10PercentEvery1Minute``,
``AllAtOnce``. Which provider honours what: the lambda provider shifts its ``live`` alias's weights; a provider
that cannot split traffic deploys at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from xflow.core.errors import XflowError

ALL_AT_ONCE = "all-at-once"
CANARY = "canary"
LINEAR = "linear"
KINDS = (ALL_AT_ONCE, CANARY, LINEAR)
#: the longest bake of one step
MAX_BAKE_SECONDS = 24 * 3600
USAGE = "all-at-once, canary PERCENT MINUTES or linear PERCENT MINUTES (e.g. canary 10 5)"
_SAM = re.compile(r"(canary|linear)(\d+(?:\.\d+)?)percent(?:every)?(\d+(?:\.\d+)?)minutes?\Z", re.IGNORECASE)
_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)?\Z", re.IGNORECASE)
_UNIT = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Strategy:
    """How traffic moves to a new version: ``kind`` (one of :data:`KINDS`), the share of the first step (canary) or
    of each step (linear) in percent, and the seconds each step bakes before the next."""

    kind: str = ALL_AT_ONCE
    percent: float = 0.0
    interval: float = 0.0

    @property
    def gradual(self) -> bool:
        return self.kind != ALL_AT_ONCE

    def weights(self) -> list[float]:
        """The new version's share (0 to 1) at each step before it takes everything: [] for all-at-once."""
        if self.kind == CANARY:
            return [round(self.percent / 100, 4)]
        if self.kind == LINEAR:
            steps = math.ceil(100 / self.percent) - 1
            return [round(i * self.percent / 100, 4) for i in range(1, steps + 1) if i * self.percent < 100]
        return []

    def __str__(self) -> str:
        if not self.gradual:
            return ALL_AT_ONCE
        return f"{self.kind} {self.percent:g}% every {format_seconds(self.interval)}" if self.kind == LINEAR else \
            f"{self.kind} {self.percent:g}% for {format_seconds(self.interval)}"


@dataclass(frozen=True)
class DeployChoice:
    """The ``deploy:`` block: the strategy, and the CloudWatch alarms watched during a bake besides each function's
    own errors (``xflow/WORKFLOW/FUNCTION/errors`` when ``monitoring:`` made it, else its Errors metric)."""

    strategy: Strategy = Strategy()
    alarms: tuple[str, ...] = ()
    #: errors of the new version during a bake that are still accepted (more roll it back)
    max_errors: int = 0


def format_seconds(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def parse_duration(text: str) -> float:
    """Seconds from ``5`` (minutes), ``0.5``, ``30s``, ``5m``, ``1h``; a ValueError otherwise."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration (minutes, or a number with s, m or h)")
    unit = (match.group(2) or "m")[0].lower()
    seconds = float(match.group(1)) * _UNIT[unit]
    if not 0 < seconds <= MAX_BAKE_SECONDS:
        raise ValueError(f"bake time {text!r} must be more than 0 and at most 24 hours")
    return seconds


def parse_percent(text: str) -> float:
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise ValueError(f"{text!r} is not a percentage") from None
    if not 0 < value < 100:
        raise ValueError(f"percentage {text!r} must be more than 0 and less than 100")
    return value


def parse_strategy(text: str) -> Strategy:
    """A :class:`Strategy` from its text (see the module docstring); a ValueError saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a strategy is {USAGE}")
    words = text.strip().split()
    head = words[0].lower()
    if len(words) == 1 and head.replace("-", "").replace("_", "") == "allatonce":
        return Strategy()
    sam = _SAM.match(text.strip())
    if sam and len(words) == 1:
        words = [sam.group(1), sam.group(2), sam.group(3)]
        head = words[0].lower()
    if head not in (CANARY, LINEAR):
        raise ValueError(f"{text!r} is not a strategy: {USAGE}")
    if len(words) != 3:
        raise ValueError(f"{head} takes a percentage and a bake time: {head} PERCENT MINUTES (e.g. {head} 10 5)")
    return Strategy(head, parse_percent(words[1]), parse_duration(words[2]))


def strategy_from(text: str, source: str) -> Strategy:
    """:func:`parse_strategy`, with a mistake as a one-line XflowError naming ``source`` (``--strategy``, a file)."""
    try:
        return parse_strategy(text)
    except ValueError as exc:
        raise XflowError(f"{source}: {exc}", f"write {USAGE}") from None


def chosen_functions(workflow: Any, deployed: Iterable[str], function: str | None = None) -> list[str]:
    """The deployed names of the functions ``xflow rollback`` moves: ``function`` (the file's name or the deployed
    one), else every function of the file that is deployed; an XflowError when there is none."""
    present = set(deployed)
    resource_name = getattr(workflow, "resource_name", None) or (lambda name: name)
    if function is None:
        names = [resource_name(name) for name in workflow.functions]
        found = [name for name in names if name in present]
        if not found:
            raise XflowError(f"no function of workflow {workflow.id} is deployed", "run 'xflow setup' first")
        return found
    for candidate in (resource_name(function), function):
        if candidate in present:
            return [candidate]
    raise XflowError(f"function {function!r} of workflow {workflow.id} is not deployed",
                     f"deployed: {', '.join(sorted(present)) or 'none'}")


def rollback_target(function: str, current: str | None, history: Sequence[str], versions: Sequence[str],
                    to: str | None = None) -> tuple[str | None, list[str]]:
    """Where ``xflow rollback`` points a function, and the versions live before it afterwards (newest first).

    ``to`` must be one of ``versions`` (the current version joins the history); else the newest version of
    ``history`` that still exists (it and the ones after it leave the history); else the newest version before
    ``current``. ``(None, history)`` when there is none."""
    if to is not None:
        if str(to) not in versions:
            raise XflowError(f"function {function} has no version {to}", f"its versions: {', '.join(versions) or 'none'}")
        return str(to), [v for v in dict.fromkeys([current, *history]) if v and v != str(to)]
    earlier = [v for v in history if v in versions and v != current]
    if earlier:
        return earlier[0], list(history[list(history).index(earlier[0]) + 1:])
    older = [v for v in versions if v.isdigit() and (current is None or not current.isdigit() or int(v) < int(current))]
    if not older:
        return None, list(history)
    return max(older, key=int), list(history)
