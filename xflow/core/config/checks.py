"""What :func:`~xflow.core.config.validate_workflow` checks beyond loading: sources, handlers, plugins, runtimes."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from xflow.core.config.build import Built
from xflow.core.config.problems import Problems, one_line
from xflow.core.config.schema import HANDLER
from xflow.core.errors import XflowError

if TYPE_CHECKING:
    from xflow.core.plugins import PluginRegistry


def check_sources(built: Built, problems: Problems) -> None:
    from xflow.sources.git import is_git_source, parse_git_source
    from xflow.sources.links import parse_s3_url
    from xflow.sources.resolve import check_handler, narrow, source_files

    for name, function in built.functions.items():
        at = built.where[name]
        source = function.source
        if not source:
            continue
        try:
            if source.startswith("s3://"):
                parse_s3_url(source)
            elif is_git_source(source):
                parse_git_source(source)
            elif "://" in source or source.startswith("git@"):
                scheme = source.partition("://")[0] if "://" in source else "git@"
                problems.add(at + ("source",), f"{source!r} uses a scheme xflow cannot fetch ({scheme}); use a local "
                                               "path, s3://BUCKET/KEY or a git link (git://, https://github.com/, "
                                               "https://HOST/REPO.git/PATH, git+URL)")
        except XflowError as exc:
            problems.add(at + ("source",), one_line(str(exc)))
        except ValueError as exc:
            problems.add(at + ("source",), f"{source!r} cannot be parsed: {one_line(str(exc))}")
        path = function.source_path
        if path is None:
            continue
        try:  # what setup ships: links that leave the source, FIFOs and devices are refused there
            if path.is_dir():
                for _ in source_files(path, f"source {source!r}"):
                    pass
        except XflowError as exc:
            problems.add(at + ("source",), one_line(exc.message))
            continue
        except (OSError, RecursionError) as exc:
            problems.add(at + ("source",), f"cannot be read: {one_line(str(exc))[:200]}")
            continue
        if not function.handler or not HANDLER.match(function.handler):
            continue
        try:
            if not path.exists():
                continue  # reported by the loader
            check_handler(function, narrow(path, function.handler))
        except XflowError as exc:
            prefix = f"function {function.name}: handler {function.handler!r}: "
            problems.add(at + ("handler",), one_line(exc.message.removeprefix(prefix)))
        except (OSError, ValueError, RecursionError, MemoryError) as exc:
            problems.add(at + ("source",), f"cannot be read: {one_line(str(exc))[:200]}")


def check_plugins(built: Built, problems: Problems, registry: PluginRegistry | None) -> None:
    named = {kind: choice.name for kind, choice in built.plugins.items() if choice.name}
    if not named:
        return
    if registry is None:
        from xflow.core.plugins import PluginRegistry

        registry = PluginRegistry()
    for kind, name in named.items():
        installed = registry.names(kind)
        if name in installed:
            continue
        close = difflib.get_close_matches(name, installed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; install a distribution named xflow-{kind}-{name}"
        broken = [b for b in registry.broken if b.name == name]
        if broken:
            hint = f"; the plugin {name!r} from {broken[0].distribution} is installed but broken: {broken[0].error}"
        problems.add((kind, "name"), f"unknown {kind} {name!r}; installed {kind}s: {', '.join(installed) or 'none'}{hint}")


def check_log_routes(built: Built, problems: Problems, registry: PluginRegistry | None) -> None:
    """Each ``logging.routes`` entry names an installed log destination and gives it options of the types it takes."""
    routes = built.workflow.logging.routes if built.workflow is not None else ()
    if not routes:
        return
    from xflow.core.options import resolve_options
    from xflow.core.plugins import PluginRegistry

    registry = registry if registry is not None else PluginRegistry()
    installed = registry.names("log")
    for index, route in enumerate(routes):
        where = ("logging", "routes", index)
        if route.name not in installed:
            close = difflib.get_close_matches(route.name, installed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; install a distribution named xflow-log-{route.name}"
            problems.add(where, f"unknown log destination {route.name!r}; installed: {', '.join(installed) or 'none'}"
                                f"{hint}")
            continue
        info = registry.get("log", route.name)
        try:
            resolve_options(info.label, info.declared(), {k: (v, "the file") for k, v in route.options.items()})
        except XflowError as exc:
            problems.add(where + ("options",), one_line(exc.message))


def check_runtimes(built: Built, problems: Problems, runtimes: Mapping[str, Sequence[str]]) -> None:
    provider = built.plugins.get("provider")
    if provider is None:
        return
    accepted = runtimes.get(provider.name or "")
    if not accepted:
        return
    for name, function in built.functions.items():
        if function.runtime in accepted:
            continue
        at = built.where[name]
        where = at + ("runtime",)
        if where not in problems.lines and ("general", "runtime") in problems.lines:
            where = ("general", "runtime")
        problems.add(where, f"runtime {function.runtime!r} of function {name!r} is not accepted by provider "
                            f"{provider.name!r}; supported: {', '.join(accepted)}")
