"""Reading source links without fetching anything: what the workflow loader checks (no AWS, no git run)."""

from __future__ import annotations

from xflow.core.errors import XflowError


def parse_s3_url(source: str) -> tuple[str, str]:
    bucket, _, key = source[len("s3://"):].partition("/")
    if not bucket or not key:
        raise XflowError(f"source {source!r}: an S3 source reads s3://BUCKET/KEY")
    return bucket, key
