"""One-shot analysis of a study: load, detect, verify, fit, render — the ``loupe analyze`` path.

It drives the registered tools through ``agent.toolbox.run_tool`` exactly as the agent will,
so the command line exercises the same code as a conversation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.settings import LoupeSettings
from agent.store.files import write_atomically
from agent.toolbox import new_context, run_tool
from tools.context import Artifact, ToolContext
from tools.detect_anomalies import DetectAnomaliesOutput
from tools.findings import Finding
from tools.report.location import location_in_words, table_position_mm
from tools.study import Study

FIGURE_LAYERS = ["annotated", "heatmap", "comparison"]
PER_FINDING_LAYERS = ["crops", "statistics"]


class AnalysisResult(BaseModel):
    """What ``loupe analyze`` reports (the JSON printed with --json and saved as findings.json)."""

    study_id: str
    modality: str | None
    #: ``{"modality", "source", "reason"}``: see ``loupe info``'s key of the same name.
    modality_assumed: dict[str, Any]
    frame: int
    anomaly_found: bool
    threshold: float
    summary: str
    #: "anomaly", "no_anomaly_found" or "inconclusive", and why (see ``detect_anomalies``).
    assessment: str
    assessment_reason: str
    #: What a flagged finding's confidence means on this kind of image, when measured.
    confidence_meaning: str | None
    #: The kind of image as the detector's performance table names it (None: not one it is built for),
    #: and the table's figures for it.
    image_kind: str | None
    performance: dict[str, Any] | None
    findings: list[dict[str, Any]]
    files: list[str]


def finding_json(finding: Finding, study: Study | None = None) -> dict[str, Any]:
    """A finding in the ``loupe analyze --json`` contract; with its ``study``, also its 1-based
    ``slice``, ``location`` in words and ``table_position_mm`` (None when the header does not say)."""
    verification = finding.verification
    where: dict[str, Any] = {}
    if study is not None:
        position = table_position_mm(study, finding.frame) if study.frame_count > 1 else None
        where = {"slice": finding.frame + 1, "location": location_in_words(study, finding),
                 "table_position_mm": None if position is None else round(position, 2)}
    return {
        "id": finding.id,
        "label": finding.label,
        "frame": finding.frame,
        **where,
        "center_px": [round(v, 2) for v in finding.center_px],
        "bbox_px": [round(v, 2) for v in finding.bbox_px.as_list()],
        "confidence": finding.confidence,
        "source": finding.source,
        "verification": None if verification is None else verification.model_dump(),
        "gaussian": None if finding.gaussian is None else finding.gaussian.model_dump(),
        "size_mm": None if finding.size_mm is None else [round(v, 2) for v in finding.size_mm],
        "size_px": None if finding.size_px is None else [round(v, 2) for v in finding.size_px],
        #: "segmentation" (long and short axis of the segmented lesion), "gaussian fwhm" or "clinician".
        "size_method": finding.size_method,
        "size_axes": None if finding.size_axes is None else finding.size_axes.model_dump(mode="json"),
    }


def render_layers(ctx: ToolContext, findings: list[Finding], frame: int, threshold: float) -> list[Artifact]:
    """All figure layers for every finding on ``frame``; zoomed crops and statistics panels only
    for the findings worth a closer look (those at the anomaly threshold, else the top one)."""
    artifacts = run_tool(ctx, "render_overlay", {"layers": FIGURE_LAYERS}).artifacts
    ranked = [f for f in findings if f.frame == frame]
    closer = [f.id for f in ranked if f.confidence >= threshold] or [f.id for f in ranked[:1]]
    if closer:
        artifacts += run_tool(ctx, "render_overlay", {"layers": PER_FINDING_LAYERS, "finding_ids": closer}).artifacts
    return artifacts


def measured_ids(detected: DetectAnomaliesOutput, frame: int) -> list[str]:
    """What a reader will look at closely: every finding at the threshold, and the top three."""
    return [f.id for rank, f in enumerate(detected.findings)
            if f.frame == frame and (rank < 3 or f.confidence >= detected.threshold)]


def analyse_current(ctx: ToolContext) -> tuple[DetectAnomaliesOutput, list[Artifact]]:
    """Detect, verify, fit and render on the current study (every slice of a CT/MR series).

    The view moves to the slice of the strongest finding, so the figures show it. Gaussian fits
    (sizes in mm) are made for the findings at the anomaly threshold and the top three; the
    weaker candidates keep their detector box.
    """
    view = ctx.view()
    summary = view.study.safe
    volume = summary.frames > 1 and summary.modality in ("CT", "MR")
    detected = run_tool(ctx, "detect_anomalies", {"all_frames": volume}).output
    if detected.findings:
        view.frame = detected.findings[0].frame
    measured = measured_ids(detected, view.frame)
    if measured:
        run_tool(ctx, "fit_gaussian", {"finding_ids": measured})
    return detected, render_layers(ctx, detected.findings, view.frame, detected.threshold)


def _context(settings: LoupeSettings, backend: str) -> ToolContext:
    """A tool context; with a model backend (Gemini, or an OpenAI-compatible server), the model
    proposes locations too, behind the privacy boundary (images at risk of burned-in text are
    not sent unless the model is on the premises; the classical detector still runs)."""
    ctx = new_context(settings)
    if backend in ("gemini", "openai"):
        from agent.models.factory import make_vision_proposer
        from agent.privacy.boundary import PrivacyBoundary

        boundary = PrivacyBoundary(share_age_sex=settings.share_age_sex)
        ctx.vision = make_vision_proposer(settings, boundary, backend)
        ctx.image_policy = boundary
        ctx.model_image_max_side = settings.model_image_max_side
    return ctx


def _write(out_dir: Path, artifact: Artifact, name: str | None = None) -> str:
    target = out_dir / (name or artifact.name)
    write_atomically(target, artifact.data)
    return target.name


def analyze(source: str | list[str], out_dir: Path, *, settings: LoupeSettings, backend: str = "offline",
            modality: str | None = None, confirm_images: bool = False) -> AnalysisResult:
    """Run the whole pipeline on a study and write overlay.png, the other layers and findings.json.

    ``confirm_images``: the clinician checked that the image shows no identifying text, so the
    vision model (backend gemini or openai) may see pixels the privacy boundary would otherwise hold.
    """
    ctx = _context(settings, backend)
    try:
        loaded = run_tool(ctx, "load_study", {"path": source, "modality": modality}).output
        if confirm_images and ctx.image_policy is not None:
            ctx.image_policy.confirm(loaded.study_id)
        detected, artifacts = analyse_current(ctx)
        view = ctx.view()
        findings = sorted(ctx.study_findings(loaded.study_id), key=lambda f: -f.confidence)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for artifact in artifacts:
            files.append(_write(out_dir, artifact))
            if artifact.name == "overlay-annotated.png":
                files.append(_write(out_dir, artifact, "overlay.png"))
        result = AnalysisResult(
            study_id=loaded.study_id, modality=loaded.summary.modality, frame=view.frame,
            modality_assumed=loaded.summary.modality_assumed(),
            anomaly_found=detected.anomaly_found, threshold=detected.threshold, summary=detected.summary,
            assessment=detected.assessment, assessment_reason=detected.assessment_reason,
            confidence_meaning=detected.confidence_meaning, image_kind=detected.image_kind,
            performance=None if detected.performance is None else detected.performance.model_dump(mode="json"),
            findings=[finding_json(f, view.study) for f in findings], files=sorted(files + ["findings.json"]),
        )
        write_atomically(out_dir / "findings.json", json.dumps(result.model_dump(), indent=2).encode())
        return result
    finally:
        ctx.close()
