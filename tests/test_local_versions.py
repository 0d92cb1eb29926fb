"""The local provider's versions, through the CLI: what a deployed copy holds, and how often setup and rollback read
the versions' records.

A copy holds what the handler's folder holds (data files too, so ``Path(__file__).parent / "words.txt"`` reads after
setup), walked like every source: a link leaving a folder source and a folder too big to copy are one-line errors,
while a link beside a file source that leaves its folder is left out of the copy with a warning; the workflow file is
left out, so editing one function in it makes no new version of the others beside it. Setup reads each function's
record once to plan and once per step on it, whatever the number of functions; rollback reads each once. The reads
are counted by an audit hook (:func:`sys.addaudithook`) in the CLI's process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from xflow_cli_testing import clean_env

from xflow.providers.local_versions import MAX_BYTES

LOCAL = ("--transport", "local", "--provider", "local", "--tracker", "sqlite")

READER = """
import json

_WORDS = __import__("pathlib").Path(__file__).parent / "words.txt"


def count(event, ctx):
    words = _WORDS.read_text().split()
    if event.get("out"):
        with open(event["out"], "w") as out:
            out.write(" ".join(words))
    return {"words": words, "n": event.get("n", 0)}
"""

FLOW = """
workflow_id: {wid}
functions:
  - name: counter
    source: counter.py
    handler: count
    publishes: [Counted]
    environment: {{MARK: "{mark}"}}
  - name: other
    source: other.py
    handler: count
    publishes: [Other]
subscriptions:
  - event: Go
    subscribers: [counter]
  - event: Again
    subscribers: [other]
  - event: Counted
    subscribers: []
  - event: Other
    subscribers: []
"""

#: runs the CLI (argv after the program) with an audit hook that appends, to $AUDIT_LOG, the path of every
#: ``deployments/*.json`` file opened for reading
AUDITED_CLI = """
import os, runpy, sys

