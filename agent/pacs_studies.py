"""What the app does with the PACS, in plain data: search it, list a study's series, open a
study or series into the conversation, and send a report back.

Search rows carry the patient's name and id for the clinician's screen only; nothing here puts
them in the session, the audit trail or a log.
"""

from __future__ import annotations

from typing import Any

from agent.conversation import Conversation
from agent.pacs.client import PacsConnection
from agent.pacs.retrieve import Progress, RetrievedSeries, retrieve_series
from agent.pacs.search import StudyQuery, search_studies, series_of
from agent.pacs.send import StoredInstance
from agent.reports import PACS_FORMATS, export, pacs_documents, send_to_pacs
from agent.settings import LoupeSettings
from agent.workspace import open_to_read, refuse_while_answering
from tools.report.document import ReportError


def search(settings: LoupeSettings, query: StudyQuery) -> list[dict[str, Any]]:
    """Matching studies, newest first, as rows for a table."""
    return [match.as_json() for match in search_studies(PacsConnection(settings), query)]


def series(settings: LoupeSettings, study_uid: str) -> list[dict[str, Any]]:
    """The study's series, image series first, each with a ``label`` for a picker."""
    found = series_of(PacsConnection(settings), study_uid)
    return [s.as_json() for s in sorted(found, key=lambda s: not s.is_image)]


def open_from_pacs(conversation: Conversation, study_uid: str, series_uid: str | None = None,
                   progress: Progress | None = None) -> tuple[RetrievedSeries, Conversation]:
    """Retrieve the series (the study's largest image series when none is named), or use the
    stored copy, and open it as a local folder would be: in the conversation, or in a new session
    once the conversation has talked about another study (``workspace.open_to_read``), which
    is returned with the retrieval."""
    settings = conversation.settings
    refuse_while_answering(conversation)  # before the download, not after it
    retrieved = retrieve_series(PacsConnection(settings), settings, study_uid, series_uid, progress)
    opened = open_to_read(conversation, retrieved.folder)
    if opened.recorder is not None:
        opened.recorder.audit("study_retrieved_from_pacs", {
            "instances": retrieved.instances, "fetched": retrieved.fetched, "series_chosen_by": (
                "clinician" if series_uid else "largest image series")})
    return retrieved, opened


def send_report(conversation: Conversation, version: int, *, allow_draft: bool) -> list[StoredInstance]:
    """Export ``version`` as DICOM SR(s) and PDF and store them in the source study on the PACS:
    all of them or none (a PACS that holds the PDF but not the SR would look complete)."""
    files, notes = export(conversation, PACS_FORMATS, version=version)
    if notes:
        raise ReportError(f"Nothing was sent to the PACS: {notes[0]}")
    return send_to_pacs(conversation, pacs_documents(conversation, files, version=version),
                        allow_draft=allow_draft, version=version)
