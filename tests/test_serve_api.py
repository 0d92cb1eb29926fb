"""xflow serve's REST API through a real uvicorn process (``xflow serve`` in a subprocess on a free loopback port).

On the embedded backend and on the redis transport (a real redis-server): publish, list (paged, by status), track,
re-drive, xFlow's original routes; every error status (400, 401, 403, 404, 405, 413) answered in JSON with a
one-line message; the token; secrets of the workflow file never shown; SIGTERM stops the server with exit 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_testing import Server, start_server, wait_for, write_shop
from xflow_cli_testing import CLI

import xflow

SECRET = "AKIA-not-a-real-secret-9f3e1c"
AWS_BLOCK = f"""
aws:
  region: us-east-1
  aws_secret_access_key: {SECRET}
"""


class Shop:
    """A served shop workflow: the server, the CLI in the same folder, the workflow file."""

    def __init__(self, server: Server, cli: CLI, flow: Path, backend: str) -> None:
        self.server, self.cli, self.flow, self.backend = server, cli, flow, backend

    def publish(self, data: dict[str, Any], **params: str) -> str:
        answer = self.server.post("/workflows/shop/events/Placed", json=data, params=params)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["execution_id"])

    def track(self, execution_id: str) -> dict[str, Any]:
        answer = self.server.get(f"/workflows/shop/executions/{execution_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def settled(self, execution_id: str, timeout: float = 90) -> dict[str, Any]:
        return dict(wait_for(lambda: (lambda s: s if s["status"] != "running" else None)(self.track(execution_id)),
                             timeout, f"execution {execution_id} settling"))


@pytest.fixture(scope="module", params=["local", "redis"])
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    folder = tmp_path_factory.mktemp(f"serve-{request.param}")
    flow = write_shop(folder / "flows", AWS_BLOCK)
    cli = CLI(folder)
    if request.param == "local":  # not set up before: serve sets up the embedded backends and runs the functions
        server = start_server(folder, flow)
        yield Shop(server, cli, flow, "local")
        assert server.stop() == 0
        return
    from plugin_servers import running_redis

    with running_redis() as url:
        done = cli("setup", flow, "--transport", "redis", "--provider", "local", "--tracker", "sqlite",
                   "--option", f"url={url}")
        assert done.returncode == 0, done.stderr
        server = start_server(folder, flow, "--worker")
        yield Shop(server, cli, flow, "redis")
        assert server.stop() == 0


def test_ping_workflows_graph_and_openapi(shop: Shop) -> None:
    server = shop.server
    assert server.get("/ping").json() == {"name": "xFlow", "version": xflow.__version__}
    listed = server.get("/workflows").json()["workflows"]
    assert [w["workflow_id"] for w in listed] == ["shop"]
    assert listed[0]["plugins"]["transport"] == shop.backend
    described = server.get("/workflows/shop").json()
    assert described["flow"] == ["Placed", "Charged", "Shipped"]
    assert [e["subscribers"] for e in described["events"]] == [["charge"], ["ship"], []]
    assert [e["publishers"] for e in described["events"]] == [[], ["charge"], ["ship"]]
    assert all(e["stream"] for e in described["events"])
    assert {f["name"]: f["subscribes"] for f in described["functions"]} == {"charge": ["Placed"], "ship": ["Charged"]}
    svg = server.get("/workflows/shop/graph.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    for name in ('data-event="Placed"', 'data-function="charge"', 'class="edge sub"', 'class="edge pub"'):
        assert name in svg.text
    paths = server.get("/openapi.json").json()["paths"]
    for path in ("/ping", "/workflows", "/workflows/{workflow_id}", "/workflows/{workflow_id}/events/{event}",
                 "/workflows/{workflow_id}/executions", "/workflows/{workflow_id}/executions/{execution_id}",
                 "/workflows/{workflow_id}/executions/{execution_id}/redrive", "/publish",
                 "/track/workflows/{workflow_id}/executions/{execution_id}"):
        assert path in paths
    for page in ("/", "/docs", "/static/app.js", "/static/style.css", "/static/docs.js"):
        answer = server.get(page)
        assert answer.status_code == 200
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", answer.text), f"{page} loads something from elsewhere"
        assert "default-src 'self'" in answer.headers["content-security-policy"]
        assert "access-control-allow-origin" not in answer.headers


def test_publish_track_and_list_match_the_cli(shop: Shop) -> None:
    execution_id = shop.publish({"order": 7})
    summary = shop.settled(execution_id)
    assert summary["status"] == "succeeded"
    tracked = shop.cli.json("track", shop.flow, execution_id)
    assert summary == tracked  # exactly the `xflow track -o json` object
    assert shop.server.get(f"/track/workflows/shop/executions/{execution_id}").json() == tracked
    given = shop.publish({"order": 8}, execution_id="order-8")
    assert given == "order-8"
    assert shop.settled("order-8")["status"] == "succeeded"
    listing = shop.server.get("/workflows/shop/executions", params={"limit": 50}).json()
    ids = [row["execution_id"] for row in listing["executions"]]
    assert ids.index("order-8") < ids.index(execution_id)  # most recently started first
    row = listing["executions"][ids.index("order-8")]
    assert row["status"] == "succeeded" and row["last_unprocessed_event"] is None and row["failed_functions"] == []
    assert shop.cli.json("executions", shop.flow, "--limit", "50") == listing


def test_failed_execution_listed_by_status_then_redriven(shop: Shop, tmp_path: Path) -> None:
    gate = tmp_path / "card-blocked"
    gate.write_text("blocked")
    execution_id = shop.publish({"order": 9, "fail_while": str(gate)})
    summary = shop.settled(execution_id)
    assert summary["status"] == "failed" and summary["last_unprocessed_event"] == "Placed"
    charge = summary["events"][0]["subscribers"][0]
    assert charge["name"] == "charge" and charge["state"] == "failed" and charge["attempts"] == 1
    assert "card declined: the bank said no" in charge["error"]
    assert any("card declined for order 9" in line for line in charge["logs"])
    failed = shop.server.get("/workflows/shop/executions", params={"status": "failed"}).json()
    assert execution_id in [row["execution_id"] for row in failed["executions"]]
    assert all(row["status"] == "failed" for row in failed["executions"])
    assert failed["executions"][0]["failed_functions"] == ["charge"]
    succeeded = shop.server.get("/workflows/shop/executions", params={"status": "succeeded", "limit": 200}).json()
    assert execution_id not in [row["execution_id"] for row in succeeded["executions"]]

    gate.unlink()  # the cause is fixed
    answer = shop.server.post(f"/workflows/shop/executions/{execution_id}/redrive")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"workflow_id": "shop", "execution_id": execution_id,
                             "redriven": [{"event": "Placed", "event_id": answer.json()["redriven"][0]["event_id"],
                                           "function": "charge"}]}
    assert shop.settled(execution_id)["status"] == "succeeded"
    again = shop.server.post(f"/workflows/shop/executions/{execution_id}/redrive", json={"functions": ["charge"]})
    assert again.json()["redriven"] == [] == shop.cli.json("redrive", shop.flow, execution_id)["redriven"]


def test_executions_are_paged_newest_first(shop: Shop) -> None:
    mine = [shop.publish({"order": n}, execution_id=f"page-{shop.backend}-{n}") for n in range(5)]
    wait_for(lambda: all(shop.track(x)["status"] == "succeeded" for x in mine), 90, "five executions succeeding")
    seen: list[str] = []
    cursor = None
    for _ in range(50):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = shop.server.get("/workflows/shop/executions", params=params).json()
        assert len(page["executions"]) <= 2
        seen += [row["execution_id"] for row in page["executions"]]
        cli_page = shop.cli.json("executions", shop.flow, "--limit", "2", *(["--cursor", cursor] if cursor else []))
        assert cli_page == page
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert [x for x in seen if x in mine] == mine[::-1]


def test_original_xflow_routes(shop: Shop) -> None:
    by_event = shop.server.post("/publish", json={"stream": "Placed", "event": {"execution_id": "orig-1", "order": 1}})
    assert by_event.status_code == 200, by_event.text
    assert by_event.json() == {"execution_id": "orig-1", "workflow_id": "shop", "event": "Placed"}
    stream = shop.server.get("/workflows/shop").json()["events"][0]["stream"]
    by_stream = shop.server.post("/publish", json={"stream": stream, "event": {"execution_id": "orig-2"}})
    assert by_stream.json()["event"] == "Placed"
    for execution_id in ("orig-1", "orig-2"):
        shop.settled(execution_id)
        assert shop.server.get(f"/track/workflows/shop/executions/{execution_id}").json() == shop.track(execution_id)
    missing = shop.server.post("/publish", json={"stream": "Placed", "event": {"order": 1}})
    assert missing.status_code == 400 and "execution_id" in missing.json()["error"]
    unknown = shop.server.post("/publish", json={"stream": "NoSuchStream", "event": {"execution_id": "x"}})
    assert unknown.status_code == 404 and "NoSuchStream" in unknown.json()["error"]


def _error(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, f"{answer.status_code} {answer.text}"
    body = answer.json()
    assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"]
    assert "Traceback" not in answer.text
    return str(body["error"])


def test_every_error_status(shop: Shop) -> None:
    server = shop.server
    placed = "/workflows/shop/events/Placed"
    assert "not valid JSON" in _error(server.post(placed, content=b"{nope"), 400)
    assert "must be a JSON object" in _error(server.post(placed, content=b"[1, 2]"), 400)
    assert "NaN" in _error(server.post(placed, content=b'{"a": NaN}'), 400)
    assert "UTF-8" in _error(server.post(placed, content=b'{"a": "\xff"}'), 400)
    assert "contradicts" in _error(server.post(placed, json={"execution_id": "a"}, params={"execution_id": "b"}), 400)
    assert "limit" in _error(server.get("/workflows/shop/executions", params={"limit": "many"}), 400)
    assert "limit" in _error(server.get("/workflows/shop/executions", params={"limit": 0}), 400)
    assert "status" in _error(server.get("/workflows/shop/executions", params={"status": "lost"}), 400)
    assert "cursor" in _error(server.get("/workflows/shop/executions", params={"cursor": "%%%"}), 400)
    assert "no function" in _error(server.post("/workflows/shop/executions/x/redrive", json={"functions": ["f"]}), 400)
    assert "no workflow 'nope'" in _error(server.get("/workflows/nope"), 404)
    assert "no workflow" in _error(server.post("/workflows/nope/events/Placed", json={}), 404)
    assert "no event 'Nope'" in _error(server.post("/workflows/shop/events/Nope", json={}), 404)
    assert "unknown" in _error(server.get("/workflows/shop/executions/no-such-run"), 404)
    assert "no route" in _error(server.get("/no/such/route"), 404)
    assert "not allowed" in _error(server.client.delete("/workflows/shop"), 405)
    big = b'{"blob": "' + b"x" * 1_100_000 + b'"}'
    assert "at most" in _error(server.post(placed, content=big), 413)
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))  # no Content-Length: refused while reading
    assert "over" in _error(server.post(placed, content=chunks), 413)
    assert "cross-site" in _error(server.post(placed, json={}, headers={"Origin": "http://evil.example"}), 403)
    assert "not this machine" in _error(server.get("/workflows", headers={"Host": "evil.example"}), 403)
    # the workflow file's credentials are in no answer and no log line
    for path in ("/workflows", "/workflows/shop", "/openapi.json", "/workflows/shop/executions"):
        assert SECRET not in server.get(path).text
    assert SECRET not in server.output()


def test_the_token_guards_every_route_but_the_health_check(tmp_path: Path) -> None:
    flow = write_shop(tmp_path / "flows")
    cli = CLI(tmp_path)
    refused = cli("serve", flow, "--host", "0.0.0.0", "--port", "1")
    assert refused.returncode == 2 and "needs a token" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    short = cli("serve", flow, "--token", "short")
    assert short.returncode == 2 and "at least 16" in short.stderr
    token = "t0ken-" + "x" * 20
    server = start_server(tmp_path, flow, "--no-worker", token=token)
    try:
        bare = httpx.Client(base_url=server.url, timeout=30)
        assert bare.get("/ping").status_code == 200
        assert bare.get("/").status_code == 200  # the page shell (no data): it asks for the token
        for method, path in (("GET", "/workflows"), ("GET", "/openapi.json"), ("GET", "/workflows/shop/graph.svg"),
                             ("POST", "/workflows/shop/events/Placed"), ("POST", "/publish"),
                             ("GET", "/workflows/shop/executions"), ("GET", "/track/workflows/shop/executions/x")):
            assert "token is needed" in _error(bare.request(method, path, json={}), 401)
            wrong = bare.request(method, path, json={}, headers={"Authorization": "Bearer " + "y" * 26})
            assert "token is wrong" in _error(wrong, 401)
        assert bare.get("/workflows").headers["www-authenticate"].startswith("Bearer")
        assert server.get("/workflows").status_code == 200
        execution_id = server.post("/workflows/shop/events/Placed", json={"order": 1}).json()["execution_id"]
        # no worker here (--no-worker): the execution stays running, listed as such
        rows = server.get("/workflows/shop/executions", params={"status": "running"}).json()["executions"]
        assert [row["execution_id"] for row in rows] == [execution_id]
        bare.close()
    finally:
        assert server.stop() == 0
    assert token not in server.output()
    assert "xflow serve: stopped" in server.output()


def test_executions_command_text_and_errors(shop: Shop) -> None:
    shop.settled(shop.publish({"order": 11}, execution_id=f"table-run-{shop.backend}"))
    done = shop.cli("executions", shop.flow, "--limit", "200")
    assert done.returncode == 0, done.stderr
    assert f"table-run-{shop.backend}" in done.stdout and "succeeded" in done.stdout
    bad = shop.cli("executions", shop.flow, "--cursor", "not-a-cursor")
    assert bad.returncode == 2 and "cursor" in bad.stderr and "Traceback" not in bad.stderr
    listing = json.loads(shop.cli("executions", shop.flow, "--status", "failed", "-o", "json").stdout)
    assert all(row["status"] == "failed" for row in listing["executions"])
