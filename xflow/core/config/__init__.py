"""Reads a workflow file: YAML with line numbers, ``${ENV}`` substitution, marshmallow validation.

Every problem is collected and reported at once as ``FILE:LINE: dotted.path: message`` (the first
:data:`MAX_PROBLEMS_SHOWN`, then a count of the rest). The file is data from anywhere, so reading it
is bounded: at most :data:`MAX_FILE_BYTES`, nesting at most :data:`MAX_DEPTH` levels, aliases
expanding to at most :data:`MAX_ALIAS_NODES` nodes; only plain YAML (mappings, lists, text,
numbers, booleans, null, ``<<`` merge keys) is read, and a path that is not a regular file (a
FIFO, a device) is refused before it is opened for reading. Nothing but :class:`XflowError` (or
its subclass :class:`WorkflowFileError`) comes out of :func:`load_workflow`.

:func:`validate_workflow` adds the checks that would otherwise surface only at setup: sources
xflow cannot fetch, handlers missing from local sources, plugin names that are not installed,
and runtimes the file's provider refuses.

:func:`load_workflow_mapping` validates a workflow given in code as a mapping (what a file parses to) the same
way; its problems read ``NAME: dotted.path: message`` (a mapping has no lines; NAME is ``<mapping>`` unless given).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import gc
import itertools
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from xflow.core.errors import WorkflowFileError, XflowError
from xflow.core.model import DEFAULT_HOP_LIMIT, Function, PluginChoice, Subscription, Workflow
from xflow.core.redact import remember

if TYPE_CHECKING:
    from xflow.core.plugins import PluginRegistry

log = logging.getLogger("xflow")

#: the largest workflow file read (checked before reading it)
MAX_FILE_BYTES = 5 * 1024 * 1024
#: how deep mappings and lists may nest (aliases included)
MAX_DEPTH = 100
#: how many nodes aliases may add when they are expanded (a "billion laughs" file stops here)
MAX_ALIAS_NODES = 100_000
#: how many problems are listed; the rest are counted in one line
MAX_PROBLEMS_SHOWN = 50
#: how many warnings of one kind are logged; the rest are counted in one line
MAX_WARNINGS_SHOWN = 10
#: the most values (keys' values and list items, counted as often as they are reached) a mapping given in code holds
MAX_MAPPING_VALUES = 1_000_000
#: how a workflow given as a mapping is named in its problems, unless another name is given
MAPPING_NAME = "<mapping>"
MAX_HOP_LIMIT = 1_000_000
#: the most handler calls of one function a worker runs at once (``concurrency:``)
MAX_CONCURRENCY = 1024

# Patterns are matched whole: ``\Z`` (not ``$``, which also matches before a final newline).
EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}\Z")
FUNCTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}\Z")
WORKFLOW_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}\Z")
HANDLER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")

event_name = validate.Regexp(EVENT_NAME, error="{input!r} is not a valid event name (letters, digits, _; starts with a letter)")


class WholeNumber(fields.Integer):
    """An integer written as one: ``2.7`` (or ``2.0``, or ``true``) is refused, not truncated.

    Text of digits is accepted, so that ``${RETRIES}`` (substituted as text) still works.
    """

    default_error_messages = {"invalid": "must be a whole number, not {input!r}"}

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.make_error("invalid", input=value)
        if isinstance(value, str):
            if not re.fullmatch(r"\s*[+-]?[0-9]{1,30}\s*", value):
                raise self.make_error("invalid", input=value)
            return int(value)
        return value


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class FunctionSchema(_Strict):
    name = fields.Str(required=True, validate=validate.Regexp(
        FUNCTION_NAME, error="{input!r} is not a valid function name (letters, digits, _ and -, at most 64)"))
    handler = fields.Str(required=True, validate=validate.Regexp(
        HANDLER, error="{input!r} is not a valid handler: a Python function name, or module.function"))
    source = fields.Str(required=True, validate=validate.Length(min=1, error="must not be empty"))
    runtime = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, error="must not be empty"))
    description = fields.Str(load_default="", allow_none=True)
    publishes = fields.List(fields.Str(validate=event_name), load_default=list)
    retries = WholeNumber(load_default=None, allow_none=True, validate=validate.Range(0, 100))
    timeout = fields.Float(load_default=None, allow_none=True, validate=validate.Range(min=0, min_inclusive=False))
    memory = WholeNumber(load_default=128, validate=validate.Range(128, 10240))
    batch_size = WholeNumber(load_default=100, validate=validate.Range(1, 10000))
    starting_position = fields.Str(load_default="TRIM_HORIZON", validate=validate.OneOf(["TRIM_HORIZON", "LATEST"]))
    bisect_on_error = fields.Bool(load_default=True)
    environment = fields.Dict(keys=fields.Str(), values=fields.Str(), load_default=dict)
    concurrency = WholeNumber(load_default=None, allow_none=True, validate=validate.Range(1, MAX_CONCURRENCY))


class SubscriptionSchema(_Strict):
    name = fields.Str(validate=event_name)
    event = fields.Str(validate=event_name)
    # an empty list declares a terminal (or externally consumed) event: its stream exists, nothing here reads it
    subscribers = fields.List(fields.Str(), required=True)

    @validates_schema
    def _one_event_key(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "name" in data and "event" in data:
            raise ValidationError("give the event as 'name:' or 'event:', not both", "event")
        if "name" not in data and "event" not in data:
            raise ValidationError("missing the event: add 'event: EventName' (or 'name:')", "event")


class FlowSchema(_Strict):
    id = fields.Str(required=True, validate=validate.Regexp(WORKFLOW_ID, error="{input!r} is not a valid workflow id"))
    flow = fields.List(fields.Str(validate=event_name), load_default=list)
    description = fields.Str(load_default="")


class GeneralSchema(_Strict):
    lambda_timeout_time = fields.Float(allow_none=True, validate=validate.Range(min=0, min_inclusive=False))
    retries = WholeNumber(allow_none=True, validate=validate.Range(0, 100))
    runtime = fields.Str(allow_none=True, validate=validate.Length(min=1, error="must not be empty"))
    hop_limit = WholeNumber(allow_none=True, validate=validate.Range(1, MAX_HOP_LIMIT))


class AwsSchema(_Strict):
    region = fields.Str(allow_none=True)
    vpc_id = fields.Str(allow_none=True)
    subnet_ids = fields.List(fields.Str(), allow_none=True)
    security_group_ids = fields.List(fields.Str(), allow_none=True)
    aws_access_key_id = fields.Str(allow_none=True)
    aws_secret_access_key = fields.Str(allow_none=True)
    aws_session_token = fields.Str(allow_none=True)
    profile = fields.Str(allow_none=True)
    lambda_execution_role_name = fields.Str(allow_none=True)
    code_bucket = fields.Str(allow_none=True)


class PluginBlockSchema(_Strict):
    name = fields.Str(allow_none=True)
    options = fields.Dict(keys=fields.Str(), load_default=dict)

    @pre_load
    def _shorthand(self, data: Any, **kwargs: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class WorkflowSchema(_Strict):
    workflow_id = fields.Str(validate=validate.Regexp(WORKFLOW_ID, error="{input!r} is not a valid workflow id"))
    description = fields.Str()
    general = fields.Nested(GeneralSchema, load_default=dict)
    aws = fields.Nested(AwsSchema, load_default=dict, allow_none=True)
    lambdas = fields.List(fields.Nested(FunctionSchema))
    functions = fields.List(fields.Nested(FunctionSchema))
    subscriptions = fields.List(fields.Nested(SubscriptionSchema), required=True,
                                validate=validate.Length(min=1, error="must list at least one event"))
    workflows = fields.List(fields.Nested(FlowSchema), validate=validate.Length(min=1, error="must list at least one flow"))
    transport = fields.Nested(PluginBlockSchema)
    provider = fields.Nested(PluginBlockSchema)
    tracker = fields.Nested(PluginBlockSchema)


# -- problems ----------------------------------------------------------------------------------
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def one_line(text: str) -> str:
    """``text`` with every character that is not printable escaped, so it cannot break a line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _dotted(where: tuple[Any, ...]) -> str:
    """``lambdas.0.name``; a key that is not a plain word is quoted (``subscriptions.'a.b'``)."""
    parts = [str(p) if isinstance(p, int) or _PLAIN_KEY.match(p) else repr(p) for p in where]
    return ".".join(parts) or "(top level)"


