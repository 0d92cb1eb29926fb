"""Real faults under the embedded backends: a full disk, a read-only state folder, write-ahead logs deleted under a
running worker, a backend that is unavailable for a while, a damaged tracker met mid-run.

What must hold: one line `error: ... (hint: ...)` naming the file, never a traceback; a worker waits out what may
pass (logging once) and goes on by itself, losing nothing and running no handler twice; exit status 0 on a normal
stop, 1 when a backend stays unavailable past the give-up time, 2 when the state needs the user.
The full-disk and read-only tests mount a small tmpfs, which needs root (they are skipped otherwise).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from xflow_cli_testing import CLI, NOTING_STEPS, clean_env, read_notes, xflow_command

from xflow import Engine
from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.interfaces import DeliveryRecord, EventRecord, ExecutionHistory, PluginContext
from xflow.core.model import Workflow
from xflow.core.runtime import derive_event_id
from xflow.core.sqlite_files import DiskFull, StateFileError, translate
from xflow.core.tracking import summarize
from xflow.trackers.sqlite import SqliteTrackerStore
from xflow.transports.local import LocalTransport

CHAIN = """
workflow_id: chain
lambdas:
  - {name: first, source: steps.py, handler: first, publishes: [Middle], retries: 2}
  - {name: second, source: steps.py, handler: second, publishes: [Done], retries: 2}
subscriptions:
  - {name: Start, subscribers: [first]}
  - {name: Middle, subscribers: [second]}
workflows:
  - {id: chain, flow: [Start, Middle, Done]}
"""

#: a transport plugin whose every poll, commit and publish fails with BackendUnavailable while $XFLOW_TEST_OUTAGE exists
FLAKY_PLUGIN = '''
import os

from xflow.core.errors import BackendUnavailable
from xflow.core.hookspecs import hookimpl
from xflow.transports.local import LocalConsumer, LocalTransport


def _down(what):
    flag = os.environ.get("XFLOW_TEST_OUTAGE")
    if flag and os.path.exists(flag):
        raise BackendUnavailable(f"the flaky log refuses {what} (a test outage)", "remove the outage file")


class FlakyConsumer(LocalConsumer):
    def poll(self, max_records, timeout):
        _down("polls")
        return super().poll(max_records, timeout)

    def commit(self, deliveries):
        _down("commits")
        super().commit(deliveries)


class FlakyTransport(LocalTransport):
    name = "flaky"
    description = "the local log, unavailable while a file exists (tests)"

    def publish(self, event, records):
        _down("publishes")
        super().publish(event, records)

    def subscribe(self, group, events):
        return FlakyConsumer(self, group, [self.stream_name(e) for e in events],
                             {self.stream_name(e): e for e in events})


@hookimpl
def xflow_transports():
    return [FlakyTransport]
'''


# -- helpers ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def chain(make_workflow, tmp_path):
    path = make_workflow(CHAIN, {"steps.py": NOTING_STEPS}, name="chain.yaml")
    return path, {"XFLOW_TEST_NOTES": str(tmp_path / "notes.txt")}, tmp_path / "notes.txt"


def _mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk that fills up, a folder that turns read-only) needs root")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")


def _unmount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs to use as the state folder (unmounted at the end)."""
    where = tmp_path / "small-disk"
    _mount_tmpfs(where, "3m")
    yield where
    _unmount(where)


def _stop(process: subprocess.Popen[str], timeout: float = 20) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=timeout)


def _popen(cli: CLI, log: Path, *args: str | os.PathLike[str], **env: str) -> subprocess.Popen[str]:
    """``xflow ARGS`` started in the background, its stdout and stderr going to ``log``."""
    handle = log.open("w")
    try:
        return subprocess.Popen(xflow_command(*map(str, args)), cwd=cli.cwd, env=clean_env(**env), stdout=handle,
                                stderr=subprocess.STDOUT, text=True)
    finally:
        handle.close()


def _track(cli: CLI, state: Path, path: Path, execution: str) -> dict:
    done = cli("--state-dir", state, "track", path, execution, "--output", "json")
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def _statuses(state: Path, path: Path, executions: list[str]) -> dict[str, dict]:
    with Engine(path, state_dir=state) as engine:
        return {execution: engine.track(execution) for execution in executions}


