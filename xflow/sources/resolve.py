"""Turn a function's ``source:`` into a local file or folder, and check the handler is in it.

Accepted: a local ``.py`` file or folder (relative to the workflow file), ``s3://BUCKET/KEY``
(``.py`` or ``.zip``), ``git://…/blob/REF/PATH``, ``https://github.com/…/blob/REF/PATH`` and
``git+URL@REF#path=PATH``. The handler is found the way the runtime imports it
(:func:`xflow.core.runtime.load_handler`) and checked without running the user's code.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

from xflow.core.errors import XflowError
from xflow.sources.git import fetch_git, is_git_source
from xflow.sources.s3 import fetch_s3

if TYPE_CHECKING:
    from xflow.core.aws import AwsSession
    from xflow.core.model import Function


def fetch_source(function: Function, workdir: Path, aws: AwsSession | None = None) -> Path:
    """A local file or folder holding ``function``'s code (downloads go under ``workdir``)."""
    source = function.source
    workdir.mkdir(parents=True, exist_ok=True)
    if source.startswith("s3://"):
        if aws is None:
            raise XflowError(f"function {function.name}: an s3:// source needs AWS access")
        path = fetch_s3(source, workdir, aws)
    elif is_git_source(source):
        path = fetch_git(source, workdir)
    elif "://" in source:
        raise XflowError(f"function {function.name}: source {source!r} uses a scheme xflow cannot fetch",
                         "use a local path, s3://, git://, https://github.com/… or git+URL@REF#path=…")
    else:
        path = function.source_path or Path(source)
        if not path.exists():
            raise XflowError(f"function {function.name}: source {str(path)!r} does not exist")
    return narrow(path, function.handler)


def narrow(path: Path, handler: str) -> Path:
    """A folder with exactly one top-level ``.py`` and a bare handler name means that file."""
    if path.is_dir() and "." not in handler:
        candidates = [p for p in path.iterdir() if p.suffix == ".py" and p.is_file()]
        defaults = [p for p in candidates if p.name in ("handler.py", "main.py", "__init__.py")]
        if not defaults and len(candidates) == 1:
            return candidates[0]
    return path


def handler_file(source: Path, handler: str) -> tuple[Path, str]:
    """The file and function name that :func:`xflow.core.runtime.load_handler` would import."""
    if source.is_dir():
        module, _, name = handler.rpartition(".")
        if not module:
            for candidate in ("handler.py", "main.py", "__init__.py"):
                if (source / candidate).exists():
                    return source / candidate, name
            return source / "handler.py", name
        file = source.joinpath(*module.split(".")).with_suffix(".py")
        if not file.exists():
            file = source.joinpath(*module.split("."), "__init__.py")
        return file, name
    return source, handler.rpartition(".")[2]


def check_handler(function: Function, source: Path) -> None:
    """An XflowError unless the handler is defined at the top level of its module."""
    file, name = handler_file(source, function.handler)
    where = f"function {function.name}: handler {function.handler!r}"
    if not file.exists():
        raise XflowError(f"{where}: no file {file.name} in source {function.source!r}")
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise XflowError(f"{where}: {file.name} cannot be parsed: {exc}") from None
    defined = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    if name not in defined:
        raise XflowError(f"{where}: {file.name} in source {function.source!r} defines no {name!r}")
