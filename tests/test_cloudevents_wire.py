"""Events on the wire are valid CloudEvents 1.0 (structured JSON), read here with the CloudEvents SDK.

Checked for the bytes ``encode_event`` writes (a property over names, data, ids and hop counts),
for the records the local transport stores after ``xflow run`` (read raw from its SQLite log)
and for the records the Lambda shim puts on Kinesis. The execution id travels as the extension
``executionid`` (and inside ``data``), the hop count as ``xflowhops``, and ``source`` is
``xflow/<workflow>`` for events published from outside, ``xflow/<workflow>/<function>`` for
events a function published. Older envelopes and other producers' JSON are still read.
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xflow.core.runtime import decode_event, encode_event, source_uri

JSONFormat = pytest.importorskip("cloudevents.core.formats.json", reason="cloudevents 2.x is not installed").JSONFormat

ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]+$")
#: RFC 3986 URI-reference characters, with every '%' starting an escape
URI_REFERENCE = re.compile(r"^(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+$")
EVENT_NAMES = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_]{0,20}\Z")
FUNCTION_NAMES = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,20}\Z")
TEXT = st.text(max_size=15)
DATA = st.dictionaries(TEXT.filter(lambda k: k != "execution_id"),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                                                          allow_infinity=False) | TEXT,
                                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                                    max_leaves=8), max_size=4)


def read_cloudevent(value: bytes) -> Any:
    """The SDK's reading of a structured-mode JSON event (it validates attribute names and required attributes)."""
    event = JSONFormat().read(None, value)
    attributes = event.get_attributes()
    assert attributes["specversion"] == "1.0"
    assert all(ATTRIBUTE_NAME.match(name) for name in attributes), sorted(attributes)
    assert URI_REFERENCE.match(event.get_source()), event.get_source()
    assert event.get_time() is not None and event.get_time().tzinfo is not None
    assert event.get_datacontenttype() == "application/json"
    assert isinstance(event.get_extension("xflowhops"), int)
    assert set(json.loads(value)) - {"data"} == set(attributes)  # nothing the SDK dropped or renamed
    return event


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=EVENT_NAMES, data=DATA, execution_id=TEXT.filter(bool), workflow=FUNCTION_NAMES,
       function=FUNCTION_NAMES, hops=st.integers(0, 2 ** 31 - 1), producer=st.none() | TEXT)
def test_encode_event_writes_a_cloudevent_the_sdk_reads(event, data, execution_id, workflow, function, hops,
                                                        producer) -> None:
    source = f"xflow/{workflow}/{function}" if producer is None else producer
    value = encode_event(event, data, execution_id, "id-1", source, 1_700_000_000.5, hops)
    read = read_cloudevent(value)
    assert (read.get_type(), read.get_id()) == (event, "id-1")
    assert read.get_source() == (source if producer is None else source_uri(producer))
    assert read.get_extension("executionid") == execution_id and read.get_extension("xflowhops") == hops
    assert read.get_data() == {**data, "execution_id": execution_id}
    assert read.get_time() == datetime.fromtimestamp(1_700_000_000.5, timezone.utc)
    assert "execution_id" not in read.get_attributes()
    decoded = decode_event(value, "fallback")
    assert (decoded.execution_id, decoded.event_id, decoded.hops, decoded.data) == (
        execution_id, "id-1", hops, {**data, "execution_id": execution_id})


def test_older_envelopes_and_other_producers_are_still_read() -> None:
    old = {"specversion": "1.0", "id": "old-1", "type": "Start", "source": "xflow/cli", "time": "2024-05-01T10:00:00Z",
           "datacontenttype": "application/json", "execution_id": "ex-old", "data": {"n": 1, "execution_id": "ex-old"}}
    decoded = decode_event(json.dumps(old).encode(), "f")
    assert (decoded.execution_id, decoded.event_id, decoded.hops) == ("ex-old", "old-1", 0)
    assert decoded.published_at == datetime(2024, 5, 1, 10, tzinfo=timezone.utc).timestamp()
    in_data_only = {**old, "id": "old-2", "data": {"n": 1, "execution_id": "ex-data"}}
    del in_data_only["execution_id"]
    assert decode_event(json.dumps(in_data_only).encode(), "f").execution_id == "ex-data"
    for foreign in ({"execution_id": "ex-f", "n": 2}, {"executionid": "ex-f", "n": 2}):
        decoded = decode_event(json.dumps(foreign).encode(), "stream:0:7")
        assert (decoded.execution_id, decoded.event_id, decoded.data["execution_id"]) == ("ex-f", "stream:0:7", "ex-f")
    # another producer's CloudEvent with the execution id as the extension and no xflow fields in its data
    other = {"specversion": "1.0", "id": "o-1", "type": "Start", "source": "https://example.com/orders",
             "executionid": "ex-o", "xflowhops": "3", "data": {"order": 9}}
    decoded = decode_event(json.dumps(other).encode(), "f")
    assert (decoded.execution_id, decoded.hops, decoded.data) == ("ex-o", 3, {"order": 9, "execution_id": "ex-o"})


