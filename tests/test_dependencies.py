"""Function requirements: a requirements.txt beside a function's source (or requirements: in the file) is installed
into a per-function environment by the local provider, which the handler imports from, and into the Lambda zip for
the function's runtime and architecture. The package is a tiny pure-Python project built into a local wheel here:
no network (pip runs with --no-index --find-links)."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from xflow_cli_testing import CLI

PACKAGE = "xflowtinydep"

HANDLER = f"""
import {PACKAGE}

def handle(event, ctx):
    return {{"version": {PACKAGE}.VERSION, "module": {PACKAGE}.__file__, "n": event.get("n", 0) + 1}}
"""

FLOW = """
workflow_id: {wid}
lambdas:
  - name: uses_dep
    handler: handler.handle
    source: fn
{extra}
    publishes: [Done]
subscriptions:
  - event: Go
    subscribers: [uses_dep]
  - event: Done
    subscribers: []
"""


def build_wheel(folder: Path, version: str) -> Path:
    """A wheel of a tiny pure-Python package (with a console script, which artifacts leave out)."""
    project = folder / f"project-{version}"
    (project / PACKAGE).mkdir(parents=True)
    (project / PACKAGE / "__init__.py").write_text(f'VERSION = "{version}"\n\ndef main():\n    print(VERSION)\n')
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{PACKAGE}"
        version = "{version}"
        [project.scripts]
        {PACKAGE}-cmd = "{PACKAGE}:main"
        """))
    wheels = folder / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(wheels), str(project)], check=True, capture_output=True, timeout=300)
    return wheels


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    for version in ("1.2.3", "1.2.4"):
        found = build_wheel(folder, version)
    return found


def project(root: Path, wheels: Path, wid: str, *, version: str = "1.2.3", in_file: bool = False,
            extra: str = "") -> Path:
    (root / "fn").mkdir(parents=True, exist_ok=True)
    (root / "fn" / "handler.py").write_text(HANDLER)
    lines = ["--no-index", f"--find-links {wheels}", f"{PACKAGE}=={version}"]
    if in_file:
        extra += "\n    requirements:\n" + "".join(f"      - {json.dumps(line)}\n" for line in lines)
    else:
        (root / "fn" / "requirements.txt").write_text("# pinned for Lambda and here alike\n" + "\n".join(lines) + "\n")
    flow = root / "flow.yaml"
    flow.write_text(FLOW.format(wid=wid, extra=extra.rstrip("\n")))
    return flow


def test_the_test_interpreter_does_not_have_the_package() -> None:
    assert importlib.util.find_spec(PACKAGE) is None  # so the imports below can only come from the environments


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_a_handler_imports_its_requirements_on_the_local_provider(cli: CLI, tmp_path: Path, wheels: Path,
                                                                  isolation: str) -> None:
    flow = project(tmp_path, wheels, "deps")
    result = cli.json("run", flow, "--data", '{"n": 1}', "--option", f"isolation={isolation}")
    assert result["status"] == "succeeded", result
    environment = (tmp_path / ".xflow" / "deps" / "requirements" / "uses_dep").resolve()
    assert result["result"]["version"] == "1.2.3" and result["result"]["n"] == 2
    assert Path(result["result"]["module"]).resolve().is_relative_to(environment)
    assert (environment / ".xflow-requirements").is_file()


def test_requirements_in_the_file_install_once_and_again_when_they_change(cli: CLI, tmp_path: Path,
                                                                          wheels: Path) -> None:
    local = ("--transport", "local", "--provider", "local", "--tracker", "sqlite")
    flow = project(tmp_path, wheels, "filed", in_file=True)
    first = cli.json("setup", flow, *local)
    assert {"action": "create", "resource": "requirements:uses_dep"} in first["changes"]
    assert cli.json("setup", flow, *local)["changes"] == []  # installed: nothing to do
    flow = project(tmp_path, wheels, "filed", in_file=True, version="1.2.4")
    assert {"action": "update", "resource": "requirements:uses_dep"} in cli.json("setup", flow, *local)["changes"]
    assert cli.json("run", flow)["result"]["version"] == "1.2.4"
    down = cli.json("teardown", flow)
    assert any(c["resource"].startswith("requirements:") for c in down["changes"])
    assert not (tmp_path / ".xflow").exists()


