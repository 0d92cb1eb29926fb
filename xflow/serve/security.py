"""Who may talk to ``xflow serve``: the loopback rule, the bearer token, and the headers every response carries.

:func:`check_bind`: binding anything but a loopback address without a token is refused (one line, exit 2).
:class:`Gate`, one ASGI middleware, applies the rest:

- with a token, every route but the health check (``/ping``) and the page shell (``/``,
  ``/docs``, ``/static/...``: HTML, CSS and JavaScript that hold no data) needs ``Authorization: Bearer TOKEN``,
  compared in constant time; the web view asks for the token once and sends it with each request.
- a request another site's page makes through the user's browser is refused (403): one
  that changes something (not GET/HEAD) whose ``Origin`` is not this server, and, when no token protects the
  server, one whose ``Host`` is not a loopback name (a DNS-rebinding page). ``curl`` and other clients send no
  ``Origin`` and are not concerned.
- every answer carries ``nosniff``, no referrer, no framing, and a content security policy that lets pages run
  only the scripts and styles served here (no inline script, nothing from elsewhere). No CORS header is ever sent.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from xflow.core.errors import XflowError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: paths served without the token: the health check and the page shell (no data in them)
OPEN_PATHS = frozenset({"/ping", "/", "/docs", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
TOKEN_VARIABLE = "XFLOW_SERVE_TOKEN"
MIN_TOKEN_LENGTH = 16

HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
     b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"cache-control", b"no-store"),
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only ever reaches this machine."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token, and tokens too short to be one."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise XflowError(f"the token is {len(token)} characters long; use at least {MIN_TOKEN_LENGTH}",
                         "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if token is None and not is_loopback(host):
        raise XflowError(f"serving on {host} (beyond this machine) needs a token",
                         f"pass --token TOKEN or set {TOKEN_VARIABLE}; clients then send 'Authorization: Bearer TOKEN'")


class Gate:
    """ASGI middleware doing all of the above in one layer: the token (``401``, open paths aside), cross-site writes
    and, with ``loopback_hosts_only``, non-loopback Host headers (``403``), and :data:`HEADERS` on every answer."""

    def __init__(self, app: ASGIApp, token: str | None = None, loopback_hosts_only: bool = True) -> None:
        self.app = app
        self.expected = b"Bearer " + token.encode("utf-8") if token is not None else None
        self.loopback_hosts_only = loopback_hosts_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        if self.expected is not None and not _is_open(scope.get("path", "")):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                reason = "a token is needed" if not given else "the token is wrong"
                await _send_json(send, 401, {"error": f"{reason}: send the header 'Authorization: Bearer TOKEN'"},
                                 [(b"www-authenticate", b'Bearer realm="xflow"')])
                return
        problem = self._cross_site(scope, headers)
        if problem is not None:
            await _send_json(send, 403, {"error": problem})
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                message["headers"] = [*message.get("headers", ()), *(h for h in HEADERS if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)

    def _cross_site(self, scope: Scope, headers: dict[bytes, bytes]) -> str | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if self.loopback_hosts_only and host and not is_loopback(_host_name(host)):
            return f"Host {host!r} is not this machine: this server answers only on its loopback names"
        origin = headers.get(b"origin")
        if origin is not None and scope.get("method") not in ("GET", "HEAD"):
            given = origin.decode("latin-1")
            if given.partition("://")[2].rstrip("/") != host:
                return f"a cross-site request (Origin {given!r}) may not change anything here"
        return None


async def _send_json(send: Send, status: int, payload: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or []), *HEADERS]})
    await send({"type": "http.response.body", "body": body})


def _host_name(host: str) -> str:
    """The name part of a Host header (``[::1]:8000`` -> ``::1``)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
