"""Workers in separate processes share one execution history in PostgreSQL, driven through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# the suite skips, with the reason, where the plugin is not installed
pytest.importorskip("xflow_tracker_postgres",
    reason="xflow-tracker-postgres is not installed: pip install -e plugins/xflow-tracker-postgres")

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "word_count"
WORKFLOW = EXAMPLES / "word_count.yaml"
SAMPLE = EXAMPLES / "sample.txt"


def cli(state: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from xflow.cli import main; main()", "--state-dir", str(state),
                           *args], capture_output=True, text=True, cwd=state.parent, timeout=timeout)


def test_word_count_tracked_in_postgres(postgres_dsn, tmp_path):
    state = tmp_path / "state"
    run = cli(state, "run", str(WORKFLOW), "--tracker", "postgres", "--option", f"dsn={postgres_dsn}",
              "--data", json.dumps({"path": str(SAMPLE)}), "--output", "json")
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout)
    assert summary["status"] == "succeeded"
    execution = summary["execution_id"]
    track = cli(state, "track", str(WORKFLOW), execution, "--output", "json")
    assert track.returncode == 0, track.stderr
    assert [e["state"] for e in json.loads(track.stdout)["events"]] == ["processed"] * 6
    teardown = cli(state, "teardown", str(WORKFLOW))
    assert teardown.returncode == 0, teardown.stdout + teardown.stderr


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    pytest.importorskip("xflow_transport_redis", reason="needs the redis transport plugin installed")
    from plugin_servers import running_redis

    with running_redis() as url:
        yield url


def test_two_workers_on_redis_share_one_history(postgres_dsn, redis_url, tmp_path):
    state = tmp_path / "state"
    options = ["--transport", "redis", "--provider", "local", "--tracker", "postgres",
               "--option", f"url={redis_url}", "--option", f"dsn={postgres_dsn}"]
    setup = cli(state, "setup", str(WORKFLOW), *options)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    workers = [subprocess.Popen([sys.executable, "-c", "from xflow.cli import main; main()", "--state-dir",
                                 str(state), "worker", str(WORKFLOW)], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        executions = []
        for n in range(4):
            published = cli(state, "publish", str(WORKFLOW), "FileUploaded", json.dumps({"path": str(SAMPLE)}),
                            "--execution-id", f"shared-{n}")
            assert published.returncode == 0, published.stdout + published.stderr
            executions.append(f"shared-{n}")
        statuses: dict[str, str] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for execution in executions:
                track = cli(state, "track", str(WORKFLOW), execution, "--output", "json")
                assert track.returncode in (0, 1), track.stderr
                statuses[execution] = json.loads(track.stdout)["status"]
            if all(s != "running" for s in statuses.values()):
                break
            assert all(w.poll() is None for w in workers), "a worker stopped"
            time.sleep(1)
        assert statuses == {e: "succeeded" for e in executions}
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    teardown = cli(state, "teardown", str(WORKFLOW))
    assert teardown.returncode == 0, teardown.stdout + teardown.stderr
