"""What the ``xflow`` commands share: the backend flags, an engine made from them, and printing (JSON, tables, the
changes of setup/teardown and their progress).

Importing this module costs click only (and :mod:`xflow.cli_deploy` for ``--stage``): the engine and rich are
imported when a command calls these helpers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from xflow.cli_deploy import stage_of, stage_option

if TYPE_CHECKING:
    from xflow.core.engine import Engine

#: the plugin kinds a ``--option KIND.KEY=VALUE`` may name, in the order reports list them
KINDS = ("transport", "provider", "tracker")
OUTPUT = click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
                      help="Human tables, or machine-readable JSON.")
#: the rich style of each state a summary or a listing shows
STATE_STYLE = {"processed": "green", "succeeded": "green", "failed": "bold red", "pending": "yellow",
               "not_reached": "dim", "running": "yellow", "unknown": "bold yellow"}


def plugin_options(command: Callable[..., Any]) -> Callable[..., Any]:
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


def parse_options(pairs: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``--option`` values by plugin kind (``"any"`` for a KEY that names no kind); an XflowError for one that is
    not KEY=VALUE, which never shows the value."""
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


def engine_for(ctx: click.Context, file: str, *, transport: str | None = None, provider: str | None = None,
               tracker: str | None = None, options: tuple[str, ...] = (), aws_defaults: bool = False) -> Engine:
    """The engine of workflow ``file`` on the backends the command's flags name (closed with the command)."""
    from xflow.core.engine import AWS_DEFAULTS, LOCAL_DEFAULTS, Engine

    engine = Engine(file, transport=transport, provider=provider, tracker=tracker, options=parse_options(options),
                    state_dir=ctx.obj["state_dir"], defaults=AWS_DEFAULTS if aws_defaults else LOCAL_DEFAULTS,
                    options_source="--option", stage=stage_of(ctx))
    ctx.call_on_close(engine.close)
    return engine


def print_json(data: Any) -> None:
    """``data`` on stdout as indented JSON (``-o json``)."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def rich_console(stderr: bool = False) -> Any:
    """A rich console for tables (160 columns wide when the output is piped: no truncated columns)."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = 160  # piped output: no truncated columns
    return console


def report_changes(report: Any, output: str, verb: str) -> None:
    """What setup or teardown changed (or would change, on a dry run): a table, or the ``"changes"`` JSON."""
    data = report.as_dict()
    if output == "json":
        print_json(data)
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
    rich_console().print(table)
    if report.dry_run:
        click.echo("dry run: nothing was changed")


def progress_printer(output: str) -> Callable[..., None] | None:
    """The ``on_step`` of setup/teardown: one line per step on stderr (none with ``-o json``)."""
    if output == "json":
        return None
    console = rich_console(stderr=True)

    def show(step: Any, index: int, total: int) -> None:
        console.print(f"[{index + 1}/{total}] {step.action} {step.resource}", style="dim")

    return show
