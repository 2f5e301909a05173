"""The sidebar's "Open from PACS": search the hospital's PACS, pick a study (and, if wanted, one of
its series) and open it as a local folder would be (in a new conversation once this one has
talked about another study: ui/opened.py).

The search results carry the patient's name and id so the clinician can tell studies apart;
they stay in this browser session's state (``pacs_results``) and on the screen, and nothing
here logs them or hands them to the conversation.
"""

from __future__ import annotations

import re
from typing import Any

import streamlit as st

from agent.conversation import Conversation
from agent.pacs.search import StudyQuery
from agent.pacs_studies import open_from_pacs, search, series
from tools.errors import LoupeError
from ui.opened import show_opened
from ui.sections import drawn_when_open

_MODALITIES = ["(any)", "CT", "MR", "CR", "DX", "US", "MG", "PT", "NM", "XA"]
_MARKDOWN = re.compile(r"[\\`*_\[\]<>~$|]")
#: Results listed in full; more scroll inside a box of this height.
_LIST_UNSCROLLED, _LIST_HEIGHT_PX = 4, 360
#: The query fields and the pickers: kept while the section is closed (ui/sections.py).
_KEEP = ("pacs_patient_id", "pacs_patient_name", "pacs_accession", "pacs_modality", "pacs_date", "pacs_description",
         "pacs_study", "pacs_series_choice")


def pacs_panel(conversation: Conversation) -> None:
    """Nothing at all without a configured PACS: the feature does not exist for that site."""
    if not conversation.settings.pacs_configured:
        return
    section = drawn_when_open("Open from PACS", key="pacs_section_open", keep=_KEEP)
    if section is None:
        return
    with section:
        query = _query()
        if st.button("Search PACS", key="pacs_search"):
            _search(conversation, query)
        _results(conversation)
        note = st.session_state.get("pacs_note")
        if note and note[0] == conversation.ctx.current_study_id:  # not once another study is open
            st.success(note[1])


def _query() -> StudyQuery:
    patient_id = st.text_input("Patient id", key="pacs_patient_id")
    patient_name = st.text_input("Patient name (* and ? as wildcards)", key="pacs_patient_name")
    accession = st.text_input("Accession number", key="pacs_accession")
    modality = st.selectbox("Modality", _MODALITIES, key="pacs_modality")
    date = st.text_input("Study date (YYYYMMDD or YYYYMMDD-YYYYMMDD)", key="pacs_date")
    description = st.text_input("Study description (* and ? as wildcards)", key="pacs_description")
    return StudyQuery(patient_id=patient_id or None, patient_name=patient_name or None, accession=accession or None,
                      modality=None if modality == "(any)" else modality, date=date or None,
                      description=description or None)


def _search(conversation: Conversation, query: StudyQuery) -> None:
    # A new search starts over: the old pickers would point into the old results.
    for key in ("pacs_results", "pacs_study", "pacs_series", "pacs_series_choice", "pacs_note"):
        st.session_state.pop(key, None)
    try:
        st.session_state.pacs_results = search(conversation.settings, query)
    except LoupeError as error:
        st.error(error.message)


def _results(conversation: Conversation) -> None:
    rows = st.session_state.get("pacs_results")
    if rows is None:
        return
    if not rows:
        st.info("No study on the PACS matches.")
        return
    study_uid = _study_list(rows)
    left, right = st.columns(2)
    if left.button("Open study", key="pacs_open_study", help="Opens the study's largest image series"):
        _open(conversation, study_uid)
    if right.button("List series", key="pacs_list_series"):
        _list_series(conversation, study_uid)
    _series_picker(conversation, study_uid)


def _study_list(rows: list[dict[str, Any]]) -> str:
    """The results as a list to pick from: the patient on the first line, date, modalities,
    description, series and images under it. The sidebar is too narrow for a table of seven
    columns (only #, patient and id were in sight); here every field shows, wrapped."""
    by_uid = {row["study_uid"]: row for row in rows}
    st.caption(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'} found, newest first.")
    with st.container(height=_LIST_HEIGHT_PX if len(rows) > _LIST_UNSCROLLED else "content", key="pacs_results_list"):
        return st.radio("Study", list(by_uid), format_func=lambda uid: _patient_line(by_uid[uid]),
                        captions=[_study_line(row) for row in rows], key="pacs_study", label_visibility="collapsed")


def _patient_line(row: dict[str, Any]) -> str:
    # The patient first: it is what a clinician checks first.
    patient = _plain(row["patient_name"] or "(no name)")
    return f"{patient} · {_plain(row['patient_id'])}" if row["patient_id"] else patient


def _study_line(row: dict[str, Any]) -> str:
    images = f"{row['series']} series, {row['instances']} image{'' if row['instances'] == 1 else 's'}"
    accession = f"acc. {row['accession']}" if row.get("accession") else ""
    return _plain(" · ".join(part for part in (_date(row["study_date"]), ", ".join(row["modalities"]),
                                               row["description"] or "(no description)", images, accession) if part))


def _plain(text: str) -> str:
    """``text`` shown as typed: radio labels and captions are Markdown, and a PACS's names and
    descriptions may hold * _ ` [ ] < > ~ $ |."""
    return _MARKDOWN.sub(r"\\\g<0>", text)


def _date(yyyymmdd: str) -> str:
    return f"{yyyymmdd[:4]}-{yyyymmdd[4:6]}-{yyyymmdd[6:]}" if len(yyyymmdd) == 8 else yyyymmdd


def _list_series(conversation: Conversation, study_uid: str) -> None:
    st.session_state.pop("pacs_series_choice", None)
    try:
        st.session_state.pacs_series = (study_uid, series(conversation.settings, study_uid))
    except LoupeError as error:
        st.error(error.message)


def _series_picker(conversation: Conversation, study_uid: str) -> None:
    listed = st.session_state.get("pacs_series")
    if not listed or listed[0] != study_uid:  # listed for another study of the results
        return
    images = {s["series_uid"]: s["label"] for s in listed[1] if s["is_image"]}
    others = [s["modality"] or "?" for s in listed[1] if not s["is_image"]]
    if others:  # reports and the like: nothing to look at, so not offered
        st.caption(f"Not listed: {len(others)} series without images ({', '.join(sorted(set(others)))}).")
    if not images:
        st.info("This study has no image series to open.")
        return
    series_uid = st.selectbox("Series", list(images), format_func=images.get, key="pacs_series_choice")
    if st.button("Open series", key="pacs_open_series"):
        _open(conversation, study_uid, series_uid)


def _open(conversation: Conversation, study_uid: str, series_uid: str | None = None) -> None:
    st.session_state.pop("pacs_note", None)
    bar = st.progress(0.0, text="Asking the PACS for the images…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Retrieving image {done}/{total}")

    try:
        retrieved, opened = open_from_pacs(conversation, study_uid, series_uid, progress=progress)
    except LoupeError as error:
        st.error(error.message)  # the study that was open stays open
        return
    finally:
        bar.empty()
    how = f"{retrieved.fetched} image(s) retrieved" if retrieved.fetched else "from the stored copy"
    if 0 < retrieved.fetched < retrieved.instances:  # an interrupted retrieval, resumed
        how += ", the rest from the stored copy"
    note = f"Opened series {retrieved.description} — {how}."
    if retrieved.other_image_series:
        note += (f" The study has {retrieved.other_image_series} other image series: "
                 "use List series to open another.")
    st.session_state.pacs_note = (opened.ctx.current_study_id, note)
    show_opened(conversation, opened)  # a new conversation when this one was about another study
