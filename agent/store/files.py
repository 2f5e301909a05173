"""Writing a file so that readers see either the old file or the whole new one."""

from __future__ import annotations

from pathlib import Path


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` beside ``target`` as ``*.part`` and rename it into place.

    A crash or a full disk never leaves a half-written file under the real name, and the
    partial file is removed when writing fails (the OSError is re-raised).
    """
    partial = target.with_name(target.name + ".part")
    try:
        partial.write_bytes(data)
        partial.replace(target)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
