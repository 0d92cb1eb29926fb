"""Supervised handlers (xflow.providers.supervisor.HandlerPool): every way a handler can fail is a failed outcome with
its reason and the pool goes on; concurrency, timeouts, per-call output capture, and what loading and closing leave
behind. Every test goes through HandlerPool with real handler processes or threads."""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import re
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from xflow.core.errors import XflowError
from xflow.providers.handler_calls import Attempt
from xflow.providers.supervisor import HandlerPool

pytestmark = pytest.mark.timeout(120)

STEPS = """
import ctypes, logging, os, sys, threading, time

def handle(event, ctx):
    with open(event["counter"], "a") as notes:
        notes.write(f"{event['n']}\\n")
    print(f"start {event['n']}")
    kind = event.get("kind")
    if kind == "exit":
        sys.exit(3)
    if kind == "os_exit":
        os._exit(4)
    if kind == "segfault":
        ctypes.string_at(0)
    if kind == "sleep":
        time.sleep(event.get("seconds", 60))
    if kind == "unserialisable":
        return {"value": object()}
    if kind == "nan":
        ctx.publish("Out", {"value": float("nan")})
    if kind == "raise":
        raise ValueError("asked to fail")
    return {"n": event["n"], "pid": os.getpid()}
"""

CHATTY = """
import logging, os, sys, threading, time

def handle(event, ctx):
    n = event["n"]
    for i in range(3):
        print(f"print {n}.{i}")
        ctx.logger.info("ctx %s.%s", n, i)
        time.sleep(0.002)
    sys.stdout.write(f"stdout {n}\\n")
    sys.stderr.write(f"stderr {n}\\n")
    logging.getLogger("library").warning("root %s", n)
    side = threading.Thread(target=lambda: print(f"side thread {n}"))
    side.start()
    side.join()
    return {"n": n, "variable": os.environ.get("XFLOW_TEST_VARIABLE"), "cwd": os.getcwd()}
"""

SLEEPY = """
import time

def handle(event, ctx):
    started = time.time()
    time.sleep(event.get("seconds", 0.05))
    return {"started": started, "ended": time.time()}
"""


def attempt(n: int = 1, number: int = 1) -> Attempt:
    return Attempt("wf", "step", f"ex-{n}", "In", f"ev-{n}", number)


def write(folder: Path, name: str, code: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(code))
    return path


def run(pool: HandlerPool, data: dict, n: int = 1, wait: float = 60):
    return pool.submit(data, attempt(n)).result(wait)


