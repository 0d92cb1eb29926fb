"""A function's third-party requirements: where they are written, and installing them with pip into a folder.

A function's requirements are, first found first: the lines of ``requirements:`` in the workflow file, the file that
``requirements: PATH`` names, or a ``requirements.txt`` beside its source (in a folder source, or next to a file
source). They are pip requirement lines, options included (``--no-index``, ``--find-links DIR``, ``-r other.txt``);
pip runs in the folder they were written in, so relative paths read from there.

:func:`install` puts them into a folder with ``pip install --target``: for this interpreter (the local provider's
per-function environment), or for a Lambda runtime and architecture (``--platform manylinux2014_x86_64`` or
``manylinux2014_aarch64``, ``--only-binary=:all:``, ``--python-version 3.12``). :func:`packaged_files` lists what an
installation holds as it goes into a zip: no ``bin/`` (console scripts name this machine's interpreter), no
compiled ``.pyc``, and ``RECORD`` files without the rows of those, so the same requirements give the same bytes
everywhere.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xflow.core.errors import XflowError

if TYPE_CHECKING:
    from xflow.core.model import Function

REQUIREMENTS_FILE = "requirements.txt"
#: the pip platform tag of each Lambda architecture
PLATFORMS = {"x86_64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}
#: how long one pip install may take, in seconds
PIP_TIMEOUT = 900
#: folders of an installation that stay out of artifacts
SKIPPED = {"bin", "__pycache__"}


@dataclass(frozen=True)
class Requirements:
    """A function's requirement lines and where they were written."""

    #: the lines, stripped, without blank lines and comments
    lines: tuple[str, ...]
    #: what to name in messages: ``requirements: of function F`` or the file's path
    origin: str
    #: the folder pip runs in (relative paths in the lines read from there)
    folder: Path
    #: the requirements file the lines came from (None: written in the workflow file)
    file: Path | None = None

    def key(self, target: str) -> str:
        """A hash of the lines and the target they are installed for (``local``, ``x86_64/python3.12``)."""
        digest = hashlib.sha256("\n".join((target, *self.lines)).encode())
        return digest.hexdigest()


def _lines(text: str) -> tuple[str, ...]:
    found = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            found.append(line)
    return tuple(found)


def requirements_of(function: Function, source: Path | None, base: Path) -> Requirements | None:
    """``function``'s requirements, or None when it has none. ``source``: its code as fetched (a file or a folder);
    ``base``: the workflow file's folder, where lines written in the file are read from."""
    if function.requirements is not None:
        lines = _lines("\n".join(function.requirements))
        return Requirements(lines, f"requirements: of function {function.name}", base) if lines else None
    path = function.requirements_file
    if path is None and source is not None:
        candidate = (source if source.is_dir() else source.parent) / REQUIREMENTS_FILE
        path = candidate if candidate.is_file() else None
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise XflowError(f"function {function.name}: cannot read {path}: {exc}") from None
    found = Requirements(_lines(text), str(path), path.parent, path)
    return found if found.lines else None


def lambda_target(runtime: str, architecture: str) -> str:
    """The target name of a Lambda runtime and architecture (``x86_64/python3.12``), part of the requirements' key."""
    return f"{architecture}/{runtime}"


def install(requirements: Requirements, target: Path, *, runtime: str | None = None,
            architecture: str | None = None) -> None:
    """``pip install --target TARGET`` of the requirements: for this interpreter, or (``runtime`` given) for that Lambda
    runtime and ``architecture`` (binary wheels only). A failure is an XflowError with pip's last lines."""
    with tempfile.TemporaryDirectory(prefix="xflow-req-") as tmp:
        listed = requirements.file
        if listed is None:
            listed = Path(tmp) / REQUIREMENTS_FILE
            listed.write_text("\n".join(requirements.lines) + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                   "--no-compile", "--no-warn-script-location", "--target", str(Path(target).resolve()), "-r",
                   str(listed)]
        if runtime is not None:
            version = runtime.removeprefix("python")
            platform = PLATFORMS.get(architecture or "x86_64")
            if platform is None:
                raise XflowError(f"{requirements.origin}: no pip platform for architecture {architecture!r}")
            command += ["--platform", platform, "--only-binary=:all:", "--python-version", version,
                        "--implementation", "cp"]
        env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore", PYTHONDONTWRITEBYTECODE="1")
        try:
            done = subprocess.run(command, cwd=requirements.folder, env=env, capture_output=True, text=True,
                                  timeout=PIP_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise XflowError(f"{requirements.origin}: pip did not finish within {PIP_TIMEOUT} s") from None
        except OSError as exc:
            raise XflowError(f"{requirements.origin}: cannot run pip: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-6:]
        for_what = f" for {lambda_target(runtime, architecture or 'x86_64')}" if runtime else ""
        hint = ("only binary wheels can be installed for Lambda: pin versions that publish manylinux wheels, or "
                "pure-Python ones" if runtime else "check the requirement lines (pip's own options work there too)")
        raise XflowError(f"{requirements.origin}: pip could not install the requirements{for_what}: "
                         + " | ".join(lines), hint)


def packaged_files(folder: Path) -> Iterator[tuple[str, bytes, bool]]:
    """What an installation in ``folder`` adds to a zip: (path in the zip, bytes, executable), sorted by path.

    Console scripts (``bin/``) and compiled files are left out, and so are their rows in ``RECORD`` files: they depend on
    the machine that installed them."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or path.is_symlink() or SKIPPED & set(rel.parts) or path.suffix == ".pyc":
            continue
        data = path.read_bytes()
        if rel.name == "RECORD" and rel.parent.name.endswith(".dist-info"):
            kept = [row for row in data.decode("utf-8", "replace").splitlines()
                    if row and not row.startswith(("../", "bin/")) and "__pycache__" not in row]
            data = ("\n".join(kept) + "\n").encode()
        yield rel.as_posix(), data, bool(path.stat().st_mode & 0o100)
