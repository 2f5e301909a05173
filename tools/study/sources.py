"""Turn what the clinician opened (a file, a folder, a list of files, a .zip) into files to read.

Content decides the kind, never the extension: DICOM files from PACS exports often have no
extension (``IM0001``) and images get renamed. A .zip is extracted into a private temporary
folder under names Loupe chooses, after every entry has been checked for path traversal,
links, and bomb-like size or compression ratio.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from tools.errors import (
    StudyTooLargeError,
    UnreadableStudyError,
    UnsafeArchiveError,
    UnsupportedStudyError,
)
from tools.study.model import StudyLimits

FileKind = Literal["dicom", "png", "jpeg", "zip", "empty", "unknown"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# First tag groups of a DICOM data set written without the 128-byte preamble (old ACR-NEMA
# style and "raw" exports): file meta (0002), identifying (0008), in either byte order.
_PREAMBLELESS_GROUPS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def sniff(path: Path) -> FileKind:
    """Classify a file by its first bytes."""
    with path.open("rb") as handle:
        head = handle.read(132)
    if not head:
        return "empty"
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if len(head) >= 8 and head[:2] in _PREAMBLELESS_GROUPS and _plausible_element(head):
        return "dicom"
    return "unknown"


def _plausible_element(head: bytes) -> bool:
    """True if the first 8 bytes look like a DICOM element header (explicit or implicit VR)."""
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    # Implicit VR: a 4-byte length that fits in a small header element.
    length = int.from_bytes(head[4:8], "little")
    return 0 < length < 1024


@dataclass
class ResolvedSource:
    """Files to read, in a stable order, plus anything that must be cleaned up later."""

    dicom_files: list[Path] = field(default_factory=list)
    raster_files: list[Path] = field(default_factory=list)
    original_names: list[str] = field(default_factory=list)
    temp_dir: Path | None = None

    def cleanup(self) -> None:
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


def resolve_source(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                   limits: StudyLimits) -> ResolvedSource:
    """Expand ``source`` into the DICOM and raster files it contains.

    Raises
    ------
    UnreadableStudyError
        A path does not exist, a file is empty or not an image Loupe reads.
    UnsafeArchiveError, StudyTooLargeError
        A .zip that fails the safety checks, or too many files.
    """
    paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    if not paths:
        raise UnreadableStudyError("No file was given to open.")
    resolved = ResolvedSource()
    try:
        for path in paths:
            _add_path(path, resolved, limits, explicit=True)
    except BaseException:
        resolved.cleanup()
        raise
    if not resolved.dicom_files and not resolved.raster_files:
        resolved.cleanup()
        raise UnreadableStudyError("No DICOM, PNG or JPEG image was found in what was opened.")
    return resolved


def _add_path(path: Path, resolved: ResolvedSource, limits: StudyLimits, explicit: bool) -> None:
    if not path.exists():
        raise UnreadableStudyError(f"The file '{path.name}' does not exist.")
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and not child.name.startswith("."):
                _add_path(child, resolved, limits, explicit=False)
        return
    kind = sniff(path)
    if kind == "dicom":
        resolved.dicom_files.append(path)
    elif kind in ("png", "jpeg"):
        resolved.raster_files.append(path)
    elif kind == "zip":
        _add_zip(path, resolved, limits)
    elif explicit:
        # Inside a folder, stray files (README, thumbnails) are skipped; opened directly, say why.
        if kind == "empty":
            raise UnreadableStudyError(f"The file '{path.name}' is empty.")
        raise UnreadableStudyError(
            f"The file '{path.name}' is not a DICOM, PNG or JPEG image Loupe can open."
        )
    else:
        return
    resolved.original_names.append(path.name)
    if len(resolved.dicom_files) + len(resolved.raster_files) > limits.max_files:
        raise StudyTooLargeError(
            f"This study holds more than {limits.max_files} files, more than Loupe opens at once."
        )


def _add_zip(path: Path, resolved: ResolvedSource, limits: StudyLimits) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise UnreadableStudyError(f"The archive '{path.name}' is damaged and cannot be opened.") from error
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        _check_archive(path.name, members, limits)
        if resolved.temp_dir is None:
            resolved.temp_dir = Path(tempfile.mkdtemp(prefix="loupe-zip-"))
        folder = Path(tempfile.mkdtemp(dir=resolved.temp_dir))
        for number, info in enumerate(members):
            if _is_clutter(info.filename):
                continue
            target = folder / f"{number:06d}"
            try:
                with archive.open(info) as src, target.open("wb") as dst:
                    _copy_limited(src, dst, info.file_size)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:
                raise UnreadableStudyError(
                    f"The archive '{path.name}' is damaged and cannot be extracted."
                ) from error
            kind = sniff(target)
            if kind == "zip":
                raise UnsupportedStudyError(
                    f"The archive '{path.name}' contains another archive; extract it first."
                )
            if kind in ("dicom", "png", "jpeg"):
                (resolved.dicom_files if kind == "dicom" else resolved.raster_files).append(target)
                resolved.original_names.append(PurePosixPath(info.filename).name)


def _check_archive(name: str, members: list[zipfile.ZipInfo], limits: StudyLimits) -> None:
    if len(members) > limits.max_files:
        raise StudyTooLargeError(
            f"The archive '{name}' holds {len(members)} files, more than the {limits.max_files} "
            "Loupe opens at once."
        )
    total = 0
    for info in members:
        if _escapes(info.filename):
            raise UnsafeArchiveError(
                f"The archive '{name}' contains an entry with an unsafe path ('{info.filename}'); "
                "it was not opened."
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(
                f"The archive '{name}' contains a symbolic link ('{info.filename}'); it was not opened."
            )
        if info.file_size > 1_000_000 and info.file_size > limits.max_compression_ratio * max(
            info.compress_size, 1
        ):
            raise StudyTooLargeError(
                f"The archive '{name}' looks like a decompression bomb ('{info.filename}' expands "
                f"{info.file_size // max(info.compress_size, 1)}-fold); it was not opened."
            )
        total += info.file_size
    if total > limits.max_archive_bytes:
        raise StudyTooLargeError(
            f"The archive '{name}' expands to {total / 1024**3:.1f} GiB, more than the "
            f"{limits.max_archive_bytes / 1024**3:.1f} GiB limit."
        )


def _escapes(member: str) -> bool:
    """True for absolute paths, drive letters or '..' components (POSIX or Windows style)."""
    for flavour in (PurePosixPath(member), PureWindowsPath(member)):
        if flavour.is_absolute() or flavour.drive or ".." in flavour.parts:
            return True
    return member.startswith(("/", "\\"))


def _is_clutter(member: str) -> bool:
    parts = PurePosixPath(member.replace("\\", "/")).parts
    return any(p == "__MACOSX" or p.startswith(".") for p in parts)


def _copy_limited(src, dst, declared_size: int) -> None:
    """Copy a zip member, refusing to write more than its declared size (lying headers)."""
    written = 0
    while chunk := src.read(1 << 20):
        written += len(chunk)
        if written > declared_size:
            raise StudyTooLargeError("An archive entry is larger than its header declares; it was not opened.")
        dst.write(chunk)
