"""The workflow loader against hostile and malformed files, and what `xflow validate` checks beyond the file.

- property tests: any bytes, any YAML document, YAML-ish token soup and mutations of word_count either load
  or raise XflowError, never anything else, and every message line is one line;
- the corpus in tests/malformed/: each file starts with the exact problems it must give;
- examples: resource limits (size, aliases, nesting, FIFO, at most 50 problems printed), strict numbers,
  terminal events, cycles, ``general.hop_limit``, and validate's checks of sources, handlers, plugins and runtimes.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from xflow_cli_testing import ROOT, SEED, WORD_COUNT, clean_env

from xflow.core.config import EVENT_NAME, FUNCTION_NAME, MAX_FILE_BYTES, WORKFLOW_ID, load_workflow
from xflow.core.errors import WorkflowFileError, XflowError
from xflow.core.model import Workflow

YAML_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
MALFORMED = Path(__file__).resolve().parent / "malformed"
#: examples per property; raise it for a longer fuzzing run (XFLOW_FUZZ_EXAMPLES=20000)
EXAMPLES = int(os.environ.get("XFLOW_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
WORD_COUNT_DATA = yaml.safe_load(WORD_COUNT.read_text(encoding="utf-8"))
VALID = """\
lambdas:
  - name: a
    source: s3://b/k.py
    handler: h
subscriptions:
  - name: E
    subscribers: [a]
"""


# -- helpers -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with word_count's handlers, so that mutations which stay valid also load."""
    folder = tmp_path_factory.mktemp("fuzz")
    for handler in (WORD_COUNT.parent).glob("*.py"):
        shutil.copy(handler, folder / handler.name)
    return folder


def check_outcome(path: Path, content: bytes) -> Workflow | None:
    """Load ``path``: a Workflow, or an XflowError whose every line is one line; anything else fails the test."""
    path.write_bytes(content)
    try:
        workflow = load_workflow(path)
    except XflowError as exc:
        check_error(exc, path, content)
        event("refused with a WorkflowFileError" if isinstance(exc, WorkflowFileError) else "refused with an XflowError")
        return None
    check_workflow(workflow)
    event("loaded")
    return workflow


def check_error(exc: XflowError, path: Path, content: bytes) -> None:
    text = str(exc)
    assert text and len(text.splitlines()) == 1, repr(text)
    for line in exc.lines:
        assert len(line.splitlines()) == 1, repr(line)
    if isinstance(exc, WorkflowFileError):
        assert exc.problems, exc
        # the lines YAML counts: it also breaks lines at a lone CR, NEL, LS and PS
        last_line = len(YAML_LINE_BREAK.findall(content.decode("utf-8", "replace"))) + 1
        for line in exc.problems:
            found = re.match(re.escape(str(path)) + r":(\d+):", line)
            assert found, repr(line)
            assert 1 <= int(found.group(1)) <= last_line, (line, last_line)
        assert len(exc.lines) <= 51


def check_workflow(workflow: Workflow) -> None:
    """What a loaded workflow promises: names that match their patterns whole, sane numbers, known events."""
    assert WORKFLOW_ID.fullmatch(workflow.id)
    assert 1 <= workflow.hop_limit <= 1_000_000 and type(workflow.hop_limit) is int
    for name in workflow.flow:
        assert EVENT_NAME.fullmatch(name) and "\n" not in name
    for name, function in workflow.functions.items():
        assert FUNCTION_NAME.fullmatch(name)
        assert type(function.retries) is int and 0 <= function.retries <= 100
        assert type(function.memory) is int and type(function.batch_size) is int
        assert isinstance(function.timeout, float | int) and function.timeout > 0
        assert all(event in workflow.flow for event in function.publishes)
    for subscription in workflow.subscriptions:
        assert subscription.event in workflow.flow
        assert all(s in workflow.functions for s in subscription.subscribers)


# -- property tests ------------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(["", "E", "Start\n", "¹", "${HOME}", "${XFLOW_NOPE}", "s3://b/k.py", "a.b", "*", "<<"]))
keys = st.sampled_from(["lambdas", "functions", "subscriptions", "workflows", "general", "aws", "transport",
                        "provider", "tracker", "name", "event", "subscribers", "source", "handler", "publishes",
                        "retries", "timeout", "memory", "batch_size", "flow", "id", "options", "hop_limit",
                        "runtime", "environment", "<<", "_schema", "key", "value"]) | st.text(max_size=8)
