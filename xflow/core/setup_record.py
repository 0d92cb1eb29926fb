"""The state folder and the setup record in it: what ``xflow setup`` chose, read back by later commands."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from xflow.core.errors import XflowError
from xflow.core.event_data import json_type
from xflow.core.model import Workflow
from xflow.core.options import Option, env_name
from xflow.core.plugin_choice import KIND_ORDER, PluginChoices
from xflow.core.redact import is_secret_name, redact, url_password, userinfo_is_ambiguous

log = logging.getLogger("xflow")


def default_state_dir() -> Path:
    return Path(os.environ.get("XFLOW_STATE_DIR") or ".xflow")


def setup_record_path(state_dir: Path, workflow_id: str) -> Path:
    return Path(state_dir) / workflow_id / "setup.json"


def read_setup_record(state_dir: Path, workflow_id: str) -> dict[str, Any] | None:
    """What ``setup`` recorded for a workflow in this state folder, or None.

    A record that cannot be read, or is not the object setup writes, is a one-line error naming the file.
    """
    path = setup_record_path(state_dir, workflow_id)
    hint = f"move {path} away and run 'xflow setup' again, which writes a new one"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise XflowError(f"the setup record {path} is unreadable ({reason})", hint) from None
    problem = _record_problem(record)
    if problem:
        raise XflowError(f"the setup record {path} is damaged: {problem}", hint)
    return record


def _record_problem(record: Any) -> str | None:
    """What is wrong with a setup record's shape, or None."""
    if not isinstance(record, dict):
        return f"it holds a JSON {json_type(record)}, not an object"
    if not isinstance(record.get("workflow_file"), str):
        return "'workflow_file' is missing or not a string"
    for kind in KIND_ORDER:
        entry = record.get(kind)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            return f"{kind!r} is a JSON {json_type(entry)}, not an object"
        if not isinstance(entry.get("name"), str | None):
            return f"{kind}.name is a JSON {json_type(entry['name'])}, not a string"
        if not isinstance(entry.get("options"), dict | None):
            return f"{kind}.options is a JSON {json_type(entry['options'])}, not an object"
    return None


def write_setup_record(state_dir: Path, workflow: Workflow, plugins: PluginChoices) -> None:
    """Record the plugins chosen and the options given for them (never secret ones) for later commands."""
    path = setup_record_path(state_dir, workflow.id)
    record: dict[str, Any] = {
        "workflow_id": workflow.id,
        "workflow_file": str(workflow.path),
        "set_up_at": time.time(),
        "stage": workflow.stage,
    }
    for kind, name in plugins.names().items():
        explicit = plugins.given_options(kind)
        declared = plugins.declared(kind)
        kept = {k: v for k, v in explicit.items() if not _looks_secret(k, v, declared.get(k))}
        for key in sorted(set(explicit) - set(kept)):
            log.warning("option %s of %s %r holds a secret and is not recorded in %s: give it again to later "
                        "commands, or set %s", key, kind, name, path, env_name(name, key))
        record[kind] = {"name": name, "options": kept}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str))
    except OSError as exc:
        raise XflowError(f"cannot write {path}: {exc}", "choose a writable state folder with --state-dir") from None


def other_deployments(state_dir: Path, workflow: Workflow) -> list[str]:
    """The ids of the workflow's other deployments (its other stages, or the unstaged one) set up in this state folder:
    what is kept there by content, such as Lambda zips, is shared with them."""
    base = workflow.unstaged_id
    found = []
    for path in sorted(Path(state_dir).glob("*/setup.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        other, stage = record.get("workflow_id"), record.get("stage")
        if other != workflow.id and other in (base, f"{base}-{stage}" if isinstance(stage, str) and stage else base):
            found.append(str(other))
    return found


def remove_setup_record(state_dir: Path, workflow_id: str) -> None:
    """Delete the setup record, and the workflow's and the state folder when that leaves them empty."""
    record = setup_record_path(state_dir, workflow_id)
    record.unlink(missing_ok=True)
    for folder in (record.parent, state_dir):
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()


def _looks_secret(key: str, value: Any, option: Option | None = None) -> bool:
    """Options never written to the setup record: those declared secret (those with secret names when the plugin
    declares no type for them), values holding a URL password or a password= pair."""
    if option is not None and option.secret or option is None and is_secret_name(key):
        return True
    text = str(value)
    return url_password(text) is not None or userinfo_is_ambiguous(text) or redact(text) != text
