"""The one handled-error type: a user mistake or an unreachable backend, printed in one line."""

from __future__ import annotations

from xflow.core.redact import redact, redact_all


class XflowError(Exception):
    """A problem the user can fix. The CLI prints ``error: MESSAGE (hint: HINT)`` and exits 2.

    Anything that is not an XflowError is a bug in xflow or a plugin and keeps its traceback.
    Secrets (registered option values, URL passwords) are masked in the message, hint and lines.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, *, lines: list[str] | None = None) -> None:
        message = redact(message)
        hint = redact(hint) if hint else hint
        super().__init__(message)
        self.message = message
        self.hint = hint
        #: extra lines printed after the message (used to list every problem of a workflow file)
        self.lines = redact_all(lines or [])

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class WorkflowFileError(XflowError):
    """An invalid workflow file: every problem, each as ``FILE:LINE: dotted.path: message``."""

    def __init__(self, path: str, problems: list[str]) -> None:
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{path}: {len(problems)} {noun}", lines=problems)
        self.problems = problems


class BackendUnavailable(XflowError):
    """A backend failed in a way that may pass: a 5xx, throttling, a dropped connection, a broker restart, a full disk.

    Long-running workers wait and retry (logging once) instead of stopping; a command that cannot wait
    reports it in one line and exits 1 (the work failed; the input was fine).
    """

    exit_code = 1
