"""Hostile input and damaged state through the front door: one line `error: ... (hint: ...)`, never a traceback.

Unknown execution ids, data that is not strict JSON (binary, absurdly deep, NaN/Infinity, too large),
a setup record that is JSON but not setup's object, and SQLite files of the embedded backends that
hold garbage. Each case was a traceback, a wrong answer or a silent acceptance before.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xflow_cli_testing import clean_env, xflow_command

from xflow import Engine
from xflow.core.engine import MAX_DATA_DEPTH, check_event_data
from xflow.core.errors import XflowError

FLOW = """
functions:
  - name: first
    source: steps.py
    handler: first
    publishes: [B]
  - name: second
    source: steps.py
    handler: second
subscriptions:
  - event: A
    subscribers: [first]
  - event: B
    subscribers: [second]
"""
STEPS = """
def first(event, ctx):
    return {"n": event.get("n", 0) + 1}

def second(event, ctx):
    return None
"""
EMBEDDED = ("--transport", "local", "--provider", "local", "--tracker", "sqlite")


@pytest.fixture
def flow(make_workflow) -> Path:
    return make_workflow(FLOW, {"steps.py": STEPS})


def one_line_error(done: subprocess.CompletedProcess[str], status: int = 2) -> str:
    """The single stderr line of a refused command (asserting the exit status and the absence of a traceback)."""
    assert done.returncode == status, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def executions(flow: Path, state: Path) -> list[str]:
    with Engine(flow, state_dir=state) as engine:
        return engine.recent_executions(100)


# -- 1. track of an id that was never published ----------------------------------------------------------------
def test_track_of_an_unknown_id_is_an_error_that_lists_recent_ids(cli, flow, tmp_path):
    known = [cli.json("run", flow, "--data", json.dumps({"n": i}))["execution_id"] for i in range(2)]

    done = cli("track", flow, "never-published")
    line = one_line_error(done, status=1)
    assert "never-published" in line and "unknown" in line
    assert all(execution in line for execution in known)
    assert line.index(known[1]) < line.index(known[0])  # most recent first
    assert done.stdout == ""

    # -o json: the contract's object on stdout all the same, the error on stderr, exit 1
    done = cli("track", flow, "never-published", "--output", "json")
    one_line_error(done, status=1)
    summary = json.loads(done.stdout)
    assert set(summary) == {"workflow_id", "execution_id", "status", "events", "last_unprocessed_event"}
    assert summary["execution_id"] == "never-published"
    assert [e["state"] for e in summary["events"]] == ["not_reached", "not_reached"]

    # the seed's spelling too; and a known id is still fine
    one_line_error(cli("track", "-flow", "flow", "-execution_id", "never-published"), status=1)
    assert cli.json("track", flow, known[0])["status"] == "succeeded"


def test_track_of_an_unknown_id_with_no_executions_at_all(cli, flow):
    assert cli("setup", flow, *EMBEDDED).returncode == 0
    line = one_line_error(cli("track", flow, "nothing-yet"), status=1)
    assert "nothing-yet" in line and "hint:" in line


# -- 2. data that is not strict JSON -------------------------------------------------------------------------------
def _hostile_files(folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir(exist_ok=True)
    cases = {
        "binary": (bytes(range(256)) * 4, "not UTF-8"),
        "deep": (b"[" * 100_000 + b"]" * 100_000, "deep"),
        "deep object": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "deep"),
        "nan": (b'{"x": NaN}', "NaN"),
        "infinity": (b'{"x": [1, Infinity]}', "Infinity"),
        "number too large for a float": (b'{"x": {"y": [1e999]}}', "Infinity"),
        "minus infinity": (b'{"x": {"y": -Infinity}}', "Infinity"),
        "too deep to carry": (b'{"a":' * (MAX_DATA_DEPTH + 1) + b"1" + b"}" * (MAX_DATA_DEPTH + 1), "levels"),
        "too large": (b'{"x": "' + b"a" * (10 * 1024 * 1024) + b'"}', "MiB"),
        "not an object": (b"[1, 2]", "JSON object"),
    }
    files = {}
    for name, (content, expected) in cases.items():
        path = folder / (name.replace(" ", "_") + ".json")
        path.write_bytes(content)
        files[name] = (path, expected)
    return files


def test_publish_refuses_data_that_is_not_strict_json(cli, flow, tmp_path):
    assert cli("setup", flow, *EMBEDDED).returncode == 0
    for name, (path, expected) in _hostile_files(tmp_path / "data").items():
        line = one_line_error(cli("publish", flow, "A", f"@{path}"))
        assert expected in line, (name, line)
        if path.stat().st_size < 1000:  # the same text given inline
            line = one_line_error(cli("publish", flow, "A", path.read_text(encoding="latin-1")))
            assert expected in line or "UTF-8" in line, (name, line)
    assert executions(flow, tmp_path / ".xflow") == []  # nothing reached the wire or the tracker
    done = cli("publish", flow, "A", '{"x": 1.5, "y": null}')
    assert done.returncode == 0 and executions(flow, tmp_path / ".xflow") == [done.stdout.strip()]


def test_run_refuses_such_data_before_setting_anything_up(cli, flow, tmp_path):
    for name, (path, expected) in _hostile_files(tmp_path / "data").items():
        line = one_line_error(cli("run", flow, "--data", f"@{path}"))
        assert expected in line, (name, line)
    one_line_error(cli("run", flow, "--data", '{"x": NaN}'))
    assert not (tmp_path / ".xflow").exists()


def test_engine_publish_never_puts_nan_or_infinity_on_the_wire(flow, tmp_path):
    with Engine(flow, state_dir=tmp_path / "state") as engine:
        engine.setup()
        for bad in ({"x": math.nan}, {"x": [1.0, math.inf]}, {"x": {"y": -math.inf}}):
            with pytest.raises(XflowError, match="NaN or Infinity"):
                engine.publish("A", bad)
        with pytest.raises(XflowError, match="not JSON-serialisable"):
            engine.publish("A", {"x": object()})
        deep: dict = {}
        for _ in range(MAX_DATA_DEPTH + 5):
            deep = {"a": deep}
        with pytest.raises(XflowError, match="levels deep"):
            engine.publish("A", deep)
        with pytest.raises(XflowError, match="NaN or Infinity"):
            engine.run(data={"x": math.nan}, timeout=5)
        assert engine.recent_executions() == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5)
    | st.floats(allow_nan=True, allow_infinity=True),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=20)


def _finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


@given(st.dictionaries(st.text(max_size=5), json_values, max_size=4))
@settings(max_examples=200, deadline=None)
def test_event_data_is_accepted_exactly_when_it_is_strict_json(data):
    if _finite(data):
        check_event_data(data)
        assert json.loads(json.dumps(data, allow_nan=False)) == data
    else:
        with pytest.raises(XflowError, match="NaN or Infinity"):
            check_event_data(data)


@given(st.dictionaries(st.text(max_size=5), json_values, max_size=4))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_cli_data_round_trips_or_is_refused_in_one_line(data):
    from xflow.cli_input import json_object_argument

    text = json.dumps(data)  # Python writes NaN/Infinity for non-finite floats: not JSON
    if _finite(data):
        assert json_object_argument(text, "DATA") == data
    else:
        with pytest.raises(XflowError, match="not a JSON value"):
            json_object_argument(text, "DATA")


# -- 3. damaged files in the state folder -------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["[1, 2]", '"setup"', "42", "null", '{"workflow_file": "x.yaml", "transport": "local"}',
                                     '{"workflow_file": 7}', '{"workflow_file": "x.yaml", "tracker": {"options": [1]}}',
                                     "{not json", "\udcff"])
def test_a_setup_record_that_is_not_setups_object_is_named(cli, flow, tmp_path, content):
    assert cli("setup", flow, *EMBEDDED).returncode == 0
    record = tmp_path / ".xflow" / "flow" / "setup.json"
    record.write_bytes(content.encode("utf-8", "surrogateescape"))
    for args in (("track", flow, "x"), ("publish", flow, "A", "{}"), ("track", "-flow", "flow", "-execution_id", "x"),
                 ("teardown", flow)):
        line = one_line_error(cli(*args))
        assert str(Path(".xflow") / "flow" / "setup.json") in line and "hint: move" in line, line


def _garbage(path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(os.urandom(8192))


def _malformed(path: Path) -> None:
    """Keep the SQLite header, damage the pages after it."""
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with path.open("r+b") as file:
        file.seek(100)
        file.write(b"\xff" * 3000)
        file.seek(4096)
        file.write(os.urandom(max(0, path.stat().st_size - 4096)))


@pytest.mark.parametrize("damage", [_garbage, _malformed])
def test_a_damaged_event_log_is_named_as_the_users_file(cli, flow, tmp_path, damage):
    cli.json("run", flow)
    log = tmp_path / ".xflow" / "flow" / "events.db"
    damage(log)
    for args in (("publish", flow, "A", "{}"), ("setup", flow), ("run", flow, "--timeout", "10"), ("teardown", flow)):
        line = one_line_error(cli(*args, timeout=60))
        assert "events.db" in line and "damaged" in line and "move it away" in line, line
        assert "report it" not in line


@pytest.mark.parametrize("damage", [_garbage, _malformed])
def test_a_damaged_tracker_is_named_and_stops_a_worker_before_it_takes_records(cli, flow, tmp_path, damage):
    cli.json("run", flow)
    tracker = tmp_path / ".xflow" / "flow" / "tracker.db"
    damage(tracker)
    commands = [("track", flow, "x"), ("redrive", flow, "x")]
    if damage is _garbage:  # a header that is not SQLite is refused before anything runs or is published
        commands += [("setup", flow, "--dry-run"), ("publish", flow, "A", "{}"), ("worker", flow),
                     ("run", flow, "--timeout", "10")]
    for args in commands:
        done = cli(*args, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
        line = done.stderr.strip().splitlines()[-1]
        assert "tracker.db" in line and "damaged" in line and "report it" not in line, line
    if damage is _garbage:  # nothing was published while the tracker could not record it
        with Engine(flow, state_dir=tmp_path / ".xflow") as engine:
            consumer = engine.transport.subscribe("probe", ["A"])
            assert len(consumer.poll(100, 0)) == 1  # the first run's event only
            consumer.close()


# -- the region error names both variables boto3 reads -------------------------------------------------------------
def test_no_region_names_both_variables(flow, tmp_path):
    env = {k: v for k, v in clean_env().items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    done = subprocess.run(xflow_command("setup", str(flow), "--dry-run"), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    line = one_line_error(done)
    assert "region" in line and "AWS_REGION" in line and "AWS_DEFAULT_REGION" in line


# -- 4. hostile plugin option values: converted by their declared types, refused in one short line ------------------
@pytest.mark.parametrize("option, words", [
    ("partitions=NaN", "option partitions='NaN' from --option is not a whole number"),
    ("partitions=1e999", "option partitions='1e999' from --option is not a whole number"),
    ("partitions=4.5", "is not a whole number"),
    ("partitions=\u0663", "is not a whole number"),  # an Arabic-Indic digit: int() would take it
    ("partitions=" + "9" * 5000, "is not a whole number xflow takes (5000 digits)"),
    ("partitions=0x10", "is not a whole number"),
    ("lease_seconds=inf", "is not a number of seconds or a duration such as 500ms, 10s, 2m, 1h (not finite)"),
    ("poll_interval=-1s", "is not a number of seconds or a duration"),
    ("poll_interval=0.1fortnight", "unknown unit 'fortnight'"),
    ("concurrency=7\nnine", "option concurrency='7\\nnine' from --option"),  # a value that spans lines: shown escaped
    ("isolation=process thread", "names an unknown isolation; choose one of: process, thread"),
    ("propagate_logs=truee", "is not true or false"),
])
def test_hostile_option_values_are_refused_in_one_short_line(cli, flow, tmp_path, option, words):
    line = one_line_error(cli("setup", flow, *EMBEDDED, "--option", option))
    assert words in line and len(line) < 400, line
    assert not (tmp_path / ".xflow").exists()


@pytest.mark.parametrize("block, words", [
    ("transport: {name: local, options: {partitions: [1, 2]}}", "option partitions=[1, 2] from the workflow file"),
    ("transport: {name: local, options: {lease_seconds: 2026-01-31}}", "option lease_seconds='2026-01-31' from the "
                                                                        "workflow file"),
    ("provider: {name: local, options: {isolation: {process: 1}}}", "option isolation={'process': 1} from the workflow "
                                                                     "file"),
    ("provider: {name: local, options: {propagate_logs: 2}}", "option propagate_logs=2 from the workflow file"),
    ("tracker: {name: sqlite, options: {path: [a, b]}}", "option path=['a', 'b'] from the workflow file"),
])
def test_hostile_option_values_in_the_file_are_named_there(cli, make_workflow, tmp_path, block, words):
    path = make_workflow(FLOW + block + "\n", {"steps.py": STEPS})
    line = one_line_error(cli("setup", path, *EMBEDDED))
    assert words in line and f"{path} (" in line, line
    assert not (tmp_path / ".xflow").exists()
