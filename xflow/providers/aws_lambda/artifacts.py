"""Packages: a workflow's Lambda artifacts built once (``xflow package FILE --output DIR``) and deployed as they are to
every stage (``xflow setup FILE --from DIR --stage S``).

A package folder holds one zip per artifact (``function-NAME.zip``, ``tracker.zip``, ``layer-KEY.zip``; see
:func:`~xflow.providers.aws_lambda.packaging.build_artifacts`) and ``manifest.json``::

    {"format": 1, "workflow_id": "word_count", "shared_layers": false,
     "artifacts": [{"kind": "function", "function": "reader", "file": "function-reader.zip",
                    "sha256": "<hex>", "code_sha256": "<base64, as Lambda's CodeSha256>", "size": 1234,
                    "runtime": "python3.12", "architecture": "x86_64", "manifest": {...}}, ...]}

The zips hold nothing that depends on the stage, the machine, the folder, the time or the umask, so building twice
gives the same bytes (and the same manifest). ``code_sha256`` is what Lambda reports for the function's code once
deployed, and the key to find which package a deployed function (or a published version) came from.

Deploying a package checks it against the workflow file first: the same workflow, the same functions, and for each
function the manifest its zip would get from the file now (handler, events, retries, ...); a package built from
another version of the file is refused. Every zip is checked against its SHA-256 as it is read. A shared layer's zip
(``--shared-layers``) is published as a version of the stage's layer (:mod:`xflow.providers.aws_lambda.layers`), and
a package whose functions import from a layer it lacks is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xflow.core.errors import XflowError
from xflow.providers.aws_lambda.packaging import (
    Artifact,
    build_artifacts,
    code_sha256,
    function_manifest,
    tracker_manifest,
)

if TYPE_CHECKING:
    from xflow.aws import AwsSession
    from xflow.core.model import Workflow

PACKAGE_MANIFEST = "manifest.json"
FORMAT = 1
#: what each artifact's manifest is compared on when a package is deployed (``source`` and ``requirements`` are
#: filled in as the zip is built)
BUILT_KEYS = ("source", "requirements")


def artifact_file(artifact: Artifact) -> str:
    return "tracker.zip" if artifact.kind == "tracker" else f"{artifact.kind}-{artifact.name}.zip"


def describe(artifact: Artifact) -> dict[str, Any]:
    """One artifact's entry in ``manifest.json``."""
    entry: dict[str, Any] = {"kind": artifact.kind, "file": artifact_file(artifact), "sha256": artifact.sha256,
                             "code_sha256": code_sha256(artifact.data), "size": len(artifact.data),
                             "runtime": artifact.runtime, "architecture": artifact.architecture,
                             "manifest": dict(artifact.manifest)}
    entry["layer" if artifact.kind == "layer" else "function"] = artifact.name
    return entry


