"""The parent's handle on one handler process of a HandlerPool (:class:`HandlerProcess`).

It starts the process on :func:`xflow.providers.handler_child.main` (the child's end of the pipe), hands it calls,
reads their answers from the pipe, and when the process dies or runs past its time says how, keeping what it
printed (its mirror file) and where its threads were.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing.connection
import os
import pickle
import select
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from xflow.core import runtime
from xflow.core.runtime import HandlerOutcome
from xflow.providers.handler_child import DUMP_SIGNAL, ChildSpec, PassedFd, main

#: how long a process that timed out is given to write its threads' stacks before it is killed
DUMP_GRACE = 0.25
_MIRROR_READ_LIMIT = 4_000_000


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
