"""Fetch a function's code to a local file or folder: local paths, s3:// objects, git and GitHub links.

Everything fetched is walked by :func:`xflow.sources.resolve.source_files` (symbolic links that
leave the source are refused) before it is used. Only s3:// sources need AWS access.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xflow.core.errors import XflowError
from xflow.sources.git import fetch_git, is_git_source
from xflow.sources.resolve import narrow, source_files
from xflow.sources.s3 import fetch_s3

if TYPE_CHECKING:
    from xflow.aws import AwsSession
    from xflow.core.model import Function, Workflow


def fetch_source(function: Function, workdir: Path, aws: AwsSession | None = None) -> Path:
    """A local file or folder holding ``function``'s code (downloads go under ``workdir``)."""
    source = function.source
    workdir.mkdir(parents=True, exist_ok=True)
    if source.startswith("s3://"):
        if aws is None:
            raise XflowError(f"function {function.name}: an s3:// source needs AWS access")
        path = fetch_s3(source, workdir, aws)
    elif is_git_source(source):
        path = fetch_git(source, workdir)
    elif "://" in source:
        raise XflowError(f"function {function.name}: source {source!r} uses a scheme xflow cannot fetch",
                         "use a local path, s3://, git://, https://github.com/… or git+URL@REF#path=…")
    else:
        path = function.source_path or Path(source)
        if not path.exists():
            raise XflowError(f"function {function.name}: source {str(path)!r} does not exist")
    for _ in source_files(path, f"function {function.name}: source {source!r}"):
        pass
    return narrow(path, function.handler)


def resolve_source(workflow: Workflow, function: Function, workdir: Path) -> Path:
    """The local file or folder holding a function's code, as the Lambda provider packages it.

    A remote source (git/GitHub link, s3://) is fetched into ``workdir``; s3:// sources use an AWS
    session made from the file's ``aws:`` block (only then is boto3 needed).
    """
    aws = None
    if function.source_path is None and function.source.startswith("s3://"):
        from xflow.aws import AwsSession

        aws = AwsSession(dict(workflow.aws or {}))
    return fetch_source(function, workdir, aws)
