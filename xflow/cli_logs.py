"""The ``xflow logs`` command, and the ``--log-route`` option of ``xflow worker`` and ``xflow run`` (registered by
:mod:`xflow.cli`).

Importing this module costs click only: the engine, the readers and the destinations are imported when a command
runs.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from xflow.cli_common import engine_for

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_AGO = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d)?\s*\Z")


def parse_since(text: str, now: float | None = None) -> float:
    """``10m``, ``2h``, ``30s``, ``1d`` ago (a bare number: seconds), or an ISO 8601 time (UTC when it names no
    zone), as seconds since the epoch."""
    from xflow.core.errors import XflowError

    now = time.time() if now is None else now
    match = _AGO.match(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2) or "s"]
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise XflowError(f"--since {text!r} is neither a time ago (10m, 2h, 1d) nor an ISO 8601 time",
                         "write e.g. --since 10m or --since 2026-11-27T13:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


@click.command("logs")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--execution-id", metavar="ID", help="Only this execution's records (default: the workflow's).")
@click.option("--function", "functions", metavar="NAME", multiple=True, help="Only these functions (repeatable).")
@click.option("--since", metavar="WHEN", help="Only records from then on: 10m, 2h, 1d ago, or an ISO 8601 time "
                                              "(default: 1h for the workflow's records, all of one execution's).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records until Ctrl-C.")
@click.option("--source", type=click.Choice(["auto", "tracker", "file", "cloudwatch"]), default="auto",
              show_default=True, help="Where records are read: the tracker, the workflow's file route, or CloudWatch "
                                      "Logs (auto: the file route if it exists, CloudWatch on AWS, else the tracker).")
@click.option("--interval", type=click.FloatRange(0.05), default=1.0, show_default=True, metavar="SECONDS",
              help="With --follow: how often to look for new records.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="One line per record, or JSON (with --follow: one JSON object per line).")
@click.pass_context
def logs_command(ctx: click.Context, file: Path, execution_id: str | None, functions: tuple[str, ...],
                 since: str | None, follow: bool, source: str, interval: float, output: str, **backends: Any) -> None:
    """Log records of FILE's workflow (every function's lines and delivery outcomes), merged in time order.

    Exit status 1 when an execution id was given and it has no records (without --follow).
    """
    import threading

    from xflow.core.errors import XflowError
    from xflow.core.worker import stop_on_signals
    from xflow.logs.reading import LogReader, Query
    from xflow.logs.reading import follow as follow_records

    engine = engine_for(ctx, str(file), **backends)
    unknown = [name for name in functions if name not in engine.workflow.functions]
    if unknown:
        raise XflowError(f"workflow {engine.workflow.id!r} has no function {unknown[0]!r}",
                         f"its functions are: {', '.join(engine.workflow.functions)}")
    start = parse_since(since) if since else (None if execution_id else parse_since("1h"))
    query = Query(execution_id, tuple(functions), start)
    reader = LogReader(engine, source)
    if not follow:
        records = reader.read(query)
        if output == "json":
            click.echo(json.dumps({"workflow_id": engine.workflow.id, "execution_id": execution_id,
                                   "source": reader.source, "records": [r.as_dict() for r in records]},
                                  indent=2, ensure_ascii=False))
        else:
            for record in records:
                click.echo(record.text())
        if execution_id and not records:
            click.echo(f"no log records of execution {execution_id} in the {reader.source}", err=True)
            sys.exit(1)
        return
    stop = threading.Event()

    def caught_up() -> None:
        click.echo(f"following the records of {execution_id or engine.workflow.id} in the {reader.source} "
                   "(Ctrl-C to stop)", err=True)

    with stop_on_signals(stop):
        for record in follow_records(reader, query, interval, stop, caught_up):
            click.echo(json.dumps(record.as_dict(), ensure_ascii=False) if output == "json" else record.text())
            sys.stdout.flush()


def add_log_route_option(command: click.Command) -> None:
    """Give ``command`` (``worker``, ``run``) the repeatable ``--log-route NAME[:KEY=VALUE,...]`` option: its workers
    route the workflow's records there too, beside the file's ``logging:`` routes."""
    command.params.append(click.Option(
        ["--log-route", "log_routes"], multiple=True, metavar="NAME[:KEY=VALUE,...]",
        help="Send handlers' log records to a log destination too, e.g. file:path=logs.jsonl or "
             "syslog:address=tcp://127.0.0.1:514 (repeatable; 'xflow plugins --options' lists their options)."))
    callback = command.callback
    assert callback is not None

    @functools.wraps(callback)
    def with_routes(*args: Any, log_routes: tuple[str, ...] = (), **kwargs: Any) -> Any:
        if log_routes:
            from xflow.logs.routing import add_process_routes, parse_route

            add_process_routes([parse_route(text) for text in log_routes])
        return callback(*args, **kwargs)

    command.callback = with_routes