def test_a_worker_installs_what_setup_did_not(cli: CLI, tmp_path: Path, wheels: Path) -> None:
    """A worker on a machine where setup did not run (the embedded backends set up, the environment removed)."""
    import shutil

    flow = project(tmp_path, wheels, "later")
    cli.json("setup", flow, "--transport", "local", "--provider", "local", "--tracker", "sqlite")
    shutil.rmtree(tmp_path / ".xflow" / "later" / "requirements")
    result = cli.json("run", flow)  # run sets up again, and its worker finds the environment in place
    assert result["status"] == "succeeded" and result["result"]["version"] == "1.2.3"


def test_a_requirement_pip_cannot_install_is_a_one_line_error(cli: CLI, tmp_path: Path, wheels: Path) -> None:
    flow = project(tmp_path, wheels, "missing")
    (tmp_path / "fn" / "requirements.txt").write_text(f"--no-index\n--find-links {wheels}\nno-such-package-xyz==1.0\n")
    done = cli("run", flow)
    assert done.returncode == 2
    assert "pip could not install the requirements" in done.stderr and "no-such-package-xyz" in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1


def test_a_missing_requirements_file_named_in_the_file_is_reported(cli: CLI, tmp_path: Path, wheels: Path) -> None:
    flow = project(tmp_path, wheels, "named", extra="    requirements: nowhere/requirements.txt")
    done = cli("validate", flow)
    assert done.returncode == 2 and "requirements file 'nowhere/requirements.txt' does not exist" in done.stderr


@pytest.mark.parametrize("architecture", ["x86_64", "arm64"])
def test_the_lambda_zip_holds_the_requirements_for_its_runtime_and_architecture(cli: CLI, tmp_path: Path, wheels: Path,
                                                                                architecture: str) -> None:
    flow = project(tmp_path, wheels, "zipped", extra=f"    architecture: {architecture}\n    runtime: python3.12")
    manifest = json.loads(cli("package", flow, "--output", tmp_path / "pkg", "--format", "json").stdout)
    entry = next(a for a in manifest["artifacts"] if a.get("function") == "uses_dep")
    assert entry["architecture"] == architecture and entry["manifest"]["requirements"]["where"] == "zip"
    data = (tmp_path / "pkg" / entry["file"]).read_bytes()
    archive = zipfile.ZipFile(io.BytesIO(data))
    names = archive.namelist()
    assert f"{PACKAGE}/__init__.py" in names and f"{PACKAGE}-1.2.3.dist-info/METADATA" in names
    assert not [n for n in names if n.startswith("bin/") or n.endswith(".pyc")]  # console scripts name this machine
    record = archive.read(f"{PACKAGE}-1.2.3.dist-info/RECORD").decode()
    assert "../" not in record and f"{PACKAGE}/__init__.py" in record
    # the zip's code imports the package, as Lambda's runtime would: its root and the function's folder on the path
    root = tmp_path / "task"
    archive.extractall(root)
    probe = (f"import sys; sys.path[:0] = [{str(root / 'function')!r}, {str(root)!r}]; import handler; "
             f"print(handler.{PACKAGE}.VERSION, handler.{PACKAGE}.__file__)")
    done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    version, where = done.stdout.split()
    assert version == "1.2.3" and Path(where).is_relative_to(root)


def test_lambda_requirements_are_installed_for_the_functions_platform(tmp_path: Path, wheels: Path) -> None:
    """pip is asked for the function's platform: a wheel built for another one (here a macOS one) is not taken for
    Lambda, where this machine's pip would take a wheel for itself."""
    import shutil

    from xflow.core.errors import XflowError
    from xflow.sources.requirements import Requirements, install

    other = tmp_path / "other-platform"
    other.mkdir()
    shutil.copy(wheels / f"{PACKAGE}-1.2.3-py3-none-any.whl", other / f"{PACKAGE}-1.2.3-cp312-cp312-macosx_11_0_arm64.whl")
    wanted = Requirements(("--no-index", f"--find-links {other}", f"{PACKAGE}==1.2.3"), "test", tmp_path)
    with pytest.raises(XflowError, match="could not install the requirements for arm64/python3.12"):
        install(wanted, tmp_path / "target", runtime="python3.12", architecture="arm64")
    ours = Requirements(("--no-index", f"--find-links {wheels}", f"{PACKAGE}==1.2.3"), "test", tmp_path)
    install(ours, tmp_path / "target", runtime="python3.12", architecture="arm64")  # a pure wheel fits every platform
    assert (tmp_path / "target" / PACKAGE / "__init__.py").is_file()


