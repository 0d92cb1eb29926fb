"""Log routes: the record, the router's bounded buffer, the file, http and otlp destinations (the conformance kit's
LogDestination contract against receivers run here), the ``logging:`` block, and routing from ``xflow run``."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from xflow.core.errors import XflowError
from xflow.core.interfaces import DeliveryRecord, PluginContext
from xflow.core.plugins import PluginRegistry
from xflow.logs import DeliveryRefused, LogDestination, LogRecord, records_of
from xflow.logs.file import FileDestination
from xflow.logs.http import BODY_FORMAT, HttpDestination
from xflow.logs.reading import read_json_lines, rotated_files
from xflow.logs.router import Route
from xflow.testing import LogDestinationContract
from xflow.testing.logs import kit_records


# -- a receiving HTTP server --------------------------------------------------------------------------------------------
class Receiver:
    """An HTTP server on a free loopback port that keeps each POST (headers, decoded body) and answers with the
    statuses queued in ``answers`` (200 when none is left)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the standard library's name
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                    receiver.requests.append({"headers": dict(self.headers), "raw": raw, "body": body,
                                              "status": status, "path": self.path})
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"no" if status >= 400 else b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/intake"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["status"] < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def http_destination(receiver: Receiver, tmp_path: Path, workflow_id: str = "wf", **options: Any) -> HttpDestination:
    given = {"url": receiver.url, "backoff": "10ms", "backoff_max": "50ms", "linger": 0, **options}
    return HttpDestination(PluginContext(workflow_id, given, tmp_path))


# -- the conformance kit against each built-in destination ------------------------------------------------------------
class TestFileDestination(LogDestinationContract):
    @pytest.fixture
    def destination_factory(self, tmp_path: Path) -> Any:
        return lambda workflow_id: FileDestination(PluginContext(workflow_id, {"path": str(tmp_path / "l.jsonl")},
                                                                 tmp_path))

    @pytest.fixture
    def received(self, tmp_path: Path) -> Any:
        return lambda: [r.as_dict() for r in read_json_lines(tmp_path / "l.jsonl")]


class TestHttpDestination(LogDestinationContract):
    @pytest.fixture
    def destination_factory(self, receiver: Receiver, tmp_path: Path) -> Any:
        return lambda workflow_id: http_destination(receiver, tmp_path, workflow_id)

    @pytest.fixture
    def received(self, receiver: Receiver) -> Any:
        return lambda: [record for request in receiver.accepted() for record in json.loads(request["body"])["records"]]


class TestOtlpDestination(LogDestinationContract):
    @pytest.fixture
    def destination_factory(self, receiver: Receiver, tmp_path: Path) -> Any:
        pytest.importorskip("opentelemetry.proto", reason="the otel extra is not installed")
        from xflow.logs.otlp import OtlpDestination

        return lambda workflow_id: OtlpDestination(PluginContext(
            workflow_id, {"url": receiver.url, "service_name": "kit", "linger": 0}, tmp_path))

    @pytest.fixture
    def received(self, receiver: Receiver) -> Any:
        return lambda: [record for request in receiver.accepted() for record in otlp_records(request["body"])]


def otlp_records(body: bytes) -> list[dict[str, Any]]:
    """The records of an OTLP ExportLogsServiceRequest, as the kit's dicts (decoded with OpenTelemetry's classes)."""
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    request = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
    found = []
    for resource_logs in request.resource_logs:
        resource = {kv.key: kv.value.string_value for kv in resource_logs.resource.attributes}
        assert resource["service.name"] == "kit"
        for scope in resource_logs.scope_logs:
            for entry in scope.log_records:
                attributes = {kv.key.removeprefix("xflow."): getattr(kv.value, kv.value.WhichOneof("value"))
                              for kv in entry.attributes}
                found.append({**attributes, "time": entry.time_unix_nano / 1e9, "level": entry.severity_text,
                              "message": entry.body.string_value,
                              "trace_id": entry.trace_id.hex() if entry.trace_id else None,
                              "severity_number": entry.severity_number})
    return found


# -- the http destination: gzip, token, retries ---------------------------------------------------------------------
def test_http_posts_gzipped_json_batches_with_the_bearer_token(receiver: Receiver, tmp_path: Path) -> None:
    destination = http_destination(receiver, tmp_path, token="s3cret-token", headers={"X-Team": "data"})
    sent = kit_records("wf", "exec-1", 3)
    destination.send(sent)
    [request] = receiver.requests
    assert request["headers"]["Content-Encoding"] == "gzip" and request["raw"][:2] == b"\x1f\x8b"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Authorization"] == "Bearer s3cret-token" and request["headers"]["X-Team"] == "data"
    body = json.loads(request["body"])
    assert body["format"] == BODY_FORMAT and [r["seq"] for r in body["records"]] == [0, 1, 2]
    assert body["records"][1]["trace_id"] == sent[1].trace_id and "trace_id" not in body["records"][0]


