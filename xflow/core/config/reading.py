"""Reading a workflow file safely: its limits (size, regular file, nesting, aliases) and plain YAML with lines.

The file is data from anywhere: at most :data:`MAX_FILE_BYTES` are read, and a path that is not a
regular file (a FIFO, a device) is refused before it is opened for reading. One YAML document is
composed from parser events without recursion, nesting at most :data:`MAX_DEPTH` levels, aliases
expanding to at most :data:`MAX_ALIAS_NODES` nodes; only plain YAML (mappings, lists, text, numbers,
booleans, null, ``<<`` merge keys) is read, and the line of every key and list item is recorded.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from xflow.core.config.env import substitute_env
from xflow.core.config.problems import Problems, one_line, problems_error
from xflow.core.errors import XflowError

#: the largest workflow file read (checked before reading it)
MAX_FILE_BYTES = 5 * 1024 * 1024
#: how deep mappings and lists may nest (aliases included)
MAX_DEPTH = 100
#: how many nodes aliases may add when they are expanded (a "billion laughs" file stops here)
MAX_ALIAS_NODES = 100_000


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def read_text(file: Path) -> str:
    """The file's text, refusing at once what is not a regular file or is larger than MAX_FILE_BYTES."""
    shown = one_line(str(file))
    limit = f"a workflow file may be at most {MAX_FILE_BYTES // (1024 * 1024)} MB ({MAX_FILE_BYTES:,} bytes)"

    def refuse(info: os.stat_result) -> None:
        if stat.S_ISDIR(info.st_mode):
            raise XflowError(f"{shown}: is a folder, not a workflow file")
        if not stat.S_ISREG(info.st_mode):
            raise XflowError(f"{shown}: is a {_file_kind(info.st_mode)}, not a regular file", "give the path of a workflow file")
        if info.st_size > MAX_FILE_BYTES:
            raise XflowError(f"{shown}: {info.st_size:,} bytes is too large; {limit}")

    try:
        refuse(os.stat(file))
        # O_NONBLOCK: should the path have become a FIFO since the stat, opening it does not wait for a writer
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise XflowError(f"{shown}: no such workflow file", "check the path") from None
    except (OSError, ValueError) as exc:
        raise XflowError(f"{shown}: cannot be read: {one_line(getattr(exc, 'strerror', None) or str(exc))}") from None
    try:
        refuse(os.fstat(fd))
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, min(1 << 20, MAX_FILE_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise XflowError(f"{shown}: cannot be read: {one_line(exc.strerror or str(exc))}") from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise XflowError(f"{shown}: grew past the limit while being read; {limit}")
    data = b"".join(chunks)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise problems_error(file, [(line, "(yaml)", f"the file is not UTF-8 text (byte {data[exc.start]:#04x} "
                                                     f"at offset {exc.start} cannot be decoded)")]) from None


_CORE = "tag:yaml.org,2002:"
_MERGE = _CORE + "merge"
_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_SCALARS: dict[str, Callable[[Any, yaml.ScalarNode], Any]] = {
    _CORE + "null": yaml.SafeLoader.construct_yaml_null,
    _CORE + "bool": yaml.SafeLoader.construct_yaml_bool,
    _CORE + "int": yaml.SafeLoader.construct_yaml_int,
    _CORE + "float": yaml.SafeLoader.construct_yaml_float,
    _CORE + "str": yaml.SafeLoader.construct_scalar,
    # a date stays the text it was written as (a description such as 2024-01-01 is text)
    _CORE + "timestamp": yaml.SafeLoader.construct_scalar,
}


class _ParseProblem(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def _start_line(event: yaml.Event) -> int:
    """The 1-based line ``event`` starts on (the parser marks every event it emits)."""
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


class _Document:
    """The nodes of a one-document YAML stream, composed from parser events without recursion.

    Nesting is bounded while parsing (so that 50,000 ``[`` never reach a recursive composer), an alias
    may not refer to a node that is still open (``&x [*x]``), and the line where each alias was written
    is kept for the values it stands for.
    """

    def __init__(self, text: str) -> None:
        self.alias_lines: dict[tuple[int, int], int] = {}
        self.nodes = 0
        loader = _Loader(text)
        try:
            self.root = self._compose(loader)
        finally:
            loader.dispose()

    def _compose(self, loader: Any) -> yaml.Node | None:
        loader.get_event()  # StreamStartEvent
        if loader.check_event(yaml.StreamEndEvent):
            return None
        loader.get_event()  # DocumentStartEvent
        anchors: dict[str, yaml.Node] = {}
        open_nodes: list[yaml.Node] = []
        open_ids: set[int] = set()
        root: yaml.Node | None = None
        while True:
            event = loader.get_event()
            alias_line = None
            if isinstance(event, yaml.AliasEvent):
                node = anchors.get(event.anchor) if event.anchor is not None else None
                if node is None:
                    raise _ParseProblem(_start_line(event), f"alias *{event.anchor} refers to no anchor "
                                                                   f"(write &{event.anchor} on a value above it)")
                if id(node) in open_ids:
                    raise _ParseProblem(_start_line(event), f"alias *{event.anchor} refers to the value that "
                                                                   "contains it (a recursive alias)")
                alias_line = _start_line(event)
            elif isinstance(event, yaml.ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
                # the stubs' Node takes only the pure-Python Mark; the C loader's events carry yaml._yaml.Mark
                node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark,  # type: ignore[arg-type]
                                       style=event.style)
            elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                kind = yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) else yaml.MappingNode
                tag = event.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(kind, None, event.implicit)
                node = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)  # type: ignore[arg-type]
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                open_ids.discard(id(open_nodes.pop()))
                if not open_nodes:
                    break
                continue
            else:  # pragma: no cover - the parser emits nothing else inside a document
                raise _ParseProblem(_start_line(event), f"unexpected YAML event {type(event).__name__}")
            self.nodes += 1
            if getattr(event, "anchor", None) is not None and not isinstance(event, yaml.AliasEvent):
                anchors[event.anchor] = node
            if open_nodes:
                self._attach(open_nodes[-1], node, alias_line)
            else:
                root = node
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                open_nodes.append(node)
                open_ids.add(id(node))
                if len(open_nodes) > MAX_DEPTH:
                    raise _ParseProblem(_start_line(event), f"nested deeper than {MAX_DEPTH} levels")
            elif not open_nodes:
                break
        loader.get_event()  # DocumentEndEvent
        if not loader.check_event(yaml.StreamEndEvent):
            extra = loader.get_event()
            raise _ParseProblem(_start_line(extra), "the file holds more than one YAML document ('---'); "
                                                           "a workflow is one document")
        return root

    def _attach(self, parent: yaml.Node, node: yaml.Node, alias_line: int | None) -> None:
        items = parent.value
        if isinstance(parent, yaml.SequenceNode):
            items.append(node)
            slot = (id(parent), 2 * (len(items) - 1))
        elif items and not isinstance(items[-1], tuple):
            items[-1] = (items[-1], node)
            slot = (id(parent), 2 * (len(items) - 1) + 1)
        else:
            items.append(node)  # a key, waiting for its value
            slot = (id(parent), 2 * (len(items) - 1))
        if alias_line is not None:
            self.alias_lines[slot] = alias_line


