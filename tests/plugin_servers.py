"""Real servers for the plugin tests: a redis-server and a PostgreSQL cluster on free loopback ports.

Each starts in its own temporary folder and is stopped (and the folder removed) at the end.
Used as pytest fixtures (``redis_url``, ``postgres_dsn``, both session-scoped) by the test
suites of ``plugins/xflow-transport-redis`` and ``plugins/xflow-tracker-postgres``, and as
plain context managers (``running_redis()``, ``running_postgres()``) by benchmarks.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = "run: source .ci/install-plugins.sh"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen[bytes] | None, what: str, log: Path,
                   timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not start on port {port}:\n{text}")


@contextlib.contextmanager
def running_redis() -> Iterator[str]:
    """Start ``redis-server`` without persistence; yield its ``redis://`` URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(f"redis-server is not installed ({INSTALL_HINT})")
    folder = Path(tempfile.mkdtemp(prefix="xflow-redis-"))
    port = free_port()
    log = folder / "redis.log"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
         "--appendonly", "no", "--protected-mode", "no", "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(port, process, "redis-server", log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def postgres_bin() -> Path:
    """The folder of ``initdb``/``pg_ctl``: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not candidates:
        pytest.fail(f"PostgreSQL (initdb, pg_ctl) is not installed ({INSTALL_HINT})")
    return Path(candidates[-1]).parent


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """Start a throw-away PostgreSQL cluster (trust auth, fsync off); yield its ``postgresql://`` DSN."""
    bin_dir = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="xflow-postgres-"))
    data, log = folder / "data", folder / "postgres.log"
    # PostgreSQL refuses to run as root: run it as the 'postgres' system user then
    user = "postgres" if os.geteuid() == 0 else None
    if user:
        shutil.chown(folder, user)
    port = free_port()
    run = {"user": user, "check": True, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    try:
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "xflow", "--auth=trust", "-E", "UTF8",
                        "--no-locale", "--no-sync"], **run)  # type: ignore[call-overload]
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                        "-c synchronous_commit=off -c full_page_writes=off", "start"], **run)  # type: ignore[call-overload]
    except subprocess.CalledProcessError as exc:
        text = (exc.stdout or b"").decode(errors="replace")
        text += log.read_text(errors="replace")[-2000:] if log.exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {text}") from None
    try:
        yield f"postgresql://xflow@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       user=user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A running redis-server for the whole session (one per xdist worker)."""
    with running_redis() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A running PostgreSQL server for the whole session (one per xdist worker)."""
    with running_postgres() as dsn:
        yield dsn
