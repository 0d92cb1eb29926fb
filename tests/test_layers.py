"""Shared Lambda layers, through the CLI on a moto server: requirements that two functions share are packaged once
(``xflow package --shared-layers``, or the lambda provider's ``shared_layers`` option), published once as a version
of the deployment's layer, and named in both functions' configuration; their zips do not hold the packages. An
unchanged second setup changes nothing; changed requirements publish a new layer version and move both functions to
it; ``xflow emulate`` runs the handlers with the layer's packages on their path; teardown deletes the layer's
versions. The package is a tiny pure-Python project built into local wheels here: no network."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from aws_server import aws_endpoint  # noqa: F401
from test_dependencies import PACKAGE, build_wheel
from xflow_cli_testing import CLI

FLOW = """
workflow_id: {wid}
lambdas:
  - name: first{wid}
    handler: steps.first
    source: src
    publishes: [Middle]
  - name: second{wid}
    handler: steps.second
    source: src
subscriptions:
  - event: Start
    subscribers: [first{wid}]
  - event: Middle
    subscribers: [second{wid}]
"""
STEPS = f"""
import {PACKAGE}


def note(event, who):
    with open(event["out"], "a") as notes:
        notes.write(f"{{who}} {{{PACKAGE}.VERSION}} {{{PACKAGE}.__file__}}\\n")


def first(event, ctx):
    note(event, "first")
    return {{"out": event["out"]}}


def second(event, ctx):
    note(event, "second")
"""


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    for version in ("1.2.3", "1.2.4"):
        found = build_wheel(folder, version)
    return found


def requirements(root: Path, version: str) -> None:
    (root / "src" / "requirements.txt").write_text(f"--no-index\n--find-links ../wheels\n{PACKAGE}=={version}\n")


def make_project(root: Path, wheels: Path) -> tuple[Path, str]:
    wid = f"ly{os.getpid()}{int(time.time() * 1000) % 100000}"
    (root / "src").mkdir(parents=True)
    (root / "src" / "steps.py").write_text(STEPS)
    requirements(root, "1.2.3")
    shutil.copytree(wheels, root / "wheels")
    flow = root / "flow.yaml"
    flow.write_text(FLOW.format(wid=wid))
    return flow, wid


def function_layers(lam: Any, name: str, qualifier: str | None = None) -> list[str]:
    config = lam.get_function(FunctionName=name, **({"Qualifier": qualifier} if qualifier else {}))["Configuration"]
    return [layer["Arn"] for layer in config.get("Layers") or []]


def kept_zip(project: Path, lam: Any, name: str) -> list[str]:
    """The names in the zip the function's alias runs, from the copy setup kept in the state folder."""
    sha = lam.get_function(FunctionName=name, Qualifier="live")["Configuration"]["CodeSha256"]
    kept = project / ".xflow" / "lambda-artifacts" / (base64.b64decode(sha).hex() + ".zip")
    return zipfile.ZipFile(io.BytesIO(kept.read_bytes())).namelist()


def layer_versions(lam: Any, name: str) -> list[dict[str, Any]]:
    return sorted(lam.list_layer_versions(LayerName=name)["LayerVersions"], key=lambda v: v["Version"])


