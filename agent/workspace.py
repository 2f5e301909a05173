"""What the app needs from the agent, in plain data: open or resume a clinician's session,
replay its stored turns, write an answer in the background, describe the open study and the
privacy state.

The app (ui/) draws these; it never touches tools, images or the model itself.

Why an answer is written outside the app's script run (``start_turn``): every click in
Streamlit reruns the script, and a rerun stops the run in progress at its next drawing call. A
turn written inside the run was therefore cut off by any click on the viewer, the report or the
sidebar ("failed: interrupted"), and a real model takes ten seconds and more. Fragments do not
help: Streamlit (1.67, ``scriptrunner_utils/script_requests.py``) queues a fragment's rerun
behind the running script instead of stopping it, so a click in a fragment waits until the
answer ends, and the sidebar's clicks still stop the run. So the turn runs in a thread of its
own and records every event in the store as before; the app only follows it (``LiveTurn``),
drawing its events as they come, and a rerun, a reload or a second tab simply follows it again.

The turn works on its own copy of the session, resumed from the store, and holds the session's
lock for that copy as a turn in another tab would. The app's copy is never touched by the
turn's thread, so the clinician may scroll slices, change the window and zoom meanwhile: those
changes stay in the app's copy (``set_view`` saves nothing while an answer is written), the
answer keeps working on the view it was asked about, and when it is finished the app's copy is
brought up to date and the view the clinician chose meanwhile, if any, becomes the shared one
(``catch_up``). What would write the session waits for the answer: the viewer and the report
panel say so (a mark, a sign-off, an edit), and this module's writes (a study opened, a modality
named, a second-read step) are refused in one sentence (``ANSWERING``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.conversation import Backend, Conversation
from agent.events import Event, TurnStarted
from agent.models.factory import make_backend
from agent.samples import DEFAULT_SAMPLE, sample_path, session_title
from agent.settings import LoupeSettings
from agent.store.database import SessionBusyError, SessionNotFoundError, Store
from agent.store.files import write_atomically
from agent.toolbox import run_tool, save_upload
from tools.errors import LoupeError


@dataclass
class ToolCallView:
    call_id: str
    name: str
    args: dict[str, Any]
    state: str = "running"  # running | complete | error
    summary: str = ""
    duration_ms: float | None = None
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG bytes)
    image_refs: list[tuple[str, str]] = field(default_factory=list)  # (caption, sha256) in the image table


@dataclass
class TurnView:
    """One stored turn as the chat shows it."""

    turn_id: int
    message: str
    backend: str
    tool_calls: list[ToolCallView] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: The turn failed because the model was unavailable: the offline planner can answer it.
    offline_offer: bool = False
    finished: bool = False
    usage: dict[str, Any] = field(default_factory=dict)
    #: The answer of the step being written, as streamed so far (a live turn only).
    streaming: str = ""


def open_session(settings: LoupeSettings, store: Store, owner: str, session_id: str | None) -> Conversation:
    """The clinician's session ``session_id`` if it is theirs, else a new one on the default sample."""
    if session_id:
        try:
            return Conversation.resume(settings, store, session_id, owner)
        except SessionNotFoundError:
            pass  # not theirs or gone: start afresh rather than reveal anything
    conversation = Conversation.start(settings, sample_path(DEFAULT_SAMPLE), store=store, owner=owner)
    # Titled after the study (modality, description, date) once it is open, not "sample study".
    store.rename(conversation.session_id, owner, session_title(conversation.ctx.view().study))
    return conversation


def open_uploads(conversation: Conversation, files: list[tuple[str, bytes]], modality: str | None = None) -> None:
    """Store uploaded files under the data folder and open them: one file (DICOM, .zip, PNG,
    JPEG — recognised by content, extension or not), or several files of one series together."""
    refuse_while_answering(conversation)
    conversation.open_study(stored_uploads(conversation.settings, files), modality=modality)


def stored_uploads(settings: LoupeSettings, files: list[tuple[str, bytes]]) -> Path:
    """The uploaded files kept under the data folder: one file's path, or a series' folder."""
    uploads = settings.data_dir / "uploads"
    if len(files) == 1:
        return save_upload(uploads, *files[0])
    digest = hashlib.sha256(b"".join(hashlib.sha256(data).digest() for _, data in files)).hexdigest()[:20]
    folder = uploads / f"series-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, data) in enumerate(files):
        target = folder / f"{index:05d}{Path(name).suffix.lower()[:6]}"  # names may carry PHI
        if not target.exists():
            write_atomically(target, data)
    return folder


