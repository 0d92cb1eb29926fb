"""Malformed requests to xflow serve's write routes (hypothesis): always an answer below 500, a one-line JSON message
for every 4xx, and never a traceback, whatever the body, content type or execution id.

Bodies: any bytes; any JSON value that is not an object; objects with NaN/Infinity, huge numbers, lone surrogates,
deep nesting, a byte-order mark; truncated or spliced JSON. Routes: POST /workflows/{id}/events/{event},
POST /publish (xFlow's), POST /workflows/{id}/executions/{id}/redrive. One real server for the whole module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_testing import Server, start_server, write_shop

EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
odd_numbers = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999999", "-0", "1" * 5000, "0x10", "01", ".5"])
odd_strings = st.sampled_from(['"\\ud800"', '"\\udfff tail"', '"\\u0000"', '"\xff"', '"\\x41"', "'single'"])


@st.composite
def malformed_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:  # valid JSON, but not an object
        value = draw(json_values.filter(lambda v: not isinstance(v, dict)))
        return json.dumps(value).encode()
    if kind == 2:  # an object holding a value JSON (or this server) does not take
        odd = draw(odd_numbers | odd_strings)
        return f'{{"{draw(st.text(max_size=5))}": {odd}}}'.encode("utf-8", "surrogatepass")
    if kind == 3:  # nested deeper than publish allows, as arrays or objects
        depth = draw(st.integers(129, 3000))
        opening, closing = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return ('{"deep": ' + opening * depth + "1" + closing * depth + "}").encode()
    if kind == 4:  # a truncated or spliced object
        text = json.dumps(draw(st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=4)))
        cut = draw(st.integers(0, max(0, len(text) - 1)))
        return (text[:cut] + draw(st.text(max_size=4))).encode("utf-8", "surrogatepass")
    if kind == 5:  # text in another encoding, or with a byte-order mark
        text = json.dumps({"word": draw(st.text(min_size=1, max_size=10))})
        encoding = draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "utf-8-sig"]))
        return text.encode(encoding, "replace")
    if kind == 6:  # an object whose execution_id is not a string
        return json.dumps({"execution_id": draw(json_values.filter(lambda v: not isinstance(v, str)))}).encode()
    return draw(st.binary(max_size=40)) + b'{"a": 1}' + draw(st.binary(max_size=40))


content_types = st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/json; charset=latin-1", "\x7f"])
execution_ids = st.none() | st.text(max_size=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("serve-fuzz")
    started = start_server(folder, write_shop(folder / "flows"), "--no-worker")
    yield started
    assert started.stop() == 0
    assert "Traceback" not in started.output()


def _check(answer: httpx.Response) -> None:
    assert answer.status_code < 500, f"{answer.status_code}: {answer.text[:500]}"
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    if answer.status_code >= 400 and not answer.headers.get("content-type", "").startswith("application/json"):
        # a request that is not valid HTTP (a control character in a header) is refused by uvicorn's HTTP parser
        # before it reaches xflow: a 400 with its own one-line text
        assert answer.status_code == 400 and answer.text.strip() and "\n" not in answer.text.strip()
    elif answer.status_code >= 400:
        body = answer.json()
        assert isinstance(body["error"], str) and body["error"].strip() and "\n" not in body["error"]


def _headers(content_type: str | None) -> dict[str, str]:
    return {"Content-Type": content_type} if content_type is not None else {}


@FUZZ
@given(body=malformed_bodies(), content_type=content_types, execution_id=execution_ids)
def test_publish_route_never_fails_on_a_body(server: Server, body: bytes, content_type: str | None,
                                              execution_id: str | None) -> None:
    params = {"execution_id": execution_id} if execution_id is not None else {}
    answer = server.post("/workflows/shop/events/Placed", content=body, params=params, headers=_headers(content_type))
    _check(answer)
    if answer.status_code == 200:  # only a JSON object with valid data is published
        assert json.loads(body.decode("utf-8-sig")).__class__ is dict


@FUZZ
@given(body=malformed_bodies() | json_values.map(lambda v: json.dumps({"stream": "Placed", "event": v}).encode())
       | json_values.map(lambda v: json.dumps({"stream": v, "event": {"execution_id": "x"}}).encode()),
       content_type=content_types)
def test_original_publish_route_never_fails_on_a_body(server: Server, body: bytes, content_type: str | None) -> None:
    _check(server.post("/publish", content=body, headers=_headers(content_type)))


@FUZZ
@given(body=malformed_bodies() | json_values.map(lambda v: json.dumps({"functions": v}).encode()),
       execution_id=st.text(min_size=1, max_size=20).filter(lambda t: t not in (".", "..")))
def test_redrive_route_never_fails_on_a_body(server: Server, body: bytes, execution_id: str) -> None:
    _check(server.post(f"/workflows/shop/executions/{quote(execution_id, safe='')}/redrive", content=body))


def test_an_accepted_body_was_published_as_sent(server: Server, tmp_path: Path) -> None:
    """The property above is not vacuous: a valid object with odd but legal content is published intact."""
    data = {"text": "Grüße \u2028 世界", "n": 1e300, "list": [[[]]], "execution_id": "fuzz-intact"}
    answer = server.post("/workflows/shop/events/Placed", content=json.dumps(data).encode())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"execution_id": "fuzz-intact"}
    summary = server.get("/workflows/shop/executions/fuzz-intact").json()
    assert summary["events"][0]["count"] == 1
