"""The one place where boto3 sessions and clients are made, and AWS failures become XflowErrors.

Region comes from the workflow's ``aws:`` block (``region:``), else the environment / AWS config
(``AWS_REGION``, ``AWS_DEFAULT_REGION``, profile). ``AWS_ENDPOINT_URL`` (and the per-service
``AWS_ENDPOINT_URL_<SERVICE>``) are honoured by boto3 itself. Credentials written in the file
(``aws_access_key_id`` / ``aws_secret_access_key`` / ``aws_session_token``) are used but never
printed or logged; otherwise the standard credential chain applies.

Failures: botocore's ``standard`` retry mode (``AWS_RETRY_MODE=adaptive`` and ``AWS_MAX_ATTEMPTS`` are
honoured) retries throttling, 5xx answers, dropped connections and timeouts with exponential backoff and
jitter: ``COMMAND_ATTEMPTS`` tries for a call a command makes, ``WORKER_ATTEMPTS`` for the clients of
long-running work (``client(service, long_running=True)``: a worker's leases, checkpoints and tracker
writes). :func:`retrying` adds tenacity around operations that must ride out more than that, and
:func:`while_propagating` around a call that names a role or policy IAM may not have spread yet; :func:`ignoring`
lets an error that means "already gone" (or "already there") pass. What still fails is translated by
:func:`translate_errors`: a transient failure becomes a :class:`~xflow.core.errors.BackendUnavailable` (exit 1;
workers wait it out), in three kinds --
:class:`EndpointUnreachable` (nothing answers: connection refused, connect timeout),
:class:`ConnectionDropped` (a connection closed or timed out mid-call) and :class:`ServiceBusy`
(throttling or a 5xx after the retries) -- and anything else (access denied, validation, a missing
resource, no credentials or region) a plain :class:`~xflow.core.errors.XflowError` (exit 2). Connect
timeouts are short so that a command against an endpoint that is not there fails within seconds.

Also here, for every AWS backend: :data:`TAG_KEY`, the tag put on what xflow creates, and the CloudWatch Logs
group operations that the cloudwatch tracker and the lambda provider both perform.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_fixed, wait_random_exponential

from xflow.core.errors import BackendUnavailable, XflowError

CONNECT_TIMEOUT = 3
READ_TIMEOUT = 20
ENV_CONNECT_TIMEOUT = "XFLOW_AWS_CONNECT_TIMEOUT"
#: tries botocore makes per call (the first one included): for a command, and for long-running work
COMMAND_ATTEMPTS = 3
WORKER_ATTEMPTS = 8
#: how long :func:`retrying` goes on by default (seconds), and its first and longest wait
RETRY_SECONDS = 20.0
RETRY_FIRST_WAIT = 0.1
RETRY_MAX_WAIT = 2.0

#: error codes that mean "too many requests": the call may work a little later
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "RequestLimitExceeded", "BandwidthLimitExceeded", "SlowDown",
    "RequestThrottled", "TransactionInProgressException", "PriorRequestNotComplete", "KMSThrottlingException",
})
#: error codes of a service-side failure (usually with a 5xx status, which counts on its own too)
SERVER_ERROR_CODES = frozenset({
    "InternalFailure", "InternalError", "InternalErrorException", "InternalServerError", "InternalServiceError",
    "InternalServiceException", "ServiceUnavailable", "ServiceUnavailableException", "ServiceFailure",
    "ServiceException", "RequestTimeout", "RequestTimeoutException", "OperationAbortedException",
    "EC2ThrottledException",
})

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


class EndpointUnreachable(BackendUnavailable):
    """Nothing answers at the AWS endpoint (connection refused, unknown host, connect timeout)."""


class ConnectionDropped(BackendUnavailable):
    """A connection to the AWS endpoint was closed, reset or timed out before its answer came."""


class ServiceBusy(BackendUnavailable):
    """AWS throttled the call or failed it with a 5xx, again after botocore's retries."""


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
        if not self.session.region_name and os.environ.get("AWS_REGION"):
            # botocore reads AWS_DEFAULT_REGION and the profile, not AWS_REGION (which the other SDKs, Lambda and CI
            # actions set): the next place to look
            kwargs["region_name"] = os.environ["AWS_REGION"]
            self.session = boto3.session.Session(**kwargs)
        self.region: str | None = self.session.region_name
        self._clients: dict[tuple[str, int, bool], Any] = {}  # (service, thread, long_running)
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

    def client(self, service: str, *, long_running: bool = False) -> Any:
        """The client of ``service`` for this thread; ``long_running`` clients try each call more often."""
        key = (service, threading.get_ident(), long_running)
        with self._lock:
            found = self._clients.get(key)
        if found is not None:
            return found
        self.require_region()
        self.check_credentials()
        from botocore.config import Config

        connect_timeout = float(os.environ.get(ENV_CONNECT_TIMEOUT, CONNECT_TIMEOUT))
        config = Config(connect_timeout=connect_timeout, read_timeout=READ_TIMEOUT,
                        retries=retry_config(WORKER_ATTEMPTS if long_running else COMMAND_ATTEMPTS))
        with self._lock:  # a boto3 session is not thread-safe: make clients one at a time
            made = self._clients.get(key) or self.session.client(service, config=config)
            self._clients[key] = made
        return made

    def account_id(self) -> str:
        if self._account is None:
            with translate_errors("reading the AWS account id"):
                self._account = self.client("sts").get_caller_identity()["Account"]
        return self._account

    def endpoint(self, service: str) -> str:
        return str(self.client(service).meta.endpoint_url)


