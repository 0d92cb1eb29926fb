"""The ``xflow serve`` and ``xflow executions`` commands (registered by :mod:`xflow.cli`).

``xflow.cli`` adds the shared ``--transport/--provider/--tracker/--option`` flags to both when it registers them, and
engines are made by :func:`xflow.cli_common.engine_for`, so these commands read setup records and options exactly as
``publish`` and ``track`` do. Starlette and uvicorn (the ``serve`` extra) are imported only when ``serve`` runs.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from xflow.cli_common import OUTPUT, STATE_STYLE, engine_for, print_json, rich_console
from xflow.cli_monitoring import metrics_options, start_metrics
from xflow.serve.catalog import DEFAULT_LIMIT, MAX_LIMIT, STATUSES


@click.command("serve")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any but a loopback address needs a token.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--token", envvar="XFLOW_SERVE_TOKEN", show_envvar=True, metavar="TOKEN",
              help="Require 'Authorization: Bearer TOKEN' on every route but /ping (at least 16 characters).")
@click.option("--worker/--no-worker", "run_worker", default=None,
              help="Also run the workflows' functions in this process. Default: only for a workflow that was not set "
                   "up in the state folder, which serve then sets up as 'xflow run' does (embedded backends).")
@metrics_options
@click.pass_context
def serve_command(ctx: click.Context, files: tuple[Path, ...], host: str, port: int, token: str | None,
                  run_worker: bool | None, metrics_port: int | None, metrics_host: str, **backends: Any) -> None:
    """REST API and live web view of the workflows in FILE... on http://HOST:PORT/ (OpenAPI at /openapi.json).

    Publish (POST /workflows/ID/events/EVENT), list executions, track and re-drive over HTTP, and watch executions
    in the browser. A workflow that setup recorded is served on the backends it recorded.
    """
    from xflow.core.collector import worker_collector
    from xflow.core.errors import XflowError
    from xflow.core.worker import Worker
    from xflow.serve.security import check_bind, is_loopback

    check_bind(host, token)
    try:
        import uvicorn

        from xflow.serve.app import create_app
    except ImportError as exc:
        raise XflowError(f"xflow serve needs the serve extra ({exc.name} is not installed)",
                         "pip install 'xflow[serve]'") from None
    engines, workers, notes = [], [], []
    for file in files:
        engine = engine_for(ctx, str(file), **backends)
        fresh = engine.record is None
        if fresh:
            engine.setup()
        names = engine.plugin_names()
        plugins = f"{names['transport']}/{names['provider']}/{names['tracker']}"
        if run_worker or (run_worker is None and fresh):
            workers.append(Worker(engine))
            notes.append(f"{engine.workflow.id} ({plugins}{', set up now' if fresh else ''}; functions run here)")
        else:
            notes.append(f"{engine.workflow.id} ({plugins}; functions run by its workers)")
        engines.append(engine)
    app = create_app(engines, token=token, loopback_hosts_only=is_loopback(host), workers=workers)
    verbose = logging.getLogger("xflow").getEffectiveLevel() <= logging.INFO
    config = uvicorn.Config(app, host=host, port=port, log_level="info" if verbose else "warning",
                            access_log=verbose, server_header=False, proxy_headers=False,
                            timeout_graceful_shutdown=10)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"xflow serve: http://{shown}:{port}/ serving {', '.join(notes)}; stop with Ctrl-C", err=True)
    start_metrics(ctx, engines, metrics_port, metrics_host)  # before the workers: they report to it
    # with functions to run, this process exists to run a worker too: the collector set for it (xflow.core.collector)
    collector = worker_collector() if workers else contextlib.nullcontext()
    try:
        with collector:
            for worker in workers:
                worker.start()
            _Server(config).run()
    finally:
        for worker in workers:  # stopped already at shutdown unless the server never started (a port in use)
            worker.stop(10)
    click.echo("xflow serve: stopped", err=True)


@click.command("executions")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--status", type=click.Choice(STATUSES), help="Only executions with this status.")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=DEFAULT_LIMIT, show_default=True,
              help="At most this many executions.")
@click.option("--cursor", metavar="CURSOR", help="Go on from an earlier listing's next_cursor (-o json shows it).")
@OUTPUT
@click.pass_context
def executions_command(ctx: click.Context, file: Path, status: str | None, limit: int, cursor: str | None,
                       output: str, **backends: Any) -> None:
    """Recent executions of FILE's workflow, most recently started first, with the status 'xflow track' gives."""
    from xflow.serve.catalog import list_executions

    engine = engine_for(ctx, str(file), **backends)
    listing = list_executions(engine, status, limit, cursor)
    if output == "json":
        print_json(listing)
        return
    _print_listing(listing)


def _print_listing(listing: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = rich_console()
    rows = listing["executions"]
    if not rows:
        which = f" {listing['status']}" if listing["status"] else ""
        click.echo(f"{listing['workflow_id']}: no{which} executions" + (" on this page" if listing["next_cursor"]
                                                                        else ""))
    else:
        table = Table(title=f"workflow {listing['workflow_id']}: executions, most recent first", title_justify="left")
        for column in ("execution", "status", "started", "updated", "last unprocessed event", "failed functions"):
            table.add_column(column)
        for row in rows:
            table.add_row(escape(row["execution_id"]), f"[{STATE_STYLE[row['status']]}]{row['status']}[/]",
                          row["started_at"], row["updated_at"], row["last_unprocessed_event"] or "-",
                          escape(", ".join(row["failed_functions"])) or "-")
        console.print(table)
    if listing["next_cursor"]:
        click.echo(f"more: --cursor {listing['next_cursor']}")


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopped by SIGINT/SIGTERM without raising the signal again once it has stopped cleanly
        (``xflow serve`` then exits 0 after its shutdown, workers stopped)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            signals = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def _Server(config: Any) -> Any:  # noqa: N802 - reads as the class it makes
    return _server_class()(config)
