"""Typed plugin options: declared once, converted the same way from the file, XFLOW_* variables and --option.

The conversion is property-tested; the rest goes through the front door: ``xflow plugins --options``, a bad value
on ``xflow setup`` (one line naming the plugin, the option and where the value came from), environment variables,
and a plugin declared in a test with the older ``options`` mapping (DeprecationWarning, values as given).
"""

from __future__ import annotations

import json
import math
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from xflow import Engine
from xflow.core import redact
from xflow.core.errors import XflowError
from xflow.core.options import (
    DURATION_UNITS,
    FALSE_WORDS,
    TRUE_WORDS,
    Option,
    OptionValueError,
    declared_options,
    env_name,
    env_values,
    resolve_options,
)
from xflow.core.plugins import PluginRegistry

FLOW = """
functions:
  - name: first
    source: steps.py
    handler: first
subscriptions:
  - event: A
    subscribers: [first]
"""
STEPS = """
def first(event, ctx):
    return None
"""
EMBEDDED = ("--provider", "local", "--tracker", "sqlite")

#: a transport from a distribution of its own (found through its entry point), with typed options and a secret one
#: whose name no word list knows; it logs the secret's value so that the test can see it masked
DEMO_MODULE = '''
"""A transport with typed options, for the tests."""
import logging

from xflow import hookimpl
from xflow.core.options import Option, declared_options
from xflow.transports.local import LocalTransport

log = logging.getLogger("xflow.demo")


class DemoTransport(LocalTransport):
    name = "demo"
    description = "the local transport with typed options"
    options = (
        *(o for o in declared_options(LocalTransport).values() if o.name not in ("partitions", "poll_interval")),
        Option("partitions", int, 4, "partitions per stream", minimum=1),
        Option("poll_interval", "duration", 0.05, "seconds between looks at an idle log", minimum=0.001),
        Option("signature_seed", str, None, "the seed of the signatures", secret=True),
        Option("fussy", bool, False, "log the seed when planning"),
    )

    def plan_setup(self, events):
        if self.context.option("fussy"):
            log.warning("planning with seed %s, %s partitions, polling every %ss", self.context.option("signature_seed"),
                        self.context.option("partitions"), self.context.option("poll_interval"))
        return super().plan_setup(events)


@hookimpl
def xflow_transports():
    return [DemoTransport]
'''


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for PYTHONPATH holding the demo distribution: its package and its metadata with the entry point."""
    site = tmp_path_factory.mktemp("demo-site")
    (site / "xflow_transport_demo").mkdir()
    (site / "xflow_transport_demo" / "__init__.py").write_text(DEMO_MODULE)
    info = site / "xflow_transport_demo-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xflow-transport-demo\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[xflow]\ndemo = xflow_transport_demo\n")
    return site


@pytest.fixture
def flow(make_workflow: Any) -> Path:
    return make_workflow(FLOW, {"steps.py": STEPS})


def one_line_error(done: Any) -> str:
    assert done.returncode == 2, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def stream_partitions(state: Path) -> set[int]:
    with sqlite3.connect(state / "flow" / "events.db") as db:
        return {row[0] for row in db.execute("SELECT partitions FROM streams")}


# -- conversion, property-tested ----------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(number=st.integers(min_value=-10**30, max_value=10**30), minimum=st.none() | st.integers(-5, 5),
       padding=st.sampled_from(["", " ", "\t", " \n"]))
def test_whole_numbers_come_through_as_text_or_numbers(number: int, minimum: int | None, padding: str) -> None:
    option = Option("n", int, None, "a number", minimum=minimum)
    for given_value in (number, str(number), f"{padding}{number}{padding}", float(number) if abs(number) < 2**52 else number):
        if minimum is not None and number < minimum:
            with pytest.raises(OptionValueError, match=f"at least {minimum}"):
                option.convert(given_value)
        else:
            converted = option.convert(given_value)
            assert converted == number and type(converted) is int


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=12))
def test_text_that_is_not_a_whole_number_is_refused(text: str) -> None:
    stripped = text.strip()
    body = stripped[1:] if stripped[:1] in "+-" else stripped
    assume(not (body and all("0" <= c <= "9" or c == "_" for c in body) and body[0] != "_" and body[-1] != "_"
                and "__" not in body))
    with pytest.raises(OptionValueError, match="not a whole number"):
        Option("n", int).convert(text)


@settings(max_examples=300, deadline=None)
@given(number=st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_round_trip_through_their_text(number: float) -> None:
    option = Option("x", float)
    assert option.convert(repr(number)) == number == option.convert(number)


@settings(max_examples=100, deadline=None)
@given(text=st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999"]), kind=st.sampled_from([float, "duration"]))
def test_numbers_that_are_not_finite_are_refused(text: str, kind: Any) -> None:
    with pytest.raises(OptionValueError, match="not finite"):
        Option("x", kind).convert(text)


@settings(max_examples=300, deadline=None)
@given(amount=st.floats(min_value=0, max_value=1e6, allow_nan=False), unit=st.sampled_from(sorted(DURATION_UNITS)),
       upper=st.booleans(), space=st.sampled_from(["", " "]))
def test_durations_take_a_unit(amount: float, unit: str, upper: bool, space: str) -> None:
    text = f"{amount:f}{space}{unit.upper() if upper else unit}"
    seconds = Option("d", "duration").convert(text)
    assert math.isclose(seconds, float(f"{amount:f}") * DURATION_UNITS[unit], rel_tol=1e-9, abs_tol=1e-12)
    assert Option("d", "duration").convert(seconds) == seconds


@settings(max_examples=100, deadline=None)
@given(amount=st.floats(min_value=0.001, max_value=1e6), unit=st.text(alphabet="abcdefghijklnopqrtuvwxyz", min_size=1,
                                                                     max_size=4))
def test_durations_with_an_unknown_unit_or_a_sign_are_refused(amount: float, unit: str) -> None:
    assume(unit not in DURATION_UNITS)
    with pytest.raises(OptionValueError, match="not a number of seconds"):
        Option("d", "duration").convert(f"{amount:f}{unit}")
    with pytest.raises(OptionValueError, match="negative"):
        Option("d", "duration").convert(-amount)


@settings(max_examples=200, deadline=None)
@given(word=st.sampled_from(TRUE_WORDS + FALSE_WORDS), case=st.sampled_from([str.lower, str.upper, str.title]),
       padding=st.sampled_from(["", " "]))
def test_true_and_false_in_words(word: str, case: Any, padding: str) -> None:
    assert Option("b", bool).convert(f"{padding}{case(word)}{padding}") is (word in TRUE_WORDS)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=8))
def test_other_words_are_neither_true_nor_false(text: str) -> None:
    assume(text.strip().lower() not in TRUE_WORDS + FALSE_WORDS)
    with pytest.raises(OptionValueError, match="not true or false"):
        Option("b", bool).convert(text)


@settings(max_examples=200, deadline=None)
@given(choices=st.lists(st.text(alphabet="abcdefXYZ-_", min_size=1, max_size=6), min_size=1, max_size=4, unique_by=str.lower),
       pick=st.integers(0, 3), upper=st.booleans(), stranger=st.text(max_size=6))
def test_a_choice_is_one_of_its_choices_in_any_case(choices: list[str], pick: int, upper: bool, stranger: str) -> None:
    option = Option("mode", "choice", None, "how", choices=tuple(choices))
    chosen = choices[pick % len(choices)]
    assert option.convert(f" {chosen.upper() if upper else chosen.lower()} ") == chosen
    assume(stranger.strip().lower() not in {c.lower() for c in choices})
    with pytest.raises(OptionValueError, match="unknown mode; choose one of"):
        option.convert(stranger)


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.text(alphabet="abc:/*019 ", min_size=1, max_size=8).map(str.strip).filter(bool), max_size=5))
def test_lists_come_as_lists_or_comma_separated_text(items: list[str]) -> None:
    option = Option("l", list)
    assert option.convert(items) == items == option.convert(",".join(items)) == option.convert(" , ".join(items) + ",")
    assert option.convert(json.dumps(items)) == items  # a JSON array as text


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(mapping=st.dictionaries(st.text(max_size=6), json_values, max_size=4))
def test_mappings_come_as_mappings_or_json_text(mapping: dict[str, Any]) -> None:
    option = Option("m", dict)
    assert option.convert(mapping) == mapping == option.convert(json.dumps(mapping))


@settings(max_examples=200, deadline=None)
@given(document=json_values)
def test_json_documents_come_as_data_or_text(document: Any) -> None:
    option = Option("j", "json")
    if isinstance(document, list | dict):
        assert option.convert(document) == document == option.convert(json.dumps(document))
    else:
        with pytest.raises(OptionValueError, match="not a JSON array or object"):
            option.convert(json.dumps(document))


anything = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | json_values
KINDS = [str, int, float, bool, "duration", list, dict, "json", "any"]


@settings(max_examples=500, deadline=None)
@given(kind=st.sampled_from([*KINDS, "choice"]), value=anything, minimum=st.none() | st.integers(-3, 3))
def test_conversion_either_refuses_in_words_or_is_stable(kind: Any, value: Any, minimum: int | None) -> None:
    """Any value at all: an OptionValueError (never another exception), or a value that converts to itself again."""
    bounded = kind in (int, float, "duration")
    option = Option("o", kind, None, "", choices=("a", "B") if kind == "choice" else (),
                    minimum=minimum if bounded else None)
    try:
        converted = option.convert(value)
    except OptionValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    if isinstance(converted, float) and math.isnan(converted):
        assert kind == "any"  # the value as given
        return
    assert option.convert(converted) == converted
    if kind != "any":
        assert isinstance(converted, {str: str, int: int, float: float, bool: bool, "duration": float, list: list,
                                      dict: dict, "json": list | dict, "choice": str}[kind])


@settings(max_examples=200, deadline=None)
@given(value=st.text(min_size=1, max_size=40), secret_value=st.text(alphabet="QZJK#@!?~^&", min_size=3, max_size=20),
       secret=st.booleans(),
       where=st.sampled_from(["--option", "environment variable XFLOW_DEMO_PARTITIONS", "the workflow file f.yaml"]))
def test_a_refused_value_is_one_line_naming_plugin_option_and_origin(value: str, secret_value: str, secret: bool,
                                                                     where: str) -> None:
    redact.forget_all()
    if secret:  # characters that appear nowhere else in the message: masking it cannot touch the rest
        value = secret_value
    option = Option("partitions", int, 4, "partitions per stream", minimum=1, secret=secret)
    try:
        option.convert(value)
    except OptionValueError:
        pass
    else:
        assume(False)
    with pytest.raises(XflowError) as caught:
        resolve_options("transport 'demo' (xflow-transport-demo)", {"partitions": option}, {"partitions": (value, where)})
    message = str(caught.value)
    assert "\n" not in message.strip()
    assert message.startswith("transport 'demo' (xflow-transport-demo): option partitions")
    shown_default = "***" if secret else "4"
    assert f"from {where}" in message
    assert f"(hint: partitions: partitions per stream (int >= 1, default {shown_default}))" in message
    if secret:
        assert "option partitions (value not shown: it is secret)" in message and value not in message
    else:
        assert "option partitions=" in message


def test_declarations_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="type"):
        Option("n", complex)
    with pytest.raises(ValueError, match="needs choices"):
        Option("mode", "choice")
    with pytest.raises(ValueError, match="the default 'many' is not a whole number"):
        Option("n", int, "many")
    with pytest.raises(ValueError, match="not a name"):
        Option("two words", str)
    assert Option("t", "duration", "2m").default == 120.0 and Option("c", str, "A", choices=("a", "b")).kind == "choice"

    class Twice:
        options = (Option("a", int), Option("a", str))

    with pytest.raises(TypeError, match="declares 'a' twice"):
        declared_options(Twice)


@pytest.mark.parametrize("plugin, key, variable", [
    ("local", "partitions", "XFLOW_LOCAL_PARTITIONS"),
    ("my-queue", "api.key", "XFLOW_MY_QUEUE_API_KEY"),
    ("kafka", "sasl_plain_password", "XFLOW_KAFKA_SASL_PLAIN_PASSWORD"),
    ("Qué", "x-y", "XFLOW_QU__X_Y"),
])
def test_environment_variable_names(plugin: str, key: str, variable: str) -> None:
    assert env_name(plugin, key) == variable
    assert env_values(plugin, "transport", [key], {variable: "7"}) == {key: ("7", variable)}


def test_the_plugins_variable_wins_over_the_kinds() -> None:
    environ = {"XFLOW_TRANSPORT_PARTITIONS": "5", "XFLOW_DEMO_PARTITIONS": "3", "XFLOW_TRANSPORT_OTHER": "x"}
    assert env_values("demo", "transport", ["partitions", "other"], environ) == {
        "partitions": ("3", "XFLOW_DEMO_PARTITIONS"), "other": ("x", "XFLOW_TRANSPORT_OTHER")}


# -- the older declaration: a mapping of descriptions --------------------------------------------
def test_the_older_options_mapping_works_with_a_deprecation_warning(flow: Path, tmp_path: Path) -> None:
    from xflow.core.hookspecs import hookimpl
    from xflow.trackers.sqlite import SqliteTrackerStore

    class LegacyTracker(SqliteTrackerStore):
        name = "legacy"
        options = {"path": "database file", "colour": "any colour", "api_key": "a key"}

    class Plugin:
        @hookimpl
        def xflow_tracker_stores(self) -> list[type]:
            return [LegacyTracker]

    registry = PluginRegistry()
    registry.register(Plugin())
    with pytest.warns(DeprecationWarning, match=r"LegacyTracker\.options is a mapping of descriptions"):
        engine = Engine(flow, transport="local", provider="local", tracker="legacy", registry=registry,
                        state_dir=tmp_path / "state", options={"tracker": {"colour": "3", "api_key": "k-123456"}})
        engine.setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per class
        tracker = engine.tracker
        assert tracker.context.option("colour") == "3"  # as given: no type was declared
        assert tracker.context.option("missing", "fallback") == "fallback"
        declared = declared_options(LegacyTracker)
    assert [(o.kind, o.secret) for o in declared.values()] == [("any", False), ("any", False), ("any", True)]
    record = json.loads((tmp_path / "state" / "flow" / "setup.json").read_text())
    assert record["tracker"] == {"name": "legacy", "options": {"colour": "3"}}  # the secret-named one left out
    with pytest.raises(XflowError, match=r"tracker 'legacy' .* does not accept option 'size' from Engine\(options=...\); "
                                         r"it accepts: api_key, colour, path"):
        Engine(flow, transport="local", provider="local", tracker="legacy", registry=registry,
               state_dir=tmp_path / "state", options={"tracker": {"size": "1"}}).check_plugins()
    engine.close()


def test_a_declaration_that_is_not_one_is_named(flow: Path, tmp_path: Path) -> None:
    from xflow.core.hookspecs import hookimpl
    from xflow.trackers.sqlite import SqliteTrackerStore

    class Careless(SqliteTrackerStore):
        name = "careless"
        options = ("path",)  # type: ignore[assignment]

    class Plugin:
        @hookimpl
        def xflow_tracker_stores(self) -> list[type]:
            return [Careless]

    registry = PluginRegistry()
    registry.register(Plugin(), distribution=("xflow-tracker-careless", "0.1"))
    with pytest.raises(XflowError, match=r"tracker 'careless' \(xflow-tracker-careless\) declares its options wrongly: "
                                         r".*holds 'path', which is not an Option"):
        Engine(flow, tracker="careless", registry=registry, state_dir=tmp_path / "state").check_plugins()


# -- through the front door -----------------------------------------------------------------------
def test_plugins_options_lists_every_plugins_options(cli: Any, demo_site: Path) -> None:
    listed = cli.json("plugins", "--options", PYTHONPATH=str(demo_site))
    demo = next(p for p in listed if p["name"] == "demo")
    assert (demo["distribution"], demo["version"], demo["status"]) == ("xflow-transport-demo", "2.0", "ok")
    options = {o["name"]: o for o in demo["options"]}
    assert options["partitions"] == {"name": "partitions", "type": "int", "default": 4, "minimum": 1, "maximum": None,
                                     "description": "partitions per stream", "secret": False, "choices": [],
                                     "env": "XFLOW_DEMO_PARTITIONS"}
    assert options["poll_interval"]["type"] == "duration" and options["poll_interval"]["default"] == 0.05
    assert options["signature_seed"]["secret"] is True and options["signature_seed"]["default"] is None
    for plugin in listed:
        assert plugin["status"] == "ok" and isinstance(plugin["options"], list), plugin
        for option in plugin["options"]:
            assert set(option) == {"name", "type", "default", "description", "secret", "minimum", "maximum", "choices",
                                   "env"}
            assert option["env"] == env_name(plugin["name"], option["name"])
    # without --options the listing keeps its shape
    assert all("options" not in p for p in cli.json("plugins", PYTHONPATH=str(demo_site)))

    text = cli("plugins", "--options", PYTHONPATH=str(demo_site))
    assert text.returncode == 0, text.stderr
    assert "transport demo (xflow-transport-demo 2.0)" in text.stdout
    for word in ("XFLOW_DEMO_SIGNATURE_SEED", "secret: the seed of the signatures", "int >= 1", "duration >= 0.001"):
        assert word in text.stdout, text.stdout


@pytest.mark.parametrize("origin", ["--option", "file", "environment", "kind environment", "record"])
def test_a_bad_value_on_setup_names_plugin_option_and_origin(cli: Any, demo_site: Path, make_workflow: Any,
                                                             tmp_path: Path, origin: str) -> None:
    text = FLOW + ("transport:\n  name: demo\n  options:\n    partitions: many\n" if origin == "file" else "")
    path = make_workflow(text, {"steps.py": STEPS})
    args: list[str] = ["setup", str(path), "--transport", "demo", *EMBEDDED]
    env = {"PYTHONPATH": str(demo_site)}
    expected = {"--option": "from --option", "file": f"from the workflow file {path} (transport.options)",
                "environment": "from environment variable XFLOW_DEMO_PARTITIONS",
                "kind environment": "from environment variable XFLOW_TRANSPORT_PARTITIONS",
                "record": "from the setup record .xflow/flow/setup.json"}[origin]
    if origin == "--option":
        args += ["--option", "partitions=many"]
    elif origin == "environment":
        env["XFLOW_DEMO_PARTITIONS"] = "many"
    elif origin == "kind environment":
        env["XFLOW_TRANSPORT_PARTITIONS"] = "many"
    elif origin == "record":
        assert cli(*args, **env).returncode == 0
        record_path = tmp_path / ".xflow" / "flow" / "setup.json"
        record = json.loads(record_path.read_text())
        record["transport"]["options"]["partitions"] = "many"
        record_path.write_text(json.dumps(record))
        args[0] = "teardown"
    line = one_line_error(cli(*args, **env))
    assert line == (f"error: transport 'demo' (xflow-transport-demo): option partitions='many' {expected} is not a "
                    "whole number (hint: partitions: partitions per stream (int >= 1, default 4))")
    if origin != "record":
        assert not (tmp_path / ".xflow").exists()  # nothing was created


def test_values_come_from_the_environment_below_option(cli: Any, demo_site: Path, flow: Path, tmp_path: Path) -> None:
    state = tmp_path / ".xflow"
    base = ("setup", flow, "--transport", "demo", *EMBEDDED)
    for env, options, partitions in [
        ({"XFLOW_TRANSPORT_PARTITIONS": "5"}, (), 5),
        ({"XFLOW_TRANSPORT_PARTITIONS": "5", "XFLOW_DEMO_PARTITIONS": " 3 "}, (), 3),
        ({"XFLOW_DEMO_PARTITIONS": "3"}, ("--option", "transport.partitions=2"), 2),
    ]:
        done = cli(*base, *options, PYTHONPATH=str(demo_site), **env)
        assert done.returncode == 0, done.stderr
        assert stream_partitions(state) == {partitions}
        assert cli("teardown", flow, PYTHONPATH=str(demo_site)).returncode == 0


def test_typed_values_reach_the_plugin(cli: Any, demo_site: Path, flow: Path) -> None:
    done = cli("-v", "setup", flow, "--transport", "demo", *EMBEDDED, "--option", "fussy=YES", "--option",
               "poll_interval=250ms", "--option", "partitions=+7", PYTHONPATH=str(demo_site),
               XFLOW_DEMO_SIGNATURE_SEED="s33d-from-the-environment")
    assert done.returncode == 0, done.stderr
    assert "planning with seed ***, 7 partitions, polling every 0.25s" in done.stderr
    assert "s33d" not in done.stderr + done.stdout


def test_a_secret_option_never_appears_in_output_or_state_files(cli: Any, demo_site: Path, flow: Path,
                                                               tmp_path: Path) -> None:
    """A value declared secret, under a name no word list knows: masked in logs, kept out of the setup record."""
    seed = "Sig-Seed-4417-zq"
    env = {"PYTHONPATH": str(demo_site)}
    runs = [
        cli("-vv", "setup", flow, "--transport", "demo", *EMBEDDED, "--option", f"signature_seed={seed}",
            "--option", "fussy=on", "-o", "json", **env),
        cli("-vv", "run", flow, "--option", f"transport.signature_seed={seed}", "--option", "fussy=1", "-o", "json",
            **env),
        cli("-vv", "plugins", "--options", **env),
        cli("-vv", "setup", flow, "--transport", "demo", *EMBEDDED, "--option", "fussy=true", **env,
            XFLOW_DEMO_SIGNATURE_SEED=seed),
    ]
    for done in runs:
        assert done.returncode == 0, done.stderr
        assert seed not in done.stdout + done.stderr and "4417" not in done.stdout + done.stderr
    assert "planning with seed ***" in runs[0].stderr and "planning with seed ***" in runs[3].stderr
    assert "option signature_seed of transport 'demo' holds a secret and is not recorded" in runs[0].stderr
    assert "XFLOW_DEMO_SIGNATURE_SEED" in runs[0].stderr  # the warning says how to give it again
    files = [path for path in (tmp_path / ".xflow").rglob("*") if path.is_file()]
    assert any(path.name == "setup.json" for path in files) and any(path.name == "events.db" for path in files)
    for path in files:
        assert seed.encode() not in path.read_bytes(), path
    record = json.loads((tmp_path / ".xflow" / "flow" / "setup.json").read_text())
    assert record["transport"] == {"name": "demo", "options": {"fussy": "true"}}


def test_engine_options_are_named_as_given_in_code(flow: Path, tmp_path: Path) -> None:
    with pytest.raises(XflowError, match=r"^provider 'local' \(xflow\): option concurrency='lots' from Engine\(options=...\) "
                                         r"is not a whole number"):
        Engine(flow, options={"provider": {"concurrency": "lots"}}, state_dir=tmp_path / "state").check_plugins()


def test_hand_made_contexts_are_converted_by_the_plugin(demo_site: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """A plugin made without the engine (tests, the kit) gets typed values and defaults all the same."""
    monkeypatch.syspath_prepend(str(demo_site))
    monkeypatch.setenv("XFLOW_DEMO_SIGNATURE_SEED", "from-env")
    from xflow_transport_demo import DemoTransport  # type: ignore[import-not-found]

    from xflow.core.interfaces import PluginContext

    transport = DemoTransport(PluginContext("w", {"partitions": "3", "poll_interval": "1m", "other": "kept"}, tmp_path))
    context = transport.context
    assert (context.option("partitions"), context.option("poll_interval"), context.option("fussy")) == (3, 60.0, False)
    assert context.option("signature_seed") == "from-env" and context.options["other"] == "kept"
    assert transport.partitions == 3
    with pytest.raises(XflowError, match=r"transport 'demo': option partitions='0' from the plugin's context must be at "
                                         r"least 1"):
        DemoTransport(PluginContext("w", {"partitions": "0"}, tmp_path))
    transport.close()


def test_the_builtin_plugins_declare_typed_options(cli: Any) -> None:
    listed = {(p["kind"], p["name"]): p for p in cli.json("plugins", "--options") if p["distribution"] == "xflow"}
    assert {("transport", "local"), ("provider", "local"), ("tracker", "sqlite"), ("transport", "kafka")} <= set(listed)
    for plugin in listed.values():
        assert plugin["options"] and all(o["type"] != "any" for o in plugin["options"]), plugin
    options = {(kind, name, o["name"]): o for (kind, name), p in listed.items() for o in p["options"]}
    assert options["transport", "local", "partitions"] | {"env": "-"} == {
        "name": "partitions", "type": "int", "default": 4, "minimum": 1, "maximum": None, "choices": [], "secret": False,
        "description": "partitions per stream, chosen by execution id", "env": "-"}
    assert options["transport", "local", "lease_seconds"]["type"] == "duration"
    assert options["provider", "local", "isolation"]["choices"] == ["process", "thread"]
    assert options["provider", "local", "propagate_logs"]["default"] is False
    assert options["provider", "local", "concurrency"]["env"] == "XFLOW_LOCAL_CONCURRENCY"
    assert options["tracker", "sqlite", "path"]["env"] == "XFLOW_SQLITE_PATH"
    secret = sorted(key for key, option in options.items() if option["secret"] and key[0] in ("transport", "provider",
                                                                                                 "tracker"))
    assert secret == [("transport", "kafka", "sasl_plain_password"), ("transport", "kafka", "ssl_password")]


def test_the_isolations_offered_are_the_supervisors() -> None:
    from xflow.providers.local import LocalFunctionProvider
    from xflow.providers.supervisor import ISOLATIONS

    assert set(declared_options(LocalFunctionProvider)["isolation"].choices) == set(ISOLATIONS)


@pytest.mark.parametrize("option, message", [
    ("partitions=0", "transport 'local' (xflow): option partitions='0' from --option must be at least 1 "
                     "(hint: partitions: partitions per stream, chosen by execution id (int >= 1, default 4))"),
    ("isolation=fork", "provider 'local' (xflow): option isolation='fork' from --option names an unknown isolation; "
                       "choose one of: process, thread"),
    ("poll_interval=soon", "transport 'local' (xflow): option poll_interval='soon' from --option is not a number of "
                           "seconds or a duration such as 500ms, 10s, 2m, 1h"),
    ("propagate_logs=maybe", "provider 'local' (xflow): option propagate_logs='maybe' from --option is not true or false"),
    ("tracker.path=", None),  # empty: the default
])
def test_builtin_options_are_checked_on_setup(cli: Any, flow: Path, tmp_path: Path, option: str, message: str | None) -> None:
    done = cli("setup", flow, "--transport", "local", *EMBEDDED, "--option", option)
    if message is None:
        assert done.returncode == 0, done.stderr
        assert (tmp_path / ".xflow" / "flow" / "tracker.db").exists()
        return
    assert one_line_error(done).startswith(f"error: {message}")
    assert not (tmp_path / ".xflow").exists()

