"""xflow: event-driven workflows on pluggable transports, function providers and tracker stores.

The public API is imported lazily so that ``xflow --help`` starts fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
_EXPORTS = {
    "Engine": "xflow.core.engine",
    "SetupReport": "xflow.core.engine",
    "Worker": "xflow.core.worker",
    "LOCAL_DEFAULTS": "xflow.core.engine",
    "AWS_DEFAULTS": "xflow.core.engine",
    "load_workflow": "xflow.core.config",
    "XflowError": "xflow.core.errors",
    "hookimpl": "xflow.core.hookspecs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xflow' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