FAILURES = {
    # kind: (error, the child process is replaced)
    "exit": ("exited with status 3", False),
    "os_exit": ("exited with status 4", True),
    "segfault": ("killed by SIGSEGV", True),
    "sleep": ("timed out after 1 s", True),
    "unserialisable": ("what the handler published cannot be sent: the data of event 'Out' is not JSON: TypeError: "
                       "Object of type object is not JSON serializable", False),
    "nan": ("what the handler published cannot be sent: the data of event 'Out' is not JSON: ValueError: Out of "
            "range float values are not JSON compliant", False),
    "raise": ("ValueError: asked to fail", False),
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_a_failing_handler_process_is_a_failed_outcome_and_the_pool_goes_on(tmp_path, kind):
    source = write(tmp_path / "src", "steps.py", STEPS)
    counter = tmp_path / "counter.txt"
    error, replaced = FAILURES[kind]
    with HandlerPool(source, "handle", ["Out"], timeout=1) as pool:
        pool.check()
        first = run(pool, {"counter": str(counter), "n": 0})
        started = time.monotonic()
        failed = run(pool, {"counter": str(counter), "n": 1, "kind": kind})
        took = time.monotonic() - started
        later = [run(pool, {"counter": str(counter), "n": n}, n) for n in (2, 3)]
    assert first.ok and first.error is None
    assert (failed.ok, failed.error, failed.published) == (False, error, [])
    assert "start 1" in failed.logs  # what it printed before it failed, even when its process was killed
    assert took < 10
    assert all(o.ok for o in later), [o.error for o in later]
    assert [data["n"] for o in later for _, data in o.published] == [2, 3]
    pids = {first.published[0][1]["pid"], later[0].published[0][1]["pid"], later[1].published[0][1]["pid"]}
    assert len(pids) == (2 if replaced else 1)
    # every call ran once: nothing was run again, nothing counted twice
    assert counter.read_text().split() == ["0", "1", "2", "3"]


def test_a_crash_and_a_timeout_leave_the_stacks_of_the_process_in_the_logs(tmp_path):
    source = write(tmp_path / "src", "steps.py", STEPS)
    counter = str(tmp_path / "counter.txt")
    with HandlerPool(source, "handle", ["Out"], timeout=1) as pool:
        crashed = run(pool, {"counter": counter, "n": 1, "kind": "segfault"})
        hung = run(pool, {"counter": counter, "n": 2, "kind": "sleep"}, 2)
    assert "Fatal Python error: Segmentation fault" in crashed.logs
    assert any(str(source) in line and "in handle" in line for line in crashed.logs), crashed.logs
    assert any(str(source) in line and "in handle" in line for line in hung.logs), hung.logs


def test_a_process_killed_between_calls_is_replaced_without_failing_the_next_call(tmp_path):
    source = write(tmp_path / "src", "steps.py", STEPS)
    counter = str(tmp_path / "counter.txt")
    with HandlerPool(source, "handle", ["Out"]) as pool:
        first = run(pool, {"counter": counter, "n": 1})
        pid = first.published[0][1]["pid"]
        assert pool.pids == [pid]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        second = run(pool, {"counter": counter, "n": 2}, 2)
    assert second.ok, second.error
    assert second.published[0][1]["pid"] != pid


@pytest.mark.parametrize("kind, error", [("exit", "called sys.exit(3)"), ("raise", "ValueError: asked to fail"),
                                         ("unserialisable", FAILURES["unserialisable"][0])])
def test_a_failing_handler_thread_is_a_failed_outcome_and_the_pool_goes_on(tmp_path, kind, error):
    source = write(tmp_path / "src", "steps.py", STEPS)
    counter = tmp_path / "counter.txt"
    with HandlerPool(source, "handle", ["Out"], isolation="thread") as pool:
        pool.check()
        failed = run(pool, {"counter": str(counter), "n": 1, "kind": kind})
        later = run(pool, {"counter": str(counter), "n": 2}, 2)
    assert (failed.ok, failed.error) == (False, error)
    assert "start 1" in failed.logs
    assert later.ok and later.published == [("Out", {"n": 2, "pid": os.getpid(), "execution_id": "ex-2"})]
    assert counter.read_text().split() == ["1", "2"]


def test_a_thread_past_its_timeout_fails_and_its_slot_serves_the_next_call(tmp_path):
    source = write(tmp_path / "src", "steps.py", STEPS)
    counter = tmp_path / "counter.txt"
    with HandlerPool(source, "handle", ["Out"], isolation="thread", timeout=0.5) as pool:
        hung = pool.submit({"counter": str(counter), "n": 1, "kind": "sleep", "seconds": 3}, attempt(1))
        queued = pool.submit({"counter": str(counter), "n": 2}, attempt(2))
        started = time.monotonic()
        assert hung.result(10).error == "timed out after 0.5 s"
        assert hung.result().logs == ["start 1"]
        assert queued.result(10).ok
        assert time.monotonic() - started < 2.5  # did not wait for the abandoned thread
        assert pool.concurrency == 1
    assert counter.read_text().split() == ["1", "2"]


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_concurrency_runs_that_many_calls_at_once_and_no_more(tmp_path, isolation):
    source = write(tmp_path / "src", "sleepy.py", SLEEPY)

    def timed(concurrency: int) -> tuple[float, int]:
        with HandlerPool(source, "handle", ["Out"], isolation=isolation, concurrency=concurrency) as pool:
            pool.check()
            concurrent.futures.wait([pool.submit({"seconds": 0.01}, attempt(n)) for n in range(concurrency)])
            started = time.monotonic()
            outcomes = [f.result(60) for f in [pool.submit({"seconds": 0.05}, attempt(n)) for n in range(40)]]
            took = time.monotonic() - started
        spans = [(data["started"], data["ended"]) for o in outcomes for _, data in o.published]
        assert len(spans) == 40
        most = max(sum(1 for s, e in spans if s <= moment < e) for moment, _ in spans)
        return took, most

    serial, serial_most = timed(1)
    parallel, parallel_most = timed(8)
    assert serial_most == 1 and 2 <= parallel_most <= 8
    assert serial / parallel >= 5, (serial, parallel)


def test_process_output_is_captured_per_call(tmp_path, monkeypatch):
    source = write(tmp_path / "src", "chatty.py", CHATTY)
    monkeypatch.setenv("XFLOW_TEST_VARIABLE", "from the parent")
    monkeypatch.chdir(tmp_path)
    with HandlerPool(source, "handle", ["Out"], concurrency=4, environment={"XFLOW_TEST_OTHER": "1"}) as pool:
        outcomes = {n: f.result(60) for n, f in [(n, pool.submit({"n": n}, attempt(n))) for n in range(12)]}
    for n, outcome in outcomes.items():
        assert outcome.ok, outcome.error
        assert outcome.logs == [f"print {n}.0", f"INFO ctx {n}.0", f"print {n}.1", f"INFO ctx {n}.1",
                                f"print {n}.2", f"INFO ctx {n}.2", f"stdout {n}", f"stderr {n}",
                                f"WARNING root {n}", f"side thread {n}"]
        assert outcome.published == [("Out", {"n": n, "variable": "from the parent", "cwd": str(tmp_path),
                                              "execution_id": f"ex-{n}"})]


def test_thread_output_is_captured_per_call_and_the_hosts_prints_all_reach_stdout(tmp_path, capfd):
    source = write(tmp_path / "src", "chatty.py", CHATTY)
    stop = threading.Event()
    host_lines = 300

    def host() -> None:
        for i in range(host_lines):
            print(f"host line {i}", flush=True)
            time.sleep(0.001)
        stop.set()

    with HandlerPool(source, "handle", ["Out"], isolation="thread", concurrency=4) as pool:
        printer = threading.Thread(target=host)
        printer.start()
        outcomes = {}
        n = 0
        while not stop.is_set() or n < 8:
            futures = {n + i: pool.submit({"n": n + i}, attempt(n + i)) for i in range(4)}
            outcomes.update({k: f.result(60) for k, f in futures.items()})
            n += 4
        printer.join()
    out, err = capfd.readouterr()
    # (lines of threads printing at once may share a line: print writes the text, then the newline)
    assert sorted(int(i) for i in re.findall(r"host line (\d+)", out)) == list(range(host_lines))
    assert sorted(int(i) for i in re.findall(r"stdout (\d+)", out)) == sorted(outcomes)
    assert sorted(int(i) for i in re.findall(r"stderr (\d+)", err)) == sorted(outcomes)
    assert sorted(int(i) for i in re.findall(r"side thread (\d+)", out)) == sorted(outcomes)
    assert not re.search("print|ctx", out + err), re.findall(".*(?:print|ctx).*", out + err)[:5]
    for n, outcome in outcomes.items():
        assert outcome.ok, outcome.error
        # the module's print (in the handler's thread) and ctx.logger are captured; sys.stdout/sys.stderr writes
        # and the prints of threads the handler starts go to the host's streams
        assert outcome.logs == [f"print {n}.0", f"INFO ctx {n}.0", f"print {n}.1", f"INFO ctx {n}.1",
                                f"print {n}.2", f"INFO ctx {n}.2"]


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_propagated_logs_reach_the_hosts_function_logger(tmp_path, caplog, isolation):
    source = write(tmp_path / "src", "chatty.py", CHATTY)
    caplog.set_level(logging.INFO, logger="xflow.functions.wf.step")
    with HandlerPool(source, "handle", ["Out"], isolation=isolation, propagate_logs=True) as pool:
        assert run(pool, {"n": 7}, 7).ok
    lines = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("xflow.functions")]
    assert ("xflow.functions.wf.step", "INFO", "ctx 7.0") in lines and ("xflow.functions.wf.step", "INFO",
                                                                         "ctx 7.2") in lines


