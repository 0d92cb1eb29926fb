"""The ``xflow track`` and ``xflow redrive`` commands (registered by :mod:`xflow.cli`), the tracking summary's table
(also printed by ``xflow run``), and :func:`redrive_result`, the object of ``redrive -o json`` and of xflow serve's
re-drive route.

Importing this module costs click only: the engine and rich are imported when a command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from xflow.cli_common import OUTPUT, STATE_STYLE, engine_for, plugin_options, print_json, rich_console
from xflow.cli_deploy import stage_of

if TYPE_CHECKING:
    from xflow.core.engine import Engine


@click.command("track")
@click.argument("file", required=False)
@click.argument("execution_id", required=False)
@click.option("-flow", "--flow", "flow", metavar="WORKFLOW_ID", help="Workflow id set up in this state folder.")
@click.option("-execution_id", "--execution-id", "execution_option", metavar="ID", help="The execution to track.")
@plugin_options
@OUTPUT
@click.pass_context
def track_command(ctx: click.Context, file: str | None, execution_id: str | None, flow: str | None,
                  execution_option: str | None, transport: str | None, provider: str | None, tracker: str | None,
                  options: tuple[str, ...], output: str) -> None:
    """Show an execution's state: FILE EXECUTION_ID, or -flow WORKFLOW -execution_id ID.

    Exit status 1 when the execution failed.
    """
    from xflow.core.engine import UnknownExecutionError, read_setup_record
    from xflow.core.errors import XflowError
    from xflow.core.stages import staged_id

    execution = execution_option or execution_id
    if file and not execution and flow:
        execution = file  # `xflow track -flow word_count 112233`
        file = None
    if not execution:
        raise click.UsageError("give the execution id: xflow track FILE EXECUTION_ID (or -execution_id ID)")
    if file is None:
        if not flow:
            raise click.UsageError("give the workflow file, or -flow WORKFLOW_ID")
        record = read_setup_record(ctx.obj["state_dir"], staged_id(flow, stage_of(ctx)))
        if record is None:
            raise XflowError(f"workflow {flow!r} has not been set up in {ctx.obj['state_dir']}",
                             "run from the folder where 'xflow setup' ran, pass --state-dir, or give the workflow file")
        file = record["workflow_file"]
    engine = engine_for(ctx, str(file), transport=transport, provider=provider, tracker=tracker, options=options)
    if flow and flow not in (engine.workflow.id, engine.workflow.unstaged_id):
        raise XflowError(f"-flow {flow!r} does not match the workflow id {engine.workflow.id!r} of {file}")
    try:
        summary = engine.track(execution, known=True)
    except UnknownExecutionError as exc:
        if output == "json":  # the contract's object all the same (every event not_reached); the error on stderr
            print_json(exc.summary)
        raise
    if output == "json":
        print_json(summary)
    else:
        print_summary(summary)
    sys.exit(1 if summary["status"] == "failed" else 0)


@click.command("redrive")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("execution_id")
@click.option("--function", "functions", metavar="NAME", multiple=True,
              help="Re-drive only what these functions failed on (repeatable; default: every failed function).")
@plugin_options
@OUTPUT
@click.pass_context
def redrive_command(ctx: click.Context, file: Path, execution_id: str, functions: tuple[str, ...],
                    transport: str | None, provider: str | None, tracker: str | None, options: tuple[str, ...],
                    output: str) -> None:
    """Publish again the events that functions of EXECUTION_ID failed on for good (after you fixed the cause).

    Only the failed functions run them again: the others already know the events' ids.
    """
    engine = engine_for(ctx, str(file), transport=transport, provider=provider, tracker=tracker, options=options)
    result = redrive_result(engine, execution_id, functions)
    redriven = result["redriven"]
    if output == "json":
        print_json(result)
    elif not redriven:
        click.echo(f"execution {execution_id}: nothing failed for good, nothing to re-drive")
    else:
        for item in redriven:
            click.echo(f"re-driven {item['event']} ({item['event_id']}) for {item['function']}")


def redrive_result(engine: Engine, execution_id: str, functions: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Re-drive and say what was re-driven: the object of ``xflow redrive -o json`` (and of xflow serve's route)."""
    redriven = engine.redrive(execution_id, list(functions) or None)
    return {"workflow_id": engine.workflow.id, "execution_id": execution_id, "redriven": redriven}


def print_summary(summary: dict[str, Any]) -> None:
    """The tracking summary as a table, then the last unprocessed event, any warning, and each failure with its
    subscriber's logs."""
    from rich.markup import escape
    from rich.table import Table

    console = rich_console()
    status = summary["status"]
    table = Table(title=f"workflow {summary['workflow_id']}  execution {escape(summary['execution_id'])}  "
                        f"[{STATE_STYLE[status]}]{status}[/]", title_justify="left")
    for column in ("event", "state", "count", "first published", "subscribers"):
        table.add_column(column)
    for event in summary["events"]:
        subscribers = ", ".join(f"{s['name']} [{STATE_STYLE[s['state']]}]{s['state']}[/] ({s['attempts']}x)"
                                for s in event["subscribers"]) or "-"
        table.add_row(event["name"], f"[{STATE_STYLE[event['state']]}]{event['state']}[/]", str(event["count"]),
                      event["first_published_at"] or "-", subscribers)
    console.print(table)
    last = summary["last_unprocessed_event"]
    console.print(f"last unprocessed event: {last or 'none, every event was processed'}")
    if summary.get("warning"):
        console.print(f"[bold yellow]warning:[/] {escape(str(summary['warning']))}")
    for event in summary["events"]:
        for subscriber in event["subscribers"]:
            if subscriber["state"] == "failed":
                console.print(f"[bold red]{subscriber['name']} failed on {event['name']}[/] after "
                              f"{subscriber['attempts']} attempts: {escape(str(subscriber['error']))}")
                for line in subscriber["logs"]:
                    console.print(f"  | {line}", markup=False)
