"""Versions and the ``live`` alias of the lambda provider: what setup publishes, how traffic moves to it, what
``xflow versions`` lists and what ``xflow rollback`` does.

Every change of a function's code or configuration is followed by ``lambda:PublishVersion`` (with the planned
``CodeSha256``, so code changed since the plan is refused), and the function's alias ``live`` is pointed at the new
version: created (``lambda:CreateAlias``) for a new function, else moved by ``lambda:UpdateAlias``, at once or by
the deployment strategy (:mod:`xflow.core.rollout`): for a canary or linear rollout the alias keeps its version and
sends the new one a share of the invocations (``RoutingConfig.AdditionalVersionWeights``), the ``xflow:WatchVersions``
step watches the new version's errors for the bake time (:mod:`xflow.providers.aws_lambda.rollout`), then the alias
is moved whole. Event source mappings invoke the alias, never ``$LATEST``.

A version's number is only known once it is published, so a planned step names it :data:`PUBLISHED`, with the
``CodeSha256`` it was planned with: the version the same plan's ``lambda:PublishVersion`` step published for that
function (a process that did not publish it takes the newest version with that ``CodeSha256``, never merely the newest
one, which a concurrent setup or a manual publish may have made). A function whose alias already points, with
no split, at a version equal to what the file wants (same ``CodeSha256``, same configuration) plans nothing.

The alias's description keeps the versions that were live before, newest first (``xflow: previously live 4 2 1``):
``xflow rollback`` points the alias at the first of them (or at ``--to VERSION``), ending any split. The next setup
deploys what the file says again: change the file (or its code) to keep a rollback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xflow.aws import AwsSession, ignoring, is_client_error, translate_errors
from xflow.core.errors import XflowError
from xflow.core.interfaces import Step
from xflow.core.rollout import DeployChoice, format_seconds, rollback_target
from xflow.providers.aws_lambda.rollout import existing_alarms, function_alarm, watch_versions

if TYPE_CHECKING:
    from xflow.core.model import Workflow
    from xflow.providers.aws_lambda.packaging import FunctionSpec

#: the alias every function has, which its event source mappings invoke
ALIAS = "live"
#: in a planned step: the version that the plan's ``lambda:PublishVersion`` step published for the function
PUBLISHED = "$PUBLISHED"
#: how many earlier live versions the alias's description keeps (it holds at most 256 characters)
HISTORY_KEPT = 30
_HISTORY = re.compile(r"previously live((?:\s+\d+)*)")


def alias_arn(aws: AwsSession, function: str) -> str:
    """The ARN of ``function``'s ``live`` alias (what its event source mappings name as ``FunctionName``)."""
    return f"arn:aws:lambda:{aws.require_region()}:{aws.account_id()}:function:{function}:{ALIAS}"


def history_of(alias: Mapping[str, Any] | None) -> list[str]:
    """The versions live before the alias's current one, newest first (from its description)."""
    match = _HISTORY.search(str((alias or {}).get("Description") or ""))
    return match.group(1).split() if match else []


def describe_history(history: Iterable[str]) -> str:
    kept = list(dict.fromkeys(history))[:HISTORY_KEPT]
    return f"xflow: previously live {' '.join(kept)}".rstrip() if kept else "xflow"


def weights_of(alias: Mapping[str, Any] | None) -> dict[str, float]:
    """The alias's additional version weights ({} when it sends everything to its version)."""
    routing = (alias or {}).get("RoutingConfig") or {}
    return {str(k): float(v) for k, v in (routing.get("AdditionalVersionWeights") or {}).items()}


@dataclass
class Release:
    """One function whose alias moves to a newly published version in this plan."""

    name: str
    #: the version the alias points at now (None: no alias yet)
    stable: str | None
    history: list[str] = field(default_factory=list)
    #: alarms watched for this function during a bake
    alarms: list[str] = field(default_factory=list)
    #: the ``CodeSha256`` of the version this plan publishes
    sha: str = ""
    #: those of ``alarms`` that count the errors of every version of the function (``monitoring:``'s own)
    shared_alarms: list[str] = field(default_factory=list)


