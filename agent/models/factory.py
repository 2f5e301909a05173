"""Choosing the conversation backend: Gemini when configured (or asked for), else offline.

The Gemini module is imported only when it is used, so offline use never loads the SDK.
"""

from __future__ import annotations

from agent.conversation import Backend
from agent.models.planner import OfflinePlanner
from agent.privacy.boundary import PrivacyBoundary
from agent.settings import LoupeSettings
from tools.context import VisionProposer


def make_backend(settings: LoupeSettings, name: str | None = None) -> Backend:
    """The backend ``name`` (``gemini`` / ``offline``), or the settings' choice when omitted.

    Raises ModelUnavailableError when Gemini is asked for but not configured.
    """
    if (name or settings.backend_name) == "gemini":
        from agent.models.gemini import GeminiBackend

        return GeminiBackend(settings)
    return OfflinePlanner()


def make_vision_proposer(settings: LoupeSettings, boundary: PrivacyBoundary) -> VisionProposer:
    """Gemini as a source of detection proposals (ModelUnavailableError when not configured)."""
    from agent.models.gemini import GeminiCaller, GeminiVisionProposer

    proposer = GeminiVisionProposer(GeminiCaller(settings))
    proposer.boundary = boundary
    return proposer
