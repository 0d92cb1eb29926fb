"""An Engine embedded in an application: built from a mapping, shared by threads, leaving the host's process alone.

Through the public Python API: ``Engine.from_mapping``, ``publish``/``track``/``redrive``/``recent_executions``
from many threads while a worker runs in another, and the README's web-app example run as written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

import xflow
from xflow import Engine, XflowError
from xflow.core.config import load_workflow, load_workflow_mapping
from xflow.core.errors import WorkflowFileError
from xflow.core.interfaces import PluginContext, Record
from xflow.transports.kafka import KafkaTransport

README = Path(__file__).resolve().parent.parent / "README.md"
PUBLISHERS = 8
EXECUTIONS = 200
WAIT_SECONDS = 120

HANDLERS = '''
from pathlib import Path

def charge(event, ctx):
    return {"order": event["order"], "charged": event["amount"]}

def ship(event, ctx):
    if Path(CLOSED_MARKER).exists():  # an absolute path: setup deploys a copy of this module
        raise RuntimeError("the warehouse is closed")
    return {"order": event["order"], "shipped": True}
'''


def orders_flow(retries: int = 2) -> dict[str, Any]:
    """The workflow as a mapping: OrderPlaced -> charge -> OrderCharged -> ship -> OrderShipped."""
    return {
        "workflow_id": "orders",
        "general": {"retries": retries},
        "lambdas": [
            {"name": "charge", "source": "code/handlers.py", "handler": "charge", "publishes": ["OrderCharged"]},
            {"name": "ship", "source": Path("code") / "handlers.py", "handler": "ship", "publishes": ["OrderShipped"]},
        ],
        "subscriptions": [
            {"event": "OrderPlaced", "subscribers": ["charge"]},
            {"event": "OrderCharged", "subscribers": ["ship"]},
            {"event": "OrderShipped", "subscribers": []},
        ],
    }


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """An application's folder: ``code/handlers.py`` under it."""
    (tmp_path / "code").mkdir()
    marker = f"CLOSED_MARKER = {str(tmp_path / 'code' / 'closed')!r}\n"
    (tmp_path / "code" / "handlers.py").write_text(HANDLERS + marker)
    return tmp_path


class ThreadWorker:
    """``engine.work`` in a thread, with ``xflow.Worker``'s start/stop/join, for when ``xflow.Worker`` is absent."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xflow worker", daemon=True)

    def _run(self) -> None:
        try:
            self.engine.work(until=self._stop.is_set)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error


def worker_class() -> Callable[[Engine], Any]:
    return getattr(xflow, "Worker", None) or ThreadWorker


@contextmanager
def running_worker(engine: Engine) -> Iterator[None]:
    worker = worker_class()(engine)
    worker.start()
    try:
        yield
    finally:
        worker.stop(timeout=60)
    worker.join(timeout=10)


class Threads:
    """Threads that run a function each and keep every exception they raise."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, BaseException]] = []
        self.threads: list[threading.Thread] = []

    def start(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                self.errors.append((name, exc))

        thread = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self, timeout: float = WAIT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not [t.name for t in self.threads if t.is_alive()], "threads still running"
        assert not self.errors, f"exceptions in threads: {self.errors[:3]}"


def wait_until_settled(engine: Engine, executions: list[str], timeout: float = WAIT_SECONDS) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = {e: engine.track(e)["status"] for e in executions}
        if all(s != "running" for s in statuses.values()) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.1)


def process_state(imports: bool = True) -> dict[str, Any]:
    """What an embedded library must leave as it found it (``imports``: sys.path too, which a worker's handler
    imports are checked for by the worker's own tests)."""
    def logger_state(logger: logging.Logger) -> tuple[Any, ...]:
        return (logger.level, list(logger.handlers), logger.propagate, logger.disabled, list(logger.filters))

    signals = {}
    for number in signal.valid_signals():
        try:
            signals[number] = signal.getsignal(number)
        except (OSError, ValueError):
            continue
    state = {"signals": signals, "environ": dict(os.environ), "xflow logger": logger_state(logging.getLogger("xflow")),
             "root logger": logger_state(logging.getLogger()), "stdout": sys.stdout, "stderr": sys.stderr}
    return {**state, "sys.path": list(sys.path)} if imports else state


