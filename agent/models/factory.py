"""Choosing the conversation backend: Gemini or an OpenAI-compatible server when configured (or
asked for), else offline.

Each model module is imported only when it is used, so offline use never loads an SDK.
"""

from __future__ import annotations

from agent.conversation import Backend
from agent.models.planner import OfflinePlanner
from agent.privacy.boundary import PrivacyBoundary
from agent.settings import LoupeSettings
from tools.context import VisionProposer


def make_backend(settings: LoupeSettings, name: str | None = None) -> Backend:
    """The backend ``name`` (``gemini`` / ``openai`` / ``offline``), or the settings' choice when
    omitted.

    Raises ModelUnavailableError when a model backend is asked for but not configured.
    """
    chosen = name or settings.backend_name
    if chosen == "gemini":
        from agent.models.gemini import GeminiBackend

        return GeminiBackend(settings)
    if chosen == "openai":
        from agent.models.openai_compatible import OpenAIBackend

        return OpenAIBackend(settings)
    return OfflinePlanner()


def make_vision_proposer(settings: LoupeSettings, boundary: PrivacyBoundary, name: str = "gemini") -> VisionProposer:
    """A model as a source of detection proposals: Gemini, or (``name="openai"``) the
    OpenAI-compatible server (ModelUnavailableError when not configured)."""
    if name == "openai":
        from agent.models.openai_compatible import OpenAICaller, OpenAIVisionProposer

        boundary.on_premises = settings.model_site == "on-premises"
        proposer = OpenAIVisionProposer(OpenAICaller(settings))
    else:
        from agent.models.gemini import GeminiCaller, GeminiVisionProposer

        boundary.on_premises = False
        proposer = GeminiVisionProposer(GeminiCaller(settings))
    proposer.boundary = boundary
    return proposer
