"""Safe handling of downloaded archives: zip extraction that never writes outside its folder.

Every member is checked before anything is written: no absolute names, no ``..``, no drive
letters, no symbolic links, no encryption, only stored or deflated data. The archive may hold at
most :data:`MAX_MEMBERS` members and unpack to at most :data:`MAX_UNPACKED_BYTES` (what Lambda
accepts unzipped): the sizes the central directory declares must add up to no more, and each
member is then held to its declared size while it streams. A member is stopped as soon as it
yields one byte more than its header says, so the bytes written never exceed the declared total,
and a zip bomb or a lying header never fills the disk. Each member's CRC-32 is checked on what
was actually written.
"""

from __future__ import annotations

import copy
import io
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from xflow.core.errors import XflowError

#: what Lambda accepts unzipped; a bigger archive is refused before it is written
MAX_UNPACKED_BYTES = 250 * 1024 * 1024
MAX_MEMBERS = 20_000
_CHUNK = 1 << 20
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


def _mb(size: int) -> str:
    return f"{size / 2**20:g} MB"


def _checked_target(member: zipfile.ZipInfo, root: Path, what: str) -> Path:
    """Where ``member`` is written under ``root``; an XflowError for anything but a plain file or folder."""
    name = member.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise XflowError(f"{what}: archive member {member.filename!r} would be written outside the folder")
    mode = member.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise XflowError(f"{what}: archive member {member.filename!r} is a symbolic link, which is refused")
    if member.flag_bits & 0x1:
        raise XflowError(f"{what}: archive member {member.filename!r} is encrypted, which is refused")
    if not member.is_dir() and member.compress_type not in _METHODS:
        raise XflowError(f"{what}: archive member {member.filename!r} uses compression method "
                         f"{member.compress_type}; only stored and deflated members are accepted")
    target = (root / Path(*path.parts)).resolve() if path.parts else root
    if target != root and root not in target.parents:
        raise XflowError(f"{what}: archive member {member.filename!r} would be written outside the folder")
    return target


def _write_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, what: str) -> None:
    """Stream ``member`` into ``target``, stopping as soon as it yields more than its declared size."""
    declared = member.file_size
    # zipfile stops reading at the declared size and checks the CRC itself; a copy of the header that
    # declares one byte more (and no CRC) lets the stream show whether the data really ends where it says
    probe = copy.copy(member)
    probe.file_size = declared + 1
    del probe.CRC
    size, crc = 0, 0
    with archive.open(probe) as source, open(target, "wb") as out:
        while True:
            chunk = source.read(min(_CHUNK, declared + 1 - size))
            if not chunk:
                break
            size += len(chunk)
            if size > declared:
                raise XflowError(f"{what}: archive member {member.filename!r} holds more than the {declared} bytes "
                                 "its header declares (a zip bomb or a damaged archive); refused")
            crc = zlib.crc32(chunk, crc)
            out.write(chunk)
    if size != declared or crc != member.CRC:
        raise XflowError(f"{what}: archive member {member.filename!r} is damaged "
                         f"({size} of {declared} bytes, CRC {'ok' if crc == member.CRC else 'wrong'})")


def safe_extract_zip(data: bytes, dest: Path, what: str, *, max_bytes: int = MAX_UNPACKED_BYTES,
                     max_members: int = MAX_MEMBERS) -> None:
    """Extract ``data`` (a zip archive) into ``dest``; refuse absolute paths, ``..``, links and bombs."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        raise XflowError(f"{what}: not a zip archive") from None
    members = archive.infolist()
    if len(members) > max_members:
        raise XflowError(f"{what}: {len(members)} members in the archive, more than {max_members}")
    declared = sum(m.file_size for m in members)
    if declared > max_bytes:
        largest = max(members, key=lambda m: m.file_size)
        raise XflowError(f"{what}: unpacks to more than {_mb(max_bytes)}: its members declare {declared} bytes, "
                         f"archive member {largest.filename!r} alone {largest.file_size} (a zip bomb?)")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    targets = [(member, _checked_target(member, root, what)) for member in members]
    for member, target in targets:
        try:
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_member(archive, member, target, what)
        except XflowError:
            target.unlink(missing_ok=True)
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error, OSError) as exc:
            raise XflowError(f"{what}: archive member {member.filename!r} cannot be read or written: {exc}") from None
