"""The redis transport against a real redis-server: the conformance kit, then what only Redis does."""

from __future__ import annotations

import json
import os

import pytest

from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.interfaces import PluginContext, Record
from xflow.testing import TransportContract, apply_steps, drain, new_workflow_id

# the suite skips, with the reason, where the plugin is not installed
RedisTransport = pytest.importorskip(
    "xflow_transport_redis.transport",
    reason="xflow-transport-redis is not installed: pip install -e plugins/xflow-transport-redis").RedisTransport


class TestRedisTransport(TransportContract):
    @pytest.fixture
    def transport_factory(self, redis_url, tmp_path):
        return lambda workflow_id: RedisTransport(PluginContext(workflow_id, {"url": redis_url}, tmp_path))


class TestRedisTransportOnePartition(TransportContract):
    @pytest.fixture
    def transport_factory(self, redis_url, tmp_path):
        options = {"url": redis_url, "partitions": "1", "maxlen": "1000"}
        return lambda workflow_id: RedisTransport(PluginContext(workflow_id, options, tmp_path))


@pytest.fixture
def make(redis_url, tmp_path):
    """Build redis transports on one fresh workflow; tear it down at the end."""
    workflow_id = new_workflow_id("redis")
    made: list[RedisTransport] = []

    def build(**options: str) -> RedisTransport:
        transport = RedisTransport(PluginContext(workflow_id, {"url": redis_url, **options}, tmp_path))
        made.append(transport)
        return transport

    yield build
    if made:
        apply_steps(made[0].plan_teardown(["Uploaded"]), made[0])
    for transport in made:
        transport.close()


DOOMED = """
import sys, time
from xflow.core.interfaces import PluginContext
from xflow.testing import drain
from xflow_transport_redis.transport import RedisTransport

transport = RedisTransport(PluginContext(sys.argv[1], {"url": sys.argv[2], "claim_idle": "1"}, "."))
consumer = transport.subscribe("reader", ["Uploaded"])
print(len(drain(consumer, 6, 10)), flush=True)
time.sleep(60)
"""


