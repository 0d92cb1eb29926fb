"""How a handler is called, on every provider: the ``ctx`` object, the call (its outcome, its output captured per
call), and importing the handler.

This module uses the standard library and :mod:`xflow.core.wire` (the events on the wire, whose names it also
gives, as older code imports them from here) only, so that the Lambda provider can ship both verbatim next to the
user's code as the runtime shim's core (``xflow_runtime.py`` and ``xflow_wire.py``).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xflow.core.wire import (
        BUDGET_ATTRIBUTE,
        DEFAULT_EVENT_LIMIT,
        DEFAULT_HOP_LIMIT,
        EXECUTION_ID_ATTRIBUTE,
        HOPS_ATTRIBUTE,
        MAX_EPOCH,
        MAX_MESSAGE_BYTES,
        MAX_NESTING,
        MIN_EPOCH,
        SPEC_VERSION,
        BadMessage,
        DecodedEvent,
        JsonObject,
        child_budget,
        decode_event,
        derive_event_id,
        encode_event,
        encode_event_json,
        iso_time,
        json_text,
        new_event_id,
        parse_iso_time,
        source_uri,
    )
else:
    try:
        from xflow.core.wire import (
            BUDGET_ATTRIBUTE,
            DEFAULT_EVENT_LIMIT,
            DEFAULT_HOP_LIMIT,
            EXECUTION_ID_ATTRIBUTE,
            HOPS_ATTRIBUTE,
            MAX_EPOCH,
            MAX_MESSAGE_BYTES,
            MAX_NESTING,
            MIN_EPOCH,
            SPEC_VERSION,
            BadMessage,
            DecodedEvent,
            JsonObject,
            child_budget,
            decode_event,
            derive_event_id,
            encode_event,
            encode_event_json,
            iso_time,
            json_text,
            new_event_id,
            parse_iso_time,
            source_uri,
        )
    except ImportError:  # the copy in a Lambda zip: xflow_wire.py beside this file, no xflow package
        from xflow_wire import (
            BUDGET_ATTRIBUTE,
            DEFAULT_EVENT_LIMIT,
            DEFAULT_HOP_LIMIT,
            EXECUTION_ID_ATTRIBUTE,
            HOPS_ATTRIBUTE,
            MAX_EPOCH,
            MAX_MESSAGE_BYTES,
            MAX_NESTING,
            MIN_EPOCH,
            SPEC_VERSION,
            BadMessage,
            DecodedEvent,
            JsonObject,
            child_budget,
            decode_event,
            derive_event_id,
            encode_event,
            encode_event_json,
            iso_time,
            json_text,
            new_event_id,
            parse_iso_time,
            source_uri,
        )

__all__ = [
    "BUDGET_ATTRIBUTE",
    "DEFAULT_EVENT_LIMIT",
    "DEFAULT_HOP_LIMIT",
    "EXECUTION_ID_ATTRIBUTE",
    "HOPS_ATTRIBUTE",
    "MAX_EPOCH",
    "MAX_MESSAGE_BYTES",
    "MAX_NESTING",
    "MIN_EPOCH",
    "SPEC_VERSION",
    "BadMessage",
    "DecodedEvent",
    "JsonObject",
    "child_budget",
    "decode_event",
    "derive_event_id",
    "encode_event",
    "encode_event_json",
    "iso_time",
    "json_text",
    "new_event_id",
    "parse_iso_time",
    "source_uri",
    "AttemptOutput",
    "HandlerContext",
    "HandlerLoadError",
    "HandlerOutcome",
    "OutputLogHandler",
    "call_handler",
    "current_output",
    "exit_status",
    "handler_file",
    "handler_search_path",
    "load_handler",
    "module_print",
]


class HandlerLoadError(ImportError):
    """The handler's source cannot be imported or does not define the handler."""


#: the most output (printed text and log lines) kept of one handler call, in characters; the rest is counted
MAX_OUTPUT_CHARS = 1_000_000
#: the most log records kept of one handler call for another logger (``AttemptOutput.records``)
MAX_RECORDS = 10_000
#: the attempt output of the handler call running in this thread (see :func:`current_output`)
_current = threading.local()


