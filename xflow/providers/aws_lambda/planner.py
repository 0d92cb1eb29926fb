"""The lambda provider's planner: compares the workflow's functions, log groups, role and mappings with what exists
on AWS and returns data-only steps (the AWS call, its request, what it depends on). It reads and never writes.

The desired state comes from the file: one zip per function (built in memory, see
:mod:`xflow.providers.aws_lambda.packaging`) plus ``tracker_<workflow_id>``, which writes every event to the tracker.
Code is compared by SHA-256 with ``CodeSha256``, configuration field by field; a second setup of an unchanged file
plans nothing. Order: the on-failure queue, the role, the functions' log groups, the shared layers
(:mod:`xflow.providers.aws_lambda.layers`), the functions, their mappings, then what the file no longer names.
Teardown plans the reverse, and the files setup and ``xflow emulate`` keep for the workflow in the state folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xflow.aws import TAG_KEY, AwsSession, ignoring, translate_errors
from xflow.core.errors import XflowError
from xflow.core.interfaces import Step, TrackerStore, Transport
from xflow.core.setup_record import other_deployments
from xflow.providers.aws_lambda.iam import ExecutionRole
from xflow.providers.aws_lambda.layers import PLACEHOLDER, Layers, LayerSpec
from xflow.providers.aws_lambda.mappings import (
    EventSource,
    FailureQueue,
    Mappings,
    delete_mapping_step,
    desired_mappings,
    plan_mappings,
)
from xflow.providers.aws_lambda.monitoring import AwsMonitoring, tracing_statements
from xflow.providers.aws_lambda.packaging import (
    ARTIFACTS,
    ENV_WORKFLOW,
    FunctionSpec,
    Packager,
    artifact_path,
    artifacts_of,
    tracker_function_name,
)
from xflow.providers.aws_lambda.subscriptions import LogSubscriptions
from xflow.providers.aws_lambda.versions import Releases, alias_arn

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from xflow.core.model import Workflow

log = logging.getLogger("xflow.lambda")

#: the Python runtimes AWS Lambda accepts for new functions
SUPPORTED_RUNTIMES = ("python3.11", "python3.12", "python3.13", "python3.14")
#: the kinds of event source whose records the shim decodes (and ``xflow emulate`` polls)
SHIM_SOURCES = ("kinesis",)


def function_log_group(name: str) -> str:
    return f"/aws/lambda/{name}"


@dataclass(frozen=True)
class Target:
    """What the functions need of the transport and the tracker: each event's source, the tracker's log group."""

    sources: dict[str, EventSource]
    log_group: str
    retention_days: int


class Planner:
    """Plans setup and teardown of one workflow's Lambda deployment; reads AWS and the state folder only."""

    def __init__(self, aws: AwsSession, workflow_id: str, state_dir: Path, role: ExecutionRole, queue: FailureQueue,
                 packager: Packager, *, tracing: bool = False) -> None:
        self.aws = aws
        self.workflow_id = workflow_id
        self.state_dir = Path(state_dir)
        self.role = role
        self.queue = queue
        self.packager = packager
        self.mappings = Mappings(aws)
        self.subscriptions = LogSubscriptions(aws, workflow_id)  # the logging.aws block's subscription filters
        self.releases = Releases(aws, workflow_id)  # versions, the live alias, canary and linear rollouts
        self.monitoring = AwsMonitoring(aws, workflow_id, queue, tracing)  # the monitoring block; active tracing
        self.layers = Layers(aws, workflow_id)  # shared layers (the provider gives it the zips to publish)

    @property
    def lam(self) -> Any:
        return self.aws.client("lambda")

    @property
    def logs(self) -> Any:
        return self.aws.client("logs")

    # ------------------------------------------------------------------ what the file wants

    def target(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> Target:
        """What the functions read and write, as the transport and the tracker declare it (their Lambda
        capabilities), or an XflowError when either cannot serve Lambda functions."""
        sources: dict[str, EventSource] = {}
        for event in workflow.events:
            declared = transport.lambda_event_source(event)
            if not declared or declared.get("kind") not in SHIM_SOURCES:
                raise XflowError(f"the lambda provider needs a transport whose streams Lambda reads "
                                 f"({', '.join(SHIM_SOURCES)}), and {transport.name!r} does not declare one",
                                 "use --transport kinesis, or --provider local with this transport")
            sources[event] = EventSource(event, str(declared["arn"]), str(declared.get("resource") or ""),
                                         tuple(declared.get("actions") or ()))
        tracking = self.tracking(tracker)
        for function in workflow.functions.values():
            if function.runtime not in SUPPORTED_RUNTIMES:
                raise XflowError(f"function {function.name}: runtime {function.runtime!r} is not accepted by "
                                 f"AWS Lambda; supported: {', '.join(SUPPORTED_RUNTIMES)}",
                                 "set runtime: python3.12 (or remove it: that is the default)")
        return Target(sources, str(tracking["log_group"]), int(tracking.get("retention_days") or 7))

    @staticmethod
    def tracking(tracker: TrackerStore) -> dict[str, Any]:
        """Where the tracker function writes (the tracker's ``lambda_tracking_target``), or an XflowError."""
        tracking = tracker.lambda_tracking_target()
        if not tracking or not tracking.get("log_group"):
            raise XflowError(f"the lambda provider needs a tracker that Lambda functions can write to (cloudwatch), "
                             f"and {tracker.name!r} does not declare one", "use --tracker cloudwatch")
        return tracking

    def desired_functions(self, workflow: Workflow, transport: Transport, log_group: str) -> list[FunctionSpec]:
        """Every function with its zip (built in memory); ``log_group`` is where the tracker function writes."""
        streams = {event: transport.stream_name(event) for event in workflow.events}
        return self.packager.desired_functions(workflow, streams, log_group)

    # ------------------------------------------------------------------ what exists

    def get_function(self, name: str) -> dict[str, Any] | None:
        with translate_errors(f"reading Lambda function {name}"), ignoring("ResourceNotFoundException"):
            return dict(self.lam.get_function(FunctionName=name)["Configuration"])
        return None

    def workflow_functions(self, workflow_id: str) -> dict[str, dict[str, Any]]:
        """Functions deployed for this workflow (marked by their XFLOW_WORKFLOW_ID variable)."""
        found = {}
        with translate_errors("listing Lambda functions"):
            for page in self.lam.get_paginator("list_functions").paginate():
                for config in page.get("Functions", []):
                    variables = (config.get("Environment") or {}).get("Variables") or {}
                    if variables.get(ENV_WORKFLOW) == workflow_id:
                        found[config["FunctionName"]] = dict(config)
        return found

    def log_group_retention(self, name: str) -> int | None | bool:
        """False when the group does not exist, else its retention (None: forever)."""
        with translate_errors(f"describing log group {name}"):
            for page in self.logs.get_paginator("describe_log_groups").paginate(logGroupNamePrefix=name):
                for group in page.get("logGroups", []):
                    if group["logGroupName"] == name:
                        return group.get("retentionInDays")
        return False

    def group_is_ours(self, group: str) -> bool:
        with translate_errors(f"reading the tags of log group {group}"), ignoring("ResourceNotFoundException"):
            return bool(self.logs.list_tags_log_group(logGroupName=group).get("tags", {}).get(TAG_KEY) == self.workflow_id)
        return False

    # ------------------------------------------------------------------ plans

    def plan_setup(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        target = self.target(workflow, transport, tracker)
        if workflow.aws.get("vpc_id"):
            log.warning("aws.vpc_id is not applied: the functions run outside a VPC (Kinesis and CloudWatch "
                        "Logs need no VPC access)")
        specs = self.desired_functions(workflow, transport, target.log_group)
        names = [s.name for s in specs]
        layers = self.layers.desired(workflow, self.packager.layers)
        layer_arns, layer_steps = self.layers.plan_setup(layers)
        for spec in specs:
            spec.layer_arns = tuple(layer_arns[key] for key in spec.layers)
        steps: list[Step] = self.queue.plan_setup()  # before the mappings that name it
        document = self.role.policy_document(
            workflow, [(s.arn, s.actions) for s in target.sources.values()],
            [target.log_group, *(function_log_group(n) for n in names)], self.queue.arn)
        document["Statement"] += tracing_statements(self.monitoring.tracing)
        role_arn, role_steps = self.role.plan_setup(
            document, f"policy {self.role.policy_name} on {len(workflow.events)} stream(s)")
        steps += role_steps
        for name in names:
            steps += self._plan_log_group(function_log_group(name), target.retention_days)
        steps += self.subscriptions.plan_setup(workflow, [target.log_group, *(function_log_group(n) for n in names)])
        steps += layer_steps + self._plan_layer_copies(layers.values(), layer_arns)
        for spec in specs:
            steps += self._plan_function(spec, role_arn)
        steps += self.releases.plan_setup(workflow, [(s, s.configuration(role_arn)) for s in specs], steps,
                                          _config_value, tracker_function_name(workflow.id))
        deployed = self.workflow_functions(workflow.id)
        wanted = desired_mappings(workflow, target.sources, tracker_function_name(workflow.id), self.queue.arn,
                                  target=lambda name: alias_arn(self.aws, name))
        existing: list[dict[str, Any]] = []
        for name in sorted(set(names) | set(deployed)):
            if name in deployed or self.get_function(name) is not None:
                existing.extend(self.mappings.of(name))
        steps += plan_mappings(wanted, existing, self.queue.resource)
        steps += self.monitoring.plan_setup(workflow, names, [s.arn for s in target.sources.values()])
        for name in sorted(set(deployed) - set(names)):
            steps.append(Step("delete", f"function:{name}", call="lambda:DeleteFunction",
                              params={"FunctionName": name}))
            steps.append(Step("delete", f"log-group:{function_log_group(name)}", call="logs:DeleteLogGroup",
                              params={"logGroupName": function_log_group(name)}))
        return steps + self.layers.plan_removal(keep=[layer.name for layer in layers.values()])

    def _plan_layer_copies(self, layers: Iterable[LayerSpec], arns: Mapping[str, str]) -> list[Step]:
        """Keep in the state folder the zips of layers published from another one (``xflow emulate`` reads them)."""
        return [Step("create", f"artifact:{layer.name}", detail=f"the published layer's zip, kept in {self.state_dir} "
                     "for xflow emulate", call="xflow:KeepArtifact",
                     params={"LayerName": layer.name, "ZipFile": layer.reference()}, depends_on=(f"layer:{layer.name}",))
                for layer in layers if not arns[layer.key].startswith(PLACEHOLDER)
                and not artifact_path(self.state_dir, layer.code_sha256).exists()]

    def _plan_log_group(self, group: str, retention: int) -> list[Step]:
        current = self.log_group_retention(group)
        if current is False:
            return [Step("create", f"log-group:{group}", call="logs:CreateLogGroup",
                         params={"logGroupName": group, "tags": {TAG_KEY: self.workflow_id},
                                 "retentionInDays": retention})]
        if current != retention:
            return [Step("update", f"log-group:{group}", call="logs:PutRetentionPolicy",
                         params={"logGroupName": group, "retentionInDays": retention})]
        return []

    def _plan_function(self, spec: FunctionSpec, role_arn: str) -> list[Step]:
        current = self.get_function(spec.name)
        wanted = {**spec.configuration(role_arn), **self.monitoring.function_configuration(current)}
        resource = f"function:{spec.name}"
        layers = tuple(f"layer:{arn.split(':')[1]}" for arn in spec.layer_arns if arn.startswith(PLACEHOLDER))
        if current is None:
            return [Step("create", resource, detail=f"{len(spec.zip_bytes)} bytes, {spec.runtime}",
                         call="lambda:CreateFunction",
                         params={"FunctionName": spec.name, **wanted, "Code": {"ZipFile": spec.artifact()},
                                 "Publish": False, "Tags": {TAG_KEY: self.workflow_id}, "PackageType": "Zip",
                                 **_architectures(spec)},
                         depends_on=(self.role.resource, *layers))]
        owner = ((current.get("Environment") or {}).get("Variables") or {}).get(ENV_WORKFLOW)
        if owner != self.workflow_id:
            raise XflowError(f"a Lambda function named {spec.name} already exists and does not belong to workflow "
                             f"{self.workflow_id} (it belongs to {owner or 'no xflow workflow'})",
                             "rename the function in the file, or remove the existing one")
        steps = []
        if current.get("CodeSha256") != spec.sha:
            steps.append(Step("update", f"function-code:{spec.name}", call="lambda:UpdateFunctionCode",
                              params={"FunctionName": spec.name, "ZipFile": spec.artifact(), "Publish": False,
                                      **_architectures(spec, current)},
                              depends_on=(resource,)))
        elif not artifact_path(self.state_dir, spec.sha).exists():  # deployed from another state folder
            steps.append(Step("create", f"artifact:{spec.name}",
                              detail=f"the deployed zip, kept in {self.state_dir} for xflow emulate",
                              call="xflow:KeepArtifact", params={"FunctionName": spec.name, "ZipFile": spec.artifact()},
                              depends_on=(resource,)))
        differs = {key: value for key, value in wanted.items() if _config_value(current, key) != value}
        if differs:
            steps.append(Step("update", f"function-config:{spec.name}", detail=", ".join(sorted(differs)),
                              call="lambda:UpdateFunctionConfiguration", params={"FunctionName": spec.name, **wanted},
                              depends_on=(resource, self.role.resource, *layers)))
        return steps

    def plan_teardown(self, workflow: Workflow, tracker: TrackerStore | None = None) -> list[Step]:
        deployed = self.workflow_functions(workflow.id)
        names = sorted(deployed)
        tracking = tracker.lambda_tracking_target() if tracker is not None else None
        groups = [str(tracking["log_group"])] if tracking and tracking.get("log_group") else []
        groups += [function_log_group(n) for n in sorted(set(names) | set(map(workflow.resource_name, workflow.functions))
                                                           | {tracker_function_name(workflow.id)})]
        steps: list[Step] = self.monitoring.plan_teardown() + self.subscriptions.plan_teardown(groups, workflow)
        for name in names:
            steps += [delete_mapping_step(mapping) for mapping in self.mappings.of(name)]
        steps += [Step("delete", f"function:{name}", call="lambda:DeleteFunction", params={"FunctionName": name})
                  for name in names]
        candidates = set(names) | set(map(workflow.resource_name, workflow.functions)) | {tracker_function_name(workflow.id)}
        for group in (function_log_group(name) for name in sorted(candidates)):
            if self.log_group_retention(group) is not False and self.group_is_ours(group):
                steps.append(Step("delete", f"log-group:{group}", call="logs:DeleteLogGroup",
                                  params={"logGroupName": group}))
        steps += self.layers.plan_removal()
        steps += self.queue.plan_teardown()
        steps += self.role.plan_teardown()
        return steps + self._plan_state_teardown(workflow)

    def _plan_state_teardown(self, workflow: Workflow) -> list[Step]:
        """What setup and ``xflow emulate`` keep in the state folder for this workflow: its zips, emulate's positions."""
        steps = []
        # zips are kept by content and named by the unstaged workflow: the last of its stages here removes them
        shared = other_deployments(self.state_dir, workflow)
        zips = [] if shared else artifacts_of(self.state_dir, workflow.unstaged_id)
        if zips:
            steps.append(Step("delete", f"artifacts:{self.state_dir / ARTIFACTS}",
                              detail=f"{len(zips)} zip(s) of workflow {workflow.id}",
                              call="xflow:DeleteFiles", params={"Paths": [str(p) for p in zips]}))
        positions = self.state_dir / workflow.id / "emulate.json"
        if positions.exists():
            steps.append(Step("delete", f"file:{positions}", detail="xflow emulate's stream positions",
                              call="xflow:DeleteFiles", params={"Paths": [str(positions)]}))
        return steps


def _architectures(spec: FunctionSpec, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``Architectures`` for CreateFunction and UpdateFunctionCode (the only calls that set it): given when the function
    is not to run on x86_64 (the default), or when it runs on another architecture now."""
    if spec.architecture == "x86_64" and (current is None or (current.get("Architectures") or ["x86_64"]) == ["x86_64"]):
        return {}
    return {"Architectures": [spec.architecture]}


def _config_value(current: Mapping[str, Any], key: str) -> Any:
    if key == "Environment":
        return {"Variables": dict((current.get("Environment") or {}).get("Variables") or {})}
    if key == "Description":
        return current.get("Description") or ""
    if key == "Layers":
        return [str(layer.get("Arn")) for layer in current.get("Layers") or ()]
    return current.get(key)
