"""Loupe's Streamlit app: a chat about a study, tool calls live, pictures inline; beside it the
study itself in a viewer (the view the tools and the model get), and the report under it.

Run from the repository root with ``streamlit run ui/app.py`` or ``loupe serve``. This module
only renders: the conversation, its tools and its storage live in ``agent``; the app draws the
events a turn yields and the session the store keeps. The chat id is in the URL (``?chat=``),
so a reload, a second tab or a restart reopens the same conversation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run ui/app.py` puts ui/ (not the repository root) on sys.path.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from agent.settings import LoupeSettings  # noqa: E402
from agent.store.database import Store  # noqa: E402
from agent.workspace import backend_for, catch_up, follow_theme, open_session  # noqa: E402
from tools.errors import LoupeError  # noqa: E402
from ui.chat import chat_panel  # noqa: E402
from ui.report_panel import report_panel  # noqa: E402
from ui.second_read_panel import second_read_panel  # noqa: E402
from ui.sidebar import sidebar  # noqa: E402
from ui.viewer import viewer_panel  # noqa: E402

st.set_page_config(page_title="Loupe", layout="wide")
# A report's findings table is wider than the chat column or the report panel: let it scroll
# inside its column instead of running under the panel beside it.
st.html("<style>[data-testid=stMarkdownContainer] table {display: block; overflow-x: auto;}"
        # Less of Streamlit's page margin: at 1280×800 the viewer's slice fits above the fold.
        "[data-testid=stMainBlockContainer] {padding: 3.5rem 2rem 2rem;}"
        # A button's label wraps onto a second line instead of being cut to "Analy…" (Streamlit
        # keeps labels on one line); the suggestions take their label's width and wrap as a row.
        ".stMain [data-testid=stButton] [data-testid=stMarkdownContainer],"
        " .stMain [data-testid=stButton] [data-testid=stMarkdownContainer] p"
        " {white-space: normal; overflow: visible; text-overflow: clip;}"
        "[data-testid=stColumn]:has(> [data-testid=stVerticalBlock] > [class*=st-key-suggest])"
        " {flex: 1 1 auto !important; width: auto !important; min-width: fit-content;}"
        # The chat box grows to its placeholder while empty: one row high, it showed half of it.
        "[data-testid=stChatInputTextArea]:placeholder-shown {field-sizing: content; height: auto !important;}"
        # The study column stays in view while the chat scrolls (Streamlit scrolls .stMain); the
        # report under the viewer scrolls inside the column. Columns stack below 640 px.
        "@media (min-width: 640px) {[data-testid=stColumn]:has(.st-key-viewer) {position: sticky;"
        " top: 3.5rem; align-self: flex-start; max-height: calc(100dvh - 4.5rem); overflow-y: auto;}}"
        "</style>")


@st.cache_resource
def _settings() -> LoupeSettings:
    return LoupeSettings()


@st.cache_resource
def _store() -> Store:
    """One database engine for the app (thread-safe); sessions are per clinician, not here."""
    settings = _settings()
    return Store.for_data_dir(settings.data_dir, settings.db_url)


def _owner(settings: LoupeSettings) -> str | None:
    """Who is using the app: the local user, the OIDC login, or the reverse proxy's header."""
    if settings.auth == "oidc":
        if not st.user.is_logged_in:
            st.button("Log in", on_click=st.login, type="primary")
            return None
        return str(st.user.get("email") or st.user.get("sub"))
    if settings.auth == "proxy-header":
        user = st.context.headers.get(settings.auth_header)
        if not user:
            st.error("This app must be reached through the hospital's sign-in proxy.")
        return user or None
    return settings.user


def _session(settings: LoupeSettings, store: Store, owner: str):
    state = st.session_state
    wanted = st.query_params.get("chat")
    conversation = state.get("conversation")
    if conversation is None or (wanted and conversation.session_id != wanted) or state.get("owner") != owner:
        conversation = open_session(settings, store, owner, wanted)
        state.conversation, state.owner = conversation, owner
        state.pop("backend", None)
    if st.query_params.get("chat") != conversation.session_id:
        st.query_params["chat"] = conversation.session_id
    # Another tab or server may have answered or signed since: show (and build on) what is stored;
    # while an answer is written in the background, this copy keeps the clinician's view instead.
    catch_up(conversation)
    follow_theme(conversation, getattr(st.context.theme, "type", None))  # figures on a dark page are dark
    if "backend" not in state:
        try:
            state.backend = backend_for(settings)
        except LoupeError as error:  # Gemini asked for but not configured: say so, work offline
            state.backend_note = error.message
            state.backend = backend_for(settings, "offline")
    return conversation


def main() -> None:
    settings = _settings()
    try:
        store = _store()
    except LoupeError as error:
        st.error(error.message)
        return
    owner = _owner(settings)
    if owner is None:
        return
    try:
        conversation = _session(settings, store, owner)
    except LoupeError as error:
        st.error(error.message)
        return
    sidebar(conversation, store, owner)
    # The conversation on the left; the study (large) and the report on the right. Drawn before the
    # chat: a turn reruns the app when it ends, and the viewer then shows the view it left.
    chat_column, study_column = st.columns([2, 3], gap="medium")
    with study_column:
        viewer_panel(conversation)
        second_read_panel(conversation)
        report_panel(conversation)
    with chat_column:
        chat_panel(conversation, store)


main()
