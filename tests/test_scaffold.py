"""``xflow plugins new``: skeletons install with pip, are found by name, and fail only where behaviour is missing.

The skeletons are installed with ``pip install --no-deps --target`` into a temporary folder
that is put on PYTHONPATH of the subprocesses, so the test environment itself is untouched.
It also checks how the engine reports a plugin that raises in its constructor or its plan.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from xflow.core.errors import XflowError
from xflow.scaffold import new_plugin_command, skeleton_files, write_skeleton

ROOT = Path(__file__).resolve().parents[1]
WORD_COUNT = ROOT / "examples" / "word_count" / "word_count.yaml"
NAME = "kitdemo"
#: kit tests that check only declarations: a fresh skeleton passes them
DECLARATION_TESTS = {
    "test_declares_name_options_and_limit", "test_declares_name_and_options",
    "test_declares_name_options_and_where_it_runs", "test_is_installed_and_found_by_name",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Three kitdemo skeletons plus a transport 'kitboom' whose constructor raises, pip-installed into a folder."""
    root = tmp_path_factory.mktemp("skeletons")
    folders = [write_skeleton(kind, NAME, root) for kind in ("transport", "provider", "tracker")]
    boom = write_skeleton("transport", "kitboom", root)
    module = boom / "xflow_transport_kitboom" / "transport.py"
    module.write_text(module.read_text().replace(
        "        super().__init__(context)\n",
        "        raise RuntimeError('kitboom cannot start')\n", 1))
    site = root / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
         "--target", str(site), *map(str, folders + [boom])],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return root, site


def env_with(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def xflow(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from xflow.cli import main; main()", *args],
                          capture_output=True, text=True, env=env_with(site), cwd=cwd, timeout=120)


@pytest.mark.parametrize("kind", ["transport", "provider", "tracker"])
def test_skeleton_tests_fail_only_where_behaviour_is_missing(installed, kind):
    root, site = installed
    folder = root / f"xflow-{kind}-{NAME}"
    report = folder / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"],
                   cwd=folder, env=env_with(site), capture_output=True, text=True, timeout=300)
    cases = ET.parse(report).getroot().iter("testcase")
    passed, missing = [], []
    for case in cases:
        name = case.get("name", "").split("[")[0]
        problems = case.findall("failure") + case.findall("error")
        assert not case.findall("skipped"), f"{name} was skipped"
        if not problems:
            passed.append(name)
            continue
        text = " ".join((p.get("message") or "") + (p.text or "") for p in problems)
        assert "NotImplementedError" in text, f"{name} fails for another reason than missing behaviour:\n{text}"
        missing.append(name)
    assert set(passed) <= DECLARATION_TESTS, f"tests passed without behaviour: {set(passed) - DECLARATION_TESTS}"
    assert "test_is_installed_and_found_by_name" in passed
    assert len(missing) >= 2, f"the conformance kit did not run: {missing}"


def test_installed_skeletons_are_listed(installed, tmp_path):
    _root, site = installed
    result = xflow(site, "plugins", "--output", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = {(p["kind"], p["name"]): p for p in json.loads(result.stdout)}
    for kind in ("transport", "provider", "tracker"):
        entry = listed[(kind, NAME)]
        assert (entry["distribution"], entry["version"], entry["status"]) == (f"xflow-{kind}-{NAME}", "0.1.0", "ok")


def test_a_plugin_failing_in_its_plan_is_named_with_its_distribution(installed, tmp_path):
    _root, site = installed
    result = xflow(site, "--state-dir", str(tmp_path / "state"), "setup", str(WORD_COUNT), "--transport", NAME,
                   "--provider", "local", "--tracker", "sqlite", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith(f"error: transport '{NAME}' (xflow-transport-{NAME} 0.1.0) failed during plan: "
                            "NotImplementedError: KitdemoTransport.plan_setup"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_plugin_failing_in_its_constructor_is_named_with_its_distribution(installed, tmp_path):
    _root, site = installed
    result = xflow(site, "--state-dir", str(tmp_path / "state"), "setup", str(WORD_COUNT), "--transport",
                   "kitboom", "--provider", "local", "--tracker", "sqlite", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: transport 'kitboom' (xflow-transport-kitboom 0.1.0) failed during "
                                    "start: RuntimeError: kitboom cannot start"), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.db"))


def test_an_option_the_plugin_does_not_declare_lists_the_accepted_keys(installed, tmp_path):
    _root, site = installed
    result = xflow(site, "--state-dir", str(tmp_path / "state"), "setup", str(WORD_COUNT), "--transport", NAME,
                   "--provider", "local", "--tracker", "sqlite", "--option", "transport.host=x", cwd=tmp_path)
    assert result.returncode == 2
    assert "host" in result.stderr and "it accepts: url" in result.stderr, result.stderr


def test_skeleton_names_follow_the_convention():
    files = skeleton_files("tracker", "my-store")
    assert set(files) == {"setup.cfg", "pyproject.toml", "README.md", "xflow_tracker_my_store/__init__.py",
                          "xflow_tracker_my_store/tracker.py", "tests/test_xflow_tracker_my_store.py"}
    assert "name = xflow-tracker-my-store" in files["setup.cfg"]
    assert "    my-store = xflow_tracker_my_store" in files["setup.cfg"]
    assert "class MyStoreTrackerStore(TrackerStore):" in files["xflow_tracker_my_store/tracker.py"]
    assert "XFLOW_MY_STORE_URL" in files["README.md"]
    for path, text in files.items():
        if path.endswith(".py"):
            compile(text, path, "exec")


@pytest.mark.parametrize("kind, name, words", [
    ("transport", "Bad Name", "is not valid"),
    ("queue", "ok", "unknown plugin kind"),
])
def test_bad_names_are_refused(kind, name, words):
    with pytest.raises(XflowError, match=words):
        skeleton_files(kind, name)


def test_the_command_writes_the_skeleton_and_refuses_to_overwrite(tmp_path):
    runner = CliRunner()
    result = runner.invoke(new_plugin_command, ["transport", "demo", "--directory", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "xflow-transport-demo" in result.output
    assert (tmp_path / "xflow-transport-demo" / "xflow_transport_demo" / "transport.py").exists()
    again = runner.invoke(new_plugin_command, ["transport", "demo", "--directory", str(tmp_path)])
    assert isinstance(again.exception, XflowError)
    assert "already exists" in str(again.exception)
