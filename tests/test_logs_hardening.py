"""Log routes under bad settings and bad timing: option values that can never work are one-line errors (never a
traceback), closing is bounded by one deadline and never closes a destination under a send, http answers are
closed, header values are never shown, a failed rotation duplicates nothing, and ``xflow logs`` copes with odd
times and executions that started long before ``--since``."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xflow.core.errors import XflowError
from xflow.core.interfaces import PluginContext
from xflow.core.plugins import PluginRegistry
from xflow.logs import LogDestination, LogRecord
from xflow.logs.file import FileDestination
from xflow.logs.http import HttpDestination
from xflow.logs.reading import read_json_lines, rotated_files
from xflow.logs.router import LogRouter, Route
from xflow.logs.routing import RouteSpec, build_router, make_destination, parse_route
from xflow.testing import kit_workflow
from xflow.testing.logs import kit_records

FLOW = """
workflow_id: hardened
functions:
  - name: only
    handler: h.only
    source: .
subscriptions:
  - event: Started
    subscribers: [only]
"""
HANDLERS = {"h.py": "def only(event, ctx):\n    ctx.logger.info('seen %s', event.get('n'))\n"}


# -- 1. option values that cannot work: one line, exit 2 ----------------------------------------------------------------
def test_a_missing_tls_file_is_one_line_naming_the_option_and_the_file(cli, make_workflow) -> None:
    path = make_workflow(FLOW, HANDLERS)
    done = cli("worker", path, "--log-route", "syslog:address=tls://127.0.0.1:6514,ca_file=/nonexistent.pem",
               timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "ca_file '/nonexistent.pem'" in done.stderr
    assert len([line for line in done.stderr.splitlines() if "ca_file" in line]) == 1


@pytest.mark.parametrize(("options", "named"), [
    ({"ca_file": "{tmp}"}, "ca_file '{tmp}'"),  # a folder
    ({"ca_file": "{tmp}/junk.pem"}, "ca_file '{tmp}/junk.pem' holds no usable PEM certificate"),
    ({"cert_file": "/nonexistent/client.pem"}, "cert_file '/nonexistent/client.pem' cannot be read"),
    ({"cert_file": "{tmp}/junk.pem"}, "cert_file '{tmp}/junk.pem' is not a PEM client certificate"),
    ({"cert_file": "{tmp}/junk.pem", "key_file": "/nonexistent/key.pem"}, "key_file '/nonexistent/key.pem' cannot"),
    ({"key_file": "{tmp}/junk.pem"}, "key_file '{tmp}/junk.pem' is given without cert_file"),
])
def test_each_tls_file_option_is_checked_before_anything_runs(tmp_path: Path, options: dict[str, str],
                                                               named: str) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    given = {"address": "tls://127.0.0.1:6514", **{k: v.format(tmp=tmp_path) for k, v in options.items()}}
    with pytest.raises(XflowError, match="^log destination 'syslog': " + named.format(tmp=tmp_path).replace(".", r"\.")):
        make_destination(RouteSpec("syslog", given), kit_workflow("tls", tmp_path), tmp_path, PluginRegistry())


_REGISTRY = PluginRegistry()
_KEYS = {name: [*_REGISTRY.get("log", name).declared(), "level"] for name in ("file", "syslog", "http", "otlp")}
_VALUES = st.one_of(
    st.text(st.characters(blacklist_characters=",", blacklist_categories=("Cs",)), max_size=24),
    st.sampled_from(["/nonexistent.pem", ".", "tls://127.0.0.1:6514", "tcp://h:99999", "udp://a b:1", "http://[",
                     "https://", "http://127.0.0.1:9/x", "1e400", "nan", "-1", "0", "{}", '{"a": null}',
                     '{"a b": "c"}', '{"X": "a\\nb"}', "[]", "5ms", "true", "a\x00b", "octet-counting", "local9"]))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(_KEYS)).flatmap(
    lambda name: st.tuples(st.just(name), st.lists(st.tuples(st.sampled_from(_KEYS[name]), _VALUES), max_size=4))))
def test_any_log_route_text_starts_a_router_or_is_a_one_line_error(tmp_path: Path,
                                                                     case: tuple[str, list[tuple[str, str]]]) -> None:
    name, pairs = case
    # a file route's path stays inside the test's folder
    pairs = [(key, value) for key, value in pairs if not (key == "path" and (value.startswith(("/", "~")) or ".." in value))]
    text = name + ":" + ",".join(f"{key}={value}" for key, value in pairs)
    try:
        router = build_router(kit_workflow("probe", tmp_path), tmp_path / ".xflow", _REGISTRY, [parse_route(text)])
    except XflowError as exc:
        assert "\n" not in str(exc)
        return
    assert router is not None
    router.close(0.0)


# -- 2. and 3. closing: one deadline, and never a destination closed under a send --------------------------------------
class Stuck(LogDestination):
    """A destination whose send blocks until ``release`` is set (it does not look at the route's deadline)."""

    name: ClassVar[str] = "stuck"
    description: ClassVar[str] = "test destination"
    batch_size: ClassVar[int] = 10

    def __init__(self) -> None:
        super().__init__(PluginContext("wf", {}, Path(".")))
        self.release, self.sending = threading.Event(), threading.Event()
        self.closed = threading.Event()
        self.closed_while_sending = False
        self.got: list[LogRecord] = []

    def send(self, records: Sequence[LogRecord]) -> None:
        self.sending.set()
        self.release.wait(30)
        self.closed_while_sending = self.closed.is_set()
        self.got.extend(records)

    def close(self) -> None:
        self.closed.set()


def test_close_counts_the_batch_still_being_sent_and_leaves_closing_to_the_sending_thread() -> None:
    stuck = Stuck()
    route = Route("stuck", stuck, capacity=100)
    route.offer(kit_records("wf", "exec-1", 25))
    assert stuck.sending.wait(10)
    started = time.monotonic()
    route.close(0.2)
    assert time.monotonic() - started < 2.0
    assert route.stats().dropped == 25 and route.stats().buffered == 0  # the batch in flight and the 15 waiting
    assert not stuck.closed.is_set() and not route.stopped  # not closed under the send
    stuck.release.set()
    assert stuck.closed.wait(10)  # closed by the sending thread once its send returned
    assert not stuck.closed_while_sending
    deadline = time.monotonic() + 10
    while not route.stopped and time.monotonic() < deadline:
        time.sleep(0.01)
    assert route.stopped and route.stats().sent == 0 and route.stats().dropped == 25


def test_an_http_send_tries_no_more_after_the_closing_deadline(tmp_path: Path) -> None:
    silent = socket.socket()  # accepts connections (the backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        destination = HttpDestination(PluginContext("wf", {
            "url": f"http://127.0.0.1:{silent.getsockname()[1]}/", "timeout": "3s", "retries": 4, "backoff": "1s",
            "linger": 0}, tmp_path))
        route = Route("http", destination, capacity=100)
        route.offer(kit_records("wf", "exec-2", 5))
        time.sleep(0.3)  # the first request waits for its answer (for up to 3 s: it started before closing)
        started = time.monotonic()
        route.close(0.5)
        assert time.monotonic() - started < 2.0
        assert route.stats().dropped == 5 and route.stats().sent == 0  # the request in flight counted as dropped
        while not route.stopped and time.monotonic() - started < 15:
            time.sleep(0.05)
        # the request in flight ends at its timeout, and no other is made: not 5 tries of 3 s with backoff
        assert route.stopped and time.monotonic() - started < 5.0
    finally:
        silent.close()


