"""Packaging for the lambda provider: each function's deployment zip, built in memory, and the copies kept of it.

A zip holds :mod:`xflow.providers.aws_lambda.shim` as ``lambda_shim.py``, a copy of :mod:`xflow.core.runtime` as
``xflow_runtime.py`` (and of :mod:`xflow.core.wire`, which it imports, as ``xflow_wire.py``), the function's
manifest ``xflow_function.json`` (what it is: workflow, mode, handler, the
events it may publish...), for a user function its code under ``function/`` and the packages its requirements name
(installed by pip for its runtime and architecture, or held by a shared layer). The zip is deterministic (sorted
names, fixed dates and modes), so equal code has an equal hash and planning compares hashes with Lambda's
``CodeSha256`` without uploading anything. Nothing in it depends on the stage: what does (the deployment's workflow
id, stream names, the tracker's log group) is in the function's environment, ``XFLOW_DEPLOYMENT``, so one package
deploys the same bytes to every stage.

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

from xflow.core.delivery import event_limit, hop_limit
from xflow.core.errors import XflowError

if TYPE_CHECKING:
    from xflow.aws import AwsSession
    from xflow.core.model import Function, Workflow

SHIM_HANDLER = "lambda_shim.handle"
TRACKER_HANDLER = "lambda_shim.track"
#: the variable that marks a Lambda function as one of a workflow's
ENV_WORKFLOW = "XFLOW_WORKFLOW_ID"
#: the variable that holds a function's stage-dependent names (:func:`deployment_environment`)
ENV_DEPLOYMENT = "XFLOW_DEPLOYMENT"
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


class ZipBuilder:
    """A deterministic zip: sorted names, fixed dates (1980-01-01), modes 0644 (0755 for files executable by their
    owner) and creator system, so equal code has an equal hash whatever the files' times, the umask or the machine."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.executable: set[str] = set()

    def add(self, name: str, data: bytes, executable: bool = False) -> None:
        self.files[name] = data
        if executable:
            self.executable.add(name)
        else:
            self.executable.discard(name)

    def add_tree(self, source: Path, prefix: str) -> None:
        if source.is_file():
            self.add(f"{prefix}/{source.name}", source.read_bytes(), _is_executable(source))
            return
        from xflow.sources.resolve import source_files  # refuses links that leave the folder, names them

        for rel, path in source_files(source, f"source {str(source)!r}", skip=EXCLUDED_PARTS):
            if rel.suffix != ".pyc":
                self.add(f"{prefix}/{rel.as_posix()}", path.read_bytes(), _is_executable(path))

    def build(self) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(self.files):
                info = zipfile.ZipInfo(name, ZIP_DATE)
                info.create_system = 3  # Unix, on every platform (it says how to read the modes)
                info.external_attr = (0o755 if name in self.executable else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, self.files[name])
        return out.getvalue()


#: the former name, kept for callers of the package's earlier versions
_ZipBuilder = ZipBuilder


def _is_executable(path: Path) -> bool:
    return bool(path.stat().st_mode & 0o100)


def shim_files() -> dict[str, bytes]:
    """The files every zip holds besides the manifest: the shim and its copy of xflow's handler runtime."""
    here = Path(__file__).resolve().parent
    return {
        "lambda_shim.py": (here / "shim.py").read_bytes(),
        "xflow_runtime.py": (here.parent.parent / "core" / "runtime.py").read_bytes(),
        "xflow_wire.py": (here.parent.parent / "core" / "wire.py").read_bytes(),
        "xflow_tracing.py": (here.parent.parent / "monitoring" / "tracing.py").read_bytes(),
        "xflow_logrecords.py": (here.parent.parent / "logs" / "records.py").read_bytes(),
    }


def function_manifest(workflow: Workflow, function: Function) -> dict[str, Any]:
    """A user function's manifest: the same for every stage (``source``, where its code lies in the zip, and
    ``requirements`` are filled in when it is packaged)."""
    manifest = {"workflow_id": workflow.unstaged_id, "function": function.name, "mode": "function",
                "handler": function.handler, "source": "", "publishes": list(function.publishes),
                "events": list(workflow.events), "retries": function.retries, "hop_limit": hop_limit(workflow),
                "event_limit": event_limit(workflow),
                "subscribers": {event: len(workflow.subscribers(event)) for event in workflow.subscriptions_of(function.name)}}
    if function.architecture != "x86_64":
        manifest["architecture"] = function.architecture
    return manifest


def tracker_manifest(workflow: Workflow) -> dict[str, Any]:
    """The manifest of ``tracker_<workflow_id>``, which writes every event to the tracker's log group (where, and the
    deployment's names, come with the function's environment: :func:`deployment_environment`)."""
    return {"workflow_id": workflow.unstaged_id, "function": tracker_function_name(workflow.unstaged_id),
            "mode": "tracker", "events": list(workflow.events)}


