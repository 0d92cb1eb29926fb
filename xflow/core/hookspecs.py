"""The pluggy hook specifications: how a distribution adds transports, providers, trackers and log destinations.

A plugin distribution declares a module in the ``xflow`` entry-point group; that module
implements one or more of these hooks with ``@xflow.hookimpl``. xflow's own backends are
registered the same way, from ``setup.cfg``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from xflow.core.interfaces import FunctionProvider, TrackerStore, Transport

if TYPE_CHECKING:
    from xflow.logs.destination import LogDestination

PROJECT = "xflow"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def xflow_transports() -> list[type[Transport]]:
    """Return Transport classes this plugin provides (each with a unique ``name``)."""


@hookspec
def xflow_function_providers() -> list[type[FunctionProvider]]:
    """Return FunctionProvider classes this plugin provides."""


@hookspec
def xflow_tracker_stores() -> list[type[TrackerStore]]:
    """Return TrackerStore classes this plugin provides."""


@hookspec
def xflow_log_destinations() -> list[type[LogDestination]]:
    """Return LogDestination classes this plugin provides (what a log route's ``name:`` says)."""
