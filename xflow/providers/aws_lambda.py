"""Provider ``lambda``: each function an AWS Lambda function, subscribed to its Kinesis streams.

Setup is desired state → plan → execute. The desired state is computed from the file (one
deployment zip per function: the user's code, :mod:`xflow.providers.lambda_shim` and a copy of
:mod:`xflow.core.runtime`), compared with what exists (code by SHA-256 against ``CodeSha256``,
configuration field by field), and the differences become Steps:

- the execution role (``aws.lambda_execution_role_name``, default ``xflow-<workflow_id>-lambda``;
  created if missing) with an inline policy ``xflow-<workflow_id>`` scoped to this workflow's
  stream ARNs and log groups, ``s3:GetObject`` on the objects of its ``s3://`` sources, and the
  ``policy_statements`` option's statements; the ``policy_arns`` option's managed policies are
  attached to it (teardown detaches them; setup never detaches a managed policy);
- a log group ``/aws/lambda/<function>`` per function, kept as long as the tracker's records;
- the functions, and ``tracker_<workflow_id>`` which writes every event to the tracker's group;
- one event source mapping per (event, subscriber), plus the tracker's on every stream, with
  batch size, starting position, retries, bisect-on-error and ReportBatchItemFailures;
- the SQS queue ``xflow-<workflow_id>-failures``, the on-failure destination of every subscriber's
  mapping (``sqs:SendMessage`` on it in the role's policy): a batch whose invocations failed as a
  whole (timeout, out of memory, a crash) is recorded from it as failed by ``track`` and ``xflow
  emulate`` (:mod:`xflow.providers.lambda_failures`);
- deletion of this workflow's functions and mappings the file no longer names.

A second setup of an unchanged file reads only, and plans nothing. Planning builds the zips in
memory and writes nothing (``--dry-run`` leaves the state folder as it was); the steps that deploy
a zip keep it in the state folder by its SHA-256 (``lambda-artifacts/``): ``xflow emulate`` runs
exactly that code. Teardown removes this workflow's zips and emulate's ``emulate.json``.
Needs the ``kinesis`` transport and the ``cloudwatch`` tracker.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xflow.aws import (
    TAG_KEY,
    AwsSession,
    create_log_group,
    delete_log_group,
    is_client_error,
    is_transient,
    set_log_retention,
    translate_errors,
)
from xflow.core.errors import XflowError
from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import FunctionProvider, PluginContext, Step, TrackerStore, Transport
from xflow.core.worker import hop_limit
from xflow.providers.lambda_failures import FailureQueue, collect_failures

if TYPE_CHECKING:
    from xflow.core.model import Function, Workflow

log = logging.getLogger("xflow.lambda")

#: the Python runtimes AWS Lambda accepts for new functions
SUPPORTED_RUNTIMES = ("python3.11", "python3.12", "python3.13", "python3.14")
SHIM_HANDLER = "lambda_shim.handle"
TRACKER_HANDLER = "lambda_shim.track"
ENV_WORKFLOW = "XFLOW_WORKFLOW_ID"
ARTIFACTS = "lambda-artifacts"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
EXCLUDED_PARTS = {"__pycache__", ".git", ".xflow", ".venv", "node_modules"}
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}


def tracker_function_name(workflow_id: str) -> str:
    return f"tracker_{workflow_id}"[:64]


def code_sha256(data: bytes) -> str:
    """What Lambda reports as ``CodeSha256``: base64 of the SHA-256 digest."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def artifact_path(state_dir: Path, sha: str) -> Path:
    """Where setup keeps the zip whose ``CodeSha256`` is ``sha``."""
    return Path(state_dir) / ARTIFACTS / (base64.b64decode(sha).hex() + ".zip")


@dataclass
class FunctionSpec:
    """One Lambda function as the file wants it."""

    name: str
    handler: str
    runtime: str
    timeout: int
    memory: int
    description: str
    environment: dict[str, str]
    zip_bytes: bytes = field(repr=False)
    sha: str = ""

    def configuration(self, role_arn: str) -> dict[str, Any]:
        return {"Runtime": self.runtime, "Handler": self.handler, "Timeout": self.timeout,
                "MemorySize": self.memory, "Description": self.description, "Role": role_arn,
                "Environment": {"Variables": dict(self.environment)}}