def open_sample(conversation: Conversation, name: str) -> None:
    refuse_while_answering(conversation)
    conversation.open_study(sample_path(name))


# -- opening another study -----------------------------------------------------------------------
# A conversation is about one study. Once it has been talked about, opening another study starts
# a new session (its own chat id), so the earlier answers and figures stay with the study they are
# about instead of running on above the new one; the earlier session stays in the list. Before
# anything is said (the sample the app starts on, a wrong file picked first), the study is simply
# replaced; another series of the same study, or the same files again, stays in the conversation.

def open_uploads_to_read(conversation: Conversation, files: list[tuple[str, bytes]],
                         modality: str | None = None) -> Conversation:
    """``open_uploads`` for the app: the conversation the files are now open in (see above)."""
    refuse_while_answering(conversation)
    return open_to_read(conversation, stored_uploads(conversation.settings, files), modality)


def open_sample_to_read(conversation: Conversation, name: str) -> Conversation:
    """``open_sample`` for the app: the conversation the sample is now open in (see above)."""
    return open_to_read(conversation, sample_path(name))


def open_to_read(conversation: Conversation, path: Path, modality: str | None = None) -> Conversation:
    """Open ``path`` for the clinician: in ``conversation`` or in a new session of the same
    owner (see above), which is returned; a LoupeError when it cannot be opened, and then
    nothing has changed."""
    refuse_while_answering(conversation)
    recorder = conversation.recorder
    if recorder is None or not (conversation.turns or conversation.history):
        conversation.open_study(path, modality=modality)
        return conversation
    fresh = Conversation.start(conversation.settings, store=recorder.store, owner=recorder.owner,
                               vision=conversation.ctx.vision)
    try:
        fresh.open_study(path, modality=modality)
    except LoupeError:
        _discard(fresh, "the study could not be opened")
        raise
    if _same_study(conversation, fresh):
        _discard(fresh, "the same study as the open conversation's")
        conversation.open_study(path, modality=modality)
        return conversation
    recorder.store.rename(fresh.session_id, recorder.owner, session_title(fresh.ctx.view().study))
    fresh.recorder.audit("session_for_another_study", {"previous_session": conversation.session_id})
    return fresh


def _same_study(open_one: Conversation, new_one: Conversation) -> bool:
    """The same files, or another series of the same DICOM study (its Study Instance UID)."""
    if open_one.ctx.current_study_id is None:
        return False
    before, after = open_one.ctx.view().study, new_one.ctx.view().study
    uid = before.identifying.study_instance_uid
    return before.id == after.id or bool(uid and uid == after.identifying.study_instance_uid)


def _discard(conversation: Conversation, reason: str) -> None:
    """A session started for a study that did not need one: gone again, and said so in the trail."""
    recorder = conversation.recorder
    conversation.ctx.close()
    recorder.store.delete(recorder.session_id, recorder.owner)
    recorder.store.audit(recorder.owner, "session_deleted", {"reason": reason}, session_id=recorder.session_id)


def backend_for(settings: LoupeSettings, name: str | None = None) -> Backend:
    return make_backend(settings, name)


# -- answers written in the background (see the module's docstring for why) ---------------------

ANSWERING = ("An answer is being written in this session; wait for it to finish, then try again "
             "(nothing was changed).")
#: The answer that failed in a way Loupe did not foresee (its thread's error is logged).
STOPPED = "The answer stopped unexpectedly; what was done before it is kept."

ViewState = tuple[str, int, Any]  # (study id, frame, window) of a copy's current view


@dataclass(eq=False)
class LiveTurn:
    """One turn written in a background thread on its own copy of the session: its events so
    far (the streamed pieces too), whether it has finished, and which copies of the session in
    the app have caught up with it."""

    session_id: str
    message: str
    events: list[Event] = field(default_factory=list)
    turn_id: int | None = None
    #: A sentence when the turn could not run (another server's turn holds the session, say).
    error: str | None = None
    finished: bool = False
    started_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None
    #: The view the answer works on, as its copy has it now.
    turn_view: ViewState | None = None
    _baselines: dict[str, ViewState | None] = field(default_factory=dict)
    _caught_up: set[str] = field(default_factory=set)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, seen: int, timeout_s: float) -> None:
        """Until an event after the first ``seen`` arrives, the turn finishes, or ``timeout_s``."""
        with self._changed:
            self._changed.wait_for(lambda: self.finished or len(self.events) > seen, timeout_s)

    def _add(self, event: Event, view: ViewState | None) -> None:
        with self._changed:
            self.events.append(event)
            self.turn_view = view
            if isinstance(event, TurnStarted):
                self.turn_id = event.turn_id
            self._changed.notify_all()

    def _finish(self, error: str | None) -> None:
        with self._changed:
            self.error, self.finished, self.ended_at = error, True, time.monotonic()
            self._changed.notify_all()