def test_logs_do_not_propagate_unless_asked(tmp_path, caplog):
    source = write(tmp_path / "src", "chatty.py", CHATTY)
    caplog.set_level(logging.DEBUG)
    with HandlerPool(source, "handle", ["Out"], isolation="thread") as pool:
        assert run(pool, {"n": 1}).ok
    assert not [r for r in caplog.records if r.name.startswith("xflow.functions")]


def test_loading_leaves_sys_path_and_sys_modules_as_they_were(tmp_path):
    for name in ("a", "b"):
        write(tmp_path / name, "helpers.py", f"NAME = {name!r}\n")
        write(tmp_path / name, "step.py", """
            import helpers

            def handle(event, ctx):
                return {"helper": helpers.NAME}
            """)
    path, modules = list(sys.path), set(sys.modules)
    pools = [HandlerPool(tmp_path / name / "step.py", "handle", ["Out"], isolation="thread") for name in ("a", "b")]
    try:
        for pool in pools:
            pool.check()
        assert sys.path == path
        assert set(sys.modules) == modules  # neither helpers.py nor the handler's module is registered
        # each function has its own helpers.py
        assert [run(pool, {}).published[0][1]["helper"] for pool in pools] == ["a", "b"]
    finally:
        for pool in pools:
            pool.close()


