"""Test helpers for ``xflow serve``: a real server process on a free loopback port, and a small shop workflow.

``start_server`` runs ``xflow serve`` in a subprocess (the CLI, as a user would) and waits for ``/ping``;
``Server.stop`` ends it with SIGTERM and returns its exit status. Used by tests/test_serve_*.py and bench/bench_serve.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from xflow_cli_testing import clean_env, xflow_command

#: a workflow of two steps: ``charge`` fails while the file named by the data's ``fail_while`` exists (so a test
#: can make an execution fail for good, remove the cause, and re-drive it), ``ship`` always succeeds
SHOP_FLOW = """
workflow_id: shop
lambdas:
  - {name: charge, source: shop.py, handler: charge, publishes: [Charged], retries: 0,
     description: Charges the order's card}
  - {name: ship, source: shop.py, handler: ship, publishes: [Shipped], retries: 0}
subscriptions:
  - {event: Placed, subscribers: [charge]}
  - {event: Charged, subscribers: [ship]}
  - {event: Shipped, subscribers: []}
"""
SHOP_HANDLERS = """
import os


def charge(event, ctx):
    gate = event.get("fail_while")
    if gate and os.path.exists(gate):
        ctx.logger.error("card declined for order %s", event.get("order"))
        raise RuntimeError("card declined: the bank said no")
    return {"order": event.get("order"), "charged": True}


def ship(event, ctx):
    return {"order": event.get("order"), "shipped": True}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_shop(folder: Path, extra_yaml: str = "") -> Path:
    """The shop workflow and its handlers in ``folder``; returns the workflow file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shop.py").write_text(textwrap.dedent(SHOP_HANDLERS))
    path = folder / "shop.yaml"
    path.write_text(textwrap.dedent(SHOP_FLOW) + textwrap.dedent(extra_yaml))
    return path


class Server:
    """A running ``xflow serve``: ``url``, an httpx ``client`` bound to it (with the token, if any), its log."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path, token: str | None) -> None:
        self.process, self.url, self.log, self.token = process, url, log, token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=url, headers=headers, timeout=30)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(path, **kw)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit status (killed after ``timeout`` seconds: then the test fails)."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"xflow serve did not stop within {timeout} s:\n{self.output()[-3000:]}") from None
        return int(self.process.returncode)


def start_server(cwd: Path, *args: str | os.PathLike[str], token: str | None = None, timeout: float = 90,
                 env: dict[str, str] | None = None) -> Server:
    """``xflow serve ARGS --port FREE`` in ``cwd``, waited for until ``/ping`` answers."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    environment = clean_env(**(env or {}))
    if token:
        environment["XFLOW_SERVE_TOKEN"] = token
    with log.open("wb") as out:
        process = subprocess.Popen(xflow_command("serve", *map(str, args), "--port", str(port)), cwd=cwd,
                                   env=environment, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log, token)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"xflow serve exited with {process.returncode}:\n{server.output()[-3000:]}")
        try:
            if httpx.get(server.url + "/ping", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise AssertionError(f"xflow serve did not answer within {timeout} s:\n{server.output()[-3000:]}")


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "the condition") -> Any:
    """Poll ``check`` until it returns something true; that value, or an AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout} s (last: {last!r})")
