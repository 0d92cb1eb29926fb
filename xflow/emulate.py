"""``xflow emulate``: the command, and the emulator's names where the CLI and the docs have always found them.

The emulator itself is :mod:`xflow.providers.aws_lambda.emulator` (with :mod:`xflow.providers.aws_lambda.invoke`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from xflow.cli_deploy import stage_of, stage_option
from xflow.core.errors import XflowError

#: the names this module has always offered, and where they live now (imported on first use: the CLI starts fast)
_MOVED = {
    "Emulator": "xflow.providers.aws_lambda.emulator", "EmulatorReport": "xflow.providers.aws_lambda.emulator",
    "ShardCursor": "xflow.providers.aws_lambda.emulator", "emulate": "xflow.providers.aws_lambda.emulator",
    "RUNNER": "xflow.providers.aws_lambda.invoke", "DeployedFunction": "xflow.providers.aws_lambda.invoke",
    "Invocation": "xflow.providers.aws_lambda.invoke",
}

__all__ = [*_MOVED, "emulate_command"]


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_MOVED[name]), name)


@click.command("emulate")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--until-idle", is_flag=True, help="Return once no mapped stream has anything left to process.")
@click.option("--poll-interval", type=float, default=1.0, show_default=True, help="Seconds between idle passes.")
@click.option("--timeout", type=float, default=None, help="Stop after this many seconds (exit 1 if not idle).")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
@stage_option
@click.pass_context
def emulate_command(ctx: click.Context, file: Path, until_idle: bool, poll_interval: float, timeout: float | None,
                    output: str) -> None:
    """Run FILE's Lambda deployment on this machine against AWS_ENDPOINT_URL (no Docker)."""
    from xflow.core.engine import AWS_DEFAULTS, Engine
    from xflow.providers.aws_lambda import LambdaProvider
    from xflow.providers.aws_lambda.emulator import emulate

    state_dir = (ctx.obj or {}).get("state_dir") or Path(os.environ.get("XFLOW_STATE_DIR") or ".xflow")
    engine = Engine(file, state_dir=state_dir, defaults=AWS_DEFAULTS, stage=stage_of(ctx))
    try:
        provider = engine.provider
        if not isinstance(provider, LambdaProvider):
            raise XflowError(f"workflow {engine.workflow.id} is set up with provider {provider.name!r}; "
                             "emulate runs lambda deployments", "use 'xflow worker' for local providers")
        aws = provider.aws
        echo = (lambda line: click.echo(line, err=True)) if output == "text" else None
        try:
            report = emulate(engine.workflow, Path(state_dir), aws, until_idle=until_idle,
                             poll_interval=poll_interval, timeout=timeout, echo=echo,
                             collect_failures=lambda: provider.collect_failures(engine.workflow, engine.transport,
                                                                                engine.tracker))
        except KeyboardInterrupt:
            click.echo("stopped", err=True)
            return
    finally:
        engine.close()
    if output == "json":
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(f"{report.invocations} invocation(s), {report.records} record(s), "
                   f"{report.failed_invocations} failed invocation(s), {report.discarded_records} discarded record(s)"
                   + ("; idle" if report.idle else ""))
    if (until_idle or timeout) and not report.idle:
        ctx.exit(1)
