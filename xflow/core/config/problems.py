"""Collecting a workflow's problems and printing them, each as ``FILE:LINE: dotted.path: message``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xflow.core.errors import WorkflowFileError

#: how many problems are listed; the rest are counted in one line
MAX_PROBLEMS_SHOWN = 50
#: how many warnings of one kind are logged; the rest are counted in one line
MAX_WARNINGS_SHOWN = 10
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def one_line(text: str) -> str:
    """``text`` with every character that is not printable escaped, so it cannot break a line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def dotted(where: tuple[Any, ...]) -> str:
    """``lambdas.0.name``; a key that is not a plain word is quoted (``subscriptions.'a.b'``)."""
    parts = [str(p) if isinstance(p, int) or _PLAIN_KEY.match(p) else repr(p) for p in where]
    return ".".join(parts) or "(top level)"


class Problems:
    """Collects problems and turns paths into ``FILE:LINE: dotted.path: message`` lines."""

    def __init__(self, path: Path, lines: dict[tuple[Any, ...], int]) -> None:
        self.path, self.lines = path, lines
        self.items: list[tuple[int, str, str]] = []

    def line_of(self, where: tuple[Any, ...]) -> int:
        """The line of ``where``, else of its closest parent that is written in the file, else where the document starts."""
        for end in range(len(where), -1, -1):
            if where[:end] in self.lines:
                return self.lines[where[:end]]
        return 1

    def add(self, where: tuple[Any, ...], message: str, line: int | None = None) -> None:
        self.items.append((self.line_of(where) if line is None else line, dotted(where), message))

    def place(self, where: tuple[Any, ...]) -> str:
        """Where ``where`` is written, for a message that points at it (``line 12``)."""
        return f"line {self.line_of(where)}"

    def raise_if_any(self) -> None:
        if self.items:
            raise problems_error(self.path, self.items)


class MappingProblems(Problems):
    """The problems of a workflow given as a mapping: ``NAME: dotted.path: message``. A mapping has no lines:
    ``lines`` numbers its keys and items in order instead, so that problems are listed in the mapping's order."""

    def place(self, where: tuple[Any, ...]) -> str:
        return dotted(where)

    def raise_if_any(self) -> None:
        if self.items:
            raise problems_error(self.path, self.items, with_lines=False)


def problems_error(path: Path, items: Sequence[tuple[int, str, str]], with_lines: bool = True) -> WorkflowFileError:
    """One WorkflowFileError for ``(line, dotted path, message)`` problems: sorted, each on one line, the first
    :data:`MAX_PROBLEMS_SHOWN` listed and the rest counted. Without ``with_lines``, the line only orders them."""
    ordered = sorted(set(items), key=lambda item: (item[0], item[1], item[2]))
    shown = [one_line(f"{path}:{line}: {where}: {message}" if with_lines else f"{path}: {where}: {message}")
             for line, where, message in ordered[:MAX_PROBLEMS_SHOWN]]
    hidden = len(ordered) - len(shown)
    error = WorkflowFileError(one_line(str(path)), shown + ([f"... and {hidden} more problems"] if hidden else []))
    if hidden:
        noun = "problem" if len(ordered) == 1 else "problems"
        error.message = f"{one_line(str(path))}: {len(ordered)} {noun}"
        error.args = (error.message,)
        error.problems = shown
    #: how many problems there are in all (``problems`` holds the first MAX_PROBLEMS_SHOWN)
    error.total = len(ordered)  # type: ignore[attr-defined]
    return error
