"""Benchmark of the kinesis transport beside a raw boto3 ``put_records`` loop, on the same moto server.

    python bench/bench_kinesis.py [--events 10000] [--size 200] [--shards 2] [--rounds 4]

Starts a moto server on a free loopback port (or uses ``AWS_ENDPOINT_URL`` if set), publishes the
same encoded events through ``KinesisTransport.publish`` and through plain ``put_records`` calls of
500 records, and prints events/s for each, the ratio, and the API calls per 10,000 events (the
floor is 20: 500 records per call). Not a test: read the ratios and run it a few times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aws_server import ENV, start_moto, stop_moto  # noqa: E402
from harness import interleaved  # noqa: E402

from xflow.core.interfaces import PluginContext, Record  # noqa: E402
from xflow.core.runtime import encode_event  # noqa: E402
from xflow.transports.kinesis import KinesisTransport  # noqa: E402


def payloads(count: int, size: int) -> list[Record]:
    found = []
    for i in range(count):
        execution = f"exec-{i % 97}"
        value = encode_event("Bench", {"i": i, "pad": "x" * size}, execution, uuid.uuid4().hex, "bench")
        found.append(Record(key=execution, value=value))
    return found


def raw(client, stream: str, records: list[Record]) -> tuple[float, int]:
    calls = 0
    start = time.perf_counter()
    for i in range(0, len(records), 500):
        chunk = [{"Data": r.value, "PartitionKey": r.key} for r in records[i:i + 500]]
        while chunk:
            calls += 1
            response = client.put_records(StreamName=stream, Records=chunk)
            chunk = [c for c, r in zip(chunk, response["Records"], strict=True) if r.get("ErrorCode")]
    return time.perf_counter() - start, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=200, help="padding bytes per event")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    proc = None
    folder = tempfile.TemporaryDirectory(prefix="xflow-bench-")
    if not os.environ.get("AWS_ENDPOINT_URL"):
        proc, url = start_moto(folder.name)
        os.environ.update(ENV, AWS_ENDPOINT_URL=url)
    try:
        workflow_id = f"bench{uuid.uuid4().hex[:6]}"
        transport = KinesisTransport(PluginContext(workflow_id, {"shards": args.shards}, Path(folder.name)))
        for step in transport.plan_setup(["Bench", "Raw"]):
            transport.execute(step)
        client = boto3.client("kinesis")
        records = payloads(args.events, args.size)
        calls = {"xflow": 0, "raw": 0}

        def run(which: str) -> float:
            if which == "raw":
                seconds, calls["raw"] = raw(client, transport.stream_name("Raw"), records)
                return seconds
            before = transport.put_calls
            start = time.perf_counter()
            transport.publish("Bench", records)
            seconds = time.perf_counter() - start
            calls["xflow"] = transport.put_calls - before
            return seconds

        results = interleaved(("xflow", "raw"), args.rounds, run, swap=True)  # alternate who goes first
        best = {k: min(v) for k, v in results.items()}
        report = {
            "events": args.events, "bytes_per_event": len(records[0].value), "shards": args.shards,
            "rounds": args.rounds,
            "xflow_events_per_s": round(args.events / best["xflow"]),
            "raw_events_per_s": round(args.events / best["raw"]),
            "ratio_xflow_over_raw": round(best["raw"] / best["xflow"], 3),
            "api_calls_per_10000_events": {k: round(v * 10_000 / args.events, 1) for k, v in calls.items()},
        }
        print(json.dumps(report, indent=2))
        for step in transport.plan_teardown(["Bench", "Raw"]):
            transport.execute(step)
    finally:
        if proc is not None:
            stop_moto(proc)
        folder.cleanup()


if __name__ == "__main__":
    main()
