"""A handler process of a HandlerPool: the loop it runs (:func:`main`), and the parent's handle on it
(:class:`HandlerProcess`); the two ends of one pipe.

The child imports the standard library, :mod:`xflow.core.runtime` and this module only, so that it starts fast. The
parent starts it with a :class:`ChildSpec` and one end of a pipe; the child imports the handler once, answers
``("ready", pid)`` (or ``("failed", error, lines)`` and exits), then receives calls in batches: a message is a list
of pickled ``(data, attempt)`` pairs, and the child calls the handler for each in order, answering one :data:`Reply`
per call as soon as it ends (so a batch costs one message to the child, and a call that kills the process loses
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
import json
import logging
import multiprocessing.connection
import os
import pickle
import select
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing import reduction
from pathlib import Path
from typing import Any, NamedTuple

from xflow.core import runtime
from xflow.core.runtime import HandlerOutcome

#: what the child answers for one call: ok, the published events as (name, data as JSON text) pairs, the output
#: lines, the error (or None), the handler's duration, log records (dicts for logging.makeLogRecord) when asked, and
#: when (``time.time()``) the call began
Reply = tuple[bool, list[tuple[str, str]], list[str], str | None, float, list[dict[str, Any]], float]
#: the signal that makes a child write its threads' stacks into its mirror file (before it is killed)
DUMP_SIGNAL = getattr(signal, "SIGUSR1", None)
#: how long a process that timed out is given to write its threads' stacks before it is killed
DUMP_GRACE = 0.25
_MIRROR_READ_LIMIT = 4_000_000


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
                                       exit_as_status=True, capture_logs=False)
    except BaseException as exc:  # KeyboardInterrupt and the like, raised by the handler itself
        outcome = runtime.HandlerOutcome(False, [], output.finish(), f"{type(exc).__name__}: {exc}", 0.0)
    finally:
        state.end()
    outcome, texts = sendable(outcome)
    published = [(name, text) for (name, _), text in zip(outcome.published, texts, strict=True)]
    return outcome.ok, published, outcome.logs, outcome.error, outcome.duration, output.records or [], began


# -- the parent's side ------------------------------------------------------------------------------------------
class LoadFailed(Exception):
    """The handler process could not import the handler: why, and what it printed."""

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = lines or []


def describe_exit(code: int | None) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it)."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class Received(NamedTuple):
    """What :meth:`HandlerProcess.receive` took for one call: its outcome, the log records sent back with it, and
    whether the process answered (else the outcome says it timed out or how the process ended)."""

    outcome: HandlerOutcome
    records: list[dict[str, Any]]
    answered: bool
    #: when (``time.time()``) the process began the call, as it said (0.0 without an answer)
    began: float = 0.0


class _Unreadable(Exception):
    """An answer from the handler process that cannot be unpickled."""


#: how much a read from the pipe takes at once (the answers there, several at a time)
_READ_SIZE = 1 << 16


def pickled_call(data: dict[str, Any], attempt: tuple[Any, ...]) -> bytes:
    """One call as :meth:`HandlerProcess.send` takes it (pickled apart, so that a call that cannot be pickled fails
    alone); raises what pickling raises."""
    return pickle.dumps((data, attempt), pickle.HIGHEST_PROTOCOL)


def seconds(value: float) -> str:
    """A duration as errors show it: "2 s", "0.5 s"."""
    return f"{value:g} s"


class HandlerProcess:
    """The parent's handle on one handler process: its pipe, and its mirror file (what it printed, readable after
    it died). Used from one thread at a time (its slot's), except :meth:`signal_kill`.

    Starting it waits until the handler is imported: :class:`LoadFailed` if it cannot be (``file`` names it).
    """

    def __init__(self, context: Any, source: Path, handler: str, publishes: Sequence[str], *, keep_records: bool,
                 environment: Mapping[str, str], load_timeout: float, file: Path, label: str,
                 paths: Sequence[str] = ()) -> None:
        # unnamed (nothing is left behind, whatever happens to either process); closed by close_files()
        self._mirror = tempfile.TemporaryFile(prefix="xflow-handler-", suffix=".out")  # noqa: SIM115
        self.mirror_fd = self._mirror.fileno()
        spec = ChildSpec(str(source), handler, tuple(publishes), PassedFd(self.mirror_fd), keep_records,
                         {**os.environ, **environment}, os.getcwd(), tuple(paths))
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=main, args=(child_end, spec), name=f"xflow-handler:{label}")
        #: the process has ended (its sentinel was seen); its slot replaces it
        self.ended = False
        #: what was read from the pipe and not taken yet (answers come several at a time)
        self._inbox = bytearray()
        #: how it ended, once its files are closed
        self.exitcode: int | None = None
        self._poller: Any = None
        try:
            try:
                self.process.start()
            finally:
                child_end.close()
            self._conn_fd = self.conn.fileno()
            if hasattr(select, "poll"):
                self._poller = select.poll()
                self._poller.register(self._conn_fd, select.POLLIN)
                self._poller.register(self.process.sentinel, select.POLLIN)
            answered, ended = self._wait(load_timeout)
            reply = self._receive() if answered else None
        except BaseException:
            self.kill()
            self.close_files()
            raise
        if reply is not None and reply[0] == "ready":
            self.pid: int = reply[1]
            return
        if reply is not None and reply[0] == "failed":
            self.stop(1.0)
            raise LoadFailed(reply[1], list(reply[2]))
        if not answered and not ended:
            self.kill(dump=True)
            raise LoadFailed(f"{file}: importing the handler took more than {seconds(load_timeout)}",
                              self.mirror_lines())
        self.process.join(5)
        lines, how = self.mirror_lines(), describe_exit(self.process.exitcode)
        self.close_files()
        raise LoadFailed(f"{file}: its handler process {how} while importing it", lines)

    def _receive(self) -> Any:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            return None

    def _wait(self, timeout: float | None) -> tuple[bool, bool]:
        """Wait until the process answers or ends, at most ``timeout`` seconds: (answered, ended)."""
        if self._poller is None:
            ready = multiprocessing.connection.wait([self.conn, self.process.sentinel], timeout)
            answered, ended = self.conn in ready, self.process.sentinel in ready
        else:
            events = self._poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
            answered = any(fd == self._conn_fd for fd, _ in events)
            ended = any(fd != self._conn_fd for fd, _ in events)
        self.ended = self.ended or ended
        return answered, ended

    def alive(self) -> bool:
        """False once the process is known to have ended (checked without waiting; from its slot's thread only).

        Between calls the process sends nothing: its end of the pipe being readable means it closed (died)."""
        if not self.ended:
            answered, _ = self._wait(0)
            self.ended = self.ended or answered
        return not self.ended

    def call(self, data: dict[str, Any], attempt: tuple[Any, ...], timeout: float | None,
             ) -> tuple[HandlerOutcome, list[dict[str, Any]]]:
        """One call: :meth:`send` and :meth:`receive`. ``attempt``: see :func:`main`."""
        started = time.perf_counter()
        try:
            call = pickled_call(data, attempt)
        except Exception as exc:  # not picklable: nothing was written
            return HandlerOutcome(False, [], [], f"the event cannot be sent to the handler process: {exc}", 0.0), []
        self.send([call])
        received = self.receive(started, timeout)
        return received.outcome, received.records

    def send(self, calls: Sequence[bytes]) -> None:
        """Hand the process these calls (from :func:`pickled_call`), in one message: it runs them in order and
        answers each as it ends; :meth:`receive` takes the answers, one per call. A process that is gone is
        noticed there."""
        with contextlib.suppress(OSError):
            self.conn.send(list(calls))

    def receive(self, started: float, timeout: float | None) -> Received:
        """The outcome of the next call sent, which started at ``started`` (``time.perf_counter()``): its answer;
        or, with none ``timeout`` seconds after ``started``, "timed out" (the process is killed, after writing its
        threads' stacks); or how the process ended. Also the log records the process sent back (when started with
        ``keep_records``). Once :attr:`ended`, answers it sent before it ended are still taken, one per call."""
        try:
            reply = self._next_reply(None if timeout is None else started + timeout)
        except _Unreadable as exc:  # what came back cannot be read: the pipe is no longer in step
            self.kill()
            return Received(HandlerOutcome(False, [], [], f"the handler process sent back what cannot be read: {exc}",
                                           time.perf_counter() - started), [], False)
        if reply is not None:
            ok, pairs, logs, error, duration, records, began = reply
            published: list[tuple[str, dict[str, Any]]] = [(name, runtime.JsonObject(json.loads(text), text))
                                                           for name, text in pairs]
            return Received(HandlerOutcome(ok, published, logs, error, duration), records, True, began)
        elapsed = time.perf_counter() - started
        if not self.ended:
            self.kill(dump=True)
            return Received(HandlerOutcome(False, [], self.mirror_lines(), f"timed out after {seconds(timeout or 0)}",
                                           elapsed), [], False)
        self.process.join(5)
        self.kill()  # in case it closed its pipe but lives on
        return Received(HandlerOutcome(False, [], self.mirror_lines(), describe_exit(self.process.exitcode), elapsed),
                        [], False)

    def _next_reply(self, deadline: float | None) -> Any:
        """The next answer, waiting until ``deadline`` (``time.perf_counter()``; None: no limit); None when none
        came by then, or the process ended (then :attr:`ended` is true). Answers are read from the pipe as they
        are there, several at a time (each framed as the pipe's connection frames them)."""
        while True:
            frame = self._frame()
            if frame is not None:
                try:
                    return pickle.loads(frame)
                except Exception as exc:
                    raise _Unreadable(exc) from None
            answered, _ = self._wait(None if deadline is None else max(0.0, deadline - time.perf_counter()))
            if not answered:
                return None  # timed out, or ended (``_wait`` noted it)
            if self._poller is None:  # no poll(): the connection reads its frames itself, one at a time
                try:
                    return self.conn.recv()
                except (EOFError, OSError):
                    self.ended = True
                    return None
                except Exception as exc:
                    raise _Unreadable(exc) from None
            try:
                data = os.read(self._conn_fd, _READ_SIZE)
            except OSError:
                data = b""
            if not data:  # the pipe closed: the process ended
                self.ended = True
                return None
            self._inbox += data

    def _frame(self) -> bytes | None:
        """The first whole answer read from the pipe and not taken yet: a 4-byte big-endian size (-1, then an 8-byte
        size, for a large one), then the pickle (``multiprocessing.connection``'s framing)."""
        inbox = self._inbox
        if len(inbox) < 4:
            return None
        size, start = int.from_bytes(inbox[:4], "big", signed=True), 4
        if size == -1:
            if len(inbox) < 12:
                return None
            size, start = int.from_bytes(inbox[4:12], "big"), 12
        end = start + size
        if len(inbox) < end:
            return None
        frame = bytes(inbox[start:end])
        del inbox[:end]
        return frame

    def mirror_lines(self) -> list[str]:
        """What the process wrote in its current call (complete lines, and faulthandler's stacks)."""
        try:
            raw = os.pread(self.mirror_fd, _MIRROR_READ_LIMIT, 0)
        except (OSError, ValueError):
            return []
        return raw.decode("utf-8", "replace").splitlines()

    def kill(self, dump: bool = False) -> None:
        """Kill the process (after it wrote its threads' stacks, when ``dump``) and wait for it."""
        if self.process.pid is not None and self.process.exitcode is None:
            if dump and DUMP_SIGNAL is not None:
                size = _size(self.mirror_fd)
                with contextlib.suppress(OSError):
                    os.kill(self.process.pid, DUMP_SIGNAL)
                deadline = time.monotonic() + DUMP_GRACE
                while time.monotonic() < deadline and _size(self.mirror_fd) == size:
                    time.sleep(0.01)
                time.sleep(0.01)
            with contextlib.suppress(OSError, AttributeError):
                self.process.kill()
            self.process.join(5)
        self.ended = True

    def signal_kill(self) -> None:
        """Send SIGKILL, from another thread than the one that waits for the process (it reports the end)."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.process.kill()

    def stop(self, timeout: float) -> None:
        """Ask the process to stop (it is killed if it does not within ``timeout``) and release everything."""
        if self.mirror_fd < 0:
            return  # stopped already
        if not self.ended:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(None)
        self.process.join(timeout)
        self.kill()
        self.close_files()

    def close_files(self) -> None:
        """Release the pipe, the mirror file and the process object (idempotent)."""
        if self.mirror_fd < 0:
            return
        with contextlib.suppress(OSError):
            self._mirror.close()
        self.mirror_fd = -1
        with contextlib.suppress(OSError):
            self.conn.close()
        with contextlib.suppress(ValueError):
            self.exitcode = self.process.exitcode
            self.process.close()


def _size(fd: int) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError:
        return -1