class _Problems:
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
        self.items.append((self.line_of(where) if line is None else line, _dotted(where), message))

    def place(self, where: tuple[Any, ...]) -> str:
        """Where ``where`` is written, for a message that points at it (``line 12``)."""
        return f"line {self.line_of(where)}"

    def raise_if_any(self) -> None:
        if self.items:
            raise problems_error(self.path, self.items)


class _MappingProblems(_Problems):
    """The problems of a workflow given as a mapping: ``NAME: dotted.path: message``. A mapping has no lines:
    ``lines`` numbers its keys and items in order instead, so that problems are listed in the mapping's order."""

    def place(self, where: tuple[Any, ...]) -> str:
        return _dotted(where)

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


# -- reading -----------------------------------------------------------------------------------
def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _read(file: Path) -> str:
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


# -- YAML --------------------------------------------------------------------------------------
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

    def __init__(self, document: _Document, problems: _Problems) -> None:
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
            value = _substitute_env(value, where, self.problems)
        return value


def _compose(text: str, problems: _Problems) -> Any:
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


class _Plain:
    """Plain values from a mapping given in code, checked as :class:`_Builder` checks a file's: keys are text,
    values are mappings, lists (or tuples), text (or paths), numbers, booleans and None; nesting and size are
    bounded, a value that contains itself is refused, and ``${ENV}`` in text is substituted."""

    def __init__(self, problems: _Problems) -> None:
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
                return _substitute_env(text, where, self.problems)
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