def write_package(workflow: Workflow, folder: Path, *, shared_layers: bool = False,
                  aws: AwsSession | None = None) -> dict[str, Any]:
    """Build every artifact of ``workflow`` into ``folder`` (created) with ``manifest.json``; returns the manifest.

    ``shared_layers``: requirements several functions share go into one layer zip. Files of an earlier package in the
    folder are replaced; other files are left alone."""
    layered = shared_layers
    if aws is None and any(f.source.startswith("s3://") for f in workflow.functions.values()):
        from xflow.aws import AwsSession

        aws = AwsSession(dict(workflow.aws or {}))
    artifacts = build_artifacts(workflow, aws, layered)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        earlier = _read_manifest(folder, missing_ok=True)
        for entry in (earlier or {}).get("artifacts", []):
            if isinstance(entry, dict) and isinstance(entry.get("file"), str) and "/" not in entry["file"]:
                (folder / entry["file"]).unlink(missing_ok=True)
        for artifact in artifacts:
            _write(folder / artifact_file(artifact), artifact.data)
        manifest = {"format": FORMAT, "workflow_id": workflow.unstaged_id, "shared_layers": layered,
                    "artifacts": [describe(a) for a in artifacts]}
        _write(folder / PACKAGE_MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise XflowError(f"cannot write the package to {folder}: {exc}", "choose a writable folder with --output") from None
    return manifest


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` at once (a reader never sees half a file), readable by everyone (0644)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    tmp.replace(path)


def _read_manifest(folder: Path, missing_ok: bool = False) -> dict[str, Any] | None:
    path = folder / PACKAGE_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise XflowError(f"{folder} holds no package: {PACKAGE_MANIFEST} is missing",
                         "build one with 'xflow package FILE --output DIR'") from None
    except (OSError, ValueError) as exc:
        if missing_ok:
            return None
        raise XflowError(f"the package manifest {path} is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("artifacts"),
                                                                                             list):
        if missing_ok:
            return None
        raise XflowError(f"{path} is not a package manifest xflow wrote (format {FORMAT})")
    return manifest


def read_package(workflow: Workflow, folder: Path) -> list[Artifact]:
    """The artifacts of the package in ``folder``, checked against ``workflow`` (its file as it is now) and against
    their SHA-256; an XflowError naming the first difference otherwise."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    assert manifest is not None
    hint = "build the package again from this file: xflow package FILE --output DIR"
    if manifest.get("workflow_id") != workflow.unstaged_id:
        raise XflowError(f"the package in {folder} is of workflow {manifest.get('workflow_id')!r}, not "
                         f"{workflow.unstaged_id!r}", hint)
    entries = [e for e in manifest["artifacts"] if isinstance(e, dict)]
    packaged = {str(e.get("function")) for e in entries if e.get("kind") == "function"}
    wanted = set(workflow.functions)
    if packaged != wanted or not any(e.get("kind") == "tracker" for e in entries):
        missing, extra = sorted(wanted - packaged), sorted(packaged - wanted)
        detail = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                              f"not in the file: {', '.join(extra)}" if extra else "") if part)
        raise XflowError(f"the package in {folder} does not match the functions of {workflow.path.name} "
                         f"({detail or 'no tracker artifact'})", hint)
    artifacts = []
    for entry in entries:
        kind, name = str(entry.get("kind")), str(entry.get("function") or entry.get("layer") or "tracker")
        expected = _expected_manifest(workflow, kind, name)
        recorded = {k: v for k, v in (entry.get("manifest") or {}).items() if k not in BUILT_KEYS}
        if expected is not None and recorded != expected:
            changed = sorted(k for k in set(expected) | set(recorded) if expected.get(k) != recorded.get(k))
            raise XflowError(f"the package in {folder} was built from another version of {workflow.path.name}: "
                             f"{kind} {name} differs in {', '.join(changed)}", hint)
        file = str(entry.get("file", ""))
        try:
            data = (folder / Path(file).name).read_bytes()
        except OSError as exc:
            raise XflowError(f"the package in {folder} lacks {file or 'an artifact'}: {exc.strerror or exc}") from None
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise XflowError(f"{folder / file} does not have the SHA-256 its manifest gives: the package was changed "
                             "after it was built", hint)
        artifacts.append(Artifact(kind, name, data, dict(entry.get("manifest") or {}),
                                  str(entry.get("runtime") or "python3.12"), str(entry.get("architecture") or "x86_64")))
    layers = {a.name for a in artifacts if a.kind == "layer"}
    for artifact in artifacts:
        needs = artifact.manifest.get("requirements")
        if isinstance(needs, dict) and needs.get("where") == "layer" and needs.get("key") not in layers:
            raise XflowError(f"the package in {folder} lacks the shared layer that function {artifact.name} imports "
                             f"its requirements from (layer-{needs.get('key')}.zip)", hint)
    return artifacts


def _expected_manifest(workflow: Workflow, kind: str, name: str) -> dict[str, Any] | None:
    """What an artifact's manifest holds when built from the file now (apart from :data:`BUILT_KEYS`)."""
    if kind == "function":
        return {k: v for k, v in function_manifest(workflow, workflow.functions[name]).items() if k not in BUILT_KEYS}
    if kind == "tracker":
        return tracker_manifest(workflow)
    return None

