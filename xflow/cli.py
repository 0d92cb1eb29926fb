"""The ``xflow`` command: a thin layer over :class:`xflow.core.engine.Engine`.

Exit status: 0 success, 1 the work failed, 2 bad usage or bad input. Heavy modules (the
engine, marshmallow, rich, backends' clients) are imported inside commands, never at start-up.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from xflow.cli_deploy import COMMANDS as DEPLOY_COMMANDS
from xflow.cli_deploy import from_package_option, stage_of, stage_option, use_package
from xflow.cli_logs import add_log_route_option, logs_command
from xflow.cli_monitoring import metrics_options, start_metrics, status_command
from xflow.cli_rollout import COMMANDS as ROLLOUT_COMMANDS
from xflow.cli_rollout import apply_strategy, strategy_option
from xflow.cli_serve import executions_command, serve_command
from xflow.emulate import emulate_command
from xflow.scaffold import new_plugin_command

if TYPE_CHECKING:
    from xflow.core.engine import Engine
    from xflow.core.plugins import PluginInfo

KINDS = ("transport", "provider", "tracker")
OUTPUT = click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
                      help="Human tables, or machine-readable JSON.")


def _plugin_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--transport/--provider/--tracker/--option, shared by every command that touches a backend."""
    decorators: list[Callable[..., Any]] = [
        click.option("--transport", metavar="NAME", help="Transport plugin (see 'xflow plugins')."),
        click.option("--provider", metavar="NAME", help="Function provider plugin."),
        click.option("--tracker", metavar="NAME", help="Tracker store plugin."),
        click.option("--option", "options", metavar="[KIND.]KEY=VALUE", multiple=True,
                     help="A plugin option, e.g. partitions=2 or transport.path=/tmp/log.db (repeatable)."),
        stage_option,
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _parse_options(pairs: tuple[str, ...]) -> dict[str, dict[str, str]]:
    from xflow.core.errors import XflowError

    parsed: dict[str, dict[str, str]] = {}
    for number, pair in enumerate(pairs, 1):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            # never echo any of it: a mistyped separator ("password:VALUE", "passwordVALUE") would print the secret
            raise XflowError(f"--option number {number} ({len(pair)} characters, not shown: it may hold a secret) "
                             "is not KEY=VALUE", "write for example --option partitions=2")
        kind, dot, bare = key.partition(".")
        if dot and kind in KINDS:
            parsed.setdefault(kind, {})[bare] = value
        else:
            parsed.setdefault("any", {})[key] = value
    return parsed


def _engine(ctx: click.Context, file: str, *, transport: str | None = None, provider: str | None = None,
            tracker: str | None = None, options: tuple[str, ...] = (), aws_defaults: bool = False) -> Engine:
    from xflow.core.engine import AWS_DEFAULTS, LOCAL_DEFAULTS, Engine

    engine = Engine(file, transport=transport, provider=provider, tracker=tracker, options=_parse_options(options),
                    state_dir=ctx.obj["state_dir"], defaults=AWS_DEFAULTS if aws_defaults else LOCAL_DEFAULTS,
                    options_source="--option", stage=stage_of(ctx))
    ctx.call_on_close(engine.close)
    return engine


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = 160  # piped output: no truncated columns
    return console


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
            _print_json({"file": str(file), "valid": False, "problems": exc.problems,
                         "problem_count": getattr(exc, "total", len(exc.problems))})
            sys.exit(2)
        raise
    if output == "json":
        _print_json({"file": str(file), "valid": True, "workflow_id": workflow.id,
                     "functions": list(workflow.functions), "events": list(workflow.flow)})
        return
    click.echo(f"{file}: valid: workflow {workflow.id!r}, {len(workflow.functions)} functions, "
               f"{len(workflow.flow)} events ({' -> '.join(workflow.flow)})")


# -- setup / teardown -------------------------------------------------------------------------
def _report_changes(report: Any, output: str, verb: str) -> None:
    data = report.as_dict()
    if output == "json":
        _print_json(data)
        return
    plugins = ", ".join(f"{k} {data[k]}" for k in KINDS)
    prefix = "would " if report.dry_run else ""
    if not data["changes"]:
        click.echo(f"{data['workflow_id']}: nothing to {verb}; everything is as the file says ({plugins})")
        return
    from rich.table import Table

    table = Table(title=f"{data['workflow_id']} ({plugins})", title_justify="left")
    table.add_column("change")
    table.add_column("resource")
    table.add_column("detail")
    calls = report.dry_run and any(step.call for step in report.steps)
    if calls:  # a dry run also shows the backend call each step would make
        table.add_column("call")
    for step in report.steps:
        table.add_row(f"{prefix}{step.action}", step.resource, step.detail, *([step.call] if calls else []))
    _console().print(table)
    if report.dry_run:
        click.echo("dry run: nothing was changed")


def _progress(output: str) -> Callable[..., None] | None:
    if output == "json":
        return None
    console = _console(stderr=True)

    def show(step: Any, index: int, total: int) -> None:
        console.print(f"[{index + 1}/{total}] {step.action} {step.resource}", style="dim")

    return show


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("-file", "seed_file", type=click.Path(dir_okay=False, path_type=Path), hidden=True)
@_plugin_options
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
    engine = _engine(ctx, str(path), transport=transport, provider=provider, tracker=tracker, options=options,
                     aws_defaults=True)
    apply_strategy(ctx, engine)  # --strategy over the file's deploy.strategy
    use_package(engine, package)
    report = engine.setup(dry_run=dry_run, on_step=_progress(output))
    _report_changes(report, output, "change")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_plugin_options
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@OUTPUT
@click.pass_context
def teardown(ctx: click.Context, file: Path, transport: str | None, provider: str | None, tracker: str | None,
             options: tuple[str, ...], dry_run: bool, output: str) -> None:
    """Remove everything setup created for FILE (uses what setup recorded)."""
    from xflow.core.errors import XflowError

    engine = _engine(ctx, str(file), transport=transport, provider=provider, tracker=tracker, options=options)
    chosen_by_file = any(engine.workflow.plugin_choice(kind).name for kind in KINDS)
    if engine.record is None and not (transport or provider or tracker or chosen_by_file):
        raise XflowError(f"workflow {engine.workflow.id!r} has no setup record in {ctx.obj['state_dir']}, so which "
                         "backends to clean is unknown",
                         "run from the folder where setup ran (or pass --state-dir), or name them: "
                         "--transport kinesis --provider lambda --tracker cloudwatch")
    report = engine.teardown(dry_run=dry_run, on_step=_progress(output))
    _report_changes(report, output, "remove")


# -- publish / run / worker -------------------------------------------------------------------
#: the largest event data the CLI reads (each transport also has its own, usually smaller, limit)
MAX_DATA_BYTES = 10 * 1024 * 1024


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _json_object(text: str, what: str) -> dict[str, Any]:
    """DATA given as text or @FILE: a strict JSON object (no NaN/Infinity), at most MAX_DATA_BYTES, UTF-8."""
    from xflow.core.errors import XflowError

    example = """write a JSON object, e.g. '{"path": "in.txt"}' or @data.json"""
    source = what
    if text.startswith("@"):
        name = text[1:]
        source = f"{what} file {name}"
        try:
            with open(name, "rb") as file:
                raw = file.read(MAX_DATA_BYTES + 1)
        except OSError as exc:
            raise XflowError(f"{what}: cannot read {name}: {exc.strerror or exc}") from None
    else:
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            raise XflowError(f"{what} is not valid UTF-8 text", example) from None
    return json_object(raw, source, what, example)


def json_object(raw: bytes, source: str, what: str,
                example: str = """write a JSON object, e.g. '{"path": "in.txt"}'""") -> dict[str, Any]:
    """``raw`` as publish takes DATA (also the body of xflow serve's publish routes): a strict JSON object (no
    NaN/Infinity), at most MAX_DATA_BYTES, UTF-8; else an XflowError naming ``source`` (or ``what``)."""
    from xflow.core.engine import MAX_DATA_DEPTH, check_event_data
    from xflow.core.errors import XflowError

    if len(raw) > MAX_DATA_BYTES:
        raise XflowError(f"{source} is larger than {MAX_DATA_BYTES // (1024 * 1024)} MiB",
                         "publish a reference (a path or URL) to the data instead")
    try:
        decoded = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise XflowError(f"{source} is not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}; a binary file?)",
                         example) from None
    try:
        data = json.loads(decoded, parse_constant=_not_json)
    except RecursionError:
        raise XflowError(f"{source} is nested too deeply (at most {MAX_DATA_DEPTH} levels)",
                         "flatten it, or publish a reference (a path or URL) to the document") from None
    except ValueError as exc:
        hint = 'use null, or a string such as "NaN"' if "is not a JSON value" in str(exc) else example
        raise XflowError(f"{source} is not valid JSON: {exc}", hint) from None
    if not isinstance(data, dict):
        kind = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(data), "null")
        raise XflowError(f"{what} must be a JSON object, got a JSON {kind}", example)
    check_event_data(data, source)
    return data


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("event")
@click.argument("data")
@click.option("--execution-id", help="Execution id (default: the data's execution_id, else a new one).")
@_plugin_options
@click.pass_context
def publish(ctx: click.Context, file: Path, event: str, data: str, execution_id: str | None, transport: str | None,
            provider: str | None, tracker: str | None, options: tuple[str, ...]) -> None:
    """Publish EVENT with DATA (a JSON object, or @file.json); prints the execution id."""
    payload = _json_object(data, "DATA")
    engine = _engine(ctx, str(file), transport=transport, provider=provider, tracker=tracker, options=options)
    click.echo(engine.publish(event, payload, execution_id))


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--event", help="Event to publish (default: the first in flow order).")
@click.option("--data", default="{}", show_default=True, help="The event's data: a JSON object, or @file.json.")
@click.option("--execution-id", help="Execution id (default: a new one).")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds to wait for the execution to settle.")
@_plugin_options
@OUTPUT
@click.pass_context
def run(ctx: click.Context, file: Path, event: str | None, data: str, execution_id: str | None, timeout: float,
        transport: str | None, provider: str | None, tracker: str | None, options: tuple[str, ...],
        output: str) -> None:
    """Set up (local/local/sqlite by default), publish, process until the execution settles.

    Prints the final event's data and the tracking summary; exit 0 if it succeeded, 1 if not.
    """
    import threading

    from xflow.core.worker import stop_on_signals

    payload = _json_object(data, "--data")
    engine = _engine(ctx, str(file), transport=transport, provider=provider, tracker=tracker, options=options)
    stop = threading.Event()
    with stop_on_signals(stop):  # SIGTERM/Ctrl-C: stop waiting, report what was reached (exit 1 unless done)
        summary = engine.run(event, payload, execution_id, timeout=timeout, stop=stop)
    if output == "json":
        _print_json(summary)
    else:
        click.echo(json.dumps(summary["result"], indent=2, ensure_ascii=False))
        _print_summary(summary)
        if "timed_out_after_seconds" in summary:
            click.echo(f"the execution did not settle within {timeout:g} s (--timeout)", err=True)
    sys.exit(0 if summary["status"] == "succeeded" else 1)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--function", "functions", metavar="NAME", multiple=True,
              help="Run only these functions (repeatable; default: all).")
