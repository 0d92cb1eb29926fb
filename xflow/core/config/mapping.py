"""Plain values from a workflow given in code as a mapping, bounded and checked as a file's values are."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from xflow.core.config.env import substitute_env
from xflow.core.config.problems import Problems
from xflow.core.config.reading import MAX_DEPTH

#: the most values (keys' values and list items, counted as often as they are reached) a mapping given in code holds
MAX_MAPPING_VALUES = 1_000_000


class PlainValues:
    """Plain values from a mapping given in code, checked as :mod:`.reading` checks a file's: keys are text,
    values are mappings, lists (or tuples), text (or paths), numbers, booleans and None; nesting and size are
    bounded, a value that contains itself is refused, and ``${ENV}`` in text is substituted."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.count = 0
        self.stopped = False
        self.open: set[int] = set()  # the containers being read (a value inside one of them that is one of them loops)

    def value(self, value: Any, where: tuple[Any, ...], depth: int = 1) -> Any:
        if self.stopped:
            return None
        self.count += 1
        self.problems.lines.setdefault(where, self.count)
        if self.count > MAX_MAPPING_VALUES:
            self.stopped = True
            self.problems.add(where[:1], f"holds more than {MAX_MAPPING_VALUES:,} values (counting shared values "
                                         "each time they are reached)")
            return None
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str | os.PathLike):
            text = os.fspath(value)
            if isinstance(text, str):
                return substitute_env(text, where, self.problems)
        elif isinstance(value, Mapping | list | tuple):
            if id(value) in self.open:
                self.problems.add(where, "contains itself (a mapping or list that holds itself cannot be read)")
                return None
            if depth > MAX_DEPTH:
                self.stopped = True
                self.problems.add(where, f"nested deeper than {MAX_DEPTH} levels")
                return None
            self.open.add(id(value))
            try:
                return self.container(value, where, depth)
            finally:
                self.open.discard(id(value))
        self.problems.add(where, f"a value of type {type(value).__name__} is not supported (a workflow holds "
                                 "mappings, lists, text, numbers, true/false and None)")
        return None

    def container(self, value: Mapping[Any, Any] | list[Any] | tuple[Any, ...], where: tuple[Any, ...],
                  depth: int) -> Any:
        if not isinstance(value, Mapping):
            return [self.value(item, where + (index,), depth + 1) for index, item in enumerate(value)]
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.problems.add(where, f"key {key!r} is of type {type(key).__name__}; keys are text")
                continue
            result[key] = self.value(item, where + (key,), depth + 1)
        return result