CHAIN = """
workflow_id: wire
lambdas:
  - {name: first, source: steps.py, handler: first, publishes: [Middle]}
  - {name: second-step, source: steps.py, handler: second, publishes: [Done]}
subscriptions:
  - {name: Start, subscribers: [first]}
  - {name: Middle, subscribers: [second-step]}
workflows:
  - {id: wire, flow: [Start, Middle, Done]}
"""

STEPS = """
def first(event, ctx):
    return {"n": event["n"] + 1}

def second(event, ctx):
    return {"n": event["n"] * 10}
"""


def test_the_local_transport_stores_cloudevents(cli, make_workflow, tmp_path) -> None:
    path = make_workflow(CHAIN, {"steps.py": STEPS})
    summary = cli.json("run", path, "--data", '{"n": 1}', "--execution-id", "wire-1")
    assert summary["status"] == "succeeded" and summary["result"]["n"] == 20
    with sqlite3.connect(tmp_path / ".xflow" / "wire" / "events.db") as db:
        rows = db.execute("SELECT stream, key, value FROM records ORDER BY id").fetchall()
    read = {stream: read_cloudevent(bytes(value)) for stream, key, value in rows}
    assert [(r[0], r[1]) for r in rows] == [("wire-Start", "wire-1"), ("wire-Middle", "wire-1"), ("wire-Done", "wire-1")]
    expected = {"wire-Start": ("Start", "xflow/wire", 0, 1), "wire-Middle": ("Middle", "xflow/wire/first", 1, 2),
                "wire-Done": ("Done", "xflow/wire/second-step", 2, 20)}
    for stream, (event_type, source, hops, n) in expected.items():
        event = read[stream]
        assert (event.get_type(), event.get_source(), event.get_extension("xflowhops")) == (event_type, source, hops)
        assert event.get_extension("executionid") == "wire-1"
        assert event.get_data() == {"n": n, "execution_id": "wire-1"}


# -- the Lambda shim -------------------------------------------------------------------------------
try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401


def _out_records(wid: str) -> list[bytes]:
    import boto3

    kinesis = boto3.client("kinesis")
    shard = kinesis.list_shards(StreamName=f"{wid}-Out")["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=f"{wid}-Out", ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    return [r["Data"] for r in kinesis.get_records(ShardIterator=iterator)["Records"]]


@pytest.mark.aws
def test_the_lambda_shim_publishes_cloudevents_and_keeps_the_hop_limit(aws_endpoint, tmp_path: Path) -> None:  # noqa: F811
    import boto3

    try:
        from test_aws_shim import build, kinesis_event, run_shim
    except ImportError:
        from tests.test_aws_shim import build, kinesis_event, run_shim

    wid = f"wire{uuid.uuid4().hex[:6]}"
    root = build(tmp_path, wid, retries=0)
    config = json.loads((root / "xflow_function.json").read_text())
    assert config["hop_limit"] == 1000  # the workflow's (default) limit travels with the function
    config["hop_limit"] = 5
    (root / "xflow_function.json").write_text(json.dumps(config))
    kinesis = boto3.client("kinesis")
    kinesis.create_stream(StreamName=f"{wid}-Out", ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=f"{wid}-Out")
    old = {"specversion": "1.0", "id": "ev-old", "type": "In", "source": "xflow/cli", "time": "2024-01-01T00:00:00Z",
           "execution_id": "ex", "data": {"n": 3, "execution_id": "ex"}}
    values = [encode_event("In", {"n": 1}, "ex", "ev-0", f"xflow/{wid}", hops=0),
              encode_event("In", {"n": 2}, "ex", "ev-4", f"xflow/{wid}/other", hops=4),
              json.dumps(old).encode(), json.dumps({"executionid": "ex", "n": 4}).encode(),
              encode_event("In", {"n": 5}, "ex", "ev-6", f"xflow/{wid}/other", hops=6)]
    result, lines = run_shim(root, kinesis_event(wid, values))
    assert result == {"batchItemFailures": []}
    assert [(x["event_id"], x["status"]) for x in lines][:4] == [("ev-0", "succeeded"), ("ev-4", "succeeded"),
                                                                 ("ev-old", "succeeded"), (lines[3]["event_id"], "succeeded")]
    refused = lines[4]
    assert (refused["event_id"], refused["status"], refused["attempt"]) == ("ev-6", "failed", 1)
    assert refused["error"].startswith("execution ex exceeded the hop limit of 5 events; a cycle?")
    published = [read_cloudevent(value) for value in _out_records(wid)]
    assert [(e.get_data()["n"], e.get_extension("xflowhops")) for e in published] == [(2, 1), (4, 5), (6, 1), (8, 1)]
    assert {e.get_source() for e in published} == {f"xflow/{wid}/step"}
    assert {e.get_extension("executionid") for e in published} == {"ex"}
    kinesis.delete_stream(StreamName=f"{wid}-Out")