def test_http_retries_a_503_and_the_batch_arrives_once(receiver: Receiver, tmp_path: Path) -> None:
    receiver.answers = [503, 503]
    destination = http_destination(receiver, tmp_path, gzip=False)
    destination.send(kit_records("wf", "exec-2", 5))
    assert [r["status"] for r in receiver.requests] == [503, 503, 200]
    assert len(receiver.accepted()) == 1 and len(json.loads(receiver.accepted()[0]["body"])["records"]) == 5
    assert "Content-Encoding" not in receiver.requests[0]["headers"]


def test_http_gives_the_batch_back_to_the_route_when_503_lasts(receiver: Receiver, tmp_path: Path) -> None:
    receiver.answers = [503] * 6  # retries=2: three tries per send, so the route sends the batch twice more
    route = Route("http", http_destination(receiver, tmp_path, retries=2), capacity=100, backoff=(0.01, 0.02))
    try:
        route.offer(kit_records("wf", "exec-3", 4))
        assert route.flush(10)
    finally:
        route.close(1.0)
    assert [r["status"] for r in receiver.requests] == [503] * 6 + [200]
    assert route.stats().sent == 4 and route.stats().dropped == 0 and route.stats().failures == 2


def test_http_refusal_drops_the_batch_and_counts_it(receiver: Receiver, tmp_path: Path) -> None:
    receiver.answers = [400]
    destination = http_destination(receiver, tmp_path)
    with pytest.raises(DeliveryRefused, match="HTTP 400"):
        destination.send(kit_records("wf", "exec-4", 2))
    receiver.answers = [400]
    route = Route("http", destination, capacity=100)
    try:
        route.offer(kit_records("wf", "exec-5", 3))
        assert route.flush(10)
    finally:
        route.close(1.0)
    assert route.stats().dropped == 3 and route.stats().sent == 0 and len(receiver.requests) == 2


def test_http_needs_a_url(tmp_path: Path) -> None:
    with pytest.raises(XflowError, match="needs url"):
        HttpDestination(PluginContext("wf", {}, tmp_path))


# -- the router: a bounded buffer, never blocking ---------------------------------------------------------------------
class Flaky(LogDestination):
    """Fails while ``down`` is set; each send may take ``delay`` seconds; keeps what it took."""

    name: ClassVar[str] = "flaky"
    description: ClassVar[str] = "test destination"
    batch_size: ClassVar[int] = 25

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(PluginContext("wf", {}, Path(".")))
        self.down = threading.Event()
        self.delay = delay
        self.got: list[LogRecord] = []

    def send(self, records: Sequence[LogRecord]) -> None:
        time.sleep(self.delay)
        if self.down.is_set():
            raise ConnectionRefusedError("down")
        self.got.extend(records)


def test_route_keeps_records_while_the_destination_is_down_and_drops_the_oldest_past_its_bound() -> None:
    flaky = Flaky()
    flaky.down.set()
    route = Route("flaky", flaky, capacity=100, backoff=(0.01, 0.05))
    try:
        sent = kit_records("wf", "exec-6", 130)
        started = time.monotonic()
        for record in sent:
            route.offer([record])
        assert time.monotonic() - started < 1.0  # offering never waits for the destination
        time.sleep(0.2)
        assert route.stats().dropped == 30 and route.stats().buffered == 100 and flaky.got == []
        flaky.down.clear()
        assert route.flush(10)
    finally:
        route.close(1.0)
    assert [r.seq for r in flaky.got] == list(range(30, 130))  # in order, the newest 100
    assert route.stats().sent == 100


def test_offer_does_not_wait_for_a_slow_destination() -> None:
    route = Route("slow", Flaky(delay=0.5), capacity=10_000)
    try:
        started = time.monotonic()
        for n in range(50):
            route.offer(kit_records("wf", f"exec-{n}", 5))
        assert time.monotonic() - started < 0.5
    finally:
        route.close(2.0)


