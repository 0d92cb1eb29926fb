"""One Lambda invocation, as the Lambda service's Python runtime makes it, for ``xflow emulate``.

The deployed code (a task folder unpacked from the function's zip) runs in a subprocess with Lambda's environment
variables and the event as Lambda passes it, within the function's timeout. Its output goes to CloudWatch Logs
``/aws/lambda/<name>`` with Lambda's lines: ``START``/``END``/``REPORT``, ``Task timed out after 3.00 seconds`` for a
timeout, ``Runtime exited with error: exit status 3`` for a runtime that exited without answering.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xflow.aws import AwsSession, ignoring, translate_errors

#: runs a Lambda handler from a task folder: argv = task root, handler, event file, result file, then the folders of
#: its layers' packages (after the task root on the path, as Lambda puts /opt/python after /var/task)
RUNNER = r"""
import importlib, json, sys, traceback
root, handler, event_file, result_file = sys.argv[1:5]
sys.path[0:0] = [root, *sys.argv[5:]]
class Context:
    def __init__(self):
        import os
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.aws_request_id = os.environ.get("XFLOW_REQUEST_ID", "")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    def get_remaining_time_in_millis(self):
        return 60000
try:
    module_name, _, function_name = handler.rpartition(".")
    function = getattr(importlib.import_module(module_name), function_name)
    with open(event_file) as f:
        event = json.load(f)
    result = function(event, Context())
    with open(result_file, "w") as f:
        json.dump(result, f)
except Exception as exc:
    traceback.print_exc()
    with open(result_file, "w") as f:
        json.dump({"errorType": type(exc).__name__, "errorMessage": str(exc)}, f)
    sys.exit(1)
"""


@dataclass
class DeployedFunction:
    """A deployed function as the emulator runs it: its configuration and the folder its zip was unpacked into."""

    name: str
    handler: str
    timeout: float
    memory: int
    environment: dict[str, str]
    task_root: Path
    log_stream: str
    #: the folders its layers put on the path (``/opt/python`` on Lambda), in order
    layer_paths: tuple[Path, ...] = ()


@dataclass
class Invocation:
    """One invocation's outcome."""

    ok: bool
    result: Any
    request_id: str
    #: Lambda's ``functionError`` for a failed invocation ("Unhandled"), None when it succeeded
    function_error: str | None = None


class Invoker:
    """Runs deployed functions once per event; ``folder`` holds each invocation's event and result files meanwhile."""

    def __init__(self, aws: AwsSession, folder: Path) -> None:
        self.aws = aws
        self.folder = Path(folder)

    def environment(self, function: DeployedFunction, request_id: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XFLOW_", "PYTHON"))}
        credentials = self.aws.session.get_credentials()
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = frozen.access_key, frozen.secret_key
            if frozen.token:
                env["AWS_SESSION_TOKEN"] = frozen.token
            else:
                env.pop("AWS_SESSION_TOKEN", None)
        region = self.aws.require_region()
        env.update(function.environment)
        env.update({
            "AWS_REGION": region, "AWS_DEFAULT_REGION": region, "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory), "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(int(function.timeout)), "LAMBDA_TASK_ROOT": str(function.task_root),
            "_HANDLER": function.handler, "XFLOW_REQUEST_ID": request_id, "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        return env

    def run(self, function: DeployedFunction, event: dict[str, Any]) -> Invocation:
        """Run the function once on ``event`` in a subprocess, writing its log as Lambda does."""
        request_id = str(uuid.uuid4())
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        event_file, result_file = folder / f"{request_id}.event.json", folder / f"{request_id}.result.json"
        event_file.write_text(json.dumps(event))
        started = time.perf_counter()
        lines = [f"START RequestId: {request_id} Version: $LATEST"]
        try:
            done = subprocess.run(
                [sys.executable, "-c", RUNNER, str(function.task_root), function.handler, str(event_file),
                 str(result_file), *map(str, function.layer_paths)],
                cwd=function.task_root, env=self.environment(function, request_id), capture_output=True,
                text=True, timeout=function.timeout, check=False)
            output = (done.stdout + done.stderr).splitlines()
            ok = done.returncode == 0
            exit_code = done.returncode
        except subprocess.TimeoutExpired as exc:
            output = [x for x in ((exc.stdout or b"").decode("utf-8", "replace") if isinstance(exc.stdout, bytes)
                                  else (exc.stdout or "")).splitlines()]
            output.append(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {request_id} "
                          f"Task timed out after {function.timeout:.2f} seconds")
            ok = False
            exit_code = None
        result = None
        if result_file.exists():
            with contextlib.suppress(ValueError):
                result = json.loads(result_file.read_text() or "null")
        if not ok and isinstance(result, dict) and result.get("errorMessage"):
            output.append(json.dumps(result))
        elif not ok and exit_code is not None:  # the runtime exited before answering, as Lambda logs it
            output += [f"RequestId: {request_id} Error: Runtime exited with error: {exit_status(exit_code)}",
                       "Runtime.ExitError"]
        elapsed = (time.perf_counter() - started) * 1000
        lines += output
        lines += [f"END RequestId: {request_id}",
                  f"REPORT RequestId: {request_id}\tDuration: {elapsed:.2f} ms\tMemory Size: {function.memory} MB"]
        self.write_logs(function, lines)
        event_file.unlink(missing_ok=True)
        result_file.unlink(missing_ok=True)
        return Invocation(ok, result, request_id, None if ok else "Unhandled")

    def write_logs(self, function: DeployedFunction, lines: list[str]) -> None:
        logs = self.aws.client("logs")
        group = f"/aws/lambda/{function.name}"
        now = int(time.time() * 1000)
        events: list[dict[str, Any]] = [
            {"timestamp": now, "message": line.encode("utf-8")[:200_000].decode("utf-8", "ignore")} for line in lines if line]
        with translate_errors(f"writing to log group {group}"):
            for create, kwargs in ((logs.create_log_group, {"logGroupName": group}),
                                   (logs.create_log_stream, {"logGroupName": group,
                                                             "logStreamName": function.log_stream})):
                with ignoring("ResourceAlreadyExistsException"):
                    create(**kwargs)
            batch: list[dict[str, Any]] = []
            size = 0
            to_send: list[dict[str, Any] | None] = [*events, None]  # None: the end, which sends the last batch
            for event in to_send:
                cost = len(event["message"].encode("utf-8")) + 26 if event else 0
                if batch and (event is None or len(batch) >= 1000 or size + cost > 1_000_000):
                    logs.put_log_events(logGroupName=group, logStreamName=function.log_stream, logEvents=batch)
                    batch, size = [], 0
                if event:
                    batch.append(event)
                    size += cost


def exit_status(code: int) -> str:
    """How Lambda's runtime names a process's end: 'exit status 3', 'signal: killed'."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"signal: {(signal.strsignal(-code) or signal.Signals(-code).name).lower()}"
    except ValueError:
        return f"signal: {-code}"
