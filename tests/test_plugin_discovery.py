"""Plugins come from entry points in group `xflow`: a throwaway installed distribution is discovered and used."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from xflow_cli_testing import SAMPLE, WORD_COUNT


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Installs two small distributions with pip into a folder: a working transport and a broken plugin."""
    base = tmp_path_factory.mktemp("dists")
    good = base / "xflow-transport-echolog"
    (good / "xflow_transport_echolog").mkdir(parents=True)
    (good / "xflow_transport_echolog" / "__init__.py").write_text(textwrap.dedent('''
        """A transport that stores the log in a differently named file, to prove third-party discovery."""
        from xflow import hookimpl
        from xflow.transports.local import LocalTransport

        class EchologTransport(LocalTransport):
            name = "echolog"
            description = "test transport from a separate distribution"

            def stream_name(self, event):
                return f"{self.workflow_id}-echo-{event}"

        @hookimpl
        def xflow_transports():
            return [EchologTransport]
        '''))
    (good / "setup.cfg").write_text(textwrap.dedent("""
        [metadata]
        name = xflow-transport-echolog
        version = 1.2.3
        [options]
        packages = xflow_transport_echolog
        [options.entry_points]
        xflow =
            echolog = xflow_transport_echolog
        """))
    broken = base / "xflow-tracker-broken"
    (broken / "xflow_tracker_broken").mkdir(parents=True)
    (broken / "xflow_tracker_broken" / "__init__.py").write_text("import module_that_is_not_there\n")
    (broken / "setup.cfg").write_text(textwrap.dedent("""
        [metadata]
        name = xflow-tracker-broken
        version = 0.0.1
        [options]
        packages = xflow_tracker_broken
        [options.entry_points]
        xflow =
            broken = xflow_tracker_broken
        """))
    for project in (good, broken):
        (project / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\n'
                                                'build-backend = "setuptools.build_meta"\n')
    target = base / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(good), str(broken)], check=True, timeout=300)
    return target


def test_third_party_transport_is_discovered_and_used(cli, site, tmp_path):
    env = {"PYTHONPATH": str(site)}
    listed = cli.json("plugins", PYTHONPATH=str(site))
    echolog = next(p for p in listed if p["name"] == "echolog")
    assert (echolog["kind"], echolog["distribution"], echolog["version"]) == ("transport", "xflow-transport-echolog",
                                                                               "1.2.3")
    broken = next(p for p in listed if p["distribution"] == "xflow-tracker-broken")
    assert broken["status"] == "broken" and "module_that_is_not_there" in broken["error"]

    done = cli("run", WORD_COUNT, "--transport", "echolog", "--data", json.dumps({"path": str(SAMPLE)}),
               "--output", "json", **env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["total"] == 31
    # the broken plugin is reported once, as a warning naming its distribution; everything else worked
    assert done.stderr.count("xflow-tracker-broken") == 1 and "warning" in done.stderr
    import sqlite3

    streams = sqlite3.connect(tmp_path / ".xflow" / "word_count" / "events.db").execute(
        "SELECT name FROM streams").fetchall()
    assert ("word_count-echo-FileUploaded",) in streams


def test_third_party_plugins_are_listed_with_their_options(cli, site):
    """A subclass inherits its parent's typed options; a broken plugin is listed as broken, with no options."""
    listed = cli.json("plugins", "--options", PYTHONPATH=str(site))
    echolog = next(p for p in listed if p["name"] == "echolog")
    options = {o["name"]: o for o in echolog["options"]}
    assert set(options) == {"path", "partitions", "lease_seconds", "poll_interval", "max_record_bytes"}
    assert (options["partitions"]["type"], options["partitions"]["default"], options["partitions"]["env"]) == (
        "int", 4, "XFLOW_ECHOLOG_PARTITIONS")
    broken = next(p for p in listed if p["distribution"] == "xflow-tracker-broken")
    assert broken["status"] == "broken" and broken["options"] == []
    text = cli("plugins", "--options", PYTHONPATH=str(site))
    assert text.returncode == 0 and "XFLOW_ECHOLOG_PARTITIONS" in text.stdout, text.stderr
    assert "broken" in text.stdout and "module_that_is_not_there" in text.stdout

