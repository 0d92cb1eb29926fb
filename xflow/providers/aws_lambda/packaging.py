"""Packaging for the lambda provider: each function's deployment zip, built in memory, and the copies kept of it.

A zip holds :mod:`xflow.providers.aws_lambda.shim` as ``lambda_shim.py``, a copy of :mod:`xflow.core.runtime` as
``xflow_runtime.py``, the function's manifest ``xflow_function.json`` (what it is: workflow, mode, handler, the
streams it publishes to...) and, for a user function, its code under ``function/``. The zip is deterministic
(sorted names, fixed dates and modes), so equal code has an equal hash and planning compares hashes with Lambda's
``CodeSha256`` without uploading anything.

Planning builds the zips in memory (sources are fetched into a temporary folder that is removed) and writes nothing.
A step names a zip by its manifest, SHA-256 and size (:meth:`FunctionSpec.artifact`); the step's executor gets the
bytes from :class:`Packager` (the zip planned in this process, else built again and checked against the SHA-256),
uploads them and keeps a copy in the state folder (``lambda-artifacts/``, by hash) for ``xflow emulate``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xflow.core.errors import XflowError
from xflow.core.worker import hop_limit

if TYPE_CHECKING:
    from xflow.aws import AwsSession
    from xflow.core.model import Function, Workflow

SHIM_HANDLER = "lambda_shim.handle"
TRACKER_HANDLER = "lambda_shim.track"
#: the variable that marks a Lambda function as one of a workflow's
ENV_WORKFLOW = "XFLOW_WORKFLOW_ID"
ARTIFACTS = "lambda-artifacts"
MANIFEST = "xflow_function.json"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
EXCLUDED_PARTS = {"__pycache__", ".git", ".xflow", ".venv", "node_modules"}


def tracker_function_name(workflow_id: str) -> str:
    return f"tracker_{workflow_id}"[:64]


def code_sha256(data: bytes) -> str:
    """What Lambda reports as ``CodeSha256``: base64 of the SHA-256 digest."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def artifact_path(state_dir: Path, sha: str) -> Path:
    """Where setup keeps the zip whose ``CodeSha256`` is ``sha``."""
    return Path(state_dir) / ARTIFACTS / (base64.b64decode(sha).hex() + ".zip")


class _ZipBuilder:
    """A deterministic zip: sorted names, fixed dates and modes, so equal code has an equal hash."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def add(self, name: str, data: bytes) -> None:
        self.files[name] = data

    def add_tree(self, source: Path, prefix: str) -> None:
        if source.is_file():
            self.add(f"{prefix}/{source.name}", source.read_bytes())
            return
        from xflow.sources.resolve import source_files  # refuses links that leave the folder, names them

        for rel, path in source_files(source, f"source {str(source)!r}", skip=EXCLUDED_PARTS):
            if rel.suffix != ".pyc":
                self.add(f"{prefix}/{rel.as_posix()}", path.read_bytes())

    def build(self) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(self.files):
                info = zipfile.ZipInfo(name, ZIP_DATE)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, self.files[name])
        return out.getvalue()


def shim_files() -> dict[str, bytes]:
    """The files every zip holds besides the manifest: the shim and its copy of xflow's handler runtime."""
    here = Path(__file__).resolve().parent
    return {
        "lambda_shim.py": (here / "shim.py").read_bytes(),
        "xflow_runtime.py": (here.parent.parent / "core" / "runtime.py").read_bytes(),
    }


def function_manifest(workflow: Workflow, streams: Mapping[str, str], function: Function) -> dict[str, Any]:
    """A user function's manifest (``source``, where its code lies in the zip, is filled in when it is packaged)."""
    return {"workflow_id": workflow.id, "function": function.name, "mode": "function",
            "handler": function.handler, "source": "", "publishes": list(function.publishes),
            "streams": dict(streams), "retries": function.retries, "hop_limit": hop_limit(workflow)}


def tracker_manifest(workflow: Workflow, streams: Mapping[str, str], log_group: str) -> dict[str, Any]:
    """The manifest of ``tracker_<workflow_id>``, which writes every event to the tracker's log group."""
    return {"workflow_id": workflow.id, "function": tracker_function_name(workflow.id), "mode": "tracker",
            "streams": dict(streams), "log_group": log_group}


def build_zip(workflow: Workflow, manifest: Mapping[str, Any], aws: AwsSession | None, workdir: Path) -> tuple[
        bytes, dict[str, Any]]:
    """The zip of the function ``manifest`` describes, and the manifest as packaged.

    A user function's source is fetched under ``workdir`` (the caller removes it) and its handler checked without
    importing it."""
    from xflow.sources.fetch import fetch_source
    from xflow.sources.resolve import check_handler

    packaged = dict(manifest)
    builder = _ZipBuilder()
    for name, data in shim_files().items():
        builder.add(name, data)
    if packaged.get("mode") == "function":
        function = workflow.functions.get(str(packaged.get("function")))
        if function is None:
            raise XflowError(f"function {packaged.get('function')} is not in workflow {workflow.id}")
        source = fetch_source(function, workdir, aws)
        check_handler(function, source)
        packaged["source"] = f"function/{source.name}" if source.is_file() else "function"
        builder.add_tree(source, "function")
    builder.add(MANIFEST, json.dumps(packaged, sort_keys=True, indent=1).encode())
    return builder.build(), packaged