def _wait_until_settled(state: Path, path: Path, executions: list[str], timeout: float = 90.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        summaries = _statuses(state, path, executions)
        if all(s["status"] not in ("running", "unknown") for s in summaries.values()):
            return summaries
        assert time.monotonic() < deadline, {e: s["status"] for e, s in summaries.items() if s["status"] != "succeeded"}
        time.sleep(0.3)


def _one_error_line(text: str) -> str:
    """The single `error: ` line of a command's output (no traceback)."""
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text
    return errors[0]


def _free_bytes(folder: Path) -> int:
    status = os.statvfs(folder)
    return status.f_bavail * status.f_frsize


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# -- a full disk -----------------------------------------------------------------------------------------------------
def test_a_full_disk_makes_workers_wait_and_publish_exit_1_then_everything_goes_on(cli, chain, small_disk, tmp_path):
    path, env, notes = chain
    state = small_disk
    cli.json("--state-dir", state, "setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite",
             **env)
    worker_log = tmp_path / "worker.log"
    worker = _popen(cli, worker_log, "--state-dir", state, "worker", path, **env)
    published: list[str] = []
    try:
        _wait_for(lambda: "stop with Ctrl-C" in worker_log.read_text(), 30, "the worker did not start")
        ballast = state / "ballast"
        ballast.write_bytes(b"\0" * max(0, _free_bytes(state) - 1_000_000))
        pad = "x" * 30_000
        refused = None
        for index in range(60):
            execution = f"full-{index}"
            done = cli("--state-dir", state, "publish", path, "Start", json.dumps({"n": 1, "pad": pad}),
                       "--execution-id", execution, **env)
            if done.returncode == 0:
                published.append(execution)
                continue
            refused = done
            if "published all the same" in done.stderr:  # the log took it; only its tracking record is missing
                published.append(execution)
            break
        assert refused is not None, "the disk never filled up"
        line = _one_error_line(refused.stderr)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "is full" in line and str(state) in line and "(hint: " in line, line

        # the worker waits: same process, still running, says so once, no traceback, no crash loop
        _wait_for(lambda: "waiting for the" in worker_log.read_text(), 30, "the worker never said it waits")
        full_since = time.monotonic()
        time.sleep(4)
        assert worker.poll() is None, worker_log.read_text()
        text = worker_log.read_text()
        assert "Traceback" not in text and "error: " not in text, text
        waiting = [line for line in text.splitlines() if "waiting for the" in line]
        assert len(waiting) == 1, text
        assert "is full" in waiting[0] and "database or disk is full" in waiting[0], waiting[0]

        # space comes back: the worker goes on by itself and every published execution succeeds, each step once
        ballast.unlink()
        freed = time.monotonic()
        _wait_for(lambda: "is back after" in worker_log.read_text(), 30, "the worker did not go on by itself")
        summaries = _wait_until_settled(state, path, published)
        recovered = time.monotonic() - freed
        assert worker.poll() is None, worker_log.read_text()
    finally:
        exit_status = _stop(worker)
    text = worker_log.read_text()
    assert exit_status == 0, text
    assert "is back after" in text and "Traceback" not in text, text
    assert [e for e, s in summaries.items() if s["status"] != "succeeded"] == []
    counted = read_notes(notes)
    lost = [e for e in published if counted[("first", e)] == 0 or counted[("second", e)] == 0]
    duplicates = {key: n for key, n in counted.items() if n > 1}
    assert lost == [] and duplicates == {}, (lost, duplicates)
    assert {key[1] for key in counted} == set(published)  # nothing ran for the refused publish
    print(f"full disk: {len(published)} published, {len(summaries)} succeeded, {len(lost)} lost, "
          f"{len(duplicates)} duplicate effects, worker exits during the fault: 0 (exit {exit_status} on SIGTERM), "
          f"full for {freed - full_since:.1f} s, recovered {recovered:.1f} s after space was freed")


# -- a read-only state folder ----------------------------------------------------------------------------------------
def test_a_read_only_state_folder_is_one_line_and_exit_2(cli, chain, tmp_path):
    path, env, _ = chain
    state = tmp_path / "read-only"
    _mount_tmpfs(state, "8m")
    try:
        summary = cli.json("--state-dir", state, "run", path, "--data", '{"n": 1}', **env)
        assert summary["status"] == "succeeded"
        done = subprocess.run(["mount", "-o", "remount,ro", str(state)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        for args in (("publish", path, "Start", "{}"), ("worker", path), ("run", path, "--timeout", "10"),
                     ("track", path, summary["execution_id"])):
            done = cli("--state-dir", state, *args, timeout=60, **env)
            line = _one_error_line(done.stderr)
            assert done.returncode == 2, (args, done.stderr)
            assert "read-only" in line.lower() and str(state) in line and "(hint: " in line, line
    finally:
        _unmount(state)


# -- write-ahead logs deleted under a running worker -----------------------------------------------------------------
def test_deleted_wal_files_under_a_running_worker_are_detected_and_track_never_says_running(cli, chain, tmp_path):
    path, env, notes = chain
    state = tmp_path / ".xflow"
    cli.json("--state-dir", state, "setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite",
             **env)
    executions = [f"wal-{i}" for i in range(40)]
    with Engine(path, state_dir=state) as engine:
        for execution in executions:
            engine.publish("Start", {"n": 1, "sleep": 0.03}, execution)
    folder = state / "chain"
    log = tmp_path / "worker.log"
    worker = _popen(cli, log, "--state-dir", state, "worker", path, "--option", "batch_size=3", **env)
    try:
        _wait_for(lambda: sum(n for (function, _), n in read_notes(notes).items() if function == "second") >= 4, 60,
                  "the worker finished no execution")
        (folder / "tracker.db-wal").unlink()
        (folder / "events.db-wal").unlink()
        deleted = time.monotonic()
        status = worker.wait(timeout=60)
        detected = time.monotonic() - deleted
    finally:
        _stop(worker)
    text = log.read_text()
    line = _one_error_line(text)
    assert status == 2, text
    assert "write-ahead log" in line and "-wal was deleted" in line and str(folder) in line, line
    assert (folder / "tracker.db.incidents").exists() or (folder / "events.db.incidents").exists()

    # every execution whose handlers all ran is not reported running (succeeded, or unknown with a warning)
    counted = read_notes(notes)
    finished = [e for e in executions if counted[("first", e)] and counted[("second", e)]]
    assert finished, "nothing finished before the deletion: the test proves nothing"
    summaries = _statuses(state, path, executions)
    assert [e for e in finished if summaries[e]["status"] == "running"] == []
    for execution in finished:
        assert summaries[execution]["status"] in ("succeeded", "unknown"), summaries[execution]
        assert _track(cli, state, path, execution)["status"] == summaries[execution]["status"]
    for summary in summaries.values():
        if summary["status"] == "unknown":
            assert "may be lost" in summary["warning"] and "tracker.db" in summary["warning"], summary
    unfinished = [e for e in executions if summaries[e]["status"] == "unknown"]
    if unfinished:  # the human summary shows the status and the warning
        human = cli("--state-dir", state, "track", path, unfinished[0])
        assert human.returncode == 0 and "Traceback" not in human.stderr, human.stderr
        assert "unknown" in human.stdout and "warning:" in human.stdout, human.stdout

    # a new worker (after every process stopped, as the hint says) finishes the rest
    worker = _popen(cli, tmp_path / "worker-2.log", "--state-dir", state, "worker", path, **env)
    try:
        final = _wait_until_settled(state, path, executions)
    finally:
        assert _stop(worker) == 0
    assert all(s["status"] == "succeeded" for s in final.values())
    counted = read_notes(notes)
    lost = [e for e in executions if not counted[("first", e)] or not counted[("second", e)]]
    duplicates = {key: n for key, n in counted.items() if n > 1}
    assert lost == [] and len(duplicates) <= 2, (lost, duplicates)  # at most the deliveries in flight run again
    unknown = sum(s["status"] == "unknown" for s in summaries.values())
    print(f"deleted WALs: {len(executions)} published, {len(finished)} finished before, detected in {detected:.1f} s "
          f"(worker exit {status}), {unknown} unknown and 0 running while stopped, {len(final)} succeeded after a "
          f"restart, {len(lost)} lost, {len(duplicates)} duplicate effects")


# -- a backend unavailable for a while (a plugin transport) ----------------------------------------------------------
@pytest.fixture
def flaky(chain, tmp_path, cli):
    """The chain workflow set up on the 'flaky' transport, installed as a plugin distribution (an entry point)."""
    path, env, notes = chain
    site = tmp_path / "site"
    site.mkdir()
    (site / "xflow_test_flaky.py").write_text(FLAKY_PLUGIN)
    info = site / "xflow_transport_flaky-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xflow-transport-flaky\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[xflow]\nflaky = xflow_test_flaky\n")
    outage = tmp_path / "outage"
    env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
               XFLOW_TEST_OUTAGE=str(outage))
    cli.json("setup", path, "--transport", "flaky", "--provider", "local", "--tracker", "sqlite", **env)
    return path, env, notes, outage


def test_a_backend_outage_is_waited_out_logged_once_and_the_worker_goes_on(cli, flaky, tmp_path):
    path, env, notes, outage = flaky
    executions = [f"out-{i}" for i in range(8)]
    log = tmp_path / "worker.log"
    worker = _popen(cli, log, "worker", path, **env)
    try:
        for execution in executions:
            assert cli("publish", path, "Start", json.dumps({"n": 1, "sleep": 0.3}), "--execution-id", execution,
                       **env).returncode == 0
        _wait_for(lambda: sum(read_notes(notes).values()) >= 2, 60, "the worker handled nothing")
        outage.touch()  # in the middle of the work: handlers in flight must publish and commit after it
        began = time.monotonic()
        refused = cli("publish", path, "Start", "{}", "--execution-id", "during", **env)
        assert refused.returncode == 1, refused.stderr
        assert "flaky log refuses publishes" in _one_error_line(refused.stderr)
        _wait_for(lambda: "waiting for the transport 'flaky'" in log.read_text(), 30, "the worker never waited")
        time.sleep(3)
        assert worker.poll() is None, log.read_text()
        outage.unlink()
        back = time.monotonic()
        summaries = _wait_until_settled(tmp_path / ".xflow", path, executions)
        recovered = time.monotonic() - back
    finally:
        status = _stop(worker)
    text = log.read_text()
    assert status == 0, text
    assert text.count("waiting for the transport 'flaky'") == 1, text
    assert "the transport 'flaky' is back after" in text and "Traceback" not in text and "error: " not in text, text
    assert all(s["status"] == "succeeded" for s in summaries.values())
    counted = read_notes(notes)
    lost = [e for e in executions if not counted[("first", e)] or not counted[("second", e)]]
    duplicates = {key: n for key, n in counted.items() if n > 1}
    assert lost == [] and duplicates == {}, (lost, duplicates)
    print(f"outage: {len(executions)} published, {len(summaries)} succeeded, {len(lost)} lost, {len(duplicates)} "
          f"duplicate effects, worker exits 0 (on SIGTERM), outage {back - began:.1f} s, recovered {recovered:.1f} s "
          "after it ended")


def test_with_a_give_up_time_a_worker_stops_with_exit_1_in_one_line(cli, flaky, tmp_path):
    path, env, notes, outage = flaky
    outage.touch()
    started = time.monotonic()
    done = cli("worker", path, "--option", "unavailable_give_up_seconds=2", timeout=60, **env)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    line = _one_error_line(done.stderr)
    assert re.search(r"gave up after waiting \d+ s for the transport 'flaky': the flaky log refuses polls", line), line
    assert 2 <= took < 30, took
    # a plain mistake still stops at once (exit 2)
    bad = cli("worker", path, "--option", "unavailable_give_up_seconds=soon", **env)
    assert bad.returncode == 2 and "unavailable_give_up_seconds" in _one_error_line(bad.stderr)


def test_engine_work_waits_out_an_outage_and_gives_up_with_backend_unavailable(flaky, tmp_path, monkeypatch, caplog):
    path, env, notes, outage = flaky
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(os.pathsep)[0])
    outage.touch()
    with Engine(path, state_dir=tmp_path / ".xflow", options={"provider": {"unavailable_give_up_seconds": 1}}) as engine:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="gave up after waiting"):
            engine.work(until=lambda: time.monotonic() - started > 30)
        assert time.monotonic() - started < 20
    assert caplog.text.count("waiting for the transport 'flaky'") == 1


