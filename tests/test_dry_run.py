"""`setup --dry-run` reads and prints only; teardown leaves nothing of the workflow in the state folder.

The whole temporary folder (names and contents) is compared before and after a dry run, on the
embedded backends and on the AWS defaults against a moto server. The handler module writes a
marker file when it is imported: planning never imports it (handlers are checked with ``ast``),
a worker does.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xflow.core.model import Subscription, Workflow

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

EMBEDDED = ("--transport", "local", "--provider", "local", "--tracker", "sqlite")
AWS = ("--transport", "kinesis", "--provider", "lambda", "--tracker", "cloudwatch")
STEPS = """
import os
from pathlib import Path

Path(os.environ["XFLOW_TEST_MARKER"]).write_text("imported")  # a module-level side effect


def first(event, ctx):
    return {"n": event.get("n", 0) + 1}


def second(event, ctx):
    return None
"""


def flow_text(workflow_id: str) -> str:
    return f"""
workflow_id: {workflow_id}
functions:
  - name: {workflow_id}_first
    source: steps.py
    handler: first
    publishes: [B]
  - name: {workflow_id}_second
    source: steps.py
    handler: second
subscriptions:
  - event: A
    subscribers: [{workflow_id}_first]
  - event: B
    subscribers: [{workflow_id}_second]