@dataclass
class FunctionSpec:
    """One Lambda function as the file wants it: its configuration and its zip (held in memory)."""

    name: str
    handler: str
    runtime: str
    timeout: int
    memory: int
    description: str
    environment: dict[str, str]
    zip_bytes: bytes = field(repr=False)
    sha: str = ""
    #: what the zip holds (``xflow_function.json``)
    manifest: dict[str, Any] = field(default_factory=dict)

    def configuration(self, role_arn: str) -> dict[str, Any]:
        return {"Runtime": self.runtime, "Handler": self.handler, "Timeout": self.timeout,
                "MemorySize": self.memory, "Description": self.description, "Role": role_arn,
                "Environment": {"Variables": dict(self.environment)}}

    def artifact(self) -> dict[str, Any]:
        """The zip as a step names it: its manifest, SHA-256 (hex) and size, not its bytes."""
        return {"Sha256": hashlib.sha256(self.zip_bytes).hexdigest(), "Size": len(self.zip_bytes),
                "Manifest": self.manifest}


class Packager:
    """Builds the zips: all of a workflow's for planning, one again for a step (from memory when planned here)."""

    def __init__(self, aws: AwsSession | None) -> None:
        self.aws = aws
        #: zips built in this process, by SHA-256 (hex): planning's, handed to the steps that deploy them
        self._built: dict[str, bytes] = {}

    def desired_functions(self, workflow: Workflow, streams: Mapping[str, str], log_group: str) -> list[FunctionSpec]:
        """Every function of the workflow and ``tracker_<workflow_id>``, each with its zip built in memory."""
        specs: list[FunctionSpec] = []
        with tempfile.TemporaryDirectory(prefix="xflow-src-") as tmp:
            for index, function in enumerate(workflow.functions.values()):
                data, manifest = build_zip(workflow, function_manifest(workflow, streams, function), self.aws,
                                           Path(tmp) / str(index))
                env = {str(k): str(v) for k, v in function.environment.items()}
                env[ENV_WORKFLOW] = workflow.id
                specs.append(FunctionSpec(function.name, SHIM_HANDLER, function.runtime,
                                          max(1, min(900, math.ceil(function.timeout))), function.memory,
                                          (function.description or "")[:256], env, data, manifest=manifest))
            data, manifest = build_zip(workflow, tracker_manifest(workflow, streams, log_group), self.aws, Path(tmp))
        specs.append(FunctionSpec(tracker_function_name(workflow.id), TRACKER_HANDLER, "python3.12", 60, 128,
                                  f"xflow tracker of workflow {workflow.id}", {ENV_WORKFLOW: workflow.id}, data,
                                  manifest=manifest))
        for spec in specs:
            spec.sha = code_sha256(spec.zip_bytes)
            self._built[hashlib.sha256(spec.zip_bytes).hexdigest()] = spec.zip_bytes
        return specs

    def zip_for(self, workflow: Workflow | None, artifact: Mapping[str, Any]) -> bytes:
        """The bytes of the zip ``artifact`` names (:meth:`FunctionSpec.artifact`): planned here, else built again.

        A zip built again must have the planned SHA-256: code that changed since the plan is an XflowError."""
        wanted = str(artifact.get("Sha256", ""))
        data = self._built.get(wanted)
        if data is not None:
            return data
        manifest = artifact.get("Manifest") or {}
        if workflow is None:
            raise XflowError(f"the zip of {manifest.get('function')} was not planned here and there is no workflow "
                             "to build it from", "run 'xflow setup' again")
        with tempfile.TemporaryDirectory(prefix="xflow-src-") as tmp:
            data, _ = build_zip(workflow, manifest, self.aws, Path(tmp) / "src")
        if hashlib.sha256(data).hexdigest() != wanted:
            raise XflowError(f"the code of {manifest.get('function')} changed since it was planned",
                             "run 'xflow setup' again: it plans the code as it is now")
        self._built[wanted] = data
        return data


def keep_artifact(state_dir: Path, data: bytes) -> Path:
    """Keep ``data`` in the state folder under its hash (a step of setup, never of planning)."""
    path = artifact_path(state_dir, code_sha256(data))
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def artifacts_of(state_dir: Path, workflow_id: str) -> list[Path]:
    """The zips in the state folder built for this workflow (each names its workflow in its manifest)."""
    found = []
    for path in sorted((Path(state_dir) / ARTIFACTS).glob("*.zip")):
        try:
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read(MANIFEST))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue  # not one of setup's zips
        if isinstance(config, dict) and config.get("workflow_id") == workflow_id:
            found.append(path)
    return found


def remove_files(paths: list[Path]) -> None:
    """Remove the files, then their folders that are left empty."""
    for path in paths:
        path.unlink(missing_ok=True)
    for folder in {path.parent for path in paths}:
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()
