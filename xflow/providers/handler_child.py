"""The loop a handler process runs (:func:`main`): the child's end of its pipe.

The parent's end is :class:`~xflow.providers.handler_process.HandlerProcess`. The child imports the standard
library, :mod:`xflow.core.runtime` and this module only, so that it starts fast. The parent starts it with a
:class:`ChildSpec` and one end of a pipe; the child imports the handler once, answers ``("ready", pid)`` (or
``("failed", error, lines)`` and exits), then receives calls in batches: a message is a list of pickled
``(data, attempt)`` pairs, and the child calls the handler for each in order, answering one :data:`Reply` per call
as soon as it ends (so a batch costs one message to the child, and a call that kills the process loses
none of the outcomes before it). ``None`` or the end of the pipe stops it.

While a call runs, ``sys.stdout``, ``sys.stderr`` and the root logger write into that call's output, so
everything the handler prints or logs (from any thread of the child) comes back with the outcome. Every
complete line is also written to the ``mirror`` file as it comes, and :mod:`faulthandler` writes there on a
crash (and on ``SIGUSR1``, which the parent sends before killing a call that timed out): what a killed child
printed, and where it was, is not lost. Ctrl-C is the parent's: the child ignores SIGINT.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import logging
import os
import pickle
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing import reduction
from pathlib import Path
from typing import Any

from xflow.core import runtime

#: what the child answers for one call: ok, the published events as (name, data as JSON text) pairs, the output
#: lines, the error (or None), the handler's duration, log records (dicts for logging.makeLogRecord) when asked, and
#: when (``time.time()``) the call began
Reply = tuple[bool, list[tuple[str, str]], list[str], str | None, float, list[dict[str, Any]], float]
#: the signal that makes a child write its threads' stacks into its mirror file (before it is killed)
DUMP_SIGNAL = getattr(signal, "SIGUSR1", None)


@dataclass(frozen=True)
class ChildSpec:
    """What a handler process is started with (plain data: it is pickled to the child)."""

    source: str
    handler: str
    publishes: tuple[str, ...]
    #: an unnamed file the child writes its output lines to as they come (the parent reads it when the child dies):
    #: a :class:`PassedFd` in the parent, the child's file descriptor once unpickled there
    mirror: Any
    #: send log records back with each reply (the parent re-emits them)
    keep_records: bool
    #: the parent's environment and working folder when the child was started (a forkserver's are older)
    environment: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    #: folders put in front of ``sys.path`` (the function's installed requirements)
    paths: tuple[str, ...] = ()


class PassedFd:
    """A file descriptor handed to a process being started (pickled as multiprocessing passes a pipe's)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _detach, (reduction.DupFd(self.fd),)


def _detach(duplicate: Any) -> int:
    return duplicate.detach()


def published_texts(published: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The data of each published event as JSON text (:func:`~xflow.core.runtime.json_text`, encoded once: the
    event's record and the tracker reuse it); ValueError naming the event whose data is not JSON (or not UTF-8)."""
    texts = []
    for name, data in published:
        try:
            text = runtime.json_text(data)
            if not text.isascii():
                text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"the data of event {name!r} is not valid Unicode (a lone surrogate)") from None
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"the data of event {name!r} is not JSON: {type(exc).__name__}: {exc}") from None
        texts.append(text)
    return texts


def sendable(outcome: runtime.HandlerOutcome) -> tuple[runtime.HandlerOutcome, list[str]]:
    """``outcome`` with the JSON text of each published event's data, or a failed outcome saying why it cannot be
    sent (then no texts)."""
    if not outcome.ok:
        return outcome, []
    try:
        return outcome, published_texts(outcome.published)
    except ValueError as exc:
        error = f"what the handler published cannot be sent: {exc}"
        return runtime.HandlerOutcome(False, [], outcome.logs, error, outcome.duration), []


class _State:
    """The call this child is running (one at a time), and its mirror file."""

    def __init__(self, mirror: int) -> None:
        self.mirror = mirror
        self.current: runtime.AttemptOutput | None = None
        #: the mirror holds lines of an earlier call (emptied before the next)
        self.dirty = True

    def begin(self, keep_records: bool) -> runtime.AttemptOutput:
        if self.dirty:
            with contextlib.suppress(OSError):
                os.ftruncate(self.mirror, 0)
                os.lseek(self.mirror, 0, os.SEEK_SET)
            self.dirty = False
        self.current = runtime.AttemptOutput(mirror=self.mirror, records=[] if keep_records else None)
        return self.current

    def end(self) -> None:
        if self.current is not None and self.current.lines:
            self.dirty = True
        self.current = None


class _Stream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a handler process: into the running call's output, else the real stream."""

    def __init__(self, state: _State, real: Any) -> None:
        super().__init__()
        self._state = state
        self._real = real

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        output = self._state.current
        if output is not None:
            return output.write(text)
        if self._real is None:
            return len(text)
        return self._real.write(text)

    def flush(self) -> None:
        if self._state.current is None and self._real is not None:
            with contextlib.suppress(Exception):
                self._real.flush()

    def fileno(self) -> int:
        if self._real is None:
            raise io.UnsupportedOperation("fileno")
        return self._real.fileno()


class _RootCapture(runtime.OutputLogHandler):
    """On the child's root logger (and its functions' loggers): records of any logger, from any thread, into the
    running call's output."""

    def __init__(self, state: _State) -> None:
        super().__init__()
        self._state = state

    def emit(self, record: logging.LogRecord) -> None:
        output = self._state.current
        if output is not None:
            self.output = output
            super().emit(record)


def main(conn: Any, spec: ChildSpec) -> None:
    """The handler process: import the handler, then serve calls until told to stop."""
    if hasattr(signal, "SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops its calls itself
    if spec.environment:
        os.environ.clear()
        os.environ.update(spec.environment)
    if spec.cwd:
        with contextlib.suppress(OSError):
            os.chdir(spec.cwd)
    mirror = spec.mirror
    state = _State(mirror)
    streams = _Stream(state, sys.stdout), _Stream(state, sys.stderr)
    sys.stdout, sys.stderr = streams
    logging.getLogger().addHandler(_RootCapture(state))
    faulthandler.enable(file=mirror, all_threads=True)
    if DUMP_SIGNAL is not None:
        faulthandler.register(DUMP_SIGNAL, file=mirror, all_threads=True)

    output = state.begin(False)
    sys.path[0:0] = [path for path in spec.paths if path not in sys.path]  # this process is the handler's
    try:
        handler = runtime.load_handler(Path(spec.source), spec.handler, keep_imports=True)
    except runtime.HandlerLoadError as exc:
        output.add_line(traceback.format_exc().rstrip())
        conn.send(("failed", str(exc), output.finish()))
        return
    finally:
        state.end()
    conn.send(("ready", os.getpid()))
    publishes = list(spec.publishes)
    loggers: dict[tuple[str, str], logging.Logger] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        for raw in message:
            try:
                data, attempt = pickle.loads(raw)
            except Exception as exc:  # noqa: BLE001  (cannot happen with JSON data; never stop the process for it)
                reply: Reply = (False, [], [], f"the event cannot be read in the handler process: {exc}", 0.0, [],
                                time.time())
            else:
                reply = _call(handler, data, attempt, publishes, state, spec.keep_records, streams, loggers)
            try:
                conn.send(reply)
            except (EOFError, OSError):
                return
            except Exception as exc:  # a log record or line that cannot be pickled: say so rather than stop
                conn.send((False, [], [], f"the handler's outcome cannot be sent back: {type(exc).__name__}: {exc}",
                           reply[4], [], reply[6]))


def _logger(loggers: dict[tuple[str, str], logging.Logger], workflow_id: str, function_name: str,
            state: _State) -> logging.Logger:
    """The function's ``ctx.logger`` in this process: made once, its records (from any thread) into the running
    call's output; not propagated (the root logger would repeat them)."""
    logger = loggers.get((workflow_id, function_name))
    if logger is None:
        logger = logging.Logger(f"xflow.functions.{workflow_id}.{function_name}", logging.DEBUG)
        logger.propagate = False
        logger.addHandler(_RootCapture(state))
        loggers[(workflow_id, function_name)] = logger
    return logger


def _call(handler: Any, data: dict[str, Any], attempt: tuple[Any, ...], publishes: list[str], state: _State,
          keep_records: bool, streams: tuple[_Stream, _Stream], loggers: dict[tuple[str, str], logging.Logger]) -> Reply:
    execution_id, event_name, event_id, number, workflow_id, function_name = attempt
    began = time.time()
    sys.stdout, sys.stderr = streams  # a handler may have replaced them
    output = state.begin(keep_records)
    logger = _logger(loggers, workflow_id, function_name, state)
    ctx = runtime.HandlerContext(execution_id, event_name, event_id, number, workflow_id, function_name, logger,
                                 logs=output.lines)
    try:
        outcome = runtime.call_handler(handler, data, ctx, publishes, redirect=False, output=output,
                                       exit_as_status=True, capture_logs=False, private=True)  # (unpickled for it)
    except BaseException as exc:  # KeyboardInterrupt and the like, raised by the handler itself
        outcome = runtime.HandlerOutcome(False, [], output.finish(), f"{type(exc).__name__}: {exc}", 0.0)
    finally:
        state.end()
    outcome, texts = sendable(outcome)
    published = [(name, text) for (name, _), text in zip(outcome.published, texts, strict=True)]
    return outcome.ok, published, outcome.logs, outcome.error, outcome.duration, output.records or [], began
