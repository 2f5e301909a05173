"""What every ``loupe`` command shares: the one-line error contract (exit code 2 and
``error: <message>`` on stderr, never a usage dump) and the arguments several commands read."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from agent.settings import LoupeSettings

EXIT_ERROR = 2
#: ``--backend`` choices of the conversation commands (``auto``: Gemini when configured).
BACKENDS = ["auto", "gemini", "openai", "offline"]


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_ERROR)


def source_of(paths: Sequence[str], settings: LoupeSettings) -> str | list[str]:
    """One path as it is, several as a list (the files of one series); a ``pacs:`` reference
    retrieved first, as the folder it was retrieved into."""
    if any(path.startswith("pacs:") for path in paths):
        return str(study_path(paths, settings))
    return paths[0] if len(paths) == 1 else list(paths)


def study_path(paths: Sequence[str], settings: LoupeSettings) -> Path:
    """The one study a command works on: a file, folder, .zip, or ``pacs:STUDY[/SERIES]``."""
    if len(paths) != 1:
        fail("give one study: a file, a folder, a .zip or pacs:STUDY_UID[/SERIES_UID]")
    from agent.pacs.reference import PacsReference  # only when asked: the PACS client is not light

    reference = PacsReference.parse(paths[0])
    if reference is None:
        return Path(paths[0])
    retrieved = reference.retrieve(settings, progress=_print_progress)
    if retrieved.fetched:
        print(file=sys.stderr)  # end the progress line
    origin = "stored copy" if not retrieved.fetched else f"{retrieved.fetched} image(s) retrieved"
    print(f"pacs: series {retrieved.description} ({origin})", file=sys.stderr)
    if reference.series_uid is None and retrieved.other_image_series:
        print(f"pacs: the study has {retrieved.other_image_series} other image series; open one with "
              "pacs:STUDY_UID/SERIES_UID (see loupe pacs series STUDY_UID)", file=sys.stderr)
    return retrieved.folder


def _print_progress(done: int, total: int) -> None:
    print(f"\rpacs: retrieving {done}/{total}", end="", file=sys.stderr, flush=True)


def note_assumed_modality(assumed: dict[str, str | None]) -> None:
    """Say on stderr which modality a PNG/JPEG was taken as when Loupe guessed it, and why
    (``assumed`` is ``SafeMetadata.modality_assumed()``)."""
    if assumed["source"] == "guess":
        taken = assumed["modality"] or "unknown (the generic search runs)"
        print(f"modality: taken as {taken}: {assumed['reason']}; give --modality to set it", file=sys.stderr)


def backend_choice(name: str | None) -> str | None:
    return None if name in (None, "auto") else name
