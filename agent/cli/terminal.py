"""A conversation about a study in the terminal, for ``loupe ask`` and ``loupe chat``.

Events are printed as they arrive (tool calls on stderr, answers on stdout); images the tools
render are saved to a folder and their paths printed. An answer Loupe corrected (wording that read
as a normal study, ``agent.answer_check``) is printed again, corrected, after its stream.
``ask --json`` prints one JSON object (``answer`` as corrected):
``{"answer", "tool_calls": [{"name", "args", "ok", "duration_ms"}], "findings", "usage", ...}``.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agent.analysis import finding_json
from agent.cli.parsing import note_assumed_modality
from agent.conversation import Backend, Conversation
from agent.events import (
    AssistantText,
    Event,
    ToolFailed,
    ToolFinished,
    ToolStarted,
    TurnError,
    TurnFinished,
    TurnStarted,
)
from agent.models.factory import make_backend
from agent.settings import LoupeSettings
from agent.store.database import SessionNotFoundError, Store
from agent.store.files import write_atomically


@dataclass
class TurnRecord:
    """What one turn produced, collected from its events."""

    answer: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    started_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: TurnError | None = None
    finished: TurnFinished | None = None


class TerminalPrinter:
    """Prints events for a person; saves images under ``image_dir`` when given."""

    def __init__(self, out: TextIO, log: TextIO, image_dir: Path | None):
        self.out, self.log, self.image_dir = out, log, image_dir

    turn_id = 0
    streaming = False

    def __call__(self, event: Event, record: TurnRecord) -> None:
        if event.kind == "assistant_delta":  # print the answer as it is written
            print(event.text, end="", file=self.out, flush=True)
            self.streaming = True
        elif isinstance(event, AssistantText) and self.streaming:
            print(file=self.out)  # the whole text was already printed piece by piece
            self.streaming = False
            if event.corrected:  # what streamed read as a normal study: the corrected text stands
                print(f"Loupe corrected this answer:\n{event.text}", file=self.out)
        elif isinstance(event, TurnStarted):
            self.turn_id = event.turn_id
        elif isinstance(event, ToolStarted):
            print(f"  … {event.name} {json.dumps(event.args, ensure_ascii=False)}", file=self.log)
        elif isinstance(event, ToolFinished):
            print(f"  ✓ {event.name}: {event.summary} ({event.duration_ms:.0f} ms)", file=self.log)
            for path in self._save(event, record):
                print(f"    image: {path}", file=self.log)
        elif isinstance(event, ToolFailed):
            print(f"  ✗ {event.name}: {event.message}", file=self.log)
        elif isinstance(event, AssistantText):
            print(event.text, file=self.out)
        elif isinstance(event, TurnError):
            print(f"error: {event.message}", file=self.log)

    def _save(self, event: ToolFinished, record: TurnRecord) -> list[str]:
        if self.image_dir is None:
            return []
        saved = []
        self.image_dir.mkdir(parents=True, exist_ok=True)
        for artifact in event.artifacts:
            target = self.image_dir / f"turn{self.turn_id}-{len(record.images) + 1:02d}-{artifact.name}"
            write_atomically(target, artifact.data)
            record.images.append(str(target))
            saved.append(str(target))
        return saved


def run_turn(conversation: Conversation, message: str, backend: Backend,
             on_event: Callable[[Event, TurnRecord], None] | None = None) -> TurnRecord:
    """Run one turn, collecting its record and passing each event to ``on_event``."""
    record = TurnRecord()
    for event in conversation.ask(message, backend):
        _collect(event, record)
        if on_event is not None:
            on_event(event, record)
    return record


def _collect(event: Event, record: TurnRecord) -> None:
    if isinstance(event, ToolStarted):
        record.started_args[event.call_id] = event.args
    elif isinstance(event, ToolFinished | ToolFailed):
        record.tool_calls.append({"name": event.name, "args": record.started_args.get(event.call_id, {}),
                                  "ok": isinstance(event, ToolFinished), "duration_ms": event.duration_ms})
    elif isinstance(event, AssistantText):
        record.answer.append(event.text)
    elif isinstance(event, TurnError):
        record.error = event
    elif isinstance(event, TurnFinished):
        record.finished = event


def turn_json(conversation: Conversation, record: TurnRecord, backend: Backend) -> dict[str, Any]:
    findings = sorted(conversation.ctx.findings.values(), key=lambda f: -f.confidence)
    return {
        "answer": "\n".join(record.answer),
        "tool_calls": record.tool_calls,
        "findings": [finding_json(f) for f in findings],
        "usage": record.finished.usage.model_dump() if record.finished else {},
        "wall_ms": record.finished.wall_ms if record.finished else None,
        "backend": backend.name,
        "images": record.images,
        "error": None if record.error is None else record.error.message,
        "session_id": conversation.session_id,
    }


def open_conversation(settings: LoupeSettings, study: Path, *, modality: str | None,
                      session_id: str | None) -> Conversation:
    """The stored session ``session_id`` (created if new) with ``study`` open, or a new session."""
    store = Store.for_data_dir(settings.data_dir, settings.db_url)
    if session_id is not None and store.exists(session_id, settings.user):
        conversation = Conversation.resume(settings, store, session_id, settings.user)
        conversation.open_study(study, modality=modality)
    elif session_id is not None and store.taken(session_id):
        raise SessionNotFoundError(f"There is no session '{session_id}' for you; give another id, or none for a "
                                   "new session.")
    else:
        conversation = Conversation.start(settings, study, modality=modality, store=store, owner=settings.user,
                                          session_id=session_id, title=f"{modality or 'imaging'} session")
    note_assumed_modality(conversation.ctx.view().study.safe.modality_assumed())
    return conversation


def ask(settings: LoupeSettings, study: Path, message: str, *, backend_name: str | None, as_json: bool,
        modality: str | None, image_dir: Path | None, offline_fallback: bool, confirm_images: bool = False,
        session_id: str | None = None) -> int:
    """``loupe ask``: one turn; returns the exit code (2 when the turn failed)."""
    backend = make_backend(settings, backend_name)
    conversation = open_conversation(settings, study, modality=modality, session_id=session_id)
    if not as_json:
        print(f"session: {conversation.session_id}", file=sys.stderr)
    if confirm_images:
        conversation.confirm_no_burned_in_text()
    printer = None if as_json else TerminalPrinter(sys.stdout, sys.stderr, image_dir)
    if image_dir is not None and as_json:
        printer = TerminalPrinter(io.StringIO(), io.StringIO(), image_dir)  # only save the images
    record = run_turn(conversation, message, backend, printer)
    if record.error is not None and record.error.offline_available and offline_fallback:
        backend = make_backend(settings, "offline")
        record = run_turn(conversation, message, backend, printer)
    if as_json:
        print(json.dumps(turn_json(conversation, record, backend), indent=2, ensure_ascii=False))
    elif record.error is not None and record.error.offline_available:
        print("(Run again with --offline-fallback or --backend offline to answer with the offline planner.)",
              file=sys.stderr)
    return 2 if record.error is not None else 0


def chat(settings: LoupeSettings, study: Path, *, backend_name: str | None, modality: str | None,
         image_dir: Path, lines: Iterable[str] | None = None, session_id: str | None = None) -> int:
    """``loupe chat``: an interactive conversation until EOF or ``/quit``."""
    backend = make_backend(settings, backend_name)
    conversation = open_conversation(settings, study, modality=modality, session_id=session_id)
    printer = TerminalPrinter(sys.stdout, sys.stderr, image_dir)
    print(f"Loupe ({backend.name}), session {conversation.session_id}. Images are saved in {image_dir}. "
          "Type /quit to leave.", file=sys.stderr)
    _print_release(conversation)
    source = iter(lines) if lines is not None else _prompted_lines()
    for line in source:
        message = line.strip()
        if message in ("/quit", "/exit"):
            break
        if not message:
            continue
        if message == "/confirm":
            conversation.confirm_no_burned_in_text()
            _print_release(conversation)
            continue
        record = run_turn(conversation, message, backend, printer)
        if record.error is not None and record.error.offline_available and _confirm(source):
            run_turn(conversation, message, make_backend(settings, "offline"), printer)
    print(f"usage: {conversation.usage.model_dump()}", file=sys.stderr)
    return 0


def _print_release(conversation: Conversation) -> None:
    release = conversation.boundary.release(conversation.ctx.view().study)
    if release.status != "released":
        print(f"privacy: the image is {release.status} ({release.reason}); type /confirm once you have checked it.",
              file=sys.stderr)
    else:
        print(f"privacy: the image may be sent to the model ({release.reason}).", file=sys.stderr)


def _prompted_lines() -> Iterable[str]:
    while True:
        try:
            yield input("you> ")
        except EOFError:
            return


def _confirm(source: Iterable[str]) -> bool:
    print("Answer this turn with the offline planner instead? [y/N]", file=sys.stderr)
    answer = next(iter(source), "")
    return answer.strip().lower() in ("y", "yes")

