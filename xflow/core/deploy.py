"""Runs a setup or teardown plan: planners return data-only steps, an executor applies or only displays them.

A plan is a list of :class:`~xflow.core.interfaces.Step` in the order they must happen. Planning reads
backends and never writes; everything that changes a backend happens here, through the owning plugin's
``execute(step)``. :class:`Executor` applies a plan with progress and, on a failure, says what was already
done; :class:`DisplayOnlyExecutor` walks the same plan and records what would be called, for ``--dry-run``
and ``-o json``. Both check that each step's ``depends_on`` comes earlier in the plan (or is not planned
at all, so it already exists): a planner that orders its steps wrongly is caught even on a dry run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from xflow.core.errors import XflowError
from xflow.core.interfaces import Step

#: called before each step with (step, index, total)
Progress = Callable[[Step, int, int], None]


def check_order(steps: Sequence[Step]) -> None:
    """Raise if a step depends on a resource that a later step of the same plan creates or updates."""
    position: dict[str, int] = {}
    for index, step in enumerate(steps):
        if step.action != "delete":
            position.setdefault(step.resource, index)
    for index, step in enumerate(steps):
        for needed in step.depends_on:
            at = position.get(needed)
            if at is not None and at > index:
                raise RuntimeError(f"plan order: {step.action} {step.resource} (step {index + 1}) needs {needed}, "
                                   f"which step {at + 1} makes")


def dispatch(step: Step, operations: Mapping[str, Callable[..., Any]]) -> None:
    """Perform ``step`` by calling ``operations[step.call](**step.params)``: the usual body of ``Plugin.execute``."""
    try:
        operation = operations[step.call]
    except KeyError:
        raise RuntimeError(f"no operation {step.call!r} for {step.action} {step.resource}; "
                           f"known: {', '.join(sorted(operations))}") from None
    operation(**step.params)


class Executor:
    """Applies a plan in order through ``perform(step)``; stops at the first failure, naming what was done."""

    def __init__(self, perform: Callable[[Step], None], progress: Progress | None = None) -> None:
        self.perform = perform
        self.progress = progress
        self.done: list[Step] = []

    def execute(self, steps: Sequence[Step]) -> None:
        check_order(steps)
        for index, step in enumerate(steps):
            if self.progress is not None:
                self.progress(step, index, len(steps))
            try:
                self.perform(step)
            except XflowError as exc:
                done = ", ".join(f"{s.action} {s.resource}" for s in self.done) or "nothing"
                error = XflowError(f"{exc.message}; already done before it: {done}",
                                   exc.hint or "fix the cause and run the same command again: it resumes")
                error.exit_code = exc.exit_code  # a backend that failed (or a rollout rolled back) stays exit status 1
                raise error from None
            self.done.append(step)


class DisplayOnlyExecutor:
    """Walks a plan without touching anything and keeps, for each step, what would be called."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def execute(self, steps: Sequence[Step]) -> None:
        check_order(steps)
        self.calls.extend(step.describe() for step in steps)

    def lines(self) -> Iterable[str]:
        """One readable line per step: ``create stream:wc-Uploaded  kinesis:CreateStream(StreamName=..)``."""
        for call in self.calls:
            params = ", ".join(f"{key}={_short(value)}" for key, value in call["params"].items())
            what = f"  {call['call']}({params})" if call["call"] else ""
            yield f"{call['action']} {call['resource']}{what}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