documents = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                         | st.dictionaries(keys, children, max_size=5), max_leaves=25)


@FUZZ
@given(content=st.binary(max_size=1500))
def test_any_bytes_load_or_raise_xflow_error(fuzz_dir, content):
    check_outcome(fuzz_dir / "bytes.yaml", content)


@FUZZ
@given(document=documents, flow_style=st.sampled_from([None, True, False]), unicode=st.booleans())
def test_any_yaml_document_loads_or_raises_xflow_error(fuzz_dir, document, flow_style, unicode):
    text = yaml.safe_dump(document, default_flow_style=flow_style, allow_unicode=unicode, sort_keys=False)
    check_outcome(fuzz_dir / "document.yaml", text.encode("utf-8"))


TOKENS = ["lambdas:", "functions:", "subscriptions:", "workflows:", "general:", "- ", "  ", "    ", "\n", "name: E",
          "name: a", "subscribers: [a]", "subscribers: []", "source: s3://b/k.py", "handler: h", "retries: 2.7",
          "&a ", "&b ", "*a", "*b", "<<: ", "<<: *a", "!!binary aGk=", "!Ref ", "!!python/name:os.system ", "!!set ",
          "!!int ", "!!omap ", "[", "]", "{", "}", ": ", ", ", "'", '"', "# c", "---", "...", "? ", "|", ">", "%YAML 1.1",
          "%TAG ! tag:x,2000:", "\t", "\x00", "\x85", "\u2028", "\ufeff", "¹", "9", "1.5", "1e999", "true", "~", "null",
          "\\n", "\\u2028", "${HOME}", "${X", "99999999999999999999999999", "2024-99-99", "0x1F", ".nan"]


@FUZZ
@given(tokens=st.lists(st.sampled_from(TOKENS), max_size=60))
def test_yaml_token_soup_loads_or_raises_xflow_error(fuzz_dir, tokens):
    check_outcome(fuzz_dir / "soup.yaml", "".join(tokens).encode("utf-8", "surrogatepass"))


def _paths(value: Any, where: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [where]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_paths(item, where + (key,)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_paths(item, where + (index,)))
    return found


@st.composite
def word_count_mutants(draw: st.DrawFn) -> dict[str, Any]:
    """word_count with 1 to 4 random edits: a value replaced, a key or item removed, added or renamed."""
    data = copy.deepcopy(WORD_COUNT_DATA)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(data)
        where = draw(st.sampled_from(paths[1:]))
        parent = data
        for part in where[:-1]:
            parent = parent[part]
        last = where[-1]
        action = draw(st.sampled_from(["replace", "delete", "add", "rename", "duplicate"]))
        if action == "replace":
            parent[last] = draw(documents)
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(documents)
        elif action == "add":
            parent.insert(last, draw(documents))
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(last)
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    return data


@FUZZ
@given(data=word_count_mutants())
def test_word_count_mutations_load_or_raise_xflow_error(fuzz_dir, data):
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    check_outcome(fuzz_dir / "mutant.yaml", text.encode("utf-8"))


@FUZZ
@given(cuts=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 40), st.sampled_from(TOKENS)), min_size=1,
                     max_size=4))
def test_word_count_text_edits_load_or_raise_xflow_error(fuzz_dir, cuts):
    text = WORD_COUNT.read_text(encoding="utf-8")
    for at, length, token in cuts:
        at = at % (len(text) + 1)
        text = text[:at] + token + text[at + length:]
    check_outcome(fuzz_dir / "edited.yaml", text.encode("utf-8", "surrogatepass"))


def test_the_unmutated_example_passes_the_same_checks(fuzz_dir):
    path = fuzz_dir / "same.yaml"
    path.write_text(yaml.safe_dump(WORD_COUNT_DATA, sort_keys=False))
    workflow = load_workflow(path)
    check_workflow(workflow)
    assert workflow.flow[-1] == "FileSummarized" and workflow.subscribers("FileSummarized") == ()


