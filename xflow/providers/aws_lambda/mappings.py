"""The lambda provider's event source mappings and their on-failure destination: what the file wants, the steps
that make what exists match it, and the calls those steps name.

One mapping per (event, subscriber), plus the tracker function's on every event's stream, with batch size, starting
position, retries, bisect-on-error and ``ReportBatchItemFailures``. Every subscriber's mapping sends the batches Lambda
gives up on to the workflow's SQS queue ``xflow-<workflow_id>-failures`` (tagged, kept 14 days), which
:mod:`xflow.providers.aws_lambda.failures` reads back into the tracker. A starting position cannot be changed in
place: such a mapping is deleted and created anew. Mappings this workflow's functions have and the file does not
name are deleted. A mapping invokes the function's ``live`` alias (:mod:`xflow.providers.aws_lambda.versions`): one
made before aliases existed is moved to it in place (UpdateEventSourceMapping ``FunctionName``), keeping its position.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xflow.aws import TAG_KEY, AwsSession, ignoring, is_client_error, translate_errors, while_propagating
from xflow.core.errors import XflowError
from xflow.core.interfaces import Step
from xflow.providers.aws_lambda.versions import alias_arn

if TYPE_CHECKING:
    from xflow.core.model import Workflow

#: how long the queue keeps a failure record that no ``track`` or ``emulate`` has read (the most SQS allows)
RETENTION_SECONDS = 14 * 24 * 3600
NO_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


@dataclass(frozen=True)
class EventSource:
    """What a mapping reads one event from, as the transport declares it (``Transport.lambda_event_source``)."""

    event: str
    #: the ARN a mapping names as ``EventSourceArn``
    arn: str
    #: the transport's resource that setup makes for it (``stream:NAME``): what a mapping depends on
    resource: str
    #: the IAM actions the functions need on it (reading it, and publishing to it)
    actions: tuple[str, ...] = ()


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
    #: the resource of the event source (``stream:NAME``), which must exist first
    source: str = ""
    #: what the mapping invokes: the ARN of the function's alias ("": the function itself)
    target: str = ""

    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {"BatchSize": self.batch_size, "MaximumRetryAttempts": self.retries,
                                  "BisectBatchOnFunctionError": self.bisect,
                                  "FunctionResponseTypes": ["ReportBatchItemFailures"]}
        if self.on_failure:
            params["DestinationConfig"] = {"OnFailure": {"Destination": self.on_failure}}
        return params

    def request(self) -> dict[str, Any]:
        """The CreateEventSourceMapping request."""
        return {"EventSourceArn": self.stream_arn, "FunctionName": self.target or self.function,
                "StartingPosition": self.starting_position, "Enabled": True, **self.parameters()}

    def update_request(self, current: Mapping[str, Any]) -> dict[str, Any]:
        """The UpdateEventSourceMapping request that makes ``current`` this one."""
        request = {"UUID": current["UUID"], **self.parameters()}
        if self.target and current.get("FunctionArn") != self.target:
            request["FunctionName"] = self.target
        return request

    def differs(self, current: Mapping[str, Any]) -> bool:
        """Whether the mapping ``current`` (as Lambda lists it) needs an update to be this one."""
        if self.target and current.get("FunctionArn") != self.target:
            return True
        for key, value in self.parameters().items():
            if key == "DestinationConfig":
                if _on_failure_of(current) != self.on_failure:
                    return True
            elif current.get(key) != value:
                return True
        return False


def desired_mappings(workflow: Workflow, sources: Mapping[str, EventSource], tracker_function: str,
                     destination: str, target: Callable[[str], str] | None = None) -> list[MappingSpec]:
    """The subscribers' mappings (with ``destination`` as on-failure destination) and the tracker function's;
    ``target(function)`` names what each invokes (its alias's ARN), else the function itself."""
    found = []
    for event in workflow.events:
        source = sources[event]
        for name in workflow.subscribers(event):
            fn = workflow.functions[name]
            name = workflow.resource_name(name)  # the Lambda function's name (a stage's has its suffix)
            found.append(MappingSpec(event, source.arn, name, fn.batch_size, fn.starting_position, fn.retries,
                                     fn.bisect_on_error, destination, source.resource, target(name) if target else ""))
        found.append(MappingSpec(event, source.arn, tracker_function, 100, "TRIM_HORIZON", 10, True,
                                 source=source.resource, target=target(tracker_function) if target else ""))
    return found


def plan_mappings(wanted: list[MappingSpec], existing: list[dict[str, Any]], queue_resource: str) -> list[Step]:
    """Deletions first (what the file no longer names, what cannot change in place), then creations and updates."""
    steps: list[Step] = []
    kept: set[str] = set()
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for mapping in existing:
        by_key.setdefault((mapping["EventSourceArn"], _function_of(mapping)), []).append(mapping)
    for spec in wanted:
        resource = f"mapping:{spec.stream_arn.rpartition('/')[2]}->{spec.function}"
        needs = tuple(r for r in (f"function:{spec.function}", spec.source, queue_resource if spec.on_failure else "",
                                  f"alias:{spec.function}" if spec.target else "") if r)
        candidates = by_key.get((spec.stream_arn, spec.function), [])
        current = candidates[0] if candidates else None
        if current is not None and current.get("StartingPosition", spec.starting_position) != spec.starting_position:
            current = None  # cannot be changed in place: deleted below, created anew
        if current is None:
            steps.append(Step("create", resource, call="lambda:CreateEventSourceMapping", params=spec.request(),
                              depends_on=needs))
            continue
        kept.add(current["UUID"])
        if spec.differs(current):
            steps.append(Step("update", resource, call="lambda:UpdateEventSourceMapping",
                              params=spec.update_request(current), depends_on=needs))
    deletions = [delete_mapping_step(m) for m in existing if m["UUID"] not in kept]
    return deletions + steps


def delete_mapping_step(mapping: Mapping[str, Any]) -> Step:
    return Step("delete", f"mapping:{_stream_of(mapping)}->{_function_of(mapping)}",
                call="lambda:DeleteEventSourceMapping", params={"UUID": mapping["UUID"]})


class Mappings:
    """Reading a function's mappings, and the calls that change them."""

    def __init__(self, aws: AwsSession) -> None:
        self.aws = aws

    @property
    def lam(self) -> Any:
        return self.aws.client("lambda")

    def of(self, function: str) -> list[dict[str, Any]]:
        """The mappings of ``function`` and of its ``live`` alias. Those of the alias are also listed under the
        alias's ARN (an endpoint may list a mapping only under the name it was made with); their ``FunctionArn`` is
        the alias's, as Lambda reports it."""
        found = {m["UUID"]: m for m in self._listed(function)}
        if ":" not in function:
            arn = alias_arn(self.aws, function)
            for mapping in self._listed(arn):
                found.setdefault(mapping["UUID"], dict(mapping, FunctionArn=arn))
        return list(found.values())

    def _listed(self, function: str) -> list[dict[str, Any]]:
        with translate_errors(f"listing event source mappings of {function}"):
            found = []
            for page in self.lam.get_paginator("list_event_source_mappings").paginate(FunctionName=function):
                found.extend(page.get("EventSourceMappings", []))
            return found

    def operations(self) -> dict[str, Callable[..., None]]:
        return {"lambda:CreateEventSourceMapping": self.create, "lambda:UpdateEventSourceMapping": self.update,
                "lambda:DeleteEventSourceMapping": self.delete}

    def create(self, **request: Any) -> None:
        with translate_errors(f"subscribing {request.get('FunctionName')} to {request.get('EventSourceArn')}"):
            while_propagating("InvalidParameterValueException")(self.lam.create_event_source_mapping, **request)

    def update(self, *, UUID: str, **params: Any) -> None:
        with translate_errors(f"updating event source mapping {UUID}"):
            self.lam.update_event_source_mapping(UUID=UUID, **params)

    def delete(self, *, UUID: str) -> None:
        with translate_errors(f"deleting event source mapping {UUID}"), ignoring("ResourceNotFoundException"):
            self.lam.delete_event_source_mapping(UUID=UUID)


def failure_queue_name(workflow_id: str) -> str:
    """``xflow-<workflow>-failures``; SQS allows letters, digits, ``-`` and ``_``, 80 at most."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", workflow_id)
    name = f"xflow-{safe}-failures"
    if len(name) > 80 or safe != workflow_id:
        digest = hashlib.sha256(workflow_id.encode()).hexdigest()[:8]
        name = f"xflow-{safe[:56]}-{digest}-failures"
    return name


class FailureQueue:
    """The workflow's on-failure queue: its setup and teardown steps (reads only), and the calls they name."""

    def __init__(self, aws: AwsSession, workflow_id: str) -> None:
        self.aws = aws
        self.workflow_id = workflow_id
        self.name = failure_queue_name(workflow_id)

    @property
    def sqs(self) -> Any:
        return self.aws.client("sqs")

    @property
    def arn(self) -> str:
        return f"arn:aws:sqs:{self.aws.require_region()}:{self.aws.account_id()}:{self.name}"

    @property
    def resource(self) -> str:
        return f"queue:{self.name}"

    def url(self) -> str | None:
        """The queue's URL, None when it does not exist."""
        with translate_errors(f"looking up SQS queue {self.name}"), ignoring(*NO_QUEUE):
            return str(self.sqs.get_queue_url(QueueName=self.name)["QueueUrl"])
        return None

    def plan_setup(self) -> list[Step]:
        url = self.url()
        attributes = {"MessageRetentionPeriod": str(RETENTION_SECONDS)}
        if url is None:
            return [Step("create", self.resource, detail="on-failure destination of the workflow's event source mappings",
                         call="sqs:CreateQueue", params={"QueueName": self.name, "Attributes": attributes,
                                                         "tags": {TAG_KEY: self.workflow_id}})]
        with translate_errors(f"reading SQS queue {self.name}"):
            tags = self.sqs.list_queue_tags(QueueUrl=url).get("Tags") or {}
            current = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["MessageRetentionPeriod"])
        if tags.get(TAG_KEY) != self.workflow_id:
            raise XflowError(f"an SQS queue named {self.name} already exists and does not belong to workflow "
                             f"{self.workflow_id} (it belongs to {tags.get(TAG_KEY) or 'no xflow workflow'})",
                             "remove that queue, or give this workflow another workflow_id")
        if str((current.get("Attributes") or {}).get("MessageRetentionPeriod")) != str(RETENTION_SECONDS):
            return [Step("update", self.resource, detail=f"MessageRetentionPeriod {RETENTION_SECONDS}",
                         call="sqs:SetQueueAttributes", params={"QueueUrl": url, "Attributes": attributes})]
        return []

    def plan_teardown(self) -> list[Step]:
        url = self.url()
        if url is None:
            return []
        with translate_errors(f"reading the tags of SQS queue {self.name}"):
            tags = self.sqs.list_queue_tags(QueueUrl=url).get("Tags") or {}
        if tags.get(TAG_KEY) != self.workflow_id:
            return []
        return [Step("delete", self.resource, call="sqs:DeleteQueue", params={"QueueUrl": url})]

    def operations(self) -> dict[str, Callable[..., None]]:
        return {"sqs:CreateQueue": self.create, "sqs:SetQueueAttributes": self.set_attributes,
                "sqs:DeleteQueue": self.delete}

    def create(self, *, QueueName: str, **request: Any) -> None:
        from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

        def create() -> None:
            self.sqs.create_queue(QueueName=QueueName, **request)

        # SQS refuses a queue's name for 60 s after it was deleted (a teardown just before this setup)
        with translate_errors(f"creating SQS queue {QueueName}"):
            Retrying(retry=retry_if_exception(lambda e: is_client_error(e, "AWS.SimpleQueueService.QueueDeletedRecently",
                                                                        "QueueDeletedRecently")),
                     wait=wait_fixed(5), stop=stop_after_delay(75), reraise=True)(create)

    def set_attributes(self, *, QueueUrl: str, Attributes: Mapping[str, str]) -> None:
        with translate_errors(f"updating SQS queue {self.name}"):
            self.sqs.set_queue_attributes(QueueUrl=QueueUrl, Attributes=dict(Attributes))

    def delete(self, *, QueueUrl: str) -> None:
        with translate_errors(f"deleting SQS queue {self.name}"), ignoring(*NO_QUEUE):
            self.sqs.delete_queue(QueueUrl=QueueUrl)


def _on_failure_of(mapping: Mapping[str, Any]) -> str:
    """The on-failure destination of a mapping as Lambda lists it ("" for none)."""
    config = mapping.get("DestinationConfig") or {}
    return str(((config.get("OnFailure") or {}).get("Destination")) or "")


def _function_of(mapping: Mapping[str, Any]) -> str:
    return str(mapping["FunctionArn"]).rpartition(":function:")[2].partition(":")[0]


def _stream_of(mapping: Mapping[str, Any]) -> str:
    return str(mapping["EventSourceArn"]).rpartition("/")[2]