def test_close_gives_up_on_a_destination_that_stays_down_and_counts_what_was_left() -> None:
    flaky = Flaky()
    flaky.down.set()
    route = Route("flaky", flaky, capacity=100, backoff=(0.01, 0.05))
    route.offer(kit_records("wf", "exec-7", 10))
    started = time.monotonic()
    route.close(0.3)
    assert time.monotonic() - started < 2.0
    assert route.stats().dropped == 10 and route.stats().buffered == 0


def test_route_level_keeps_only_records_at_or_above_it() -> None:
    flaky = Flaky()
    route = Route("flaky", flaky, capacity=100, level="WARNING")
    try:
        route.offer(kit_records("wf", "exec-8", 8))  # levels cycle DEBUG, INFO, WARNING, ERROR; the last is INFO
        assert route.flush(5)
    finally:
        route.close(1.0)
    assert [r.level for r in flaky.got] == ["WARNING", "ERROR", "WARNING"]


# -- records from attempts --------------------------------------------------------------------------------------------
def test_records_of_an_attempt_have_every_field_and_levels_from_the_lines() -> None:
    attempt = DeliveryRecord("x1", "e1", "Parsed", "counter", 2, "retrying", 1000.0, 0.25, "ValueError: bad",
                             ("INFO counted 3", "plain print", "WARNING slow", "Traceback (most recent call last):",
                              '  File "h.py", line 3', "ValueError: bad"))
    found = records_of("wc", attempt)
    assert [(r.level, r.message) for r in found] == [
        ("INFO", "counted 3"), ("INFO", "plain print"), ("WARNING", "slow"),
        ("ERROR", "Traceback (most recent call last):"), ("ERROR", '  File "h.py", line 3'), ("ERROR", "ValueError: bad"),
        ("WARNING", "Parsed failed, will be retried after 250 ms (attempt 2): ValueError: bad")]
    assert {(r.workflow, r.execution_id, r.event, r.event_id, r.function, r.attempt) for r in found} == {
        ("wc", "x1", "Parsed", "e1", "counter", 2)}
    assert [r.seq for r in found] == list(range(7)) and found[-1].kind == "outcome" and found[-1].status == "retrying"
    assert found[0].time == 1000.0 and found[-1].time == 1000.25
    assert LogRecord.from_dict(json.loads(found[3].to_json())) == found[3]
    for record in found:  # the attempt's records share their JSON: each still writes its own fields
        assert json.loads(record.to_json()) == record.as_dict()
    import dataclasses

    moved = dataclasses.replace(found[1], execution_id="x2", time=5.0)
    assert json.loads(moved.to_json()) == moved.as_dict() and json.loads(found[1].to_json())["execution_id"] == "x1"


