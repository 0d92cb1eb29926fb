"""The lambda provider's execution role: its policies as data, the steps that make the role match, the IAM calls.

The role (``aws.lambda_execution_role_name``, default ``xflow-<workflow_id>-lambda``) is created when missing, tagged
with the workflow, and given one inline policy ``xflow-<workflow_id>`` scoped to what the workflow uses: its event
sources (the actions its transport names), its log groups, its on-failure queue, ``s3:GetObject`` on the objects of
its ``s3://`` sources, and the ``policy_statements`` option's statements. The ``policy_arns`` option's managed
policies are attached; setup never detaches a managed policy, teardown detaches those it attached (every one, from a
role xflow created) before it removes the role.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from xflow.aws import TAG_KEY, AwsSession, ignoring, translate_errors
from xflow.core.errors import XflowError
from xflow.core.interfaces import Step

if TYPE_CHECKING:
    from xflow.core.model import Workflow

TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}
LOG_ACTIONS = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:FilterLogEvents", "logs:GetLogEvents"]
_STATEMENT_EXAMPLE = '[{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::BUCKET/*"]}]'


class ExecutionRole:
    """The workflow's Lambda execution role: planning (reads only) and the calls its steps name."""

    def __init__(self, aws: AwsSession, workflow_id: str, role_name: str, policy_arns: list[str],
                 policy_statements: list[dict[str, Any]]) -> None:
        self.aws = aws
        self.workflow_id = workflow_id
        self.name = role_name
        self.policy_name = f"xflow-{workflow_id}"
        self.policy_arns = policy_arns
        self.policy_statements = policy_statements

    @property
    def iam(self) -> Any:
        return self.aws.client("iam")

    @property
    def resource(self) -> str:
        return f"role:{self.name}"

    def policy_document(self, workflow: Workflow, sources: Iterable[tuple[str, Iterable[str]]], log_groups: list[str],
                        failure_queue_arn: str) -> dict[str, Any]:
        """The inline policy: ``sources`` are (ARN, IAM actions the functions need on it) of the event sources."""
        region, account = self.aws.require_region(), self.aws.account_id()
        arns: set[str] = set()
        actions: set[str] = set()
        for arn, needed in sources:
            arns.add(arn)
            actions.update(needed)
        group_arns = []
        for group in sorted(log_groups):
            group_arns += [f"arn:aws:logs:{region}:{account}:log-group:{group}",
                           f"arn:aws:logs:{region}:{account}:log-group:{group}:*"]
        statements: list[dict[str, Any]] = [
            {"Sid": "WorkflowStreams", "Effect": "Allow", "Action": sorted(actions), "Resource": sorted(arns)},
            {"Sid": "WorkflowLogs", "Effect": "Allow", "Action": list(LOG_ACTIONS), "Resource": group_arns},
            {"Sid": "FailureDestination", "Effect": "Allow", "Action": ["sqs:SendMessage"],
             "Resource": [failure_queue_arn]},
        ]
        s3_sources = s3_source_arns(workflow)
        if s3_sources:
            statements.append({"Sid": "FunctionSources", "Effect": "Allow", "Action": ["s3:GetObject"],
                               "Resource": s3_sources})
        statements += self.policy_statements
        return {"Version": "2012-10-17", "Statement": statements}

    # ------------------------------------------------------------------ plans (read only)

    def _get_role(self) -> dict[str, Any] | None:
        with translate_errors(f"reading IAM role {self.name}"), ignoring("NoSuchEntity"):
            return dict(self.iam.get_role(RoleName=self.name)["Role"])
        return None

    def _inline_policy(self) -> str | None:
        with translate_errors(f"reading policy {self.policy_name} of role {self.name}"), ignoring("NoSuchEntity"):
            return normalized_policy(self.iam.get_role_policy(RoleName=self.name,
                                                              PolicyName=self.policy_name)["PolicyDocument"])
        return None

    def attached_policies(self) -> list[str]:
        with translate_errors(f"listing the managed policies of IAM role {self.name}"):
            found = []
            for page in self.iam.get_paginator("list_attached_role_policies").paginate(RoleName=self.name):
                found += [p["PolicyArn"] for p in page.get("AttachedPolicies", [])]
            return found

    def plan_setup(self, document: dict[str, Any], detail: str) -> tuple[str, list[Step]]:
        """The role's ARN, and the steps that give it ``document`` and the ``policy_arns``."""
        role = self._get_role()
        if role is None:
            arn = f"arn:aws:iam::{self.aws.account_id()}:role/{self.name}"
            create = Step("create", self.resource, detail=detail, call="iam:CreateRole", params={
                "RoleName": self.name, "AssumeRolePolicyDocument": TRUST_POLICY,
                "Description": f"xflow workflow {self.workflow_id}: Lambda execution role",
                "Tags": [{"Key": TAG_KEY, "Value": self.workflow_id}],
                "InlinePolicy": {"PolicyName": self.policy_name, "PolicyDocument": document}})
            return arn, [create, *self._plan_attachments([])]
        steps = []
        if self._inline_policy() != normalized_policy(document):
            steps.append(Step("update", f"role-policy:{self.name}/{self.policy_name}", call="iam:PutRolePolicy",
                              params={"RoleName": self.name, "PolicyName": self.policy_name, "PolicyDocument": document},
                              depends_on=(self.resource,)))
        steps += self._plan_attachments(self.attached_policies())
        return str(role["Arn"]), steps

    def _plan_attachments(self, attached: list[str]) -> list[Step]:
        """Attach the ``policy_arns`` the role lacks. Setup detaches nothing: a policy attached by hand stays."""
        return [Step("create", f"role-policy-attachment:{self.name}/{arn.rpartition('/')[2]}", detail=arn,
                     call="iam:AttachRolePolicy", params={"RoleName": self.name, "PolicyArn": arn},
                     depends_on=(self.resource,))
                for arn in self.policy_arns if arn not in attached]

    def plan_teardown(self) -> list[Step]:
        if self._get_role() is None:
            return []
        with translate_errors(f"reading IAM role {self.name}"):
            policies = self.iam.list_role_policies(RoleName=self.name).get("PolicyNames", [])
            tags = self.iam.list_role_tags(RoleName=self.name).get("Tags", [])
        steps = []
        if self.policy_name in policies:
            steps.append(Step("delete", f"role-policy:{self.name}/{self.policy_name}", call="iam:DeleteRolePolicy",
                              params={"RoleName": self.name, "PolicyName": self.policy_name}))
        ours = any(t["Key"] == TAG_KEY and t["Value"] == self.workflow_id for t in tags)
        # a role xflow created goes with every managed policy on it; another role only loses the ones xflow attached
        steps += [Step("delete", f"role-policy-attachment:{self.name}/{arn.rpartition('/')[2]}", detail=arn,
                       call="iam:DetachRolePolicy", params={"RoleName": self.name, "PolicyArn": arn})
                  for arn in self.attached_policies() if ours or arn in self.policy_arns]
        if ours and set(policies) <= {self.policy_name}:
            steps.append(Step("delete", self.resource, call="iam:DeleteRole", params={"RoleName": self.name}))
        return steps

    # ------------------------------------------------------------------ the calls

    def operations(self) -> dict[str, Callable[..., None]]:
        return {"iam:CreateRole": self.create_role, "iam:PutRolePolicy": self.put_role_policy,
                "iam:AttachRolePolicy": self.attach_role_policy, "iam:DetachRolePolicy": self.detach_role_policy,
                "iam:DeleteRolePolicy": self.delete_role_policy, "iam:DeleteRole": self.delete_role}

    def create_role(self, *, RoleName: str, AssumeRolePolicyDocument: Mapping[str, Any],
                    InlinePolicy: Mapping[str, Any] | None = None, **request: Any) -> None:
        """CreateRole (a role that exists already is taken as created), then its inline policy."""
        with translate_errors(f"creating IAM role {RoleName}"), ignoring("EntityAlreadyExists"):
            self.iam.create_role(RoleName=RoleName, AssumeRolePolicyDocument=json.dumps(AssumeRolePolicyDocument),
                                 **request)
        if InlinePolicy:
            self.put_role_policy(RoleName=RoleName, **InlinePolicy)

    def put_role_policy(self, *, RoleName: str, PolicyName: str, PolicyDocument: Mapping[str, Any]) -> None:
        with translate_errors(f"writing policy {PolicyName} of role {RoleName}"):
            self.iam.put_role_policy(RoleName=RoleName, PolicyName=PolicyName, PolicyDocument=json.dumps(PolicyDocument))

    def attach_role_policy(self, *, RoleName: str, PolicyArn: str) -> None:
        with translate_errors(f"attaching policy {PolicyArn} to IAM role {RoleName}"):
            self.iam.attach_role_policy(RoleName=RoleName, PolicyArn=PolicyArn)

    def detach_role_policy(self, *, RoleName: str, PolicyArn: str) -> None:
        with translate_errors(f"detaching policy {PolicyArn} from IAM role {RoleName}"), ignoring("NoSuchEntity"):
            self.iam.detach_role_policy(RoleName=RoleName, PolicyArn=PolicyArn)

    def delete_role_policy(self, *, RoleName: str, PolicyName: str) -> None:
        with translate_errors(f"deleting policy {PolicyName}"), ignoring("NoSuchEntity"):
            self.iam.delete_role_policy(RoleName=RoleName, PolicyName=PolicyName)

    def delete_role(self, *, RoleName: str) -> None:
        with translate_errors(f"deleting IAM role {RoleName}"), ignoring("NoSuchEntity"):
            self.iam.delete_role(RoleName=RoleName)


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


def policy_arns(value: Any) -> list[str]:
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


def policy_statements(value: Any) -> list[dict[str, Any]]:
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


def normalized_policy(document: Any) -> str:
    """A policy document (as IAM returns it: URL-encoded JSON, or already parsed) as JSON with sorted keys, to compare."""
    if isinstance(document, str):
        document = json.loads(urllib.parse.unquote(document))
    return json.dumps(document, sort_keys=True) if isinstance(document, Mapping | list) else str(document)
