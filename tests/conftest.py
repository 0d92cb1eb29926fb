"""Fixtures shared by the suites in tests/ (helpers live in xflow_cli_testing.py, which test modules import)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from xflow_cli_testing import CLI


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    """The xflow CLI, run in a fresh temporary folder (its state folder is ``tmp_path/.xflow``)."""
    return CLI(tmp_path)


@pytest.fixture
def make_workflow(tmp_path: Path) -> Callable[..., Path]:
    """Write a workflow file and handler modules into a folder of ``tmp_path``; returns the file."""

    def make(yaml_text: str, handlers: dict[str, str] | None = None, name: str = "flow.yaml",
             folder: str = "flows") -> Path:
        base = tmp_path / folder
        base.mkdir(exist_ok=True)
        for filename, code in (handlers or {}).items():
            (base / filename).write_text(textwrap.dedent(code))
        path = base / name
        path.write_text(textwrap.dedent(yaml_text))
        return path

    return make