def deployment_environment(workflow: Workflow, streams: Mapping[str, str], log_group: str | None = None,
                           function: str | None = None) -> str:
    """The value of :data:`ENV_DEPLOYMENT`: what differs between stages, which the shim reads over the zip's manifest
    (the deployment's workflow id, its streams as a common prefix when they have one, the tracker's log group and
    function name). Keeping it out of the zip gives every stage the same bytes."""
    data: dict[str, Any] = {"workflow_id": workflow.id}
    prefixes = {name[: len(name) - len(event)] for event, name in streams.items() if name.endswith(event)}
    if len(prefixes) == 1 and all(name.endswith(event) for event, name in streams.items()):
        data["stream_prefix"] = prefixes.pop()
    else:
        data["streams"] = dict(streams)
    if log_group is not None:
        data["log_group"] = log_group
    if function is not None:
        data["function"] = function
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def build_zip(workflow: Workflow, manifest: Mapping[str, Any], aws: AwsSession | None, workdir: Path, *,
              layered: frozenset[str] = frozenset(), source: Path | None = None) -> tuple[bytes, dict[str, Any]]:
    """The zip of the function ``manifest`` describes, and the manifest as packaged.

    A user function's source (``source``: where it was fetched already) is fetched under ``workdir`` (the caller
    removes it) and its handler checked without
    importing it. Its requirements (:mod:`xflow.sources.requirements`) are installed with pip under ``workdir`` for its
    runtime and architecture, into the zip's root, unless their key is in ``layered`` (or the manifest says they are
    in a layer): a shared layer holds them."""
    from xflow.sources.fetch import fetch_source
    from xflow.sources.requirements import install, lambda_target, packaged_files, requirements_of
    from xflow.sources.resolve import check_handler

    packaged = dict(manifest)
    builder = ZipBuilder()
    if packaged.get("mode") == "function":
        function = workflow.functions.get(str(packaged.get("function")))
        if function is None:
            raise XflowError(f"function {packaged.get('function')} is not in workflow {workflow.id}")
        source = source or fetch_source(function, workdir, aws)
        check_handler(function, source)
        packaged["source"] = f"function/{source.name}" if source.is_file() else "function"
        builder.add_tree(source, "function")
        wanted = requirements_of(function, source, workflow.path.parent)
        if wanted is None:
            packaged.pop("requirements", None)
        else:
            key = wanted.key(lambda_target(function.runtime, function.architecture))
            known = packaged.get("requirements")
            where = known.get("where") if isinstance(known, dict) and known.get("key") == key else None
            where = where or ("layer" if key in layered else "zip")
            packaged["requirements"] = {"key": key, "where": where}
            if where == "zip":
                target = workdir / f"requirements-{key[:12]}"
                install(wanted, target, runtime=function.runtime, architecture=function.architecture)
                for name, data, executable in packaged_files(target):
                    builder.add(name, data, executable)
    for name, data in shim_files().items():  # after the requirements: xflow's own files win a clash of names
        builder.add(name, data)
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
    architecture: str = "x86_64"
    #: the shared layers (their artifacts' names: requirement keys) whose packages it imports
    layers: tuple[str, ...] = ()
    #: the ARNs of those layers' versions (or the placeholders of versions the plan publishes), set by the planner
    layer_arns: tuple[str, ...] = ()

    def configuration(self, role_arn: str) -> dict[str, Any]:
        return {"Runtime": self.runtime, "Handler": self.handler, "Timeout": self.timeout,
                "MemorySize": self.memory, "Description": self.description, "Role": role_arn,
                "Environment": {"Variables": dict(self.environment)}, "Layers": list(self.layer_arns)}

    def artifact(self) -> dict[str, Any]:
        """The zip as a step names it: its manifest, SHA-256 (hex) and size, not its bytes."""
        return {"Sha256": hashlib.sha256(self.zip_bytes).hexdigest(), "Size": len(self.zip_bytes),
                "Manifest": self.manifest}


@dataclass(frozen=True)
class Artifact:
    """One zip of a workflow's deployment, the same for every stage: a function's (``name``: its name in the file),
    the tracker function's (``tracker``) or a shared layer's (``name``: the key of the requirements it holds)."""

    kind: str
    name: str
    data: bytes = field(repr=False)
    #: the zip's ``xflow_function.json`` (a layer's: what it holds, and for which functions)
    manifest: Mapping[str, Any]
    runtime: str = "python3.12"
    architecture: str = "x86_64"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def build_artifacts(workflow: Workflow, aws: AwsSession | None, shared_layers: bool = False) -> list[Artifact]:
    """Every zip of the workflow: the functions', the tracker function's, and (``shared_layers``) one layer per set of
    requirements that several functions of one runtime and architecture share. No backend is touched; each source
    is fetched once (a git clone, an S3 download), into a temporary folder that is removed."""
    from xflow.providers.aws_lambda.layers import build_layers
    from xflow.sources.fetch import fetch_source

    with tempfile.TemporaryDirectory(prefix="xflow-src-") as tmp:
        functions = list(workflow.functions.values())
        sources = {f.name: fetch_source(f, Path(tmp) / str(index), aws) for index, f in enumerate(functions)}
        artifacts = build_layers(workflow, aws, Path(tmp), sources) if shared_layers else []
        layered = frozenset(a.name for a in artifacts)
        for index, function in enumerate(functions):
            data, manifest = build_zip(workflow, function_manifest(workflow, function), aws, Path(tmp) / str(index),
                                       layered=layered, source=sources[function.name])
            artifacts.append(Artifact("function", function.name, data, manifest, function.runtime,
                                      function.architecture))
        data, manifest = build_zip(workflow, tracker_manifest(workflow), aws, Path(tmp))
    artifacts.append(Artifact("tracker", "tracker", data, manifest))
    return artifacts


