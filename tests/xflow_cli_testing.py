"""Test helpers shared by the suites: run the ``xflow`` CLI in a subprocess, paths, independent counts."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORD_COUNT = ROOT / "examples" / "word_count" / "word_count.yaml"
SAMPLE = ROOT / "examples" / "word_count" / "sample.txt"
SEED = Path(__file__).resolve().parent / "fixtures" / "seed" / "word_count.cfg"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: no XFLOW_* leaking in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XFLOW_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def xflow_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "xflow.cli", *args]


class CLI:
    """Runs ``xflow ARGS`` in ``cwd`` and returns the finished process (text mode)."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.cwd, self.env = cwd, env

    def __call__(self, *args: str | os.PathLike[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        environment = clean_env(**(self.env or {}), **env)
        return subprocess.run(xflow_command(*map(str, args)), cwd=self.cwd, env=environment, capture_output=True,
                              text=True, timeout=timeout)

    def json(self, *args: str | os.PathLike[str], expect: int = 0, **kw: Any) -> Any:
        done = self(*args, "--output", "json", **kw)
        assert done.returncode == expect, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        return json.loads(done.stdout)

    def popen(self, *args: str | os.PathLike[str], **env: str) -> subprocess.Popen[str]:
        log = open(self.cwd / f"proc-{len(list(self.cwd.glob('proc-*')))}.log", "w")  # noqa: SIM115
        return subprocess.Popen(xflow_command(*map(str, args)), cwd=self.cwd, env=clean_env(**(self.env or {}), **env),
                                stdout=log, stderr=subprocess.STDOUT, text=True)


def word_counts(text: str) -> dict[str, int]:
    """An independent count: maximal runs of str.isalpha() characters, lowercased."""
    from itertools import groupby

    counts: dict[str, int] = {}
    for is_word, chars in groupby(text, key=str.isalpha):
        if is_word:
            word = "".join(chars).lower()
            counts[word] = counts.get(word, 0) + 1
    return counts


#: handlers for two-step test workflows: each success appends "FUNCTION EXECUTION PID" to $XFLOW_TEST_NOTES;
#: the event may ask for a delay ("sleep") or a failure ("fail")
NOTING_STEPS = """
import os, time

def _note(ctx, event):
    with open(os.environ["XFLOW_TEST_NOTES"], "a") as notes:
        notes.write(f"{ctx.function_name} {event['execution_id']} {os.getpid()}\\n")

def first(event, ctx):
    time.sleep(float(event.get("sleep", 0)))
    if event.get("fail"):
        ctx.logger.error("refusing %s", event["execution_id"])
        raise RuntimeError("asked to fail")
    _note(ctx, event)
    return {"n": event.get("n", 0) + 1}

def second(event, ctx):
    time.sleep(float(event.get("sleep", 0)))
    _note(ctx, event)
    return {"n": event["n"] * 10}
"""


def read_notes(path: Path) -> collections.Counter[tuple[str, ...]]:
    """How many times each (function, execution) was handled successfully, from NOTING_STEPS' notes."""
    lines = path.read_text().splitlines() if path.exists() else []
    return collections.Counter(tuple(line.split()[:2]) for line in lines)