def _substitute_env(value: str, where: tuple[Any, ...], problems: _Problems) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is None:
            if default is not None:
                return default
            problems.add(where, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
            return ""
        return found

    return ENV_REFERENCE.sub(replace, value)


# -- schema ------------------------------------------------------------------------------------
def _flatten(messages: Any, where: tuple[Any, ...], raw: Any) -> list[tuple[tuple[Any, ...], str]]:
    """marshmallow's nested messages as (path, message); ``raw`` is the file's value at ``where``.

    Keys are field names, the file's own keys (text) or list positions (int); none is converted. Messages
    about the value itself come under ``_schema``, and so does an unknown key that is itself named ``_schema``.
    """
    if isinstance(messages, dict):
        flat = []
        for key, value in messages.items():
            if key == "_schema":
                for message in value if isinstance(value, list) else [value]:
                    if message == "Unknown field." and isinstance(raw, dict) and "_schema" in raw:
                        flat.append((where + ("_schema",), message))
                    else:
                        flat.extend(_flatten(message, where, raw))
                continue
            child = raw.get(key) if isinstance(raw, dict) else (
                raw[key] if isinstance(raw, list) and isinstance(key, int) and 0 <= key < len(raw) else None)
            flat.extend(_flatten(value, where + (key,), child))
        return flat
    if isinstance(messages, list):
        flat = []
        for item in messages:
            flat.extend(_flatten(item, where, raw) if isinstance(item, (dict, list)) else [(where, str(item))])
        return flat
    return [(where, str(messages))]


_SCHEMA_KEYS: dict[tuple[str, ...], list[str]] = {
    (): list(WorkflowSchema().fields),
    ("lambdas",): list(FunctionSchema().fields),
    ("functions",): list(FunctionSchema().fields),
    ("subscriptions",): list(SubscriptionSchema().fields),
    ("workflows",): list(FlowSchema().fields),
    ("general",): list(GeneralSchema().fields),
    ("aws",): list(AwsSchema().fields),
    ("transport",): ["name", "options"],
    ("provider",): ["name", "options"],
    ("tracker",): ["name", "options"],
}


def _explain(where: tuple[Any, ...], message: str) -> str:
    if message == "Unknown field." and where:
        return _unknown_key(tuple(p for p in where[:-1] if not isinstance(p, int)), str(where[-1]))
    if message == "Missing data for required field.":
        return "missing required field"
    if message == "Invalid input type.":
        return "must be a mapping (key: value lines)"
    if message == "Not a valid list.":
        return "must be a list"
    return message[:1].lower() + message[1:].rstrip(".") if message else message


@functools.lru_cache(maxsize=1024)
def _unknown_key(section: tuple[str, ...], key: str) -> str:
    known = _SCHEMA_KEYS.get(section, [])
    close = difflib.get_close_matches(key, known, n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})" if known else ""
    return f"unknown key{suggestion}"


