"""Second-read mode: the current checklist step's crop, what to look for, Loupe's observation,
agree / disagree / uncertain (keys a, d, u), a note, progress, and the summary at the end.
The chat stays available beside it for questions about the step."""

from __future__ import annotations

import streamlit as st

from agent.conversation import Conversation
from agent.workspace import second_read_act, second_read_summary, second_read_view


def second_read_panel(conversation: Conversation) -> None:
    view = second_read_view(conversation)
    if view is None:
        _last_summary()
        return
    with st.container(border=True):
        st.subheader("Second read")
        st.progress(view.checked / view.total, text=f"{view.checked} of {view.total} steps checked")
        if view.finished:
            st.write(view.observation)
        else:
            _step(conversation, view)
        _finish(conversation)


def _step(conversation: Conversation, view) -> None:
    st.markdown(f"**Step {view.number} of {view.total}: {view.title}**")
    if view.crop:
        st.image(view.crop[1], caption=view.crop[0], output_format="PNG")
    if view.look_for:
        st.markdown("Look for: " + "; ".join(view.look_for))
    st.info(view.observation)
    if view.assessment:
        st.caption(f"Recorded: {view.assessment}{' — ' + view.note if view.note else ''}")
    note = st.text_input("Note (optional)", key=f"second-read-note-{view.number}")
    agree, disagree, uncertain = st.columns(3)
    for column, (label, key) in zip((agree, disagree, uncertain),
                                    (("Agree", "a"), ("Disagree", "d"), ("Uncertain", "u")), strict=True):
        if column.button(label, key=f"assess-{label.lower()}", shortcut=key, width="stretch"):
            _act(conversation, "record_assessment", {"assessment": label.lower(), "note": note})
    back, forward = st.columns(2)
    if back.button("Previous step", key="second-read-previous", disabled=view.number == 1):
        _act(conversation, "second_read_step", {"action": "previous"})
    if forward.button("Skip to next step", key="second-read-next"):
        _act(conversation, "second_read_step", {"action": "next"})


def _finish(conversation: Conversation) -> None:
    left, right = st.columns(2)
    name = st.session_state.get("signer_name") or st.session_state.get("owner") or "clinician"
    if left.button("Finish: summary", key="second-read-summary"):
        st.session_state.second_read_summary = second_read_summary(conversation, append_to_report=False, name=name)
        st.rerun()
    if right.button("Finish and add to the report", key="second-read-to-report"):
        st.session_state.second_read_summary = second_read_summary(conversation, append_to_report=True, name=name)
        st.rerun()


def _last_summary() -> None:
    summary = st.session_state.get("second_read_summary")
    if not summary:
        return
    text, crops = summary
    with st.expander("Second-read summary", expanded=True):
        st.markdown(text)
        for caption, data in crops:
            st.image(data, caption=caption, output_format="PNG")


def _act(conversation: Conversation, tool: str, args: dict) -> None:
    error = second_read_act(conversation, tool, args)
    if error:
        st.error(error)
        return
    st.rerun()