class Down(LogDestination):
    name: ClassVar[str] = "down"
    description: ClassVar[str] = "test destination"

    def __init__(self) -> None:
        super().__init__(PluginContext("wf", {}, Path(".")))

    def send(self, records: Sequence[LogRecord]) -> None:
        raise ConnectionRefusedError("down")


def test_closing_a_router_gives_all_its_routes_one_deadline() -> None:
    routes = [Route(f"down#{n}", Down(), capacity=100, backoff=(0.01, 0.05)) for n in range(4)]
    router = LogRouter(routes, "wf")
    router.emit(kit_records("wf", "exec-3", 10))
    started = time.monotonic()
    router.close(0.5)
    assert time.monotonic() - started < 1.5  # not 4 x 0.5 s
    assert [route.stats().dropped for route in routes] == [10, 10, 10, 10]
    assert all(route.stopped for route in routes)


# -- 4. and 5. http: answers closed, header values never shown ---------------------------------------------------------
@pytest.mark.parametrize("status", [400, 503])
def test_http_error_answers_are_closed(monkeypatch, tmp_path: Path, status: int) -> None:
    bodies: list[io.BytesIO] = []

    def answer(request: urllib.request.Request, timeout: float) -> Any:
        body = io.BytesIO(b"go away\n")
        bodies.append(body)
        raise urllib.error.HTTPError(request.full_url, status, "no", {"Retry-After": "0"}, body)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib.request, "urlopen", answer)
    destination = HttpDestination(PluginContext("wf", {"url": "http://127.0.0.1:9/", "retries": 2, "backoff": 0},
                                                tmp_path))
    with pytest.raises(Exception):  # noqa: B017 - refused (400) or retried out (503): either way it raises
        destination.send(kit_records("wf", "exec-4", 2))
    assert len(bodies) == (1 if status == 400 else 3)
    assert all(body.closed for body in bodies)


