"""The entry points: load_workflow, load_workflow_mapping and validate_workflow, each giving a Workflow or one error."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError

from xflow.core.config.build import Built, build_workflow
from xflow.core.config.checks import check_log_routes, check_plugins, check_runtimes, check_sources
from xflow.core.config.mapping import PlainValues
from xflow.core.config.problems import MappingProblems, Problems, one_line
from xflow.core.config.reading import parse_yaml, read_text
from xflow.core.config.schema import WorkflowSchema, explain, flatten_messages
from xflow.core.errors import XflowError
from xflow.core.model import Workflow
from xflow.core.redact import remember

if TYPE_CHECKING:
    from xflow.core.plugins import PluginRegistry


log = logging.getLogger("xflow")
#: how a workflow given as a mapping is named in its problems, unless another name is given
MAPPING_NAME = "<mapping>"
CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


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
    problems = MappingProblems(Path(label), {})
    with _collector_paused():
        raw = PlainValues(problems).value(data, ())
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
    - a ``logging.routes`` entry naming a log destination that is not installed, or giving it an option it does not
      take or a value its type refuses;
    - a runtime that the provider named in the file's ``provider:`` block does not accept, when
      ``runtimes`` (provider name -> accepted runtimes) lists that provider.

    No network is used and nothing is imported from the user's code.
    """
    def deep(built: Built, problems: Problems) -> None:
        check_sources(built, problems)
        check_plugins(built, problems, registry)
        check_log_routes(built, problems, registry)
        check_runtimes(built, problems, runtimes or {})

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


def _load(path: str | os.PathLike[str], deep: Callable[[Built, Problems], None] | None) -> Workflow:
    with _collector_paused():
        return _load_file(path, deep)


def _load_file(path: str | os.PathLike[str], deep: Callable[[Built, Problems], None] | None) -> Workflow:
    file = Path(path)
    text = read_text(file)
    problems = Problems(file, {})
    raw = parse_yaml(text, problems)
    problems.raise_if_any()
    if raw is None:
        problems.add((), "the file is empty; a workflow needs 'lambdas:' (or 'functions:') and 'subscriptions:'", line=1)
        problems.raise_if_any()
    if not isinstance(raw, dict):
        problems.add((), f"the file holds a YAML {type(raw).__name__}, not a mapping of keys such as "
                         "'lambdas:' and 'subscriptions:'")
        problems.raise_if_any()
    return _validate(file, raw, problems, deep)


def _validate(file: Path, raw: dict[str, Any], problems: Problems,
              deep: Callable[[Built, Problems], None] | None, named_by_file: bool = True) -> Workflow:
    """The workflow from a file's (or a mapping's) plain values; ``file``'s folder is where relative sources are read
    from, and its name gives the id when the values give none and ``named_by_file``."""
    try:
        data = loaded = WorkflowSchema().load(raw)
    except ValidationError as exc:
        for where, message in flatten_messages(exc.messages, (), raw):
            problems.add(where, explain(where, message))
        # Cross-checks still run on what did load, so that every problem is reported at once.
        loaded = exc.valid_data if isinstance(exc.valid_data, dict) else {}
        messages = exc.messages if isinstance(exc.messages, dict) else {}
        data = {k: v for k, v in loaded.items() if k not in messages}
    built = build_workflow(file, raw, data, problems, loaded, named_by_file)
    if deep is not None:
        deep(built, problems)
    problems.raise_if_any()
    assert built.workflow is not None
    _warn_credentials(file, data.get("aws") or {})
    return built.workflow


def _warn_credentials(file: Path, aws: Mapping[str, Any]) -> None:
    written = [k for k in CREDENTIAL_KEYS if aws.get(k)]
    for key in written:
        remember(aws[key])
    if written:
        log.warning("%s holds AWS credentials (%s); they are used but never printed. Prefer the standard AWS "
                    "credential chain (environment, ~/.aws, roles)", one_line(str(file)), ", ".join(written))
