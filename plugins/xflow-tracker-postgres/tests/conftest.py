"""Fixtures of the postgres tracker's tests: a real PostgreSQL server (from xflow's tests/plugin_servers.py).

Set XFLOW_TEST_POSTGRES_DSN to use a server that is already running instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO_TESTS = Path(__file__).resolve().parents[3] / "tests"
if (_REPO_TESTS / "plugin_servers.py").exists() and str(_REPO_TESTS) not in sys.path:
    sys.path.append(str(_REPO_TESTS))


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    given = os.environ.get("XFLOW_TEST_POSTGRES_DSN")
    if given:
        yield given
        return
    from plugin_servers import running_postgres

    with running_postgres() as dsn:
        yield dsn