class Packager:
    """Builds the zips: all of a workflow's for planning, one again for a step (from memory when planned here).

    ``shared_layers``: requirements that several functions share go into one Lambda layer. ``package``: the artifacts
    of a package (``xflow package``, ``setup --from``), deployed instead of building them."""

    def __init__(self, aws: AwsSession | None, shared_layers: bool = False) -> None:
        self.aws = aws
        self.shared_layers = shared_layers
        self.package: list[Artifact] | None = None
        #: zips built in this process, by SHA-256 (hex): planning's, handed to the steps that deploy them
        self._built: dict[str, bytes] = {}
        #: the shared layers of the last plan
        self.layers: list[Artifact] = []

    def artifacts(self, workflow: Workflow) -> list[Artifact]:
        """The package's artifacts when one is used, else the workflow's, built now."""
        return list(self.package) if self.package is not None else build_artifacts(workflow, self.aws,
                                                                                    self.shared_layers)

    def desired_functions(self, workflow: Workflow, streams: Mapping[str, str], log_group: str) -> list[FunctionSpec]:
        """Every function of the workflow and ``tracker_<workflow_id>``, each with its zip (built in memory, or the
        package's) and its stage's names in its environment (:data:`ENV_DEPLOYMENT`)."""
        artifacts = self.artifacts(workflow)
        by_name = {(a.kind, a.name): a for a in artifacts}
        self.layers = [a for a in artifacts if a.kind == "layer"]
        specs: list[FunctionSpec] = []
        deployment = deployment_environment(workflow, streams)
        for function in workflow.functions.values():
            artifact = by_name[("function", function.name)]
            env = {str(k): str(v) for k, v in function.environment.items()}
            env[ENV_WORKFLOW] = workflow.id
            env[ENV_DEPLOYMENT] = deployment
            needs = artifact.manifest.get("requirements")
            layers = (str(needs["key"]),) if isinstance(needs, dict) and needs.get("where") == "layer" else ()
            specs.append(FunctionSpec(workflow.resource_name(function.name), SHIM_HANDLER, function.runtime,
                                      max(1, min(900, math.ceil(function.timeout))), function.memory,
                                      (function.description or "")[:256], env, artifact.data,
                                      manifest=dict(artifact.manifest), architecture=function.architecture,
                                      layers=layers))
        tracker = by_name[("tracker", "tracker")]
        name = tracker_function_name(workflow.id)
        specs.append(FunctionSpec(name, TRACKER_HANDLER, "python3.12", 60, 128,
                                  f"xflow tracker of workflow {workflow.id}",
                                  {ENV_WORKFLOW: workflow.id,
                                   ENV_DEPLOYMENT: deployment_environment(workflow, streams, log_group, name)},
                                  tracker.data, manifest=dict(tracker.manifest)))
        for spec in specs:
            spec.sha = code_sha256(spec.zip_bytes)
            self._built[hashlib.sha256(spec.zip_bytes).hexdigest()] = spec.zip_bytes
        for layer in self.layers:
            self._built[layer.sha256] = layer.data
        return specs

    def zip_for(self, workflow: Workflow | None, artifact: Mapping[str, Any]) -> bytes:
        """The bytes of the zip ``artifact`` names (:meth:`FunctionSpec.artifact`): planned here, else built again.

        A zip built again must have the planned SHA-256: code that changed since the plan is an XflowError."""
        wanted = str(artifact.get("Sha256", ""))
        data = self._built.get(wanted)
        if data is None and self.package is not None:
            data = next((a.data for a in self.package if a.sha256 == wanted), None)
        if data is not None:
            return data
        manifest = artifact.get("Manifest") or {}
        if workflow is None:
            raise XflowError(f"the zip of {manifest.get('function')} was not planned here and there is no workflow "
                             "to build it from", "run 'xflow setup' again")
        if manifest.get("kind") == "layer":  # a shared layer: built with the workflow's other zips
            data = next((a.data for a in build_artifacts(workflow, self.aws, True) if a.sha256 == wanted), b"")
        else:
            with tempfile.TemporaryDirectory(prefix="xflow-src-") as tmp:
                data, _ = build_zip(workflow, manifest, self.aws, Path(tmp) / "src")
        if hashlib.sha256(data).hexdigest() != wanted:
            what = f"the requirements of layer {manifest.get('key', '')[:12]}" if manifest.get("kind") == "layer" \
                else f"the code of {manifest.get('function')}"
            raise XflowError(f"{what} changed since it was planned",
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
                names = set(archive.namelist())
                config = json.loads(archive.read(MANIFEST if MANIFEST in names else "python/xflow_layer.json"))
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
