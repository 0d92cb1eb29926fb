"""The bake of a canary or linear rollout on Lambda: watching the new versions' errors while their alias sends them a
share of the invocations, and putting every alias back on its stable version when they fail.

What is watched, per function: the CloudWatch alarms the rollout names (the function's own errors alarm
``xflow/WORKFLOW/FUNCTION/errors`` when ``monitoring:`` made it, and those of ``deploy.alarms``): one that goes into
``ALARM`` during the bake fails it. An alarm already in ``ALARM`` when the bake begins says nothing about the new
version and is passed over (until it changes state again). The function's own alarm counts the errors of every version
(its only dimension is ``FunctionName``), most of them the stable version's during a canary, so it fails the bake only
when the new version's own ``Errors`` metric (below) also has more than ``deploy.max_errors``. A function with no alarm
(or whose alarms do not exist yet) is watched through its ``Errors`` metric for the new version (namespace
``AWS/Lambda``, dimensions ``FunctionName``, ``Resource`` = ``FUNCTION:ALIAS``, ``ExecutedVersion``: the metrics Lambda
reports for invocations through an alias): more than ``deploy.max_errors`` (default 0) since the bake began fails it.
The check runs every tenth of the bake (between 1 and 30 s) and once at its end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from xflow.aws import AwsSession, translate_errors
from xflow.core.errors import XflowError


class RolledBack(XflowError):
    """A rollout whose new versions failed their bake, and were rolled back: the work failed (exit status 1)."""

    exit_code = 1


def function_alarm(workflow_id: str, function: str) -> str:
    """The name of the errors alarm that ``monitoring:`` makes for a function."""
    return f"xflow/{workflow_id}/{function}/errors"


def existing_alarms(aws: AwsSession, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Those of the metric alarms ``names`` that exist, by name, with their state."""
    found: dict[str, dict[str, Any]] = {}
    unique = list(dict.fromkeys(names))
    with translate_errors("reading CloudWatch alarms"):
        for start in range(0, len(unique), 100):  # DescribeAlarms takes at most 100 names
            response = aws.client("cloudwatch").describe_alarms(AlarmNames=unique[start:start + 100])
            for alarm in [*response.get("MetricAlarms", []), *response.get("CompositeAlarms", [])]:
                found[str(alarm["AlarmName"])] = dict(alarm)
    return found


def version_errors(aws: AwsSession, function: str, alias: str, version: str, since: datetime) -> float:
    """How many errors the new ``version`` had through ``alias`` since ``since`` (its Errors metric)."""
    now = datetime.now(timezone.utc)
    with translate_errors(f"reading the Errors metric of {function} version {version}"):
        response = aws.client("cloudwatch").get_metric_statistics(
            Namespace="AWS/Lambda", MetricName="Errors", Statistics=["Sum"], Period=60,
            StartTime=since.replace(second=0, microsecond=0), EndTime=now + timedelta(minutes=1),
            Dimensions=[{"Name": "FunctionName", "Value": function}, {"Name": "Resource", "Value": f"{function}:{alias}"},
                        {"Name": "ExecutedVersion", "Value": str(version)}])
    return float(sum(point.get("Sum", 0) for point in response.get("Datapoints", [])))


def watched_alarms(functions: Sequence[Mapping[str, Any]]) -> list[str]:
    return [a for f in functions for a in f.get("Alarms") or ()]


def _transitioned(alarm: Mapping[str, Any]) -> Any:
    """When the alarm last changed state (``StateTransitionedTimestamp`` where CloudWatch gives it)."""
    return alarm.get("StateTransitionedTimestamp") or alarm.get("StateUpdatedTimestamp")


def fired_during_bake(alarm: Mapping[str, Any], at_start: Mapping[str, Any] | None) -> bool:
    """Whether ``alarm`` is in ALARM and went there during the bake: it was not in ALARM when the bake began
    (``at_start``: its state then, None when it did not exist), or it changed state since."""
    if alarm.get("StateValue") != "ALARM":
        return False
    return at_start is None or at_start.get("StateValue") != "ALARM" or _transitioned(alarm) != _transitioned(at_start)


def bake_problem(aws: AwsSession, functions: Sequence[Mapping[str, Any]], max_errors: int, since: datetime,
                 at_start: Mapping[str, Mapping[str, Any]]) -> str | None:
    """What fails the bake now (naming the function and its alarm or metric), or None. ``at_start``: the watched
    alarms as they were when the bake began (:func:`existing_alarms`)."""
    states = existing_alarms(aws, watched_alarms(functions))
    for function in functions:
        name, version = function["FunctionName"], function["Version"]
        alarms = [a for a in function.get("Alarms") or () if a in states]
        shared = set(function.get("SharedAlarms") or ())
        for alarm in alarms:
            if not fired_during_bake(states[alarm], at_start.get(alarm)):
                continue
            reason = str(states[alarm].get("StateReason") or "").strip()
            problem = f"function {name}: alarm {alarm} is in ALARM" + (f" ({reason})" if reason else "")
            if alarm in shared:  # every version's errors: the new version's own say whether they are its
                errors = version_errors(aws, name, str(function["Alias"]), str(version), since)
                if errors <= max_errors:
                    continue
                problem += f" and version {version} had {errors:g} errors"
            return problem
        if not alarms:  # none named, or not made yet (this setup makes it later): the metric itself
            errors = version_errors(aws, name, str(function["Alias"]), str(version), since)
            if errors > max_errors:
                return (f"function {name}: version {version} had {errors:g} errors (metric AWS/Lambda Errors, "
                        f"ExecutedVersion {version}), more than {max_errors}")
    return None


def watch_versions(aws: AwsSession, functions: Sequence[Mapping[str, Any]], seconds: float, max_errors: int,
                   roll_back: Callable[[Sequence[Mapping[str, Any]]], None],
                   sleep: Callable[[float], None] | None = None) -> None:
    """Watch ``functions`` (each: FunctionName, Alias, Stable, Version, Alarms, SharedAlarms) for ``seconds``; when one
    fails, ``roll_back(functions)`` and raise :class:`RolledBack` naming the function and the alarm or metric."""
    sleep = sleep or time.sleep
    since = datetime.now(timezone.utc)
    at_start = existing_alarms(aws, watched_alarms(functions))
    deadline = time.monotonic() + seconds
    poll = min(30.0, max(1.0, seconds / 10))
    while True:
        problem = bake_problem(aws, functions, max_errors, since, at_start)
        if problem is not None:
            roll_back(functions)
            moved = ", ".join(f"{f['FunctionName']} (version {f['Version']} -> {f['Stable']})" for f in functions)
            raise RolledBack(f"{problem}; rolled back: {moved}",
                             "the stable versions take every invocation again; fix the cause and run setup again")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        sleep(min(poll, left))
