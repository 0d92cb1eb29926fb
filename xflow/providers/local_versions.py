"""Versions of the local provider's functions: each setup that finds a function's code or environment changed
deploys a new version, a copy under the state folder; workers run the live version, and ``xflow rollback`` switches
back to an earlier one.

Under ``STATE/WORKFLOW/deployments/``:

- ``code/SHA256/``: a copy of the folder a function's code lies in, named by its SHA-256 (of the file names and
  contents, sorted): a folder source whole, for a file source the folder it lies in, so a handler finds the modules
  and the data beside it (``Path(__file__).parent / "words.txt"``) as when it runs in place. Every regular file is
  copied, walked as every source is (:func:`xflow.sources.resolve.source_files`: a symbolic link is copied as the
  file inside the folder it points to, one that leaves the folder is refused; beside a file source, where the folder
  is copied only for convenience, such a link -- or a FIFO -- is left out of the copy with a warning instead; the
  file itself is never a link there, as the path written in the workflow file is taken as written, resolved) and
  bounded like one (at most
  :data:`MAX_FILES` files and :data:`MAX_BYTES`). Caches, ``.git``, virtual environments, the state folder and the
  workflow file itself (editing it must not make a new version of every function beside it) are left out.
  Functions and versions with the same code share one copy.
- ``FUNCTION.json``: the function's versions (number, code SHA-256, handler, environment, time), the live one and
  the ones live before it (newest first). Written whole and atomically, readable by its owner only (the
  environment may hold secrets).

Setup plans ``local:PublishVersion`` (copy the code unless a copy exists, checking it is still what was planned;
add the version) and ``local:UpdateAlias`` (make a version live). A function whose live version has the code and
environment the file gives plans nothing; one whose code matches an earlier version goes back to it without a new
copy. The last :data:`KEPT` versions of a function are kept (and the live one, and those in its history); when
that drops a version, the copies no version names are removed. Each setup reads each ``FUNCTION.json`` once to
plan, and once for each step it takes on that function. Functions with a remote source (git, s3://) are fetched by
workers as before and have no versions. The local provider deploys all at once: a canary or linear strategy
applies where traffic can be split (the lambda provider).

Workers read the live versions when they start: restart running workers after ``xflow rollback``. The next setup
(``xflow run`` sets up too) deploys what the file says again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from xflow.core.errors import XflowError
from xflow.core.interfaces import Step
from xflow.core.rollout import chosen_functions, rollback_target
from xflow.sources.archive import MAX_MEMBERS, MAX_UNPACKED_BYTES

if TYPE_CHECKING:
    from xflow.core.model import Function, Workflow

log = logging.getLogger("xflow.local")

ALIAS = "live"
#: versions kept per function (beyond the live one and those in its history)
KEPT = 20
#: the most a deployed copy may hold: what any source may (an archive's members, what Lambda accepts unzipped)
MAX_FILES = MAX_MEMBERS
MAX_BYTES = MAX_UNPACKED_BYTES
_CHUNK = 1 << 20


def deployments_folder(state_dir: Path, workflow_id: str) -> Path:
    return Path(state_dir) / workflow_id / "deployments"


def code_root(function: Function) -> tuple[Path, str] | None:
    """The folder a function's deployment copies and where its source lies in it ("" for the folder itself), or None
    for a remote source."""
    path = function.source_path
    if path is None:
        return None
    return (path, "") if path.is_dir() else (path.parent, path.name)


def code_files(root: Path, skip: Iterable[str] = (), leave_out: Iterable[str] = (), entry: str = "",
               warn: bool = False) -> list[tuple[str, Path]]:
    """The files a copy of ``root`` holds, as (name in the copy, the regular file to read), in name order: not the
    folders named ``skip`` (at any depth), nor the files named ``leave_out`` at its top. An XflowError when there are
    more than :data:`MAX_FILES` or they add up to more than :data:`MAX_BYTES`, before anything is read.

    For a file source (``entry``: its name in ``root``), what the walk refuses beside it (a link that leaves ``root``,
    dangles or names a folder; a FIFO) is left out instead, with a warning each when ``warn``."""
    from xflow.sources.resolve import NOT_SHIPPED, source_files

    def beside(rel: PurePosixPath, error: XflowError) -> None:
        if warn:
            log.warning("%s: left out of the local copy of the folder %s lies in", error.message, entry)

    left_out = set(leave_out)
    files: list[tuple[str, Path]] = []
    size = 0
    try:
        for rel, path in source_files(root, f"source folder {root}", NOT_SHIPPED | set(skip),
                                      refused=beside if entry else None):
            name = rel.as_posix()
            if name in left_out:
                continue
            size += path.stat().st_size
            files.append((name, path))
            if len(files) > MAX_FILES or size > MAX_BYTES:
                raise _too_much(root)
    except OSError as exc:
        raise XflowError(f"cannot read the source folder {root}: {exc}") from None
    return files


def _too_much(root: Path) -> XflowError:
    return XflowError(f"source folder {root} holds more than {MAX_FILES} files or {MAX_BYTES >> 20} MiB: too much to "
                      "copy for every version", "give each function a folder of its own as 'source:'")


def files_digest(files: Iterable[tuple[str, Path]], copy_to: Path | None = None) -> str:
    """The SHA-256 (hex) of ``files`` (each name with the SHA-256 of its bytes, in the order given), reading each file
    once; with ``copy_to``, the bytes read are written there too (so the copy is exactly what was hashed)."""
    digest = hashlib.sha256()
    total = 0
    for name, path in files:
        each = hashlib.sha256()
        target = None if copy_to is None else copy_to / name
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as source, (open(target, "xb") if target is not None else contextlib.nullcontext()) as out:
            while chunk := source.read(_CHUNK):
                total += len(chunk)
                if total > MAX_BYTES:  # a file that grew since it was listed
                    raise _too_much(path.parent)
                each.update(chunk)
                if out is not None:
                    out.write(chunk)
        digest.update(f"{len(name)}:{name}:".encode() + each.digest())
    return digest.hexdigest()


def code_digest(root: Path, skip: Iterable[str] = (), leave_out: Iterable[str] = (), entry: str = "",
                warn: bool = False) -> str:
    """The SHA-256 (hex) of what a copy of ``root`` holds (:func:`code_files`)."""
    files = code_files(root, skip, leave_out, entry, warn)
    try:
        return files_digest(files)
    except OSError as exc:
        raise XflowError(f"cannot read the source folder {root}: {exc}") from None


def _live(record: Mapping[str, Any]) -> dict[str, Any] | None:
    return next((v for v in record["versions"] if v["version"] == record.get("live")), None)


class LocalVersions:
    """Plans, performs and reads the versions of one workflow's functions on the local provider."""

    def __init__(self, state_dir: Path, workflow_id: str) -> None:
        self.state_dir = Path(state_dir)
        self.folder = deployments_folder(self.state_dir, workflow_id)

    def _skip(self, root: Path) -> set[str]:
        """The state folder's name when it lies directly in ``root`` (it is never copied)."""
        state = self.state_dir.resolve()
        return {state.name} if state.parent == root.resolve() else set()

    @staticmethod
    def _leave_out(workflow: Workflow, root: Path) -> list[str]:
        """The workflow file's name when it lies directly in ``root`` (it is xflow's, not the handler's)."""
        path = Path(workflow.path)
        return [path.name] if path.parent.resolve() == root.resolve() else []

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
        return _live(self.record(function))

    # ------------------------------------------------------------------ plans (reading only)

    def plan_setup(self, workflow: Workflow, functions: Iterable[Function]) -> list[Step]:
        steps: list[Step] = []
        digests: dict[tuple[Path, bool], str] = {}  # by folder, and whether as a file's folder (which skips links)
        for function in functions:
            where = code_root(function)
            if where is None:
                continue
            root, entry = where
            if (root, not entry) not in digests:
                digests[root, not entry] = code_digest(root, self._skip(root), self._leave_out(workflow, root), entry,
                                                       warn=(root, entry == "") not in digests)
            digest = digests[root, not entry]
            wanted = {"sha256": digest, "entry": entry, "handler": function.handler,
                      "environment": dict(function.environment)}
            record = self.record(function.name)
            live = _live(record)
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
                                      "Skip": sorted(self._skip(root)), "LeaveOut": self._leave_out(workflow, root),
                                      **wanted}))
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
                handler: str, environment: Mapping[str, str], LeaveOut: Sequence[str] = ()) -> None:
        code = self.folder / "code" / sha256
        if not code.exists():
            files = code_files(Path(Root), Skip, LeaveOut, entry)
            tmp = self.folder / "code" / f".{sha256}.{uuid.uuid4().hex[:8]}"
            try:
                tmp.mkdir(parents=True)
                if files_digest(files, copy_to=tmp) != sha256:
                    raise XflowError(f"function {Function}: its code in {Root} changed since the plan", "run setup again")
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
        self._make_live(Function, self.record(Function), Version, History)

    def _make_live(self, function: str, record: dict[str, Any], version: str, history: list[str]) -> None:
        """Make ``version`` live in ``record`` (read by the caller), prune it, write it; then, when pruning dropped
        code no version of this function names any more, remove the copies no function names."""
        if not any(v["version"] == version for v in record["versions"]):
            raise XflowError(f"function {function} has no version {version} in {self.folder}", "run setup again")
        record.update(live=version, history=list(history))
        before = {v["sha256"] for v in record["versions"]}
        self._prune(record)
        self._write(function, record)
        if before - {v["sha256"] for v in record["versions"]}:
            self._remove_unused_code(function, record)

    def remove(self, *, folder: str) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def _prune(self, record: dict[str, Any]) -> None:
        keep = {record.get("live"), *record.get("history", [])}
        versions = record["versions"]
        record["versions"] = [v for i, v in enumerate(versions) if v["version"] in keep or i >= len(versions) - KEPT]
        record["history"] = [v for v in record.get("history", []) if any(x["version"] == v for x in record["versions"])]

    def _remove_unused_code(self, function: str, record: Mapping[str, Any]) -> None:
        """Remove the copies that no version names (``record``: ``function``'s, as just written; the others are read
        once each). Copies left by a publish that stopped before its version was recorded go too."""
        used = {v["sha256"] for v in record["versions"]}
        for path in self.folder.glob("*.json"):
            if path.stem != function:
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
        records = {name: self.record(name) for name in workflow.functions}  # each read once
        for name in chosen_functions(workflow, [n for n, r in records.items() if r["versions"]], function):
            record = records[name]
            current = record.get("live")
            numbers = [v["version"] for v in record["versions"]]
            target, history = rollback_target(name, current, record.get("history", []), numbers, to)
            if target is None:
                results.append({"function": name, "from": current, "to": None, "note": f"no version before {current}"})
                continue
            self._make_live(name, record, target, history)
            results.append({"function": name, "from": current, "to": target})
        return results