@_plugin_options
@metrics_options
@click.pass_context
def worker(ctx: click.Context, file: Path, functions: tuple[str, ...], transport: str | None, provider: str | None,
           tracker: str | None, options: tuple[str, ...], metrics_port: int | None, metrics_host: str) -> None:
    """Process the workflow's subscriptions until stopped (SIGTERM or Ctrl-C); start several to scale out."""
    engine = _engine(ctx, str(file), transport=transport, provider=provider, tracker=tracker, options=options)
    names = engine.plugin_names()
    click.echo(f"worker for {engine.workflow.id}: transport {names['transport']}, tracker {names['tracker']}; "
               "stop with Ctrl-C", err=True)
    import threading

    from xflow.core.worker import stop_on_signals

    start_metrics(ctx, [engine], metrics_port, metrics_host)
    stop = threading.Event()
    with stop_on_signals(stop):
        handled = engine.work(list(functions) or None, stop=stop)
    click.echo(f"worker stopped after {handled} deliveries", err=True)


# -- track ------------------------------------------------------------------------------------
@cli.command()
@click.argument("file", required=False)
@click.argument("execution_id", required=False)
@click.option("-flow", "--flow", "flow", metavar="WORKFLOW_ID", help="Workflow id set up in this state folder.")
@click.option("-execution_id", "--execution-id", "execution_option", metavar="ID", help="The execution to track.")
@_plugin_options
@OUTPUT
@click.pass_context
def track(ctx: click.Context, file: str | None, execution_id: str | None, flow: str | None,
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
    engine = _engine(ctx, str(file), transport=transport, provider=provider, tracker=tracker, options=options)
    if flow and flow not in (engine.workflow.id, engine.workflow.unstaged_id):
        raise XflowError(f"-flow {flow!r} does not match the workflow id {engine.workflow.id!r} of {file}")
    try:
        summary = engine.track(execution, known=True)
    except UnknownExecutionError as exc:
        if output == "json":  # the contract's object all the same (every event not_reached); the error on stderr
            _print_json(exc.summary)
        raise
    if output == "json":
        _print_json(summary)
    else:
        _print_summary(summary)
    sys.exit(1 if summary["status"] == "failed" else 0)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("execution_id")
@click.option("--function", "functions", metavar="NAME", multiple=True,
              help="Re-drive only what these functions failed on (repeatable; default: every failed function).")
@_plugin_options
@OUTPUT
@click.pass_context
def redrive(ctx: click.Context, file: Path, execution_id: str, functions: tuple[str, ...], transport: str | None,
            provider: str | None, tracker: str | None, options: tuple[str, ...], output: str) -> None:
    """Publish again the events that functions of EXECUTION_ID failed on for good (after you fixed the cause).

    Only the failed functions run them again: the others already know the events' ids.
    """
    engine = _engine(ctx, str(file), transport=transport, provider=provider, tracker=tracker, options=options)
    result = redrive_result(engine, execution_id, functions)
    redriven = result["redriven"]
    if output == "json":
        _print_json(result)
    elif not redriven:
        click.echo(f"execution {execution_id}: nothing failed for good, nothing to re-drive")
    else:
        for item in redriven:
            click.echo(f"re-driven {item['event']} ({item['event_id']}) for {item['function']}")


def redrive_result(engine: Engine, execution_id: str, functions: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Re-drive and say what was re-driven: the object of ``xflow redrive -o json`` (and of xflow serve's route)."""
    redriven = engine.redrive(execution_id, list(functions) or None)
    return {"workflow_id": engine.workflow.id, "execution_id": execution_id, "redriven": redriven}


STATE_STYLE = {"processed": "green", "succeeded": "green", "failed": "bold red", "pending": "yellow",
               "not_reached": "dim", "running": "yellow", "unknown": "bold yellow"}


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _console()
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


# -- plugins / graph --------------------------------------------------------------------------
@cli.group(invoke_without_command=True)
@click.option("--options", "with_options", is_flag=True,
              help="List every plugin's options: type, default, description, secret, environment variable.")
@OUTPUT
@click.pass_context
def plugins(ctx: click.Context, with_options: bool, output: str) -> None:
    """List installed transports, providers and trackers with their distributions (--options: and their options)."""
    if ctx.invoked_subcommand is not None:
        return
    from xflow.core.plugins import PluginRegistry

    found = PluginRegistry().infos()
    infos = [info.as_dict() for info in found]
    if with_options:
        for plugin, described in zip(found, infos, strict=True):
            described["options"] = plugin.options_as_dicts()
    if output == "json":
        _print_json(infos)
        return
    if with_options:
        _print_plugin_options(found)
        return
    from rich.table import Table

    table = Table()
    for column in ("kind", "name", "distribution", "version", "description"):
        table.add_column(column)
    for row in infos:
        description = row["description"] if row["status"] == "ok" else f"[red]broken: {row['error']}[/]"
        table.add_row(row["kind"], row["name"], row["distribution"], row["version"], description)
    _console().print(table)


def _print_plugin_options(found: list[PluginInfo]) -> None:
    """One table per plugin: each option's type, default, environment variable and description."""
    from rich.markup import escape
    from rich.table import Table

    from xflow.core.options import env_name

    console = _console()
    for info in found:
        title = escape(f"{info.kind} {info.name} ({info.distribution} {info.version})")
        if info.broken:
            console.print(f"[bold]{title}[/]: [red]broken: {escape(str(info.error))}[/]")
            continue
        declared = info.declared()
        if not declared:
            console.print(f"[bold]{title}[/]: no options")
            continue
        table = Table(title=title, title_justify="left")
        for column in ("option", "type", "default", "variable", "description"):
            table.add_column(column)
        for option in declared.values():
            default = option.shown_default()
            secret = "[bold]secret[/]: " if option.secret else ""
            table.add_row(option.name, escape(option.type_label), "-" if default is None else escape(json.dumps(default)),
                          env_name(info.name, option.name), secret + escape(option.description))
        console.print(table)


plugins.add_command(new_plugin_command)
cli.add_command(emulate_command)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True)
def graph(file: Path, fmt: str) -> None:
    """Print the workflow as a graph: events (rounded) feed functions (boxes) that publish events."""
    from xflow.core.config import load_workflow
    from xflow.core.graph import to_dot, to_mermaid

    workflow = load_workflow(file)
    click.echo(to_mermaid(workflow) if fmt == "mermaid" else to_dot(workflow))


for _command in (serve_command, executions_command, status_command, logs_command, *ROLLOUT_COMMANDS):
    _plugin_options(_command)  # the shared backend flags, added to the command object (click allows it)
    cli.add_command(_command)
for _command in (worker, run):
    add_log_route_option(_command)
for _command in DEPLOY_COMMANDS:
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
