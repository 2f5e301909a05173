"""What every ``loupe`` command shares: the one-line error contract (exit code 2 and
``error: <message>`` on stderr, never a usage dump) and the arguments several commands read."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

EXIT_ERROR = 2
#: ``--backend`` choices of the conversation commands (``auto``: Gemini when configured).
BACKENDS = ["auto", "gemini", "offline"]


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_ERROR)


def source_of(paths: Sequence[str]) -> str | list[str]:
    """One path as it is, several as a list (the files of one series)."""
    return paths[0] if len(paths) == 1 else list(paths)


def study_path(paths: Sequence[str]) -> Path:
    if len(paths) != 1:
        fail("give one study: a file, a folder or a .zip")
    return Path(paths[0])


def note_assumed_modality(assumed: dict[str, str | None]) -> None:
    """Say on stderr which modality a PNG/JPEG was taken as when Loupe guessed it, and why
    (``assumed`` is ``SafeMetadata.modality_assumed()``)."""
    if assumed["source"] == "guess":
        taken = assumed["modality"] or "unknown (the generic search runs)"
        print(f"modality: taken as {taken}: {assumed['reason']}; give --modality to set it", file=sys.stderr)


def backend_choice(name: str | None) -> str | None:
    return None if name in (None, "auto") else name