_log = os.open(os.environ["AUDIT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _hook(event, args):
    if event == "open" and isinstance(args[1], str) and "r" in args[1] and not isinstance(args[0], int):
        path = os.fsdecode(os.fspath(args[0]))
        if os.sep + "deployments" + os.sep in path and path.endswith(".json"):
            os.write(_log, (path + "\\n").encode())


sys.addaudithook(_hook)
sys.argv = ["xflow", *sys.argv[1:]]
runpy.run_module("xflow.cli", run_name="__main__", alter_sys=True)
"""


def audited(cwd: Path, *args: str | Path) -> tuple[dict, Counter[str]]:
    """``xflow ARGS -o json`` run with the audit hook: its JSON output, and the records read (by function name)."""
    log = cwd / f"audit-{len(list(cwd.glob('audit-*')))}.log"
    done = subprocess.run([sys.executable, "-c", AUDITED_CLI, *map(str, args), "--output", "json"], cwd=cwd,
                          env=clean_env(AUDIT_LOG=str(log)), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    reads = Counter(Path(line).stem for line in log.read_text().splitlines()) if log.exists() else Counter()
    return json.loads(done.stdout), reads


def write_project(folder: Path, wid: str, mark: str = "a", words: str = "alpha beta") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "counter.py").write_text(READER)
    (folder / "other.py").write_text(READER)
    (folder / "words.txt").write_text(words)
    flow = folder / "flow.yaml"
    flow.write_text(FLOW.format(wid=wid, mark=mark))
    return flow


def wait_for(cli, flow: Path, execution: str, seconds: float = 60) -> dict:
    """The tracking summary of ``execution`` once it has settled (or the last one seen)."""
    deadline = time.monotonic() + seconds
    while True:
        done = cli("track", flow, execution, "--output", "json")
        summary = json.loads(done.stdout) if done.stdout.strip() else {}
        if summary.get("status") in ("succeeded", "failed") or time.monotonic() > deadline:
            return summary
        time.sleep(0.3)


def live_versions(cli, flow: Path) -> dict[str, str]:
    return {f["function"]: f["live"] for f in cli.json("versions", flow)["functions"]}


def test_a_file_sources_copy_holds_the_data_beside_it_and_a_data_change_is_a_version(cli, tmp_path: Path) -> None:
    flow = write_project(tmp_path / "project", "datafile")
    result = cli.json("run", flow, "--data", '{"n": 1}')
    assert result["status"] == "succeeded", result
    assert result["result"]["words"] == ["alpha", "beta"]
    copies = list((tmp_path / ".xflow" / "datafile" / "deployments" / "code").iterdir())
    assert len(copies) == 1
    assert sorted(p.name for p in copies[0].iterdir()) == ["counter.py", "other.py", "words.txt"]  # not flow.yaml

    (flow.parent / "words.txt").write_text("gamma")  # data only: a new version, and the handler reads the new data
    assert cli.json("run", flow, "--data", '{"n": 2}')["result"]["words"] == ["gamma"]
    assert live_versions(cli, flow) == {"counter": "2", "other": "2"}
    (flow.parent / "words.txt").write_text("changed after setup")  # the worker runs the copy, not the folder
    out = tmp_path / "read.txt"
    done = cli("publish", flow, "Go", json.dumps({"out": str(out)}), "--execution-id", "from-copy")
    assert done.returncode == 0, done.stderr
    worker = cli.popen("worker", flow)
    try:
        summary = wait_for(cli, flow, "from-copy")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert summary["status"] == "succeeded", summary
    assert out.read_text() == "gamma"


def test_editing_the_workflow_file_for_one_function_makes_no_version_of_the_others(cli, tmp_path: Path) -> None:
    flow = write_project(tmp_path / "project", "edits")
    cli.json("setup", flow, *LOCAL)
    flow.write_text(FLOW.format(wid="edits", mark="b"))  # the environment of counter only
    changes = {(c["action"], c["resource"]) for c in cli.json("setup", flow)["changes"]}
    assert changes == {("create", "version:counter"), ("update", "alias:counter")}
    assert live_versions(cli, flow) == {"counter": "2", "other": "1"}


def test_a_link_leaving_a_file_sources_folder_is_left_out_of_the_copy_with_a_warning(cli, tmp_path: Path) -> None:
    """A file source's folder is copied only so that what lies beside the file is there too: a link in it that leaves
    it is not shipped (as no source ever ships one), but it does not stop the run either; a warning names it."""
    flow = write_project(tmp_path / "project", "links")
    (tmp_path / "secret.txt").write_text("not the handler's")
    (flow.parent / "notes.txt").symlink_to(tmp_path / "secret.txt")
    (flow.parent / "nothing.txt").symlink_to("gone.txt")  # dangles: left out too
    done = cli("run", flow, "--data", '{"n": 1}', "--output", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["words"] == ["alpha", "beta"]
    assert not [line for line in done.stderr.splitlines() if line.startswith("error:")], done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, done.stderr
    assert "symbolic link 'notes.txt' points outside the source" in warnings[0] and "left out" in warnings[0]
    assert "symbolic link 'nothing.txt' points at nothing" in warnings[1] and "left out" in warnings[1]
    (copy,) = (tmp_path / ".xflow" / "links" / "deployments" / "code").iterdir()
    assert sorted(p.name for p in copy.iterdir()) == ["counter.py", "other.py", "words.txt"]
    state = [p for p in (tmp_path / ".xflow").rglob("*") if p.is_file()]
    assert state and not any(b"not the handler's" in p.read_bytes() for p in state)
    again = cli("setup", flow, "--output", "json")  # the same copy: nothing changes
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changes"] == []


def test_a_link_leaving_a_folder_source_is_refused_in_one_line(cli, tmp_path: Path) -> None:
    """Also when a file source lies in the same folder (planned first: its copy leaves the link out)."""
    (tmp_path / "secret.txt").write_text("not the handler's")
    folder = tmp_path / "folder"
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "counter.py").write_text(READER)
    (folder / "pkg" / "words.txt").write_text("alpha beta")
    (folder / "pkg" / "notes.txt").symlink_to(tmp_path / "secret.txt")
    (folder / "flow.yaml").write_text("""
workflow_id: folderlink
functions:
  - {name: single, source: pkg/counter.py, handler: count}
  - {name: whole, source: pkg, handler: counter.count}
subscriptions:
  - {event: Go, subscribers: [single, whole]}
""")
    done = cli("run", folder / "flow.yaml", *LOCAL)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "symbolic link 'notes.txt' points outside the source" in errors[0], done.stderr
    assert not (tmp_path / ".xflow" / "folderlink" / "deployments" / "code").exists()


def test_a_link_inside_the_folder_is_copied_as_the_file(cli, tmp_path: Path) -> None:
    flow = write_project(tmp_path / "project", "inlinks")
    (flow.parent / "data").mkdir()
    (flow.parent / "words.txt").rename(flow.parent / "data" / "words.txt")
    (flow.parent / "words.txt").symlink_to(Path("data") / "words.txt")
    assert cli.json("run", flow)["result"]["words"] == ["alpha", "beta"]
    (copy,) = (tmp_path / ".xflow" / "inlinks" / "deployments" / "code").iterdir()
    assert not (copy / "words.txt").is_symlink() and (copy / "words.txt").read_text() == "alpha beta"


def test_a_folder_too_big_to_copy_is_refused_before_it_is_read(cli, tmp_path: Path) -> None:
    flow = write_project(tmp_path / "project", "big")
    with open(flow.parent / "huge.bin", "wb") as huge:  # sparse: no disk used, and never read
        huge.truncate(MAX_BYTES + 1)
    done = cli("setup", flow, *LOCAL, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"holds more than 20000 files or {MAX_BYTES >> 20} MiB" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("functions", [2, 6])
def test_setup_and_rollback_read_each_record_once_per_use(tmp_path: Path, functions: int) -> None:
    names = [f"f{i}" for i in range(functions)]
    project = tmp_path / "project"
    for name in names:
        (project / name).mkdir(parents=True)
        (project / name / "handler.py").write_text(f"NAME = {name!r}\n\ndef handle(event, ctx):\n    return None\n")
    flow = project / "flow.yaml"
    flow.write_text("workflow_id: reads\nfunctions:\n"
                    + "".join(f"  - {{name: {n}, source: {n}, handler: handler.handle}}\n" for n in names)
                    + "subscriptions:\n" + "".join(f"  - {{event: E{n}, subscribers: [{n}]}}\n" for n in names))
    audited(tmp_path, "setup", flow, *LOCAL)
    for name in names:
        (project / name / "handler.py").write_text(f"NAME = {name!r} * 2\n\ndef handle(event, ctx):\n    return None\n")
    report, reads = audited(tmp_path, "setup", flow)
    assert len(report["changes"]) == 2 * functions
    # planning reads each record once, publishing and moving the alias once each: 3, however many functions
    assert reads == Counter({name: 3 for name in names})

    report, reads = audited(tmp_path, "rollback", flow)
    assert sorted((r["function"], r["from"], r["to"]) for r in report["rolled_back"]) == [(n, "2", "1") for n in names]
    assert reads == Counter({name: 1 for name in names})
    assert len(os.listdir(tmp_path / ".xflow" / "reads" / "deployments" / "code")) == 2 * functions