class AttemptOutput(io.TextIOBase):
    """One handler call's output, as lines in the order they were written: a text stream for ``print``/``write``
    and the target of the call's log handler.

    Keeps at most ``limit`` characters (then counts what it drops). ``mirror``: a file descriptor every complete
    line is also written to as it comes, so that a process killed mid-call leaves its output behind. ``records``:
    a list that also receives each log record as a dict (for :func:`logging.makeLogRecord`), or None.
    """

    def __init__(self, lines: list[str] | None = None, *, limit: int = MAX_OUTPUT_CHARS, mirror: int | None = None,
                 records: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.lines: list[str] = [] if lines is None else lines
        self.records = records
        self.mirror = mirror
        self._limit = self._room = limit
        self._dropped = 0
        self._partial = ""
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            if "\n" not in text:
                self._partial += text
                if len(self._partial) > self._room:
                    self._keep_locked(self._partial)
                    self._partial = ""
                return len(text)
            *complete, self._partial = (self._partial + text).split("\n")
            for line in complete:
                self._keep_locked(line)
        return len(text)

    def add_line(self, line: str) -> None:
        """One line (or several, for text with newlines), after anything written before it."""
        with self._lock:
            for part in line.split("\n"):
                self._keep_locked(part)

    def _keep_locked(self, line: str) -> None:
        if self._dropped or len(line) > self._room:
            self._dropped += 1
            return
        self._room -= len(line) + 1
        self.lines.append(line)
        if self.mirror is not None:
            with contextlib.suppress(OSError):
                os.write(self.mirror, (line + "\n").encode("utf-8", "backslashreplace"))

    def reset(self, lines: list[str]) -> None:
        """Start over, for another call, into ``lines`` (a caller that runs one call after another reuses one
        output rather than making one per call)."""
        with self._lock:
            self.lines = lines
            self._room = self._limit
            self._dropped = 0
            self._partial = ""

    def finish(self) -> list[str]:
        """The lines, with an unfinished last line and a note of what was dropped; the output stays usable."""
        with self._lock:
            if self._partial:
                self._keep_locked(self._partial)
                self._partial = ""
            if self._dropped:
                self.lines.append(f"[xflow: {self._dropped} more lines of output dropped, over {self._limit} "
                                  "characters]")
                self._dropped = 0
                self._room = 0
        return self.lines


def current_output() -> AttemptOutput | None:
    """The output of the handler call :func:`call_handler` is running in this thread, if any."""
    return getattr(_current, "output", None)


class OutputLogHandler(logging.Handler):
    """A log handler that writes each record as a line (``LEVEL message``) into an :class:`AttemptOutput`:
    a fixed one, or (``output=None``) the output of the call running in the thread that logs."""

    def __init__(self, output: AttemptOutput | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.output = output
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        output = self.output if self.output is not None else current_output()
        if output is None:
            return
        try:
            line = self.format(record)
            if output.records is not None and len(output.records) < MAX_RECORDS:
                output.records.append({"name": record.name, "levelno": record.levelno, "levelname": record.levelname,
                                       "msg": record.getMessage(), "created": record.created,
                                       "exc_text": record.exc_text, "stack_info": record.stack_info})
            output.add_line(line)
        except Exception:
            self.handleError(record)


def module_print(*values: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None,
                 flush: bool = False) -> None:
    """The ``print`` of a handler's module (:func:`load_handler` puts it in the module's globals): while the
    handler runs in this thread, what it prints to stdout or stderr goes to the call's output; otherwise, and for
    other files, it is the built-in ``print``."""
    output = getattr(_current, "output", None)
    if output is None or (file is not None and file is not sys.stdout and file is not sys.stderr):
        builtins.print(*values, sep=sep, end=end, file=file, flush=flush)
        return
    output.write((" " if sep is None else sep).join(map(str, values)) + ("\n" if end is None else end))


@dataclass
class HandlerContext:
    """The ``ctx`` a handler receives."""

    execution_id: str
    event_name: str
    event_id: str
    attempt: int
    workflow_id: str
    function_name: str
    logger: logging.Logger
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def publish(self, event_name: str, data: Mapping[str, Any]) -> None:
        """Publish ``event_name`` once the handler returns successfully; ``execution_id`` is added."""
        if not isinstance(event_name, str) or not event_name:
            raise TypeError("ctx.publish needs an event name (a string)")
        if type(data) is not dict and not isinstance(data, Mapping):
            raise TypeError(f"ctx.publish({event_name!r}, ...) needs a dict of data, got {type(data).__name__}")
        payload = dict(data)
        payload["execution_id"] = self.execution_id
        self.published.append((event_name, payload))


@dataclass
class HandlerOutcome:
    ok: bool
    published: list[tuple[str, dict[str, Any]]]
    logs: list[str]
    error: str | None
    duration: float


def exit_status(code: Any) -> int:
    """The exit status of a process that raised ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    return 1


def call_handler(handler: Callable[..., Any], data: dict[str, Any], ctx: HandlerContext, publishes: list[str], *,
                 redirect: bool = True, output: AttemptOutput | None = None,
                 exit_as_status: bool = False, capture_logs: bool = True, private: bool = False) -> HandlerOutcome:
    """Call ``handler(event, ctx)``; capture its output; never raise for what the handler does (an exception or
    ``sys.exit()``: a failed outcome with the reason and the traceback in ``logs``).

    A handler that returns a dict publishes it as its single declared ``publishes`` event.

    Captured, as lines in order (into ``output``, by default a new one over ``ctx.logs``): ``ctx.logger``'s
    records, and the handler module's ``print`` calls (see :func:`module_print`). ``redirect``: also everything
    written to ``sys.stdout`` meanwhile; that is process-wide, so only for a process that runs one handler at a
    time (Lambda's); a caller that runs handlers in threads passes False. ``exit_as_status``: a handler that
    raises ``SystemExit`` is reported as "exited with status N" (where the process is the handler's own), else
    as "called sys.exit(N)". ``capture_logs``: False when ``ctx.logger`` already writes into ``output`` (a caller
    that keeps one logger and one :class:`OutputLogHandler` for many calls, rather than making them per call).
    ``private``: ``data`` is the handler's own (a copy made for this call, or decoded for it), so it is handed over
    as it is rather than copied.
    """
    if output is None:
        output = AttemptOutput(ctx.logs)
    log_handler = OutputLogHandler(output) if capture_logs else None
    if log_handler is not None:
        ctx.logger.addHandler(log_handler)
    previous = getattr(_current, "output", None)
    _current.output = output
    started = time.perf_counter()
    error = None
    try:
        event = data if private else dict(data)
        if redirect:
            with contextlib.redirect_stdout(output):
                result = handler(event, ctx)
        else:
            result = handler(event, ctx)
        if result is None:
            pass
        elif type(result) is dict or isinstance(result, Mapping):
            if len(publishes) != 1:
                raise TypeError(
                    f"handler returned a dict, but function {ctx.function_name!r} declares "
                    f"{len(publishes)} 'publishes' events (exactly one is needed to publish a returned dict)"
                )
            payload = dict(result)  # (what ctx.publish does, without its checks: the name is the declared one)
            payload["execution_id"] = ctx.execution_id
            ctx.published.append((publishes[0], payload))
        else:
            raise TypeError(f"handler returned {type(result).__name__}; return a dict or None")
    except SystemExit as exc:  # not the worker's exit: the handler's attempt failed
        status = exit_status(exc.code)
        if exit_as_status:
            error = f"exited with status {status}"
        else:
            error = "called sys.exit()" if exc.code is None else f"called sys.exit({exc.code!r})"
        output.add_line(_handler_traceback(exc))
        if exc.code is not None and status == 1 and not isinstance(exc.code, int):
            output.add_line(str(exc.code))
    except Exception as exc:  # the user's code failed: report it, do not crash the worker
        error = f"{type(exc).__name__}: {exc}"
        output.add_line(_handler_traceback(exc))
    finally:
        duration = time.perf_counter() - started
        _current.output = previous
        if log_handler is not None:
            ctx.logger.removeHandler(log_handler)
    logs = output.finish()
    if error:
        return HandlerOutcome(False, [], logs, error, duration)
    return HandlerOutcome(True, list(ctx.published), logs, None, duration)


def _handler_traceback(exc: BaseException) -> str:
    """The traceback of what the handler raised, from the handler's frame on (without call_handler's)."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


_loaded_modules: dict[str, Any] = {}
_load_lock = threading.RLock()


def handler_search_path(source: Path) -> str:
    """The folder :func:`load_handler` makes importable while it imports a handler from ``source``."""
    source = Path(source)
    return str(source if source.is_dir() else source.parent)


def handler_file(source: Path, handler: str) -> tuple[Path, str]:
    """The file :func:`load_handler` imports for ``handler`` from ``source``, and the function's name in it."""
    source = Path(source)
    if not source.is_dir():
        return source, handler.rpartition(".")[2]
    module_name, _, function_name = handler.rpartition(".")
    if not module_name:
        candidates = [p for p in (source / "handler.py", source / "main.py", source / "__init__.py") if p.exists()]
        if not candidates:
            raise HandlerLoadError(f"{source}: a folder source needs 'handler: module.function'")
        return candidates[0], function_name
    file = source.joinpath(*module_name.split(".")).with_suffix(".py")
    if not file.exists():
        file = source.joinpath(*module_name.split("."), "__init__.py")
    return file, function_name


def load_handler(source: Path, handler: str, *, keep_imports: bool = False) -> Callable[..., Any]:
    """Import the handler from a ``.py`` file, or ``module.function`` from a folder.

    The handler's module is imported once per file and process and is not registered in ``sys.modules``; its
    globals get :func:`module_print` as ``print`` unless it defines its own. The source folder is put on
    ``sys.path`` for the import only: afterwards ``sys.path`` and ``sys.modules`` are as they were, apart from
    modules the import brought in from outside the folder (the standard library, installed packages). So modules
    next to the handler must be imported at the top of its module, and two functions may each have their own
    ``helpers.py``. ``keep_imports``: for a process that runs this one handler, leave the folder on ``sys.path``
    and its modules imported (imports made later, inside the handler, find them).
    """
    source = Path(source)
    file, function_name = handler_file(source, handler)
    search_path = handler_search_path(source)
    if not file.exists():
        raise HandlerLoadError(f"{file}: no such file")
    key = str(file.resolve())
    with _load_lock:
        module = _loaded_modules.get(key)
        if module is None:
            module = _import_file(file, key, search_path, keep_imports)
            _loaded_modules[key] = module
    function = getattr(module, function_name, None)
    if not callable(function):
        raise HandlerLoadError(f"{file}: defines no function {function_name!r}")
    return function


def _import_file(file: Path, key: str, search_path: str, keep_imports: bool) -> Any:
    name = "xflow_handler_" + hashlib.sha1(key.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise HandlerLoadError(f"{file}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    module.__dict__["print"] = module_print  # the module may define or import its own: that one wins
    path_before = list(sys.path)
    modules_before = dict(sys.modules)
    sys.path.insert(0, search_path)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        raise HandlerLoadError(f"{file}: import failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if not keep_imports:
            _restore_imports(search_path, path_before, modules_before)
        elif search_path in path_before:
            sys.path.remove(search_path)  # it was there already: do not leave a second copy in front
    return module


def _restore_imports(folder: str, path_before: list[str], modules_before: dict[str, Any]) -> None:
    """Put back ``sys.path`` and forget the modules imported from ``folder`` (or that replaced earlier ones)."""
    sys.path[:] = path_before
    inside = os.path.realpath(folder) + os.sep
    for name, module in list(sys.modules.items()):
        earlier = modules_before.get(name)
        if earlier is module:
            continue
        if earlier is not None:
            sys.modules[name] = earlier
            continue
        try:
            where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or ()), None)
        except Exception:  # an odd object in sys.modules (a lazy module that fails): not one of the folder's
            continue
        if isinstance(where, str) and os.path.realpath(where).startswith(inside):
            del sys.modules[name]
