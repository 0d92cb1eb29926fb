"""Publish over HTTP (``xflow serve``) beside ``Engine.publish`` called directly, in the same run, on the embedded backend.

For 1, 8 and 64 concurrent clients: requests per second and p99 latency. Direct: that many threads calling one shared
``Engine.publish``. HTTP: that many keep-alive connections on loopback, driven by a small asyncio load generator
(raw HTTP/1.1, so the client costs little of the shared CPU), against ``xflow serve FILE --no-worker`` in a
subprocess. Each phase is bounded by a number of requests and a time limit. The goal (issue 12): HTTP at 8
clients >= 0.5x the direct rate. ``--repeat`` rounds each measure both sides anew at every client count; every round
is printed, then the median ratio per client count (one round on a shared machine is too noisy to read a ratio from).

The server groups the publishes of concurrent requests into one write (xflow/serve/batching.py); the direct side is
``Engine.publish`` one event per call, as an application calling it per request would.

    python3 bench/bench_serve.py [--seconds 4] [--clients 1,8,64] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from serve_testing import start_server, write_shop  # noqa: E402

from xflow import Engine  # noqa: E402


def _summary(latencies: list[float], elapsed: float, errors: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")
    return {"requests": len(ordered), "errors": errors, "seconds": round(elapsed, 3),
            "per_second": round(len(ordered) / elapsed, 1) if elapsed else 0.0,
            "p50_ms": round(statistics.median(ordered) * 1000, 2) if ordered else None, "p99_ms": round(p99 * 1000, 2)}


def direct(engine: Engine, clients: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """``clients`` threads calling ``engine.publish`` until ``seconds`` pass or ``max_requests`` are made."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    deadline = time.perf_counter() + seconds
    budget = [max_requests // clients + 1] * clients

    def run(index: int) -> None:
        mine = latencies[index]
        for n in range(budget[index]):
            if time.perf_counter() > deadline:
                return
            began = time.perf_counter()
            try:
                engine.publish("Placed", {"order": n, "client": index})
            except Exception:  # noqa: BLE001 - counted, the bench goes on
                errors[index] += 1
                continue
            mine.append(time.perf_counter() - began)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _summary([x for part in latencies for x in part], time.perf_counter() - began, sum(errors))


async def _client(host: str, port: int, path: str, deadline: float, budget: int, latencies: list[float],
                  errors: list[int], index: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for n in range(budget):
            if time.perf_counter() > deadline:
                return
            body = json.dumps({"order": n, "client": index}).encode()
            request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            began = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            if status_line.split()[1:2] == [b"200"]:
                latencies.append(time.perf_counter() - began)
            else:
                errors[0] += 1
    finally:
        writer.close()


def over_http(url: str, clients: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """``clients`` keep-alive connections posting events until ``seconds`` pass or ``max_requests`` are made."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = [0]

    async def main() -> float:
        deadline = time.perf_counter() + seconds
        began = time.perf_counter()
        await asyncio.gather(*(_client(host, int(port), "/workflows/shop/events/Placed", deadline,
                                       max_requests // clients + 1, latencies, errors, i) for i in range(clients)))
        return time.perf_counter() - began

    elapsed = asyncio.run(main())
    return _summary(latencies, elapsed, errors[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="time limit of each phase")
    parser.add_argument("--requests", type=int, default=20_000, help="request limit of each phase")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, each measuring both sides at every count")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="xflow-bench-serve-") as folder:
        base = Path(folder)
        flow = write_shop(base / "flows")
        server = start_server(base, flow, "--no-worker")  # sets the embedded backends up (a fresh state folder)
        try:
            with Engine(flow, state_dir=base / ".xflow") as engine:
                engine.publish("Placed", {"warm": True})
                over_http(server.url, 1, 0.5, 50)  # warm both paths up
                for round_ in range(1, max(1, args.repeat) + 1):
                    for clients in counts:
                        row = {"round": round_, "clients": clients,
                               "direct": direct(engine, clients, args.seconds, args.requests),
                               "http": over_http(server.url, clients, args.seconds, args.requests)}
                        row["ratio"] = round(row["http"]["per_second"] / max(row["direct"]["per_second"], 1e-9), 2)
                        results.append(row)
        finally:
            server.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'round':>5} {'clients':>7} {'direct/s':>9} {'p99 ms':>7} {'http/s':>8} {'p99 ms':>7} {'http/direct':>11}")
    for row in results:
        d, h = row["direct"], row["http"]
        print(f"{row['round']:>5} {row['clients']:>7} {d['per_second']:>9} {d['p99_ms']:>7} {h['per_second']:>8} "
              f"{h['p99_ms']:>7} {row['ratio']:>11}"
              + (f"  ({d['errors']}/{h['errors']} errors)" if d["errors"] or h["errors"] else ""))
    medians = {c: statistics.median(r["ratio"] for r in results if r["clients"] == c) for c in counts}
    print("median http/direct: " + ", ".join(f"{c} clients {m:.2f}x" for c, m in medians.items()))
    if 8 in medians:
        print(f"goal at 8 clients: http >= 0.5x direct: {'met' if medians[8] >= 0.5 else 'NOT met'} "
              f"(median of {max(1, args.repeat)} rounds {medians[8]:.2f}x)")


if __name__ == "__main__":
    main()
