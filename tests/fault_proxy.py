"""A loopback HTTP proxy that injects AWS faults between boto3 and a moto server (a test helper).

Point ``AWS_ENDPOINT_URL`` at :attr:`FaultProxy.url` instead of the moto server; the proxy forwards
every request and, following its :class:`Rule` s, answers some of them with a fault instead:

- ``"500"`` / ``"503"``: the status with the service's JSON error (``InternalFailure`` /
  ``InternalServerError`` / ``ServiceUnavailable``);
- ``"throttle"``: HTTP 400 with ``ProvisionedThroughputExceededException`` (Kinesis, DynamoDB) or
  ``ThrottlingException`` (CloudWatch Logs, others);
- ``"drop"``: the connection is closed without a response, the request never reaches the server;
- ``"drop_after"``: the request is served by the server, then the connection is closed without the
  response (the client cannot tell whether it was done);
- ``"partial"`` (Kinesis ``PutRecords`` only): some entries are taken out of the request before it is
  forwarded and are reported failed with ``ProvisionedThroughputExceededException`` in the response,
  as Kinesis does when a shard is over its write budget: those records are not stored.

Operations are named by the ``X-Amz-Target`` header of the JSON APIs (``Kinesis_20131202.GetRecords``:
``GetRecords``), the ``Action`` of query APIs, else ``METHOD /path``. What was injected is counted
per (operation, fault) in :attr:`FaultProxy.injected`; what reached the server in
:attr:`FaultProxy.forwarded`. The proxy listens on 127.0.0.1 only, forwards only to a loopback
server, reads at most ``MAX_BODY`` bytes a request, and stops (closing every connection) with
:meth:`FaultProxy.stop` or the ``with`` block.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import http.server
import json
import random
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: the faults a rule may inject
FAULTS = ("500", "503", "throttle", "drop", "drop_after", "partial")
MAX_BODY = 16 * 1024 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "content-length"}
#: idle seconds after which a client connection is closed
IDLE_TIMEOUT = 60.0
UPSTREAM_TIMEOUT = 60.0


@dataclass
class Rule:
    """Inject one of ``faults`` into a matching request with probability ``rate``, at most ``count`` times.

    ``operations`` (names such as ``GetRecords`` or full targets such as ``DynamoDB_20120810.UpdateItem``)
    and ``services`` (``kinesis``, ``dynamodb``, ``logs``: the target's prefix) narrow what matches (empty:
    everything); ``body_contains`` requires a substring of the request body (``"SET checkpoint"``).
    A fault that does not apply to a request (``partial`` outside PutRecords) is not chosen for it.
    """

    faults: tuple[str, ...] = ("503",)
    rate: float = 1.0
    operations: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    body_contains: str | None = None
    count: int | None = None
    #: how many times this rule injected a fault
    used: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown or not self.faults:
            raise ValueError(f"unknown faults {sorted(unknown)}; choose from {FAULTS}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate is a probability")

    def matches(self, request: _Request) -> bool:
        if self.count is not None and self.used >= self.count:
            return False
        if self.operations and request.operation not in self.operations and request.target not in self.operations:
            return False
        if self.services and request.service not in self.services:
            return False
        return self.body_contains is None or self.body_contains.encode() in request.body

    def applicable(self, request: _Request) -> list[str]:
        return [f for f in self.faults if f != "partial" or request.operation == "PutRecords"]


@dataclass
class _Request:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    target: str
    operation: str
    service: str


def _describe(method: str, path: str, headers: http.client.HTTPMessage, body: bytes) -> tuple[str, str, str]:
    """(target, operation, service) of a request."""
    target = headers.get("X-Amz-Target", "")
    if target:
        prefix, _, operation = target.rpartition(".")
        return target, operation, prefix.split("_")[0].lower()
    if headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
        action = urllib.parse.parse_qs(body.decode("latin-1")).get("Action", [""])[0]
        if action:
            return action, action, ""
    return "", f"{method} {urllib.parse.urlsplit(path).path}", ""


def _error(request: _Request, kind: str) -> tuple[int, dict[str, str]]:
    """The status and JSON error body of an injected fault, in the service's shape."""
    dynamodb = request.service == "dynamodb"
    if kind == "throttle":
        throughput = request.service in ("kinesis", "dynamodb")
        code, status = ("ProvisionedThroughputExceededException" if throughput else "ThrottlingException"), 400
    elif kind == "500":
        code, status = ("InternalServerError" if dynamodb else "InternalFailure"), 500
    else:
        code, status = "ServiceUnavailable", 503
    if dynamodb:
        code = f"com.amazonaws.dynamodb.v20120810#{code}"
    return status, {"__type": code, "message": f"injected by the fault proxy ({kind})"}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: a response goes out in one write (headers and body), without Nagle's delay
    wbufsize = 256 * 1024
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(IDLE_TIMEOUT)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.proxy._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise ValueError("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        try:
            body = self._body()
        except (ValueError, OSError):
            self.close_connection = True
            self.send_error(413)
            return
        target, operation, service = _describe(self.command, self.path, self.headers, body)
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
        request = _Request(self.command, self.path, headers, body, target, operation, service)
        proxy = self.server.proxy
        fault = proxy._choose(request)
        if fault in ("500", "503", "throttle"):
            status, error = _error(request, fault)
            self._respond(status, [("Content-Type", "application/x-amz-json-1.1"),
                                   ("x-amzn-RequestId", "fault-proxy")], json.dumps(error).encode())
            return
        if fault == "drop":
            self._drop()
            return
        failed: list[int] = []
        if fault == "partial":
            request, failed = proxy._strip(request)
        if fault == "partial" and not json.loads(request.body)["Records"]:
            status, reply_headers, reply = 200, [("Content-Type", "application/x-amz-json-1.1")], b""
        else:
            try:
                status, reply_headers, reply = proxy._forward(request)
            except OSError:  # the server is gone: so is the client's answer
                self._drop()
                return
        if fault == "drop_after":
            self._drop()
            return
        if fault == "partial" and status == 200:
            reply = _merge_failures(reply, failed)
        self._respond(status, reply_headers, reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve

    def _respond(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _drop(self) -> None:
        """Close the connection at once, without a response (a reset, not an orderly end)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)


def _merge_failures(reply: bytes, failed: list[int]) -> bytes:
    """Put failed entries back at their places in a PutRecords response of the entries that were forwarded."""
    answer = json.loads(reply) if reply else {"Records": []}
    accepted = iter(answer.get("Records", []))
    total = len(answer.get("Records", [])) + len(failed)
    records = []
    for i in range(total):
        if i in failed:
            records.append({"ErrorCode": "ProvisionedThroughputExceededException",
                            "ErrorMessage": "Rate exceeded for shard (injected by the fault proxy)"})
        else:
            records.append(next(accepted))
    answer["Records"] = records
    answer["FailedRecordCount"] = int(answer.get("FailedRecordCount") or 0) + len(failed)
    return json.dumps(answer).encode()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy


class FaultProxy:
    """The proxy; use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(self, upstream: str, *, seed: int | None = None) -> None:
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy forwards to a loopback http server only, not {upstream}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.rules: list[Rule] = []
        self.injected: collections.Counter[tuple[str, str]] = collections.Counter()
        self.forwarded: collections.Counter[str] = collections.Counter()
        #: PutRecords entries reported failed by ``partial`` faults
        self.failed_entries = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> FaultProxy:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fault proxy is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- rules and counts
    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def injected_count(self, operation: str | None = None, fault: str | None = None) -> int:
        with self._lock:
            return sum(n for (op, kind), n in self.injected.items()
                       if (operation is None or op == operation) and (fault is None or kind == fault))

    def _choose(self, request: _Request) -> str | None:
        with self._lock:
            for rule in self.rules:
                if not rule.matches(request):
                    continue
                faults = rule.applicable(request)
                if not faults or self._random.random() >= rule.rate:
                    continue
                fault = self._random.choice(faults)
                rule.used += 1
                self.injected[(request.operation, fault)] += 1
                return fault
        return None

    def _strip(self, request: _Request) -> tuple[_Request, list[int]]:
        """Take some PutRecords entries out of the request (at least one); returns the request and their indexes."""
        payload = json.loads(request.body)
        entries = payload["Records"]
        with self._lock:  # each entry fails with even odds, at least one does
            failed = [i for i in range(len(entries)) if self._random.random() < 0.5] or \
                [self._random.randrange(len(entries))]
            self.failed_entries += len(failed)
        payload["Records"] = [e for i, e in enumerate(entries) if i not in failed]
        body = json.dumps(payload).encode()
        return _Request(request.method, request.path, request.headers, body, request.target, request.operation,
                        request.service), failed

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(sock)
            else:
                self._connections.discard(sock)

    def _forward(self, request: _Request) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send the request to the server on a new connection; its status, headers and body."""
        headers = dict(request.headers)
        headers["Content-Length"] = str(len(request.body))
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=UPSTREAM_TIMEOUT)
        try:
            conn.request(request.method, request.path, body=request.body, headers=headers)
            response = conn.getresponse()
            reply = response.read()
        finally:
            conn.close()
        with self._lock:
            self.forwarded[request.operation] += 1
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        return response.status, kept, reply
