"""After a study is opened from the sidebar, the PACS or the chat: show the conversation it was
opened in. Once a conversation has talked about its study, another study opens in a new session
of its own (``agent.workspace.open_to_read`` says why); the app then follows it — the session in
this browser tab and its chat id in the URL — and says where the previous conversation went.
"""

from __future__ import annotations

import streamlit as st

from agent.conversation import Conversation

#: Said in the sidebar of the new conversation until it is under way (a second question asked).
NEW_CONVERSATION = ("Opened in a new conversation: the previous study's conversation is kept under "
                    "Sessions.")


def show_opened(previous: Conversation, opened: Conversation, *, message: str | None = None) -> None:
    """Follow ``opened`` when it is not ``previous`` (the run is restarted), with ``message``,
    if any, sent there as the clinician's first question; nothing to do when it is the same."""
    if opened is previous:
        return
    state = st.session_state
    state.conversation = opened
    state.opened_note = (opened.session_id, NEW_CONVERSATION)
    for key in ("second_read_summary", "show_all_turns"):  # the previous session's
        state.pop(key, None)
    if message:
        state.pending = message
    st.query_params["chat"] = opened.session_id
    st.rerun()


def opened_note(conversation: Conversation) -> None:
    """The new-conversation sentence, in the conversation it is about, while it is new."""
    note = st.session_state.get("opened_note")
    if note and note[0] == conversation.session_id and conversation.turns <= 1:
        st.info(note[1])