def retry_config(attempts: int) -> dict[str, Any]:
    """botocore's retry settings: ``standard`` mode (or ``AWS_RETRY_MODE=adaptive``), ``attempts`` tries a call
    (or ``AWS_MAX_ATTEMPTS``)."""
    mode = os.environ.get("AWS_RETRY_MODE", "standard")
    if mode not in ("standard", "adaptive"):
        mode = "standard"
    with contextlib.suppress(KeyError, ValueError):
        attempts = max(1, int(os.environ["AWS_MAX_ATTEMPTS"]))
    return {"mode": mode, "total_max_attempts": attempts}


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
def ignoring(*codes: str) -> Iterator[None]:
    """Inside: an AWS error with one of ``codes`` ends the block quietly (the thing is gone already, or there already).

    Put it inside :func:`translate_errors`, which would turn the error into an XflowError first::

        with translate_errors("deleting queue Q"), ignoring("QueueDoesNotExist"):
            sqs.delete_queue(QueueUrl=url)
    """
    if not codes:
        raise ValueError("ignoring() needs the error codes to ignore")
    try:
        yield
    except Exception as exc:
        if not is_client_error(exc, *codes):
            raise


def while_propagating(code: str, mentioning: str = "role", seconds: float = 60, every: float = 3) -> Retrying:
    """tenacity that calls again every ``every`` s, for up to ``seconds``, while AWS answers ``code`` with a message
    that mentions ``mentioning``: IAM is eventually consistent, and another service may not yet see (or be allowed to
    assume) a role or policy just made. ``while_propagating("InvalidParameterValueException")(call)``."""
    def not_yet(exc: BaseException) -> bool:
        return is_client_error(exc, code) and mentioning in str(exc).lower()

    return Retrying(retry=retry_if_exception(not_yet), wait=wait_fixed(every), stop=stop_after_delay(seconds),
                    reraise=True)


