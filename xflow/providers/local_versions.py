"""Versions of the local provider's functions: each setup that finds a function's code or environment changed
deploys a new version, a copy under the state folder; workers run the live version, and ``xflow rollback`` switches
back to an earlier one.

Under ``STATE/WORKFLOW/deployments/``:

- ``code/SHA256/``: a copy of what a function's ``source:`` makes importable, named by its SHA-256 (the file names
  and bytes, sorted): a folder source whole, a file source with the Python modules of the folder it lies in (they
  are importable to it, as when it runs in place; the workflow file or data beside it are not code). Caches,
  ``.git``, virtual environments and the state folder are left out. Functions and versions with the same code
  share one copy.
- ``FUNCTION.json``: the function's versions (number, code SHA-256, handler, environment, time), the live one and
  the ones live before it (newest first). Written whole and atomically, readable by its owner only (the
  environment may hold secrets).

Setup plans ``local:PublishVersion`` (copy the code unless a copy exists, checking it is still what was planned;
add the version) and ``local:UpdateAlias`` (make a version live). A function whose live version has the code and
environment the file gives plans nothing; one whose code matches an earlier version goes back to it without a new
copy. The last :data:`KEPT` versions of a function are kept (and the live one, and those in its history); copies
no version names are removed. Functions with a remote source (git, s3://) are fetched by workers as before and have
no versions. The local provider deploys all at once: a canary or linear strategy applies where traffic can be
split (the lambda provider).

Workers read the live versions when they start: restart running workers after ``xflow rollback``. The next setup
(``xflow run`` sets up too) deploys what the file says again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xflow.core.errors import XflowError
from xflow.core.interfaces import Step
from xflow.core.rollout import chosen_functions, rollback_target

if TYPE_CHECKING:
    from xflow.core.model import Function, Workflow

log = logging.getLogger("xflow.local")

ALIAS = "live"
#: versions kept per function (beyond the live one and those in its history)
KEPT = 20
#: the most a deployed copy may hold
MAX_FILES = 20_000
MAX_BYTES = 512 * 1024 * 1024


def deployments_folder(state_dir: Path, workflow_id: str) -> Path:
    return Path(state_dir) / workflow_id / "deployments"


def code_root(function: Function) -> tuple[Path, str] | None:
    """The folder a function's deployment copies and where its source lies in it ("" for the folder itself: then
    every file is copied, else only Python modules), or None for a remote source."""
    path = function.source_path
    if path is None:
        return None
    return (path, "") if path.is_dir() else (path.parent, path.name)


def code_digest(root: Path, skip: Iterable[str] = (), python_only: bool = False) -> tuple[str, list[tuple[str, Path]]]:
    """The SHA-256 (hex) of the files under ``root`` (names and bytes, in name order; with ``python_only`` its
    ``.py`` files only), and the files."""
    from xflow.sources.resolve import NOT_SHIPPED, source_files

    digest = hashlib.sha256()
    files: list[tuple[str, Path]] = []
    size = 0
    for rel, path in source_files(root, f"source folder {root}", NOT_SHIPPED | set(skip)):
        name = rel.as_posix()
        if python_only and not name.endswith(".py"):
            continue
        data = path.read_bytes()
        size += len(data)
        if len(files) >= MAX_FILES or size > MAX_BYTES:
            raise XflowError(f"source folder {root} holds more than {MAX_FILES} files or {MAX_BYTES >> 20} MiB: too much "
                             "to copy for every version", "give each function a folder of its own as 'source:'")
        digest.update(f"{len(name)}:{name}:{len(data)}:".encode())
        digest.update(data)
        files.append((name, path))
    return digest.hexdigest(), files


class LocalVersions:
    """Plans, performs and reads the versions of one workflow's functions on the local provider."""

    def __init__(self, state_dir: Path, workflow_id: str) -> None:
        self.state_dir = Path(state_dir)
        self.folder = deployments_folder(self.state_dir, workflow_id)

    def _skip(self, root: Path) -> set[str]:
        """The state folder's name when it lies directly in ``root`` (it is never copied)."""
        state = self.state_dir.resolve()
        return {state.name} if state.parent == root.resolve() else set()

    # ------------------------------------------------------------------ records

    def record_path(self, function: str) -> Path:
        return self.folder / f"{function}.json"

    def record(self, function: str) -> dict[str, Any]:
        path = self.record_path(function)
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return {"function": function, "live": None, "history": [], "versions": []}
        except (OSError, ValueError) as exc:
            raise XflowError(f"cannot read {path}: {exc}",
                             "remove it and run setup again, or choose another state folder with --state-dir") from None
        return data if isinstance(data, dict) else {"function": function, "live": None, "history": [], "versions": []}

    def _write(self, function: str, record: Mapping[str, Any]) -> None:
        path = self.record_path(function)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{function}.", suffix=".json", dir=path.parent)
        except OSError as exc:
            raise XflowError(f"cannot write {path}: {exc}", "choose a writable state folder with --state-dir") from None
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(record, file, indent=1)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def live_version(self, function: str) -> dict[str, Any] | None:
        record = self.record(function)
        return next((v for v in record["versions"] if v["version"] == record.get("live")), None)

    # ------------------------------------------------------------------ plans (reading only)

    def plan_setup(self, workflow: Workflow, functions: Iterable[Function]) -> list[Step]:
        steps: list[Step] = []
        digests: dict[tuple[Path, bool], str] = {}
        for function in functions:
            where = code_root(function)
            if where is None:
                continue
            root, entry = where
            if (root, bool(entry)) not in digests:
                digests[root, bool(entry)] = code_digest(root, self._skip(root), python_only=bool(entry))[0]
            digest = digests[root, bool(entry)]
            wanted = {"sha256": digest, "entry": entry, "handler": function.handler,
                      "environment": dict(function.environment)}
            record = self.record(function.name)
            live = self.live_version(function.name)
            if live is not None and all(live.get(k) == v for k, v in wanted.items()):
                continue
            same = [v for v in record["versions"] if all(v.get(k) == value for k, value in wanted.items())]
            resource = f"version:{function.name}"
            if same:
                version = str(same[-1]["version"])
            else:
                version = str(max((int(v["version"]) for v in record["versions"]), default=0) + 1)
                steps.append(Step("create", resource, detail=f"version {version}, code {digest[:12]}",
                                  call="local:PublishVersion", params={
                                      "Function": function.name, "Version": version, "Root": str(root),
                                      "Skip": sorted(self._skip(root)), **wanted}))
            history = [record["live"], *record.get("history", [])] if record.get("live") else []
            steps.append(Step("update" if record.get("live") else "create", f"alias:{function.name}",
                              detail=f"{ALIAS} -> version {version}", call="local:UpdateAlias",
                              params={"Function": function.name, "Version": version,
                                      "History": [v for v in dict.fromkeys(history) if v != version]},
                              depends_on=(resource,)))
        strategy = getattr(getattr(workflow, "deploy", None), "strategy", None)
        if steps and strategy is not None and strategy.gradual:
            log.warning("the local provider deploys all at once: the %s strategy applies on the lambda provider",
                        strategy.kind)
        return steps

    def plan_teardown(self) -> list[Step]:
        if not self.folder.exists():
            return []
        return [Step("delete", f"versions:{self.folder}", detail="the deployed copies of the functions' code",
                     call="local:RemoveVersions", params={"folder": str(self.folder)})]

    # ------------------------------------------------------------------ the calls

    def operations(self) -> dict[str, Callable[..., None]]:
        return {"local:PublishVersion": self.publish, "local:UpdateAlias": self.update_alias,
                "local:RemoveVersions": self.remove}

    def publish(self, *, Function: str, Version: str, Root: str, Skip: list[str], sha256: str, entry: str,
                handler: str, environment: Mapping[str, str]) -> None:
        code = self.folder / "code" / sha256
        if not code.exists():
            digest, files = code_digest(Path(Root), Skip, python_only=bool(entry))
            if digest != sha256:
                raise XflowError(f"function {Function}: its code in {Root} changed since the plan", "run setup again")
            tmp = self.folder / "code" / f".{sha256}.{uuid.uuid4().hex[:8]}"
            try:
                for name, path in files:
                    target = tmp / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
                try:
                    os.rename(tmp, code)
                except OSError:
                    if not code.exists():  # not another setup that copied the same code meanwhile
                        raise
            except OSError as exc:
                raise XflowError(f"cannot copy the code of {Function} to {code}: {exc}",
                                 "choose a writable state folder with --state-dir") from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        record = self.record(Function)
        record["versions"] = [v for v in record["versions"] if v["version"] != Version] + [{
            "version": Version, "sha256": sha256, "entry": entry, "handler": handler,
            "environment": dict(environment), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
        self._write(Function, record)

    def update_alias(self, *, Function: str, Version: str, History: list[str]) -> None:
        record = self.record(Function)
        if not any(v["version"] == Version for v in record["versions"]):
            raise XflowError(f"function {Function} has no version {Version} in {self.folder}", "run setup again")
        record.update(live=Version, history=list(History))
        self._prune(record)
        self._write(Function, record)
        self._remove_unused_code()

    def remove(self, *, folder: str) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def _prune(self, record: dict[str, Any]) -> None:
        keep = {record.get("live"), *record.get("history", [])}
        versions = record["versions"]
        record["versions"] = [v for i, v in enumerate(versions) if v["version"] in keep or i >= len(versions) - KEPT]
        record["history"] = [v for v in record.get("history", []) if any(x["version"] == v for x in record["versions"])]

    def _remove_unused_code(self) -> None:
        used: set[str] = set()
        for path in self.folder.glob("*.json"):
            used.update(v["sha256"] for v in self.record(path.stem)["versions"])
        for copy in (self.folder / "code").glob("*"):
            if copy.name not in used and not copy.name.startswith("."):
                shutil.rmtree(copy, ignore_errors=True)

    # ------------------------------------------------------------------ running, listing, rolling back

    def live_workflow(self, workflow: Workflow) -> Workflow:
        """``workflow`` with each function that has a live version running that version's code and environment."""
        functions = dict(workflow.functions)
        changed = False
        for name, function in workflow.functions.items():
            if code_root(function) is None:
                continue
            live = self.live_version(name)
            if live is None:
                continue
            code = self.folder / "code" / live["sha256"]
            if not code.is_dir():
                raise XflowError(f"function {name}: the code of its live version {live['version']} is missing from "
                                 f"{code.parent}", "run 'xflow setup' again")
            path = code / live["entry"] if live["entry"] else code
            functions[name] = replace(function, source=str(path), source_path=path, handler=live["handler"],
                                      environment=dict(live["environment"]))
            changed = True
        return replace(workflow, functions=functions) if changed else workflow

    def deployed(self, workflow: Workflow) -> list[str]:
        return [name for name in workflow.functions if self.record(name)["versions"]]

    def describe(self, function: str) -> dict[str, Any]:
        record = self.record(function)
        live = record.get("live")
        return {"function": function, "alias": ALIAS, "live": live, "weights": {}, "previous": record.get("history", []),
                "versions": [{"version": v["version"], "sha256": v["sha256"], "created_at": v["created_at"],
                              "live": v["version"] == live, "weight": 1.0 if v["version"] == live else None,
                              "description": f"{v['entry'] or '.'} {v['handler']}"} for v in record["versions"]]}

    def rollback(self, workflow: Workflow, function: str | None, to: str | None) -> list[dict[str, Any]]:
        results = []
        for name in chosen_functions(workflow, self.deployed(workflow), function):
            record = self.record(name)
            current = record.get("live")
            numbers = [v["version"] for v in record["versions"]]
            target, history = rollback_target(name, current, record.get("history", []), numbers, to)
            if target is None:
                results.append({"function": name, "from": current, "to": None, "note": f"no version before {current}"})
                continue
            self.update_alias(Function=name, Version=target, History=history)
            results.append({"function": name, "from": current, "to": target})
        return results