# -- a damaged tracker met mid-run -----------------------------------------------------------------------------------
class _DamagedMidRun(SqliteTrackerStore):
    """A tracker whose file turns out damaged after the first execution (as SQLite reports it)."""

    def record_event(self, record: EventRecord) -> None:
        if record.execution_id == "second":
            raise sqlite3.DatabaseError("database disk image is malformed")
        super().record_event(record)


def test_a_damaged_tracker_mid_run_stops_the_worker_instead_of_dead_lettering(chain, tmp_path, monkeypatch):
    path, env, notes = chain
    monkeypatch.setenv("XFLOW_TEST_NOTES", env["XFLOW_TEST_NOTES"])
    state = tmp_path / ".xflow"
    Engine(path, state_dir=state, transport="local", provider="local", tracker="sqlite").setup()
    tracker = _DamagedMidRun(PluginContext("chain", {}, state))
    with Engine(path, state_dir=state, transport="local", tracker=tracker) as engine:
        engine.publish("Start", {"n": 1}, "first")
        engine.work(until=lambda: engine.track("first")["status"] != "running")
        engine.transport.publish("Start", [_record("second")])
        with pytest.raises(XflowError, match="damaged") as raised:
            engine.work(until=lambda: False)
        assert raised.value.exit_code == 2
        letters = engine.transport.dead_letters()
    assert letters == []  # stopped: the record waits for a worker on a sound file, it is not set aside
    transport = LocalTransport(PluginContext("chain", {}, state))
    consumer = transport.subscribe("first", ["Start"])
    assert [d.key for d in consumer.poll(10, 0)] == ["second"]  # not committed: delivered again
    consumer.close()
    transport.close()


