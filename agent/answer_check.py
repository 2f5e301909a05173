"""A model's answer is checked for wording that reads as a normal study before anyone sees it.

A model's silence is not a normal study: the offline detector misses lesions on some kinds of
image (how often is measured, ``tools.detection.performance``), and a model proposing nothing
proves no more. So whatever the backend, the sentences of an answer that read as a normal result
(``tools.normal_wording``) are removed before it is recorded or shown, and Loupe's own statement
of what a search of the open frame is worth takes their place.
"""

from __future__ import annotations

from agent.events import AssistantText
from prompts import load_table
from tools.context import ToolContext
from tools.detect_anomalies import study_assessment
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.errors import LoupeError
from tools.normal_wording import without_normal_wording


def checked(event: AssistantText, ctx: ToolContext) -> AssistantText:
    """``event`` as it may be shown: itself when honest, else corrected, with ``corrected``
    listing the phrases removed."""
    kept, phrases = without_normal_wording(event.text)
    if not phrases:
        return event
    text = f"{kept}\n\n{_wording()['shown']} {honest_statement(ctx)}".strip()
    return AssistantText(text=text, corrected=phrases)


def honest_statement(ctx: ToolContext) -> str:
    """What a search of the open frame by the offline detector is worth, in one or two sentences."""
    if ctx.current_study_id is None:
        return _wording()["unmeasured"]
    view = ctx.view()
    # A finding the tools already put over the threshold on this frame must not be denied.
    anomaly = any(f.study_id == view.study.id and f.frame == view.frame and f.source != "clinician"
                  and f.confidence >= ANOMALY_THRESHOLD for f in ctx.findings.values())
    try:
        return study_assessment(ctx, view.study, view.frame, anomaly).reason
    except LoupeError:  # a frame the detector cannot analyse: the general statement stands
        return _wording()["unmeasured"]


def note_for_model(phrases: list[str]) -> str:
    """What the model is told after its answer was corrected, with the phrases removed."""
    return _wording()["to_model"].format(phrases=", ".join(f'"{p}"' for p in phrases))


def _wording() -> dict[str, str]:
    return load_table("answer_check.toml")