#: runs the CLI (argv after the program) with an audit hook that appends to $AUDIT_LOG a line for each ``git fetch``
#: the process starts (a remote source fetched)
COUNTING_GIT = """
import os, runpy, sys

_log = os.open(os.environ["AUDIT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _hook(event, args):
    if event == "subprocess.Popen" and "fetch" in [str(a) for a in (args[1] or ())]:
        os.write(_log, b"fetch\\n")


sys.addaudithook(_hook)
sys.argv = ["xflow", *sys.argv[1:]]
runpy.run_module("xflow.cli", run_name="__main__", alter_sys=True)
"""


def git_project(root: Path, wheels: Path, wid: str) -> Path:
    """A workflow whose function's source is a git repository holding the handler and its requirements.txt."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    (repo / "handler.py").write_text(HANDLER)
    (repo / "requirements.txt").write_text(f"--no-index\n--find-links {wheels}\n{PACKAGE}==1.2.3\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    for args in (["init", "--quiet"], ["add", "."], ["commit", "--quiet", "-m", "handler"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True, timeout=60)
    flow = root / "flow.yaml"
    flow.write_text(FLOW.format(wid=wid, extra="").replace("source: fn", f'source: "git+file://{repo}@main#path=."'))
    return flow


def work_until_settled(cli: CLI, flow: Path, execution: str, audit: Path, seconds: float = 90) -> tuple[dict, int]:
    """Start ``xflow worker`` (git fetches counted in ``audit``) until ``execution`` settles: its summary, the fetches."""
    import time

    from xflow_cli_testing import clean_env

    log = open(audit.with_suffix(".out"), "w")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-c", COUNTING_GIT, "worker", str(flow)], cwd=cli.cwd,
                              env=clean_env(AUDIT_LOG=str(audit)), stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + seconds
        while True:
            done = cli("track", flow, execution, "--output", "json")
            summary = json.loads(done.stdout) if done.stdout.strip() else {}
            if summary.get("status") in ("succeeded", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
    assert summary.get("status") == "succeeded", (summary, audit.with_suffix(".out").read_text())
    return summary, len(audit.read_text().splitlines()) if audit.exists() else 0


def test_a_worker_takes_a_remote_sources_requirements_from_setup_and_fetches_it_once(cli: CLI, tmp_path: Path,
                                                                                     wheels: Path) -> None:
    """Setup installed the git source's requirements: a worker fetches the source only to run it, and imports them."""
    flow = git_project(tmp_path, wheels, "remote")
    first = cli.json("setup", flow, "--transport", "local", "--provider", "local", "--tracker", "sqlite")
    assert {"action": "create", "resource": "requirements:uses_dep"} in first["changes"]
    assert cli("publish", flow, "Go", '{"n": 1}', "--execution-id", "e1").returncode == 0
    _, fetches = work_until_settled(cli, flow, "e1", tmp_path / "audit-1.log")
    assert fetches == 1  # the dispatcher's; not one more to look for a requirements.txt

    # a machine where setup did not run (no setup record, no environment): the worker looks in the source itself
    import shutil

    (tmp_path / ".xflow" / "remote" / "setup.json").unlink()
    shutil.rmtree(tmp_path / ".xflow" / "remote" / "requirements")
    assert cli("publish", flow, "Go", '{"n": 2}', "--execution-id", "e2", "--transport", "local").returncode == 0
    _, fetches = work_until_settled(cli, flow, "e2", tmp_path / "audit-2.log")
    assert fetches == 2
    assert (tmp_path / ".xflow" / "remote" / "requirements" / "uses_dep" / ".xflow-requirements").is_file()
