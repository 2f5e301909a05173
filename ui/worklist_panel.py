"""The sidebar's "Worklist": the studies Loupe pre-read (``loupe preread``), STAT first, then by
the strength of Loupe's top finding, then by arrival; filters by modality and state. "Open" on a
done study starts the clinician's own session from the pre-read (``agent.preread.worklist``: a
copy of it, so its findings, figures and draft are there at once and nothing is recomputed) and
follows it as a new conversation (ui/opened.py).

Shown beside "Open from PACS" when a PACS is configured or a pre-read exists, to whoever may use
the app (the login mode decides who that is, as for the PACS). The rows name no patient: modality,
description and date come from the pre-read session's title.
"""

from __future__ import annotations

import re

import streamlit as st

from agent.conversation import Conversation
from agent.preread.ledger import STATES
from agent.preread.worklist import WorklistRow, any_preread, copy_id, modalities, open_preread, worklist
from agent.store.database import Store
from tools.errors import LoupeError
from ui.opened import show_opened
from ui.sections import drawn_when_open

_ANY = "(any)"
#: Rows listed in full; more scroll inside a box of this height.
_LIST_UNSCROLLED, _LIST_HEIGHT_PX = 5, 420
_KEEP = ("worklist_modality", "worklist_state")
_MARKDOWN = re.compile(r"[\\`*_\[\]<>~$|]")


def worklist_panel(conversation: Conversation, store: Store, owner: str) -> None:
    """Nothing at all without a PACS and without any pre-read: the feature does not exist there."""
    settings = conversation.settings
    if not settings.pacs_configured and not any_preread(store):
        return
    section = drawn_when_open("Worklist", key="worklist_section_open", keep=_KEEP)
    if section is None:
        return
    with section:
        try:
            everything = worklist(settings, store=store)
        except LoupeError as error:
            st.error(error.message)
            return
        left, right = st.columns(2)
        modality = left.selectbox("Modality", [_ANY, *modalities(everything)], key="worklist_modality")
        state = right.selectbox("State", [_ANY, *STATES], key="worklist_state")
        rows = [r for r in everything if (modality == _ANY or r.modality == modality)
                and (state == _ANY or r.state == state)]
        st.button("Refresh", key="worklist_refresh")  # a click reruns: the list is read again
        if not everything:
            st.info("No study has been pre-read yet (loupe preread watch, or loupe preread study).")
            return
        if not rows:
            st.info("No pre-read study matches the filters.")
            return
        st.caption(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'}: STAT first, then the strongest "
                   "finding, then the earliest arrival.")
        current = conversation.session_id
        with st.container(height=_LIST_HEIGHT_PX if len(rows) > _LIST_UNSCROLLED else "content",
                          key="worklist_rows"):
            for row in rows:
                _row(conversation, store, owner, row, current)


def _row(conversation: Conversation, store: Store, owner: str, row: WorklistRow, current: str | None) -> None:
    with st.container(border=True, key=f"worklist_row_{row.job_id}"):
        stat = "**:red[STAT]** · " if row.priority == "stat" else ""
        study = " · ".join(p for p in (row.modality, row.description) if p) or "study not opened yet"
        st.markdown(f"{stat}{_plain(study)}")
        found = "" if row.findings is None else f"{row.findings} finding{'' if row.findings == 1 else 's'}"
        top = f"top: {row.top_finding}" if row.top_finding else ""
        since = f"arrived {row.since_arrival} ago" if row.since_arrival else ""
        st.caption(" · ".join(p for p in (row.state, found, _plain(top), since) if p))
        if row.state == "failed" and row.error:
            st.caption(_plain(row.error))
        if not row.openable:
            return
        is_open = copy_id(row.session_id, owner) == current
        if st.button("Open" if not is_open else "Open (shown)", key=f"worklist_open_{row.job_id}", disabled=is_open,
                     help="Opens your own session from Loupe's pre-read: its findings, figures and draft "
                          "are there already."):
            _open(conversation, store, owner, row)


def _plain(text: str) -> str:
    """``text`` shown as typed (captions are Markdown; descriptions may hold * _ ` and the like)."""
    return _MARKDOWN.sub(r"\\\g<0>", text)


def _open(conversation: Conversation, store: Store, owner: str, row: WorklistRow) -> None:
    try:
        opened = open_preread(conversation.settings, store, row.job_id, owner, vision=conversation.ctx.vision)
    except LoupeError as error:
        st.error(error.message)  # the study that was open stays open
        return
    for key in ("pacs_note",):
        st.session_state.pop(key, None)
    show_opened(conversation, opened)
