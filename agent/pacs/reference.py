"""``pacs:STUDY_UID`` or ``pacs:STUDY_UID/SERIES_UID``: a study on the configured PACS, wherever
a command takes a study path. Resolving one retrieves it (or finds the stored copy) and gives
the local folder the loader opens."""

from __future__ import annotations

from dataclasses import dataclass

from agent.pacs.client import PacsConnection, PacsError
from agent.pacs.retrieve import Progress, RetrievedSeries, retrieve_series
from agent.pacs.search import check_uid
from agent.settings import LoupeSettings

PREFIX = "pacs:"


@dataclass(frozen=True)
class PacsReference:
    study_uid: str
    series_uid: str | None = None

    @classmethod
    def parse(cls, text: str) -> PacsReference | None:
        """The reference ``text`` names, or None when it is not a ``pacs:`` reference."""
        if not text.startswith(PREFIX):
            return None
        study_uid, _, series_uid = text[len(PREFIX):].strip().strip("/").partition("/")
        if not study_uid:
            raise PacsError("Give the study after 'pacs:' (pacs:STUDY_UID or pacs:STUDY_UID/SERIES_UID).")
        return cls(check_uid(study_uid), check_uid(series_uid) if series_uid else None)

    def retrieve(self, settings: LoupeSettings, progress: Progress | None = None) -> RetrievedSeries:
        return retrieve_series(PacsConnection(settings), settings, self.study_uid, self.series_uid, progress)
