"""Stages: one workflow deployed several times side by side (``dev``, ``staging``, ``prod``), each under names of its own.

A stage changes one thing, the workflow's id: workflow ``word_count`` deployed to stage ``dev`` has the id
``word_count-dev``. Plugins get that id in their :class:`~xflow.core.interfaces.PluginContext` and the workflow they
are handed carries it, so every name derived from it moves with it, on every backend and with no backend knowing
about stages: streams and topics (:meth:`~xflow.core.interfaces.Transport.stream_name`), consumer groups, the
embedded log and tracker files, CloudWatch log groups, IAM roles, queues, lease tables, and the setup record
(``STATE/word_count-dev/setup.json``). Names that a platform keeps per account rather than per workflow (AWS Lambda
functions) take the stage as a suffix: :meth:`~xflow.core.model.Workflow.resource_name`. Without a stage every name
is what it was before stages existed.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

from xflow.core.errors import XflowError

if TYPE_CHECKING:
    from xflow.core.model import Workflow

#: a stage's name: lowercase letters, digits and '-', starting with a letter, not ending with '-', at most 20
STAGE_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,18}[a-z0-9])?\Z")
STAGE_RULE = "lowercase letters, digits and '-', starting with a letter, at most 20 characters"
#: the longest deployment id (a workflow id is at most this long too)
MAX_ID = 64


def staged_id(workflow_id: str, stage: str | None) -> str:
    """The id of ``workflow_id`` deployed to ``stage``: ``<workflow_id>-<stage>``, or the id itself without a stage."""
    return f"{workflow_id}-{stage}" if stage else workflow_id


def check_stage(stage: str, source: str = "--stage") -> str:
    """``stage`` when it is a valid stage name, else a one-line XflowError naming ``source``."""
    if not isinstance(stage, str) or not STAGE_NAME.match(stage):
        shown = stage if isinstance(stage, str) and len(stage) <= 40 else f"{str(stage)[:40]}..."
        raise XflowError(f"stage {shown!r} ({source}) is not a valid stage name: {STAGE_RULE}",
                         "for example --stage dev")
    return stage


def apply_stage(workflow: Workflow, stage: str | None, source: str = "--stage") -> Workflow:
    """``workflow`` as deployed to ``stage`` (None: without a stage); the same object when nothing changes."""
    if stage is not None:
        check_stage(stage, source)
    if stage == workflow.stage:
        return workflow
    deployment = staged_id(workflow.unstaged_id, stage)
    if len(deployment) > MAX_ID:
        raise XflowError(f"workflow {workflow.unstaged_id!r} deployed to stage {stage!r} would be named {deployment!r}, "
                         f"longer than {MAX_ID} characters", "use a shorter stage name or workflow_id")
    return replace(workflow, id=deployment, stage=stage)
