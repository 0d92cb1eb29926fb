"""Reproducible artifacts: xflow package gives the same bytes from the same sources and requirements whatever the
folder, the files' times and the umask; it touches no backend; setup --from deploys those bytes to every stage (their
CodeSha256 is the manifest's) and refuses a package that does not match the workflow file."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from aws_server import aws_endpoint  # noqa: F401
from test_dependencies import PACKAGE, build_wheel
from xflow_cli_testing import CLI, clean_env, xflow_command

FLOW = """
workflow_id: {wid}
lambdas:
  - name: first
    handler: steps.first
    source: src
    publishes: [Middle]
  - name: second
    handler: tool.second
    source: tool.py
    retries: 1
subscriptions:
  - event: Start
    subscribers: [first]
  - event: Middle
    subscribers: [second]
"""
STEPS = f"import {PACKAGE}\n\ndef first(event, ctx):\n    return {{'v': {PACKAGE}.VERSION}}\n"
TOOL = "#!/usr/bin/env python3\ndef second(event, ctx):\n    return None\n"


def make_project(root: Path, wid: str, wheels: Path) -> Path:
    (root / "src" / "lib").mkdir(parents=True)
    (root / "src" / "steps.py").write_text(STEPS)
    (root / "src" / "lib" / "__init__.py").write_text("X = 1\n")
    (root / "src" / "requirements.txt").write_text(f"--no-index\n--find-links ../wheels\n{PACKAGE}==1.2.3\n")
    (root / "tool.py").write_text(TOOL)
    (root / "tool.py").chmod(0o755)  # an executable source keeps 0755 in the zip, whatever the umask
    shutil.copytree(wheels, root / "wheels")
    flow = root / "flow.yaml"
    flow.write_text(FLOW.format(wid=wid))
    return flow


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheels"), "1.2.3")


def package(flow: Path, output: Path, umask: int, **env: str) -> subprocess.CompletedProcess[str]:
    def with_umask() -> None:
        os.umask(umask)

    return subprocess.run(xflow_command("package", str(flow), "--output", str(output), "--format", "json"),
                          cwd=flow.parent, env=clean_env(**env), capture_output=True, text=True, timeout=300,
                          preexec_fn=with_umask)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_packaging_twice_in_two_folders_with_other_times_and_umasks_gives_identical_bytes(tmp_path: Path,
                                                                                           wheels: Path) -> None:
    one = make_project(tmp_path / "one", "repro", wheels)
    old = time.time() - 400 * 86400  # the second copy's files are more than a year older
    two_root = tmp_path / "elsewhere" / "two"
    shutil.copytree(tmp_path / "one", two_root)
    for path in two_root.rglob("*"):
        if path.is_file():
            path.chmod(0o700 if path.name == "tool.py" else 0o600)  # what a umask of 077 gives
        os.utime(path, (old, old))
    two = two_root / "flow.yaml"
    first = package(one, tmp_path / "out-one", 0o022)
    second = package(two, tmp_path / "out-two", 0o077, TZ="Pacific/Kiritimati")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a, b = tree_bytes(tmp_path / "out-one"), tree_bytes(tmp_path / "out-two")
    assert sorted(a) == ["function-first.zip", "function-second.zip", "manifest.json", "tracker.zip"]
    assert a == b  # byte for byte, manifest included
    manifest = json.loads(a["manifest.json"])
    assert json.loads(first.stdout) == manifest
    for entry in manifest["artifacts"]:
        data = a[entry["file"]]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
        assert [i.filename for i in infos] == sorted(i.filename for i in infos)
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in infos}
        assert set(modes.values()) <= {0o644, 0o755}
        if entry.get("function") == "second":
            assert modes["function/tool.py"] == 0o755
        if entry.get("function") == "first":
            assert f"{PACKAGE}/__init__.py" in modes and modes["function/steps.py"] == 0o644
    assert (tmp_path / "out-two" / "manifest.json").stat().st_mode & 0o777 == 0o644  # readable, whatever the umask


def test_package_touches_no_backend(tmp_path: Path, wheels: Path) -> None:
    flow = make_project(tmp_path / "p", "offline", wheels)
    with socket.socket() as sock:  # a port nothing listens on: any AWS call would fail
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    done = package(flow, tmp_path / "out", 0o022, AWS_ENDPOINT_URL=closed, AWS_ACCESS_KEY_ID="x",
                   AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "p" / ".xflow").exists()  # nor a state folder


def test_setup_from_refuses_a_package_that_does_not_match_the_file(tmp_path: Path, wheels: Path) -> None:
    flow = make_project(tmp_path / "p", "refuse", wheels)
    assert package(flow, tmp_path / "pkg", 0o022).returncode == 0
    cli = CLI(tmp_path / "p", env={"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x",
                                    "AWS_SECRET_ACCESS_KEY": "x", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})

    def refused(*, expect: str) -> None:
        done = cli("setup", flow, "--from", tmp_path / "pkg", "--dry-run")
        assert done.returncode == 2, done.stdout + done.stderr
        assert expect in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr

    text = flow.read_text()
    flow.write_text(text.replace("retries: 1", "retries: 3"))
    refused(expect="was built from another version of flow.yaml: function second differs in retries")
    flow.write_text(text.replace("  - name: second", "  - name: third").replace("[second]", "[third]"))
    refused(expect="does not match the functions of flow.yaml (missing third; not in the file: second)")
    flow.write_text(text)
    zipped = tmp_path / "pkg" / "function-first.zip"
    zipped.write_bytes(zipped.read_bytes() + b"\0")
    refused(expect="does not have the SHA-256 its manifest gives")
    done = cli("setup", flow, "--from", tmp_path / "nothing-here", "--dry-run")
    assert done.returncode == 2 and "holds no package" in done.stderr
    local = cli("setup", flow, "--from", tmp_path / "pkg", "--provider", "local", "--transport", "local",
                "--tracker", "sqlite")
    assert local.returncode == 2 and "--from applies to --provider lambda" in local.stderr


@pytest.mark.aws
def test_a_package_deploys_the_same_bytes_to_every_stage(aws_endpoint, tmp_path: Path, wheels: Path) -> None:  # noqa: F811
    import boto3

    wid = f"pk{os.getpid()}{int(time.time() * 1000) % 100000}"
    flow = make_project(tmp_path / "p", wid, wheels)
    flow.write_text(flow.read_text().replace("name: first", f"name: first{wid}").replace("[first]", f"[first{wid}]")
                    .replace("name: second", f"name: second{wid}").replace("[second]", f"[second{wid}]"))
    done = package(flow, tmp_path / "pkg", 0o022)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    cli = CLI(tmp_path / "p")
    lam = boto3.client("lambda")
    for stage in ("dev", "prod"):
        created = cli.json("setup", flow, "--from", tmp_path / "pkg", "--stage", stage, timeout=300)
        assert created["workflow_id"] == f"{wid}-{stage}" and created["changes"]
        for entry in manifest["artifacts"]:
            name = f"tracker_{wid}-{stage}" if entry["kind"] == "tracker" else f"{entry['function']}-{stage}"
            assert lam.get_function(FunctionName=name)["Configuration"]["CodeSha256"] == entry["code_sha256"], name
    # the package and a build from the sources agree: setup without --from finds nothing to change
    assert cli.json("setup", flow, "--stage", "dev", timeout=300)["changes"] == []
    assert cli.json("setup", flow, "--from", tmp_path / "pkg", "--stage", "prod", timeout=300)["changes"] == []
    for stage in ("dev", "prod"):
        cli.json("teardown", flow, "--stage", stage, timeout=300)


def test_shared_layers_hold_the_requirements_several_functions_share(tmp_path: Path, wheels: Path) -> None:
    flow = make_project(tmp_path / "p", "layered", wheels)
    (tmp_path / "p" / "tool.py").unlink()
    (tmp_path / "p" / "src" / "tool.py").write_text(TOOL)  # second's source now shares src/requirements.txt
    flow.write_text(flow.read_text().replace("source: tool.py", "source: src"))
    done = subprocess.run(xflow_command("package", str(flow), "--output", str(tmp_path / "pkg"), "--shared-layers",
                                        "--format", "json"), cwd=flow.parent, env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    layers = [a for a in manifest["artifacts"] if a["kind"] == "layer"]
    assert len(layers) == 1 and layers[0]["manifest"]["functions"] == ["first", "second"]
    layer = zipfile.ZipFile(tmp_path / "pkg" / layers[0]["file"]).namelist()
    assert f"python/{PACKAGE}/__init__.py" in layer
    for entry in (a for a in manifest["artifacts"] if a["kind"] == "function"):
        assert entry["manifest"]["requirements"] == {"key": layers[0]["layer"], "where": "layer"}
        assert not [n for n in zipfile.ZipFile(tmp_path / "pkg" / entry["file"]).namelist() if n.startswith(PACKAGE)]
    # setup --from publishes the layer and names it in both functions: tests/test_layers.py