# -- loading -----------------------------------------------------------------------------------
@dataclass
class _Built:
    """What :func:`_build` made of the file, also when it has problems (for the checks that follow)."""

    workflow: Workflow | None
    functions: dict[str, Function]
    #: where each function is written: ``("lambdas", index)``
    where: dict[str, tuple[Any, ...]]
    plugins: dict[str, PluginChoice]


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """Read and validate a workflow file; raise WorkflowFileError listing every problem.

    Any content, valid or not, gives a Workflow or an XflowError (WorkflowFileError for problems in the
    file, each ``FILE:LINE: dotted.path: message`` on one line); never another exception.
    """
    return _load(path, None)


def load_workflow_mapping(data: Mapping[str, Any], base_dir: str | os.PathLike[str], *, name: str = MAPPING_NAME,
                          workflow_id: str | None = None) -> Workflow:
    """Validate a workflow given as a mapping (what a workflow file parses to), exactly as a file is validated.

    Relative ``source:`` paths are read from ``base_dir``, and ``${ENV}`` references in text are substituted. The
    id is the mapping's ``workflow_id``, else the ``workflow_id`` argument (both given: they must agree), else the
    first ``workflows:`` entry's id; a mapping has no file name to fall back on. Every problem is reported at once
    in one WorkflowFileError, each as ``NAME: dotted.path: message`` (``name`` defaults to ``<mapping>``). Any
    content gives a Workflow or an XflowError, never another exception.
    """
    if not isinstance(data, Mapping):
        raise XflowError(f"a workflow given in code must be a mapping (a dict), not {type(data).__name__}",
                         "pass the data a workflow file holds, or the file's path")
    try:
        folder = Path(base_dir).expanduser().resolve()
        is_folder = folder.is_dir()
    except (TypeError, ValueError, OSError, RuntimeError) as exc:
        raise XflowError(f"base_dir {base_dir!r} is not a usable folder: {one_line(str(exc))}",
                         "give the folder that relative source: paths are read from") from None
    if not is_folder:
        raise XflowError(f"base_dir {folder} is not a folder", "give the folder that relative source: paths are read from")
    label = one_line(str(name)) or MAPPING_NAME
    problems = _MappingProblems(Path(label), {})
    with _collector_paused():
        raw = _Plain(problems).value(data, ())
        if workflow_id is not None:
            if "workflow_id" not in raw:
                raw["workflow_id"] = workflow_id
            elif raw["workflow_id"] != workflow_id:
                problems.add(("workflow_id",), f"{raw['workflow_id']!r} differs from workflow_id={workflow_id!r} given "
                                               "in code; give one of them, or the same in both")
        return _validate(folder / Path(label).name, raw, problems, None, named_by_file=False)


def validate_workflow(path: str | os.PathLike[str], *, registry: PluginRegistry | None = None,
                      runtimes: Mapping[str, Sequence[str]] | None = None) -> Workflow:
    """:func:`load_workflow`, plus what would otherwise surface only at setup, every problem at once.

    - a ``source:`` xflow cannot fetch (its scheme, or an s3:// or git link that cannot be parsed);
    - for a local source: the handler missing from it, or its file not parsing (read with ``ast``; the
      user's code is never imported or run);
    - a ``transport:``/``provider:``/``tracker:`` name that is not installed (looked up in ``registry``,
      made on demand);
    - a runtime that the provider named in the file's ``provider:`` block does not accept, when
      ``runtimes`` (provider name -> accepted runtimes) lists that provider.

    No network is used and nothing is imported from the user's code.
    """
    def deep(built: _Built, problems: _Problems) -> None:
        _check_sources(built, problems)
        _check_plugins(built, problems, registry)
        _check_runtimes(built, problems, runtimes or {})

    return _load(path, deep)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: a large file makes millions of small objects (none in a cycle),
    and the collections they would set off made reading a 5 MB file several times slower."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load(path: str | os.PathLike[str], deep: Callable[[_Built, _Problems], None] | None) -> Workflow:
    with _collector_paused():
        return _load_file(path, deep)


