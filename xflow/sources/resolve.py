"""Turn a function's ``source:`` into a local file or folder, and check the handler is in it.

Accepted: a local ``.py`` file or folder (relative to the workflow file), ``s3://BUCKET/KEY``
(``.py`` or ``.zip``), ``git://…/blob/REF/PATH``, ``https://github.com/…/blob/REF/PATH`` and
``git+URL@REF#path=PATH``. The handler is found the way the runtime imports it
(:func:`xflow.core.runtime.load_handler`) and checked without running the user's code.

Symbolic links: every source, whatever its kind, goes through :func:`source_files` (which
:func:`xflow.sources.fetch.fetch_source` runs, and the Lambda packaging uses to walk a folder). Inside a source
folder, a link is accepted only when it resolves to a regular file inside that same folder (the
*source root*), and it is read (and shipped) as a copy of that file. A link that leaves the
root, points at a folder (which could lead back to an ancestor), dangles or loops is refused,
and so is anything that is not a regular file (a FIFO, a socket, a device); the error names the
link. Folders that are never shipped (:data:`NOT_SHIPPED`: caches, ``.git``, virtual
environments) are not walked. A local path written in the workflow file is taken as written:
only what lies inside the source is checked. Archives never produce links
(:mod:`xflow.sources.archive` refuses link members).
"""

from __future__ import annotations

import ast
import os
import stat
from collections.abc import Callable, Collection, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from xflow.core.errors import XflowError

if TYPE_CHECKING:
    from xflow.core.model import Function

#: folder and file names that are neither shipped nor walked
NOT_SHIPPED = frozenset({"__pycache__", ".git", ".xflow", ".venv", "node_modules"})
_LINK_HINT = "replace the link by a copy of what it points to, or point it at a file inside the source"


def source_files(root: Path, what: str, skip: Collection[str] = NOT_SHIPPED, *,
                 refused: Callable[[PurePosixPath, XflowError], None] | None = None,
                 ) -> Iterator[tuple[PurePosixPath, Path]]:
    """Each file of the source ``root`` as (name relative to the root, the regular file to read), folder by folder.

    ``root`` may be a single file (yielded under its own name). Links are checked as the module
    docstring says; an XflowError starting with ``what`` names the first one refused. With ``refused``, what would
    be refused inside a folder (a link, or something not a regular file) is given to it with that error instead, and
    left out (it may raise the error).
    """
    if not root.is_dir():
        if not root.is_file():
            raise XflowError(f"{what}: {str(root)!r} is not a regular file or a folder")
        yield PurePosixPath(root.name), root
        return
    real_root = Path(os.path.realpath(root))
    pending = [(root, PurePosixPath())]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            ordered = sorted(entries, key=lambda e: e.name)
        subfolders = []
        for entry in ordered:
            if entry.name in skip:
                continue
            rel = prefix / entry.name
            path = Path(entry.path)
            if entry.is_symlink():
                try:
                    target = _link_target(path, real_root, rel, what)
                except XflowError as exc:
                    if refused is None:
                        raise
                    refused(rel, exc)
                    continue
                yield rel, target
            elif entry.is_dir(follow_symlinks=False):
                subfolders.append((path, rel))
            elif entry.is_file(follow_symlinks=False):
                yield rel, path
            else:
                error = XflowError(f"{what}: {rel.as_posix()!r} is not a regular file, a folder or a link",
                                   "remove it from the source")
                if refused is None:
                    raise error
                refused(rel, error)
        pending.extend(reversed(subfolders))


def _link_target(link: Path, real_root: Path, rel: PurePosixPath, what: str) -> Path:
    """The regular file inside ``real_root`` that ``link`` resolves to, or an XflowError naming the link."""
    written = os.readlink(link)
    real = Path(os.path.realpath(link))
    name = rel.as_posix()
    if real != real_root and real_root not in real.parents:
        raise XflowError(f"{what}: symbolic link {name!r} points outside the source ({written!r})", _LINK_HINT)
    try:
        mode = os.stat(real).st_mode
    except OSError:
        raise XflowError(f"{what}: symbolic link {name!r} points at nothing or loops ({written!r})", _LINK_HINT) from None
    if stat.S_ISDIR(mode):
        raise XflowError(f"{what}: symbolic link {name!r} points at a folder ({written!r}); only links to files "
                         "inside the source are accepted", _LINK_HINT)
    if not stat.S_ISREG(mode):
        raise XflowError(f"{what}: symbolic link {name!r} points at something that is not a regular file "
                         f"({written!r})", _LINK_HINT)
    return real


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
    if not file.is_file():  # a FIFO, a device or a socket: reading it could block forever
        raise XflowError(f"{where}: {file.name} in source {function.source!r} is not a regular file")
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
