"""Shipping a workflow's CloudWatch log groups to one destination: the ``logging.aws`` block of the workflow file,
planned by the lambda provider with its other steps (so ``--dry-run`` shows them and teardown removes them).

```yaml
logging:
  aws:
    destination_arn: arn:aws:kinesis:us-east-1:123456789012:stream/central-logs   # or a Firehose stream, a Lambda
    filter_pattern: ""          # CloudWatch Logs' filter syntax; "" sends every line
    role_arn: ...               # the role CloudWatch Logs assumes (default: one setup makes, for Kinesis/Firehose)
```

Every function's group ``/aws/lambda/FUNCTION`` (the ``tracker_WORKFLOW`` function's too) and the tracker's group
get a subscription filter named ``xflow-WORKFLOW`` sending to ``destination_arn``. For a Kinesis stream or a
Firehose delivery stream without ``role_arn``, setup makes the role ``xflow-WORKFLOW-logs``: trusted by CloudWatch
Logs, allowed to put records to that destination only. For a Lambda function, setup adds a permission (statement
``xflow-WORKFLOW-logs``) letting CloudWatch Logs invoke it for this account's log groups. A filter that already says
the same is left alone (a second setup changes nothing); a file without the block removes the filters (and the role
and permission) setup made; teardown removes them all. The function whose permission goes is read from the filters'
``destinationArn`` (and, at teardown, the file's destination too), so a destination that changed from a Lambda to
another function or to a stream loses its statement as well; the permission is removed before the filters, so that a
run that stops half-way still finds it the next time. The groups' retention is the tracker's (the provider keeps each
group at it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from xflow.aws import TAG_KEY, AwsSession, ignoring, translate_errors, while_propagating
from xflow.core.errors import XflowError
from xflow.core.interfaces import Step
from xflow.providers.aws_lambda.iam import normalized_policy

if TYPE_CHECKING:
    from xflow.core.model import Workflow

#: what CloudWatch Logs' role may do, per kind of destination
PUT_ACTIONS = {"kinesis": ["kinesis:PutRecord", "kinesis:PutRecords"],
               "firehose": ["firehose:PutRecord", "firehose:PutRecordBatch"]}
DESTINATIONS = ("kinesis", "firehose", "lambda")


def destination_kind(arn: str) -> str:
    """``kinesis``, ``firehose`` or ``lambda`` from a destination's ARN; an XflowError for anything else."""
    parts = str(arn).split(":")
    if len(parts) < 6 or parts[0] != "arn" or parts[2] not in DESTINATIONS:
        raise XflowError(f"logging.aws.destination_arn {arn!r} is not the ARN of a Kinesis stream, a Firehose "
                         "delivery stream or a Lambda function",
                         "e.g. arn:aws:kinesis:us-east-1:123456789012:stream/central-logs")
    return parts[2]