#: The latest turn of each session written in this process, by session id. Looked up only with a
#: conversation the app opened for its owner, so no one follows another clinician's answer.
_LIVE: dict[str, LiveTurn] = {}
_LIVE_LOCK = threading.Lock()
#: A finished turn is forgotten this long after it ended: a tab that has not been redrawn since
#: then reloads the stored session, and a view moved there during the answer is not kept.
KEEP_FINISHED_S = 600.0


def start_turn(conversation: Conversation, message: str, backend: Backend) -> LiveTurn:
    """Write the answer to ``message`` in a background thread, on a copy of this stored session
    resumed from the store; ``SessionBusyError`` while another answer of this session is being
    written here."""
    session_id = conversation.session_id
    if session_id is None:
        raise LoupeError("Only a stored session can answer in the background.")
    with _LIVE_LOCK:
        current = _LIVE.get(session_id)
        if current is not None and not current.finished:
            raise SessionBusyError(ANSWERING)
        _forget_finished()
        live = _LIVE[session_id] = LiveTurn(session_id=session_id, message=message)
        live._baselines[conversation.recorder.holder] = _view_state(conversation)
    recorder = conversation.recorder
    resume = (conversation.settings, recorder.store, session_id, recorder.owner, conversation.ctx.vision,
              conversation.ctx.figure_theme)  # read here: the thread never touches the app's copy
    threading.Thread(target=_write_answer, args=(live, resume, backend), daemon=True,
                     name=f"answer-{session_id[:8]}").start()
    return live


def _forget_finished() -> None:
    now = time.monotonic()
    for session_id, live in list(_LIVE.items()):
        if live.finished and now - live.ended_at > KEEP_FINISHED_S:
            del _LIVE[session_id]


def _write_answer(live: LiveTurn, resume: tuple, backend: Backend) -> None:
    """The turn's thread: resume its own copy, run the turn, record every event (the
    conversation writes each to the store before it is seen here)."""
    settings, store, session_id, owner, vision, theme = resume
    error, copy = STOPPED, None
    try:
        copy = Conversation.resume(settings, store, session_id, owner, vision=vision)
        copy.ctx.figure_theme = theme  # its pictures match the clinician's page
        for event in copy.ask(live.message, backend):
            live._add(event, _view_state(copy))
        error = None
    except LoupeError as refused:  # another server's turn holds the session, or it is gone
        error = refused.message
    finally:  # an unforeseen error is logged by the thread's excepthook; the app is told it stopped
        if copy is not None:
            copy.ctx.close()
        live._finish(error)


def answer_in_progress(conversation: Conversation) -> LiveTurn | None:
    """The answer being written in this session that this copy has not caught up with yet (it
    may have just finished): while there is one, this copy changes nothing in the store."""
    if conversation.recorder is None:
        return None
    live = _LIVE.get(conversation.recorder.session_id)
    if live is None or conversation.recorder.holder in live._caught_up:
        return None
    return live


def refuse_while_answering(conversation: Conversation) -> None:
    """Writes of this copy wait for the answer being written (its copy holds the session)."""
    if answer_in_progress(conversation) is not None:
        raise SessionBusyError(ANSWERING)


def confirm_images(conversation: Conversation) -> None:
    """The clinician confirms the open study's images show no identifying text (after the answer
    being written, which holds the session)."""
    refuse_while_answering(conversation)
    conversation.confirm_no_burned_in_text()


def catch_up(conversation: Conversation) -> None:
    """Bring this copy up to date before the app draws it: not while an answer is written here
    (the clinician's view meanwhile is kept in this copy), then with the answer's changes and,
    if the clinician moved the view meanwhile, that view as the shared one."""
    live = answer_in_progress(conversation)
    if live is None:
        conversation.refresh_if_stale()
        return
    holder = conversation.recorder.holder
    seen = live._baselines.setdefault(holder, _view_state(conversation))
    if not live.finished:
        return
    chosen = _view_state(conversation)
    live._caught_up.add(holder)
    conversation.refresh_if_stale()
    if chosen is not None and chosen != seen:
        _restore_view(conversation, chosen)


