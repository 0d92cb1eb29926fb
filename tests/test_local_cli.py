"""word_count and the CLI contract on the embedded default (local transport, local provider, sqlite tracker)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from xflow_cli_testing import SAMPLE, WORD_COUNT, clean_env, word_counts

FLOW = ["FileUploaded", "FileDownloaded", "FileParsed", "FileAggregated", "FileFiltered", "FileSummarized"]


def test_word_count_end_to_end_exact_counts(cli):
    data = {"path": str(SAMPLE)}
    summary = cli.json("run", WORD_COUNT, "--data", json.dumps(data))
    expected = word_counts(SAMPLE.read_text(encoding="utf-8"))
    assert summary["result"]["counts"] == expected
    assert summary["result"]["total"] == sum(expected.values())
    assert summary["status"] == "succeeded"
    assert [e["name"] for e in summary["events"]] == FLOW
    assert all(e["state"] == "processed" and e["count"] == 1 for e in summary["events"])
    assert summary["last_unprocessed_event"] is None
    assert set(summary) == {"workflow_id", "execution_id", "status", "events", "last_unprocessed_event", "result"}
    subscriber = summary["events"][0]["subscribers"][0]
    assert subscriber == {"name": "lambda_file_reader", "state": "succeeded", "attempts": 1, "error": None, "logs": []}

    # track, both spellings, answers the same from the folder where setup ran
    tracked = cli.json("track", WORD_COUNT, summary["execution_id"])
    assert tracked == {k: v for k, v in summary.items() if k != "result"}
    seed_form = cli("track", "-flow", "word_count", "-execution_id", summary["execution_id"])
    assert seed_form.returncode == 0, seed_form.stderr
    assert "FileSummarized" in seed_form.stdout and "every event was processed" in seed_form.stdout


def test_human_run_output_prints_counts_and_summary(cli):
    done = cli("run", WORD_COUNT, "--data", json.dumps({"path": str(SAMPLE)}))
    assert done.returncode == 0, done.stderr
    assert '"total": 31' in done.stdout
    assert "succeeded" in done.stdout and "last unprocessed event: none" in done.stdout


def test_setup_is_idempotent_and_dry_run_creates_nothing(cli, tmp_path):
    local = ["--transport", "local", "--provider", "local", "--tracker", "sqlite"]
    plan = cli.json("setup", WORD_COUNT, *local, "--dry-run")
    assert {"action": "create", "resource": "stream:word_count-FileUploaded"} in plan["changes"]
    assert not (tmp_path / ".xflow").exists()
    first = cli.json("setup", WORD_COUNT, *local)
    # a stream per event and the tracker store, a version and the live alias per function
    assert len(first["changes"]) == len(FLOW) + 1 + 2 * 5
    assert (first["transport"], first["provider"], first["tracker"]) == ("local", "local", "sqlite")
    second = cli.json("setup", "-file", WORD_COUNT, *local)
    assert second["changes"] == []
    removed = cli.json("teardown", WORD_COUNT)
    assert {c["action"] for c in removed["changes"]} == {"delete"}
    assert not (tmp_path / ".xflow").exists()
    assert cli.json("teardown", WORD_COUNT, *local)["changes"] == []


def test_setup_removes_streams_no_longer_in_the_file(cli, make_workflow):
    handlers = {"h.py": "def go(event, ctx):\n    pass\n"}
    two = "lambdas:\n  - {name: a, source: h.py, handler: go}\nsubscriptions:\n  - {name: One, subscribers: [a]}\n"
    path = make_workflow(two + "  - {name: Two, subscribers: [a]}\n", handlers, name="shrink.yaml")
    local = ["--transport", "local", "--provider", "local", "--tracker", "sqlite"]
    cli.json("setup", path, *local)
    path.write_text(two)
    changes = cli.json("setup", path, *local)["changes"]
    assert changes == [{"action": "delete", "resource": "stream:shrink-Two"}]


def test_publish_then_worker_then_track(cli):
    cli.json("setup", WORD_COUNT, "--transport", "local", "--provider", "local", "--tracker", "sqlite")
    published = cli("publish", WORD_COUNT, "FileUploaded", json.dumps({"path": str(SAMPLE)}), "--execution-id", "112233")
    assert published.returncode == 0, published.stderr
    assert published.stdout.strip() == "112233"
    pending = cli.json("track", WORD_COUNT, "112233")
    assert pending["status"] == "running" and pending["events"][0]["state"] == "pending"
    assert pending["last_unprocessed_event"] == "FileUploaded"
    worker = cli.popen("worker", WORD_COUNT)
    try:
        deadline = time.monotonic() + 60
        while cli.json("track", WORD_COUNT, "112233")["status"] == "running":
            assert time.monotonic() < deadline, "the execution did not finish"
            time.sleep(0.2)
    finally:
        worker.terminate()
        assert worker.wait(timeout=20) == 0
    assert cli.json("track", WORD_COUNT, "112233")["status"] == "succeeded"


def test_publish_generates_an_execution_id_and_rejects_bad_data(cli):
    cli.json("setup", WORD_COUNT, "--transport", "local", "--provider", "local", "--tracker", "sqlite")
    done = cli("publish", WORD_COUNT, "FileUploaded", '{"path": "x"}')
    assert done.returncode == 0 and len(done.stdout.strip()) == 32
    for args, message in [
        (["FileUploaded", "[1, 2]"], "DATA must be a JSON object"),
        (["FileUploaded", "{not json"], "DATA is not valid JSON"),
        (["NoSuchEvent", "{}"], "has no event 'NoSuchEvent'"),
        (["FileUploaded", '{"execution_id": "a"}', "--execution-id", "b"], "contradicts"),
    ]:
        bad = cli("publish", WORD_COUNT, *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert message in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_publish_before_setup_says_what_to_do(cli):
    done = cli("publish", WORD_COUNT, "FileUploaded", "{}", "--transport", "local", "--tracker", "sqlite")
    assert done.returncode == 2 and "run 'xflow setup" in done.stderr


def test_unknown_plugin_lists_installed(cli):
    done = cli("run", WORD_COUNT, "--transport", "carrier-pigeon")
    assert done.returncode == 2
    assert "unknown transport 'carrier-pigeon'; installed transports:" in done.stderr and "local" in done.stderr


def test_unknown_option_lists_accepted_keys(cli):
    done = cli("run", WORD_COUNT, "--option", "transport.colour=red")
    assert done.returncode == 2
    assert "does not accept option 'colour'" in done.stderr and "partitions" in done.stderr
    done = cli("run", WORD_COUNT, "--option", "path=/tmp/x")
    assert done.returncode == 2 and "say which: --option transport.path=VALUE" in done.stderr


def test_unwritable_state_folder(cli, tmp_path):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    done = cli("--state-dir", blocker / "state", "run", WORD_COUNT)
    assert done.returncode == 2 and "choose a writable state folder" in done.stderr
    assert "Traceback" not in done.stderr


def test_handler_that_cannot_be_imported_is_named_with_its_source(cli, make_workflow):
    path = make_workflow("lambdas:\n  - {name: a, source: broken.py, handler: go}\n"
                         "subscriptions:\n  - {name: E, subscribers: [a]}\n",
                         {"broken.py": "import nowhere_module\n\ndef go(event, ctx):\n    pass\n"})
    done = cli("run", path)
    assert done.returncode == 2
    assert "cannot load handler 'go'" in done.stderr and "broken.py" in done.stderr and "nowhere_module" in done.stderr
    missing = make_workflow("lambdas:\n  - {name: a, source: ok.py, handler: absent}\n"
                            "subscriptions:\n  - {name: E, subscribers: [a]}\n", {"ok.py": "x = 1\n"}, name="m.yaml")
    done = cli("run", missing)
    assert done.returncode == 2 and "defines no" in done.stderr and "'absent'" in done.stderr


def test_relative_source_resolves_against_the_workflow_folder(cli, tmp_path):
    # run from a folder that is not the example's: sources still load
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-m", "xflow.cli", "run", str(WORD_COUNT), "--data",
                           json.dumps({"path": str(SAMPLE)}), "--output", "json"], cwd=elsewhere,
                          capture_output=True, text=True, env=clean_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["result"]["total"] == 31
    assert (elsewhere / ".xflow" / "word_count" / "setup.json").exists()


def test_graph_mermaid_and_dot(cli):
    done = cli("graph", WORD_COUNT)
    assert done.returncode == 0
    assert done.stdout.startswith("flowchart LR")
    assert "ev_FileUploaded --> fn_lambda_file_reader" in done.stdout
    assert "fn_lambda_summarize -.-> ev_FileSummarized" in done.stdout
    dot = cli("graph", WORD_COUNT, "--format", "dot")
    assert '"FileParsed" -> "lambda_combiner";' in dot.stdout


def test_plugins_lists_builtins_with_distribution(cli):
    infos = cli.json("plugins")
    found = {(i["kind"], i["name"]): i for i in infos}
    for key in [("transport", "local"), ("provider", "local"), ("tracker", "sqlite")]:
        assert found[key]["distribution"] == "xflow" and found[key]["status"] == "ok"


def test_help_is_fast_and_imports_no_backend_client():
    code = ("import sys, time; t = time.perf_counter(); from xflow.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('boto3', 'botocore', 'kafka', 'confluent_kafka', 'marshmallow', 'redis', 'psycopg')"
            " if m in sys.modules]\nprint(heavy, time.perf_counter() - t, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=60)
    heavy, _ = done.stderr.strip().rsplit(" ", 1)
    assert heavy == "[]"
    assert "validate" in done.stdout and "teardown" in done.stdout


def test_teardown_without_a_setup_record_asks_which_backends(cli, tmp_path):
    done = cli("teardown", WORD_COUNT)
    assert done.returncode == 2 and "has no setup record" in done.stderr and "--transport kinesis" in done.stderr
    assert not (tmp_path / ".xflow").exists()
