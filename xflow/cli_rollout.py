"""The release commands of ``xflow``: ``xflow versions`` (each function's versions and the live one), ``xflow rollback``
(back to the version live before, or to a given one), and ``--strategy`` of ``xflow setup`` (how traffic moves to a
new version: :mod:`xflow.core.rollout`).

A provider takes part by offering ``deployed_versions(workflow)`` and ``rollback(workflow, function, to)``: the
lambda provider (published versions and the alias ``live``) and the local provider (copies under the state folder).
Only click is imported at start-up.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from xflow.cli_common import OUTPUT, engine_for, print_json, rich_console

if TYPE_CHECKING:
    from xflow.core.engine import Engine

def _remember_strategy(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        from xflow.core.rollout import strategy_from

        ctx.ensure_object(dict)["strategy"] = strategy_from(value, "--strategy")
    return value


def strategy_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``setup --strategy``: how traffic moves to the new versions, over the file's ``deploy.strategy``."""
    return click.option("--strategy", metavar="STRATEGY", expose_value=False, callback=_remember_strategy,
                        help="all-at-once, 'canary PERCENT MINUTES' or 'linear PERCENT MINUTES' (default: the file's "
                             "deploy.strategy, else all-at-once); MINUTES may be 30s, 5m, 1h.")(command)


def apply_strategy(ctx: click.Context, engine: Engine) -> None:
    """Give ``engine``'s workflow the ``--strategy`` of the command, if one was given."""
    strategy = (ctx.obj or {}).get("strategy")
    if strategy is None:
        return
    from dataclasses import replace

    from xflow.core.rollout import DeployChoice

    deploy = getattr(engine.workflow, "deploy", None) or DeployChoice()
    engine.workflow = replace(engine.workflow, deploy=replace(deploy, strategy=strategy))


def _versioned(engine: Engine, verb: str) -> Any:
    from xflow.core.errors import XflowError

    provider: Any = engine.provider
    if not callable(getattr(provider, "deployed_versions", None)):
        raise XflowError(f"the {provider.name!r} provider keeps no versions, so there is nothing to {verb}",
                         "versions are kept by --provider lambda and --provider local")
    return provider


@click.command("versions")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@OUTPUT
@click.pass_context
def versions_command(ctx: click.Context, file: Path, output: str, **backends: Any) -> None:
    """Each deployed function's versions: number, code SHA-256, time, and which one is live (or has a share)."""
    engine = engine_for(ctx, str(file), **backends)
    functions = _versioned(engine, "list").deployed_versions(engine.workflow)
    if output == "json":
        print_json({"workflow_id": engine.workflow.id, "provider": engine.plugin_names()["provider"],
                    "functions": functions})
        return
    if not functions:
        click.echo(f"{engine.workflow.id}: no function is deployed with versions (run 'xflow setup' first)")
        return
    from rich.table import Table

    table = Table(title=f"{engine.workflow.id} ({engine.plugin_names()['provider']})", title_justify="left")
    for column in ("function", "version", "sha256", "created", "live"):
        table.add_column(column)
    for function in functions:
        for row in function["versions"]:
            mark = ""
            if row["live"]:
                mark = "live" if not function["weights"] else f"live ({row['weight']:.0%})"
            elif row["weight"]:
                mark = f"{row['weight']:.0%} of invocations"
            table.add_row(function["function"], str(row["version"]), str(row["sha256"] or "")[:16],
                          str(row["created_at"] or ""), mark)
    rich_console().print(table)


@click.command("rollback")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--function", "function", metavar="NAME", help="Roll back only this function (default: every one).")
@click.option("--to", "to", metavar="VERSION", help="The version to go to (with --function; default: the one live "
                                                    "before).")
@OUTPUT
@click.pass_context
def rollback_command(ctx: click.Context, file: Path, function: str | None, to: str | None, output: str,
                     **backends: Any) -> None:
    """Point the functions back at the version live before (or at --to VERSION); a canary in progress ends.

    The next setup deploys what the file says again: change the file or its code to keep the rollback.
    Exit status 1 when no function had a version to go back to.
    """
    from xflow.core.errors import XflowError

    if to is not None and function is None:
        raise XflowError("--to names a version of one function", "add --function NAME")
    engine = engine_for(ctx, str(file), **backends)
    results = _versioned(engine, "roll back").rollback(engine.workflow, function, to)
    moved = [r for r in results if r.get("to")]
    if output == "json":
        print_json({"workflow_id": engine.workflow.id, "provider": engine.plugin_names()["provider"],
                    "rolled_back": results})
    else:
        for result in results:
            if result.get("to"):
                click.echo(f"{result['function']}: version {result['from']} -> {result['to']}")
            else:
                click.echo(f"{result['function']}: stays on version {result['from']} ({result.get('note')})")
    if not moved:
        sys.exit(1)


#: registered by :mod:`xflow.cli` with the shared backend options
COMMANDS = (versions_command, rollback_command)
