"""The describing commands of ``xflow`` (registered by :mod:`xflow.cli`): ``xflow plugins`` (the installed plugins and
their distributions, with ``--options`` their options; ``plugins new`` scaffolds one) and ``xflow graph`` (the
workflow as Mermaid or DOT). Neither touches a backend.

Importing this module costs click only: the plugin registry, rich and the workflow loader are imported when a
command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from xflow.cli_common import OUTPUT, print_json, rich_console
from xflow.scaffold import new_plugin_command

if TYPE_CHECKING:
    from xflow.core.plugins import PluginInfo


@click.group("plugins", invoke_without_command=True)
@click.option("--options", "with_options", is_flag=True,
              help="List every plugin's options: type, default, description, secret, environment variable.")
@OUTPUT
@click.pass_context
def plugins_group(ctx: click.Context, with_options: bool, output: str) -> None:
    """List installed transports, providers, trackers and log destinations with their distributions (--options: and their
    options)."""
    if ctx.invoked_subcommand is not None:
        return
    from xflow.core.plugins import PluginRegistry

    found = PluginRegistry().infos()
    infos = [info.as_dict() for info in found]
    if with_options:
        for plugin, described in zip(found, infos, strict=True):
            described["options"] = plugin.options_as_dicts()
    if output == "json":
        print_json(infos)
        return
    if with_options:
        print_plugin_options(found)
        return
    from rich.table import Table

    table = Table()
    for column in ("kind", "name", "distribution", "version", "description"):
        table.add_column(column)
    for row in infos:
        description = row["description"] if row["status"] == "ok" else f"[red]broken: {row['error']}[/]"
        table.add_row(row["kind"], row["name"], row["distribution"], row["version"], description)
    rich_console().print(table)


def print_plugin_options(found: list[PluginInfo]) -> None:
    """One table per plugin: each option's type, default, environment variable and description."""
    from rich.markup import escape
    from rich.table import Table

    from xflow.core.options import env_name

    console = rich_console()
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


plugins_group.add_command(new_plugin_command)


@click.command("graph")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True)
def graph_command(file: Path, fmt: str) -> None:
    """Print the workflow as a graph: events (rounded) feed functions (boxes) that publish events."""
    from xflow.core.config import load_workflow
    from xflow.core.graph import to_dot, to_mermaid

    workflow = load_workflow(file)
    click.echo(to_mermaid(workflow) if fmt == "mermaid" else to_dot(workflow))