def test_the_router_gives_each_record_the_trace_id_of_its_attempts_event() -> None:
    from xflow.logs.router import LogRouter

    flaky = Flaky()
    router = LogRouter([Route("flaky", flaky, capacity=100)], workflow="wc")
    attempts = [DeliveryRecord("x1", f"e{n}", "Parsed", "counter", 1, "succeeded", 1000.0, 0.1, None, ("INFO hi",))
                for n in range(3)]
    router.attempts("other", attempts)  # another workflow's: not this router's
    router.attempts("wc", attempts, ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None, "garbage"])
    assert router.flush(5)
    router.close(1.0)
    assert [(r.event_id, r.trace_id) for r in flaky.got] == [
        ("e0", "4bf92f3577b34da6a3ce929d0e0e4736"), ("e0", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("e1", None), ("e1", None), ("e2", None), ("e2", None)]


# -- the logging: block and discovery ---------------------------------------------------------------------------------
FLOW = """
workflow_id: routed
functions:
  - name: first
    handler: h.first
    source: .
    publishes: [Second]
    retries: 1
  - name: second
    handler: h.second
    source: .
subscriptions:
  - event: First
    subscribers: [first]
  - event: Second
    subscribers: [second]
"""
HANDLERS = {"h.py": """
def first(event, ctx):
    ctx.logger.info("first got %s", event["n"])
    print("printed by first")
    return {"n": event["n"] + 1}

def second(event, ctx):
    ctx.logger.debug("second starts")
    if event.get("n") == 2 and ctx.attempt == 1:
        raise ValueError("second refuses the first try")
    ctx.logger.warning("second saw %s", event["n"])
"""}


def test_builtin_destinations_are_discovered_as_plugins_of_kind_log(cli) -> None:
    infos = {(i["kind"], i["name"]): i for i in cli.json("plugins")}
    for name in ("file", "syslog", "http", "otlp"):
        assert infos[("log", name)]["distribution"] == "xflow" and infos[("log", name)]["status"] == "ok"
    assert PluginRegistry().get("log", "file").cls is FileDestination


def test_the_logging_block_is_validated_with_lines(cli, make_workflow) -> None:
    path = make_workflow(FLOW + "logging:\n  level: loud\n  routes:\n    - name: file\n      optoins: {}\n", HANDLERS)
    done = cli("validate", path)
    assert done.returncode == 2, done.stderr
    assert "logging.level: 'LOUD' is not a level" in done.stderr
    assert "logging.routes.0.optoins: unknown key (did you mean 'options'?)" in done.stderr


def test_validate_names_a_route_to_an_unknown_destination_and_a_bad_option(cli, make_workflow) -> None:
    path = make_workflow(FLOW + "logging:\n  routes:\n    - sislog\n    - {name: file, options: {max_bytes: lots}}\n"
                                "    - {name: http, options: {colour: blue}}\n", HANDLERS)
    done = cli("validate", path)
    assert done.returncode == 2, done.stdout
    lines = done.stderr.splitlines()
    assert any(":19: logging.routes.0: unknown log destination 'sislog'" in line and "did you mean 'syslog'" in line
               for line in lines), done.stderr
    assert any(":20: logging.routes.1.options: " in line and "max_bytes" in line for line in lines), done.stderr
    assert any(":21: logging.routes.2.options: " in line and "'colour'" in line for line in lines), done.stderr


def test_a_route_to_an_unknown_destination_or_with_a_bad_option_is_one_line(cli, make_workflow) -> None:
    path = make_workflow(FLOW + "logging:\n  routes: [loki]\n", HANDLERS)
    done = cli("run", path, "--data", '{"n": 1}')
    assert done.returncode == 2 and "unknown log 'loki'; installed logs: file, http, otlp, syslog" in done.stderr
    path.write_text(FLOW + "logging:\n  routes:\n    - {name: file, options: {max_bytes: lots}}\n")
    done = cli("run", path, "--data", '{"n": 1}')
    assert done.returncode == 2 and "max_bytes" in done.stderr and "logging.routes[0]" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_routes_every_line_and_outcome_to_the_file_with_rotation(cli, make_workflow, tmp_path) -> None:
    path = make_workflow(FLOW + "logging:\n  routes:\n    - name: file\n      options: {path: out/l.jsonl, "
                                "max_bytes: 1200, backups: 20}\n", HANDLERS)
    result = cli.json("run", path, "--data", '{"n": 1}')
    assert result["status"] == "succeeded"
    files = rotated_files(path.parent / "out" / "l.jsonl")  # relative to the workflow file
    assert len(files) > 1 and all(f.stat().st_size <= 1200 for f in files)
    records = [r for f in files for r in read_json_lines(f)]
    mine = [(r.function, r.attempt, r.level, r.message) for r in records if r.execution_id == result["execution_id"]]
    assert mine[:3] == [("first", 1, "INFO", "first got 1"), ("first", 1, "INFO", "printed by first"),
                        ("first", 1, "INFO", mine[2][3])] and mine[2][3].startswith("First handled: succeeded")
    second = [m for m in mine if m[0] == "second"]
    assert ("second", 1, "DEBUG", "second starts") in second and ("second", 2, "WARNING", "second saw 2") in second
    assert ("second", 1, "ERROR", "ValueError: second refuses the first try") in second
    outcomes = [(r.function, r.attempt, r.status) for r in records if r.kind == "outcome"]
    assert outcomes == [("first", 1, "succeeded"), ("second", 1, "retrying"), ("second", 2, "succeeded")]
    assert {r.workflow for r in records} == {"routed"}
    assert len({r.trace_id for r in records}) == 1 and re.fullmatch("[0-9a-f]{32}", records[0].trace_id or "")


def test_log_route_option_routes_without_a_logging_block(cli, make_workflow, tmp_path) -> None:
    path = make_workflow(FLOW, HANDLERS)
    result = cli.json("run", path, "--data", '{"n": 5}', "--log-route", f"file:path={tmp_path / 'cli.jsonl'},level=info")
    records = list(read_json_lines(tmp_path / "cli.jsonl"))
    assert records and {r.execution_id for r in records} == {result["execution_id"]}
    assert "DEBUG" not in {r.level for r in records} and "second saw 6" in {r.message for r in records}
    done = cli("run", path, "--log-route", "file:pathXYZ")
    assert done.returncode == 2 and "is not KEY=VALUE" in done.stderr and "pathXYZ" not in done.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_worker_shows_what_a_route_dropped_in_its_metrics(cli, make_workflow, tmp_path) -> None:
    pytest.importorskip("prometheus_client", reason="the monitoring extra is not installed")
    import signal
    import urllib.request

    nobody = _free_port()  # nothing listens there: the route's destination is away for the whole run
    path = make_workflow(FLOW + f"logging:\n  buffer: 3\n  routes:\n    - name: syslog\n      options: "
                                f"{{address: 'tcp://127.0.0.1:{nobody}'}}\n", HANDLERS)
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite")
    port = _free_port()
    worker = cli.popen("worker", path, "--metrics-port", str(port))
    try:
        assert cli("publish", path, "First", '{"n": 1}').returncode == 0
        deadline = time.monotonic() + 90
        while True:
            assert worker.poll() is None and time.monotonic() < deadline, (tmp_path / "proc-0.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
                    text = page.read().decode()
            except OSError:
                text = ""
            found = dict(re.findall(r'^(xflow_log_records_\w+)\{route="syslog",workflow="routed"\} ([0-9.e+]+)$', text,
                                    re.MULTILINE))
            # first: 3 records; second: 2 attempts with their lines, traceback and outcomes; 3 held at most
            if float(found.get("xflow_log_records_dropped_total", 0)) >= 8:
                break
            time.sleep(0.3)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    assert float(found["xflow_log_records_buffered"]) == 3 and float(found["xflow_log_records_sent_total"]) == 0
    assert "cannot send" in (tmp_path / "proc-0.log").read_text()


# -- syslog over TLS (RFC 5425), against a TLS receiver here ------------------------------------------------------------
def _certificate(folder: Path) -> tuple[Path, Path]:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_syslog_over_tls_frames_each_message_by_its_length_and_checks_the_server(tmp_path: Path) -> None:
    import socket
    import ssl

    from xflow.logs.syslog import SyslogDestination

    cert, key = _certificate(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received = bytearray()

    def serve() -> None:
        for _ in range(2):  # the checked client's connection, then the one that refuses the server
            conn, _ = listener.accept()
            try:
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    while chunk := tls.recv(65536):
                        received.extend(chunk)
            except (ssl.SSLError, OSError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    destination = SyslogDestination(PluginContext("wf", {"address": f"tls://127.0.0.1:{port}", "ca_file": str(cert)},
                                                 tmp_path))
    sent = kit_records("wf", "tls-1", 3, "line {n} ✓")
    destination.send(sent)
    destination.close()
    stranger = SyslogDestination(PluginContext("wf", {"address": f"tls://127.0.0.1:{port}"}, tmp_path))
    with pytest.raises(ssl.SSLCertVerificationError):  # the system's authorities do not know this certificate
        stranger.send(sent)
    thread.join(10)
    listener.close()
    messages, data = [], bytes(received)
    while data:
        length, _, rest = data.partition(b" ")
        messages.append(rest[:int(length)].decode())
        data = rest[int(length):]
    assert [m.rsplit("] ", 1)[1] for m in messages] == ["line 0 ✓", "line 1 ✓", "line 2 ✓"]
    assert messages[1].startswith("<14>1 ") and 'trace_id="4bf92f3577b34da6a3ce929d0e0e4736"' in messages[1]
    assert messages[0].startswith("<15>1 ") and messages[2].split(" ")[5] == "outcome"


def test_an_option_left_out_of_a_route_comes_from_its_environment_variable(tmp_path: Path, monkeypatch) -> None:
    from xflow.logs.routing import RouteSpec, make_destination
    from xflow.testing import kit_workflow

    workflow = kit_workflow("envrouted", tmp_path)
    monkeypatch.setenv("XFLOW_HTTP_URL", "http://127.0.0.1:9/from-env")
    monkeypatch.setenv("XFLOW_HTTP_TOKEN", "env-token")
    made = make_destination(RouteSpec("http", {"token": "file-token"}, None, "the test"), workflow, tmp_path,
                            PluginRegistry())
    assert isinstance(made, HttpDestination) and made.url == "http://127.0.0.1:9/from-env"
    assert made.headers["Authorization"] == "Bearer file-token"  # what the route says wins
    monkeypatch.setenv("XFLOW_FILE_MAX_BYTES", "lots")
    with pytest.raises(XflowError, match="XFLOW_FILE_MAX_BYTES"):
        make_destination(RouteSpec("file", {}, None, "the test"), workflow, tmp_path, PluginRegistry())
