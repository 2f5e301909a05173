"""What the app needs from the agent, in plain data: open or resume a clinician's session,
replay its stored turns, describe the open study and the privacy state.

The app (ui/) draws these; it never touches tools, images or the model itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.conversation import Backend, Conversation
from agent.models.factory import make_backend
from agent.samples import DEFAULT_SAMPLE, sample_path
from agent.settings import LoupeSettings
from agent.store.database import SessionNotFoundError, Store
from agent.store.files import write_atomically
from agent.toolbox import save_upload
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


def open_session(settings: LoupeSettings, store: Store, owner: str, session_id: str | None) -> Conversation:
    """The clinician's session ``session_id`` if it is theirs, else a new one on the default sample."""
    if session_id:
        try:
            return Conversation.resume(settings, store, session_id, owner)
        except SessionNotFoundError:
            pass  # not theirs or gone: start afresh rather than reveal anything
    return Conversation.start(settings, sample_path(DEFAULT_SAMPLE), store=store, owner=owner,
                              title="sample study")


def open_uploads(conversation: Conversation, files: list[tuple[str, bytes]], modality: str | None = None) -> None:
    """Store uploaded files under the data folder and open them: one file (DICOM, .zip, PNG,
    JPEG — recognised by content, extension or not), or several files of one series together."""
    uploads = conversation.settings.data_dir / "uploads"
    if len(files) == 1:
        conversation.open_study(save_upload(uploads, *files[0]), modality=modality)
        return
    digest = hashlib.sha256(b"".join(hashlib.sha256(data).digest() for _, data in files)).hexdigest()[:20]
    folder = uploads / f"series-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, data) in enumerate(files):
        target = folder / f"{index:05d}{Path(name).suffix.lower()[:6]}"  # names may carry PHI
        if not target.exists():
            write_atomically(target, data)
    conversation.open_study(folder, modality=modality)


def open_sample(conversation: Conversation, name: str) -> None:
    conversation.open_study(sample_path(name))


def backend_for(settings: LoupeSettings, name: str | None = None) -> Backend:
    return make_backend(settings, name)


def replay(store: Store, session_id: str, *, images_for_last: int | None = None) -> list[TurnView]:
    """The session's turns from its stored events, with the images of the last ``images_for_last``
    turns (all turns when None) from the image table.

    The app draws only the latest turns of a long session, and pictures are most of what a session
    stores: reading the others' on every rerun would grow with the conversation for nothing."""
    turns: list[TurnView] = []
    calls: dict[str, ToolCallView] = {}
    for event in store.events(session_id):
        kind = event["kind"]
        if kind == "turn_started":
            turns.append(TurnView(turn_id=event["turn_id"], message=event["message"], backend=event["backend"]))
            continue
        if not turns:
            continue
        turn = turns[-1]
        if kind == "tool_started":
            call = ToolCallView(call_id=event["call_id"], name=event["name"], args=event["args"])
            calls[call.call_id] = call
            turn.tool_calls.append(call)
        elif kind in ("tool_finished", "tool_failed"):
            call = calls.get(event["call_id"]) or ToolCallView(event["call_id"], event["name"], {})
            call.state = "complete" if kind == "tool_finished" else "error"
            call.summary = event.get("summary") or event.get("message", "")
            call.duration_ms = event.get("duration_ms")
            call.image_refs = [(a["caption"] or a["name"], a["sha256"])
                               for a in event.get("artifacts", []) if a["mime_type"] == "image/png"]
        elif kind == "assistant_text":
            turn.texts.append(event["text"])
        elif kind == "error":
            turn.errors.append(event["message"])
            turn.offline_offer = bool(event.get("offline_available"))
        elif kind == "turn_finished":
            turn.finished, turn.usage = True, event["usage"]
    for turn in turns:
        _close_interrupted(turn)
    drawn = turns if images_for_last is None else turns[max(0, len(turns) - images_for_last):]
    _load_images(store, session_id, drawn)
    return turns


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
    """Change frame or window of the open study; an error sentence, or None."""
    from agent.tool_calls import execute

    args = {k: v for k, v in (("frame", frame), ("window", window)) if v is not None}
    outcome = execute(conversation.ctx, "load_study", args)
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

    outcome = execute(conversation.ctx, tool, args)
    conversation.save()
    if conversation.recorder is not None and outcome.ok:
        conversation.recorder.audit("second_read", {"tool": tool, "args": args})
    return None if outcome.ok else outcome.error


def second_read_summary(conversation: Conversation, *, append_to_report: bool, name: str) -> tuple[str, list[tuple[str, bytes]]]:
    """The concordance summary in words (and its disagreement crops); optionally as an addendum."""
    from agent.tool_calls import execute

    outcome = execute(conversation.ctx, "second_read_summary", {"append_to_report": append_to_report,
                                                                  "author_name": name})
    conversation.save()
    if not outcome.ok:
        return outcome.error or "The summary could not be made.", []
    return outcome.output["text"], [(a.caption, a.data) for a in outcome.artifacts if a.mime_type == "image/png"]


def findings_table(conversation: Conversation) -> list[dict[str, Any]]:
    """The open study's findings, strongest first, as rows the chat's finding ids refer to."""
    study_id = conversation.ctx.current_study_id
    if study_id is None:
        return []
    rows = []
    for finding in sorted(conversation.ctx.study_findings(study_id), key=lambda f: -f.confidence):
        size = (f"{finding.size_mm[0]:.1f} × {finding.size_mm[1]:.1f} mm" if finding.size_mm else
                f"{finding.size_px[0]:.0f} × {finding.size_px[1]:.0f} px" if finding.size_px else "—")
        rows.append({"id": finding.id, "finding": finding.label, "slice": finding.frame + 1, "size": size,
                     "confidence": round(finding.confidence, 2), "source": finding.source,
                     "verification": finding.verification.status if finding.verification else "—"})
    return rows


def follow_theme(conversation: Conversation, theme: str | None) -> None:
    """Figures the tools draw from now on match the page: ``dark`` or (anything else) light."""
    conversation.ctx.figure_theme = "dark" if theme == "dark" else "light"