def test_a_killed_consumers_deliveries_go_to_another_after_claim_idle(make, redis_url, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    transport = make(claim_idle="1", partitions="2")
    apply_steps(transport.plan_setup(["Uploaded"]), transport)
    values = [f'{{"i": {i}}}'.encode() for i in range(6)]
    transport.publish("Uploaded", [Record(f"exec-{i % 3}", v) for i, v in enumerate(values)])
    # another process reads them all and is killed before it commits or closes (its lease keeper dies with it)
    doomed = subprocess.Popen([sys.executable, "-c", DOOMED, transport.workflow_id, redis_url], cwd=tmp_path,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert doomed.stdout is not None and doomed.stdout.readline().strip() == "6"
        survivor = make(claim_idle="1").subscribe("reader", ["Uploaded"])
        assert survivor.poll(10, 0.5) == []  # the leases of a live member are kept, however long it takes
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    started = time.monotonic()
    got = drain(survivor, 6, 20)
    assert sorted(d.value for d in got) == sorted(values)
    assert time.monotonic() - started >= 0.3  # not before the dead member's leases expired
    for key in ("exec-0", "exec-1", "exec-2"):
        assert [d.value for d in got if d.key == key] == [v for i, v in enumerate(values) if f"exec-{i % 3}" == key]
    survivor.commit(got)
    survivor.close()


def test_consumers_of_one_group_split_the_partitions_and_keep_order(make):
    transport = make(partitions="4")
    apply_steps(transport.plan_setup(["Uploaded"]), transport)
    first = transport.subscribe("reader", ["Uploaded"])
    second = make().subscribe("reader", ["Uploaded"])
    first.rebalance(force=True)
    assert len(first.owned) == 4
    second.rebalance(force=True)
    first.rebalance(force=True)  # gives up what is over its share now that two are alive
    second.rebalance(force=True)
    assert len(first.owned) == len(second.owned) == 2
    assert not first.owned & second.owned

    sent = [Record(f"exec-{i % 8}", f'{{"i": {i}}}'.encode()) for i in range(80)]
    transport.publish("Uploaded", sent)
    received = []
    for _ in range(40):
        for consumer in (first, second):
            batch = consumer.poll(7, 0.2)
            assert {(d.event, int(d.partition)) for d in batch} <= consumer.owned
            consumer.commit(batch)
            received.extend(batch)
        if len(received) >= 80:
            break
    assert sorted(d.value for d in received) == sorted(r.value for r in sent)
    for key in {r.key for r in sent}:
        assert [d.value for d in received if d.key == key] == [r.value for r in sent if r.key == key]
    first.close()
    second.close()


def test_dead_letters_are_kept_with_their_reason(make):
    transport = make()
    apply_steps(transport.plan_setup(["Uploaded"]), transport)
    transport.publish("Uploaded", [Record("e1", b"\xff not json")])
    consumer = transport.subscribe("reader", ["Uploaded"])
    [delivery] = drain(consumer, 1, 10)
    transport.dead_letter("reader", delivery, "not a JSON document")
    consumer.commit([delivery])
    [letter] = transport.dead_letters()
    assert letter["reason"] == "not a JSON document"
    assert letter["value"] == b"\xff not json"
    assert (letter["group"], letter["event"], letter["key"]) == ("reader", "Uploaded", "e1")
    consumer.close()
    teardown = transport.plan_teardown(["Uploaded"])
    assert "consumer-state:" + transport.workflow_id in [s.resource for s in teardown]


def test_an_unreachable_server_is_one_clear_error(tmp_path):
    from plugin_servers import free_port

    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    transport = RedisTransport(PluginContext(new_workflow_id(), {"url": url}, tmp_path))
    with pytest.raises(XflowError) as caught:
        transport.plan_setup(["Uploaded"])
    message = str(caught.value)
    assert "cannot reach redis://:***@127.0.0.1" in message
    assert "s3cret" not in message
    # a server that is not there may come back: BackendUnavailable (exit 1, workers wait), not a mistake (exit 2)
    assert isinstance(caught.value, BackendUnavailable) and caught.value.exit_code == 1


STEP = """
workflow_id: {wid}
lambdas:
  - {{name: step, source: steps.py, handler: step}}
subscriptions:
  - {{name: Started, subscribers: [step]}}
"""


def test_a_worker_rides_out_a_server_restart_and_a_refused_password_is_exit_2(tmp_path):
    """redis-server (persisting, with a password) stopped and started again under a running ``xflow worker``."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from plugin_servers import _wait_for_port, free_port

    port, password = free_port(), "pw@ s3cret"
    data, project = tmp_path / "redis", tmp_path / "project"  # apart: the project folder is the functions' code
    data.mkdir()
    project.mkdir()
    server_args = [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                   "--appendonly", "yes", "--requirepass", password, "--logfile", str(data / "redis.log")]

    def start() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(server_args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_for_port(port, server, "redis-server", data / "redis.log")
        return server

    wid = new_workflow_id("rr")
    (project / "steps.py").write_text("def step(event, ctx):\n    pass\n")
    (project / "flow.yaml").write_text(STEP.format(wid=wid))
    url = f"redis://:pw%40%20s3cret@127.0.0.1:{port}/0"
    env = {**os.environ, "XFLOW_REDIS_URL": url}

    def xflow(*args: str, **more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xflow.cli", "--state-dir", str(tmp_path / "state"), *args],
                              capture_output=True, text=True, cwd=project, timeout=120, env={**env, **more})

    def status(execution: str) -> str:
        done = xflow("track", "flow.yaml", execution, "--output", "json")
        return json.loads(done.stdout)["status"] if done.returncode in (0, 1) else done.stderr

    def settled(execution: str, seconds: float) -> float:
        started = time.monotonic()
        while status(execution) != "succeeded":
            assert time.monotonic() - started < seconds, f"{execution} did not settle in {seconds} s"
            time.sleep(0.3)
        return time.monotonic() - started

    server = start()
    log = (tmp_path / "worker.log").open("w")
    worker = None
    try:
        assert xflow("setup", "flow.yaml", "--transport", "redis", "--provider", "local", "--tracker",
                     "sqlite").returncode == 0
        wrong = xflow("publish", "flow.yaml", "Started", "{}", XFLOW_REDIS_URL=url.replace("pw%40", "nope"))
        assert wrong.returncode == 2 and "refused the credentials" in wrong.stderr, wrong.stderr
        assert "Traceback" not in wrong.stderr and "s3cret" not in wrong.stderr
        worker = subprocess.Popen([sys.executable, "-m", "xflow.cli", "--state-dir", str(tmp_path / "state"),
                                   "worker", "flow.yaml"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
        assert xflow("publish", "flow.yaml", "Started", "{}", "--execution-id", "before").returncode == 0
        settled("before", 60)
        server.send_signal(signal.SIGTERM)  # a clean stop: the append-only file keeps the streams
        server.wait(30)
        down = xflow("publish", "flow.yaml", "Started", "{}", "--execution-id", "down")
        assert down.returncode == 1 and "cannot reach" in down.stderr, down.stderr
        time.sleep(3)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        server = start()
        assert xflow("publish", "flow.yaml", "Started", "{}", "--execution-id", "after").returncode == 0
        recovered = settled("after", 60)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        # the server loses its data (as a restart without persistence would): one line, exit 2, no traceback
        import redis

        with redis.Redis(port=port, password=password) as client:
            client.flushall()
        assert worker.wait(60) == 2, (tmp_path / "worker.log").read_text()
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
        server.terminate()
        server.wait(30)
    text = (tmp_path / "worker.log").read_text()
    print(f"redis restart: the execution published after it settled within {recovered:.1f} s")
    assert "Traceback" not in text and "s3cret" not in text, text
    assert text.count("waiting for the transport 'redis'") == 1 and "the transport 'redis' is back after" in text, text
    assert text.strip().splitlines()[-1].startswith("error: redis transport: a stream or consumer group"), text


@pytest.mark.parametrize("options, words", [
    ({"url": "http://localhost"}, "not a redis:// URL"),
    ({"partitions": "many"}, "not a whole number"),
    ({"partitions": "0"}, "at least 1"),
    ({"claim_idle": "soon"}, "not a number of seconds"),
])
def test_bad_options_are_clear_errors(tmp_path, options, words):
    with pytest.raises(XflowError, match=words):
        RedisTransport(PluginContext("w", options, tmp_path))


def test_shrinking_partitions_is_refused(make):
    first = make(partitions="4")
    apply_steps(first.plan_setup(["Uploaded"]), first)
    with pytest.raises(XflowError, match="would drop some"):
        make(partitions="2").plan_setup(["Uploaded"])
    grow = make(partitions="6").plan_setup(["Uploaded"])
    assert [(s.action, s.detail) for s in grow] == [("update", "partitions 4 -> 6")]


def test_installed_plugin_is_found_by_name_and_checks_option_keys():
    from xflow.core.plugins import PluginRegistry, check_options

    info = PluginRegistry().get("transport", "redis")
    assert info.cls is RedisTransport
    assert info.distribution == "xflow-transport-redis"
    with pytest.raises(XflowError, match="it accepts: claim_idle, maxlen, partitions, url"):
        check_options(info, {"host": "x"}, "--option")


def test_url_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XFLOW_REDIS_URL", "redis://example.invalid:6390/2")
    assert RedisTransport(PluginContext("w", {}, tmp_path)).url == "redis://example.invalid:6390/2"


def word_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    word = ""
    for char in text + " ":
        if char.isalpha():
            word += char
        elif word:
            counts[word.lower()] = counts.get(word.lower(), 0) + 1
            word = ""
    return counts


def test_word_count_end_to_end_through_the_cli(redis_url, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    import redis

    examples = Path(__file__).resolve().parents[3] / "examples" / "word_count"
    sample = examples / "sample.txt"

    def xflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from xflow.cli import main; main()",
                               "--state-dir", str(tmp_path / "state"), *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)

    run = xflow("run", str(examples / "word_count.yaml"), "--transport", "redis", "--option", f"url={redis_url}",
                "--data", json.dumps({"path": str(sample)}), "--output", "json")
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout)
    assert summary["status"] == "succeeded"
    assert summary["result"]["counts"] == word_counts(sample.read_text(encoding="utf-8"))
    assert summary["result"]["total"] == sum(summary["result"]["counts"].values())

    client = redis.Redis.from_url(redis_url)
    assert client.hlen("xflow:{word_count}:streams") == 6
    teardown = xflow("teardown", str(examples / "word_count.yaml"), "--transport", "redis",
                     "--option", f"url={redis_url}")
    assert teardown.returncode == 0, teardown.stdout + teardown.stderr
    assert list(client.scan_iter(match="xflow:{word_count}:*")) == []
    client.close()
