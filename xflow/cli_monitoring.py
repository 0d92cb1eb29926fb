"""The ``xflow status`` command, and the ``--metrics-port/--metrics-host`` options of ``xflow worker`` and
``xflow serve`` (registered by :mod:`xflow.cli` and :mod:`xflow.cli_serve`).

Importing this module costs click only: the report's modules, the engine and ``prometheus_client`` (the
``monitoring`` extra) are imported when a command runs, the last only when ``--metrics-port`` is given.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from xflow.cli_common import OUTPUT, engine_for, print_json, rich_console

if TYPE_CHECKING:
    from xflow.core.engine import Engine
    from xflow.monitoring.metrics import MetricsServer

def metrics_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--metrics-port`` and ``--metrics-host``, for the commands that run workers."""
    command = click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
                           help="Address the metrics are served on (with --metrics-port).")(command)
    return click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
                        help="Serve Prometheus metrics on http://ADDRESS:PORT/metrics (needs the monitoring extra: "
                             "pip install 'xflow[monitoring]').")(command)


def start_metrics(ctx: click.Context, engines: Sequence[Engine], port: int | None, host: str) -> MetricsServer | None:
    """Serve metrics when ``port`` is given (before the workers start: they report to the observer it installs).

    The lag and executions read at scrape time go through the command's own ``engines`` (the plugins its workers
    use: a second engine's plugins in a worker process would open its SQLite files once more)."""
    if port is None:
        return None
    from xflow.core.errors import XflowError

    try:
        from xflow.monitoring.metrics import start_metrics_server
    except ImportError as exc:
        raise XflowError(f"--metrics-port needs the monitoring extra ({exc.name} is not installed)",
                         "pip install 'xflow[monitoring]'") from None
    server = start_metrics_server(port, host, lambda: engines)
    ctx.call_on_close(server.close)
    click.echo(f"metrics on {server.url}", err=True)
    return server


@click.command("status")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-lag", type=click.IntRange(0), default=1000, show_default=True, metavar="RECORDS",
              help="A function with more records waiting in its partitions is behind.")
@click.option("--max-age", type=click.FloatRange(0), default=300.0, show_default=True, metavar="SECONDS",
              help="A function whose oldest unsettled event waited longer is behind.")
@click.option("--max-failures", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="A function with more deliveries failed for good in the last 5 minutes is failing.")
@OUTPUT
@click.pass_context
def status_command(ctx: click.Context, file: Path, max_lag: int, max_age: float, max_failures: int, output: str,
                   **backends: Any) -> None:
    """Per function of FILE's workflow: lag, deliveries, failures and dead letters in the last 5 and 60 minutes,
    the oldest unsettled event's age, and whether a worker holds its partitions.

    Exit status 1 when a function is failing or falling behind (see the thresholds), else 0.
    """
    from xflow.monitoring.status import Thresholds, status_report

    engine = engine_for(ctx, str(file), **backends)
    report = status_report(engine, Thresholds(max_lag, max_age, max_failures))
    if output == "json":
        print_json(report)
    else:
        _print_status(report)
    sys.exit(0 if report["status"] == "ok" else 1)


STATE_STYLE = {"ok": "green", "behind": "bold yellow", "failing": "bold red"}


def _print_status(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = rich_console()
    table = Table(title=f"workflow {report['workflow_id']}  [{STATE_STYLE[report['status']]}]{report['status']}[/]",
                  title_justify="left")
    for column in ("function", "state", "lag", "oldest unsettled", "deliveries 5m/60m", "failures 5m/60m",
                   "dead letters 5m/60m", "workers"):
        table.add_column(column)
    for row in report["functions"]:
        lag = row["lag"]
        if lag is None or lag["records"] is None:
            shown_lag = "unknown"
        else:
            shown_lag = f"{lag['records']}{'' if lag['exact'] else '+'} records"
        oldest = row["oldest_unsettled_seconds"]
        workers = {True: "yes", False: "[yellow]none[/]", None: "unknown"}[row["workers_hold_partitions"]]
        table.add_row(escape(row["name"]), f"[{STATE_STYLE[row['state']]}]{row['state']}[/]", shown_lag,
                      "-" if oldest is None else f"{oldest:.0f} s", _pair(row["deliveries"]), _pair(row["failures"]),
                      _pair(row["dead_letters"]), workers)
    console.print(table)
    for row in report["functions"]:
        for reason in row["reasons"]:
            console.print(f"[{STATE_STYLE[row['state']]}]{escape(row['name'])} is {row['state']}[/]: {escape(reason)}")
    if not report["complete"]:
        console.print(f"counted over the {report['executions_examined']} most recent executions")


def _pair(counts: dict[str, int]) -> str:
    return f"{counts['5m']}/{counts['60m']}"
