"""Provider ``lambda``: each function an AWS Lambda function, subscribed to its streams by event source mappings.

The package, one module per job:

- :mod:`~xflow.providers.aws_lambda.provider`: the plugin; performs the steps (``execute``);
- :mod:`~xflow.providers.aws_lambda.planner`: compares the file with what exists, returns data-only steps;
- :mod:`~xflow.providers.aws_lambda.packaging`: each function's deterministic zip, the copies kept of it;
- :mod:`~xflow.providers.aws_lambda.iam`: the execution role and its policies;
- :mod:`~xflow.providers.aws_lambda.mappings`: event source mappings and their on-failure queue;
- :mod:`~xflow.providers.aws_lambda.shim`: the runtime packaged into every zip (never imported here);
- :mod:`~xflow.providers.aws_lambda.failures`: Lambda's failure records, read back into the tracker;
- :mod:`~xflow.providers.aws_lambda.emulator` and :mod:`~xflow.providers.aws_lambda.invoke`: ``xflow emulate``.

Registered through the entry point ``lambda = xflow.providers.aws_lambda`` (the hook below).
"""

from __future__ import annotations

from xflow.core.hookspecs import hookimpl
from xflow.core.interfaces import FunctionProvider
from xflow.providers.aws_lambda.iam import TRUST_POLICY, s3_source_arns
from xflow.providers.aws_lambda.mappings import EventSource, FailureQueue, MappingSpec, failure_queue_name
from xflow.providers.aws_lambda.packaging import (
    ARTIFACTS,
    ENV_WORKFLOW,
    EXCLUDED_PARTS,
    SHIM_HANDLER,
    TRACKER_HANDLER,
    ZIP_DATE,
    FunctionSpec,
    ZipBuilder,
    _ZipBuilder,
    artifact_path,
    code_sha256,
    tracker_function_name,
)
from xflow.providers.aws_lambda.planner import SUPPORTED_RUNTIMES
from xflow.providers.aws_lambda.provider import LambdaProvider

__all__ = [
    "ARTIFACTS", "ENV_WORKFLOW", "EXCLUDED_PARTS", "SHIM_HANDLER", "SUPPORTED_RUNTIMES", "TRACKER_HANDLER",
    "TRUST_POLICY", "ZIP_DATE", "EventSource", "FailureQueue", "FunctionSpec", "LambdaProvider", "MappingSpec",
    "ZipBuilder", "_ZipBuilder", "artifact_path", "code_sha256", "failure_queue_name", "s3_source_arns", "tracker_function_name",
    "xflow_function_providers",
]


@hookimpl
def xflow_function_providers() -> list[type[FunctionProvider]]:
    return [LambdaProvider]
