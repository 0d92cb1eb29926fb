"""The ``http`` log destination: batches of records POSTed as JSON to an HTTP(S) endpoint.

The body (``Content-Type: application/json``, gzip-compressed with ``Content-Encoding: gzip`` unless ``gzip: false``)
is one JSON object::

    {"format": "xflow-logs/1", "records": [{"time": 1795784400.123, "level": "INFO", "workflow": "word_count",
      "execution_id": "112233", "event": "FileParsed", "event_id": "...", "function": "parser", "attempt": 1,
      "message": "parsed 42 words", "kind": "line", "seq": 0}, ...]}

each record with the fields of :class:`xflow.logs.records.LogRecord` (``trace_id`` and ``status`` when set), in
order. ``token`` is sent as ``Authorization: Bearer TOKEN``; ``headers`` adds more (their values are treated as
secrets: never shown in messages). Any 2xx answer takes the batch.
A 408, 429, 5xx answer or a connection error is tried again (``retries`` times, exponential backoff with jitter,
by tenacity; a ``Retry-After`` in seconds is honoured up to the backoff's cap); after that the batch stays in the
route's buffer and the router sends it again later. Any other 4xx answer refuses the batch for good (it is dropped,
counted, and the answer's first line logged). While the route is closing, requests and waits end by its deadline.
"""

from __future__ import annotations

import gzip
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from xflow.core.errors import XflowError
from xflow.core.interfaces import PluginContext
from xflow.core.options import Option
from xflow.core.redact import remember
from xflow.logs.destination import DeliveryRefused, LogDestination
from xflow.logs.records import LogRecord

BODY_FORMAT = "xflow-logs/1"
#: answers worth sending the same batch again for
RETRIED_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: a header's name: an RFC 9110 token
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