def _record(execution: str):
    from xflow.core.interfaces import Record
    from xflow.core.runtime import encode_event, new_event_id

    return Record(execution, encode_event("Start", {"n": 1, "execution_id": execution}, execution, new_event_id(),
                                          "xflow/chain", time.time()))


# -- what SQLite errors mean, and what track makes of lost records ---------------------------------------------------
@pytest.mark.parametrize(("message", "code", "kind", "words"), [
    ("database or disk is full", 13, DiskFull, "is full"),
    ("disk I/O error", 10, BackendUnavailable, "cannot be read or written"),
    ("disk I/O error", 10 | (2 << 8), BackendUnavailable, "-wal was probably removed"),
    ("database is locked", 5, BackendUnavailable, "stayed locked"),
    ("attempt to write a readonly database", 8, StateFileError, "read-only"),
    ("file is not a database", 26, StateFileError, "is damaged"),
    ("database disk image is malformed", 11, StateFileError, "is damaged"),
    ("unable to open database file", 14, StateFileError, "cannot be opened"),
])
def test_sqlite_errors_become_one_line_errors_naming_the_file(tmp_path, message, code, kind, words):
    path = tmp_path / "events.db"
    for exc in (sqlite3.OperationalError(message), sqlite3.DatabaseError(message)):
        by_message = translate(exc, path, "event log")
        exc.sqlite_errorcode = code  # as SQLite sets it (Python >= 3.11)
        by_code = translate(exc, path, "event log")
        for error in (by_message, by_code):
            assert type(error) is kind and str(path) in str(error) and "\n" not in str(error)
            assert error.hint
        assert words in str(by_code)
        assert issubclass(kind, BackendUnavailable) == (by_code.exit_code == 1)
    assert translate(sqlite3.OperationalError("no such table: x"), path, "event log") is None  # a bug, not the disk