class _Builder:
    """Plain Python values from the composed nodes, recording the line of every key and list item.

    What an alias stands for is recorded at the line of the alias (where it is used), so that each
    path has its own line; a merged mapping (``<<``) never overrides a line already recorded.
    """

    def __init__(self, document: _Document, problems: Problems) -> None:
        self.document, self.problems = document, problems
        self.constructor = yaml.SafeLoader("")
        self.budget = document.nodes + MAX_ALIAS_NODES
        self.stopped = False

    def build(self, node: yaml.Node, where: tuple[Any, ...], line: int | None = None, depth: int = 1,
              first: bool = True) -> Any:
        """``line``: the line of the alias this node is reached through, if any."""
        if self.stopped:
            return None
        self.budget -= 1
        if self.budget < 0:
            self.stopped = True
            self.problems.add(where[:1], f"aliases expand to more than {MAX_ALIAS_NODES:,} values; write the values "
                                         "out or use fewer nested aliases")
            return None
        at = line or node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, where, at)
        if depth > MAX_DEPTH:
            self.stopped = True
            self.problems.add(where, f"nested deeper than {MAX_DEPTH} levels (counting what aliases stand for)", line=at)
            return None
        if node.tag not in (_CORE + "seq", _CORE + "map"):
            self.problems.add(where, f"YAML tag {_tag_name(node.tag)} is not supported (a workflow file holds plain "
                                     "mappings, lists, text, numbers, true/false and null)", line=at)
            return None
        if isinstance(node, yaml.SequenceNode) and node.tag == _CORE + "seq":
            items = []
            for index, item in enumerate(node.value):
                through = line or self.document.alias_lines.get((id(node), 2 * index))
                self.set_line(where + (index,), through or item.start_mark.line + 1, first)
                items.append(self.build(item, where + (index,), through, depth + 1, first))
            return items
        if isinstance(node, yaml.MappingNode) and node.tag == _CORE + "map":
            return self.mapping(node, where, line, depth, first)
        written = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
        self.problems.add(where, f"YAML tag {_tag_name(node.tag)} does not fit {written}", line=at)
        return None

    def set_line(self, where: tuple[Any, ...], line: int, first: bool) -> None:
        if first:
            self.problems.lines[where] = line
        else:
            self.problems.lines.setdefault(where, line)

    def mapping(self, node: yaml.MappingNode, where: tuple[Any, ...], line: int | None, depth: int,
                first: bool) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merges = []
        for index, (key_node, value_node) in enumerate(node.value):
            key_line = line or self.document.alias_lines.get((id(node), 2 * index)) or key_node.start_mark.line + 1
            value_through = line or self.document.alias_lines.get((id(node), 2 * index + 1))
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE:
                merges.append((value_node, value_through, key_line))
                continue
            key = self.key(key_node, where, key_line)
            if key is None:
                continue
            if key in result:
                self.set_line(where + (key,), key_line, False)
                self.problems.add(where + (key,), "duplicate key", line=key_line)
                continue
            self.set_line(where + (key,), key_line, first)
            result[key] = self.build(value_node, where + (key,), value_through, depth + 1, first)
        for value_node, through, key_line in merges:
            # ``<<: *defaults`` (or a list of them): keys written here win, then earlier mappings win
            if isinstance(value_node, yaml.SequenceNode):
                sources = [(item, through or self.document.alias_lines.get((id(value_node), 2 * index)))
                           for index, item in enumerate(value_node.value)]
            else:
                sources = [(value_node, through)]
            for source, source_line in sources:
                if not isinstance(source, yaml.MappingNode):
                    self.problems.add(where + ("<<",), "a merge key ('<<') takes a mapping or a list of mappings",
                                      line=key_line)
                    continue
                merged = self.build(source, where, source_line, depth, first=False)
                if isinstance(merged, dict):
                    for key, value in merged.items():
                        result.setdefault(key, value)
        return result

    def key(self, node: yaml.Node, where: tuple[Any, ...], line: int) -> str | None:
        """A key as it was written (``1``, ``yes`` and ``~`` stay the text ``1``, ``yes`` and ``~``)."""
        if isinstance(node, yaml.ScalarNode) and node.tag in _SCALARS:
            return str(node.value)
        what = "list" if isinstance(node, yaml.SequenceNode) else "mapping" if isinstance(node, yaml.MappingNode) else None
        reason = f"a {what} cannot be a key" if what else f"a key with YAML tag {_tag_name(node.tag)} is not supported"
        self.problems.add(where, f"{reason}; keys are plain text", line=line)
        return None

    def scalar(self, node: yaml.ScalarNode, where: tuple[Any, ...], line: int) -> Any:
        construct = _SCALARS.get(node.tag)
        if construct is None:
            self.problems.add(where, f"YAML tag {_tag_name(node.tag)} is not supported (a workflow file holds plain "
                                     "mappings, lists, text, numbers, true/false and null)", line=line)
            return None
        try:
            value = construct(self.constructor, node)
        except (ValueError, ArithmeticError, LookupError, TypeError, yaml.YAMLError) as exc:
            shown = node.value if len(node.value) <= 40 else node.value[:40] + "..."
            self.problems.add(where, f"cannot read {shown!r} as {_tag_name(node.tag)} ({type(exc).__name__})", line=line)
            return None
        if isinstance(value, str):
            value = substitute_env(value, where, self.problems)
        return value