@dataclass(frozen=True)
class MappingSpec:
    """One event source mapping as the file wants it."""

    event: str
    stream_arn: str
    function: str
    batch_size: int
    starting_position: str
    retries: int
    bisect: bool
    #: the ARN of the on-failure destination ("" for none: the tracker's mappings)
    on_failure: str = ""

    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {"BatchSize": self.batch_size, "MaximumRetryAttempts": self.retries,
                                  "BisectBatchOnFunctionError": self.bisect,
                                  "FunctionResponseTypes": ["ReportBatchItemFailures"]}
        if self.on_failure:
            params["DestinationConfig"] = {"OnFailure": {"Destination": self.on_failure}}
        return params

    def differs(self, current: Mapping[str, Any]) -> bool:
        """Whether the mapping ``current`` (as Lambda lists it) needs an update to be this one."""
        for key, value in self.parameters().items():
            if key == "DestinationConfig":
                if _on_failure_of(current) != self.on_failure:
                    return True
            elif current.get(key) != value:
                return True
        return False


class _ZipBuilder:
    """A deterministic zip: sorted names, fixed dates and modes, so equal code has an equal hash."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def add(self, name: str, data: bytes) -> None:
        self.files[name] = data

    def add_tree(self, source: Path, prefix: str) -> None:
        if source.is_file():
            self.add(f"{prefix}/{source.name}", source.read_bytes())
            return
        from xflow.sources.resolve import source_files  # refuses links that leave the folder, names them

        for rel, path in source_files(source, f"source {str(source)!r}", skip=EXCLUDED_PARTS):
            if rel.suffix != ".pyc":
                self.add(f"{prefix}/{rel.as_posix()}", path.read_bytes())

    def build(self) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(self.files):
                info = zipfile.ZipInfo(name, ZIP_DATE)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, self.files[name])
        return out.getvalue()


def _shim_files() -> dict[str, bytes]:
    here = Path(__file__).resolve()
    return {
        "lambda_shim.py": (here.parent / "lambda_shim.py").read_bytes(),
        "xflow_runtime.py": (here.parent.parent / "core" / "runtime.py").read_bytes(),
    }


def _normalized(document: Any) -> str:
    if isinstance(document, str):
        import urllib.parse

        document = json.loads(urllib.parse.unquote(document))
    return json.dumps(document, sort_keys=True)


class LambdaProvider(FunctionProvider):
    name = "lambda"
    description = "AWS Lambda functions subscribed to Kinesis streams by event source mappings"
    options = {
        "region": "AWS region (default: aws.region in the file, else AWS_REGION)",
        "role_name": "execution role (default: aws.lambda_execution_role_name, else xflow-<workflow_id>-lambda)",
        "policy_arns": "managed IAM policy ARNs attached to the execution role (comma-separated, or a list)",
        "policy_statements": "IAM policy statements (a JSON list) added to the execution role's inline policy",
    }
    runs_locally = False

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        aws = dict(context.workflow.aws) if context.workflow is not None else {}
        self.aws = AwsSession(aws, region=context.option("region"))
        self.role_name = str(context.option("role_name") or aws.get("lambda_execution_role_name")
                             or f"xflow-{self.workflow_id}-lambda")
        self.policy_name = f"xflow-{self.workflow_id}"
        self.policy_arns = _policy_arns(context.option("policy_arns"))
        self.policy_statements = _policy_statements(context.option("policy_statements"))
        self.failures = FailureQueue(self.aws, self.workflow_id)

    @property
    def lam(self) -> Any:
        return self.aws.client("lambda")

    @property
    def iam(self) -> Any:
        return self.aws.client("iam")

    @property
    def logs(self) -> Any:
        return self.aws.client("logs")

    # ------------------------------------------------------------------ desired state

    def _check(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> None:
        if transport.name != "kinesis" or not hasattr(transport, "stream_arn"):
            raise XflowError(f"the lambda provider runs on the kinesis transport, not {transport.name!r}",
                             "use --transport kinesis, or --provider local with this transport")
        if tracker.name != "cloudwatch" or not hasattr(tracker, "log_group"):
            raise XflowError(f"the lambda provider needs the cloudwatch tracker (Lambda functions write there), "
                             f"not {tracker.name!r}", "use --tracker cloudwatch")
        for function in workflow.functions.values():
            if function.runtime not in SUPPORTED_RUNTIMES:
                raise XflowError(f"function {function.name}: runtime {function.runtime!r} is not accepted by "
                                 f"AWS Lambda; supported: {', '.join(SUPPORTED_RUNTIMES)}",
                                 "set runtime: python3.12 (or remove it: that is the default)")

    def _function_config(self, workflow: Workflow, transport: Transport, tracker: TrackerStore,
                         function: Function | None) -> dict[str, Any]:
        streams = {event: transport.stream_name(event) for event in workflow.events}
        if function is None:
            return {"workflow_id": workflow.id, "function": tracker_function_name(workflow.id), "mode": "tracker",
                    "streams": streams, "log_group": tracker.log_group}  # type: ignore[attr-defined]
        return {"workflow_id": workflow.id, "function": function.name, "mode": "function",
                "handler": function.handler, "source": "", "publishes": list(function.publishes),
                "streams": streams, "retries": function.retries, "hop_limit": hop_limit(workflow)}

    def desired_functions(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[FunctionSpec]:
        from xflow.sources.fetch import fetch_source
        from xflow.sources.resolve import check_handler

        specs: list[FunctionSpec] = []
        shim = _shim_files()
        with tempfile.TemporaryDirectory(prefix="xflow-src-") as tmp:
            for index, function in enumerate(workflow.functions.values()):
                source = fetch_source(function, Path(tmp) / str(index), self.aws)
                check_handler(function, source)
                config = self._function_config(workflow, transport, tracker, function)
                config["source"] = f"function/{source.name}" if source.is_file() else "function"
                builder = _ZipBuilder()
                for name, data in shim.items():
                    builder.add(name, data)
                builder.add_tree(source, "function")
                builder.add("xflow_function.json", json.dumps(config, sort_keys=True, indent=1).encode())
                env = {str(k): str(v) for k, v in function.environment.items()}
                env[ENV_WORKFLOW] = workflow.id
                specs.append(FunctionSpec(function.name, SHIM_HANDLER, function.runtime,
                                          max(1, min(900, math.ceil(function.timeout))), function.memory,
                                          (function.description or "")[:256], env, builder.build()))
        builder = _ZipBuilder()
        for name, data in shim.items():
            builder.add(name, data)
        config = self._function_config(workflow, transport, tracker, None)
        builder.add("xflow_function.json", json.dumps(config, sort_keys=True, indent=1).encode())
        specs.append(FunctionSpec(tracker_function_name(workflow.id), TRACKER_HANDLER, "python3.12", 60, 128,
                                  f"xflow tracker of workflow {workflow.id}", {ENV_WORKFLOW: workflow.id},
                                  builder.build()))
        for spec in specs:
            spec.sha = code_sha256(spec.zip_bytes)
        return specs

    def _keep_artifact(self, spec: FunctionSpec) -> None:
        """Keep the zip in the state folder (a step of setup, never of planning: a dry run writes nothing)."""
        path = artifact_path(self.context.state_dir, spec.sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(spec.zip_bytes)
            tmp.replace(path)

    def desired_mappings(self, workflow: Workflow, transport: Any) -> list[MappingSpec]:
        found = []
        destination = self.failures.arn
        for event in workflow.events:
            arn = transport.stream_arn(event)
            for name in workflow.subscribers(event):
                fn = workflow.functions[name]
                found.append(MappingSpec(event, arn, name, fn.batch_size, fn.starting_position, fn.retries,
                                         fn.bisect_on_error, destination))
            found.append(MappingSpec(event, arn, tracker_function_name(workflow.id), 100, "TRIM_HORIZON", 10, True))
        return found

    def function_log_groups(self, names: list[str]) -> list[str]:
        return [f"/aws/lambda/{name}" for name in names]

    def policy_document(self, workflow: Workflow, transport: Any, tracker: Any, functions: list[str]) -> dict:
        region, account = self.aws.require_region(), self.aws.account_id()
        streams = sorted(transport.stream_arn(event) for event in workflow.events)
        groups = sorted([tracker.log_group, *self.function_log_groups(functions)])
        group_arns = []
        for group in groups:
            group_arns += [f"arn:aws:logs:{region}:{account}:log-group:{group}",
                           f"arn:aws:logs:{region}:{account}:log-group:{group}:*"]
        statements: list[dict[str, Any]] = [
            {"Sid": "WorkflowStreams", "Effect": "Allow",
             "Action": ["kinesis:DescribeStream", "kinesis:DescribeStreamSummary", "kinesis:GetRecords",
                        "kinesis:GetShardIterator", "kinesis:ListShards", "kinesis:PutRecord",
                        "kinesis:PutRecords", "kinesis:SubscribeToShard"],
             "Resource": streams},
            {"Sid": "WorkflowLogs", "Effect": "Allow",
             "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:FilterLogEvents",
                        "logs:GetLogEvents"],
             "Resource": group_arns},
        ]
        statements.append({"Sid": "FailureDestination", "Effect": "Allow", "Action": ["sqs:SendMessage"],
                           "Resource": [self.failures.arn]})
        sources = s3_source_arns(workflow)
        if sources:
            statements.append({"Sid": "FunctionSources", "Effect": "Allow", "Action": ["s3:GetObject"],
                               "Resource": sources})
        statements += self.policy_statements
        return {"Version": "2012-10-17", "Statement": statements}

    # ------------------------------------------------------------------ what exists

    def _get_function(self, name: str) -> dict[str, Any] | None:
        with translate_errors(f"reading Lambda function {name}"):
            try:
                return dict(self.lam.get_function(FunctionName=name)["Configuration"])
            except Exception as exc:
                if is_client_error(exc, "ResourceNotFoundException"):
                    return None
                raise

    def _workflow_functions(self, workflow_id: str) -> dict[str, dict[str, Any]]:
        """Functions deployed for this workflow (marked by their XFLOW_WORKFLOW_ID variable)."""
        found = {}
        with translate_errors("listing Lambda functions"):
            for page in self.lam.get_paginator("list_functions").paginate():
                for config in page.get("Functions", []):
                    variables = (config.get("Environment") or {}).get("Variables") or {}
                    if variables.get(ENV_WORKFLOW) == workflow_id:
                        found[config["FunctionName"]] = dict(config)
        return found

    def _mappings_of(self, function: str) -> list[dict[str, Any]]:
        with translate_errors(f"listing event source mappings of {function}"):
            found = []
            for page in self.lam.get_paginator("list_event_source_mappings").paginate(FunctionName=function):
                found.extend(page.get("EventSourceMappings", []))
            return found

    def _log_group_retention(self, name: str) -> int | None | bool:
        """False when the group does not exist, else its retention (None: forever)."""
        with translate_errors(f"describing log group {name}"):
            for page in self.logs.get_paginator("describe_log_groups").paginate(logGroupNamePrefix=name):
                for group in page.get("logGroups", []):
                    if group["logGroupName"] == name:
                        return group.get("retentionInDays")
        return False

    def _group_is_ours(self, group: str) -> bool:
        with translate_errors(f"reading the tags of log group {group}"):
            try:
                tags = self.logs.list_tags_log_group(logGroupName=group).get("tags", {})
            except Exception as exc:
                if is_client_error(exc, "ResourceNotFoundException"):
                    return False
                raise
        return tags.get(TAG_KEY) == self.workflow_id

    # ------------------------------------------------------------------ plans

    def plan_setup(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        self._check(workflow, transport, tracker)
        if workflow.aws.get("vpc_id"):
            log.warning("aws.vpc_id is not applied: the functions run outside a VPC (Kinesis and CloudWatch "
                        "Logs need no VPC access)")
        specs = self.desired_functions(workflow, transport, tracker)
        names = [s.name for s in specs]
        steps: list[Step] = self.failures.plan_setup()  # before the mappings that name it
        role_arn, role_steps = self._plan_role(workflow, transport, tracker, names)
        steps += role_steps
        retention = int(getattr(tracker, "retention_days", 7))
        for group in self.function_log_groups(names):
            current = self._log_group_retention(group)
            if current is False:
                steps.append(Step("create", f"log-group:{group}",
                                  partial(self._create_log_group, group, retention)))
            elif current != retention:
                steps.append(Step("update", f"log-group:{group}",
                                  partial(self._set_log_retention, group, retention)))
        for spec in specs:
            steps += self._plan_function(spec, role_arn)
        deployed = self._workflow_functions(workflow.id)
        wanted = self.desired_mappings(workflow, transport)
        existing: list[dict[str, Any]] = []
        for name in sorted(set(names) | set(deployed)):
            if name in deployed or self._get_function(name) is not None:
                existing.extend(self._mappings_of(name))
        steps += self._plan_mappings(wanted, existing)
        for name in sorted(set(deployed) - set(names)):
            steps.append(Step("delete", f"function:{name}", partial(self._delete_function, name)))
            steps.append(Step("delete", f"log-group:/aws/lambda/{name}",
                              partial(self._delete_log_group, f"/aws/lambda/{name}")))
        return steps

    def plan_teardown(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        deployed = self._workflow_functions(workflow.id)
        names = sorted(deployed)
        steps: list[Step] = []
        for name in names:
            for mapping in self._mappings_of(name):
                steps.append(Step("delete", f"mapping:{_stream_of(mapping)}->{name}",
                                  partial(self._delete_mapping, mapping["UUID"])))
        for name in names:
            steps.append(Step("delete", f"function:{name}", partial(self._delete_function, name)))
        candidates = set(names) | set(workflow.functions) | {tracker_function_name(workflow.id)}
        for group in self.function_log_groups(sorted(candidates)):
            if self._log_group_retention(group) is not False and self._group_is_ours(group):
                steps.append(Step("delete", f"log-group:{group}", partial(self._delete_log_group, group)))
        steps += self.failures.plan_teardown()
        steps += self._plan_role_teardown()
        return steps + self._plan_state_teardown(workflow)

    # ------------------------------------------------------------------ failures

    def collect_failures(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> int:
        """Record the batches Lambda discarded after whole-invocation failures (the workflow's on-failure queue)
        as failed deliveries, with their reason and attempts; see :mod:`xflow.providers.lambda_failures`."""
        return collect_failures(self.aws, workflow, transport, tracker, self.failures)

    def _plan_state_teardown(self, workflow: Workflow) -> list[Step]:
        """What setup and ``xflow emulate`` keep in the state folder for this workflow: its zips, emulate's positions."""
        steps = []
        zips = self._artifacts_of(workflow.id)
        if zips:
            folder = zips[0].parent
            steps.append(Step("delete", f"artifacts:{folder}", lambda: _remove_files(zips),
                              f"{len(zips)} zip(s) of workflow {workflow.id}"))
        positions = Path(self.context.state_dir) / workflow.id / "emulate.json"
        if positions.exists():
            steps.append(Step("delete", f"file:{positions}", lambda: _remove_files([positions]),
                              "xflow emulate's stream positions"))
        return steps

    def _artifacts_of(self, workflow_id: str) -> list[Path]:
        """The zips in the state folder built for this workflow (each names its workflow in xflow_function.json)."""
        found = []
        for path in sorted((Path(self.context.state_dir) / ARTIFACTS).glob("*.zip")):
            try:
                with zipfile.ZipFile(path) as archive:
                    config = json.loads(archive.read("xflow_function.json"))
            except (OSError, KeyError, ValueError, zipfile.BadZipFile):
                continue  # not one of setup's zips
            if isinstance(config, dict) and config.get("workflow_id") == workflow_id:
                found.append(path)
        return found

    def _plan_role(self, workflow: Workflow, transport: Any, tracker: Any,
                   names: list[str]) -> tuple[str, list[Step]]:
        document = self.policy_document(workflow, transport, tracker, names)
        account = self.aws.account_id()
        with translate_errors(f"reading IAM role {self.role_name}"):
            try:
                role = self.iam.get_role(RoleName=self.role_name)["Role"]
            except Exception as exc:
                if not is_client_error(exc, "NoSuchEntity"):
                    raise
                role = None
        if role is None:
            arn = f"arn:aws:iam::{account}:role/{self.role_name}"
            return arn, [Step("create", f"role:{self.role_name}", lambda: self._create_role(document),
                              f"policy {self.policy_name} on {len(workflow.events)} stream(s)"),
                         *self._plan_attachments([])]
        with translate_errors(f"reading policy {self.policy_name} of role {self.role_name}"):
            try:
                current = self.iam.get_role_policy(RoleName=self.role_name, PolicyName=self.policy_name)
                current_doc = _normalized(current["PolicyDocument"])
            except Exception as exc:
                if not is_client_error(exc, "NoSuchEntity"):
                    raise
                current_doc = None
        steps = []
        if current_doc != _normalized(document):
            steps.append(Step("update", f"role-policy:{self.role_name}/{self.policy_name}",
                              lambda: self._put_policy(document)))
        steps += self._plan_attachments(self._attached_policies())
        return role["Arn"], steps

    def _attached_policies(self) -> list[str]:
        with translate_errors(f"listing the managed policies of IAM role {self.role_name}"):
            found = []
            for page in self.iam.get_paginator("list_attached_role_policies").paginate(RoleName=self.role_name):
                found += [p["PolicyArn"] for p in page.get("AttachedPolicies", [])]
            return found

    def _plan_attachments(self, attached: list[str]) -> list[Step]:
        """Attach the ``policy_arns`` the role lacks. Setup detaches nothing: a policy attached by hand stays."""
        return [Step("create", f"role-policy-attachment:{self.role_name}/{arn.rpartition('/')[2]}",
                     partial(self._attach, arn), arn)
                for arn in self.policy_arns if arn not in attached]

    def _plan_function(self, spec: FunctionSpec, role_arn: str) -> list[Step]:
        current = self._get_function(spec.name)
        wanted = spec.configuration(role_arn)
        if current is None:
            return [Step("create", f"function:{spec.name}", lambda: self._create_function(spec, role_arn),
                         f"{len(spec.zip_bytes)} bytes, {spec.runtime}")]
        owner = ((current.get("Environment") or {}).get("Variables") or {}).get(ENV_WORKFLOW)
        if owner != self.workflow_id:
            raise XflowError(f"a Lambda function named {spec.name} already exists and does not belong to workflow "
                             f"{self.workflow_id} (it belongs to {owner or 'no xflow workflow'})",
                             "rename the function in the file, or remove the existing one")
        steps = []
        if current.get("CodeSha256") != spec.sha:
            steps.append(Step("update", f"function-code:{spec.name}", lambda: self._update_code(spec)))
        elif not artifact_path(self.context.state_dir, spec.sha).exists():  # deployed from another state folder
            steps.append(Step("create", f"artifact:{spec.name}", lambda: self._keep_artifact(spec),
                              f"the deployed zip, kept in {self.context.state_dir} for xflow emulate"))
        differs = {key: value for key, value in wanted.items() if _config_value(current, key) != value}
        if differs:
            steps.append(Step("update", f"function-config:{spec.name}", lambda: self._update_config(spec, wanted),
                              ", ".join(sorted(differs))))
        return steps

    def _plan_mappings(self, wanted: list[MappingSpec], existing: list[dict[str, Any]]) -> list[Step]:
        steps: list[Step] = []
        kept: set[str] = set()
        by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for mapping in existing:
            by_key.setdefault((mapping["EventSourceArn"], _function_of(mapping)), []).append(mapping)
        for spec in wanted:
            resource = f"mapping:{spec.stream_arn.rpartition('/')[2]}->{spec.function}"
            candidates = by_key.get((spec.stream_arn, spec.function), [])
            current = candidates[0] if candidates else None
            if current is not None and current.get("StartingPosition", spec.starting_position) != spec.starting_position:
                current = None  # cannot be changed in place: deleted below, created anew
            if current is None:
                steps.append(Step("create", resource, partial(self._create_mapping, spec)))
                continue
            kept.add(current["UUID"])
            params = spec.parameters()
            if spec.differs(current):
                steps.append(Step("update", resource,
                                  partial(self._update_mapping, current["UUID"], params)))
        deletions = [Step("delete", f"mapping:{_stream_of(m)}->{_function_of(m)}",
                          partial(self._delete_mapping, m["UUID"]))
                     for m in existing if m["UUID"] not in kept]
        return deletions + steps

    def _plan_role_teardown(self) -> list[Step]:
        with translate_errors(f"reading IAM role {self.role_name}"):
            try:
                self.iam.get_role(RoleName=self.role_name)
            except Exception as exc:
                if is_client_error(exc, "NoSuchEntity"):
                    return []
                raise
            policies = self.iam.list_role_policies(RoleName=self.role_name).get("PolicyNames", [])
            tags = self.iam.list_role_tags(RoleName=self.role_name).get("Tags", [])
        steps = []
        if self.policy_name in policies:
            steps.append(Step("delete", f"role-policy:{self.role_name}/{self.policy_name}", self._delete_policy))
        ours = any(t["Key"] == TAG_KEY and t["Value"] == self.workflow_id for t in tags)
        # a role xflow created goes with every managed policy on it; another role only loses the ones xflow attached
        steps += [Step("delete", f"role-policy-attachment:{self.role_name}/{arn.rpartition('/')[2]}",
                       partial(self._detach, arn), arn)
                  for arn in self._attached_policies() if ours or arn in self.policy_arns]
        if ours and set(policies) <= {self.policy_name}:
            steps.append(Step("delete", f"role:{self.role_name}", self._delete_role))
        return steps

    # ------------------------------------------------------------------ apply

    def _create_role(self, document: dict[str, Any]) -> None:
        with translate_errors(f"creating IAM role {self.role_name}"):
            try:
                self.iam.create_role(RoleName=self.role_name, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
                                     Description=f"xflow workflow {self.workflow_id}: Lambda execution role",
                                     Tags=[{"Key": TAG_KEY, "Value": self.workflow_id}])
            except Exception as exc:
                if not is_client_error(exc, "EntityAlreadyExists"):
                    raise
        self._put_policy(document)

    def _put_policy(self, document: dict[str, Any]) -> None:
        with translate_errors(f"writing policy {self.policy_name} of role {self.role_name}"):
            self.iam.put_role_policy(RoleName=self.role_name, PolicyName=self.policy_name,
                                     PolicyDocument=json.dumps(document))

    def _create_log_group(self, group: str, retention: int) -> None:
        create_log_group(self.logs, group, self.workflow_id, retention)

    def _set_log_retention(self, group: str, retention: int) -> None:
        set_log_retention(self.logs, group, retention)

    def _delete_log_group(self, group: str) -> None:
        delete_log_group(self.logs, group)

    def _attach(self, arn: str) -> None:
        with translate_errors(f"attaching policy {arn} to IAM role {self.role_name}"):
            self.iam.attach_role_policy(RoleName=self.role_name, PolicyArn=arn)

    def _detach(self, arn: str) -> None:
        with translate_errors(f"detaching policy {arn} from IAM role {self.role_name}"):
            try:
                self.iam.detach_role_policy(RoleName=self.role_name, PolicyArn=arn)
            except Exception as exc:
                if not is_client_error(exc, "NoSuchEntity"):
                    raise

    def _delete_policy(self) -> None:
        with translate_errors(f"deleting policy {self.policy_name}"):
            try:
                self.iam.delete_role_policy(RoleName=self.role_name, PolicyName=self.policy_name)
            except Exception as exc:
                if not is_client_error(exc, "NoSuchEntity"):
                    raise

    def _delete_role(self) -> None:
        with translate_errors(f"deleting IAM role {self.role_name}"):
            try:
                self.iam.delete_role(RoleName=self.role_name)
            except Exception as exc:
                if not is_client_error(exc, "NoSuchEntity"):
                    raise

    def _create_function(self, spec: FunctionSpec, role_arn: str) -> None:
        self._keep_artifact(spec)
        kwargs = dict(spec.configuration(role_arn), FunctionName=spec.name, Code={"ZipFile": spec.zip_bytes},
                      Publish=False, Tags={TAG_KEY: self.workflow_id}, PackageType="Zip")
        with translate_errors(f"creating Lambda function {spec.name}"):
            _while_role_propagates(lambda: self.lam.create_function(**kwargs))
            self._wait(spec.name, "function_active_v2")

    def _wait(self, name: str, waiter: str) -> None:
        try:
            self.lam.get_waiter(waiter).wait(FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        except Exception as exc:
            if "Waiter" in type(exc).__name__ and not is_transient(exc):  # throttling or a 5xx: translate_errors
                raise XflowError(f"Lambda function {name} did not become ready: {exc}") from None
            raise

    def _update_code(self, spec: FunctionSpec) -> None:
        self._keep_artifact(spec)
        with translate_errors(f"updating the code of {spec.name}"):
            self.lam.update_function_code(FunctionName=spec.name, ZipFile=spec.zip_bytes, Publish=False)
            self._wait(spec.name, "function_updated_v2")

    def _update_config(self, spec: FunctionSpec, wanted: dict[str, Any]) -> None:
        with translate_errors(f"updating the configuration of {spec.name}"):
            self._wait(spec.name, "function_updated_v2")
            self.lam.update_function_configuration(FunctionName=spec.name, **wanted)
            self._wait(spec.name, "function_updated_v2")

    def _delete_function(self, name: str) -> None:
        with translate_errors(f"deleting Lambda function {name}"):
            for mapping in self._mappings_of(name):
                self._delete_mapping(mapping["UUID"])
            try:
                self.lam.delete_function(FunctionName=name)
            except Exception as exc:
                if not is_client_error(exc, "ResourceNotFoundException"):
                    raise

    def _create_mapping(self, spec: MappingSpec) -> None:
        with translate_errors(f"subscribing {spec.function} to {spec.event}"):
            _while_role_propagates(lambda: self.lam.create_event_source_mapping(
                EventSourceArn=spec.stream_arn, FunctionName=spec.function, StartingPosition=spec.starting_position,
                Enabled=True, **spec.parameters()))

    def _update_mapping(self, uuid: str, params: Mapping[str, Any]) -> None:
        with translate_errors(f"updating event source mapping {uuid}"):
            self.lam.update_event_source_mapping(UUID=uuid, **params)

    def _delete_mapping(self, uuid: str) -> None:
        with translate_errors(f"deleting event source mapping {uuid}"):
            try:
                self.lam.delete_event_source_mapping(UUID=uuid)
            except Exception as exc:
                if not is_client_error(exc, "ResourceNotFoundException"):
                    raise


def s3_source_arns(workflow: Workflow) -> list[str]:
    """``arn:aws:s3:::BUCKET/KEY`` of every ``s3://BUCKET/KEY`` source of the workflow's functions."""
    found = set()
    for function in workflow.functions.values():
        source = str(function.source or "")
        if source.startswith("s3://"):
            bucket, _, key = source[len("s3://"):].partition("/")
            if bucket and key:
                found.add(f"arn:aws:s3:::{bucket}/{key}")
    return sorted(found)


_STATEMENT_EXAMPLE = '[{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::BUCKET/*"]}]'


def _policy_arns(value: Any) -> list[str]:
    """The ``policy_arns`` option: a list (in the file's block), a JSON list, or comma-separated ARNs."""
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        arns = [str(a).strip() for a in value]
    else:
        text = str(value).strip()
        try:
            parsed = json.loads(text) if text.startswith("[") else None
        except ValueError as exc:
            raise XflowError(f"lambda provider: option policy_arns is not a valid JSON list: {exc}",
                             "give comma-separated ARNs, or a JSON list of them") from None
        arns = [str(a).strip() for a in parsed] if isinstance(parsed, list) else \
            [part.strip() for part in text.split(",") if part.strip()]
    for arn in arns:
        if not (arn.startswith("arn:") and ":policy/" in arn):
            raise XflowError(f"lambda provider: option policy_arns: {arn!r} is not an IAM policy ARN",
                             "give ARNs like arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess, comma-separated")
    return list(dict.fromkeys(arns))


def _policy_statements(value: Any) -> list[dict[str, Any]]:
    """The ``policy_statements`` option: IAM statements, as a list (in the file's block) or a JSON list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise XflowError(f"lambda provider: option policy_statements is not valid JSON: {exc}",
                             f"give a JSON list of IAM statements, e.g. {_STATEMENT_EXAMPLE}") from None
    statements = [value] if isinstance(value, dict) else value
    if not isinstance(statements, list | tuple):
        raise XflowError("lambda provider: option policy_statements must be a list of IAM statements",
                         f"e.g. {_STATEMENT_EXAMPLE}")
    for index, statement in enumerate(statements, start=1):
        problem = None
        if not isinstance(statement, dict):
            problem = "is not an object"
        elif statement.get("Effect") not in ("Allow", "Deny"):
            problem = "needs Effect: Allow or Deny"
        elif not (statement.get("Action") or statement.get("NotAction")):
            problem = "needs an Action"
        elif not (statement.get("Resource") or statement.get("NotResource")):
            problem = "needs a Resource"
        if problem:
            raise XflowError(f"lambda provider: option policy_statements: statement {index} {problem}",
                             f"e.g. {_STATEMENT_EXAMPLE}")
    return [dict(s) for s in statements]


def _remove_files(paths: list[Path]) -> None:
    """Remove the files, then their folders that are left empty."""
    for path in paths:
        path.unlink(missing_ok=True)
    for folder in {path.parent for path in paths}:
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()


def _config_value(current: Mapping[str, Any], key: str) -> Any:
    if key == "Environment":
        return {"Variables": dict((current.get("Environment") or {}).get("Variables") or {})}
    if key == "Description":
        return current.get("Description") or ""
    return current.get(key)


def _on_failure_of(mapping: Mapping[str, Any]) -> str:
    """The on-failure destination of a mapping as Lambda lists it ("" for none)."""
    config = mapping.get("DestinationConfig") or {}
    return str(((config.get("OnFailure") or {}).get("Destination")) or "")


def _function_of(mapping: Mapping[str, Any]) -> str:
    return str(mapping["FunctionArn"]).rpartition(":function:")[2].partition(":")[0]


def _stream_of(mapping: Mapping[str, Any]) -> str:
    return str(mapping["EventSourceArn"]).rpartition("/")[2]


def _role_not_ready(exc: BaseException) -> bool:
    return is_client_error(exc, "InvalidParameterValueException") and "role" in str(exc).lower()


def _while_role_propagates(call: Callable[[], Any]) -> Any:
    """Run ``call``, again every 3 s for up to a minute while Lambda does not yet accept a new role or policy."""
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

    return Retrying(retry=retry_if_exception(_role_not_ready), wait=wait_fixed(3), stop=stop_after_delay(60),
                    reraise=True)(call)


@hookimpl
def xflow_function_providers() -> list[type[FunctionProvider]]:
    return [LambdaProvider]