class LogSubscriptions:
    """Plans (reading only) and performs the subscription filters, role and permission of ``logging.aws``."""

    def __init__(self, aws: AwsSession, workflow_id: str) -> None:
        self.aws = aws
        self.workflow_id = workflow_id
        self.filter_name = f"xflow-{workflow_id}"
        self.role_name = f"xflow-{workflow_id}-logs"
        self.statement_id = f"xflow-{workflow_id}-logs"

    @property
    def logs(self) -> Any:
        return self.aws.client("logs")

    @property
    def iam(self) -> Any:
        return self.aws.client("iam")

    @property
    def lam(self) -> Any:
        return self.aws.client("lambda")

    @property
    def role_resource(self) -> str:
        return f"role:{self.role_name}"

    # ------------------------------------------------------------------ reading

    def current_filter(self, group: str) -> dict[str, Any] | None:
        """This workflow's filter on ``group`` (None: none, or no such group)."""
        found: dict[str, Any] = {}
        with translate_errors(f"reading the subscription filters of log group {group}"), \
                ignoring("ResourceNotFoundException"):
            found = self.logs.describe_subscription_filters(logGroupName=group, filterNamePrefix=self.filter_name)
        return next((f for f in found.get("subscriptionFilters", []) if f.get("filterName") == self.filter_name), None)

    def _role(self) -> tuple[dict[str, Any] | None, str | None]:
        """The role setup makes and its policy document (normalized), or (None, None)."""
        role: dict[str, Any] | None = None
        policy: str | None = None
        with translate_errors(f"reading IAM role {self.role_name}"), ignoring("NoSuchEntity"):
            role = dict(self.iam.get_role(RoleName=self.role_name)["Role"])
            policy = normalized_policy(self.iam.get_role_policy(RoleName=self.role_name,
                                                                PolicyName=self.role_name)["PolicyDocument"])
        return role, policy

    def _permission(self, function_arn: str) -> bool:
        """Whether the destination function's resource policy holds this workflow's statement."""
        policy: dict[str, Any] = {}
        with translate_errors(f"reading the resource policy of {function_arn}"), ignoring("ResourceNotFoundException"):
            policy = json.loads(self.lam.get_policy(FunctionName=function_arn)["Policy"])
        return any(s.get("Sid") == self.statement_id for s in policy.get("Statement", []))

    # ------------------------------------------------------------------ plans

    def plan_setup(self, workflow: Workflow, groups: Iterable[str]) -> list[Step]:
        """Steps that give each of ``groups`` the filter ``logging.aws`` asks for (or, without it, remove ours), and
        remove the permission of a Lambda destination the filters name no more."""
        settings = dict(getattr(getattr(workflow, "logging", None), "aws", None) or {})
        groups = list(dict.fromkeys(groups))
        if not settings.get("destination_arn"):
            return self.plan_teardown(groups, None)
        filters = {group: self.current_filter(group) for group in groups}
        destination = str(settings["destination_arn"])
        kind = destination_kind(destination)
        steps: list[Step] = []
        role_arn = settings.get("role_arn") or None
        needs: tuple[str, ...] = ()
        if kind in PUT_ACTIONS and role_arn is None:
            role_arn, steps = self._plan_role(destination, kind)
            needs = (self.role_resource,)
        elif kind == "lambda" and not self._permission(destination):
            steps.append(Step("create", f"lambda-permission:{self.statement_id}", detail=destination,
                              call="lambda:AddPermission", params={
                                  "FunctionName": destination, "StatementId": self.statement_id,
                                  "Action": "lambda:InvokeFunction", "Principal": "logs.amazonaws.com",
                                  "SourceArn": f"arn:aws:logs:{self.aws.require_region()}:{self.aws.account_id()}"
                                               f":log-group:*", "SourceAccount": self.aws.account_id()}))
            needs = (f"lambda-permission:{self.statement_id}",)
        pattern = str(settings.get("filter_pattern") or "")
        for group in groups:
            wanted = {"logGroupName": group, "filterName": self.filter_name, "filterPattern": pattern,
                      "destinationArn": destination, **({"roleArn": role_arn} if role_arn else {})}
            current = filters[group]
            if current is not None and all(current.get(k, "") == v for k, v in wanted.items()):
                continue
            steps.append(Step("create" if current is None else "update", f"subscription-filter:{group}",
                              detail=destination, call="logs:PutSubscriptionFilter", params=wanted,
                              depends_on=(f"log-group:{group}", *needs)))
        left = [arn for arn in _lambda_destinations(filters.values()) if arn != destination]
        return self._plan_permission_removal(left) + steps + (
            self._plan_role_removal() if kind not in PUT_ACTIONS or settings.get("role_arn") else [])

    def _plan_role(self, destination: str, kind: str) -> tuple[str, list[Step]]:
        document = {"Version": "2012-10-17", "Statement": [
            {"Sid": "PutLogRecords", "Effect": "Allow", "Action": PUT_ACTIONS[kind], "Resource": [destination]}]}
        role, policy = self._role()
        if role is None:
            arn = f"arn:aws:iam::{self.aws.account_id()}:role/{self.role_name}"
            trust = {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "logs.amazonaws.com"}, "Action": "sts:AssumeRole",
                 "Condition": {"StringLike": {"aws:SourceArn": f"arn:aws:logs:{self.aws.require_region()}:"
                                                               f"{self.aws.account_id()}:*"}}}]}
            return arn, [Step("create", self.role_resource, detail=f"CloudWatch Logs -> {destination}",
                              call="iam:CreateRole", params={
                                  "RoleName": self.role_name, "AssumeRolePolicyDocument": trust,
                                  "Description": f"xflow workflow {self.workflow_id}: CloudWatch Logs to {kind}",
                                  "Tags": [{"Key": TAG_KEY, "Value": self.workflow_id}],
                                  "InlinePolicy": {"PolicyName": self.role_name, "PolicyDocument": document}})]
        if policy != normalized_policy(document):
            return str(role["Arn"]), [Step("update", f"role-policy:{self.role_name}/{self.role_name}",
                                           call="iam:PutRolePolicy", params={
                                               "RoleName": self.role_name, "PolicyName": self.role_name,
                                               "PolicyDocument": document}, depends_on=(self.role_resource,))]
        return str(role["Arn"]), []

    def plan_teardown(self, groups: Iterable[str], workflow: Workflow | None = None) -> list[Step]:
        """Steps that remove the permission of the Lambda destinations (those the filters send to, and the file's),
        this workflow's filters on ``groups``, and the role setup made."""
        filters = {group: self.current_filter(group) for group in dict.fromkeys(groups)}
        settings = dict(getattr(getattr(workflow, "logging", None), "aws", None) or {})
        destinations = _lambda_destinations(filters.values(), str(settings.get("destination_arn") or ""))
        steps = self._plan_permission_removal(destinations)
        steps += [Step("delete", f"subscription-filter:{group}", call="logs:DeleteSubscriptionFilter",
                       params={"logGroupName": group, "filterName": self.filter_name})
                  for group, found in filters.items() if found is not None]
        return steps + self._plan_role_removal()

    def _plan_permission_removal(self, functions: Iterable[str]) -> list[Step]:
        """RemovePermission of this workflow's statement from each of ``functions`` whose policy holds it."""
        return [Step("delete", f"lambda-permission:{self.statement_id}", detail=arn, call="lambda:RemovePermission",
                     params={"FunctionName": arn, "StatementId": self.statement_id})
                for arn in functions if self._permission(arn)]

    def _plan_role_removal(self) -> list[Step]:
        role, policy = self._role()
        if role is None:
            return []
        with translate_errors(f"reading IAM role {self.role_name}"):
            tags = self.iam.list_role_tags(RoleName=self.role_name).get("Tags", [])
        if not any(t["Key"] == TAG_KEY and t["Value"] == self.workflow_id for t in tags):
            return []  # not the one setup made
        steps = []
        if policy is not None:
            steps.append(Step("delete", f"role-policy:{self.role_name}/{self.role_name}", call="iam:DeleteRolePolicy",
                              params={"RoleName": self.role_name, "PolicyName": self.role_name}))
        return steps + [Step("delete", self.role_resource, call="iam:DeleteRole", params={"RoleName": self.role_name})]

    # ------------------------------------------------------------------ the calls (the role's are the provider's IAM calls)

    def operations(self) -> dict[str, Callable[..., None]]:
        return {"logs:PutSubscriptionFilter": self.put_filter, "logs:DeleteSubscriptionFilter": self.delete_filter,
                "lambda:AddPermission": self.add_permission, "lambda:RemovePermission": self.remove_permission}

    def put_filter(self, **request: Any) -> None:
        """PutSubscriptionFilter, again for a while when CloudWatch Logs cannot yet assume a role just made."""
        with translate_errors(f"subscribing log group {request.get('logGroupName')} to {request.get('destinationArn')}"):
            while_propagating("InvalidParameterException")(self.logs.put_subscription_filter, **request)

    def delete_filter(self, *, logGroupName: str, filterName: str) -> None:
        with translate_errors(f"removing the subscription filter of log group {logGroupName}"), \
                ignoring("ResourceNotFoundException"):
            self.logs.delete_subscription_filter(logGroupName=logGroupName, filterName=filterName)

    def add_permission(self, **request: Any) -> None:
        with translate_errors(f"letting CloudWatch Logs invoke {request.get('FunctionName')}"), \
                ignoring("ResourceConflictException"):
            self.lam.add_permission(**request)

    def remove_permission(self, *, FunctionName: str, StatementId: str) -> None:
        with translate_errors(f"removing CloudWatch Logs' permission on {FunctionName}"), \
                ignoring("ResourceNotFoundException"):
            self.lam.remove_permission(FunctionName=FunctionName, StatementId=StatementId)


def _lambda_destinations(filters: Iterable[dict[str, Any] | None], *more: str) -> list[str]:
    """The Lambda functions among the filters' destinations and ``more`` (ARNs; anything else is left out)."""
    arns = [str((found or {}).get("destinationArn") or "") for found in filters] + list(more)
    return [arn for arn in dict.fromkeys(arns) if arn.startswith("arn:") and len(arn.split(":")) >= 6
            and arn.split(":")[2] == "lambda"]