class Releases:
    """Reads versions and aliases, plans the release steps, and performs the calls they name."""

    def __init__(self, aws: AwsSession, workflow_id: str) -> None:
        self.aws = aws
        self.workflow_id = workflow_id
        #: the versions published by this process, per function (what :data:`PUBLISHED` stands for)
        self.published: dict[str, str] = {}
        #: how a bake waits (tests replace it)
        self.sleep: Callable[[float], None] | None = None

    @property
    def lam(self) -> Any:
        return self.aws.client("lambda")

    # ------------------------------------------------------------------ reading

    def alias(self, function: str) -> dict[str, Any] | None:
        with translate_errors(f"reading alias {ALIAS} of Lambda function {function}"), \
                ignoring("ResourceNotFoundException"):
            return dict(self.lam.get_alias(FunctionName=function, Name=ALIAS))
        return None

    def version(self, function: str, version: str) -> dict[str, Any] | None:
        """The configuration of one published version (None when there is no such version)."""
        with translate_errors(f"reading version {version} of Lambda function {function}"), \
                ignoring("ResourceNotFoundException"):
            return dict(self.lam.get_function(FunctionName=function, Qualifier=version)["Configuration"])
        return None

    def versions(self, function: str) -> list[dict[str, Any]]:
        """The function's published versions (not ``$LATEST``), oldest first."""
        found: list[dict[str, Any]] = []
        with translate_errors(f"listing the versions of Lambda function {function}"):
            for page in self.lam.get_paginator("list_versions_by_function").paginate(FunctionName=function):
                found.extend(dict(v) for v in page.get("Versions", []) if str(v.get("Version")).isdigit())
        return sorted(found, key=lambda v: int(v["Version"]))

    # ------------------------------------------------------------------ plans

    def plan_setup(self, workflow: Workflow, functions: Sequence[tuple[FunctionSpec, dict[str, Any]]],
                   planned: Sequence[Step], value_of: Callable[[Mapping[str, Any], str], Any],
                   tracker_function: str) -> list[Step]:
        """The steps that publish each changed function and move its alias (after the function's own steps).

        ``functions``: each function as the file wants it, with its configuration; ``planned``: the steps planned
        so far (those that create or change a function mean a new version); ``value_of(current, key)``: a
        configuration value as it compares with the wanted one."""
        deploy: DeployChoice = getattr(workflow, "deploy", None) or DeployChoice()
        touched = {s.resource for s in planned if s.action in ("create", "update")}
        created = {s.resource.partition(":")[2] for s in planned if s.call == "lambda:CreateFunction"}
        releases: list[Release] = []
        for spec, wanted in functions:
            name = spec.name
            alias = None if name in created else self.alias(name)
            changing = bool(touched & {f"function:{name}", f"function-code:{name}", f"function-config:{name}"})
            if alias is not None and not changing and not weights_of(alias):
                current = self.version(name, str(alias["FunctionVersion"]))
                if current is not None and current.get("CodeSha256") == spec.sha and all(
                        value_of(current, key) == value for key, value in wanted.items()):
                    continue
            stable = str(alias["FunctionVersion"]) if alias is not None else None
            releases.append(Release(name, stable, history_of(alias), sha=spec.sha))
        steps: list[Step] = []
        for release in releases:
            spec = next(s for s, _ in functions if s.name == release.name)
            steps.append(Step("create", f"version:{release.name}", detail=f"CodeSha256 {spec.sha}",
                              call="lambda:PublishVersion",
                              params={"FunctionName": release.name, "CodeSha256": spec.sha},
                              depends_on=(f"function:{release.name}", f"function-code:{release.name}",
                                          f"function-config:{release.name}")))
        gradual = [r for r in releases if deploy.strategy.gradual and r.stable is not None and r.name != tracker_function]
        if gradual:
            steps += self._plan_bakes(workflow, deploy, gradual, planned)
        for release in releases:
            steps.append(self._move_step(release, deploy, release in gradual))
        return steps

    def _plan_bakes(self, workflow: Workflow, deploy: DeployChoice, gradual: list[Release],
                    planned: Sequence[Step]) -> list[Step]:
        own = {r.name: function_alarm(workflow.id, r.name) for r in gradual}
        existing = existing_alarms(self.aws, [*own.values(), *deploy.alarms])
        missing = [a for a in deploy.alarms if a not in existing]
        if missing:
            raise XflowError(f"deploy.alarms: no CloudWatch alarm named {', '.join(map(repr, missing))}",
                             "name alarms that exist in this account and region, or leave them out")
        planned_alarms = {s.resource.partition(":")[2] for s in planned if s.resource.startswith("alarm:")
                          and s.action != "delete"}
        for release in gradual:
            release.alarms = [own[release.name]] if own[release.name] in set(existing) | planned_alarms else []
            release.shared_alarms = list(release.alarms)
            release.alarms += [a for a in deploy.alarms if a not in release.alarms]
        steps: list[Step] = []
        strategy = deploy.strategy
        for weight in strategy.weights():
            for release in gradual:
                steps.append(Step("update", f"alias:{release.name}", detail=f"{weight:.0%} of invocations to the new "
                                  f"version ({strategy.kind})", call="lambda:UpdateAlias",
                                  params={"FunctionName": release.name, "Name": ALIAS, "FunctionVersion": release.stable,
                                          "RoutingConfig": {"AdditionalVersionWeights": {PUBLISHED: weight}},
                                          "CodeSha256": release.sha},
                                  depends_on=(f"version:{release.name}",)))
            watched = ", ".join(f"{r.name}: {', '.join(r.alarms) or 'Errors of the new version'}" for r in gradual)
            steps.append(Step("update", f"rollout:{workflow.id}", detail=f"bake {format_seconds(strategy.interval)} at "
                              f"{weight:.0%}, watching {watched}", call="xflow:WatchVersions",
                              params={"Seconds": strategy.interval, "MaxErrors": deploy.max_errors,
                                      "Functions": [{"FunctionName": r.name, "Alias": ALIAS, "Stable": r.stable,
                                                     "Version": PUBLISHED, "CodeSha256": r.sha, "Alarms": r.alarms,
                                                     "SharedAlarms": r.shared_alarms} for r in gradual]},
                              depends_on=tuple(f"alias:{r.name}" for r in gradual)))
        return steps

    @staticmethod
    def _move_step(release: Release, deploy: DeployChoice, baked: bool) -> Step:
        history = [release.stable, *release.history] if release.stable else release.history
        request = {"FunctionName": release.name, "Name": ALIAS, "FunctionVersion": PUBLISHED,
                   "Description": describe_history(history), "CodeSha256": release.sha}
        if release.stable is None:
            return Step("create", f"alias:{release.name}", detail=f"{ALIAS} -> the new version", call="lambda:CreateAlias",
                        params=request, depends_on=(f"version:{release.name}",))
        how = f"after the {deploy.strategy.kind} bake" if baked else "all at once"
        return Step("update", f"alias:{release.name}", detail=f"{ALIAS} -> the new version, {how}",
                    call="lambda:UpdateAlias", params={**request, "RoutingConfig": {"AdditionalVersionWeights": {}}},
                    depends_on=(f"version:{release.name}",))

    # ------------------------------------------------------------------ the calls

    def operations(self) -> dict[str, Callable[..., None]]:
        return {"lambda:PublishVersion": self.publish, "lambda:CreateAlias": self.create_alias,
                "lambda:UpdateAlias": self.update_alias, "xflow:WatchVersions": self.watch}

    def resolve(self, function: str, version: Any, code_sha256: str | None = None) -> str:
        """A version a step names: itself, or for :data:`PUBLISHED` the one published for ``function`` (by this
        process, else the newest version whose ``CodeSha256`` is the planned ``code_sha256``)."""
        if version != PUBLISHED:
            return str(version)
        if function not in self.published:  # published by another process: the newest with the planned code
            found = [v for v in self.versions(function) if code_sha256 and v.get("CodeSha256") == code_sha256]
            if not found:
                raise XflowError(f"function {function} has no published version with CodeSha256 {code_sha256} "
                                 f"to point alias {ALIAS} at", "run 'xflow setup' again")
            self.published[function] = str(found[-1]["Version"])
        return self.published[function]

    def publish(self, *, FunctionName: str, CodeSha256: str, **request: Any) -> None:
        with translate_errors(f"publishing a version of Lambda function {FunctionName}"):
            self._wait_updated(FunctionName)
            try:
                done = self.lam.publish_version(FunctionName=FunctionName, CodeSha256=CodeSha256, **request)
            except Exception as exc:
                if is_client_error(exc, "InvalidParameterValueException") and "CodeSha256" in str(exc):
                    raise XflowError(f"function {FunctionName}: its code changed since the plan (CodeSha256 is no "
                                     f"longer {CodeSha256})", "run setup again") from None
                raise
        self.published[FunctionName] = str(done["Version"])

    def create_alias(self, *, FunctionName: str, Name: str, FunctionVersion: str, CodeSha256: str | None = None,
                     **request: Any) -> None:
        version = self.resolve(FunctionName, FunctionVersion, CodeSha256)
        with translate_errors(f"creating alias {Name} of Lambda function {FunctionName}"):
            try:
                self.lam.create_alias(FunctionName=FunctionName, Name=Name, FunctionVersion=version, **request)
            except Exception as exc:
                if not is_client_error(exc, "ResourceConflictException"):
                    raise
                self.lam.update_alias(FunctionName=FunctionName, Name=Name, FunctionVersion=version, **request)

    def update_alias(self, *, FunctionName: str, Name: str, FunctionVersion: str,
                     RoutingConfig: Mapping[str, Any] | None = None, CodeSha256: str | None = None,
                     **request: Any) -> None:
        version = self.resolve(FunctionName, FunctionVersion, CodeSha256)
        if RoutingConfig is not None:
            weights = {self.resolve(FunctionName, k, CodeSha256): float(v)
                       for k, v in (RoutingConfig.get("AdditionalVersionWeights") or {}).items()}
            weights.pop(version, None)  # the alias's own version takes the rest already
            request["RoutingConfig"] = {"AdditionalVersionWeights": weights}
        with translate_errors(f"pointing alias {Name} of Lambda function {FunctionName} at version {version}"):
            self.lam.update_alias(FunctionName=FunctionName, Name=Name, FunctionVersion=version, **request)

    def watch(self, *, Seconds: float, MaxErrors: int, Functions: list[Mapping[str, Any]]) -> None:
        """Watch the new versions for ``Seconds``; on errors put every alias back on its stable version and raise
        :class:`~xflow.providers.aws_lambda.rollout.RolledBack` (exit status 1)."""
        watched = [dict(f, Version=self.resolve(str(f["FunctionName"]), f["Version"], f.get("CodeSha256")))
                   for f in Functions]
        watch_versions(self.aws, watched, Seconds, MaxErrors, self.roll_back_to_stable, sleep=self.sleep)

    def roll_back_to_stable(self, functions: Sequence[Mapping[str, Any]]) -> None:
        for function in functions:
            self.update_alias(FunctionName=str(function["FunctionName"]), Name=str(function["Alias"]),
                              FunctionVersion=str(function["Stable"]), RoutingConfig={"AdditionalVersionWeights": {}})

    def _wait_updated(self, function: str) -> None:
        try:
            self.lam.get_waiter("function_updated_v2").wait(FunctionName=function,
                                                            WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        except Exception as exc:
            if "Waiter" in type(exc).__name__:
                raise XflowError(f"Lambda function {function} did not become ready: {exc}") from None
            raise

    # ------------------------------------------------------------------ xflow versions / xflow rollback

    def describe(self, function: str) -> dict[str, Any]:
        """One function's versions for ``xflow versions``: number, sha, time, and which one is live."""
        alias = self.alias(function)
        live = str(alias["FunctionVersion"]) if alias else None
        weights = weights_of(alias)
        rows = []
        for version in self.versions(function):
            number = str(version["Version"])
            share = weights.get(number)
            if number == live:
                share = round(1 - sum(weights.values()), 4)
            rows.append({"version": number, "sha256": version.get("CodeSha256"), "created_at": version.get("LastModified"),
                         "live": number == live, "weight": share, "description": version.get("Description") or ""})
        return {"function": function, "alias": ALIAS, "live": live, "weights": weights,
                "previous": history_of(alias), "versions": rows}

    def rollback(self, function: str, to: str | None = None) -> dict[str, Any]:
        """Point ``function``'s alias at ``to``, else at the version live before (ending a split in progress)."""
        alias = self.alias(function)
        if alias is None:
            raise XflowError(f"function {function} has no alias {ALIAS!r}: nothing was deployed with versions",
                             "run 'xflow setup' first")
        current, weights = str(alias["FunctionVersion"]), weights_of(alias)
        numbers = [str(v["Version"]) for v in self.versions(function)]
        if weights and to is None:  # a canary or linear rollout stopped half-way: all back on its stable version
            target, history = current, history_of(alias)
        else:
            found, history = rollback_target(function, current, history_of(alias), numbers, to)
            if found is None:
                return {"function": function, "from": current, "to": None, "note": f"no version before {current}"}
            target = found
        with translate_errors(f"pointing alias {ALIAS} of Lambda function {function} at version {target}"):
            self.lam.update_alias(FunctionName=function, Name=ALIAS, FunctionVersion=target,
                                  Description=describe_history(history), RoutingConfig={"AdditionalVersionWeights": {}})
        return {"function": function, "from": current, "to": target, "weights_removed": weights}