def _view_state(conversation: Conversation) -> ViewState | None:
    study_id = conversation.ctx.current_study_id
    if study_id is None:
        return None
    view = conversation.ctx.view()
    return study_id, view.frame, view.window


def _restore_view(conversation: Conversation, chosen: ViewState) -> None:
    """The frame and window the clinician chose while the answer was written, made the shared
    view of that study (both were valid in this copy a moment ago: same study, same frames)."""
    study_id, frame, window = chosen
    view = conversation.ctx.views.get(study_id)
    if view is None or frame >= view.study.frame_count:
        return
    view.frame, view.window = frame, window
    try:
        conversation.save()
    except LoupeError:  # another tab changed the session meanwhile: its view stands
        pass


def replay(store: Store, session_id: str, *, images_for_last: int | None = None) -> list[TurnView]:
    """The session's turns from its stored events, with the images of the last ``images_for_last``
    turns (all turns when None) from the image table.

    The app draws only the latest turns of a long session, and pictures are most of what a session
    stores: reading the others' on every rerun would grow with the conversation for nothing."""
    turns: list[TurnView] = []
    calls: dict[str, ToolCallView] = {}
    for event in store.events(session_id):
        call = _fold(turns, calls, event)
        if call is not None and event["kind"] == "tool_finished":
            call.image_refs = [(a["caption"] or a["name"], a["sha256"])
                               for a in event.get("artifacts", []) if a["mime_type"] == "image/png"]
    for turn in turns:
        _close_interrupted(turn)
    drawn = turns if images_for_last is None else turns[max(0, len(turns) - images_for_last):]
    _load_images(store, session_id, drawn)
    return turns


def live_view(live: LiveTurn) -> TurnView:
    """The answer being written as the chat shows a turn: what it has done so far, with the
    pictures its tools made and the answer of its current step as streamed so far."""
    turns: list[TurnView] = []
    calls: dict[str, ToolCallView] = {}
    for event in list(live.events):  # a copy: the answer's thread appends meanwhile
        if event.kind == "assistant_delta":  # (never before TurnStarted)
            turns[-1].streaming += event.text
            continue
        call = _fold(turns, calls, event.model_dump(exclude={"artifacts"}))
        if event.kind == "assistant_text":
            turns[-1].streaming = ""
        if call is not None and event.kind == "tool_finished":
            call.images = [(a.caption or a.name, a.data) for a in event.artifacts if a.mime_type == "image/png"]
    return turns[-1] if turns else TurnView(turn_id=0, message=live.message, backend="")


def _fold(turns: list[TurnView], calls: dict[str, ToolCallView], event: dict[str, Any]) -> ToolCallView | None:
    """One event (as stored) added to the turns it belongs to; the tool call it is about, if any."""
    kind = event["kind"]
    if kind == "turn_started":
        turns.append(TurnView(turn_id=event["turn_id"], message=event["message"], backend=event["backend"]))
        return None
    if not turns:
        return None
    turn, call = turns[-1], None
    if kind == "tool_started":
        call = calls[event["call_id"]] = ToolCallView(call_id=event["call_id"], name=event["name"], args=event["args"])
        turn.tool_calls.append(call)
    elif kind in ("tool_finished", "tool_failed"):
        call = calls.get(event["call_id"]) or ToolCallView(event["call_id"], event["name"], {})
        call.state = "complete" if kind == "tool_finished" else "error"
        call.summary = event.get("summary") or event.get("message", "")
        call.duration_ms = event.get("duration_ms")
    elif kind == "assistant_text":
        turn.texts.append(event["text"])
    elif kind == "error":
        turn.errors.append(event["message"])
        turn.offline_offer = bool(event.get("offline_available"))
    elif kind == "turn_finished":
        turn.finished, turn.usage = True, event["usage"]
    return call


def _load_images(store: Store, session_id: str, turns: list[TurnView]) -> None:
    loaded: dict[str, bytes] = {}  # an unchanged view renders the same picture: read it once
    for turn in turns:
        for call in turn.tool_calls:
            for caption, sha256 in call.image_refs:
                if sha256 not in loaded:
                    loaded[sha256] = store.image(session_id, sha256) or b""
                call.images.append((caption, loaded[sha256]))