def package(cli: CLI, flow: Path, output: Path) -> dict[str, Any]:
    done = cli("package", flow, "--output", output, "--shared-layers", "--format", "json", timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def run_once(cli: CLI, flow: Path, out: Path, execution: str) -> list[list[str]]:
    """Publish Start, emulate until idle: the lines the two handlers wrote (who, version, where the package was)."""
    published = cli("publish", flow, "Start", json.dumps({"out": str(out)}), "--execution-id", execution)
    assert published.returncode == 0, published.stderr
    emulated = cli.json("emulate", flow, "--until-idle", "--timeout", "180", timeout=240)
    assert emulated["idle"] and emulated["failed_invocations"] == 0, emulated
    assert cli.json("track", flow, execution)["status"] == "succeeded"
    return [line.split(" ", 2) for line in out.read_text().splitlines()]


@pytest.mark.aws
def test_a_shared_layer_is_published_once_named_by_both_functions_and_versioned_with_its_requirements(
        aws_endpoint, tmp_path: Path, wheels: Path) -> None:  # noqa: F811
    import boto3

    flow, wid = make_project(tmp_path / "p", wheels)
    first, second, layer = f"first{wid}", f"second{wid}", f"xflow-{wid}-first{wid}"
    cli = CLI(tmp_path / "p")
    manifest = package(cli, flow, tmp_path / "pkg")
    packaged = [a for a in manifest["artifacts"] if a["kind"] == "layer"]
    assert len(packaged) == 1 and packaged[0]["manifest"]["functions"] == [first, second]
    for entry in (a for a in manifest["artifacts"] if a["kind"] == "function"):  # the functions' zips lack it
        names = zipfile.ZipFile(tmp_path / "pkg" / entry["file"]).namelist()
        assert "function/steps.py" in names and not [n for n in names if n.startswith(PACKAGE)]

    # the dry run lists the layer step, before the functions that need it
    planned = [c["resource"] for c in cli.json("setup", flow, "--from", tmp_path / "pkg", "--dry-run")["changes"]]
    assert planned.index(f"layer:{layer}") < min(planned.index(f"function:{first}"), planned.index(f"function:{second}"))
    table = cli("setup", flow, "--from", tmp_path / "pkg", "--dry-run", COLUMNS="300")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if f"layer:{layer} " in line)
    assert "would create" in row and "lambda:PublishLayerVersion" in row and f"requirements of {first}" in row

    lam = boto3.client("lambda")
    created = cli.json("setup", flow, "--from", tmp_path / "pkg", timeout=300)
    assert {"action": "create", "resource": f"layer:{layer}"} in created["changes"]
    [version] = layer_versions(lam, layer)
    published = lam.get_layer_version(LayerName=layer, VersionNumber=version["Version"])
    assert published["Content"]["CodeSha256"] == packaged[0]["code_sha256"]  # the package's bytes
    for name in (first, second):  # both name the same version, $LATEST and the version the alias invokes
        assert function_layers(lam, name) == [version["LayerVersionArn"]]
        assert function_layers(lam, name, "live") == [version["LayerVersionArn"]]
    assert function_layers(lam, f"tracker_{wid}") == []

    assert cli.json("setup", flow, "--from", tmp_path / "pkg", timeout=300)["changes"] == []
    assert cli.json("setup", flow, "--from", tmp_path / "pkg", "--dry-run")["changes"] == []

    notes = run_once(cli, flow, tmp_path / "notes-1.txt", "one")
    assert [(who, v) for who, v, _ in notes] == [("first", "1.2.3"), ("second", "1.2.3")]
    assert all(f"{os.sep}{layer}-1{os.sep}python{os.sep}{PACKAGE}" in where for _, _, where in notes), notes

    # new requirements: a new version of the same layer, both functions moved to it and published anew (their zips
    # record which requirement set they were built against)
    requirements(tmp_path / "p", "1.2.4")
    package(cli, flow, tmp_path / "pkg")
    changed = cli.json("setup", flow, "--from", tmp_path / "pkg", timeout=300)["changes"]
    assert {"action": "update", "resource": f"layer:{layer}"} in changed
    for name in (first, second):
        assert {"action": "update", "resource": f"function-config:{name}"} in changed
        assert {"action": "create", "resource": f"version:{name}"} in changed
    assert not [c for c in changed if c["resource"].endswith(f":tracker_{wid}")]  # the tracker uses no layer
    old, new = layer_versions(lam, layer)
    assert old["LayerVersionArn"] == version["LayerVersionArn"]
    for name in (first, second):
        assert function_layers(lam, name, "live") == [new["LayerVersionArn"]]
    assert cli.json("setup", flow, "--from", tmp_path / "pkg", timeout=300)["changes"] == []
    notes = run_once(cli, flow, tmp_path / "notes-2.txt", "two")
    assert [(who, v) for who, v, _ in notes] == [("first", "1.2.4"), ("second", "1.2.4")]
    assert all(f"{os.sep}{layer}-2{os.sep}" in where for _, _, where in notes), notes

    removed = cli.json("teardown", flow, timeout=300)["changes"]
    assert {"action": "delete", "resource": f"layer-version:{layer}:1"} in removed
    assert {"action": "delete", "resource": f"layer-version:{layer}:2"} in removed
    assert layer_versions(lam, layer) == []
    assert layer not in {x["LayerName"] for x in lam.list_layers()["Layers"]}
    state = tmp_path / "p" / ".xflow" / "lambda-artifacts"
    assert not state.exists() or not list(state.glob("*.zip"))  # the layers' zips kept for emulate went too


