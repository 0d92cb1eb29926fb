"""The local provider's per-function environments: each function's requirements installed with pip into a folder of
its own under the state folder, which its handler imports packages from (in front of ``sys.path`` in its handler
processes), so a handler imports the same versions here as on Lambda.

The folder is ``STATE/<workflow id>/requirements/<function>/`` and holds ``.xflow-requirements``, the key of what was
installed (:meth:`~xflow.sources.requirements.Requirements.key`: the lines and this interpreter). Setup plans an
``local:InstallRequirements`` step for each function whose folder is missing or holds another key (planning reads
only); a worker that starts before any setup on its machine installs what is missing itself. Teardown removes the
folders with the rest of the workflow's state.

The lines of a remote source's ``requirements.txt`` are installed from the workflow file's folder (the fetched
copy they were read from is removed at once): a path in them reads from there.

A worker finds a function's requirements without fetching anything: in the file, or in the code setup deployed (the
live version's copy, :mod:`xflow.providers.local_versions`). A remote source (git, s3://) has no such copy, and only
the dispatcher fetches it (once, to run it): when setup with the local provider ran in this state folder (its record,
:mod:`xflow.core.setup_record`), the environment it installed is the function's (none: it found no requirements; run
setup again after the remote code gains some). Only a worker on a machine where setup did not run fetches a remote
source first, to look for a ``requirements.txt``.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xflow.core.errors import XflowError
from xflow.core.interfaces import Step

if TYPE_CHECKING:
    from xflow.core.model import Function, Workflow
    from xflow.sources.requirements import Requirements

FOLDER = "requirements"
MARKER = ".xflow-requirements"
#: what an environment is installed for: this interpreter's version and platform
TARGET = f"local/{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}/{sysconfig.get_platform()}"


def environments_folder(state_dir: Path, workflow: Workflow) -> Path:
    return Path(state_dir) / workflow.id / FOLDER


def environment_folder(state_dir: Path, workflow: Workflow, function: str) -> Path:
    return environments_folder(state_dir, workflow) / function


def function_requirements(workflow: Workflow, function: Function) -> Requirements | None:
    """``function``'s requirements (a remote source is fetched into a temporary folder, removed at once, to find a
    ``requirements.txt`` in it: see :func:`needs_fetch`)."""
    from xflow.sources.fetch import resolve_source
    from xflow.sources.requirements import requirements_of

    base = workflow.path.parent
    if function.requirements is not None or function.requirements_file is not None:
        return requirements_of(function, None, base)
    if function.source_path is not None:
        from xflow.sources.resolve import narrow

        return requirements_of(function, narrow(function.source_path, function.handler), base)
    with tempfile.TemporaryDirectory(prefix="xflow-req-") as tmp:
        found = requirements_of(function, resolve_source(workflow, function, Path(tmp) / "src"), base)
    if found is None:
        return None
    # the fetched copy is gone when the lines are installed: pip gets the lines, run from the workflow file's folder
    return replace(found, origin=f"the requirements.txt of function {function.name}'s source {function.source!r}",
                   folder=base, file=None)


def installed_key(folder: Path) -> str | None:
    try:
        return (folder / MARKER).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def needs_fetch(function: Function) -> bool:
    """Whether finding ``function``'s requirements means fetching its source (a remote one, none named in the file)."""
    return function.requirements is None and function.requirements_file is None and function.source_path is None


def set_up_here(workflow: Workflow, state_dir: Path) -> bool:
    """Whether setup with the local provider ran for ``workflow`` in ``state_dir`` (and installed what it found)."""
    from xflow.core.setup_record import read_setup_record

    record = read_setup_record(state_dir, workflow.id) or {}
    return isinstance(record.get("provider"), dict) and record["provider"].get("name") == "local"


def plan_environments(workflow: Workflow, state_dir: Path, functions: Iterable[str] | None = None) -> list[Step]:
    """``local:InstallRequirements`` for each function whose environment is missing or out of date (reads only)."""
    steps = []
    for name in functions if functions is not None else workflow.functions:
        function = workflow.functions[name]
        wanted = function_requirements(workflow, function)
        if wanted is None:
            continue
        folder = environment_folder(state_dir, workflow, name)
        key = wanted.key(TARGET)
        if installed_key(folder) == key:
            continue
        steps.append(Step("update" if folder.exists() else "create", f"requirements:{name}",
                          detail=f"{len(wanted.lines)} requirement line(s) from {wanted.origin}",
                          call="local:InstallRequirements",
                          params={"function": name, "folder": str(folder), "key": key, "lines": list(wanted.lines),
                                  "cwd": str(wanted.folder), "file": str(wanted.file) if wanted.file else None,
                                  "origin": wanted.origin}))
    return steps


def install_requirements(*, function: str, folder: str, key: str, lines: list[str], cwd: str, file: str | None,
                         origin: str) -> None:
    """Install into a new folder beside ``folder``, then put it in its place (a worker never sees half of one)."""
    from xflow.sources.requirements import Requirements, install

    target = Path(folder).resolve()
    fresh = target.with_name(f".{target.name}-{uuid.uuid4().hex[:8]}")
    try:
        install(Requirements(tuple(lines), origin, Path(cwd), Path(file) if file else None), fresh)
        (fresh / MARKER).write_text(key + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        fresh.replace(target)
    except OSError as exc:
        raise XflowError(f"function {function}: cannot install its requirements in {target}: {exc}",
                         "choose a writable state folder with --state-dir") from None
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def import_paths(workflow: Workflow, state_dir: Path, functions: Iterable[str]) -> dict[str, list[str]]:
    """The folder each of ``functions`` imports its requirements from, installing those that are missing or out of
    date (a worker started where setup did not run). A remote source is not fetched for this when setup ran here: what
    it installed is used (see the module's docstring)."""
    functions = list(functions)
    looked_up = functions
    if any(needs_fetch(workflow.functions[name]) for name in functions) and set_up_here(workflow, state_dir):
        looked_up = [name for name in functions if not needs_fetch(workflow.functions[name])]
    found: dict[str, list[str]] = {}
    for step in plan_environments(workflow, state_dir, looked_up):
        install_requirements(**step.params)
    for name in functions:
        folder = environment_folder(state_dir, workflow, name)
        if installed_key(folder) is not None:
            found[name] = [str(folder)]
    return found


def remove_environments(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def teardown_steps(workflow: Workflow, state_dir: Path) -> list[Step]:
    folder = environments_folder(state_dir, workflow)
    if not folder.exists():
        return []
    return [Step("delete", f"requirements:{folder}", detail="the functions' installed requirements",
                 call="local:RemoveRequirements", params={"folder": str(folder)})]


def operations() -> dict[str, Any]:
    return {"local:InstallRequirements": install_requirements, "local:RemoveRequirements": remove_environments}