def _close_interrupted(turn: TurnView) -> None:
    """A turn cut short (the app stopped mid-turn) shows as such, never as still running."""
    if turn.finished:
        return
    for call in turn.tool_calls:
        if call.state == "running":
            call.state, call.summary = "error", "interrupted before it finished"
    turn.errors.append("This turn was interrupted before it finished; what completed is kept.")


def study_facts(conversation: Conversation) -> dict[str, str]:
    """The open study's allow-listed facts, for the sidebar."""
    if conversation.ctx.current_study_id is None:
        return {}
    view = conversation.ctx.view()
    return {**conversation.boundary.technical_facts(view.study, view.frame),
            "frame": f"{view.frame + 1} of {view.study.frame_count}"}


def privacy_status(conversation: Conversation) -> tuple[str, str]:
    """(released | masked | held, reason) for the open study's pixels."""
    if conversation.ctx.current_study_id is None:
        return "released", "no study is open"
    release = conversation.boundary.release(conversation.ctx.view().study)
    return release.status, release.reason


def window_presets(conversation: Conversation) -> list[str]:
    if conversation.ctx.current_study_id is None:
        return []
    return sorted(conversation.ctx.view().study.window_presets())


def display_png(conversation: Conversation) -> tuple[bytes, str] | None:
    """The current view's display image (PNG) and caption, as load_study renders it."""
    from agent.tool_calls import execute

    if conversation.ctx.current_study_id is None:
        return None
    outcome = execute(conversation.ctx, "load_study", {})
    if not outcome.ok or not outcome.artifacts:
        return None
    return outcome.artifacts[0].data, outcome.artifacts[0].caption


def set_view(conversation: Conversation, *, frame: int | None = None, window: str | None = None) -> str | None:
    """Change frame or window of the open study; an error sentence, or None. While an answer is
    written, the change stays in this copy (the answer keeps the view it was asked about)."""
    from agent.tool_calls import execute

    args = {k: v for k, v in (("frame", frame), ("window", window)) if v is not None}
    outcome = execute(conversation.ctx, "load_study", args)
    if answer_in_progress(conversation) is None:  # else kept in this copy: shared when the answer ends
        conversation.save()
    return None if outcome.ok else outcome.error


#: What a clinician may say a PNG/JPEG shows; "OT" (DICOM's "other") runs the generic search.
MODALITY_CHOICES = {"US": "ultrasound", "DX": "radiograph", "MR": "MR", "CT": "CT", "OT": "other / not sure"}


def modality_choice(conversation: Conversation) -> tuple[str, str] | None:
    """For an open PNG/JPEG: the modality the tools use (one of ``MODALITY_CHOICES``) and a
    sentence on where it came from; None for DICOM (the header says)."""
    if conversation.ctx.current_study_id is None:
        return None
    safe = conversation.ctx.view().study.safe
    if safe.kind != "raster":
        return None
    current = safe.modality if safe.modality in MODALITY_CHOICES else "OT"
    if safe.modality_source == "guess":
        said = (f"Loupe's guess from the picture: {safe.modality_reason}. Change it if it is wrong: "
                "the detector searches each modality its own way.")
    else:
        said = "As you set it."
    return current, said


def name_modality(conversation: Conversation, modality: str) -> str | None:
    """The clinician says what the open PNG/JPEG shows; an error sentence, or None."""
    if answer_in_progress(conversation) is not None:
        return ANSWERING
    try:
        conversation.name_modality(modality)
    except LoupeError as error:
        return error.message
    return None


def owned_sessions(store: Store, owner: str) -> list[dict[str, Any]]:
    return [{"id": s.id, "title": s.title, "updated": f"{s.updated_at:%Y-%m-%d %H:%M}", "turns": s.turns}
            for s in store.list_sessions(owner)]



@dataclass
class SecondReadView:
    """The step of an active second read, as the app shows it."""

    number: int
    total: int
    checked: int
    title: str
    look_for: list[str]
    observation: str
    assessment: str | None
    note: str
    crop: tuple[str, bytes] | None
    finished: bool = False


