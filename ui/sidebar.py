"""The sidebar: the open study's summary (its image, slice and window are in the viewer,
ui/viewer.py), the backend, opening a study (files, samples, the PACS), comparing it with a prior
(ui/compare_panel.py), the privacy state with its confirm button, and the clinician's sessions."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from agent.conversation import Conversation
from agent.samples import SAMPLES
from agent.store.database import Store
from agent.workspace import (MODALITY_CHOICES, confirm_images, modality_choice, name_modality, open_sample_to_read,
                             open_uploads_to_read, owned_sessions, privacy_status, study_facts)
from tools.errors import LoupeError
from ui.compare_panel import compare_panel
from ui.opened import opened_note, show_opened
from ui.pacs_panel import pacs_panel
from ui.sections import drawn_when_open
from ui.worklist_panel import worklist_panel

_OPENS_WHERE = ("Once this conversation has talked about its study, another study opens in a new "
                "conversation; this one stays under Sessions.")


def sidebar(conversation: Conversation, store: Store, owner: str) -> None:
    with st.sidebar:
        st.title("Loupe")
        _backend()
        _open_study(conversation)
        pacs_panel(conversation)
        compare_panel(conversation)
        worklist_panel(conversation, store, owner)
        _study(conversation)
        _privacy(conversation)
        _sessions(conversation, store, owner)


def _backend() -> None:
    backend = st.session_state.backend
    labels = {"gemini": f"Gemini ({getattr(backend, 'model', '')})",
              "openai": f"{getattr(backend, 'model', '')} on an OpenAI-compatible server"}
    st.caption(f"Backend: {labels.get(backend.name, 'offline planner (no model)')}")
    if getattr(backend, "mode", None):  # a server without tool calling: say who chooses the tools
        st.caption(f"Mode: {backend.mode}")
    if st.session_state.get("backend_note"):
        st.caption(st.session_state.backend_note)


def _open_study(conversation: Conversation) -> None:
    section = drawn_when_open("Open a study", key="open_study_open")
    if section is None:
        return
    with section:
        uploads = st.file_uploader("DICOM files of one series, a .zip, a PNG or a JPEG", accept_multiple_files=True,
                                   key="sidebar_upload")
        modality = st.selectbox("Modality of a PNG/JPEG", ["(Loupe guesses)", "CT", "MR", "DX", "US"], key="modality")
        if uploads and st.button("Open", key="open_uploads", help=_OPENS_WHERE):
            files = [(u.name, u.getvalue()) for u in uploads]
            _open(conversation, lambda: open_uploads_to_read(conversation, files,
                                                              modality=None if modality.startswith("(") else modality))
        sample = st.selectbox("…or a sample study", list(SAMPLES), format_func=lambda name: SAMPLES[name][1],
                              key="sample")
        if st.button("Open sample", key="open_sample", help=_OPENS_WHERE):
            _open(conversation, lambda: open_sample_to_read(conversation, sample))


def _open(conversation: Conversation, opening: Callable[[], Conversation]) -> None:
    try:
        opened = opening()
    except LoupeError as error:  # the study that was open stays open
        st.error(error.message)
        return
    show_opened(conversation, opened)


def _study(conversation: Conversation) -> None:
    opened_note(conversation)
    facts = study_facts(conversation)
    if not facts:
        st.info("No study is open.")
        return
    st.markdown("  \n".join(f"**{name.capitalize()}** {value}" for name, value in facts.items()))
    _modality(conversation)


def _modality(conversation: Conversation) -> None:
    """A PNG/JPEG names no modality: show what Loupe took it as, and let the clinician say."""
    choice = modality_choice(conversation)
    if choice is None:
        return
    current, said = choice
    study_id = conversation.ctx.current_study_id
    options = list(MODALITY_CHOICES)
    chosen = st.selectbox("What does this image show?", options, index=options.index(current),
                          format_func=lambda code: f"{MODALITY_CHOICES[code]} ({code})", key=f"modality-{study_id}")
    st.caption(said)
    if chosen != current:
        _report_error(name_modality(conversation, chosen))
        st.rerun()


def _privacy(conversation: Conversation) -> None:
    status, reason = privacy_status(conversation)
    if st.session_state.backend.name == "offline":
        st.caption("Privacy: offline — nothing leaves this machine.")
        return
    if status == "released":
        st.caption(f"Privacy: the model sees the rendered image and technical facts only ({reason}).")
        return
    st.warning(f"The image is {status} for the model: {reason}.")
    if st.button("I checked: no identifying text on the image", key="confirm_release"):
        try:
            confirm_images(conversation)
        except LoupeError as error:  # an answer is being written, or the session changed in another tab
            st.error(error.message)
            return
        st.rerun()


def _sessions(conversation: Conversation, store: Store, owner: str) -> None:
    section = drawn_when_open("Sessions", key="sessions_open")  # the list grows with every session
    if section is None:
        return
    with section:
        if st.button("New session", key="new_session"):
            st.query_params.clear()
            st.session_state.pop("conversation", None)
            st.rerun()
        for session in owned_sessions(store, owner):
            current = session["id"] == conversation.session_id
            title = session["title"] or "untitled"
            left, right = st.columns([3, 1])
            if left.button(f"{'▶ ' if current else ''}{title} · {session['updated']} · {session['turns']} turn(s)",
                           key=f"open-{session['id']}", disabled=current):
                st.query_params["chat"] = session["id"]
                st.rerun()
            if not current and right.button("Delete", key=f"delete-{session['id']}"):
                store.delete(session["id"], owner)
                store.audit(owner, "session_deleted", {}, session_id=session["id"])
                st.rerun()


def _report_error(error: str | None) -> None:
    if error:
        st.error(error)