# -- the corpus of malformed files ---------------------------------------------------------------
CORPUS = sorted(MALFORMED.glob("*.yaml"))
#: a few corpus files that also go through the command line
THROUGH_CLI = ["lambdas-a-number.yaml", "tag-python-name.yaml", "alias-self-reference.yaml",
               "workflows-without-flow.yaml", "key-superscript-digit.yaml", "key-with-newline.yaml",
               "retries-a-fraction.yaml", "nesting-too-deep-flow.yaml"]


def expected_problems(path: Path) -> list[str]:
    """The ``# expect: LINE: dotted.path: message`` lines at the top of a corpus file (``{here}``: its folder)."""
    found = []
    for raw in path.read_bytes().splitlines():
        if not raw.startswith(b"#"):
            break
        if raw.startswith(b"# expect: "):
            found.append(raw[len(b"# expect: "):].decode("utf-8").replace("{here}", str(path.parent)))
    return found


def test_the_corpus_is_large_and_every_file_states_what_it_expects():
    assert len(CORPUS) >= 100
    for path in CORPUS:
        assert expected_problems(path), path.name
    assert set(THROUGH_CLI) <= {p.name for p in CORPUS}


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_malformed_file_gives_exactly_its_problems(path, monkeypatch):
    monkeypatch.delenv("XFLOW_CORPUS_UNSET_VAR", raising=False)
    if not yaml.__with_libyaml__ and any("YAML syntax error" in line for line in expected_problems(path)):
        pytest.skip("the syntax errors are worded by libyaml, which this PyYAML lacks")
    with pytest.raises(WorkflowFileError) as caught:
        load_workflow(path)
    got = [line.removeprefix(f"{path}:") for line in caught.value.problems]
    assert got == expected_problems(path)
    check_error(caught.value, path, path.read_bytes())


