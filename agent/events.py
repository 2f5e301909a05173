"""What a conversation turn emits, in order, for the UI, the command line and the store alike.

A turn yields ``TurnStarted``, then any mix of ``ToolStarted`` / ``ToolFinished`` /
``ToolFailed`` / ``AssistantText``, possibly a ``TurnError``, and always ends with
``TurnFinished`` (usage, model calls, wall time).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from tools.context import Artifact


class Usage(BaseModel):
    """Token accounting for one turn or a whole session."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    image_tokens: int = 0
    model_calls: int = 0

    def add(self, other: Usage) -> None:
        for name in Usage.model_fields:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class TurnStarted(BaseModel):
    kind: Literal["turn_started"] = "turn_started"
    turn_id: int
    backend: str
    message: str


class ToolStarted(BaseModel):
    kind: Literal["tool_started"] = "tool_started"
    call_id: str
    name: str
    args: dict[str, Any]


class ToolFinished(BaseModel):
    kind: Literal["tool_finished"] = "tool_finished"
    call_id: str
    name: str
    summary: str = Field(description="One line a clinician can read.")
    output: dict[str, Any]
    artifacts: list[Artifact] = Field(default_factory=list)
    duration_ms: float


class ToolFailed(BaseModel):
    kind: Literal["tool_failed"] = "tool_failed"
    call_id: str
    name: str
    args: dict[str, Any]
    message: str
    duration_ms: float


class AssistantText(BaseModel):
    kind: Literal["assistant_text"] = "assistant_text"
    text: str
    corrected: list[str] = Field(
        default_factory=list, description="Wording that read as a normal study, removed from the model's answer "
                                          "before it was shown; ``text`` then ends with what the search is worth "
                                          "(agent.answer_check).")


class AssistantTextDelta(BaseModel):
    """A piece of the answer as it streams in: shown live, not stored (``AssistantText`` with
    the whole text of the step follows)."""

    kind: Literal["assistant_delta"] = "assistant_delta"
    text: str


class TurnError(BaseModel):
    """The turn could not finish normally; ``message`` is one sentence for the clinician."""

    kind: Literal["error"] = "error"
    message: str
    reason: Literal["model_unavailable", "blocked", "malformed", "truncated", "step_limit", "other"]
    offline_available: bool = Field(default=False, description="The offline planner can answer this turn instead.")


class TurnFinished(BaseModel):
    kind: Literal["turn_finished"] = "turn_finished"
    turn_id: int
    usage: Usage
    wall_ms: float
    ok: bool


Event = (TurnStarted | ToolStarted | ToolFinished | ToolFailed | AssistantText | AssistantTextDelta | TurnError
         | TurnFinished)