def second_read_view(conversation: Conversation) -> SecondReadView | None:
    """The current step of the open study's second read, if one is in progress."""
    from agent.tool_calls import execute

    study_id = conversation.ctx.current_study_id
    state = conversation.ctx.second_reads.get(study_id) if study_id else None
    if state is None or state.summarised_at is not None:
        return None
    outcome = execute(conversation.ctx, "second_read_step", {"action": "current"})
    if not outcome.ok:
        return None
    output = outcome.output
    step = output["step"]
    crop = next(((a.caption, a.data) for a in outcome.artifacts if a.mime_type == "image/png"), None)
    if step is None:  # past the last step: time for the summary
        return SecondReadView(output["total"], output["total"], output["checked"], "All steps shown", [],
                              output["message"], None, "", None, finished=True)
    return SecondReadView(step["number"], step["total"], output["checked"], step["title"], step["look_for"],
                          step["observation"], step["assessment"], step["note"], crop)


def second_read_act(conversation: Conversation, tool: str, args: dict[str, Any]) -> str | None:
    """A clinician's second-read action (assessment, move, summary); an error sentence or None."""
    from agent.tool_calls import execute

    if answer_in_progress(conversation) is not None:
        return ANSWERING
    outcome = execute(conversation.ctx, tool, args)
    conversation.save()
    if conversation.recorder is not None and outcome.ok:
        conversation.recorder.audit("second_read", {"tool": tool, "args": args})
    return None if outcome.ok else outcome.error


def second_read_summary(conversation: Conversation, *, append_to_report: bool, name: str) -> tuple[str, list[tuple[str, bytes]]]:
    """The concordance summary in words (and its disagreement crops); optionally as an addendum."""
    from agent.tool_calls import execute

    if answer_in_progress(conversation) is not None:
        return ANSWERING, []
    outcome = execute(conversation.ctx, "second_read_summary", {"append_to_report": append_to_report,
                                                                  "author_name": name})
    conversation.save()
    if not outcome.ok:
        return outcome.error or "The summary could not be made.", []
    return outcome.output["text"], [(a.caption, a.data) for a in outcome.artifacts if a.mime_type == "image/png"]


def set_size_by_caliper(conversation: Conversation, finding_id: str, long_line: Sequence[float],
                        short_line: Sequence[float]) -> str:
    """The clinician's two caliper lines ([x0, y0, x1, y1] in native pixels of the finding's
    frame, either order) as ``finding_id``'s size, by the clinician (``set_finding_size``: a
    report that lists it gets a new version); the model is told, as of a mark. The confirmation;
    a LoupeError in one sentence when it cannot be set (``ANSWERING`` while an answer is written)."""
    refuse_while_answering(conversation)
    output = run_tool(conversation.ctx, "set_finding_size", {
        "finding_id": finding_id, "long_axis_line": list(long_line), "short_axis_line": list(short_line),
        "study_id": conversation.ctx.current_study_id}).output
    conversation.note_exchange(f"(I measured {output.finding_id} with the viewer's caliper.)", output.message)
    if conversation.recorder is not None:
        conversation.recorder.audit("clinician_size", {"finding_id": output.finding_id, "size_mm": output.size_mm,
                                                       "size_px": output.size_px, "by": "caliper"})
    size, unit, digits = (output.size_mm, "mm", 1) if output.size_mm else (output.size_px, "px", 0)
    confirmation = f"{output.finding_id} is now {size[0]:.{digits}f} × {size[1]:.{digits}f} {unit} (clinician)"
    if output.report_version is not None:
        return confirmation + f"; report version {output.report_version} states it."
    return confirmation + "."


def findings_table(conversation: Conversation) -> list[dict[str, Any]]:
    """The open study's findings, strongest first, as rows the chat's finding ids refer to."""
    study_id = conversation.ctx.current_study_id
    if study_id is None:
        return []
    rows = []
    for finding in sorted(conversation.ctx.study_findings(study_id), key=lambda f: -f.confidence):
        size = (f"{finding.size_mm[0]:.1f} × {finding.size_mm[1]:.1f} mm" if finding.size_mm else
                f"{finding.size_px[0]:.0f} × {finding.size_px[1]:.0f} px" if finding.size_px else "—")
        if finding.size_method == "clinician":  # who measured it, as the report's table says
            size += " (clinician)"
        rows.append({"id": finding.id, "finding": finding.label, "slice": finding.frame + 1, "size": size,
                     "confidence": round(finding.confidence, 2), "source": finding.source,
                     "verification": finding.verification.status if finding.verification else "—"})
    return rows


def follow_theme(conversation: Conversation, theme: str | None) -> None:
    """Figures the tools draw from now on match the page: ``dark`` or (anything else) light."""
    conversation.ctx.figure_theme = "dark" if theme == "dark" else "light"
