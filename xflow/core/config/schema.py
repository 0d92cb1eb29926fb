"""What each section of a workflow file may hold (marshmallow schemas), and their messages as problems."""

from __future__ import annotations

import difflib
import functools
import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from xflow.core.stages import STAGE_NAME, STAGE_RULE

MAX_HOP_LIMIT = 1_000_000
MAX_EVENT_LIMIT = 10**15
#: the most handler calls of one function a worker runs at once (``concurrency:``)
MAX_CONCURRENCY = 1024
# Patterns are matched whole: ``\Z`` (not ``$``, which also matches before a final newline).
EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}\Z")
FUNCTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}\Z")
WORKFLOW_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}\Z")
HANDLER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
event_name = validate.Regexp(EVENT_NAME, error="{input!r} is not a valid event name (letters, digits, _; starts with a letter)")


class WholeNumber(fields.Integer):
    """An integer written as one: ``2.7`` (or ``2.0``, or ``true``) is refused, not truncated.

    Text of digits is accepted, so that ``${RETRIES}`` (substituted as text) still works.
    """

    default_error_messages = {"invalid": "must be a whole number, not {input!r}"}

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.make_error("invalid", input=value)
        if isinstance(value, str):
            if not re.fullmatch(r"\s*[+-]?[0-9]{1,30}\s*", value):
                raise self.make_error("invalid", input=value)
            return int(value)
        return value


class Requirements(fields.Field):
    """A function's ``requirements:``: a list of requirement lines (as in a requirements file), or the path of a
    requirements file (read from the workflow file's folder)."""

    default_error_messages = {"invalid": "must be a list of requirements (e.g. ['requests==2.32.3']) or the path of a "
                                         "requirements file"}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and all(isinstance(line, str) and line.strip() for line in value):
            return [line.strip() for line in value]
        raise self.make_error("invalid")


#: the processors a function may ask for (``architecture:``), as AWS Lambda names them
ARCHITECTURES = ("x86_64", "arm64")
architecture = validate.OneOf(ARCHITECTURES, error="{input!r} is not an architecture: x86_64 or arm64")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class FunctionSchema(_Strict):
    name = fields.Str(required=True, validate=validate.Regexp(
        FUNCTION_NAME, error="{input!r} is not a valid function name (letters, digits, _ and -, at most 64)"))
    handler = fields.Str(required=True, validate=validate.Regexp(
        HANDLER, error="{input!r} is not a valid handler: a Python function name, or module.function"))
    source = fields.Str(required=True, validate=validate.Length(min=1, error="must not be empty"))
    runtime = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, error="must not be empty"))
    description = fields.Str(load_default="", allow_none=True)
    publishes = fields.List(fields.Str(validate=event_name), load_default=list)
    retries = WholeNumber(load_default=None, allow_none=True, validate=validate.Range(0, 100))
    timeout = fields.Float(load_default=None, allow_none=True, validate=validate.Range(min=0, min_inclusive=False))
    memory = WholeNumber(load_default=128, validate=validate.Range(128, 10240))
    batch_size = WholeNumber(load_default=100, validate=validate.Range(1, 10000))
    starting_position = fields.Str(load_default="TRIM_HORIZON", validate=validate.OneOf(["TRIM_HORIZON", "LATEST"]))
    bisect_on_error = fields.Bool(load_default=True)
    environment = fields.Dict(keys=fields.Str(), values=fields.Str(), load_default=dict)
    concurrency = WholeNumber(load_default=None, allow_none=True, validate=validate.Range(1, MAX_CONCURRENCY))
    architecture = fields.Str(load_default=None, allow_none=True, validate=architecture)
    requirements = Requirements(load_default=None, allow_none=True)


