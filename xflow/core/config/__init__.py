"""Reads a workflow file: YAML with line numbers, ``${ENV}`` substitution, marshmallow validation.

Every problem is collected and reported at once as ``FILE:LINE: dotted.path: message`` (the first
:data:`MAX_PROBLEMS_SHOWN`, then a count of the rest). The file is data from anywhere, so reading it
is bounded: at most :data:`MAX_FILE_BYTES`, nesting at most :data:`MAX_DEPTH` levels, aliases
expanding to at most :data:`MAX_ALIAS_NODES` nodes; only plain YAML (mappings, lists, text,
numbers, booleans, null, ``<<`` merge keys) is read, and a path that is not a regular file (a
FIFO, a device) is refused before it is opened for reading. Nothing but :class:`XflowError` (or
its subclass :class:`WorkflowFileError`) comes out of :func:`load_workflow`.

:func:`validate_workflow` adds the checks that would otherwise surface only at setup: sources
xflow cannot fetch, handlers missing from local sources, plugin names that are not installed,
and runtimes the file's provider refuses.

:func:`load_workflow_mapping` validates a workflow given in code as a mapping (what a file parses to) the same
way; its problems read ``NAME: dotted.path: message`` (a mapping has no lines; NAME is ``<mapping>`` unless given).

The work is done in modules named for their jobs: :mod:`.reading` (the file and its YAML, with their limits),
:mod:`.env` (``${ENV}``), :mod:`.mapping` (a mapping given in code), :mod:`.schema` (what each section may hold),
:mod:`.build` (the model, with the checks across sections), :mod:`.cycles` (loops of events), :mod:`.checks` (what
:func:`validate_workflow` adds), :mod:`.problems` (collecting and printing problems) and :mod:`.loader` (the entry
points). Every name is re-exported here; import from ``xflow.core.config``.
"""

from xflow.core.config.env import ENV_REFERENCE
from xflow.core.config.loader import CREDENTIAL_KEYS, MAPPING_NAME, load_workflow, load_workflow_mapping, validate_workflow
from xflow.core.config.mapping import MAX_MAPPING_VALUES
from xflow.core.config.problems import MAX_PROBLEMS_SHOWN, MAX_WARNINGS_SHOWN, one_line, problems_error
from xflow.core.config.reading import MAX_ALIAS_NODES, MAX_DEPTH, MAX_FILE_BYTES
from xflow.core.config.schema import (
    EVENT_NAME,
    FUNCTION_NAME,
    HANDLER,
    MAX_CONCURRENCY,
    MAX_HOP_LIMIT,
    WORKFLOW_ID,
    AwsSchema,
    FlowSchema,
    FunctionSchema,
    GeneralSchema,
    PluginBlockSchema,
    SubscriptionSchema,
    WholeNumber,
    WorkflowSchema,
    event_name,
)

__all__ = [
    "AwsSchema",
    "CREDENTIAL_KEYS",
    "ENV_REFERENCE",
    "EVENT_NAME",
    "FUNCTION_NAME",
    "FlowSchema",
    "FunctionSchema",
    "GeneralSchema",
    "HANDLER",
    "MAPPING_NAME",
    "MAX_ALIAS_NODES",
    "MAX_CONCURRENCY",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_HOP_LIMIT",
    "MAX_MAPPING_VALUES",
    "MAX_PROBLEMS_SHOWN",
    "MAX_WARNINGS_SHOWN",
    "PluginBlockSchema",
    "SubscriptionSchema",
    "WORKFLOW_ID",
    "WholeNumber",
    "WorkflowSchema",
    "event_name",
    "load_workflow",
    "load_workflow_mapping",
    "one_line",
    "problems_error",
    "validate_workflow",
]