@pytest.mark.parametrize("name", THROUGH_CLI)
def test_malformed_file_through_the_cli(cli, name):
    path = MALFORMED / name
    done = cli("validate", path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    expected = expected_problems(path)
    assert lines[0] == f"error: {path}: {len(expected)} problem{'s' if len(expected) > 1 else ''}"
    assert lines[1:] == [f"{path}:{line}" for line in expected]


# -- limits --------------------------------------------------------------------------------------
BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi", strict=True))


def test_billion_laughs_stops_at_the_alias_limit_quickly(cli, tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    assert path.stat().st_size < 500
    started = time.monotonic()
    done = cli("validate", path, timeout=30)
    assert time.monotonic() - started < 15
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{path}:6: f: aliases expand to more than 100,000 values" in done.stderr


def test_a_file_over_5_mb_is_refused_without_reading_it(cli, tmp_path):
    path = tmp_path / "big.yaml"
    with path.open("wb") as handle:
        handle.truncate(4 * 1024 * 1024 * 1024)  # sparse: reading it would take long and fill memory
    started = time.monotonic()
    done = cli("validate", path, timeout=60)
    assert time.monotonic() - started < 20
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"error: {path}: 4,294,967,296 bytes is too large; a workflow file may be at most "
                                   f"5 MB ({MAX_FILE_BYTES:,} bytes)")


def test_a_file_of_exactly_5_mb_is_read(tmp_path):
    path = tmp_path / "edge.yaml"
    filler = "#" * (MAX_FILE_BYTES - len(VALID) - 1) + "\n"
    path.write_text(VALID + filler)
    assert path.stat().st_size == MAX_FILE_BYTES
    assert load_workflow(path).flow == ("E",)


def test_at_most_50_problems_are_printed_then_a_count(cli, tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text(VALID + "".join(f"unknown_{i}: 1\n" for i in range(200)))
    done = cli("validate", path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == f"error: {path}: 200 problems"
    assert len(lines) == 52 and all(line.startswith(f"{path}:") for line in lines[1:51])
    assert lines[51] == "... and 150 more problems"
    data = cli.json("validate", path, expect=2)
    assert data["problem_count"] == 200 and len(data["problems"]) == 50


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_at_once(cli, tmp_path):
    fifo = tmp_path / "flow.yaml"
    os.mkfifo(fifo)
    done = cli("validate", fifo, timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"error: {fifo}: is a FIFO (named pipe), not a regular file "
                                   "(hint: give the path of a workflow file)")


def test_a_device_is_refused(tmp_path):
    with pytest.raises(XflowError, match="is a character device, not a regular file"):
        load_workflow("/dev/zero")


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a: ", "}")])
def test_50000_deep_nesting_is_a_problem_not_a_crash(cli, tmp_path, opening, closing):
    path = tmp_path / "deep.yaml"
    path.write_text(opening * 50_000 + "x" + closing * 50_000 + "\n")
    done = cli("validate", path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[1] == f"{path}:1: (yaml): nested deeper than 100 levels"


def test_nesting_inside_the_limit_is_read(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(VALID + "transport:\n  options:\n    deep: " + "[" * 97 + "]" * 97 + "\n")
    options = load_workflow(path).plugin_choice("transport").options
    depth, value = 0, options["deep"]
    while isinstance(value, list):
        depth, value = depth + 1, value[0] if value else None
    assert depth == 97


def test_aliases_and_merge_keys_within_limits_load(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("""\
lambdas:
  - &base {name: a, source: s3://b/k.py, handler: h, retries: 5, memory: 256}
  - <<: *base
    name: b
  - <<: [*base, {batch_size: 7}]
    name: c
    retries: 0
subscriptions:
  - {name: E, subscribers: [a, b, c]}
""")
    functions = load_workflow(path).functions
    assert [(f.retries, f.memory, f.batch_size) for f in functions.values()] == [(5, 256, 100), (5, 256, 100),
                                                                                 (0, 256, 7)]


# -- numbers and defaults ------------------------------------------------------------------------
def _write(tmp_path: Path, text: str, name: str = "flow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_zero_retries_is_kept_not_replaced_by_the_default(tmp_path):
    general_zero = load_workflow(_write(tmp_path, "general: {retries: 0}\n" + VALID))
    assert general_zero.functions["a"].retries == 0
    own_zero = load_workflow(_write(tmp_path, "general: {retries: 5}\n" + VALID.replace("handler: h", "handler: h\n"
                                                                                          "    retries: 0")))
    assert own_zero.functions["a"].retries == 0
    defaults = load_workflow(_write(tmp_path, VALID))
    assert (defaults.functions["a"].retries, defaults.functions["a"].timeout) == (2, 30.0)
    general_timeout = load_workflow(_write(tmp_path, "general: {lambda_timeout_time: 0.5}\n" + VALID))
    assert general_timeout.functions["a"].timeout == 0.5


@pytest.mark.parametrize("field, value", [("retries", "2.7"), ("memory", "256.5"), ("batch_size", "1.5"),
                                          ("retries", "2.0"), ("retries", "true")])
def test_fractions_are_refused_not_truncated(tmp_path, field, value):
    path = _write(tmp_path, VALID.replace("handler: h", f"handler: h\n    {field}: {value}"))
    with pytest.raises(WorkflowFileError) as caught:
        load_workflow(path)
    shown = repr(yaml.safe_load(value))
    assert caught.value.problems == [f"{path}:5: lambdas.0.{field}: must be a whole number, not {shown}"]


def test_whole_numbers_from_the_environment_still_work(tmp_path, monkeypatch):
    monkeypatch.setenv("XFLOW_TEST_RETRIES", "4")
    path = _write(tmp_path, VALID.replace("handler: h", "handler: h\n    retries: ${XFLOW_TEST_RETRIES}"))
    assert load_workflow(path).functions["a"].retries == 4
    monkeypatch.setenv("XFLOW_TEST_RETRIES", "4.5")
    with pytest.raises(WorkflowFileError) as caught:
        load_workflow(path)
    assert caught.value.problems == [f"{path}:5: lambdas.0.retries: must be a whole number, not '4.5'"]


def test_hop_limit_defaults_to_1000_and_can_be_set(tmp_path):
    assert load_workflow(_write(tmp_path, VALID)).hop_limit == 1000
    workflow = load_workflow(_write(tmp_path, "general: {hop_limit: 7}\n" + VALID))
    assert workflow.hop_limit == 7 and workflow.general["hop_limit"] == 7
    assert load_workflow(_write(tmp_path, "general: {hop_limit: 1000000}\n" + VALID)).hop_limit == 1_000_000


# -- terminal events -----------------------------------------------------------------------------
TERMINAL = """\
lambdas:
  - name: first
    source: steps.py
    handler: first
subscriptions:
  - name: Start
    subscribers: [first]
  - name: Done
    subscribers: []
"""
STEPS = """\
def first(event, ctx):
    ctx.publish("Done", {"n": event.get("n", 0) + 1})
"""


def test_an_event_without_subscribers_is_declared_and_has_a_stream(cli, make_workflow):
    path = make_workflow(TERMINAL, {"steps.py": STEPS})
    workflow = load_workflow(path)
    assert workflow.events == ("Start", "Done") and workflow.subscribers("Done") == ()
    assert cli.json("validate", path)["events"] == ["Start", "Done"]
    plan = cli.json("setup", path, "--transport", "local", "--provider", "local", "--tracker", "sqlite", "--dry-run")
    assert {"action": "create", "resource": "stream:flow-Done"} in plan["changes"]


def test_a_handler_publishes_a_terminal_event_not_listed_in_publishes(cli, make_workflow):
    path = make_workflow(TERMINAL, {"steps.py": STEPS})
    summary = cli.json("run", path, "--data", json.dumps({"n": 41}), "--timeout", "60")
    assert summary["status"] == "succeeded", summary
    assert summary["result"]["n"] == 42
    done = [e for e in summary["events"] if e["name"] == "Done"]
    assert done and done[0]["state"] == "processed" and done[0]["count"] == 1 and done[0]["subscribers"] == []


# -- cycles --------------------------------------------------------------------------------------
PING_PONG = """\
lambdas:
  - {name: ping, source: h.py, handler: go, publishes: [Pong]}
  - {name: pong, source: h.py, handler: go, publishes: [Ping]}
  - {name: echo, source: h.py, handler: go, publishes: [Echo, Out]}
subscriptions:
  - {name: Ping, subscribers: [ping]}
  - {name: Pong, subscribers: [pong]}
  - {name: Echo, subscribers: [echo]}
  - {name: Out, subscribers: []}
"""
HANDLER = {"h.py": "def go(event, ctx):\n    pass\n"}


def test_cycles_of_events_are_warned_about_and_still_valid(cli, make_workflow):
    path = make_workflow(PING_PONG, HANDLER)
    done = cli("validate", path)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "cycle" in line]
    assert warnings == [
        f"warning: {path}: events form a cycle: Ping -> Pong -> Ping (through ping, pong); an execution can go round "
        "it until general.hop_limit (1000) hops",
        f"warning: {path}: events form a cycle: Echo -> Echo (through echo); an execution can go round it until "
        "general.hop_limit (1000) hops",
    ]


def test_a_longer_cycle_names_its_path_and_the_hop_limit(cli, make_workflow):
    path = make_workflow("""\
        general: {hop_limit: 50}
        lambdas:
          - {name: f1, source: h.py, handler: go, publishes: [B]}
          - {name: f2, source: h.py, handler: go, publishes: [C, Out]}
          - {name: f3, source: h.py, handler: go, publishes: [A]}
        subscriptions:
          - {name: A, subscribers: [f1]}
          - {name: B, subscribers: [f2]}
          - {name: C, subscribers: [f3]}
          - {name: Out, subscribers: []}
        """, HANDLER)
    done = cli("validate", path)
    assert done.returncode == 0
    assert (f"warning: {path}: events form a cycle: A -> B -> C -> A (through f1, f2, f3); an execution can go round "
            "it until general.hop_limit (50) hops") in done.stderr.splitlines()


def test_no_cycle_no_warning(cli):
    done = cli("validate", WORD_COUNT)
    assert done.returncode == 0 and "cycle" not in done.stderr


# -- what validate checks beyond the file --------------------------------------------------------
DEEP = """\
provider: {name: lambda}
transport: kafak
tracker: {name: nosuch}
general: {runtime: python2.7}
lambdas:
  - {name: a, source: h.py, handler: go}
  - {name: b, source: h.py, handler: gone, runtime: python3.12}
  - {name: c, source: broken.py, handler: go, runtime: python3.9}
  - {name: d, source: "ftp://host/x.py", handler: go, runtime: python3.12}
  - {name: e, source: "s3://bucket-only", handler: go, runtime: python3.12}
  - {name: f, source: "git+https://host/repo.git", handler: go, runtime: python3.12}
  - {name: g, source: pkg, handler: mod.go, runtime: python3.12}
  - {name: h, source: pkg, handler: missing.go, runtime: python3.12}
subscriptions:
  - {name: E, subscribers: [a, b, c, d, e, f, g, h]}
"""
DEEP_FILES = {"h.py": "def go(event, ctx):\n    pass\n", "broken.py": "def go(event, ctx:\n",
              "pkg/mod.py": "from os import path as go\n"}


def _deep_workflow(tmp_path: Path, text: str = DEEP) -> Path:
    folder = tmp_path / "deep"
    for name, code in DEEP_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(code)
    path = folder / "flow.yaml"
    path.write_text(text)
    return path


def test_validate_reports_what_setup_would_find_all_at_once(cli, tmp_path):
    path = _deep_workflow(tmp_path)
    assert load_workflow(path).id == "flow"  # the file itself is fine
    done = cli("validate", path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    supported = "python3.11, python3.12, python3.13, python3.14"
    assert done.stderr.splitlines() == [
        f"error: {path}: 10 problems",
        f"{path}:2: transport.name: unknown transport 'kafak'; installed transports: "
        + ", ".join(_installed("transport")) + " (did you mean 'kafka'?)",
        f"{path}:3: tracker.name: unknown tracker 'nosuch'; installed trackers: " + ", ".join(_installed("tracker"))
        + "; install a distribution named xflow-tracker-nosuch",
        f"{path}:4: general.runtime: runtime 'python2.7' of function 'a' is not accepted by provider 'lambda'; "
        f"supported: {supported}",
        f"{path}:7: lambdas.1.handler: h.py in source 'h.py' defines no 'gone'",
        f"{path}:8: lambdas.2.handler: broken.py cannot be parsed: '(' was never closed (broken.py, line 1)",
        f"{path}:8: lambdas.2.runtime: runtime 'python3.9' of function 'c' is not accepted by provider 'lambda'; "
        f"supported: {supported}",
        f"{path}:9: lambdas.3.source: 'ftp://host/x.py' uses a scheme xflow cannot fetch (ftp); use a local path, "
        "s3://BUCKET/KEY or a git link (git://, https://github.com/, https://HOST/REPO.git/PATH, git+URL)",
        f"{path}:10: lambdas.4.source: source 's3://bucket-only': an S3 source reads s3://BUCKET/KEY",
        f"{path}:11: lambdas.5.source: source 'git+https://host/repo.git': a git+URL source needs "
        "'#path=FILE_OR_FOLDER'",
        f"{path}:13: lambdas.7.handler: no file __init__.py in source 'pkg'",
    ]
    data = cli.json("validate", path, expect=2)
    assert data["valid"] is False and data["problem_count"] == 10 and len(data["problems"]) == 10


def test_validate_lists_problems_of_the_file_and_of_setup_together(cli, tmp_path):
    path = _deep_workflow(tmp_path, VALID.replace("s3://b/k.py", "h.py").replace("handler: h", "handler: gone\n"
                                                                                   "    colour: red"))
    done = cli("validate", path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[1:] == [
        f"{path}:4: lambdas.0.handler: h.py in source 'h.py' defines no 'gone'",
        f"{path}:5: lambdas.0.colour: unknown key (known keys: name, handler, source, runtime, description, "
        "publishes, retries, timeout, memory, batch_size, starting_position, bisect_on_error, environment, concurrency, "
        "architecture, requirements)",
    ]


def _installed(kind: str) -> list[str]:
    from xflow.core.plugins import PluginRegistry

    return PluginRegistry().names(kind)


def test_validate_passes_when_sources_handlers_plugins_and_runtimes_are_right(cli, tmp_path):
    text = DEEP.replace("transport: kafak", "transport: kinesis").replace("nosuch", "cloudwatch")
    text = text.replace("python2.7", "python3.12").replace("python3.9", "python3.13")
    text = text.replace("gone", "go").replace("broken.py", "h.py").replace("ftp://host/x.py", "s3://b/k.py")
    text = text.replace("s3://bucket-only", "s3://bucket/key.zip")
    text = text.replace("git+https://host/repo.git", "git+https://host/repo.git@main#path=h.py")
    text = text.replace("missing.go", "mod.go")
    done = cli("validate", _deep_workflow(tmp_path, text))
    assert done.returncode == 0, done.stderr
    assert "valid: workflow 'flow', 8 functions" in done.stdout


def test_runtimes_are_free_when_the_file_names_no_lambda_provider(cli, tmp_path):
    text = DEEP.replace("provider: {name: lambda}\n", "provider: {name: local}\n").replace("kafak", "local")
    text = text.replace("nosuch", "sqlite").replace("gone", "go").replace("broken.py", "h.py")
    text = text.replace("ftp://host/x.py", "h.py").replace("s3://bucket-only", "h.py")
    text = text.replace("git+https://host/repo.git", "h.py").replace("missing.go", "mod.go")
    done = cli("validate", _deep_workflow(tmp_path, text))
    assert done.returncode == 0, done.stderr
    assert cli("validate", SEED).returncode == 0  # the seed's python2.7 is fine until a provider refuses it


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_validate_and_setup_refuse_a_fifo_as_handler_file_at_once(cli, tmp_path):
    path = _deep_workflow(tmp_path, VALID.replace("s3://b/k.py", "pipe.py"))
    os.mkfifo(path.parent / "pipe.py")
    done = cli("validate", path, timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[1:] == [
        f"{path}:4: lambdas.0.handler: pipe.py in source 'pipe.py' is not a regular file"]
    done = cli("setup", path, "--dry-run", "--transport", "local", "--provider", "local", "--tracker", "sqlite",
               timeout=30)
    assert done.returncode == 2 and "pipe.py in source 'pipe.py' is not a regular file" in done.stderr, done.stderr


def test_validate_refuses_a_source_folder_that_setup_would_refuse(cli, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret\n")
    path = _deep_workflow(tmp_path, VALID.replace("s3://b/k.py", "code").replace("handler: h", "handler: mod.go")
                          + "  - {name: F, subscribers: [b]}\n"
                          + "  - {name: G, subscribers: [c]}\n")
    path.write_text(path.read_text().replace("subscriptions:", "  - {name: b, source: inside, handler: mod.go}\n"
                                                                 "  - {name: c, source: fifo, handler: mod.go}\n"
                                                                 "subscriptions:"))
    for folder in ("code", "inside", "fifo"):
        (path.parent / folder).mkdir()
        (path.parent / folder / "mod.py").write_text(DEEP_FILES["h.py"])
    os.symlink(secret, path.parent / "code" / "secret.txt")  # leaves the source: refused
    os.symlink("mod.py", path.parent / "inside" / "alias.py")  # stays inside: shipped as a copy
    if hasattr(os, "mkfifo"):
        os.mkfifo(path.parent / "fifo" / "data.pipe")
    done = cli("validate", path, timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    expected = [f"{path}:3: lambdas.0.source: source 'code': symbolic link 'secret.txt' points outside the source "
                f"({str(secret)!r})"]
    if hasattr(os, "mkfifo"):
        expected.append(f"{path}:6: lambdas.2.source: source 'fifo': 'data.pipe' is not a regular file, a folder or "
                        "a link")
    assert done.stderr.splitlines()[1:] == expected


def test_validate_never_runs_the_users_code(cli, tmp_path):
    marker = tmp_path / "ran"
    path = _deep_workflow(tmp_path, VALID.replace("s3://b/k.py", "evil.py").replace("handler: h", "handler: nothere"))
    (path.parent / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nimport sys\nsys.exit(3)\n")
    done = cli("validate", path)
    assert done.returncode == 2
    assert f"{path}:4: lambdas.0.handler: evil.py in source 'evil.py' defines no 'nothere'" in done.stderr
    assert not marker.exists()


def test_validate_stays_offline_and_imports_no_cloud_or_broker_client(tmp_path):
    path = _deep_workflow(tmp_path, DEEP.replace("kafak", "kinesis").replace("nosuch", "cloudwatch"))
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "xflow.cli", "validate", str(path)],
                          capture_output=True, text=True, cwd=tmp_path, env=clean_env(), timeout=60)
    assert done.returncode == 2
    modules = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "xflow.providers.aws_lambda" in modules
    assert not {m for m in modules if m.split(".")[0] in {"boto3", "botocore", "kafka", "confluent_kafka", "requests"}}


def test_the_readme_states_the_limits_and_when_publishes_is_needed():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "5 MB" in readme and "50 problems" in readme and "hop_limit" in readme
    assert "subscribers: []" in readme
