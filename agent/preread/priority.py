"""Which pre-read studies are STAT.

A site says it in settings — ``LOUPE_PREREAD_STAT_MODALITIES`` (any of the study's modalities),
``LOUPE_PREREAD_STAT_PATTERN`` (a regular expression on the Study Description) — and the order
itself may say it: the Requested Procedure Priority (0040,1003) that the RIS put in the images'
header (STAT, HIGH, ROUTINE, MEDIUM or LOW; at the top level, or in an item of the Request
Attributes Sequence (0040,0275) as some modalities copy it). Which of its values count as STAT is
``LOUPE_PREREAD_STAT_PRIORITIES`` (default ``STAT``). The header is read from one image of the
study's largest image series (WADO-RS metadata: no pixels), only when the settings have not
already made the study STAT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agent.pacs.client import PacsConnection
from agent.pacs.search import StudyMatch, instances_of, series_of
from agent.preread.ledger import PrereadError
from agent.settings import LoupeSettings

REQUESTED_PROCEDURE_PRIORITY = "00401003"
REQUEST_ATTRIBUTES_SEQUENCE = "00400275"


@dataclass(frozen=True)
class Priority:
    """``stat`` or ``routine``, and what made it so (for the command's line and the log)."""

    level: str
    reason: str


def by_settings(settings: LoupeSettings, match: StudyMatch) -> Priority | None:
    """STAT when the study's modality or description says so by the site's settings; else None."""
    stat_modalities = {m.strip().upper() for m in settings.preread_stat_modalities.split(",") if m.strip()}
    if stat_modalities & {m.upper() for m in match.modalities}:
        return Priority("stat", "a STAT modality")
    pattern = settings.preread_stat_pattern
    if pattern:
        try:
            if re.search(pattern, match.description or ""):
                return Priority("stat", "its description")
        except re.error as error:
            raise PrereadError(f"LOUPE_PREREAD_STAT_PATTERN is not a regular expression ({error}).") from error
    return None


def priority_of(settings: LoupeSettings, match: StudyMatch, connection: PacsConnection | None = None) -> Priority:
    """The study's priority: by the settings, else (given the PACS) by its Requested Procedure
    Priority, else routine."""
    decided = by_settings(settings, match)
    if decided is not None:
        return decided
    if connection is not None:
        asked = requested_priority(connection, match.study_uid)
        stat_values = {v.strip().upper() for v in settings.preread_stat_priorities.split(",") if v.strip()}
        if asked is not None and asked in stat_values:
            return Priority("stat", f"Requested Procedure Priority {asked}")
    return Priority("routine", "routine")


def requested_priority(connection: PacsConnection, study_uid: str) -> str | None:
    """The Requested Procedure Priority in the header of the first image of the study's largest
    image series, upper-case; None when the study has no image or the header does not say."""
    images = [s for s in series_of(connection, study_uid) if s.is_image and s.instances]
    if not images:
        return None
    largest = max(images, key=lambda s: s.instances)
    instances = instances_of(connection, study_uid, largest.series_uid)
    if not instances:
        return None
    metadata = connection.run(lambda client: client.retrieve_instance_metadata(
        study_uid, largest.series_uid, instances[0].sop_uid), "read an image's header")
    return _priority_in(metadata)


def _priority_in(metadata: dict[str, Any]) -> str | None:
    value = _first(metadata, REQUESTED_PROCEDURE_PRIORITY)
    if value is None:
        for item in (metadata.get(REQUEST_ATTRIBUTES_SEQUENCE) or {}).get("Value") or []:
            value = _first(item, REQUESTED_PROCEDURE_PRIORITY)
            if value is not None:
                break
    return None if value is None else value.strip().upper() or None


def _first(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None