def test_an_io_error_on_a_disk_with_no_room_left_is_a_full_disk(tmp_path, monkeypatch):
    """SQLite reports a full disk met while sizing its -shm file as SQLITE_IOERR_SHMSIZE: the free space decides."""
    exc = sqlite3.OperationalError("disk I/O error")
    assert not isinstance(translate(exc, tmp_path / "tracker.db", "tracker database"), DiskFull)
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((4096, 4096, 100, 0, 0, 10, 0, 0, 0, 255)))
    error = translate(exc, tmp_path / "tracker.db", "tracker database")
    assert isinstance(error, DiskFull) and "is full" in str(error) and error.exit_code == 1


def test_track_reads_lost_success_records_from_published_events_and_says_unknown_rather_than_running(tmp_path):
    workflow_file = tmp_path / "chain.yaml"
    workflow_file.write_text(textwrap.dedent(CHAIN))
    (tmp_path / "steps.py").write_text(NOTING_STEPS)
    from xflow.core.config import load_workflow

    workflow: Workflow = load_workflow(workflow_file)
    start = EventRecord("x", "start-id", "Start", 1.0, "xflow/chain", {})
    middle = EventRecord("x", derive_event_id("start-id", "first", 0), "Middle", 2.0, "xflow/chain/first", {})
    # first's success record was lost, but the event it published is recorded: it succeeded
    summary = summarize(workflow, "x", ExecutionHistory([start, middle], []))
    assert summary["events"][0]["state"] == "processed" and summary["events"][0]["subscribers"][0]["state"] == "succeeded"
    assert summary["status"] == "running" and "warning" not in summary  # second has not run: really running
    # with a warning from the tracker (records may be lost), an execution that looks running is unknown
    summary = summarize(workflow, "x", ExecutionHistory([start, middle], [], ["tracker.db: its WAL was deleted"]))
    assert summary["status"] == "unknown" and "WAL was deleted" in summary["warning"]
    done = DeliveryRecord("x", middle.event_id, "Middle", "second", 1, "succeeded", 3.0)
    final = EventRecord("x", derive_event_id(middle.event_id, "second", 0), "Done", 3.0, "xflow/chain/second", {})
    summary = summarize(workflow, "x", ExecutionHistory([start, middle, final], [done], ["a warning"]))
    assert summary["status"] == "succeeded" and "warning" not in summary
    # a recorded failure is not overridden by an event published on an earlier, partly failed attempt
    failed = DeliveryRecord("x", "start-id", "Start", "first", 3, "failed", 2.5, error="boom")
    summary = summarize(workflow, "x", ExecutionHistory([start, middle], [failed]))
    assert summary["events"][0]["subscribers"][0]["state"] == "failed"
