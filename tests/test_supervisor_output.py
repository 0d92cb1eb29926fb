"""With thread isolation a slot reuses one output object for its calls (:meth:`AttemptOutput.reset`): each call still
gets its own lines, its own room under the limit, and nothing of the call before it; a call that timed out keeps its
lines while the slot that takes its place writes elsewhere."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from xflow.core.runtime import AttemptOutput
from xflow.providers.handler_calls import Attempt
from xflow.providers.supervisor import HandlerPool

pytestmark = pytest.mark.timeout(120)

LOUD = """
import logging, time

def handle(event, ctx):
    if event.get("flood"):
        for i in range(400):
            print(f"{i:04d}" + "x" * 4996)
        print("an unfinished line", end="")
        return None
    if event.get("sleep"):
        print("before the timeout")
        time.sleep(event["sleep"])
        print("after the timeout")
        return None
    print(f"quiet {event['n']}")
    ctx.logger.info("logged %s", event["n"])
    return {"n": event["n"]}
"""


def _pool(tmp_path: Path, timeout: float | None = None) -> HandlerPool:
    source = tmp_path / "loud.py"
    source.write_text(textwrap.dedent(LOUD))
    return HandlerPool(source, "handle", ["Out"], isolation="thread", concurrency=1, timeout=timeout)


def _call(pool: HandlerPool, data: dict, n: int) -> object:
    return pool.submit(data, Attempt("wf", "loud", f"x{n}", "In", f"e{n}", 1)).result(60)


def test_each_call_of_a_slot_gets_its_own_lines_and_room(tmp_path: Path) -> None:
    with _pool(tmp_path) as pool:
        first = _call(pool, {"n": 1}, 1)
        flood = _call(pool, {"flood": True}, 2)
        after = _call(pool, {"n": 3}, 3)
        again = _call(pool, {"n": 4}, 4)
    assert first.logs == ["quiet 1", "INFO logged 1"]  # type: ignore[attr-defined]
    assert flood.logs[-1] == "[xflow: 202 more lines of output dropped, over 1000000 characters]"  # type: ignore[attr-defined]
    # the flood's unfinished line and its dropped count are not carried into the next call, nor is its spent room
    assert after.logs == ["quiet 3", "INFO logged 3"]  # type: ignore[attr-defined]
    assert again.logs == ["quiet 4", "INFO logged 4"]  # type: ignore[attr-defined]
    assert first.logs is not after.logs  # type: ignore[attr-defined]


def test_a_call_that_timed_out_keeps_its_lines_and_the_next_one_writes_elsewhere(tmp_path: Path) -> None:
    with _pool(tmp_path, timeout=0.5) as pool:
        late = _call(pool, {"sleep": 1.5}, 1)
        following = [_call(pool, {"n": n}, n) for n in (2, 3)]
    assert not late.ok and late.error == "timed out after 0.5 s"  # type: ignore[attr-defined]
    assert late.logs == ["before the timeout"]  # type: ignore[attr-defined]
    assert [o.logs for o in following] == [["quiet 2", "INFO logged 2"], ["quiet 3", "INFO logged 3"]]  # type: ignore[attr-defined]


def test_reset_starts_an_output_over() -> None:
    lines: list[str] = []
    output = AttemptOutput(lines, limit=20)
    output.write("a" * 30 + "\n")  # over the limit: dropped
    output.write("unfinished")
    assert output._dropped == 1
    fresh: list[str] = []
    output.reset(fresh)
    output.write("new\n")
    assert output.finish() == ["new"] and fresh == ["new"]
    assert lines == [], "the earlier call's lines are left as they were"
