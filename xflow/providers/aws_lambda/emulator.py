"""The emulator behind ``xflow emulate``: runs a workflow deployed with the lambda provider on this machine.

Against any AWS-API endpoint (``AWS_ENDPOINT_URL``: moto, LocalStack, or AWS itself) the emulator
does what the Lambda service does for Kinesis event source mappings:

- reads the event source mappings that exist on the endpoint for the workflow's functions (and
  ``tracker_<workflow_id>``), with their batch size, starting position, retry limit, bisect flag;
- polls the mapped streams' shards and invokes the function's *deployed code* in a subprocess
  with the Lambda Kinesis event format (:mod:`xflow.providers.aws_lambda.invoke`): the version the function's
  alias ``live`` points at (its main version: a canary's share is not emulated), else ``$LATEST``. The code is the
  zip the function's code location serves, else the artifact setup kept in the state folder —
  accepted only when its SHA-256 equals the function's ``CodeSha256`` on the endpoint — with the content of the
  layer versions it names on its path after its own code (found the same way, by the version's ``CodeSha256``);
- honours the partial-batch response (``batchItemFailures``): retries from the first failed
  record, drops it once the mapping's retries are used up; a failed invocation is retried whole
  (halved when bisect-on-error is on);
- writes the function's output to CloudWatch Logs ``/aws/lambda/<name>`` as Lambda does, with Lambda's
  lines for a timeout (``Task timed out after 3.00 seconds``) and a runtime that exited
  (``Runtime exited with error: exit status 3``);
- sends a batch it discards after the mapping's retries to the mapping's on-failure destination (an
  SQS queue), in Lambda's record format (:func:`xflow.providers.aws_lambda.failures.kinesis_failure_record`),
  and lets the provider record those failures in the tracker after each pass that sent one.

Positions are kept per mapping and shard in ``<state>/<workflow_id>/emulate.json``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from xflow.aws import AwsSession, is_client_error, translate_errors
from xflow.core.errors import XflowError
from xflow.providers.aws_lambda.failures import kinesis_failure_record, send_failure_record
from xflow.providers.aws_lambda.invoke import DeployedFunction, Invocation, Invoker
from xflow.providers.aws_lambda.layers import unpack_layer
from xflow.providers.aws_lambda.mappings import Mappings
from xflow.providers.aws_lambda.packaging import artifact_path, code_sha256, tracker_function_name
from xflow.providers.aws_lambda.versions import Releases

log = logging.getLogger("xflow.emulate")


@dataclass
class ShardCursor:
    """Where one mapping is in one shard."""

    checkpoint: str | None = None
    iterator: str | None = None
    batch_limit: int | None = None
    failures: dict[str, int] = field(default_factory=dict)


@dataclass
class EmulatorReport:
    """What a run of the emulator did (``xflow emulate -o json`` prints it)."""

    invocations: int = 0
    records: int = 0
    failed_invocations: int = 0
    discarded_records: int = 0
    #: failure records sent to on-failure destinations
    failure_records: int = 0
    idle: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"invocations": self.invocations, "records": self.records,
                "failed_invocations": self.failed_invocations, "discarded_records": self.discarded_records,
                "failure_records": self.failure_records, "idle": self.idle}


class Emulator:
    """Polls the mapped streams and invokes the deployed functions; see the module docstring."""

    def __init__(self, workflow: Any, state_dir: Path, aws: AwsSession,
                 echo: Callable[[str], None] | None = None, functions: list[str] | None = None,
                 collect_failures: Callable[[], int] | None = None) -> None:
        self.workflow = workflow
        self.state_dir = Path(state_dir)
        self.aws = aws
        self.echo = echo or (lambda line: None)
        #: the deployed functions to run: the workflow's and its tracker, unless given
        self.function_names = functions or [*map(workflow.resource_name, workflow.functions),
                                            tracker_function_name(workflow.id)]
        self.functions: dict[str, DeployedFunction] = {}
        self.mappings: list[dict[str, Any]] = []
        self.cursors: dict[tuple[str, str], ShardCursor] = {}
        self.position_file = self.state_dir / workflow.id / "emulate.json"
        self._tmp = tempfile.TemporaryDirectory(prefix="xflow-emulate-")
        self.invoker = Invoker(aws, Path(self._tmp.name) / "invocations")
        self.report = EmulatorReport()
        #: records the failure records sent to the destinations in the tracker (the provider's collect_failures)
        self.collect_failures = collect_failures
        self._uncollected = 0

    def close(self) -> None:
        self._tmp.cleanup()

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        lam = self.aws.client("lambda")
        run_id = uuid.uuid4().hex
        day = time.strftime("%Y/%m/%d", time.gmtime())
        for name in self.function_names:
            with translate_errors(f"reading Lambda function {name}"):
                try:
                    alias = Releases(self.aws, self.workflow.id).alias(name)
                    qualifier = {"Qualifier": str(alias["FunctionVersion"])} if alias else {}
                    response = lam.get_function(FunctionName=name, **qualifier)
                except Exception as exc:
                    if is_client_error(exc, "ResourceNotFoundException"):
                        raise XflowError(f"function {name} is not deployed on this endpoint",
                                         "run 'xflow setup' for this workflow first") from None
                    raise
            config = response["Configuration"]
            data = self._code(name, config["CodeSha256"], (response.get("Code") or {}).get("Location"))
            root = Path(self._tmp.name) / name
            from xflow.sources.archive import safe_extract_zip

            safe_extract_zip(data, root, f"the deployed code of {name}")
            self.functions[name] = DeployedFunction(
                name, config["Handler"], float(config.get("Timeout", 3)), int(config.get("MemorySize", 128)),
                dict((config.get("Environment") or {}).get("Variables") or {}), root,
                f"{day}/[{config.get('Version') or '$LATEST'}]{run_id}",
                tuple(path for layer in config.get("Layers") or ()
                      for path in unpack_layer(self.aws, str(layer["Arn"]), Path(self._tmp.name) / "layers", self._code)))
            for mapping in Mappings(self.aws).of(name):  # the function's and its alias's
                if mapping.get("State", "Enabled") in ("Enabled", "Creating", "Updating", "Enabling") \
                        and ":kinesis:" in mapping.get("EventSourceArn", ""):
                    self.mappings.append(dict(mapping, FunctionName=name))
        self._load_positions()
        current = {m["UUID"] for m in self.mappings}
        self.cursors = {key: cursor for key, cursor in self.cursors.items() if key[0] in current}

    def _code(self, name: str, sha: str, location: str | None) -> bytes:
        """The zip whose CodeSha256 is ``sha``: from ``location`` when the endpoint serves it, else from the state
        folder (``name``: what the zip is of, for messages: ``reader``, ``layer L version 2``)."""
        if location and location.startswith(("http://", "https://")) and self._serves_code(location):
            try:
                with urllib.request.urlopen(location, timeout=5) as response:  # noqa: S310 (http(s) only)
                    data = response.read()
                if code_sha256(data) == sha:
                    return data
            except OSError as exc:
                log.debug("code location of %s not readable: %s", name, exc)
        path = artifact_path(self.state_dir, sha)
        if not path.exists():
            raise XflowError(
                f"{'' if name.startswith('layer ') else 'function '}{name}: the endpoint does not serve its code and "
                f"{self.state_dir} holds no artifact with its CodeSha256 {sha}",
                "the deployed code differs from what setup kept here: run 'xflow setup' again from this folder")
        data = path.read_bytes()
        if code_sha256(data) != sha:
            raise XflowError(f"{'' if name.startswith('layer ') else 'function '}{name}: artifact {path} does not "
                             f"match the deployed CodeSha256 {sha}",
                             "run 'xflow setup' again from this folder")
        return data

    @staticmethod
    def _serves_code(location: str) -> bool:
        """Real AWS serves code at a presigned URL; an emulated endpoint only on its own host."""
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if not endpoint:
            return True
        return urllib.parse.urlsplit(location).netloc == urllib.parse.urlsplit(endpoint).netloc

    def _load_positions(self) -> None:
        try:
            saved = json.loads(self.position_file.read_text())
        except (FileNotFoundError, ValueError):
            saved = {}
        for key, checkpoint in saved.items():
            uuid_, _, shard = key.partition("|")
            self.cursors[(uuid_, shard)] = ShardCursor(checkpoint=checkpoint)

    def _save_positions(self) -> None:
        data = {f"{u}|{s}": c.checkpoint for (u, s), c in self.cursors.items() if c.checkpoint}
        self.position_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.position_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.position_file)

    # ------------------------------------------------------------------ polling

    def run_pass(self) -> int:
        """One pass over every mapping and shard; returns how many records were handled."""
        handled = 0
        kinesis = self.aws.client("kinesis")
        for mapping in self.mappings:
            stream = mapping["EventSourceArn"].rpartition("/")[2]
            with translate_errors(f"listing the shards of {stream}"):
                try:
                    shards = kinesis.list_shards(StreamName=stream).get("Shards", [])
                except Exception as exc:
                    if is_client_error(exc, "ResourceNotFoundException"):
                        continue
                    raise
            for shard in shards:
                handled += self._poll_shard(mapping, stream, shard["ShardId"])
        return handled

    def _poll_shard(self, mapping: dict[str, Any], stream: str, shard_id: str) -> int:
        kinesis = self.aws.client("kinesis")
        cursor = self.cursors.setdefault((mapping["UUID"], shard_id), ShardCursor())
        with translate_errors(f"reading shard {shard_id} of {stream}"):
            if cursor.iterator is None:
                kwargs: dict[str, Any] = {"StreamName": stream, "ShardId": shard_id}
                if cursor.checkpoint:
                    kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=cursor.checkpoint)
                else:
                    kwargs["ShardIteratorType"] = mapping.get("StartingPosition") or "TRIM_HORIZON"
                cursor.iterator = kinesis.get_shard_iterator(**kwargs)["ShardIterator"]
            limit = cursor.batch_limit or int(mapping.get("BatchSize") or 100)
            try:
                response = kinesis.get_records(ShardIterator=cursor.iterator, Limit=limit)
            except Exception as exc:
                if is_client_error(exc, "ExpiredIteratorException"):  # a long invocation: resume from the checkpoint
                    cursor.iterator = None
                    return 0
                if is_client_error(exc, "ProvisionedThroughputExceededException"):
                    return 0
                raise
        records = response.get("Records", [])
        if not records:
            cursor.iterator = response.get("NextShardIterator")
            return 0
        self._invoke_batch(mapping, stream, shard_id, cursor, records, response.get("NextShardIterator"))
        return len(records)

    def _invoke_batch(self, mapping: dict[str, Any], stream: str, shard_id: str, cursor: ShardCursor,
                      records: list[dict[str, Any]], next_iterator: str | None) -> None:
        function = self.functions[mapping["FunctionName"]]
        event = {"Records": [self._lambda_record(mapping, shard_id, r) for r in records]}
        invocation = self.run_invocation(function, event)
        ok, result = invocation.ok, invocation.result
        failures = len(result.get("batchItemFailures") or []) if ok and isinstance(result, dict) else 0
        self.echo(f"{function.name}: {len(records)} record(s) from {stream}/{shard_id}: "
                  + ("ok" if ok and not failures else f"{failures} failed" if ok else "invocation failed"))
        self.report.invocations += 1
        self.report.records += len(records)
        max_retries = int(mapping.get("MaximumRetryAttempts", -1))
        first = records[0]["SequenceNumber"]
        if ok:
            reports = "ReportBatchItemFailures" in (mapping.get("FunctionResponseTypes") or [])
            answer = result if isinstance(result, dict) and reports else {}
            failed = [str(item.get("itemIdentifier")) for item in answer.get("batchItemFailures") or []
                      if isinstance(item, dict)]
            sequences = {r["SequenceNumber"] for r in records}
            if not failed:
                self._advance(cursor, records[-1]["SequenceNumber"], next_iterator)
                return
            if set(failed) <= sequences:  # an unknown identifier fails the whole batch, as on Lambda
                self._partial_failure(mapping, function, stream, shard_id, cursor, records,
                                      min(int(f) for f in failed), max_retries, invocation)
                return
        self.report.failed_invocations += 1
        cursor.failures[first] = cursor.failures.get(first, 0) + 1
        if 0 <= max_retries < cursor.failures[first]:
            self.report.discarded_records += len(records)
            self.echo(f"{function.name}: a batch of {len(records)} record(s) from {stream} failed "
                      f"{cursor.failures[first]} times; discarded")
            self._send_failure(mapping, shard_id, records, cursor.failures[first], invocation)
            cursor.failures.pop(first)
            cursor.batch_limit = None
            self._advance(cursor, records[-1]["SequenceNumber"], None)
            return
        if mapping.get("BisectBatchOnFunctionError") and len(records) > 1:
            cursor.batch_limit = max(1, len(records) // 2)
        cursor.iterator = None

    def _partial_failure(self, mapping: dict[str, Any], function: DeployedFunction, stream: str, shard_id: str,
                         cursor: ShardCursor, records: list[dict[str, Any]], lowest: int, max_retries: int,
                         invocation: Invocation) -> None:
        """Records before the first failed one are done; that one is retried, or dropped after its retries."""
        done = [r for r in records if int(r["SequenceNumber"]) < lowest]
        key = str(lowest)
        cursor.failures[key] = cursor.failures.get(key, 0) + 1  # this invocation was the failed record's attempt
        if done:
            self._advance(cursor, done[-1]["SequenceNumber"], None)
            return
        if 0 <= max_retries < cursor.failures[key]:
            self.report.discarded_records += 1
            self.echo(f"{function.name}: record {key} of {stream} failed {cursor.failures[key]} times; discarded")
            self._send_failure(mapping, shard_id, [r for r in records if r["SequenceNumber"] == key] or records[:1],
                               cursor.failures[key], invocation)
            cursor.failures.pop(key)
            self._advance(cursor, key, None)
        else:
            cursor.iterator = None

    def _send_failure(self, mapping: dict[str, Any], shard_id: str, records: list[dict[str, Any]], invocations: int,
                      invocation: Invocation) -> None:
        """Send the discarded batch's failure record to the mapping's on-failure destination, if it has one."""
        destination = ((mapping.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        if not destination:
            return
        arrivals = [_epoch(r.get("ApproximateArrivalTimestamp")) for r in records]
        record = kinesis_failure_record(
            request_id=invocation.request_id, function_arn=mapping["FunctionArn"], invoke_count=invocations,
            function_error=invocation.function_error, shard_id=shard_id,
            start_sequence=records[0]["SequenceNumber"], end_sequence=records[-1]["SequenceNumber"],
            batch_size=len(records), stream_arn=mapping["EventSourceArn"], first_arrival=arrivals[0],
            last_arrival=arrivals[-1])
        send_failure_record(self.aws, destination, record)
        self.report.failure_records += 1
        self._uncollected += 1
        self.echo(f"{mapping['FunctionName']}: failure record sent to {destination.rpartition(':')[2]}")

    def _collect(self) -> None:
        """Have the failure records sent so far recorded in the tracker (a failure is retried after the next pass)."""
        if not self._uncollected or self.collect_failures is None:
            return
        try:
            recorded = self.collect_failures()
        except Exception as exc:  # noqa: BLE001 - the records stay in the queue, for the next pass or track
            log.warning("recording the failure records: %s", exc)
            return
        self._uncollected = 0
        if recorded:
            self.echo(f"{recorded} failed delivery record(s) written to the tracker")

    def _advance(self, cursor: ShardCursor, checkpoint: str, next_iterator: str | None) -> None:
        cursor.failures = {k: v for k, v in cursor.failures.items() if int(k) > int(checkpoint)}
        cursor.checkpoint = checkpoint
        cursor.iterator = next_iterator
        cursor.batch_limit = None
        self._save_positions()

    def _lambda_record(self, mapping: dict[str, Any], shard_id: str, record: dict[str, Any]) -> dict[str, Any]:
        arrived = record.get("ApproximateArrivalTimestamp")
        return {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": record.get("PartitionKey"),
                "sequenceNumber": record["SequenceNumber"],
                "data": base64.b64encode(bytes(record["Data"])).decode(),
                "approximateArrivalTimestamp": arrived.timestamp() if isinstance(arrived, datetime) else time.time(),
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": f"{shard_id}:{record['SequenceNumber']}",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "",
            "awsRegion": self.aws.region,
            "eventSourceARN": mapping["EventSourceArn"],
        }

    # ------------------------------------------------------------------ invoking

    def invoke(self, function: DeployedFunction, event: dict[str, Any]) -> tuple[bool, Any]:
        """Run the function once on ``event`` in a subprocess; (succeeded, its result)."""
        invocation = self.run_invocation(function, event)
        return invocation.ok, invocation.result

    def run_invocation(self, function: DeployedFunction, event: dict[str, Any]) -> Invocation:
        """Run the function once on ``event`` in a subprocess, writing its log as Lambda does."""
        return self.invoker.run(function, event)

    # ------------------------------------------------------------------ loops

    def run(self, until_idle: bool = False, poll_interval: float = 1.0, timeout: float | None = None) -> EmulatorReport:
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            handled = self.run_pass()
            self._collect()
            if handled == 0 and until_idle:
                self.report.idle = True
                return self.report
            if deadline is not None and time.monotonic() > deadline:
                return self.report
            if handled == 0:
                time.sleep(poll_interval)


def _epoch(value: Any) -> float:
    return value.timestamp() if hasattr(value, "timestamp") else time.time()


def emulate(workflow: Any, state_dir: Path, aws: AwsSession, *, until_idle: bool = False,
            poll_interval: float = 1.0, timeout: float | None = None,
            echo: Callable[[str], None] | None = None,
            collect_failures: Callable[[], int] | None = None) -> EmulatorReport:
    """Load the deployed functions and mappings of ``workflow`` and run them (see the module docstring)."""
    emulator = Emulator(workflow, state_dir, aws, echo, collect_failures=collect_failures)
    try:
        emulator.load()
        if not emulator.mappings:
            raise XflowError(f"no event source mappings of workflow {workflow.id} on this endpoint",
                             "run 'xflow setup' for this workflow first")
        return emulator.run(until_idle=until_idle, poll_interval=poll_interval, timeout=timeout)
    finally:
        emulator.close()