def _load_file(path: str | os.PathLike[str], deep: Callable[[_Built, _Problems], None] | None) -> Workflow:
    file = Path(path)
    text = _read(file)
    problems = _Problems(file, {})
    raw = _compose(text, problems)
    problems.raise_if_any()
    if raw is None:
        problems.add((), "the file is empty; a workflow needs 'lambdas:' (or 'functions:') and 'subscriptions:'", line=1)
        problems.raise_if_any()
    if not isinstance(raw, dict):
        problems.add((), f"the file holds a YAML {type(raw).__name__}, not a mapping of keys such as "
                         "'lambdas:' and 'subscriptions:'")
        problems.raise_if_any()
    return _validate(file, raw, problems, deep)


def _validate(file: Path, raw: dict[str, Any], problems: _Problems,
              deep: Callable[[_Built, _Problems], None] | None, named_by_file: bool = True) -> Workflow:
    """The workflow from a file's (or a mapping's) plain values; ``file``'s folder is where relative sources are read
    from, and its name gives the id when the values give none and ``named_by_file``."""
    try:
        data = loaded = WorkflowSchema().load(raw)
    except ValidationError as exc:
        for where, message in _flatten(exc.messages, (), raw):
            problems.add(where, _explain(where, message))
        # Cross-checks still run on what did load, so that every problem is reported at once.
        loaded = exc.valid_data if isinstance(exc.valid_data, dict) else {}
        messages = exc.messages if isinstance(exc.messages, dict) else {}
        data = {k: v for k, v in loaded.items() if k not in messages}
    built = _build(file, raw, data, problems, loaded, named_by_file)
    if deep is not None:
        deep(built, problems)
    problems.raise_if_any()
    assert built.workflow is not None
    _warn_credentials(file, data.get("aws") or {})
    return built.workflow


def _default(value: Any, default: Any) -> Any:
    """``value`` unless it is None (0, 0.0 and "" are values, not gaps)."""
    return default if value is None else value


