"""Shared Lambda layers of the lambda provider: the requirements several functions share, published once as a layer
version that each of those functions names in its configuration (``Layers``).

A layer is built by :func:`~xflow.providers.aws_lambda.packaging.build_artifacts` (``xflow package --shared-layers``,
or the provider's ``shared_layers`` option): one per set of requirements that two or more functions of one runtime
and architecture share. Its Lambda name is namespaced like the deployment's other resources:
``xflow-<workflow id, stage included>-<first function that uses it>``, so a changed requirement set of the same
functions is a new version of the same layer.

Lambda has no tags for layers; a version's description marks it as the workflow's and holds its zip's SHA-256
(``xflow layer of workflow W: requirements KEY, sha256 HEX``). Planning reads the layer's versions: one whose
description and ``Content.CodeSha256`` match the zip is reused (nothing is published); otherwise
``lambda:PublishLayerVersion`` is planned, and the functions that use it name :func:`published_layer`, a placeholder
the executor replaces with the ARN of the version the plan's step published. Earlier versions are kept (versions of
the functions still name them, for a rollback); teardown deletes every version of the workflow's layers, and setup
those of layers the workflow no longer uses.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xflow.aws import AwsSession, ignoring, is_client_error, translate_errors
from xflow.core.errors import XflowError
from xflow.core.interfaces import Step
from xflow.providers.aws_lambda.packaging import Artifact, ZipBuilder

if TYPE_CHECKING:
    from xflow.core.model import Function, Workflow

#: what starts the description of every layer version xflow publishes, before the workflow id
MARK = "xflow layer of workflow "
#: in a planned function configuration: the version of a layer that the same plan's step publishes
PLACEHOLDER = "$LAYER"
_SHA = re.compile(r"sha256 ([0-9a-f]{64})")
_ARN = re.compile(r"^arn:[^:]+:lambda:[^:]+:\d+:layer:([A-Za-z0-9_-]+):(\d+)$")


#: where a layer's zip says what it holds (Lambda unpacks a layer in /opt; /opt/python is on the path)
LAYER_MANIFEST = "python/xflow_layer.json"


def build_layers(workflow: Workflow, aws: AwsSession | None, workdir: Path,
                 sources: Mapping[str, Path] | None = None) -> list[Artifact]:
    """One layer zip per set of requirements that several functions of one runtime and architecture share (their
    requirements' key), the packages under ``python/``; installs go under ``workdir``, and so do the sources that
    ``sources`` (function name -> where its source was fetched) does not hold."""
    from xflow.sources.fetch import fetch_source
    from xflow.sources.requirements import Requirements, install, lambda_target, packaged_files, requirements_of

    found: dict[str, list[tuple[Function, Requirements]]] = {}
    for index, function in enumerate(workflow.functions.values()):
        source = (sources or {}).get(function.name) or fetch_source(function, workdir / f"probe{index}", aws)
        wanted = requirements_of(function, source, workflow.path.parent)
        if wanted is not None:
            found.setdefault(wanted.key(lambda_target(function.runtime, function.architecture)), []).append(
                (function, wanted))
    layers = []
    for key, users in sorted(found.items()):
        if len(users) < 2:
            continue
        first, wanted = users[0]
        target = workdir / f"layer-{key[:12]}"
        install(wanted, target, runtime=first.runtime, architecture=first.architecture)
        builder = ZipBuilder()
        for name, data, executable in packaged_files(target):
            builder.add(f"python/{name}", data, executable)
        manifest = {"kind": "layer", "key": key, "workflow_id": workflow.unstaged_id, "runtime": first.runtime,
                    "architecture": first.architecture, "requirements": list(wanted.lines),
                    "functions": sorted(f.name for f, _ in users)}
        builder.add(LAYER_MANIFEST, json.dumps(manifest, sort_keys=True, indent=1).encode())
        layers.append(Artifact("layer", key, builder.build(), manifest, first.runtime, first.architecture))
    return layers


def layer_name(workflow: Workflow, artifact: Artifact) -> str:
    """The Lambda name of a shared layer: ``xflow-<workflow id>-<first function using it>`` (at most 140 characters of
    letters, digits, ``-`` and ``_``)."""
    users = sorted(str(f) for f in artifact.manifest.get("functions") or ()) or [artifact.name[:12]]
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"xflow-{workflow.id}-{users[0]}")[:140]


def published_layer(name: str, sha256: str) -> str:
    """The placeholder a planned configuration names for the version of layer ``name`` with zip ``sha256`` (hex)."""
    return f"{PLACEHOLDER}:{name}:{sha256}"


def split_version_arn(arn: str) -> tuple[str, int]:
    """A layer version ARN's layer name and version number."""
    match = _ARN.match(arn)
    if match is None:
        raise XflowError(f"{arn!r} is not the ARN of a Lambda layer version")
    return match.group(1), int(match.group(2))


def unpack_layer(aws: AwsSession, arn: str, folder: Path, code: Callable[[str, str, str | None], bytes]) -> list[Path]:
    """For ``xflow emulate``: the folders a layer version puts on a function's path, as Lambda unpacks it in /opt
    (``python/lib/pythonX.Y/site-packages``, ``python``). Its zip is ``code(what, CodeSha256, location)``, unpacked
    once under ``folder``."""
    from xflow.sources.archive import safe_extract_zip

    name, version = split_version_arn(arn)
    root = Path(folder) / f"{name}-{version}"
    if not root.exists():
        with translate_errors(f"reading version {version} of Lambda layer {name}"):
            try:
                content = aws.client("lambda").get_layer_version(LayerName=name, VersionNumber=version)["Content"]
            except Exception as exc:
                if is_client_error(exc, "ResourceNotFoundException"):
                    raise XflowError(f"layer version {arn} does not exist on this endpoint",
                                     "run 'xflow setup' for this workflow again") from None
                raise
        data = code(f"layer {name} version {version}", content["CodeSha256"], content.get("Location"))
        safe_extract_zip(data, root, f"the content of layer {name} version {version}")
    site = root / "python" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    return [path for path in (site, root / "python") if path.is_dir()]


@dataclass(frozen=True)
class LayerSpec:
    """One shared layer as the file (or the package) wants it."""

    name: str
    artifact: Artifact
    workflow_id: str

    @property
    def key(self) -> str:
        return self.artifact.name

    @property
    def sha256(self) -> str:
        return self.artifact.sha256

    @property
    def code_sha256(self) -> str:
        """What Lambda reports as the version's ``Content.CodeSha256`` (base64 of the digest)."""
        return base64.b64encode(bytes.fromhex(self.sha256)).decode()

    @property
    def description(self) -> str:
        return f"{MARK}{self.workflow_id}: requirements {self.key[:12]}, sha256 {self.sha256}"[:256]

    def reference(self) -> dict[str, Any]:
        """The zip as a step names it (as :meth:`FunctionSpec.artifact` does): manifest, SHA-256 and size."""
        return {"Sha256": self.sha256, "Size": len(self.artifact.data), "Manifest": dict(self.artifact.manifest)}


class Layers:
    """Reads the workflow's layers, plans their steps and performs the calls they name.

    ``zip_of(reference)``: the bytes of the zip a step names (the provider's, which also keeps them in the state
    folder, where ``xflow emulate`` finds a layer's content)."""

    def __init__(self, aws: AwsSession, workflow_id: str,
                 zip_of: Callable[[Mapping[str, Any]], bytes] | None = None) -> None:
        self.aws = aws
        self.workflow_id = workflow_id
        self.zip_of = zip_of
        #: the versions published by this process: placeholder -> version ARN
        self.published: dict[str, str] = {}

    @property
    def lam(self) -> Any:
        return self.aws.client("lambda")

    # ------------------------------------------------------------------ reading

    def desired(self, workflow: Workflow, artifacts: Sequence[Artifact]) -> dict[str, LayerSpec]:
        """The layers of ``artifacts`` (the packager's), by requirements key."""
        return {a.name: LayerSpec(layer_name(workflow, a), a, workflow.id) for a in artifacts if a.kind == "layer"}

    def versions(self, name: str) -> list[dict[str, Any]]:
        """The layer's versions, newest first ([] when there is no such layer)."""
        found: list[dict[str, Any]] = []
        with translate_errors(f"listing the versions of Lambda layer {name}"), ignoring("ResourceNotFoundException"):
            for page in self.lam.get_paginator("list_layer_versions").paginate(LayerName=name):
                found.extend(dict(v) for v in page.get("LayerVersions", []))
        return sorted(found, key=lambda v: -int(v["Version"]))

    def owned(self) -> list[str]:
        """The names of the layers this workflow published (their newest version's description says so)."""
        names = []
        with translate_errors("listing Lambda layers"):
            for page in self.lam.get_paginator("list_layers").paginate():
                for layer in page.get("Layers", []):
                    latest = layer.get("LatestMatchingVersion") or {}
                    if self._ours(latest):
                        names.append(str(layer["LayerName"]))
        return sorted(names)

    def _ours(self, version: Mapping[str, Any]) -> bool:
        return str(version.get("Description") or "").startswith(f"{MARK}{self.workflow_id}:")

    def find(self, name: str, sha256: str) -> str | None:
        """The ARN of a version of layer ``name`` whose zip has SHA-256 ``sha256`` (hex), or None."""
        code_sha = base64.b64encode(bytes.fromhex(sha256)).decode()
        for version in self.versions(name):
            match = _SHA.search(str(version.get("Description") or ""))
            if not self._ours(version) or match is None or match.group(1) != sha256:
                continue
            content: dict[str, Any] = {}
            with translate_errors(f"reading version {version['Version']} of Lambda layer {name}"), \
                    ignoring("ResourceNotFoundException"):
                content = self.lam.get_layer_version(LayerName=name, VersionNumber=int(version["Version"]))
            if (content.get("Content") or {}).get("CodeSha256") == code_sha:
                return str(version["LayerVersionArn"])
        return None

    # ------------------------------------------------------------------ plans

    def plan_setup(self, wanted: Mapping[str, LayerSpec]) -> tuple[dict[str, str], list[Step]]:
        """For each wanted layer (by key): the ARN its functions name (a published version with its content, else the
        placeholder of the version this plan publishes), and the publishing steps."""
        arns: dict[str, str] = {}
        steps: list[Step] = []
        for key, spec in sorted(wanted.items(), key=lambda item: item[1].name):
            existing = self.versions(spec.name)
            if existing and not self._ours(existing[0]):
                raise XflowError(f"a Lambda layer named {spec.name} already exists and was not published for workflow "
                                 f"{self.workflow_id}", "rename the function that names the layer, or delete the layer")
            found = self.find(spec.name, spec.sha256) if existing else None
            if found is not None:
                arns[key] = found
                continue
            arns[key] = published_layer(spec.name, spec.sha256)
            users = ", ".join(str(f) for f in spec.artifact.manifest.get("functions") or ())
            steps.append(Step("update" if existing else "create", f"layer:{spec.name}",
                              detail=f"{len(spec.artifact.data)} bytes, requirements of {users}",
                              call="lambda:PublishLayerVersion",
                              params={"LayerName": spec.name, "Description": spec.description,
                                      "Content": {"ZipFile": spec.reference()},
                                      "CompatibleRuntimes": [spec.artifact.runtime],
                                      "CompatibleArchitectures": [spec.artifact.architecture]}))
        return arns, steps

    def plan_removal(self, keep: Sequence[str] = ()) -> list[Step]:
        """Delete every version of the workflow's layers except those named ``keep``."""
        steps = []
        for name in self.owned():
            if name in keep:
                continue
            steps += [Step("delete", f"layer-version:{name}:{v['Version']}", call="lambda:DeleteLayerVersion",
                           params={"LayerName": name, "VersionNumber": int(v["Version"])})
                      for v in reversed(self.versions(name))]
        return steps

    # ------------------------------------------------------------------ the calls

    def operations(self) -> dict[str, Callable[..., None]]:
        return {"lambda:PublishLayerVersion": self.publish, "lambda:DeleteLayerVersion": self.delete}

    def publish(self, *, LayerName: str, Content: Mapping[str, Any], **request: Any) -> None:
        if self.zip_of is None:
            raise XflowError("this provider cannot build the zip of a layer")
        reference = Content["ZipFile"]
        data = self.zip_of(reference)
        with translate_errors(f"publishing a version of Lambda layer {LayerName}"):
            done = self.lam.publish_layer_version(LayerName=LayerName, Content={"ZipFile": data}, **request)
        self.published[published_layer(LayerName, str(reference["Sha256"]))] = str(done["LayerVersionArn"])

    def delete(self, *, LayerName: str, VersionNumber: int) -> None:
        with translate_errors(f"deleting version {VersionNumber} of Lambda layer {LayerName}"), \
                ignoring("ResourceNotFoundException"):
            self.lam.delete_layer_version(LayerName=LayerName, VersionNumber=int(VersionNumber))

    def resolve(self, arns: Sequence[str] | None) -> list[str]:
        """The ARNs a configuration names, placeholders replaced by the versions they stand for (published by this
        process, else found by their content: a plan executed by another process)."""
        resolved = []
        for arn in arns or ():
            if not arn.startswith(f"{PLACEHOLDER}:"):
                resolved.append(arn)
                continue
            if arn not in self.published:
                _, name, sha256 = arn.split(":", 2)
                found = self.find(name, sha256)
                if found is None:
                    raise XflowError(f"layer {name} has no published version with SHA-256 {sha256}",
                                     "run 'xflow setup' again")
                self.published[arn] = found
            resolved.append(self.published[arn])
        return resolved
