"""Writing a file so that readers see either the old file or the whole new one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` beside ``target`` under a temporary name of its own and rename it into place.

    A crash or a full disk never leaves a half-written file under the real name, and the
    partial file is removed when writing fails (the OSError is re-raised). The temporary name
    is unique, so two processes writing the same file (two app servers on one shared folder
    retrieving the same study) never write into each other's partial file.
    """
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    partial = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(partial, 0o644)  # mkstemp makes it private; the file it becomes is not
        partial.replace(target)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
