"""Watching a workflow on AWS: the ``monitoring:`` block of the workflow file, planned by the lambda provider with its
other steps (so ``--dry-run`` shows them, a second setup changes nothing and teardown removes them).

```yaml
monitoring:
  errors: 1            # alarm when a function's Errors reach 1 in a period (null: no such alarm)
  throttles: 1         # ... its Throttles
  iterator_age: 60     # ... its IteratorAge (maximum, seconds): the function falls behind its stream
  dead_letters: 1      # ... the messages waiting on the workflow's on-failure queue
  period: 60           # seconds per evaluation (10, 30 or a multiple of 60)
  evaluation_periods: 1
  email: ops@example.com     # subscribed to the topic setup makes (or a list of addresses)
  # sns_topic_arn: arn:aws:sns:...   # notify your topic instead: setup makes none
  dashboard: true
```

For every function setup deploys (``tracker_WORKFLOW`` too) it puts the CloudWatch alarms
``xflow/WORKFLOW/FUNCTION/errors``, ``.../throttles`` and ``.../iterator-age`` (AWS/Lambda metrics), and
``xflow/WORKFLOW/dead-letters`` on the on-failure queue (AWS/SQS ``ApproximateNumberOfMessagesVisible``). Alarms and
their return to OK notify the SNS topic ``xflow-WORKFLOW-alarms`` (made and tagged by setup, the addresses of
``email`` subscribed; each must confirm by the mail SNS sends) or ``sns_topic_arn``. The dashboard
``xflow-WORKFLOW`` shows invocations, errors, duration and iterator age per function, events per stream, the
on-failure queue, the deliveries the Lambda shim counts (its embedded-metric log lines, namespace ``xflow``) and the
alarms. What exists is compared with DescribeAlarms, GetDashboard and the topic's attributes and subscriptions; only
what differs is put again. A file without the block removes what setup made for it.

The provider option ``tracing`` turns on Lambda's active tracing (``TracingConfig`` ``Active``, X-Ray) on every
function, and lets the execution role write trace segments.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from xflow.aws import TAG_KEY, AwsSession, ignoring, translate_errors
from xflow.core.errors import XflowError
from xflow.core.interfaces import Step

if TYPE_CHECKING:
    from xflow.core.model import Workflow
    from xflow.providers.aws_lambda.mappings import FailureQueue

#: the namespace of the metrics the Lambda shim writes (CloudWatch embedded metric format)
METRICS_NAMESPACE = "xflow"
#: what CloudWatch answers for a dashboard that does not exist
NO_DASHBOARD = ("ResourceNotFound", "ResourceNotFoundException", "DashboardNotFoundError")
#: the function alarms: (name suffix, AWS/Lambda metric, statistic, the choice's threshold field, what it says)
FUNCTION_ALARMS = (("errors", "Errors", "Sum", "errors", "errors"),
                   ("throttles", "Throttles", "Sum", "throttles", "throttled invocations"),
                   ("iterator-age", "IteratorAge", "Maximum", "iterator_age", "iterator age (ms)"))
#: the X-Ray calls a function with active tracing makes (what AWSXRayDaemonWriteAccess allows)
XRAY_ACTIONS = ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
                "xray:GetSamplingTargets", "xray:GetSamplingStatisticSummaries"]
#: the alarm fields compared with DescribeAlarms (the request's others, Tags, are not listed there)
_COMPARED = ("AlarmDescription", "ActionsEnabled", "AlarmActions", "OKActions", "MetricName", "Namespace", "Statistic",
             "Dimensions", "Period", "EvaluationPeriods", "Threshold", "ComparisonOperator", "TreatMissingData")
TRUE_WORDS = ("true", "yes", "on", "1", "active")


def tracing_enabled(value: Any) -> bool:
    """The provider option ``tracing`` (YAML true, or text: true/yes/on/1/Active) as a flag."""
    return value is True or (isinstance(value, str) and value.strip().lower() in TRUE_WORDS)


def tracing_statements(enabled: bool) -> list[dict[str, Any]]:
    """What the execution role needs for active tracing (nothing when it is off)."""
    if not enabled:
        return []
    return [{"Sid": "XflowActiveTracing", "Effect": "Allow", "Action": list(XRAY_ACTIONS), "Resource": "*"}]


class AwsMonitoring:
    """Plans (reading only) and performs the alarms, topic, subscriptions and dashboard of ``monitoring:``."""

    def __init__(self, aws: AwsSession, workflow_id: str, queue: FailureQueue, tracing: bool = False) -> None:
        self.aws = aws
        self.workflow_id = workflow_id
        self.queue = queue
        self.tracing = tracing
        self.prefix = f"xflow/{workflow_id}/"  # "/" is in no workflow id: the prefix is this workflow's alone
        self.topic_name = f"xflow-{workflow_id}-alarms"
        self.dashboard_name = f"xflow-{workflow_id}"

    @property
    def cloudwatch(self) -> Any:
        return self.aws.client("cloudwatch")

    @property
    def sns(self) -> Any:
        return self.aws.client("sns")

    @property
    def topic_resource(self) -> str:
        return f"sns-topic:{self.topic_name}"

    def topic_arn(self) -> str:
        return f"arn:aws:sns:{self.aws.require_region()}:{self.aws.account_id()}:{self.topic_name}"

    def function_configuration(self, current: Mapping[str, Any] | None) -> dict[str, Any]:
        """What the tracing option adds to a function's configuration: ``TracingConfig`` Active when on; PassThrough
        again when off on a function that has it Active; else nothing (so a second setup compares equal)."""
        if self.tracing:
            return {"TracingConfig": {"Mode": "Active"}}
        mode = ((current or {}).get("TracingConfig") or {}).get("Mode")
        return {"TracingConfig": {"Mode": "PassThrough"}} if mode == "Active" else {}

    # ------------------------------------------------------------------ reading

    def alarms(self) -> dict[str, dict[str, Any]]:
        """This workflow's metric alarms, by name."""
        found: dict[str, dict[str, Any]] = {}
        with translate_errors(f"listing the CloudWatch alarms {self.prefix}*"):
            for page in self.cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=self.prefix,
                                                                                   AlarmTypes=["MetricAlarm"]):
                for alarm in page.get("MetricAlarms", []):
                    found[str(alarm["AlarmName"])] = dict(alarm)
        return found

    def topic(self) -> tuple[bool, bool]:
        """Whether the topic setup makes exists, and whether it is this workflow's (tagged so)."""
        arn = self.topic_arn()
        with translate_errors(f"reading SNS topic {self.topic_name}"), \
                ignoring("NotFound", "NotFoundException", "ResourceNotFoundException"):
            self.sns.get_topic_attributes(TopicArn=arn)
            tags = self.sns.list_tags_for_resource(ResourceArn=arn).get("Tags", [])
            return True, any(t.get("Key") == TAG_KEY and t.get("Value") == self.workflow_id for t in tags)
        return False, False

    def subscriptions(self) -> list[dict[str, Any]]:
        """The topic's subscriptions (confirmed ones with their ARN, pending ones with ``PendingConfirmation``)."""
        found: list[dict[str, Any]] = []
        with translate_errors(f"listing the subscriptions of SNS topic {self.topic_name}"):
            for page in self.sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=self.topic_arn()):
                found.extend(dict(s) for s in page.get("Subscriptions", []))
        return found

    def dashboard(self) -> Any:
        """The dashboard's body (parsed), or None when there is none."""
        found: dict[str, Any] | None = None
        with translate_errors(f"reading CloudWatch dashboard {self.dashboard_name}"), ignoring(*NO_DASHBOARD):
            found = dict(self.cloudwatch.get_dashboard(DashboardName=self.dashboard_name))
        if found is None:
            return None
        try:
            return json.loads(found.get("DashboardBody") or "{}")
        except ValueError:
            return {}

    def _dashboard_is_ours(self, body: Any) -> bool:
        widgets = body.get("widgets") if isinstance(body, dict) else None
        return any(isinstance(w, dict) and str((w.get("properties") or {}).get("markdown", "")).startswith(
            self._title()) for w in widgets or ())

    def _title(self) -> str:
        return f"## xflow workflow `{self.workflow_id}`"

    # ------------------------------------------------------------------ what the file wants

    def desired_alarms(self, choice: Any, functions: Sequence[str], topic_arn: str) -> list[dict[str, Any]]:
        """The PutMetricAlarm requests of ``choice`` for ``functions`` and the on-failure queue."""
        common = {"ActionsEnabled": True, "AlarmActions": [topic_arn], "OKActions": [topic_arn],
                  "Period": choice.period, "EvaluationPeriods": choice.evaluation_periods,
                  "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "notBreaching"}
        window = f"in {choice.evaluation_periods} x {choice.period} s"
        wanted = []
        for function in functions:
            for suffix, metric, statistic, field, what in FUNCTION_ALARMS:
                threshold = getattr(choice, field)
                if threshold is None:
                    continue
                value = float(threshold) * (1000 if metric == "IteratorAge" else 1)
                wanted.append({"AlarmName": f"{self.prefix}{function}/{suffix}",
                               "AlarmDescription": f"xflow workflow {self.workflow_id}: {function} {what} >= "
                                                   f"{value:g} {window}",
                               "Namespace": "AWS/Lambda", "MetricName": metric, "Statistic": statistic,
                               "Dimensions": [{"Name": "FunctionName", "Value": function}], "Threshold": value,
                               **common, "Tags": [{"Key": TAG_KEY, "Value": self.workflow_id}]})
        if choice.dead_letters is not None:
            wanted.append({"AlarmName": f"{self.prefix}dead-letters",
                           "AlarmDescription": f"xflow workflow {self.workflow_id}: {choice.dead_letters} or more "
                                               f"batches on the on-failure queue {self.queue.name}",
                           "Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
                           "Statistic": "Maximum", "Dimensions": [{"Name": "QueueName", "Value": self.queue.name}],
                           "Threshold": float(choice.dead_letters), **common,
                           "Tags": [{"Key": TAG_KEY, "Value": self.workflow_id}]})
        return wanted

    def dashboard_body(self, choice: Any, functions: Sequence[str], streams: Sequence[str],
                       alarm_names: Iterable[str], notify: str) -> dict[str, Any]:
        """The dashboard: a title, one graph per Lambda metric (a line per function), events per stream, the
        on-failure queue, the shim's deliveries by status, and the alarms."""
        region = self.aws.require_region()

        def graph(title: str, namespace: str, metric: str, stat: str, dimension: str, names: Sequence[str],
                  position: int) -> dict[str, Any]:
            return {"type": "metric", "x": 12 * (position % 2), "y": 2 + 6 * (position // 2), "width": 12,
                    "height": 6, "properties": {"title": title, "region": region, "view": "timeSeries",
                                                "stacked": False, "stat": stat, "period": choice.period,
                                                "metrics": [[namespace, metric, dimension, n] for n in names]}}

        search = (f"SEARCH('{{{METRICS_NAMESPACE},workflow_id,function,status}} MetricName=\"Deliveries\" "
                  f"workflow_id=\"{self.workflow_id}\"', 'Sum', {choice.period})")
        widgets: list[dict[str, Any]] = [
            {"type": "text", "x": 0, "y": 0, "width": 24, "height": 2, "properties": {"markdown": (
                f"{self._title()}\n{len(functions)} function(s), {len(streams)} stream(s); alarms notify {notify}")}},
            graph("Invocations", "AWS/Lambda", "Invocations", "Sum", "FunctionName", functions, 0),
            graph("Errors", "AWS/Lambda", "Errors", "Sum", "FunctionName", functions, 1),
            graph("Duration (ms)", "AWS/Lambda", "Duration", "Average", "FunctionName", functions, 2),
            graph("Iterator age (ms)", "AWS/Lambda", "IteratorAge", "Maximum", "FunctionName", functions, 3),
            graph("Events per stream", "AWS/Kinesis", "IncomingRecords", "Sum", "StreamName", streams, 4),
            graph("On-failure queue", "AWS/SQS", "ApproximateNumberOfMessagesVisible", "Maximum", "QueueName",
                  [self.queue.name], 5),
            {"type": "metric", "x": 0, "y": 20, "width": 12, "height": 6, "properties": {
                "title": "Deliveries by function and status (xflow)", "region": region, "view": "timeSeries",
                "stacked": False, "period": choice.period,
                "metrics": [[{"expression": search, "id": "deliveries", "label": ""}]]}},
        ]
        arns = [f"arn:aws:cloudwatch:{region}:{self.aws.account_id()}:alarm:{name}" for name in alarm_names]
        if arns:
            widgets.append({"type": "alarm", "x": 12, "y": 20, "width": 12, "height": 6,
                            "properties": {"title": "Alarms", "alarms": arns[:100]}})
        return {"widgets": widgets}

    # ------------------------------------------------------------------ plans

    def plan_setup(self, workflow: Workflow, functions: Sequence[str], stream_arns: Iterable[str]) -> list[Step]:
        """Steps that make the alarms, topic and dashboard ``workflow.monitoring`` asks for on ``functions`` (or, with
        no block, remove those setup made)."""
        choice = getattr(workflow, "monitoring", None)
        current = self.alarms()
        if choice is None:
            return self._plan_removal(current)
        steps: list[Step] = []
        needs: tuple[str, ...] = ()
        exists, ours = self.topic()
        if choice.sns_topic_arn:
            topic_arn, notify = choice.sns_topic_arn, choice.sns_topic_arn
        else:
            topic_arn, notify = self.topic_arn(), f"SNS topic {self.topic_name}"
            steps += self._plan_topic(exists, ours, choice.email)
            needs = (self.topic_resource,)
        wanted = self.desired_alarms(choice, functions, topic_arn)
        for request in wanted:
            name = request["AlarmName"]
            if name in current and not _alarm_differs(request, current[name]):
                continue
            steps.append(Step("update" if name in current else "create", f"alarm:{name}",
                              detail=request["AlarmDescription"], call="cloudwatch:PutMetricAlarm", params=request,
                              depends_on=needs))
        names = {request["AlarmName"] for request in wanted}
        steps += [self._delete_alarm(name) for name in sorted(set(current) - names)]
        steps += self._plan_dashboard(choice, functions, [a.rpartition("/")[2] for a in stream_arns],
                                      [r["AlarmName"] for r in wanted], notify)
        if choice.sns_topic_arn and ours:  # notifying another topic now: the one setup made goes
            steps.append(self._delete_topic())
        return steps

    def _plan_topic(self, exists: bool, ours: bool, emails: Sequence[str]) -> list[Step]:
        if exists and not ours:
            raise XflowError(f"an SNS topic named {self.topic_name} already exists and does not belong to workflow "
                             f"{self.workflow_id}", "give monitoring.sns_topic_arn to notify it, or remove it")
        steps: list[Step] = []
        if not exists:
            steps.append(Step("create", self.topic_resource, detail="where the workflow's alarms notify",
                              call="sns:CreateTopic", params={"Name": self.topic_name,
                                                              "Tags": [{"Key": TAG_KEY, "Value": self.workflow_id}]}))
        subscribed = {} if not exists else {str(s.get("Endpoint")): s for s in self.subscriptions()
                                            if s.get("Protocol") == "email"}
        for email in emails:
            if email not in subscribed:
                steps.append(Step("create", f"sns-subscription:{self.topic_name}/{email}",
                                  detail="SNS mails a confirmation link first", call="sns:Subscribe",
                                  params={"TopicArn": self.topic_arn(), "Protocol": "email", "Endpoint": email},
                                  depends_on=(self.topic_resource,)))
        for email, subscription in sorted(subscribed.items()):
            arn = str(subscription.get("SubscriptionArn", ""))
            if email not in emails and arn.startswith("arn:"):  # one still pending cannot be removed: it lapses
                steps.append(Step("delete", f"sns-subscription:{self.topic_name}/{email}", call="sns:Unsubscribe",
                                  params={"SubscriptionArn": arn}))
        return steps

    def _plan_dashboard(self, choice: Any, functions: Sequence[str], streams: Sequence[str],
                        alarm_names: Sequence[str], notify: str) -> list[Step]:
        current = self.dashboard()
        if not choice.dashboard:
            return [self._delete_dashboard()] if current is not None and self._dashboard_is_ours(current) else []
        body = self.dashboard_body(choice, functions, streams, alarm_names, notify)
        if current == body:
            return []
        if current is not None and not self._dashboard_is_ours(current):
            raise XflowError(f"a CloudWatch dashboard named {self.dashboard_name} already exists and is not workflow "
                             f"{self.workflow_id}'s", "remove or rename it, or set monitoring.dashboard: false")
        return [Step("create" if current is None else "update", f"dashboard:{self.dashboard_name}",
                     detail=f"{len(body['widgets'])} widgets", call="cloudwatch:PutDashboard",
                     params={"DashboardName": self.dashboard_name, "DashboardBody": body})]

    def plan_teardown(self) -> list[Step]:
        """Steps that remove the alarms, topic (if setup made it) and dashboard of this workflow."""
        return self._plan_removal(self.alarms())

    def _plan_removal(self, current: Mapping[str, Any]) -> list[Step]:
        steps = [self._delete_alarm(name) for name in sorted(current)]
        body = self.dashboard()
        if body is not None and self._dashboard_is_ours(body):
            steps.append(self._delete_dashboard())
        exists, ours = self.topic()
        if exists and ours:
            steps.append(self._delete_topic())
        return steps

    def _delete_alarm(self, name: str) -> Step:
        return Step("delete", f"alarm:{name}", call="cloudwatch:DeleteAlarms", params={"AlarmNames": [name]})

    def _delete_dashboard(self) -> Step:
        return Step("delete", f"dashboard:{self.dashboard_name}", call="cloudwatch:DeleteDashboards",
                    params={"DashboardNames": [self.dashboard_name]})

    def _delete_topic(self) -> Step:
        return Step("delete", self.topic_resource, detail="and its subscriptions", call="sns:DeleteTopic",
                    params={"TopicArn": self.topic_arn()})

    # ------------------------------------------------------------------ the calls

    def operations(self) -> dict[str, Callable[..., None]]:
        return {"cloudwatch:PutMetricAlarm": self.put_alarm, "cloudwatch:DeleteAlarms": self.delete_alarms,
                "cloudwatch:PutDashboard": self.put_dashboard, "cloudwatch:DeleteDashboards": self.delete_dashboards,
                "sns:CreateTopic": self.create_topic, "sns:Subscribe": self.subscribe,
                "sns:Unsubscribe": self.unsubscribe, "sns:DeleteTopic": self.delete_topic}

    def put_alarm(self, **request: Any) -> None:
        with translate_errors(f"putting CloudWatch alarm {request.get('AlarmName')}"):
            self.cloudwatch.put_metric_alarm(**request)

    def delete_alarms(self, *, AlarmNames: list[str]) -> None:
        with translate_errors(f"deleting CloudWatch alarms {', '.join(AlarmNames)}"):
            self.cloudwatch.delete_alarms(AlarmNames=list(AlarmNames))

    def put_dashboard(self, *, DashboardName: str, DashboardBody: Mapping[str, Any]) -> None:
        with translate_errors(f"putting CloudWatch dashboard {DashboardName}"):
            self.cloudwatch.put_dashboard(DashboardName=DashboardName, DashboardBody=json.dumps(DashboardBody))

    def delete_dashboards(self, *, DashboardNames: list[str]) -> None:
        with translate_errors(f"deleting CloudWatch dashboard {', '.join(DashboardNames)}"), ignoring(*NO_DASHBOARD):
            self.cloudwatch.delete_dashboards(DashboardNames=list(DashboardNames))

    def create_topic(self, *, Name: str, Tags: list[dict[str, str]]) -> None:
        with translate_errors(f"creating SNS topic {Name}"):
            self.sns.create_topic(Name=Name, Tags=list(Tags))

    def subscribe(self, *, TopicArn: str, Protocol: str, Endpoint: str) -> None:
        with translate_errors(f"subscribing {Endpoint} to SNS topic {TopicArn}"):
            self.sns.subscribe(TopicArn=TopicArn, Protocol=Protocol, Endpoint=Endpoint)

    def unsubscribe(self, *, SubscriptionArn: str) -> None:
        with translate_errors(f"removing SNS subscription {SubscriptionArn}"), ignoring("NotFound", "NotFoundException"):
            self.sns.unsubscribe(SubscriptionArn=SubscriptionArn)

    def delete_topic(self, *, TopicArn: str) -> None:
        with translate_errors(f"deleting SNS topic {TopicArn}"), ignoring("NotFound", "NotFoundException"):
            self.sns.delete_topic(TopicArn=TopicArn)


def _alarm_differs(request: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether the alarm ``current`` (as DescribeAlarms lists it) is not what ``request`` would put."""
    for key in _COMPARED:
        wanted, found = request.get(key), current.get(key)
        if key == "Threshold":
            if found is None or float(found) != float(wanted or 0):
                return True
        elif key == "Dimensions":
            if sorted((d["Name"], d["Value"]) for d in wanted or ()) != sorted(
                    (d.get("Name"), d.get("Value")) for d in found or ()):
                return True
        elif key in ("AlarmActions", "OKActions"):
            if sorted(wanted or ()) != sorted(found or ()):
                return True
        elif wanted != found:
            return True
    return False
