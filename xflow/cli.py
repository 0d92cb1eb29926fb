"""The ``xflow`` command: a thin layer over :class:`xflow.core.engine.Engine`.

This module holds the command group and its entry point, the workflow's life cycle (validate, setup, teardown,
publish, run, worker), and registers the commands of the ``xflow.cli_*`` modules; what commands share is in
:mod:`xflow.cli_common`. Exit status: 0 success, 1 the work failed, 2 bad usage or bad input. Heavy modules (the
engine, marshmallow, rich, backends' clients) are imported inside commands, never at start-up.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from xflow.cli_common import KINDS, OUTPUT, engine_for, plugin_options, print_json, progress_printer, report_changes
from xflow.cli_deploy import COMMANDS as DEPLOY_COMMANDS
from xflow.cli_deploy import from_package_option, use_package
from xflow.cli_input import json_object_argument
from xflow.cli_logs import add_log_route_option, logs_command
from xflow.cli_monitoring import metrics_options, start_metrics, status_command
from xflow.cli_plugins import graph_command, plugins_group
from xflow.cli_rollout import COMMANDS as ROLLOUT_COMMANDS
from xflow.cli_rollout import apply_strategy, strategy_option
from xflow.cli_serve import executions_command, serve_command
from xflow.cli_track import print_summary, redrive_command, track_command
from xflow.emulate import emulate_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="xflow")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), envvar="XFLOW_STATE_DIR",
              default=".xflow", show_default=True, help="Where setup records and embedded backends keep state.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, state_dir: Path, verbose: int) -> None:
    """xflow: event-driven workflows of functions subscribed to streams.

    Runs on your machine with no cloud (xflow run), on AWS Kinesis + Lambda (xflow setup),
    or on Kafka; every execution is tracked by its execution_id (xflow track).
    """
    from xflow.core.redact import RedactingFormatter

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("xflow")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.addLevelName(logging.WARNING, "warning")
    ctx.ensure_object(dict)["state_dir"] = state_dir


# -- validate ---------------------------------------------------------------------------------
@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@OUTPUT
def validate(file: Path, output: str) -> None:
    """Validate a workflow file; every problem is reported as FILE:LINE: path: message.

    Beyond the file itself: sources xflow cannot fetch, handlers missing from local sources (read, never
    run), plugin names that are not installed, and runtimes that the file's provider does not accept.
    """
    from xflow.core.config import validate_workflow
    from xflow.core.errors import WorkflowFileError
    from xflow.providers.aws_lambda import SUPPORTED_RUNTIMES

    try:
        workflow = validate_workflow(file, runtimes={"lambda": SUPPORTED_RUNTIMES})
    except WorkflowFileError as exc:
        if output == "json":
            print_json({"file": str(file), "valid": False, "problems": exc.problems,
                        "problem_count": getattr(exc, "total", len(exc.problems))})
            sys.exit(2)
        raise
    if output == "json":
        print_json({"file": str(file), "valid": True, "workflow_id": workflow.id,
                    "functions": list(workflow.functions), "events": list(workflow.flow)})
        return
    click.echo(f"{file}: valid: workflow {workflow.id!r}, {len(workflow.functions)} functions, "
               f"{len(workflow.flow)} events ({' -> '.join(workflow.flow)})")


# -- setup / teardown -------------------------------------------------------------------------
@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("-file", "seed_file", type=click.Path(dir_okay=False, path_type=Path), hidden=True)
@plugin_options
@click.option("--dry-run", is_flag=True, help="Print the plan only; change nothing.")
@from_package_option
@strategy_option
@OUTPUT
@click.pass_context
def setup(ctx: click.Context, file: Path | None, seed_file: Path | None, transport: str | None, provider: str | None,
          tracker: str | None, options: tuple[str, ...], dry_run: bool, package: Path | None, output: str) -> None:
    """Create or update streams, functions and tracker for FILE (idempotent).

    Defaults: --transport kinesis --provider lambda --tracker cloudwatch. `-file FILE` works too.
    """
    path = file or seed_file
    if path is None:
        raise click.UsageError("give the workflow file: xflow setup FILE")
    engine = engine_for(ctx, str(path), transport=transport, provider=provider, tracker=tracker, options=options,
                        aws_defaults=True)
    apply_strategy(ctx, engine)  # --strategy over the file's deploy.strategy
    use_package(engine, package)
    report = engine.setup(dry_run=dry_run, on_step=progress_printer(output))
    report_changes(report, output, "change")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@plugin_options
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@OUTPUT
@click.pass_context
def teardown(ctx: click.Context, file: Path, transport: str | None, provider: str | None, tracker: str | None,
             options: tuple[str, ...], dry_run: bool, output: str) -> None:
    """Remove everything setup created for FILE (uses what setup recorded)."""
    from xflow.core.errors import XflowError

    engine = engine_for(ctx, str(file), transport=transport, provider=provider, tracker=tracker, options=options)
    chosen_by_file = any(engine.workflow.plugin_choice(kind).name for kind in KINDS)
    if engine.record is None and not (transport or provider or tracker or chosen_by_file):
        raise XflowError(f"workflow {engine.workflow.id!r} has no setup record in {ctx.obj['state_dir']}, so which "
                         "backends to clean is unknown",
                         "run from the folder where setup ran (or pass --state-dir), or name them: "
                         "--transport kinesis --provider lambda --tracker cloudwatch")
    report = engine.teardown(dry_run=dry_run, on_step=progress_printer(output))
    report_changes(report, output, "remove")


# -- publish / run / worker -------------------------------------------------------------------
@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("event")
@click.argument("data")
@click.option("--execution-id", help="Execution id (default: the data's execution_id, else a new one).")
@plugin_options
@click.pass_context
def publish(ctx: click.Context, file: Path, event: str, data: str, execution_id: str | None, transport: str | None,
            provider: str | None, tracker: str | None, options: tuple[str, ...]) -> None:
    """Publish EVENT with DATA (a JSON object, or @file.json); prints the execution id."""
    payload = json_object_argument(data, "DATA")
    engine = engine_for(ctx, str(file), transport=transport, provider=provider, tracker=tracker, options=options)
    click.echo(engine.publish(event, payload, execution_id))


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--event", help="Event to publish (default: the first in flow order).")
@click.option("--data", default="{}", show_default=True, help="The event's data: a JSON object, or @file.json.")
@click.option("--execution-id", help="Execution id (default: a new one).")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds to wait for the execution to settle.")
@plugin_options
@OUTPUT
@click.pass_context
def run(ctx: click.Context, file: Path, event: str | None, data: str, execution_id: str | None, timeout: float,
        transport: str | None, provider: str | None, tracker: str | None, options: tuple[str, ...],
        output: str) -> None:
    """Set up (local/local/sqlite by default), publish, process until the execution settles.

    Prints the final event's data and the tracking summary; exit 0 if it succeeded, 1 if not.
    """
    import threading

    from xflow.core.collector import worker_collector
    from xflow.core.worker import stop_on_signals

    payload = json_object_argument(data, "--data")
    engine = engine_for(ctx, str(file), transport=transport, provider=provider, tracker=tracker, options=options)
    stop = threading.Event()
    # SIGTERM/Ctrl-C: stop waiting, report what was reached (exit 1 unless done); the collector set for a worker
    with stop_on_signals(stop), worker_collector():
        summary = engine.run(event, payload, execution_id, timeout=timeout, stop=stop)
    if output == "json":
        print_json(summary)
    else:
        click.echo(json.dumps(summary["result"], indent=2, ensure_ascii=False))
        print_summary(summary)
        if "timed_out_after_seconds" in summary:
            click.echo(f"the execution did not settle within {timeout:g} s (--timeout)", err=True)
    sys.exit(0 if summary["status"] == "succeeded" else 1)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--function", "functions", metavar="NAME", multiple=True,
              help="Run only these functions (repeatable; default: all).")
@plugin_options
@metrics_options
@click.pass_context
def worker(ctx: click.Context, file: Path, functions: tuple[str, ...], transport: str | None, provider: str | None,
           tracker: str | None, options: tuple[str, ...], metrics_port: int | None, metrics_host: str) -> None:
    """Process the workflow's subscriptions until stopped (SIGTERM or Ctrl-C); start several to scale out."""
    engine = engine_for(ctx, str(file), transport=transport, provider=provider, tracker=tracker, options=options)
    names = engine.plugin_names()
    click.echo(f"worker for {engine.workflow.id}: transport {names['transport']}, tracker {names['tracker']}; "
               "stop with Ctrl-C", err=True)
    import threading

    from xflow.core.collector import worker_collector
    from xflow.core.worker import stop_on_signals

    start_metrics(ctx, [engine], metrics_port, metrics_host)
    stop = threading.Event()
    with stop_on_signals(stop), worker_collector():  # this process exists to run the worker: xflow.core.collector
        handled = engine.work(list(functions) or None, stop=stop)
    click.echo(f"worker stopped after {handled} deliveries", err=True)


for _command in (serve_command, executions_command, status_command, logs_command, *ROLLOUT_COMMANDS):
    plugin_options(_command)  # the shared backend flags, added to the command object (click allows it)
    cli.add_command(_command)
for _command in (worker, run):
    add_log_route_option(_command)
for _command in (*DEPLOY_COMMANDS, track_command, redrive_command, plugins_group, graph_command, emulate_command):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``xflow`` console script."""
    try:
        cli.main(args=argv, prog_name="xflow", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code in (1, 2) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        from xflow.core.errors import XflowError

        if not isinstance(exc, XflowError):
            raise
        click.echo(f"error: {exc}", err=True)
        for line in exc.lines:
            click.echo(line, err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
