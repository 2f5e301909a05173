"""The conversation: stored turns replayed, the live turn drawn event by event.

Replayed and live turns are drawn by the same functions, so a reload looks like the moment it
was left. Each tool call is a status box (running, then its one-line result or its error);
the images a tool produced are shown right under it.

The answer is written in a background thread (``agent.workspace``'s docstring says why); the
app only follows it. The run that asked draws its events as they come, until it ends and the app
is redrawn from the stored session. A click on the viewer, the report or the sidebar stops that
run, not the answer: the next run ends at once and a fragment redraws the answer twice a second.
(A run that kept following would keep what the click removed from the page on screen until the
answer ended: Streamlit clears elements a run no longer draws only when the run finishes.)
"""

from __future__ import annotations

import json
import time

import streamlit as st

from agent.conversation import Conversation
from agent.store.database import Store
from agent.workspace import (ANSWERING, LiveTurn, ToolCallView, TurnView, answer_in_progress, backend_for,
                             live_view, open_uploads_to_read, replay, start_turn)
from tools.errors import LoupeError
from ui.opened import show_opened
from ui.sections import drawn_when_open

_ICONS = {"complete": ":material/check:", "error": ":material/error:", "running": ":material/pending:"}
RECENT_TURNS = 6
SUGGESTIONS = ("Analyse this scan", "Where is the lesion and how big?", "Draft a report", "Start a second read")
#: How often a followed answer's progress line is redrawn; each redraw is where a click's rerun
#: takes over the script run (Streamlit stops a run only at a drawing call).
FOLLOW_TICK_S = 0.2
#: How often the answer is redrawn after a click ended the run that asked.
LIVE_REFRESH_S = 0.5


def chat_panel(conversation: Conversation, store: Store) -> None:
    show_all = st.session_state.get("show_all_turns")
    live = answer_in_progress(conversation)
    turns = replay(store, conversation.session_id, images_for_last=None if show_all else RECENT_TURNS)
    if live is not None and turns and not turns[-1].finished:
        turns = turns[:-1]  # the answer being written: drawn below from its live events
    for turn in _visible(turns):
        _draw_turn(turn, offer_offline=turn is turns[-1] and turn.offline_offer)
    _turn_error()
    message = _incoming(conversation, first_turn=not turns and live is None)
    if message and live is None:
        asked = _start(conversation, message, st.session_state.pop("force_backend", None))
        if asked is not None:
            _follow(asked)
    elif message:
        st.error(f"{ANSWERING} Your message was: “{message}”")
    if live is not None:
        if turns and turns[-1].turn_id == live.turn_id:
            _ended(live)  # it ended while this run replayed it
        _live_turn(live)


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
                          accept_file="multiple", submit_mode="disable", key="chat_input",
                          disabled=answer_in_progress(conversation) is not None)  # one answer at a time
    if entry is not None:
        files = [(f.name, f.getvalue()) for f in (entry.files or [])]  # attached files live one run only
        if files and not _opened(conversation, files, (entry.text or "").strip()):
            return None
        text = (entry.text or "").strip()
        if text:
            return text
        if files:
            st.rerun()
    return state.pop("pending", None)


def _opened(conversation: Conversation, files: list[tuple[str, bytes]], text: str) -> bool:
    """Open the dropped files; in a new conversation (``text`` asked there) once this one has
    talked about another study (ui/opened.py)."""
    try:
        opened = open_uploads_to_read(conversation, files)
    except LoupeError as error:
        st.error(error.message)
        return False
    show_opened(conversation, opened, message=text)
    return True


def _start(conversation: Conversation, message: str, backend_name: str | None) -> LiveTurn | None:
    # Its own backend: a backend's helpers carry the privacy boundary and usage of the conversation
    # they serve, and this tab may start another session's answer while this one is written.
    backend = backend_for(conversation.settings, backend_name or st.session_state.backend.name)
    try:
        return start_turn(conversation, message, backend)
    except LoupeError as error:  # an answer of this session is already being written here
        st.error(f"{error.message} Your message was: “{message}”")
        return None


def _follow(live: LiveTurn) -> None:
    """In the run that asked: the answer's events drawn as they come, until it ends. A rerun (a
    click elsewhere) stops this drawing, not the answer."""
    with st.chat_message("user"):
        st.markdown(live.message)
    with st.chat_message("assistant"):
        events, progress = st.container(), st.empty()
        boxes: dict[str, object] = {}
        drawn = 0
        while not (live.finished and drawn == len(live.events)):
            with events:
                for event in live.events[drawn:]:
                    _draw_event(event, boxes, live.message)
                    drawn += 1
            progress.caption(_progress(live))
            live.wait(drawn, FOLLOW_TICK_S)
        progress.empty()
    _ended(live)


@st.fragment(run_every=LIVE_REFRESH_S)
def _live_turn(live: LiveTurn) -> None:
    """After a click ended the run that asked: the answer so far, redrawn on its own."""
    if live.finished:
        _ended(live)
    _draw_turn(live_view(live), progress=_progress(live))


def _progress(live: LiveTurn) -> str:
    return f"Writing the answer… {time.monotonic() - live.started_at:.0f} s"


def _ended(live: LiveTurn) -> None:
    """The answer is finished: redraw everything (sidebar, viewer, report) from the stored session."""
    if live.error:  # nothing was recorded (another server's turn held the session): said after the rerun
        st.session_state.turn_error = f"{live.error} Your message was: “{live.message}”"
    st.rerun()


def _turn_error() -> None:
    error = st.session_state.pop("turn_error", None)
    if error:
        st.error(error)


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


def _draw_turn(turn: TurnView, *, offer_offline: bool = False, progress: str | None = None) -> None:
    """A stored turn, or (with ``progress``) the answer being written as far as it got."""
    with st.chat_message("user"):
        st.markdown(turn.message)
    with st.chat_message("assistant"):
        for call in turn.tool_calls:
            if progress is None:
                _draw_tool_box(turn, call)
            else:  # redrawn twice a second: no keyed widget, nothing drawn on request
                st.expander(_status_label(call), icon=_ICONS[call.state]).caption(_args_text(call.args))
            for caption, data in call.images:
                st.image(data, caption=caption, output_format="PNG")
        for text in [*turn.texts, turn.streaming] if turn.streaming else turn.texts:
            st.markdown(text)
        for error in turn.errors[:-1] if offer_offline else turn.errors:
            st.error(error)
        if offer_offline:
            _draw_error(turn.errors[-1], offline=True, message=turn.message)
        if progress is not None:
            st.caption(progress)


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