class SubscriptionSchema(_Strict):
    name = fields.Str(validate=event_name)
    event = fields.Str(validate=event_name)
    # an empty list declares a terminal (or externally consumed) event: its stream exists, nothing here reads it
    subscribers = fields.List(fields.Str(), required=True)

    @validates_schema
    def _one_event_key(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "name" in data and "event" in data:
            raise ValidationError("give the event as 'name:' or 'event:', not both", "event")
        if "name" not in data and "event" not in data:
            raise ValidationError("missing the event: add 'event: EventName' (or 'name:')", "event")


class FlowSchema(_Strict):
    id = fields.Str(required=True, validate=validate.Regexp(WORKFLOW_ID, error="{input!r} is not a valid workflow id"))
    flow = fields.List(fields.Str(validate=event_name), load_default=list)
    description = fields.Str(load_default="")


class GeneralSchema(_Strict):
    lambda_timeout_time = fields.Float(allow_none=True, validate=validate.Range(min=0, min_inclusive=False))
    retries = WholeNumber(allow_none=True, validate=validate.Range(0, 100))
    runtime = fields.Str(allow_none=True, validate=validate.Length(min=1, error="must not be empty"))
    hop_limit = WholeNumber(allow_none=True, validate=validate.Range(1, MAX_HOP_LIMIT))
    event_limit = WholeNumber(allow_none=True, validate=validate.Range(1, MAX_EVENT_LIMIT))
    architecture = fields.Str(allow_none=True, validate=architecture)


class AwsSchema(_Strict):
    region = fields.Str(allow_none=True)
    vpc_id = fields.Str(allow_none=True)
    subnet_ids = fields.List(fields.Str(), allow_none=True)
    security_group_ids = fields.List(fields.Str(), allow_none=True)
    aws_access_key_id = fields.Str(allow_none=True)
    aws_secret_access_key = fields.Str(allow_none=True)
    aws_session_token = fields.Str(allow_none=True)
    profile = fields.Str(allow_none=True)
    lambda_execution_role_name = fields.Str(allow_none=True)
    code_bucket = fields.Str(allow_none=True)


class PluginBlockSchema(_Strict):
    name = fields.Str(allow_none=True)
    options = fields.Dict(keys=fields.Str(), load_default=dict)

    @pre_load
    def _shorthand(self, data: Any, **kwargs: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


#: the levels a ``logging:`` block routes (written in any case)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
log_level = validate.OneOf(LOG_LEVELS, error="{input!r} is not a level: DEBUG, INFO, WARNING, ERROR or CRITICAL")


def _upper_level(data: Any) -> Any:
    if isinstance(data, dict) and isinstance(data.get("level"), str):
        return {**data, "level": data["level"].upper()}
    return data


class LogRouteSchema(_Strict):
    """One ``logging.routes`` entry: ``{name: file, options: {...}, level: INFO}``, or just the name."""

    name = fields.Str(required=True, validate=validate.Length(min=1, error="must not be empty"))
    options = fields.Dict(keys=fields.Str(), load_default=dict)
    level = fields.Str(load_default=None, allow_none=True, validate=log_level)

    @pre_load
    def _shorthand(self, data: Any, **kwargs: Any) -> Any:
        return _upper_level({"name": data} if isinstance(data, str) else data)


class LoggingAwsSchema(_Strict):
    """``logging.aws``: what setup subscribes the workflow's CloudWatch log groups to (the lambda provider)."""

    destination_arn = fields.Str(required=True, validate=validate.Regexp(
        r"arn:[a-z-]+:(kinesis|firehose|lambda):", error="{input!r} is not the ARN of a Kinesis stream, a Firehose "
                                                         "delivery stream or a Lambda function"))
    role_arn = fields.Str(load_default=None, allow_none=True, validate=validate.Regexp(
        r"arn:[a-z-]+:iam::[0-9]*:role/", error="{input!r} is not an IAM role's ARN"))
    filter_pattern = fields.Str(load_default="")


class LoggingSchema(_Strict):
    level = fields.Str(load_default="DEBUG", validate=log_level)
    buffer = WholeNumber(load_default=10_000, validate=validate.Range(1, 10_000_000))
    routes = fields.List(fields.Nested(LogRouteSchema), load_default=list)
    aws = fields.Nested(LoggingAwsSchema, load_default=None, allow_none=True)

    @pre_load
    def _level(self, data: Any, **kwargs: Any) -> Any:
        return _upper_level(data)


class MonitoringSchema(_Strict):
    """``monitoring:``: alarm thresholds (null leaves that alarm out), where alarms notify, the dashboard (defaults in
    :class:`xflow.core.model.MonitoringChoice`)."""

    errors = WholeNumber(allow_none=True, validate=validate.Range(1, 10**9))
    throttles = WholeNumber(allow_none=True, validate=validate.Range(1, 10**9))
    iterator_age = fields.Float(allow_none=True, validate=validate.Range(min=0, min_inclusive=False, max=7 * 86400))
    dead_letters = WholeNumber(allow_none=True, validate=validate.Range(1, 10**9))
    period = WholeNumber(validate=validate.OneOf([10, 30, *range(60, 86401, 60)],
                                                 error="must be 10, 30 or a multiple of 60 (seconds), up to 86400"))
    evaluation_periods = WholeNumber(validate=validate.Range(1, 1440))
    email = fields.List(fields.Email(), validate=validate.Length(max=20))
    sns_topic_arn = fields.Str(allow_none=True, validate=validate.Regexp(
        r"arn:[a-z-]+:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_.-]{1,256}\Z", error="{input!r} is not an SNS topic's ARN"))
    dashboard = fields.Bool()

    @pre_load
    def _one_address(self, data: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("email"), str):
            return {**data, "email": [data["email"]]}
        return data

    @validates_schema
    def _consistent(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("email") and data.get("sns_topic_arn"):
            raise ValidationError("give 'email' (setup makes a topic and subscribes it) or 'sns_topic_arn' (your topic), "
                                  "not both", "email")
        if data.get("period", 60) * data.get("evaluation_periods", 1) > 86400:
            raise ValidationError("period times evaluation_periods must be at most 86400 seconds (one day)",
                                  "evaluation_periods")


def _strategy(value: str) -> None:
    from xflow.core.rollout import parse_strategy

    try:
        parse_strategy(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


class DeploySchema(_Strict):
    """``deploy:``: how setup moves traffic to new versions (:mod:`xflow.core.rollout`); a bare strategy text is
    ``deploy: {strategy: ...}``."""

    strategy = fields.Str(load_default="all-at-once", validate=_strategy)
    alarms = fields.List(fields.Str(validate=validate.Length(1, 255)), load_default=list)
    max_errors = WholeNumber(load_default=0, validate=validate.Range(0, 10**9))

    @pre_load
    def _bare(self, data: Any, **kwargs: Any) -> Any:
        return {"strategy": data} if isinstance(data, str) else data


class WorkflowSchema(_Strict):
    workflow_id = fields.Str(validate=validate.Regexp(WORKFLOW_ID, error="{input!r} is not a valid workflow id"))
    stage = fields.Str(allow_none=True, validate=validate.Regexp(STAGE_NAME, error=f"{{input!r}} is not a valid stage "
                                                                                f"name: {STAGE_RULE}"))
    description = fields.Str()
    general = fields.Nested(GeneralSchema, load_default=dict)
    aws = fields.Nested(AwsSchema, load_default=dict, allow_none=True)
    lambdas = fields.List(fields.Nested(FunctionSchema))
    functions = fields.List(fields.Nested(FunctionSchema))
    subscriptions = fields.List(fields.Nested(SubscriptionSchema), required=True,
                                validate=validate.Length(min=1, error="must list at least one event"))
    workflows = fields.List(fields.Nested(FlowSchema), validate=validate.Length(min=1, error="must list at least one flow"))
    transport = fields.Nested(PluginBlockSchema)
    provider = fields.Nested(PluginBlockSchema)
    tracker = fields.Nested(PluginBlockSchema)
    logging = fields.Nested(LoggingSchema)
    monitoring = fields.Nested(MonitoringSchema, allow_none=True)
    deploy = fields.Nested(DeploySchema, allow_none=True)


def flatten_messages(messages: Any, where: tuple[Any, ...], raw: Any) -> list[tuple[tuple[Any, ...], str]]:
    """marshmallow's nested messages as (path, message); ``raw`` is the file's value at ``where``.

    Keys are field names, the file's own keys (text) or list positions (int); none is converted. Messages
    about the value itself come under ``_schema``, and so does an unknown key that is itself named ``_schema``.
    """
    if isinstance(messages, dict):
        flat = []
        for key, value in messages.items():
            if key == "_schema":
                for message in value if isinstance(value, list) else [value]:
                    if message == "Unknown field." and isinstance(raw, dict) and "_schema" in raw:
                        flat.append((where + ("_schema",), message))
                    else:
                        flat.extend(flatten_messages(message, where, raw))
                continue
            child = raw.get(key) if isinstance(raw, dict) else (
                raw[key] if isinstance(raw, list) and isinstance(key, int) and 0 <= key < len(raw) else None)
            flat.extend(flatten_messages(value, where + (key,), child))
        return flat
    if isinstance(messages, list):
        flat = []
        for item in messages:
            flat.extend(flatten_messages(item, where, raw) if isinstance(item, (dict, list)) else [(where, str(item))])
        return flat
    return [(where, str(messages))]


_SCHEMA_KEYS: dict[tuple[str, ...], list[str]] = {
    (): list(WorkflowSchema().fields),
    ("lambdas",): list(FunctionSchema().fields),
    ("functions",): list(FunctionSchema().fields),
    ("subscriptions",): list(SubscriptionSchema().fields),
    ("workflows",): list(FlowSchema().fields),
    ("general",): list(GeneralSchema().fields),
    ("aws",): list(AwsSchema().fields),
    ("transport",): ["name", "options"],
    ("provider",): ["name", "options"],
    ("tracker",): ["name", "options"],
    ("logging",): list(LoggingSchema().fields),
    ("logging", "routes"): list(LogRouteSchema().fields),
    ("logging", "aws"): list(LoggingAwsSchema().fields),
    ("monitoring",): list(MonitoringSchema().fields),
    ("deploy",): list(DeploySchema().fields),
}


def explain(where: tuple[Any, ...], message: str) -> str:
    if message == "Unknown field." and where:
        return _unknown_key(tuple(p for p in where[:-1] if not isinstance(p, int)), str(where[-1]))
    if message == "Missing data for required field.":
        return "missing required field"
    if message == "Invalid input type.":
        return "must be a mapping (key: value lines)"
    if message == "Not a valid list.":
        return "must be a list"
    return message[:1].lower() + message[1:].rstrip(".") if message else message


@functools.lru_cache(maxsize=1024)
def _unknown_key(section: tuple[str, ...], key: str) -> str:
    known = _SCHEMA_KEYS.get(section, [])
    close = difflib.get_close_matches(key, known, n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})" if known else ""
    return f"unknown key{suggestion}"