class RetryableAnswer(Exception):  # noqa: N818 - an answer, not a bug
    """The endpoint answered with a status worth trying again for."""

    def __init__(self, status: int, reason: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status, self.retry_after = status, retry_after


def body(records: Sequence[LogRecord]) -> bytes:
    """The JSON body of a batch (uncompressed)."""
    return json.dumps({"format": BODY_FORMAT, "records": [r.as_dict() for r in records]}, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8", "backslashreplace")


class HttpDestination(LogDestination):
    name: ClassVar[str] = "http"
    description: ClassVar[str] = "JSON batches POSTed to an HTTP endpoint (gzip, retries, bearer token)"
    options: ClassVar[tuple[Option, ...]] = (
        Option("url", str, None, "the endpoint records are POSTed to (http:// or https://)"),
        Option("token", str, None, "sent as 'Authorization: Bearer TOKEN'", secret=True),
        Option("gzip", bool, True, "compress bodies (Content-Encoding: gzip)"),
        Option("headers", dict, None, "more request headers, a mapping (values never shown)", secret=True),
        Option("timeout", "duration", 10.0, "one request's timeout", minimum=0.1),
        Option("retries", int, 4, "tries again after a 408/429/5xx answer or a connection error", minimum=0),
        Option("backoff", "duration", 0.5, "the first wait before trying again (doubles each time)", minimum=0.0),
        Option("backoff_max", "duration", 10.0, "the longest wait between tries", minimum=0.0),
        Option("batch_size", int, 500, "records per request, at most", minimum=1),
        Option("linger", "duration", 0.2, "how long to wait for a batch to fill before sending it", minimum=0.0),
    )
    #: the bodies' media type
    content_type: ClassVar[str] = "application/json"

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        option = self.context.option
        url = option("url") or self.default_url()
        if not url or not str(url).lower().startswith(("http://", "https://")):
            raise XflowError(f"log destination {self.name!r} needs url: an http:// or https:// address, not {url!r}",
                             "add the route's url option")
        self.url: str = check_url(self.name, str(url))
        self.gzip, self.timeout = option("gzip"), option("timeout")
        self.batch_size = option("batch_size")  # type: ignore[misc]  # an instance's own, from its options
        self.linger = option("linger")  # type: ignore[misc]  # an instance's own, from its options
        self.headers = {"Content-Type": self.content_type, "User-Agent": "xflow-logs"}
        self.headers.update(check_headers(self.name, option("headers") or {}))
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        if option("token"):
            self.headers["Authorization"] = f"Bearer {option('token')}"
        tries = stop_after_attempt(option("retries") + 1)
        self._retrying = Retrying(
            # no try and no wait past the closing route's deadline
            stop=lambda state: tries(state) or time.monotonic() + (state.upcoming_sleep or 0.0) >= self.give_up_at,
            wait=self._wait(wait_exponential(multiplier=option("backoff"), max=option("backoff_max"))
                            + wait_random(0, option("backoff"))),
            retry=retry_if_exception(lambda exc: isinstance(exc, RetryableAnswer | OSError)),
            reraise=True,
        )
        self.backoff_max = option("backoff_max")

    def _wait(self, backoff: Any) -> Any:
        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            if isinstance(exc, RetryableAnswer) and exc.retry_after is not None:
                return min(exc.retry_after, self.backoff_max)
            return float(backoff(state))
        return wait

    def default_url(self) -> str | None:
        """The endpoint when the ``url`` option is not given (none: it is required)."""
        return None

    def encode(self, records: Sequence[LogRecord]) -> bytes:
        """A batch's request body, uncompressed: the JSON object above."""
        return body(records)

    def send(self, records: Sequence[LogRecord]) -> None:
        data = self.encode(records)
        if self.gzip:
            data = gzip.compress(data, compresslevel=6)
        self._retrying(self._post, data)

    def _post(self, data: bytes) -> None:
        request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=max(0.05, self.time_left(self.timeout))) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            with exc:  # its connection: closed, not left to the garbage collector
                status = exc.code
                detail = _first_line(exc)
            if status in RETRIED_STATUSES:
                raise RetryableAnswer(status, detail, _retry_after(exc.headers.get("Retry-After"))) from None
            raise DeliveryRefused(f"HTTP {status} from {self.url}: {detail}") from None


def check_url(name: str, url: str) -> str:
    """``url`` when it is an http(s) address a request can be made to, else an XflowError (checked at start, not at
    each send)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError as exc:
        raise XflowError(f"log destination {name!r}: url {url!r} is not a valid address ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise XflowError(f"log destination {name!r} needs url: an http:// or https:// address, not {url!r}",
                         "add the route's url option")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise XflowError(f"log destination {name!r}: url {url!r} holds spaces or control characters",
                         "percent-encode them (%20)")
    return url


def check_headers(name: str, headers: dict[str, Any]) -> dict[str, str]:
    """The ``headers`` option as request headers; an XflowError naming a bad header, never showing a value."""
    checked: dict[str, str] = {}
    for key, value in headers.items():
        if not _HEADER_NAME.match(str(key)):
            raise XflowError(f"log destination {name!r}: headers: {str(key)!r} is not a header name",
                             "a header name is letters, digits and -!#$%&'*+.^_`|~")
        if isinstance(value, dict | list) or value is None:
            raise XflowError(f"log destination {name!r}: headers: the value of {key} is not text (not shown: it may "
                             "be a secret)")
        text = str(value)
        remember(text)
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            raise XflowError(f"log destination {name!r}: headers: the value of {key} has characters an HTTP header "
                             "cannot carry (not shown: it may be a secret)") from None
        if any(c in text for c in "\r\n\0"):
            raise XflowError(f"log destination {name!r}: headers: the value of {key} holds a line break or NUL (not "
                             "shown: it may be a secret)")
        checked[str(key)] = text
    return checked


def _first_line(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(500).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - only for the message
        text = ""
    return (text.strip().splitlines() or [str(exc.reason or "")])[0][:200]


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the backoff decides