def _busy_response(response: Any) -> bool:
    """Whether an AWS error response (a ClientError's, a waiter's last) is throttling or a service failure."""
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in THROTTLING_CODES or code in SERVER_ERROR_CODES or (isinstance(status, int) and status >= 500)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (a botocore exception, or one :func:`translate_errors` made) may pass if tried again later:
    throttling, a 5xx, a dropped or timed-out connection, an endpoint that does not answer."""
    if isinstance(exc, BackendUnavailable):
        return True
    if isinstance(exc, XflowError):
        return False
    try:
        from botocore import exceptions as bx
    except ImportError:
        return False
    if isinstance(exc, bx.SSLError | bx.ProxyConnectionError):
        return False
    if isinstance(exc, bx.ConnectionError | bx.HTTPClientError):
        return True
    if isinstance(exc, bx.ClientError):
        return _busy_response(exc.response)
    if isinstance(exc, bx.WaiterError):
        return _busy_response(getattr(exc, "last_response", None))
    return False


def _endpoint_of(exc: BaseException) -> str:
    kwargs = getattr(exc, "kwargs", None)
    endpoint = kwargs.get("endpoint_url") if isinstance(kwargs, dict) else None
    return str(endpoint or os.environ.get("AWS_ENDPOINT_URL") or "the AWS endpoint").rstrip("/")


@contextlib.contextmanager
def translate_errors(doing: str) -> Iterator[None]:
    """Turn AWS failures into one-line errors: transient ones into :class:`BackendUnavailable` (see the module's
    notes), the rest (no credentials or region, access denied, validation, missing resources) into XflowErrors."""
    try:
        yield
    except XflowError:
        raise
    except Exception as exc:
        try:
            from botocore import exceptions as bx
        except ImportError:
            raise
        endpoint = _endpoint_of(exc)
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            raise XflowError(f"{doing}: no usable AWS credentials",
                             "configure the standard AWS credential chain") from None
        if isinstance(exc, bx.NoRegionError):
            raise XflowError(f"{doing}: no AWS region", REGION_HINT) from None
        if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
            where = f"the AWS endpoint at {endpoint}" if "://" in endpoint else endpoint
            raise EndpointUnreachable(f"{doing}: {where} cannot be reached ({type(exc).__name__})",
                                      "check AWS_ENDPOINT_URL, the network, and that the service is running") from None
        if isinstance(exc, bx.ReadTimeoutError):
            raise ConnectionDropped(f"{doing}: {endpoint} did not answer within {READ_TIMEOUT} s (ReadTimeoutError)",
                                    "the service is overloaded or stuck; try again later") from None
        if isinstance(exc, bx.ConnectionClosedError | bx.ResponseStreamingError) or (
                is_transient(exc) and isinstance(exc, bx.ConnectionError | bx.HTTPClientError)):
            raise ConnectionDropped(f"{doing}: the connection to {endpoint} was dropped ({type(exc).__name__})",
                                    "the call was tried again with backoff; check that the service and the network "
                                    "to it are healthy") from None
        if isinstance(exc, bx.ClientError):
            message = exc.response.get("Error", {}).get("Message", "") or str(exc)
            code = error_code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if is_transient(exc):
                throttled = code in THROTTLING_CODES
                raise ServiceBusy(f"{doing}: {code or f'HTTP {status}'}: {message}",
                                  "AWS throttled the calls; they were retried with backoff (for a stream: add shards)"
                                  if throttled else "AWS failed the call (a 5xx) after retries with backoff; it "
                                  "usually passes") from None
            hint = None
            if code in ("UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
                        "InvalidSignatureException", "SignatureDoesNotMatch", "AccessDenied",
                        "AccessDeniedException"):
                hint = "check the AWS credentials and their permissions"
            raise XflowError(f"{doing}: {code}: {message}", hint) from None
        if isinstance(exc, bx.WaiterError) and is_transient(exc):
            raise ServiceBusy(f"{doing}: {exc}", "AWS throttled or failed the calls while waiting; try again") from None
        if isinstance(exc, bx.BotoCoreError):
            raise XflowError(f"{doing}: {exc}") from None
        raise


def _worth_retrying(exc: BaseException, unreachable: bool) -> bool:
    return isinstance(exc, BackendUnavailable) and (unreachable or not isinstance(exc, EndpointUnreachable))


def retrying(seconds: float = RETRY_SECONDS, *, unreachable: bool = False,
             stop: Callable[[RetryCallState], bool] | None = None, first_wait: float = RETRY_FIRST_WAIT,
             max_wait: float = RETRY_MAX_WAIT) -> Retrying:
    """tenacity around an AWS operation that botocore already retried, for what must ride out more.

    Tries again on :class:`BackendUnavailable` (use it around code in :func:`translate_errors`) with
    exponential backoff and full jitter (a random wait up to ``first_wait`` doubled each time, at most
    ``max_wait``), for up to ``seconds`` (or until ``stop``); the last error is raised as is. An endpoint
    that cannot be reached is not tried again unless ``unreachable`` is true, so that a command against an
    endpoint that is not there still fails within seconds.
    """
    return Retrying(retry=retry_if_exception(lambda exc: _worth_retrying(exc, unreachable)),
                    wait=wait_random_exponential(multiplier=first_wait, max=max_wait),
                    stop=stop or stop_after_delay(seconds), reraise=True)


# ---------------------------------------------------------------------------------------------- shared by the backends

#: the tag xflow puts on what it creates, valued with the workflow id
TAG_KEY = "xflow:workflow"


def create_log_group(logs: Any, group: str, workflow_id: str, retention_days: int) -> None:
    """Create a CloudWatch log group tagged with the workflow (kept if it exists) and set its retention."""
    with translate_errors(f"creating log group {group}"), ignoring("ResourceAlreadyExistsException"):
        logs.create_log_group(logGroupName=group, tags={TAG_KEY: workflow_id})
    set_log_retention(logs, group, retention_days)


def set_log_retention(logs: Any, group: str, retention_days: int) -> None:
    with translate_errors(f"setting the retention of log group {group}"):
        logs.put_retention_policy(logGroupName=group, retentionInDays=retention_days)


def delete_log_group(logs: Any, group: str) -> None:
    """Delete a log group; one that is already gone is fine."""
    with translate_errors(f"deleting log group {group}"), ignoring("ResourceNotFoundException"):
        logs.delete_log_group(logGroupName=group)