def _build(file: Path, raw: dict[str, Any], data: dict[str, Any], problems: _Problems,
           loaded_all: dict[str, Any], named_by_file: bool = True) -> _Built:
    """The workflow from the file's values (``raw``), what loaded without problems (``data``) and everything
    that loaded (``loaded_all``, with the valid part of entries that have problems)."""
    key = "functions" if "functions" in raw else "lambdas"
    if "functions" in raw and "lambdas" in raw:
        problems.add(("functions",), "give the functions under 'lambdas:' or 'functions:', not both")
    if key not in raw:
        problems.add((), "missing 'lambdas:' (or 'functions:'): the list of functions")
    general = data.get("general")
    general = general if isinstance(general, dict) else {}
    functions: dict[str, Function] = {}
    where_defined: dict[str, tuple[Any, ...]] = {}
    specs = raw.get(key)
    specs = specs if isinstance(specs, list) else []
    function_schema = FunctionSchema()
    # each entry as the full load left it, when its list lines up with the file's (else each is loaded again)
    loaded_specs = loaded_all.get(key)
    if not (isinstance(loaded_specs, list) and len(loaded_specs) == len(specs)):
        loaded_specs = None
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            continue
        name = spec["name"]
        if name in where_defined:
            problems.add((key, index, "name"), f"duplicate function name {name!r} "
                                               f"(first defined at {problems.place(where_defined[name])})")
            continue
        where_defined[name] = (key, index)
        loaded = loaded_specs[index] if loaded_specs is not None and isinstance(loaded_specs[index], dict) else None
        loaded = loaded if loaded is not None else _load_partial(function_schema, spec)
        source = loaded.get("source")
        source = source if isinstance(source, str) else ""
        handler = loaded.get("handler")
        publishes = loaded.get("publishes")
        environment = loaded.get("environment")
        functions[name] = Function(
            name=name,
            handler=handler if isinstance(handler, str) else "",
            source=source,
            source_path=_local_source(file, source, (key, index, "source"), problems),
            runtime=_default(loaded.get("runtime"), _default(general.get("runtime"), "python3.12")),
            description=loaded.get("description") or "",
            publishes=tuple(e for e in publishes if isinstance(e, str)) if isinstance(publishes, list) else (),
            retries=_default(loaded.get("retries"), _default(general.get("retries"), 2)),
            timeout=_default(loaded.get("timeout"), _default(general.get("lambda_timeout_time"), 30.0)),
            memory=_default(loaded.get("memory"), 128),
            batch_size=_default(loaded.get("batch_size"), 100),
            starting_position=_default(loaded.get("starting_position"), "TRIM_HORIZON"),
            bisect_on_error=_default(loaded.get("bisect_on_error"), True),
            environment=dict(environment) if isinstance(environment, dict) else {},
            concurrency=loaded.get("concurrency") if isinstance(loaded.get("concurrency"), int) else None,
        )
    subscriptions: list[Subscription] = []
    seen_events: dict[str, str] = {}
    entries = raw.get("subscriptions")
    for index, spec in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(spec, dict):
            continue
        event = spec.get("event", spec.get("name"))
        subscribers = spec.get("subscribers")
        if not isinstance(event, str) or not isinstance(subscribers, list):
            continue
        if event in seen_events:
            problems.add(("subscriptions", index), f"event {event!r} already has a subscription at "
                                                   f"{seen_events[event]}; list all its subscribers there")
            continue
        seen_events[event] = problems.place(("subscriptions", index))
        for position, subscriber in enumerate(subscribers):
            if isinstance(subscriber, str) and subscriber not in functions and subscriber not in where_defined:
                close = difflib.get_close_matches(subscriber, list(functions), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (defined: {', '.join(functions) or 'none'})"
                problems.add(("subscriptions", index, "subscribers", position),
                             f"no function named {subscriber!r}{hint}")
        subscriptions.append(Subscription(event, tuple(s for s in subscribers if isinstance(s, str))))

    flows = data.get("workflows")
    flows = [f for f in flows if isinstance(f, dict)] if isinstance(flows, list) else []
    workflow_id = data.get("workflow_id") or (flows[0].get("id") if flows else None) or (
        file.name.split(".")[0] if named_by_file else None)
    if workflow_id is None:
        if "workflow_id" not in raw:
            problems.add(("workflow_id",), "missing: a workflow given as a mapping has no file name to take its id "
                                           "from; add 'workflow_id': 'my_flow' (or pass workflow_id=)")
    elif not isinstance(workflow_id, str) or not WORKFLOW_ID.match(workflow_id):
        problems.add(("workflow_id",), f"the workflow id {workflow_id!r} (from the file name) is not valid: "
                                       "add 'workflow_id: my_flow' (letters, digits, _ and -)")
    chosen = next((f for f in flows if f.get("id") == workflow_id), flows[0] if flows else None)
    known_events = dict.fromkeys(seen_events)
    for function in functions.values():
        known_events.update(dict.fromkeys(function.publishes))
    flow: dict[str, None] = {}
    if chosen:
        index = flows.index(chosen)
        for position, event in enumerate(chosen.get("flow") or []):
            if event not in known_events:
                problems.add(("workflows", index, "flow", position),
                             f"event {event!r} is neither subscribed to nor published by any function "
                             "(an event nothing subscribes to is declared with 'subscribers: []')")
            else:
                flow.setdefault(event)
    flow.update(dict.fromkeys(known_events))
    subscribed = {name for s in subscriptions for name in s.subscribers}
    idle = [name for name in functions if name not in subscribed]
    for name in idle[:MAX_WARNINGS_SHOWN]:
        log.warning("%s: function %r subscribes to no event; it will never run", one_line(str(file)), name)
    if len(idle) > MAX_WARNINGS_SHOWN:
        log.warning("%s: ... and %d more functions that subscribe to no event", one_line(str(file)),
                    len(idle) - MAX_WARNINGS_SHOWN)
    hop_limit = _default(general.get("hop_limit"), DEFAULT_HOP_LIMIT)
    _warn_cycles(file, tuple(flow), subscriptions, functions, hop_limit)
    plugins = {kind: PluginChoice(block.get("name"), dict(block.get("options") or {}))
               for kind in ("transport", "provider", "tracker") if isinstance(block := data.get(kind), dict)}
    workflow = None
    if not problems.items and isinstance(workflow_id, str):  # no problems: the id was found and is valid
        workflow = Workflow(
            id=workflow_id, path=file.resolve(), functions=functions, subscriptions=tuple(subscriptions),
            flow=tuple(flow), general=general, aws={k: v for k, v in (data.get("aws") or {}).items() if v is not None},
            plugins=plugins, hop_limit=hop_limit,
        )
    return _Built(workflow, functions, where_defined, plugins)


def _load_partial(schema: Schema, spec: dict[str, Any]) -> dict[str, Any]:
    """Load what is valid of one entry (its errors were already reported by the full load)."""
    try:
        return schema.load(spec)
    except ValidationError as exc:
        valid = exc.valid_data if isinstance(exc.valid_data, dict) else {}
        messages = exc.messages if isinstance(exc.messages, dict) else {}
        return {**{k: v for k, v in spec.items() if k not in messages}, **valid}


def _local_source(file: Path, source: str, where: tuple[Any, ...], problems: _Problems) -> Path | None:
    if not source or "://" in source or source.startswith("git@"):
        return None
    try:
        path = Path(os.path.expanduser(source))
        if not path.is_absolute():
            path = (file.resolve().parent / path).resolve()
        exists = path.exists()
    except (OSError, ValueError, RuntimeError) as exc:
        problems.add(where, f"{source!r} is not a usable path: {one_line(str(exc))}")
        return None
    if not exists:
        problems.add(where, f"{source!r} does not exist (looked for {path}; relative paths are read from the "
                            "workflow file's folder)")
    return path


def _warn_cycles(file: Path, events: tuple[str, ...], subscriptions: list[Subscription],
                 functions: Mapping[str, Function], hop_limit: int) -> None:
    """Warn once per loop of events (an event whose subscribers publish, in the end, that event again)."""
    subscribers: dict[str, list[str]] = {}
    for sub in subscriptions:
        subscribers.setdefault(sub.event, []).extend(s for s in sub.subscribers if s in functions)
    edges: dict[str, dict[str, str]] = {}  # event -> next event -> the function that publishes it
    for event in events:
        for name in subscribers.get(event, ()):
            for published in functions[name].publishes:
                edges.setdefault(event, {}).setdefault(published, name)
    loops = [c for c in _strongly_connected(events, edges) if len(c) > 1 or c[0] in edges.get(c[0], {})]
    for component in loops[:MAX_WARNINGS_SHOWN]:
        start = component[0]
        path = _path_back(start, edges, set(component))
        through = dict.fromkeys(edges[a][b] for a, b in itertools.pairwise(path))
        log.warning("%s: events form a cycle: %s (through %s); an execution can go round it until "
                    "general.hop_limit (%d) hops", one_line(str(file)), " -> ".join(path), ", ".join(through), hop_limit)
    if len(loops) > MAX_WARNINGS_SHOWN:
        log.warning("%s: ... and %d more cycles of events", one_line(str(file)), len(loops) - MAX_WARNINGS_SHOWN)


def _strongly_connected(nodes: tuple[str, ...], edges: Mapping[str, Mapping[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, without recursion; each in ``nodes`` order, in order of first node."""
    order = {node: position for position, node in enumerate(nodes)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(edges.get(root, {})))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in order:
                    continue
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(edges.get(successor, {}))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component, key=order.__getitem__))
    return sorted(found, key=lambda c: order[c[0]])


def _path_back(start: str, edges: Mapping[str, Mapping[str, str]], within: set[str]) -> list[str]:
    """The shortest path of events from ``start`` back to ``start`` inside one strongly connected component."""
    if start in edges.get(start, {}):
        return [start, start]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in edges.get(node, {}):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if successor in within and successor not in came_from:
                    came_from[successor] = node
                    following.append(successor)
        frontier = following
    return [start, start]  # pragma: no cover - a component with more than one event always leads back


# -- checks of validate_workflow -----------------------------------------------------------------
def _check_sources(built: _Built, problems: _Problems) -> None:
    from xflow.sources.git import is_git_source, parse_git_source
    from xflow.sources.resolve import check_handler, narrow
    from xflow.sources.s3 import parse_s3_url

    for name, function in built.functions.items():
        at = built.where[name]
        source = function.source
        if not source:
            continue
        try:
            if source.startswith("s3://"):
                parse_s3_url(source)
            elif is_git_source(source):
                parse_git_source(source)
            elif "://" in source or source.startswith("git@"):
                scheme = source.partition("://")[0] if "://" in source else "git@"
                problems.add(at + ("source",), f"{source!r} uses a scheme xflow cannot fetch ({scheme}); use a local "
                                               "path, s3://BUCKET/KEY or a git link (git://, https://github.com/, "
                                               "https://HOST/REPO.git/PATH, git+URL)")
        except XflowError as exc:
            problems.add(at + ("source",), one_line(str(exc)))
        except ValueError as exc:
            problems.add(at + ("source",), f"{source!r} cannot be parsed: {one_line(str(exc))}")
        path = function.source_path
        if path is None or not function.handler or not HANDLER.match(function.handler):
            continue
        try:
            if not path.exists():
                continue  # reported by the loader
            check_handler(function, narrow(path, function.handler))
        except XflowError as exc:
            prefix = f"function {function.name}: handler {function.handler!r}: "
            problems.add(at + ("handler",), one_line(exc.message.removeprefix(prefix)))
        except (OSError, ValueError, RecursionError, MemoryError) as exc:
            problems.add(at + ("source",), f"cannot be read: {one_line(str(exc))[:200]}")


def _check_plugins(built: _Built, problems: _Problems, registry: PluginRegistry | None) -> None:
    named = {kind: choice.name for kind, choice in built.plugins.items() if choice.name}
    if not named:
        return
    if registry is None:
        from xflow.core.plugins import PluginRegistry

        registry = PluginRegistry()
    for kind, name in named.items():
        installed = registry.names(kind)
        if name in installed:
            continue
        close = difflib.get_close_matches(name, installed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; install a distribution named xflow-{kind}-{name}"
        broken = [b for b in registry.broken if b.name == name]
        if broken:
            hint = f"; the plugin {name!r} from {broken[0].distribution} is installed but broken: {broken[0].error}"
        problems.add((kind, "name"), f"unknown {kind} {name!r}; installed {kind}s: {', '.join(installed) or 'none'}{hint}")


def _check_runtimes(built: _Built, problems: _Problems, runtimes: Mapping[str, Sequence[str]]) -> None:
    provider = built.plugins.get("provider")
    if provider is None:
        return
    accepted = runtimes.get(provider.name or "")
    if not accepted:
        return
    for name, function in built.functions.items():
        if function.runtime in accepted:
            continue
        at = built.where[name]
        where = at + ("runtime",)
        if where not in problems.lines and ("general", "runtime") in problems.lines:
            where = ("general", "runtime")
        problems.add(where, f"runtime {function.runtime!r} of function {name!r} is not accepted by provider "
                            f"{provider.name!r}; supported: {', '.join(accepted)}")


def _warn_credentials(file: Path, aws: Mapping[str, Any]) -> None:
    written = [k for k in CREDENTIAL_KEYS if aws.get(k)]
    for key in written:
        remember(aws[key])
    if written:
        log.warning("%s holds AWS credentials (%s); they are used but never printed. Prefer the standard AWS "
                    "credential chain (environment, ~/.aws, roles)", one_line(str(file)), ", ".join(written))
