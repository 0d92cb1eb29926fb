"""Safe handling of downloaded archives: zip extraction that never writes outside its folder."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path, PurePosixPath

from xflow.core.errors import XflowError

#: what Lambda accepts unzipped; a bigger archive is refused before it is written
MAX_UNPACKED_BYTES = 250 * 1024 * 1024
MAX_MEMBERS = 20_000


def safe_extract_zip(data: bytes, dest: Path, what: str) -> None:
    """Extract ``data`` (a zip archive) into ``dest``; refuse absolute paths, ``..``, links and bombs."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise XflowError(f"{what}: not a zip archive") from None
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise XflowError(f"{what}: {len(members)} files in the archive, more than {MAX_MEMBERS}")
    if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
        raise XflowError(f"{what}: unpacks to more than {MAX_UNPACKED_BYTES // 2**20} MB")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    for member in members:
        name = member.filename.replace("\\", "/")
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
            raise XflowError(f"{what}: archive member {member.filename!r} would be written outside the folder")
        mode = member.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise XflowError(f"{what}: archive member {member.filename!r} is a symbolic link, which is refused")
        target = (root / Path(*path.parts)).resolve() if path.parts else root
        if target != root and root not in target.parents:
            raise XflowError(f"{what}: archive member {member.filename!r} would be written outside the folder")
        if member.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with archive.open(member) as source, open(target, "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
            raise XflowError(f"{what}: archive member {member.filename!r} cannot be read: {exc}") from None