"""


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with the SHA-256 of its content ("dir" for folders)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        found[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker.txt"


def test_dry_run_on_the_embedded_backends_writes_and_imports_nothing(cli, make_workflow, tmp_path, marker):
    flow = make_workflow(flow_text("dry"), {"steps.py": STEPS})
    env = {"XFLOW_TEST_MARKER": str(marker)}

    before = snapshot(tmp_path)
    plan = cli.json("setup", flow, *EMBEDDED, "--dry-run", **env)
    assert {c["resource"] for c in plan["changes"]} >= {"stream:dry-A", "stream:dry-B"}
    assert snapshot(tmp_path) == before and not marker.exists()

    # a real setup checks the handlers the same way: still nothing imported
    assert cli("setup", flow, *EMBEDDED, **env).returncode == 0
    assert not marker.exists()
    before = snapshot(tmp_path)
    assert cli.json("setup", flow, *EMBEDDED, "--dry-run", **env)["changes"] == []
    assert snapshot(tmp_path) == before

    # the marker works: a worker imports the module
    assert cli.json("run", flow, **env)["status"] == "succeeded"
    assert marker.read_text() == "imported"


@pytest.mark.parametrize("steps, problem", [
    ("def first(event, ctx):\n    return {}\n", "defines no 'second'"),
    ("def first(event, ctx):\n    return {\n\ndef second(event, ctx):\n    pass\n", "cannot be parsed"),
])
def test_a_broken_handler_is_refused_by_the_dry_run_and_by_setup_before_anything_exists(cli, make_workflow, tmp_path,
                                                                                         steps, problem):
    flow = make_workflow(flow_text("broken"), {"steps.py": steps})
    for args in (("setup", flow, *EMBEDDED, "--dry-run"), ("setup", flow, *EMBEDDED), ("run", flow)):
        done = cli(*args)
        assert done.returncode == 2 and problem in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / ".xflow").exists()


def test_teardown_leaves_nothing_of_the_workflow_on_the_embedded_backends(cli, make_workflow, tmp_path, marker):
    flow = make_workflow(flow_text("gone"), {"steps.py": STEPS})
    other = make_workflow(flow_text("kept"), {"steps.py": STEPS}, name="kept.yaml")
    env = {"XFLOW_TEST_MARKER": str(marker)}
    for workflow in (flow, other):
        assert cli.json("run", workflow, **env)["status"] == "succeeded"
    state = tmp_path / ".xflow"
    assert (state / "gone" / "events.db").exists() and (state / "gone" / "tracker.db").exists()
    kept = snapshot(state / "kept")

    preview = cli.json("teardown", flow, "--dry-run")
    assert (state / "gone" / "events.db").exists()
    resources = {c["resource"] for c in preview["changes"]}
    assert {"stream:gone-A", "stream:gone-B"} <= resources

    cli.json("teardown", flow)
    assert not (state / "gone").exists()
    assert snapshot(state / "kept") == kept  # the other workflow's files are untouched
    cli.json("teardown", other)
    assert not state.exists()


@pytest.mark.aws
def test_dry_run_on_lambda_writes_nothing_and_teardown_removes_artifacts_and_positions(aws_endpoint, cli, make_workflow,
                                                                                       tmp_path, marker):
    wid = f"dl{os.getpid()}{int(time.time() * 1000) % 100000}"
    flow = make_workflow(flow_text(wid), {"steps.py": STEPS})
    env = {"XFLOW_TEST_MARKER": str(marker)}
    state = tmp_path / ".xflow"

    before = snapshot(tmp_path)
    plan = cli.json("setup", flow, *AWS, "--dry-run", **env)
    assert {f"function:{wid}_first", f"function:tracker_{wid}"} <= {c["resource"] for c in plan["changes"]}
    assert snapshot(tmp_path) == before and not state.exists() and not marker.exists()

    setup = cli.json("setup", flow, *AWS, **env)
    assert any(c["resource"] == f"function:{wid}_first" for c in setup["changes"])
    artifacts = sorted((state / "lambda-artifacts").glob("*.zip"))
    assert len(artifacts) == 3  # the two functions and the tracker function

    before = snapshot(tmp_path)
    assert cli.json("setup", flow, "--dry-run", **env)["changes"] == []
    assert snapshot(tmp_path) == before and not marker.exists()

    # a deployment set up from another state folder: its zips are kept at the next setup, not by planning
    moved = tmp_path / "moved"
    (state / "lambda-artifacts").rename(moved)
    again = cli.json("setup", flow, "--dry-run", **env)
    assert {c["resource"] for c in again["changes"]} == {f"artifact:{wid}_first", f"artifact:{wid}_second",
                                                          f"artifact:tracker_{wid}"}
    assert not (state / "lambda-artifacts").exists()
    cli.json("setup", flow, **env)
    assert sorted(p.name for p in (state / "lambda-artifacts").glob("*.zip")) == sorted(p.name for p in artifacts)
    assert cli.json("setup", flow, **env)["changes"] == []

    # emulate keeps its positions in the state folder
    cli("publish", flow, "A", "{}", **env)
    done = cli("emulate", flow, "--until-idle", "--timeout", "60", **env)
    assert done.returncode == 0, done.stderr
    assert (state / wid / "emulate.json").exists()

    teardown = cli.json("teardown", flow)
    relative = Path(".xflow")  # the default state folder, as the resources name it
    assert {f"artifacts:{relative / 'lambda-artifacts'}", f"file:{relative / wid / 'emulate.json'}"} <= {
        c["resource"] for c in teardown["changes"]}
    assert not state.exists(), snapshot(state)


READ_ONLY = ("Get", "List", "Describe", "GET ")


def aws_state(wid: str) -> dict[str, object]:
    """What the server holds of workflow ``wid``: functions (with code and change time), mappings, role and policy,
    queue, log groups, streams."""
    import boto3

    lam, iam, sqs, logs, kinesis = (boto3.client(s) for s in ("lambda", "iam", "sqs", "logs", "kinesis"))
    functions = {f["FunctionName"]: (f["CodeSha256"], f["LastModified"], f.get("MemorySize"))
                 for f in lam.list_functions()["Functions"] if wid in f["FunctionName"]}
    targets = [*functions, *(lam.get_function(FunctionName=n)["Configuration"]["FunctionArn"] + ":live" for n in functions)]
    mappings = sorted((m["UUID"], m["FunctionArn"], m.get("BatchSize"), str(m.get("LastModified")))
                      for name in targets for m in lam.list_event_source_mappings(FunctionName=name)["EventSourceMappings"])
    versions = {name: ([v["Version"] for v in lam.list_versions_by_function(FunctionName=name)["Versions"]],
                       [(a["Name"], a["FunctionVersion"], a.get("RoutingConfig"))
                        for a in lam.list_aliases(FunctionName=name)["Aliases"]])
                for name in functions}
    roles = {r["RoleName"]: iam.list_role_policies(RoleName=r["RoleName"])["PolicyNames"]
             for r in iam.list_roles()["Roles"] if wid in r["RoleName"]}
    policies = {(name, p): iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"]
                for name, names in roles.items() for p in names}
    return {"functions": functions, "mappings": mappings, "versions": versions, "roles": roles, "policies": str(policies),
            "queues": sorted(u for u in sqs.list_queues().get("QueueUrls", []) if wid in u),
            "groups": sorted((g["logGroupName"], g.get("retentionInDays")) for g in logs.describe_log_groups()["logGroups"]
                             if wid in g["logGroupName"]),
            "streams": sorted(s for s in kinesis.list_streams()["StreamNames"] if wid in s)}


@pytest.mark.aws
def test_a_lambda_dry_run_leaves_no_file_and_changes_nothing_on_the_server(aws_endpoint, cli, make_workflow, tmp_path,
                                                                            marker):
    """Through a proxy that names every call: a dry run (of a new workflow, then of a changed one) calls only Get,
    List and Describe operations, leaves the server as it was, writes nothing in the state folder or the folder
    for temporary files (TMPDIR) and imports no handler."""
    from fault_proxy import FaultProxy

    wid = f"dp{os.getpid()}{int(time.time() * 1000) % 100000}"
    flow = make_workflow(flow_text(wid), {"steps.py": STEPS})
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"XFLOW_TEST_MARKER": str(marker), "TMPDIR": str(temp)}
    with FaultProxy(aws_endpoint) as proxy:
        def dry_run(*args: str) -> set[str]:
            proxy.forwarded.clear()
            server, files = aws_state(wid), snapshot(tmp_path)
            plan = cli.json("setup", flow, *args, "--dry-run", AWS_ENDPOINT_URL=proxy.url, **env)
            writes = sorted(op for op in proxy.forwarded if not op.startswith(READ_ONLY))
            assert proxy.forwarded and not writes, writes
            assert aws_state(wid) == server
            assert snapshot(tmp_path) == files and not any(temp.iterdir()) and not marker.exists()
            return {f"{c['action']} {c['resource']}" for c in plan["changes"]}

        planned = dry_run(*AWS)
        assert {f"create function:{wid}_first", f"create role:xflow-{wid}-lambda", f"create queue:xflow-{wid}-failures",
                f"create mapping:{wid}-A->{wid}_first"} <= planned
        assert not (tmp_path / ".xflow").exists()

        cli.json("setup", flow, *AWS, **env)
        assert dry_run() == set()
        # new code and a new batch size: the plan has the updates, and still only reads
        (flow.parent / "steps.py").write_text(STEPS.replace('"n": event.get("n", 0) + 1', '"n": 2'))
        flow.write_text(flow.read_text().replace("handler: first", "handler: first\n    batch_size: 7"))
        assert dry_run() == {f"update function-code:{wid}_first", f"update function-code:{wid}_second",
                             f"update mapping:{wid}-A->{wid}_first", f"create version:{wid}_first",
                             f"create version:{wid}_second", f"update alias:{wid}_first", f"update alias:{wid}_second"}
    cli.json("teardown", flow, **env)
    assert aws_state(wid) == {"functions": {}, "mappings": [], "versions": {}, "roles": {}, "policies": "{}", "queues": [],
                              "groups": [], "streams": []}


# -- planning stays linear: the model's indexes say what the plain definitions say ----------------------------
names = st.sampled_from([f"f{i}" for i in range(6)])
events = st.sampled_from([f"E{i}" for i in range(6)])


@given(st.lists(st.tuples(events, st.lists(names, max_size=4)), max_size=8), st.lists(events, max_size=6, unique=True))
@settings(max_examples=200, deadline=None)
def test_subscriber_lookups_match_their_definitions(pairs, extra_events):
    subscriptions = tuple(Subscription(event, tuple(subscribers)) for event, subscribers in pairs)
    flow = tuple(dict.fromkeys([*(event for event, _ in pairs), *extra_events]))
    workflow = Workflow(id="w", path=Path("w.yaml"), functions={}, subscriptions=subscriptions, flow=flow)

    def plain_subscribers(event: str) -> tuple[str, ...]:
        found: list[str] = []
        for sub in subscriptions:
            if sub.event == event:
                found.extend(s for s in sub.subscribers if s not in found)
        return tuple(found)

    for event in [*flow, "missing"]:
        assert workflow.subscribers(event) == plain_subscribers(event)
    for function in [f"f{i}" for i in range(6)]:
        assert workflow.subscriptions_of(function) == tuple(e for e in flow if function in plain_subscribers(e))



def _chain(n: int) -> str:
    """``n`` chained functions over ``n`` events (as bench/bench_setup.py makes them), with a flow naming each."""
    lines = [f"workflow_id: chain_{n}", "functions:"]
    for i in range(n):
        lines += [f"  - {{name: f{i}, source: steps.py, handler: step"
                  + (f", publishes: [E{i + 1}]}}" if i < n - 1 else "}")]
    lines += ["subscriptions:", *(f"  - {{event: E{i}, subscribers: [f{i}]}}" for i in range(n)),
              "workflows:", f"  - {{id: chain_{n}, flow: [{', '.join(f'E{i}' for i in range(n))}]}}"]
    return "\n".join(lines) + "\n"


def test_setup_time_grows_linearly_with_the_functions(tmp_path):
    """Load, plan and set up (embedded backends) 250 and 1,000 functions in this process, best of 3 each: four times
    the functions take well under 9 times as long (a quadratic setup takes 16 times, the cubic one that once took
    27 s for 1,000 functions 64 times), and the plan of 1,000 stays under 3 s."""
    from xflow.core.engine import Engine

    def timed(n: int, round_: int, dry_run: bool) -> float:
        folder = tmp_path / f"n{n}-{round_}-{dry_run}"
        folder.mkdir()
        (folder / "steps.py").write_text("def step(event, ctx):\n    return {'n': event.get('n', 0) + 1}\n")
        (folder / "chain.yaml").write_text(_chain(n))
        start = time.perf_counter()
        engine = Engine(folder / "chain.yaml", transport="local", provider="local", tracker="sqlite",
                        state_dir=folder / ".xflow")
        try:
            report = engine.setup(dry_run=dry_run)
        finally:
            engine.close()
        elapsed = time.perf_counter() - start
        assert sum(1 for step in report.steps if step.resource.startswith("stream:")) == n
        return elapsed

    best = {(n, dry_run): min(timed(n, r, dry_run) for r in range(3)) for n in (250, 1000) for dry_run in (True, False)}
    for dry_run in (True, False):
        ratio = best[1000, dry_run] / best[250, dry_run]
        assert ratio < 9, f"{'plan' if dry_run else 'setup'}: 250 functions {best[250, dry_run]:.2f} s, 1,000 " \
                          f"{best[1000, dry_run]:.2f} s ({ratio:.1f}x)"
    assert best[1000, True] < 3.0, f"the plan of 1,000 functions took {best[1000, True]:.2f} s"
