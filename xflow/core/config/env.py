"""``${NAME}`` and ``${NAME:-default}`` in a workflow's text, substituted from the environment."""

from __future__ import annotations

import os
import re
from typing import Any

from xflow.core.config.problems import Problems

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(value: str, where: tuple[Any, ...], problems: Problems) -> str:
    """``value`` with each ``${NAME}`` or ``${NAME:-default}`` replaced; an unset NAME with no default is a problem."""
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is None:
            if default is not None:
                return default
            problems.add(where, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
            return ""
        return found

    return ENV_REFERENCE.sub(replace, value)