# -- one Engine, many threads ------------------------------------------------------------------------------------
def test_one_engine_shared_by_a_worker_and_eight_publishing_threads(app_dir):
    """8 threads publish 200 executions (and track each) through one Engine while a worker thread runs it and two
    more threads list and track: every execution succeeds, no thread raises, the host's process state is kept."""
    before = process_state(imports=False)
    engine = Engine.from_mapping(orders_flow(), base_dir=app_dir, state_dir=app_dir / "state")
    engine.setup()
    published: list[str] = []
    done = threading.Event()
    threads = Threads()
    start = threading.Barrier(PUBLISHERS + 2)

    def publisher(number: int) -> None:
        start.wait()
        for index in range(EXECUTIONS // PUBLISHERS):
            order = f"{number}-{index}"
            execution = engine.publish("OrderPlaced", {"order": order, "amount": index})
            published.append(execution)
            assert engine.track(execution)["status"] in ("running", "succeeded")

    def onlooker() -> None:
        start.wait()
        while not done.is_set():
            for execution in engine.recent_executions(5):
                engine.track(execution)
                engine.result(execution)

    with running_worker(engine):
        for number in range(PUBLISHERS):
            threads.start(f"publisher {number}", lambda number=number: publisher(number))
        for number in range(2):
            threads.start(f"onlooker {number}", onlooker)
        for thread in threads.threads[:PUBLISHERS]:
            thread.join(WAIT_SECONDS)
        statuses = wait_until_settled(engine, published)
        done.set()
        threads.join()
    assert len(set(published)) == EXECUTIONS
    assert sorted(statuses.values()) == ["succeeded"] * EXECUTIONS
    for execution in published[:: EXECUTIONS // 20]:
        summary = engine.track(execution)
        assert [s["attempts"] for e in summary["events"] for s in e["subscribers"]] == [1, 1]
        assert engine.result(execution)["shipped"] is True
    engine.close()
    assert process_state(imports=False) == before


def test_track_redrive_and_recent_executions_from_many_threads_at_once(app_dir):
    """Executions that failed for good are re-driven from 8 threads while 4 others track and list them, and a worker
    runs: every one succeeds, each failed delivery is re-driven once, and no thread raises."""
    (app_dir / "code" / "closed").touch()
    engine = Engine.from_mapping(orders_flow(retries=0), base_dir=app_dir, state_dir=app_dir / "state")
    engine.setup()
    executions = [engine.publish("OrderPlaced", {"order": str(n), "amount": n}) for n in range(40)]
    with running_worker(engine):
        statuses = wait_until_settled(engine, executions)
    assert set(statuses.values()) == {"failed"}
    (app_dir / "code" / "closed").unlink()

    redriven: dict[str, list[dict[str, str]]] = {}
    done = threading.Event()
    threads = Threads()

    def redriver(mine: list[str]) -> None:
        for execution in mine:
            redriven[execution] = engine.redrive(execution)

    def onlooker() -> None:
        while not done.is_set():
            assert len(engine.recent_executions(10)) == 10
            for execution in executions[::7]:
                assert engine.track(execution)["status"] in ("failed", "running", "succeeded")

    with running_worker(engine):
        for number in range(4):
            threads.start(f"onlooker {number}", onlooker)
        for number in range(8):
            threads.start(f"redriver {number}", lambda number=number: redriver(executions[number::8]))
        for thread in threads.threads[4:]:
            thread.join(WAIT_SECONDS)
        statuses = wait_until_settled(engine, executions)
        done.set()
        threads.join()
    engine.close()
    assert sorted(redriven) == sorted(executions)
    assert all([r["function"] for r in redone] == ["ship"] for redone in redriven.values())
    assert set(statuses.values()) == {"succeeded"}


def test_engine_calls_leave_the_process_state_alone(app_dir):
    """setup, publish, track, result, recent_executions, redrive, teardown and close, on the main thread: no signal
    handler, environment variable, logging setting, sys.path entry or stream changed."""
    before = process_state()
    with Engine(orders_flow(), base_dir=app_dir, state_dir=app_dir / "state") as engine:
        engine.setup(dry_run=True)
        engine.setup()
        execution = engine.publish("OrderPlaced", {"order": "1", "amount": 3})
        engine.track(execution)
        engine.result(execution)
        engine.recent_executions()
        engine.redrive(execution)
        with pytest.raises(XflowError):
            engine.track("no-such-execution", known=True)
        engine.teardown()
    assert process_state() == before


# -- a workflow given as a mapping -------------------------------------------------------------------------------
def test_from_mapping_reads_sources_from_base_dir_not_the_current_directory(app_dir, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    engine = Engine.from_mapping(orders_flow(), base_dir=app_dir, state_dir=app_dir / "state")
    assert engine.workflow.functions["charge"].source_path == app_dir / "code" / "handlers.py"
    summary = engine.run(data={"order": "7", "amount": 12})
    assert summary["status"] == "succeeded"
    assert summary["result"] == {"order": "7", "shipped": True, "execution_id": summary["execution_id"]}
    same = Engine(orders_flow(), base_dir=str(app_dir), state_dir=app_dir / "state")
    assert same.workflow == engine.workflow
    assert same.track(summary["execution_id"])["status"] == "succeeded"


def test_a_mapping_is_validated_as_the_same_content_in_a_file(app_dir):
    """Every problem at once, the same messages at the same paths as a YAML file holding the same content,
    each line ``<mapping>: dotted.path: message``."""
    data = orders_flow()
    data["lambdas"][1]["source"] = "code/handlers.py"
    data["lambdas"][0]["retries"] = 2.5
    data["lambdas"][1]["handler"] = "not a handler"
    data["lambdas"].append({"name": "charge", "source": "missing.py", "handler": "x"})
    data["subscriptions"].append({"event": "OrderPlaced", "subscribers": ["chrage"]})
    data["subscriptons"] = []
    file = app_dir / "orders.yaml"
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(WorkflowFileError) as from_file:
        load_workflow(file)
    with pytest.raises(WorkflowFileError) as from_mapping:
        Engine.from_mapping(data, base_dir=app_dir)

    def problems(error: WorkflowFileError, prefix: str) -> list[str]:
        """The problems without their prefix, and with what points at another place made alike."""
        assert all(re.match(prefix, line) for line in error.problems), error.problems
        return sorted(re.sub(r"at (line \d+|lambdas\.\d+|subscriptions\.\d+)", "at PLACE", re.sub(prefix, "", line))
                      for line in error.problems)

    assert problems(from_mapping.value, "<mapping>: ") == problems(from_file.value, re.escape(f"{file}:") + r"\d+: ")
    assert from_mapping.value.message == "<mapping>: 5 problems"
    assert "<mapping>: lambdas.2.name: duplicate function name 'charge' (first defined at lambdas.0)" in \
        from_mapping.value.problems
    assert "<mapping>: subscriptions.3: event 'OrderPlaced' already has a subscription at subscriptions.0; list all " \
        "its subscribers there" in from_mapping.value.problems


def test_a_mapping_holds_only_plain_values(app_dir):
    data: dict[Any, Any] = orders_flow()
    data["lambdas"][0]["description"] = object()
    data[3] = "three"
    loop: list[Any] = []
    loop.append(loop)
    data["general"] = {"runtime": loop}
    with pytest.raises(WorkflowFileError) as error:
        load_workflow_mapping(data, app_dir, name="orders (code)")
    assert error.value.problems == [
        "orders (code): (top level): key 3 is of type int; keys are text",
        "orders (code): general.runtime: not a valid string",
        "orders (code): general.runtime.0: contains itself (a mapping or list that holds itself cannot be read)",
        "orders (code): lambdas.0.description: a value of type object is not supported (a workflow holds mappings, "
        "lists, text, numbers, true/false and None)",
    ]


def test_the_workflow_id_of_a_mapping(app_dir):
    """The mapping's workflow_id, else the argument; both must agree; a mapping without either has no id."""
    data = orders_flow()
    del data["workflow_id"]
    assert Engine.from_mapping(data, base_dir=app_dir, workflow_id="shop").workflow.id == "shop"
    for mapping, given, problem in [
        (data, None, "<mapping>: workflow_id: missing: a workflow given as a mapping has no file name to take its id "
                     "from; add 'workflow_id': 'my_flow' (or pass workflow_id=)"),
        (orders_flow(), "shop", "<mapping>: workflow_id: 'orders' differs from workflow_id='shop' given in code; give "
                                "one of them, or the same in both"),
        (data, "no good", "<mapping>: workflow_id: 'no good' is not a valid workflow id"),
    ]:
        with pytest.raises(WorkflowFileError) as error:
            Engine.from_mapping(mapping, base_dir=app_dir, workflow_id=given)
        assert error.value.problems == [problem]


def test_engine_arguments_for_a_mapping_are_one_line_errors(app_dir):
    with pytest.raises(XflowError, match="a workflow given as a mapping needs base_dir="):
        Engine(orders_flow())
    with pytest.raises(XflowError, match=r"base_dir .*missing is not a folder"):
        Engine(orders_flow(), base_dir=app_dir / "missing")
    with pytest.raises(XflowError, match="must be a workflow file's path, a mapping or a Workflow, not list"):
        Engine([orders_flow()])  # type: ignore[arg-type]
    with pytest.raises(XflowError, match="base_dir= apply to a workflow given as a mapping only"):
        Engine(app_dir / "orders.yaml", base_dir=app_dir)


# -- the Kafka transport's producer ------------------------------------------------------------------------------
class OneAtATimeClient:
    """Stands in for a Kafka client: records how many publishes overlap (a real producer's would mix up)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.inside = self.most = 0
        self.produced: list[bytes] = []

    def produce(self, records: list[Any], timeout: float) -> None:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.002)
        with self.lock:
            self.inside -= 1
            self.produced.extend(r.value for r in records)

    def close(self) -> None:
        pass


def test_kafka_publishes_from_many_threads_take_turns_on_the_producer(tmp_path):
    transport = KafkaTransport(PluginContext("orders", {"bootstrap_servers": "127.0.0.1:9"}, tmp_path))
    client = transport.client = OneAtATimeClient(transport.client.settings)  # type: ignore[assignment]
    transport._known_topics.add(transport.stream_name("OrderPlaced"))
    threads = Threads()
    for number in range(8):
        records = [Record(f"e{number}-{i}", f"{number}-{i}".encode()) for i in range(10)]
        threads.start(f"publisher {number}", lambda records=records: [transport.publish("OrderPlaced", [r])
                                                                      for r in records])
    threads.join(60)
    assert client.most == 1
    assert sorted(client.produced) == sorted(f"{n}-{i}".encode() for n in range(8) for i in range(10))


# -- the README's example ----------------------------------------------------------------------------------------
def readme_blocks() -> dict[str, str]:
    """The Python blocks of the README's "In a web application" part, by the file named on their first line."""
    text = README.read_text(encoding="utf-8")
    part = text.split("### In a web application", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", part, re.S)
    return {block.splitlines()[0].removeprefix("# ").strip(): block for block in blocks}


def stand_in_fastapi() -> types.ModuleType:
    """Just enough of FastAPI for the example: routes kept by method and path, and the lifespan."""
    module = types.ModuleType("fastapi")

    class FastAPI:
        def __init__(self, lifespan: Any = None) -> None:
            self.lifespan = lifespan
            self.routes: dict[tuple[str, str], Callable[..., Any]] = {}

        def route(self, method: str, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            def register(function: Callable[..., Any]) -> Callable[..., Any]:
                self.routes[(method, path)] = function
                return function

            return register

        def post(self, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            return self.route("POST", path)

        def get(self, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            return self.route("GET", path)

    module.FastAPI = FastAPI  # type: ignore[attr-defined]
    return module


def test_the_readme_web_app_example_runs(tmp_path, monkeypatch):
    """The README's app, as written, served by a stand-in for FastAPI that calls its sync routes from a pool of
    threads as FastAPI does: 200 orders placed from request threads all ship, and shutdown stops the worker."""
    blocks = readme_blocks()
    assert set(blocks) == {"handlers.py", "app.py"}
    (tmp_path / "handlers.py").write_text(blocks["handlers.py"])
    monkeypatch.setitem(sys.modules, "fastapi", stand_in_fastapi())
    if not hasattr(xflow, "Worker"):
        monkeypatch.setattr(xflow, "Worker", ThreadWorker, raising=False)
    before = process_state(imports=False)
    namespace: dict[str, Any] = {"__file__": str(tmp_path / "app.py"), "__name__": "app"}
    exec(compile(textwrap.dedent(blocks["app.py"]), str(tmp_path / "app.py"), "exec"), namespace)
    app, engine = namespace["app"], namespace["engine"]
    place_order, order_status = app.routes[("POST", "/orders")], app.routes[("GET", "/orders/{execution_id}")]

    async def serve() -> dict[str, str]:
        async with app.lifespan(app):
            replies = await asyncio.gather(*[
                asyncio.to_thread(place_order, {"order": f"o{n}", "amount": n}) for n in range(EXECUTIONS)])
            executions = [reply["execution_id"] for reply in replies]
            deadline = time.monotonic() + WAIT_SECONDS
            while True:
                statuses = dict(zip(executions, await asyncio.gather(*[
                    asyncio.to_thread(lambda e=e: order_status(e)["status"]) for e in executions]), strict=True))
                if "running" not in statuses.values() or time.monotonic() > deadline:
                    return statuses
                await asyncio.sleep(0.1)

    statuses = asyncio.run(serve())
    assert len(statuses) == EXECUTIONS
    assert set(statuses.values()) == {"succeeded"}
    assert engine.result(next(iter(statuses)))["shipped"] is True
    engine.close()
    assert (tmp_path / ".xflow" / "orders" / "tracker.db").exists()
    assert process_state(imports=False) == before
