"""Shared helpers of the conformance kit: its workflow, fresh workflow ids, running a plan, draining a consumer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xflow.core.deploy import Executor
from xflow.core.interfaces import (
    Consumer,
    Delivery,
    Plugin,
    Step,
)
from xflow.core.model import Function, Subscription, Workflow

#: the events of the kit's workflow, in flow order
KIT_EVENTS = ("Uploaded", "Parsed", "Counted")

_HANDLER_SOURCE = '''"""Handlers of the conformance kit's workflow."""


def read(event, ctx):
    return {"text": event.get("text", "")}


def count(event, ctx):
    ctx.publish("Counted", {"words": len(event["text"].split())})
'''


def new_workflow_id(prefix: str = "kit") -> str:
    """A fresh workflow id: lowercase letters and digits, valid as a stream/topic/table name part."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def kit_workflow(workflow_id: str, directory: Path) -> Workflow:
    """A small two-step workflow (``reader`` → ``counter``) whose handler file is written to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    handler_file = directory / "kit_handlers.py"
    handler_file.write_text(_HANDLER_SOURCE, encoding="utf-8")
    functions = {
        "reader": Function(name="reader", handler="read", source=str(handler_file), source_path=handler_file,
                           publishes=("Parsed",)),
        "counter": Function(name="counter", handler="count", source=str(handler_file), source_path=handler_file,
                            publishes=("Counted",)),
    }
    return Workflow(
        id=workflow_id,
        path=directory / f"{workflow_id}.yaml",
        functions=functions,
        subscriptions=(Subscription("Uploaded", ("reader",)), Subscription("Parsed", ("counter",))),
        flow=KIT_EVENTS,
    )


def apply_steps(steps: Sequence[Step], plugin: Plugin | None = None) -> None:
    """Run a plan through ``plugin.execute``, as the engine's executor does (closure-form steps need no plugin)."""
    perform: Callable[[Step], None]
    if plugin is not None:
        perform = plugin.execute
    else:
        def perform(step: Step) -> None:
            if step.apply is None:
                raise TypeError(f"{step.call} {step.resource} is a data-only step: pass the plugin that planned it")
            step.apply()
    Executor(perform).execute(steps)


def drain(consumer: Consumer, count: int, timeout: float, max_records: int = 100) -> list[Delivery]:
    """Poll until ``count`` deliveries arrived or ``timeout`` seconds passed; return what arrived."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        got.extend(consumer.poll(max_records, min(left, 2.0)))
    return got


def check_plan(steps: Any, allowed: set[str]) -> None:
    """Assert that ``steps`` is a well-formed plan whose actions are all in ``allowed``."""
    assert isinstance(steps, list), f"a plan is a list of Step, got {type(steps).__name__}"
    for step in steps:
        assert isinstance(step, Step), f"a plan holds Step objects, got {step!r}"
        assert step.action in allowed, f"unexpected action {step.action!r} in {step}"
        kind, _, name = step.resource.partition(":")
        assert kind and name, f"a step's resource reads KIND:NAME, got {step.resource!r}"
        assert callable(step.apply) or step.call, f"{step} has neither a call for execute() nor an apply"
