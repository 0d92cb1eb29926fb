"""The boundaries between xflow's parts hold: import-linter checks the contracts in pyproject.toml."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_the_contracts_cover_the_layers_the_design_names():
    forbidden = {c["name"]: (set(c["source_modules"]), set(c["forbidden_modules"]))
                 for c in _config()["contracts"] if c["type"] == "forbidden"}
    pairs = {(s, f) for sources, targets in forbidden.values() for s in sources for f in targets}
    for backend in ("xflow.transports", "xflow.providers", "xflow.trackers", "xflow.aws", "xflow.cli"):
        assert ("xflow.core", backend) in pairs, f"nothing stops the core importing {backend}"
    assert {("xflow.transports", "xflow.providers"), ("xflow.transports", "xflow.trackers")} <= pairs
    assert {("xflow_transport_redis", "xflow.transports"), ("xflow_tracker_postgres", "xflow.trackers")} <= pairs


def test_every_import_contract_is_kept():
    roots = _config()["root_packages"]
    missing = [name for name in roots if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"not installed, so their imports cannot be checked: {', '.join(missing)}")
    command = shutil.which("lint-imports")
    assert command, "import-linter is part of the test extra: pip install -e '.[test]'"
    done = subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout, done.stdout[-2000:]


def test_a_forbidden_import_is_caught(tmp_path):
    """The check can fail: a core module that imports a backend breaks its contract."""
    package = tmp_path / "pkg"
    (package / "core").mkdir(parents=True)
    (package / "transports").mkdir()
    for folder in (package, package / "core", package / "transports"):
        (folder / "__init__.py").write_text("")
    (package / "transports" / "kafka.py").write_text("X = 1\n")
    (package / "core" / "engine.py").write_text("from pkg.transports.kafka import X\n")
    (tmp_path / "setup.cfg").write_text(
        "[importlinter]\nroot_package = pkg\n\n[importlinter:contract:core]\nname = core imports no backend\n"
        "type = forbidden\nsource_modules = pkg.core\nforbidden_modules = pkg.transports\n")
    done = subprocess.run([shutil.which("lint-imports") or "lint-imports", "--no-cache"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1, done.stdout
    assert "pkg.core.engine -> pkg.transports.kafka" in done.stdout