def test_http_header_values_are_never_shown(cli, make_workflow, tmp_path: Path) -> None:
    path = make_workflow(FLOW, HANDLERS)
    done = cli("run", path, "--log-route", "http:url=http://127.0.0.1:9/,headers=Bearer-s3cr3t-t0ken")
    assert done.returncode == 2 and "headers" in done.stderr and "s3cr3t" not in done.stderr, done.stderr
    with pytest.raises(XflowError) as caught:
        make_destination(RouteSpec("http", {"url": "http://127.0.0.1:9/", "headers": {"Authorization": "Bearer x\nyz"}}),
                         kit_workflow("headers", tmp_path), tmp_path, PluginRegistry())
    assert "Authorization" in str(caught.value) and "Bearer" not in str(caught.value)


# -- 6. file: a failed rotation duplicates nothing ---------------------------------------------------------------------
def test_a_failed_rollover_neither_duplicates_nor_loses_lines(tmp_path: Path) -> None:
    destination = FileDestination(PluginContext("wf", {"path": str(tmp_path / "l.jsonl"), "max_bytes": 2000,
                                                       "backups": 50}, tmp_path))
    rollover = destination._handler.doRollover
    failures = [1]

    def failing_once() -> None:
        if failures:
            failures.pop()
            raise OSError(28, "No space left on device")
        rollover()

    destination._handler.doRollover = failing_once  # type: ignore[method-assign]
    route = Route("file", destination, capacity=1000, backoff=(0.01, 0.05))
    sent = kit_records("wf", "exec-5", 60)
    try:
        route.offer(sent)
        assert route.flush(10)
    finally:
        route.close(1.0)
    assert not failures and route.stats().failures == 1
    written = [r.seq for file in rotated_files(tmp_path / "l.jsonl") for r in read_json_lines(file)]
    assert written == list(range(60))


# -- 8. and 9. xflow logs: records by their time, and any time shown ---------------------------------------------------
def test_logs_since_keeps_an_execution_that_started_hours_before_it(cli, make_workflow, tmp_path: Path) -> None:
    from xflow import Engine
    from xflow.core.interfaces import DeliveryRecord, EventRecord

    path = make_workflow(FLOW, HANDLERS)
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite")
    now = time.time()
    with Engine(path, state_dir=tmp_path / ".xflow", tracker="sqlite") as engine:
        tracker = engine.tracker
        tracker.record_event(EventRecord("long-1", "ev-1", "Started", now - 3 * 3600))
        tracker.record_delivery(DeliveryRecord("long-1", "ev-1", "Started", "only", 1, "retrying", now - 3 * 3600,
                                               0.01, "slow", ("INFO early line",)))
        tracker.record_delivery(DeliveryRecord("long-1", "ev-1", "Started", "only", 2, "succeeded", now - 60, 0.01,
                                               None, ("INFO late line",)))
    found = cli.json("logs", path, "--since", "10m")
    assert [r["message"] for r in found["records"] if r["kind"] == "line"] == ["late line"]


def test_logs_show_a_record_whose_time_is_out_of_range(cli, make_workflow) -> None:
    path = make_workflow(FLOW + "logging:\n  routes:\n    - {name: file, options: {path: out.jsonl}}\n", HANDLERS)
    record = kit_records("hardened", "far-1", 1)[0].as_dict()
    (path.parent / "out.jsonl").write_text(json.dumps({**record, "time": 1e20}) + "\n")
    done = cli("logs", path, "--execution-id", "far-1")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.startswith("9999-12-30T00:00:00.000Z ")