@pytest.mark.parametrize("isolation", ["process", "thread"])
@pytest.mark.parametrize("code, reason", [
    ("def handle(event, ctx)\n", "SyntaxError"),
    ("def other(event, ctx):\n    pass\n", "defines no function 'handle'"),
    ("raise RuntimeError('no config')\n", "RuntimeError: no config"),
    ("import sys\nsys.exit(2)\n", "SystemExit: 2"),
])
def test_check_names_the_file_of_a_handler_that_cannot_be_loaded(tmp_path, isolation, code, reason):
    source = write(tmp_path / "src", "broken.py", code)
    with HandlerPool(source, "handle", ["Out"], isolation=isolation, function_name="step") as pool:
        with pytest.raises(XflowError) as caught:
            pool.check()
        message = str(caught.value)
        assert message.startswith(f"function 'step': cannot load handler 'handle': {source}: ") and reason in message
        failed = run(pool, {"n": 1})
    assert not failed.ok and reason in failed.error


def test_check_reports_a_handler_process_that_dies_while_importing(tmp_path):
    source = write(tmp_path / "src", "dies.py", "import os\nprint('importing')\nos._exit(5)\n")
    with HandlerPool(source, "handle", ["Out"]) as pool, pytest.raises(XflowError) as caught:
        pool.check()
    assert f"{source}: its handler process exited with status 5 while importing it" in str(caught.value)


def _our_processes(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def test_close_stops_every_handler_process_and_is_idempotent(tmp_path):
    source = write(tmp_path / "src", "steps.py", STEPS)
    counter = str(tmp_path / "counter.txt")
    pool = HandlerPool(source, "handle", ["Out"], concurrency=3)
    pool.check()
    futures = [pool.submit({"counter": counter, "n": n, "kind": "sleep", "seconds": 0.3}, attempt(n)) for n in range(3)]
    concurrent.futures.wait(futures)
    pids = pool.pids
    assert len(pids) == 3 and _our_processes(pids) == pids
    hung = [pool.submit({"counter": counter, "n": n, "kind": "sleep", "seconds": 60}, attempt(n)) for n in (7, 8, 9)]
    queued = [pool.submit({"counter": counter, "n": n}, attempt(n)) for n in range(10, 14)]
    time.sleep(0.3)
    started = time.monotonic()
    pool.close(timeout=0.5)
    pool.close()
    assert time.monotonic() - started < 10
    assert [f.result(5).error for f in hung] == ["stopped: the handler pool was closed while the handler ran"] * 3
    assert all(f.cancelled() for f in queued)  # every slot was busy: these never started
    assert sorted(Path(counter).read_text().split(), key=int) == ["0", "1", "2", "7", "8", "9"]
    deadline = time.monotonic() + 5
    while _our_processes(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _our_processes(pids) == []
    assert multiprocessing.active_children() == []
    with pytest.raises(RuntimeError):
        pool.submit({}, attempt())


def test_bad_settings_are_user_errors(tmp_path):
    source = write(tmp_path / "src", "steps.py", STEPS)
    for settings in ({"isolation": "container"}, {"concurrency": 0}, {"timeout": 0}):
        with pytest.raises(XflowError):
            HandlerPool(source, "handle", ["Out"], **settings)


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_a_flood_of_output_is_cut_at_the_limit_and_says_so(tmp_path, isolation):
    source = write(tmp_path / "src", "loud.py", """
        def handle(event, ctx):
            for i in range(400):
                print(f"{i:04d}" + "x" * 4996)
        """)
    with HandlerPool(source, "handle", ["Out"], isolation=isolation) as pool:
        outcome = run(pool, {})
    assert outcome.ok
    assert len(outcome.logs) == 200 and outcome.logs[0].startswith("0000x") and outcome.logs[198].startswith("0198x")
    assert outcome.logs[-1] == "[xflow: 201 more lines of output dropped, over 1000000 characters]"


def test_the_environment_holds_strings(tmp_path):
    source = write(tmp_path / "src", "steps.py", STEPS)
    with pytest.raises(XflowError, match="strings only"):
        HandlerPool(source, "handle", ["Out"], environment={"N": 1})  # type: ignore[dict-item]
