"""Provider ``lambda``, the plugin: each function an AWS Lambda function, subscribed to its event streams.

Setup is desired state → plan → execute. :class:`~xflow.providers.aws_lambda.planner.Planner` compares the file with
what exists and returns data-only steps; :meth:`LambdaProvider.execute` performs one step by the AWS call it names
(``lambda:CreateFunction``, ``lambda:PublishLayerVersion``, ``iam:CreateRole``, ``sqs:CreateQueue``, ...), and the
two local ones: ``xflow:KeepArtifact`` (keep a deployed zip in the state folder for ``xflow emulate``) and
``xflow:DeleteFiles``. A step that deploys code names its zip by SHA-256 and size; the zip is built (or taken from
planning's memory) only here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xflow.aws import (
    TAG_KEY,
    AwsSession,
    create_log_group,
    delete_log_group,
    ignoring,
    is_transient,
    set_log_retention,
    translate_errors,
    while_propagating,
)
from xflow.core.deploy import dispatch
from xflow.core.errors import XflowError
from xflow.core.interfaces import FunctionProvider, PluginContext, Step, TrackerStore, Transport
from xflow.core.options import Option
from xflow.providers.aws_lambda.failures import collect_failures
from xflow.providers.aws_lambda.iam import ExecutionRole, policy_arns, policy_statements
from xflow.providers.aws_lambda.mappings import FailureQueue, Mappings
from xflow.providers.aws_lambda.packaging import FunctionSpec, Packager, keep_artifact, remove_files
from xflow.providers.aws_lambda.planner import Planner

if TYPE_CHECKING:
    from xflow.core.model import Workflow


class LambdaProvider(FunctionProvider):
    name = "lambda"
    description = "AWS Lambda functions subscribed to Kinesis streams by event source mappings"
    options = (
        Option("region", str, None, "AWS region (default: aws.region in the file, else AWS_REGION)"),
        Option("role_name", str, None, "execution role (default: aws.lambda_execution_role_name, else "
               "xflow-<workflow_id>-lambda)"),
        Option("policy_arns", list, None, "managed IAM policy ARNs attached to the execution role (a list, a JSON list "
               "or comma-separated)"),
        Option("policy_statements", "json", None, "IAM policy statements (a JSON list) added to the execution role's "
               "inline policy"),
        Option("tracing", bool, False, "Lambda active tracing (X-Ray): TracingConfig Active on every function"),
        Option("shared_layers", bool, False, "requirements that several functions share go into one Lambda layer, "
               "published once, instead of into each function's zip (a package built by 'xflow package' decides "
               "by itself: --shared-layers)"),
    )
    runs_locally = False

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        aws = dict(context.workflow.aws) if context.workflow is not None else {}
        options = self.context  # typed values (Option declarations above)
        self.aws = AwsSession(aws, region=options.option("region"))
        role_name = str(options.option("role_name") or aws.get("lambda_execution_role_name")
                        or f"xflow-{self.workflow_id}-lambda")
        self.role = ExecutionRole(self.aws, self.workflow_id, role_name, policy_arns(options.option("policy_arns")),
                                  policy_statements(options.option("policy_statements")))
        self.failures = FailureQueue(self.aws, self.workflow_id)
        self.mappings = Mappings(self.aws)
        self.packager = Packager(self.aws, shared_layers=bool(options.option("shared_layers")))
        self.planner = Planner(self.aws, self.workflow_id, context.state_dir, self.role, self.failures, self.packager,
                               tracing=bool(options.option("tracing")))
        self.planner.layers.zip_of = self._zip

    @property
    def role_name(self) -> str:
        return self.role.name

    @property
    def lam(self) -> Any:
        return self.aws.client("lambda")

    @property
    def logs(self) -> Any:
        return self.aws.client("logs")

    # ------------------------------------------------------------------ plans

    def plan_setup(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        return self.planner.plan_setup(workflow, transport, tracker)

    def plan_teardown(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        return self.planner.plan_teardown(workflow, tracker)

    def use_package(self, workflow: Workflow, folder: Path) -> None:
        """Deploy the artifacts of the package in ``folder`` (``xflow package``; ``setup --from``) instead of building
        them: checked against ``workflow`` first (:func:`~xflow.providers.aws_lambda.artifacts.read_package`)."""
        from xflow.providers.aws_lambda.artifacts import read_package

        self.packager.package = read_package(workflow, folder)

    def desired_functions(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[FunctionSpec]:
        """Every function with its zip, built in memory (what setup would deploy)."""
        return self.planner.desired_functions(workflow, transport, str(self.planner.tracking(tracker)["log_group"]))

    # ------------------------------------------------------------------ failures

    def collect_failures(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> int:
        """Record the batches Lambda discarded after whole-invocation failures (the workflow's on-failure queue)
        as failed deliveries, with their reason and attempts; see :mod:`xflow.providers.aws_lambda.failures`."""
        return collect_failures(self.aws, workflow, transport, tracker, self.failures)

    # ------------------------------------------------------------------ execute

    def execute(self, step: Step) -> None:
        dispatch(step, self.operations())

    def operations(self) -> dict[str, Callable[..., None]]:
        """Every call a step of this provider may name, and what performs it."""
        return {
            **self.failures.operations(), **self.role.operations(), **self.mappings.operations(),
            **self.planner.subscriptions.operations(), **self.planner.monitoring.operations(),
            **self.planner.releases.operations(), **self.planner.layers.operations(),
            "logs:CreateLogGroup": self._create_log_group, "logs:PutRetentionPolicy": self._set_log_retention,
            "logs:DeleteLogGroup": self._delete_log_group,
            "lambda:CreateFunction": self._create_function, "lambda:UpdateFunctionCode": self._update_code,
            "lambda:UpdateFunctionConfiguration": self._update_config, "lambda:DeleteFunction": self._delete_function,
            "xflow:KeepArtifact": self._keep_artifact, "xflow:DeleteFiles": self._delete_files,
        }

    def _zip(self, artifact: Mapping[str, Any]) -> bytes:
        """The zip a step names, kept in the state folder (where ``xflow emulate`` looks for deployed code)."""
        data = self.packager.zip_for(self.context.workflow, artifact)
        keep_artifact(self.context.state_dir, data)
        return data

    def _create_log_group(self, *, logGroupName: str, retentionInDays: int, tags: Mapping[str, str]) -> None:
        create_log_group(self.logs, logGroupName, tags.get(TAG_KEY, self.workflow_id), retentionInDays)

    def _set_log_retention(self, *, logGroupName: str, retentionInDays: int) -> None:
        set_log_retention(self.logs, logGroupName, retentionInDays)

    def _delete_log_group(self, *, logGroupName: str) -> None:
        delete_log_group(self.logs, logGroupName)

    def _create_function(self, *, FunctionName: str, Code: Mapping[str, Any], **request: Any) -> None:
        data = self._zip(Code["ZipFile"])
        if "Layers" in request:
            request["Layers"] = self.planner.layers.resolve(request["Layers"])
        with translate_errors(f"creating Lambda function {FunctionName}"):
            while_propagating("InvalidParameterValueException")(self.lam.create_function, FunctionName=FunctionName,
                                                                Code={"ZipFile": data}, **request)
            self._wait(FunctionName, "function_active_v2")

    def _update_code(self, *, FunctionName: str, ZipFile: Mapping[str, Any], **request: Any) -> None:
        data = self._zip(ZipFile)
        with translate_errors(f"updating the code of {FunctionName}"):
            self.lam.update_function_code(FunctionName=FunctionName, ZipFile=data, **request)
            self._wait(FunctionName, "function_updated_v2")

    def _update_config(self, *, FunctionName: str, **config: Any) -> None:
        if "Layers" in config:
            config["Layers"] = self.planner.layers.resolve(config["Layers"])
        with translate_errors(f"updating the configuration of {FunctionName}"):
            self._wait(FunctionName, "function_updated_v2")
            self.lam.update_function_configuration(FunctionName=FunctionName, **config)
            self._wait(FunctionName, "function_updated_v2")

    def _delete_function(self, *, FunctionName: str) -> None:
        """DeleteFunction, after the function's mappings (those left: the plan deletes them first)."""
        with translate_errors(f"deleting Lambda function {FunctionName}"):
            for mapping in self.mappings.of(FunctionName):
                self.mappings.delete(UUID=mapping["UUID"])
            with ignoring("ResourceNotFoundException"):
                self.lam.delete_function(FunctionName=FunctionName)

    def _wait(self, name: str, waiter: str) -> None:
        try:
            self.lam.get_waiter(waiter).wait(FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        except Exception as exc:
            if "Waiter" in type(exc).__name__ and not is_transient(exc):  # throttling or a 5xx: translate_errors
                raise XflowError(f"Lambda function {name} did not become ready: {exc}") from None
            raise

    def _keep_artifact(self, *, ZipFile: Mapping[str, Any], FunctionName: str = "", LayerName: str = "") -> None:
        """Keep the zip of a function (or a shared layer) deployed from another state folder (the same bytes: same
        SHA-256)."""
        self._zip(ZipFile)

    def _delete_files(self, *, Paths: list[str]) -> None:
        remove_files([Path(p) for p in Paths])

    # ------------------------------------------------------------------ versions (xflow versions, xflow rollback)

    def deployed_versions(self, workflow: Workflow) -> list[dict[str, Any]]:
        """Each deployed function's versions, with their sha and time, and which one its alias ``live`` invokes."""
        return [self.planner.releases.describe(name) for name in sorted(self.planner.workflow_functions(workflow.id))]

    def rollback(self, workflow: Workflow, function: str | None = None, to: str | None = None) -> list[dict[str, Any]]:
        """Point the functions' alias ``live`` back at the version live before (or at version ``to``)."""
        from xflow.core.rollout import chosen_functions

        names = chosen_functions(workflow, self.planner.workflow_functions(workflow.id), function)
        return [self.planner.releases.rollback(name, to) for name in names]