@pytest.mark.aws
def test_setup_of_a_stage_with_the_shared_layers_option_builds_its_layer_and_without_it_moves_the_packages_back(
        aws_endpoint, tmp_path: Path, wheels: Path) -> None:  # noqa: F811
    import boto3

    flow, wid = make_project(tmp_path / "p", wheels)
    # a stage's deployment: its functions' and its layer's names carry the stage
    first, second, layer = f"first{wid}-dev", f"second{wid}-dev", f"xflow-{wid}-dev-first{wid}"
    cli = CLI(tmp_path / "p", env={"XFLOW_STAGE": "dev"})
    lam = boto3.client("lambda")
    layered = ("--option", "provider.shared_layers=true")
    created = cli.json("setup", flow, *layered, timeout=300)
    assert {"action": "create", "resource": f"layer:{layer}"} in created["changes"]
    [version] = layer_versions(lam, layer)
    assert function_layers(lam, first) == function_layers(lam, second) == [version["LayerVersionArn"]]
    for name in (first, second):
        assert PACKAGE not in "".join(kept_zip(tmp_path / "p", lam, name))
    assert cli.json("setup", flow, *layered, timeout=300)["changes"] == []
    notes = run_once(cli, flow, tmp_path / "notes.txt", "opt")
    assert [(who, v) for who, v, _ in notes] == [("first", "1.2.3"), ("second", "1.2.3")]
    assert all(f"{os.sep}{layer}-1{os.sep}" in where for _, _, where in notes), notes

    # without the option, each zip holds the packages again, the functions name no layer, and the layer is deleted
    changed = cli.json("setup", flow, "--option", "provider.shared_layers=false", timeout=300)["changes"]
    assert {"action": "delete", "resource": f"layer-version:{layer}:1"} in changed
    for name in (first, second):
        assert {"action": "update", "resource": f"function-code:{name}"} in changed
        assert function_layers(lam, name, "live") == []
        assert f"{PACKAGE}/__init__.py" in kept_zip(tmp_path / "p", lam, name)
    assert layer_versions(lam, layer) == []
    notes = run_once(cli, flow, tmp_path / "notes-zip.txt", "zip")
    assert [(who, v) for who, v, _ in notes] == [("first", "1.2.3"), ("second", "1.2.3")]
    assert not any(f"{os.sep}layers{os.sep}" in where for _, _, where in notes), notes
    cli.json("teardown", flow, timeout=300)


def test_a_package_whose_functions_name_a_layer_it_lacks_is_refused(tmp_path: Path, wheels: Path) -> None:
    flow, _ = make_project(tmp_path / "p", wheels)
    cli = CLI(tmp_path / "p", env={"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x",
                                    "AWS_SECRET_ACCESS_KEY": "x", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    package(cli, flow, tmp_path / "pkg")
    path = tmp_path / "pkg" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["kind"] != "layer"]
    path.write_text(json.dumps(manifest))
    done = cli("setup", flow, "--from", tmp_path / "pkg", "--dry-run")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "lacks the shared layer that function" in done.stderr


def test_building_shared_layers_fetches_each_function_s_source_once(
        tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xflow.sources.fetch
    from xflow.core.config.loader import load_workflow
    from xflow.providers.aws_lambda.packaging import build_artifacts

    flow, wid = make_project(tmp_path / "p", wheels)
    fetched: list[str] = []
    fetch = xflow.sources.fetch.fetch_source

    def counted(function: Any, *args: Any, **kwargs: Any) -> Path:
        fetched.append(function.name)
        return fetch(function, *args, **kwargs)

    monkeypatch.setattr(xflow.sources.fetch, "fetch_source", counted)
    artifacts = build_artifacts(load_workflow(flow), None, shared_layers=True)
    assert sorted(fetched) == [f"first{wid}", f"second{wid}"]  # a git clone or an S3 download happens once
    [layer] = [a for a in artifacts if a.kind == "layer"]
    assert layer.manifest["functions"] == [f"first{wid}", f"second{wid}"]
    for artifact in (a for a in artifacts if a.kind == "function"):  # built from the same fetched sources
        assert "function/steps.py" in zipfile.ZipFile(io.BytesIO(artifact.data)).namelist()
