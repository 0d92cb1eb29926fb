"""Function code from S3: ``s3://BUCKET/KEY`` holding a ``.py`` file or a ``.zip`` archive.

The object is downloaded through :mod:`xflow.aws` (so ``AWS_ENDPOINT_URL`` applies), its
size and (for single-part uploads) its MD5 ETag are checked, and archives are extracted safely
(:func:`xflow.sources.archive.safe_extract_zip`) into a fresh folder. At most
:data:`MAX_OBJECT_BYTES` are read, whatever the response's headers say.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from xflow.aws import AwsSession, is_client_error, translate_errors
from xflow.core.errors import XflowError
from xflow.sources.archive import safe_extract_zip
from xflow.sources.links import parse_s3_url

MAX_OBJECT_BYTES = 250 * 1024 * 1024


def fetch_s3(source: str, workdir: Path, aws: AwsSession) -> Path:
    bucket, key = parse_s3_url(source)
    with translate_errors(f"downloading source {source}"):
        try:
            response = aws.client("s3").get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if is_client_error(exc, "NoSuchKey", "NoSuchBucket", "404", "403", "AccessDenied"):
                raise XflowError(f"source {source!r} cannot be fetched: {exc}",
                                 "check the bucket, the key and your permissions") from None
            raise
        if int(response.get("ContentLength", 0)) > MAX_OBJECT_BYTES:
            raise XflowError(f"source {source!r}: larger than {MAX_OBJECT_BYTES // 2**20} MB")
        data = response["Body"].read(MAX_OBJECT_BYTES + 1)
    if len(data) > MAX_OBJECT_BYTES:
        raise XflowError(f"source {source!r}: larger than {MAX_OBJECT_BYTES // 2**20} MB")
    expected = int(response.get("ContentLength", len(data)))
    if len(data) != expected:
        raise XflowError(f"source {source!r}: download incomplete ({len(data)} of {expected} bytes)")
    etag = str(response.get("ETag", "")).strip('"')
    if etag and "-" not in etag and len(etag) == 32 and hashlib.md5(data).hexdigest() != etag:  # noqa: S324
        raise XflowError(f"source {source!r}: downloaded bytes do not match the object's checksum")
    name = Path(key).name
    if key.endswith(".zip"):
        folder = workdir / "s3-archive"
        if folder.exists():
            shutil.rmtree(folder)
        safe_extract_zip(data, folder, f"source {source!r}")
        return folder
    if key.endswith(".py"):
        target = workdir / name
        target.write_bytes(data)
        return target
    raise XflowError(f"source {source!r}: an S3 source must be a .py file or a .zip archive")
