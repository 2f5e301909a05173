"""One clinician's conversation about a study: tool context, model history, usage, backends.

``Conversation.ask`` runs one turn on the configured backend and yields its events. The model
history is kept as JSON-able dicts in google-genai's own shape (thought signatures base64), so
it can be stored and restored losslessly without this module importing the SDK. Offline turns
are appended to it as plain text, so a later Gemini turn knows what was said.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.events import Event, TurnError, TurnFinished, TurnStarted, Usage
from agent.privacy import PrivacyBoundary
from agent.settings import LoupeSettings
from agent.tool_calls import ToolOutcome, execute
from tools.context import ToolContext
from tools.errors import LoupeError


@dataclass
class Turn:
    """One turn in flight: its number, the clinician's message and the usage it accrues."""

    id: int
    message: str
    usage: Usage = field(default_factory=Usage)


class Backend(Protocol):
    """A conversation engine: Gemini, or the offline planner."""

    name: str

    def run_turn(self, conversation: Conversation, turn: Turn) -> Iterator[Event]:
        """Yield the turn's events between ``TurnStarted`` and ``TurnFinished`` (which the
        conversation emits), adding model usage to ``turn.usage``."""
        ...


@dataclass
class Conversation:
    settings: LoupeSettings
    ctx: ToolContext
    boundary: PrivacyBoundary = field(default_factory=PrivacyBoundary)
    history: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    turns: int = 0
    #: (study id, frame, window) of the display image the model last saw, if any.
    sent_view: tuple | None = None

    @classmethod
    def start(cls, settings: LoupeSettings, study_path: Path | None = None, *, modality: str | None = None,
              vision=None) -> Conversation:
        """A new conversation, with ``study_path`` open when given (a LoupeError if it cannot be)."""
        boundary = PrivacyBoundary(share_age_sex=settings.share_age_sex)
        ctx = ToolContext(limits=settings.study_limits(), vision=vision, image_policy=boundary,
                          model_image_max_side=settings.model_image_max_side)
        conversation = cls(settings=settings, ctx=ctx, boundary=boundary)
        if study_path is not None:
            conversation.open_study(study_path, modality=modality)
        return conversation

    def open_study(self, path: Path, *, modality: str | None = None) -> ToolOutcome:
        """Open a study on the clinician's behalf; the model may then open files beside it only."""
        outcome = execute(self.ctx, "load_study", {"path": str(path), "modality": modality})
        if not outcome.ok:
            raise LoupeError(outcome.error or "The study could not be opened.")
        self.boundary.watch(self.ctx.view().study)
        folder = path.resolve() if path.is_dir() else path.resolve().parent
        self.ctx.allowed_roots = (*(self.ctx.allowed_roots or ()), folder)
        return outcome

    def current_view_key(self) -> tuple | None:
        """What the model would see now: study, frame, window and whether pixels may be sent."""
        if self.ctx.current_study_id is None:
            return None
        view = self.ctx.view()
        return (view.study.id, view.frame, view.window, self.boundary.release(view.study).status)

    def confirm_no_burned_in_text(self, study_id: str | None = None) -> None:
        """The clinician confirms the (current) study's images show no identifying text."""
        self.boundary.confirm(self.ctx.view(study_id).study.id)

    def ask(self, message: str, backend: Backend) -> Iterator[Event]:
        """Run one turn; always ends with ``TurnFinished``, whatever happens inside."""
        self.turns += 1
        turn = Turn(id=self.turns, message=message)
        started = time.perf_counter()
        ok = True
        yield TurnStarted(turn_id=turn.id, backend=backend.name, message=message)
        for event in backend.run_turn(self, turn):
            ok = ok and not isinstance(event, TurnError)
            yield event
        self.usage.add(turn.usage)
        yield TurnFinished(turn_id=turn.id, usage=turn.usage, ok=ok,
                           wall_ms=round((time.perf_counter() - started) * 1000, 1))

    def note_exchange(self, message: str, answer: str) -> None:
        """Record a turn answered without the model (offline), as plain text history."""
        self.history.append({"role": "user", "parts": [{"text": message}]})
        self.history.append({"role": "model", "parts": [{"text": answer}]})
