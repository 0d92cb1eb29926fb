"""The one place where boto3 sessions and clients are made, and AWS failures become XflowErrors.

Region comes from the workflow's ``aws:`` block (``region:``), else the environment / AWS config
(``AWS_REGION``, ``AWS_DEFAULT_REGION``, profile). ``AWS_ENDPOINT_URL`` (and the per-service
``AWS_ENDPOINT_URL_<SERVICE>``) are honoured by boto3 itself. Credentials written in the file
(``aws_access_key_id`` / ``aws_secret_access_key`` / ``aws_session_token``) are used but never
printed or logged; otherwise the standard credential chain applies. Connect timeouts are short so
that an unreachable endpoint is an :class:`XflowError` within seconds.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from xflow.core.errors import XflowError

CONNECT_TIMEOUT = 3
READ_TIMEOUT = 20
ENV_CONNECT_TIMEOUT = "XFLOW_AWS_CONNECT_TIMEOUT"

#: keys of the workflow's ``aws:`` block that hold secrets: used, never shown
SECRET_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
REGION_HINT = ("set aws.region in the workflow file, or AWS_REGION or AWS_DEFAULT_REGION in the environment "
               "(or a region in the AWS profile)")


def _import_boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise XflowError("the AWS backends need boto3, which is not installed",
                         "pip install 'xflow[aws]'") from None
    return boto3


def connection_errors() -> tuple[type[BaseException], ...]:
    """botocore's exceptions that mean the endpoint could not be reached or we could not sign."""
    try:
        from botocore import exceptions as bx
    except ImportError:
        return ()
    return (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
            bx.NoCredentialsError, bx.PartialCredentialsError, bx.NoRegionError, bx.ConnectionClosedError)


class AwsSession:
    """A boto3 session for one workflow, with clients made once per service and thread."""

    def __init__(self, aws: Mapping[str, Any] | None = None, region: str | None = None) -> None:
        boto3 = _import_boto3()
        aws = dict(aws or {})
        kwargs: dict[str, Any] = {}
        for key in SECRET_KEYS:
            if aws.get(key):
                kwargs[key] = str(aws[key])
        region = region or aws.get("region") or None
        if region:
            kwargs["region_name"] = str(region)
        profile = aws.get("profile")
        if profile:
            kwargs["profile_name"] = str(profile)
        try:
            self.session = boto3.session.Session(**kwargs)
        except Exception as exc:  # ProfileNotFound and friends
            raise XflowError(f"cannot make an AWS session: {exc}", "check the aws: block and your AWS config") from None
        self.region: str | None = self.session.region_name
        self._clients: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()
        self._account: str | None = None

    def require_region(self) -> str:
        if not self.region:
            raise XflowError("no AWS region", REGION_HINT)
        return self.region

    def check_credentials(self) -> None:
        """An XflowError, said plainly, when no credentials can be found."""
        if self.session.get_credentials() is None:
            raise XflowError(
                "no AWS credentials found",
                "use the standard credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, "
                "a role); for a local endpoint any dummy values do",
            )

    def client(self, service: str) -> Any:
        key = (service, threading.get_ident())
        with self._lock:
            found = self._clients.get(key)
        if found is not None:
            return found
        self.require_region()
        self.check_credentials()
        from botocore.config import Config

        connect_timeout = float(os.environ.get(ENV_CONNECT_TIMEOUT, CONNECT_TIMEOUT))
        config = Config(connect_timeout=connect_timeout, read_timeout=READ_TIMEOUT,
                        retries={"max_attempts": 2, "mode": "standard"})
        made = self.session.client(service, config=config)
        with self._lock:
            self._clients[key] = made
        return made

    def account_id(self) -> str:
        if self._account is None:
            with translate_errors("reading the AWS account id"):
                self._account = self.client("sts").get_caller_identity()["Account"]
        return self._account

    def endpoint(self, service: str) -> str:
        return str(self.client(service).meta.endpoint_url)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError ("ResourceNotFoundException"), else ""."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def is_client_error(exc: BaseException, *codes: str) -> bool:
    try:
        from botocore.exceptions import ClientError
    except ImportError:
        return False
    return isinstance(exc, ClientError) and (not codes or error_code(exc) in codes)


@contextlib.contextmanager
def translate_errors(doing: str) -> Iterator[None]:
    """Turn unreachable endpoints, missing credentials and AWS API errors into one-line XflowErrors."""
    try:
        yield
    except XflowError:
        raise
    except Exception as exc:
        try:
            from botocore import exceptions as bx
        except ImportError:
            raise
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        where = f" at {endpoint}" if endpoint else ""
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            raise XflowError(f"{doing}: no usable AWS credentials",
                             "configure the standard AWS credential chain") from None
        if isinstance(exc, bx.NoRegionError):
            raise XflowError(f"{doing}: no AWS region", REGION_HINT) from None
        if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ConnectionClosedError
                      | bx.ReadTimeoutError):
            raise XflowError(f"{doing}: the AWS endpoint{where} cannot be reached ({type(exc).__name__})",
                             "check AWS_ENDPOINT_URL, the network, and that the service is running") from None
        if isinstance(exc, bx.ClientError):
            message = exc.response.get("Error", {}).get("Message", "") or str(exc)
            code = error_code(exc)
            hint = None
            if code in ("UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
                        "InvalidSignatureException", "SignatureDoesNotMatch", "AccessDenied",
                        "AccessDeniedException"):
                hint = "check the AWS credentials and their permissions"
            raise XflowError(f"{doing}: {code}: {message}", hint) from None
        if isinstance(exc, bx.BotoCoreError):
            raise XflowError(f"{doing}: {exc}") from None
        raise


#: the tag xflow puts on what it creates, valued with the workflow id
TAG_KEY = "xflow:workflow"


def create_log_group(logs: Any, group: str, workflow_id: str, retention_days: int) -> None:
    """Create a CloudWatch log group tagged with the workflow (kept if it exists) and set its retention."""
    with translate_errors(f"creating log group {group}"):
        try:
            logs.create_log_group(logGroupName=group, tags={TAG_KEY: workflow_id})
        except Exception as exc:
            if not is_client_error(exc, "ResourceAlreadyExistsException"):
                raise
    set_log_retention(logs, group, retention_days)


def set_log_retention(logs: Any, group: str, retention_days: int) -> None:
    with translate_errors(f"setting the retention of log group {group}"):
        logs.put_retention_policy(logGroupName=group, retentionInDays=retention_days)


def delete_log_group(logs: Any, group: str) -> None:
    """Delete a log group; one that is already gone is fine."""
    with translate_errors(f"deleting log group {group}"):
        try:
            logs.delete_log_group(logGroupName=group)
        except Exception as exc:
            if not is_client_error(exc, "ResourceNotFoundException"):
                raise
