"""The syslog route against a real rsyslog (Debian's package, installed by .ci/install-rsyslog.sh): started here
with a configuration of its own (a TCP input on a free loopback port, each message written as JSON with its parsed
structured data to a file in the test's folder); no system daemon is used."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from xflow_cli_testing import CLI

from xflow.core.engine import Engine
from xflow.core.interfaces import PluginContext
from xflow.logs.syslog import SyslogDestination
from xflow.testing import LogDestinationContract

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
pytestmark = pytest.mark.skipif(RSYSLOGD is None, reason="rsyslog is not installed (source .ci/install-rsyslog.sh)")

CONFIG = """
global(workDirectory="{work}")
module(load="imtcp")
module(load="imudp")
input(type="imtcp" port="{port}" address="127.0.0.1")
input(type="imudp" port="{port}" address="127.0.0.1")
template(name="xflowjson" type="list" option.jsonf="on") {{
  property(outname="time" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="facility" name="syslogfacility-text" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
action(type="omfile" file="{out}" template="xflowjson")
"""
LEVELS = {"7": "DEBUG", "6": "INFO", "4": "WARNING", "3": "ERROR", "2": "CRITICAL"}
_PARAM = re.compile(r'([^ =\]"]+)="((?:[^"\\]|\\.)*)"')


def _free_port() -> int:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))  # free for both inputs
        return int(port)


class Rsyslog:
    """An rsyslogd process of the test's own, writing what it receives to ``out``."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, _free_port()
        self.out = folder / "received.jsonl"
        self.config = folder / "rsyslog.conf"
        self.config.write_text(CONFIG.format(work=folder, port=self.port, out=self.out))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert RSYSLOGD is not None
        log = open(self.folder / "rsyslogd.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.config), "-i", str(self.folder / "rsyslogd.pid")],
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rsyslogd did not start: {(self.folder / 'rsyslogd.log').read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def records(self) -> list[dict[str, Any]]:
        """What rsyslog wrote, each message as the record's fields (from its structured data and header)."""
        if not self.out.exists():
            return []
        found = []
        for line in self.out.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue  # a line being written
            fields = {name: re.sub(r"\\(.)", r"\1", value) for name, value in _PARAM.findall(item["sd"])}
            moment = item["time"].replace("Z", "+00:00")
            found.append({**fields, "time": datetime.fromisoformat(moment).timestamp(),
                          "level": LEVELS[item["severity"]], "message": item["msg"], "app": item["app"],
                          "msgid": item["msgid"], "facility": item["facility"], "sd_id": item["sd"][1:].split(" ")[0]})
        return found


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path)
    server.start()
    yield server
    server.stop()


class TestSyslogOverTcp(LogDestinationContract):
    @pytest.fixture
    def destination_factory(self, rsyslog: Rsyslog, tmp_path: Path) -> Any:
        return lambda workflow_id: SyslogDestination(PluginContext(
            workflow_id, {"address": f"tcp://127.0.0.1:{rsyslog.port}", "facility": "local3"}, tmp_path))

    @pytest.fixture
    def received(self, rsyslog: Rsyslog) -> Any:
        return rsyslog.records


def test_udp_messages_arrive_with_their_structured_data(rsyslog: Rsyslog, tmp_path: Path) -> None:
    from xflow.testing.logs import kit_records

    destination = SyslogDestination(PluginContext("wf", {"address": f"udp://127.0.0.1:{rsyslog.port}",
                                                         "app_name": "orders", "sd_id": "acme@99999"}, tmp_path))
    destination.send(kit_records("wf", "udp-1", 3))
    destination.close()
    deadline = time.monotonic() + 10
    while len(got := [r for r in rsyslog.records() if r.get("execution_id") == "udp-1"]) < 3:
        assert time.monotonic() < deadline, rsyslog.records()
        time.sleep(0.1)
    assert {(r["app"], r["sd_id"], r["facility"]) for r in got} == {("orders", "acme@99999", "user")}
    assert [r["msgid"] for r in got] == ["line", "line", "outcome"] and got[2]["status"] == "succeeded"


FLOW = """
workflow_id: sysrouted
functions:
  - name: parse
    handler: h.parse
    source: .
    publishes: [Parsed]
  - name: count
    handler: h.count
    source: .
subscriptions:
  - event: Uploaded
    subscribers: [parse]
  - event: Parsed
    subscribers: [count]
logging:
  routes:
    - name: syslog
      options: {{address: "tcp://127.0.0.1:{port}", facility: local0}}
"""
HANDLERS = {"h.py": """
def parse(event, ctx):
    ctx.logger.info("parsing %s", event["n"])
    print("words:", event["n"])
    return {"words": event["n"]}

def count(event, ctx):
    ctx.logger.warning("counted %s", event["words"])
"""}


def test_a_worker_routes_to_rsyslog_and_loses_nothing_while_it_restarts(rsyslog: Rsyslog, cli: CLI, make_workflow,
                                                                         tmp_path: Path) -> None:
    path = make_workflow(FLOW.format(port=rsyslog.port), HANDLERS)
    cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite")
    worker = cli.popen("worker", path)
    engine = Engine(path, state_dir=tmp_path / ".xflow")
    try:
        def records_of(executions: list[str]) -> list[dict[str, Any]]:
            return [r for r in rsyslog.records() if r.get("execution_id") in executions]

        def wait(what: Any, timeout: float = 90) -> None:
            deadline = time.monotonic() + timeout
            while not what():
                assert worker.poll() is None, (tmp_path / "proc-0.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "proc-0.log").read_text()
                time.sleep(0.2)

        def succeeded(executions: list[str]) -> bool:
            return all(engine.track(x)["status"] == "succeeded" for x in executions)

        # 5 lines per execution: parse's two and its outcome, count's line and its outcome
        before = [engine.publish("Uploaded", {"n": n}) for n in range(5)]
        wait(lambda: len(records_of(before)) == 25)
        rsyslog.stop()
        down_at = time.monotonic()
        during = [engine.publish("Uploaded", {"n": 100 + n}) for n in range(5)]
        wait(lambda: succeeded(during))  # handlers ran on while rsyslog was away
        settled_while_down = time.monotonic() - down_at
        durations = [d.duration for x in during for d in engine.tracker.history(x).deliveries]
        time.sleep(max(0.0, 3.0 - settled_while_down))  # away for a few seconds
        assert records_of(during) == []
        rsyslog.start()
        after = [engine.publish("Uploaded", {"n": 200 + n}) for n in range(5)]
        wait(lambda: len(records_of(before + during + after)) == 75)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        engine.close()
    assert max(durations) < 1.0, durations  # no handler waited on the log server
    got = records_of(before + during + after)
    assert len({(r["execution_id"], r["function"], r["attempt"], r["seq"]) for r in got}) == 75  # each once
    for execution in during:
        mine = [r for r in got if r["execution_id"] == execution]
        n = int(mine[0]["message"].split()[-1])
        assert [(r["function"], r["level"], r["message"], r["kind"]) for r in mine[:2]] == [
            ("parse", "INFO", f"parsing {n}", "line"), ("parse", "INFO", f"words: {n}", "line")]
        assert {(r["workflow"], r["facility"], r["sd_id"]) for r in mine} == {("sysrouted", "local0", "xflow@32473")}
        assert ("count", "WARNING", f"counted {n}") in {(r["function"], r["level"], r["message"]) for r in mine}
        assert sorted(r["status"] for r in mine if r["kind"] == "outcome") == ["succeeded", "succeeded"]
