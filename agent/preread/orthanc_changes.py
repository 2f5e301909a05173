"""Orthanc's ``/changes`` feed: a faster way to know that a study has arrived, on Orthanc.

Orthanc announces ``StableStudy`` once a study has had no new instance for its ``StableAge``.
With ``LOUPE_PREREAD_ORTHANC_URL`` set, ``loupe preread watch`` reads the feed on every poll and
hands such a study on at once, without waiting Loupe's own quiet time. The feed helps; it is
not the truth (``docs/preread.md``): a restart of Orthanc within StableAge loses the event for
good, and storing Loupe's own SR makes the study "stable" again. So the DICOMweb sweep still
runs beside it, and the ledger's job key (image instances only) answers a study announced again
"already done".

Where the watcher is in the feed (its last sequence number) is kept in the data folder once
what it announced has been handed on; the first time, reading starts at the feed's end: what
arrived before is the sweep's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.pacs.client import PacsConnection, PacsNotFoundError
from agent.preread.ledger import PrereadError
from agent.settings import LoupeSettings
from agent.store.files import write_atomically

CHANGES_FILE = "preread-orthanc-changes.json"
#: Changes asked for per request (Orthanc's default page).
PAGE = 100


class OrthancChanges:
    """``stable_studies()`` reads the feed on from where it was; ``handed_on()`` keeps that place."""

    def __init__(self, settings: LoupeSettings, connection: PacsConnection):
        if not settings.preread_orthanc_url:
            raise PrereadError("LOUPE_PREREAD_ORTHANC_URL is not set; the Orthanc changes feed cannot be followed.")
        self.url = settings.preread_orthanc_url.rstrip("/")
        self.connection = connection
        self.path = Path(settings.data_dir) / CHANGES_FILE
        self.since = self._stored()
        self._read_to: int | None = None

    def _stored(self) -> int | None:
        try:
            stored = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise PrereadError(f"The Orthanc changes position {self.path} is damaged ({error}); delete it.") from error
        return int(stored["since"]) if stored.get("url") == self.url else None  # another Orthanc: start afresh

    def _get(self, path: str, what: str) -> dict[str, Any]:
        def call(_client: object) -> dict[str, Any]:
            response = self.connection.session.get(f"{self.url}{path}", headers=self.connection.headers or None,
                                                   timeout=self.connection.timeout)
            response.raise_for_status()
            return response.json()

        return self.connection.run(call, what)

    def stable_studies(self) -> list[str]:
        """The Study Instance UIDs announced stable since the place kept, in the order announced
        (each once); none the first time (the place is set to the feed's end)."""
        if self.since is None:
            self.since = self._read_to = int(self._get("/changes?last", "read Orthanc's changes")["Last"])
            self.handed_on()
            return []
        announced: list[str] = []
        since = self.since
        while True:
            page = self._get(f"/changes?since={since}&limit={PAGE}", "read Orthanc's changes")
            announced += [c["ID"] for c in page.get("Changes", []) if c.get("ChangeType") == "StableStudy"]
            last = int(page.get("Last", since))
            if page.get("Done", True) or last <= since:
                since = max(since, last)
                break
            since = last
        self._read_to = since
        return [uid for uid in (self._study_uid(orthanc_id) for orthanc_id in dict.fromkeys(announced)) if uid]

    def _study_uid(self, orthanc_id: str) -> str | None:
        try:
            study = self._get(f"/studies/{orthanc_id}", "look up a study Orthanc announced")
        except PacsNotFoundError:  # deleted since it was announced
            return None
        return (study.get("MainDicomTags") or {}).get("StudyInstanceUID")

    def handed_on(self) -> None:
        """What ``stable_studies`` returned has been handed on: the next call reads on from there."""
        if self._read_to is None:
            return
        self.since = self._read_to
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps({"url": self.url, "since": self.since}).encode())