def parse_yaml(text: str, problems: Problems) -> Any:
    """Parse YAML into plain values, recording the line of every key and list item."""
    try:
        document = _Document(text)
    except _ParseProblem as exc:
        problems.items.append((exc.line, "(yaml)", exc.message))
        return None
    except yaml.YAMLError as exc:
        problems.items.append((_error_line(exc, text), "(yaml)", f"YAML syntax error: {_error_reason(exc)}"))
        return None
    if document.root is None:
        return None
    problems.lines[()] = document.root.start_mark.line + 1
    return _Builder(document, problems).build(document.root, ())


_YAML_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def _error_line(exc: yaml.YAMLError, text: str) -> int:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        # at the end of a file without a final line break, the parser counts one line more than there is
        return min(int(mark.line) + 1, len(_YAML_LINE_BREAK.findall(text)) + 1)
    character = getattr(exc, "character", None)  # a ReaderError: find the character it refuses
    if isinstance(character, int):
        at = text.find(chr(character)) if 0 <= character <= 0x10FFFF else -1
        if at >= 0:
            return text.count("\n", 0, at) + 1
    return 1


def _error_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character {exc.character:#06x} is not allowed in YAML ({exc.reason})"
    reason = getattr(exc, "problem", None) or (str(exc).splitlines() or ["unreadable"])[0]
    context = getattr(exc, "context", None)
    return one_line(f"{reason} ({context})" if context else str(reason))
