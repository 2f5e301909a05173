"""The conversation: stored turns replayed, the live turn drawn event by event.

Replayed and live turns are drawn by the same functions, so a reload looks like the moment it
was left. Each tool call is a status box (running, then its one-line result or its error);
the images a tool produced are shown right under it.
"""

from __future__ import annotations

import json

import streamlit as st

from agent.conversation import Conversation
from agent.store.database import Store
from agent.workspace import ToolCallView, TurnView, backend_for, open_uploads, replay
from tools.errors import LoupeError
from ui.sections import drawn_when_open

_ICONS = {"complete": ":material/check:", "error": ":material/error:", "running": ":material/pending:"}
RECENT_TURNS = 6
SUGGESTIONS = ("Analyse this scan", "Where is the lesion and how big?", "Draft a report", "Start a second read")


def chat_panel(conversation: Conversation, store: Store) -> None:
    show_all = st.session_state.get("show_all_turns")
    turns = replay(store, conversation.session_id, images_for_last=None if show_all else RECENT_TURNS)
    for turn in _visible(turns):
        _draw_turn(turn, offer_offline=turn is turns[-1] and turn.offline_offer)
    message = _incoming(conversation, first_turn=not turns)
    if message:
        _run_turn(conversation, message, st.session_state.pop("force_backend", None))


def _visible(turns: list[TurnView]) -> list[TurnView]:
    """The latest turns; earlier ones on request (a long conversation reopens quickly)."""
    hidden = len(turns) - RECENT_TURNS
    if hidden <= 0 or st.session_state.get("show_all_turns"):
        return turns
    if st.button(f"Show {hidden} earlier turn{'s' if hidden > 1 else ''}", key="show_all_turns_button"):
        st.session_state.show_all_turns = True
        st.rerun()
    return turns[hidden:]


def _incoming(conversation: Conversation, *, first_turn: bool) -> str | None:
    """The clinician's next message: typed (with files to open), or a suggestion clicked."""
    state = st.session_state
    if first_turn:
        st.caption("Try:")
        columns = st.columns(len(SUGGESTIONS))
        for column, suggestion in zip(columns, SUGGESTIONS, strict=True):
            if column.button(suggestion, key=f"suggest-{suggestion}", width="stretch"):
                state.pending = suggestion
    entry = st.chat_input("Ask about this study, or drop DICOM / .zip / PNG / JPEG files here",
                          accept_file="multiple", submit_mode="disable", key="chat_input")
    if entry is not None:
        files = [(f.name, f.getvalue()) for f in (entry.files or [])]  # attached files live one run only
        if files and not _opened(conversation, files):
            return None
        text = (entry.text or "").strip()
        if text:
            return text
        if files:
            st.rerun()
    return state.pop("pending", None)


def _opened(conversation: Conversation, files: list[tuple[str, bytes]]) -> bool:
    try:
        open_uploads(conversation, files)
    except LoupeError as error:
        st.error(error.message)
        return False
    return True


def _run_turn(conversation: Conversation, message: str, backend_name: str | None) -> None:
    backend = backend_for(conversation.settings, backend_name) if backend_name else st.session_state.backend
    with st.chat_message("user"):
        st.markdown(message)
    with st.chat_message("assistant"):
        boxes: dict[str, object] = {}
        try:
            for event in conversation.ask(message, backend):
                _draw_event(event, boxes, message)
        except LoupeError as error:  # another tab's turn holds the session: nothing was recorded
            st.error(f"{error.message} Your message was: “{message}”")
            return
    st.rerun()  # redraw everything (sidebar, report) from the stored session


def _draw_event(event, boxes: dict, message: str) -> None:
    if event.kind == "tool_started":
        box = st.status(f"{event.name} …", state="running", expanded=False)
        box.caption(_args_text(event.args))
        boxes[event.call_id] = box
    elif event.kind in ("tool_finished", "tool_failed"):
        ok = event.kind == "tool_finished"
        call = ToolCallView(event.call_id, event.name, {}, state="complete" if ok else "error",
                            summary=event.summary if ok else event.message, duration_ms=event.duration_ms)
        box = boxes.get(event.call_id)
        if box is not None:
            box.update(label=_status_label(call), state=call.state)
        for artifact in getattr(event, "artifacts", []):
            if artifact.mime_type == "image/png":
                st.image(artifact.data, caption=artifact.caption, output_format="PNG")
    elif event.kind == "assistant_delta":  # the answer as it is written
        streamed = boxes.setdefault("_streamed", {"text": "", "slot": st.empty()})
        streamed["text"] += event.text
        streamed["slot"].markdown(streamed["text"])
    elif event.kind == "assistant_text":
        streamed = boxes.pop("_streamed", None)
        (streamed["slot"] if streamed else st).markdown(event.text)
    elif event.kind == "error":
        _draw_error(event.message, offline=event.offline_available, message=message)


def _draw_turn(turn: TurnView, *, offer_offline: bool) -> None:
    with st.chat_message("user"):
        st.markdown(turn.message)
    with st.chat_message("assistant"):
        for call in turn.tool_calls:
            _draw_tool_box(turn, call)
            for caption, data in call.images:
                st.image(data, caption=caption, output_format="PNG")
        for text in turn.texts:
            st.markdown(text)
        for error in turn.errors[:-1] if offer_offline else turn.errors:
            st.error(error)
        if offer_offline:
            _draw_error(turn.errors[-1], offline=True, message=turn.message)


def _draw_tool_box(turn: TurnView, call: ToolCallView) -> None:
    """A finished tool call: its status line, and its arguments once opened.

    An expander looks like a finished status box; st.status pauses 50 ms per box, which a long
    conversation cannot afford on every rerun. The arguments are drawn only while the box is open,
    so a reload sends the browser one element per call instead of two."""
    box = drawn_when_open(_status_label(call), key=f"call-{turn.turn_id}-{call.call_id}", icon=_ICONS[call.state])
    if box is not None:
        box.caption(_args_text(call.args))


def _draw_error(text: str, *, offline: bool, message: str) -> None:
    st.error(text)
    if offline:
        def answer_offline() -> None:
            st.session_state.pending, st.session_state.force_backend = message, "offline"

        st.button("Answer this with the offline planner", on_click=answer_offline, key=f"offline-{hash(message)}")


def _status_label(call: ToolCallView) -> str:
    if call.state == "running":
        return f"{call.name} …"
    timing = f" ({call.duration_ms:.0f} ms)" if call.duration_ms else ""
    verb = "" if call.state == "complete" else "failed: "
    return f"{call.name}{timing} — {verb}{call.summary}"[:300]


def _args_text(args: dict) -> str:
    return json.dumps(args, ensure_ascii=False) if args else "(no arguments)"
