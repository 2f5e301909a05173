"""One-shot analysis of a study: load, detect, verify, fit, render — the ``loupe analyze`` path.

It drives the registered tools through ``agent.toolbox.run_tool`` exactly as the agent will,
so the command line exercises the same code as a conversation.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, Protocol

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


class FindingLike(Protocol):
    """A finding as a tool lists it or as the session holds it."""

    id: str
    frame: int
    confidence: float


#: One tool call of an analysis: the tool's name and its arguments.
ToolRequest = tuple[str, dict[str, Any]]


def measured_ids(findings: Sequence[FindingLike], frame: int, threshold: float) -> list[str]:
    """What a reader will look at closely on ``frame``: every finding at the threshold, and the
    top three (``findings`` strongest first)."""
    return [f.id for rank, f in enumerate(findings) if f.frame == frame and (rank < 3 or f.confidence >= threshold)]


def closer_ids(findings: Sequence[FindingLike], frame: int, threshold: float) -> list[str]:
    """The findings on ``frame`` that get zoomed crops and statistics panels: those at the anomaly
    threshold, else the strongest one."""
    ranked = [f for f in findings if f.frame == frame]
    return [f.id for f in ranked if f.confidence >= threshold] or [f.id for f in ranked[:1]]


def analysis_steps(ctx: ToolContext) -> Generator[ToolRequest, Any, DetectAnomaliesOutput]:
    """A whole analysis of the current study as tool calls, for a driver to run and send each
    call's output back: ``analyse_current`` here, the pre-read's recorded turn (``agent.preread.job``).

    Every slice of a CT/MR series is searched; the view moves to the slice of the strongest
    finding, so the figures show it; with a vision model attached, the model is asked about
    that slice (one slice: it is not sent a whole series); the findings at the anomaly
    threshold and the top three are fitted (sizes in mm), the weaker candidates keep their
    detector box; then the figures. Returns the search's output.
    """
    view = ctx.view()
    summary = view.study.safe
    volume = summary.frames > 1 and summary.modality in ("CT", "MR")
    vision_after = volume and ctx.vision is not None
    search = {"all_frames": volume} | ({"use_vision_model": False} if vision_after else {})
    detected = DetectAnomaliesOutput.model_validate((yield ("detect_anomalies", search)))
    if detected.findings and detected.findings[0].frame != view.frame:
        yield ("load_study", {"frame": detected.findings[0].frame})
    frame = ctx.view().frame
    if vision_after:
        yield ("detect_anomalies", {"frame": frame})
    ranked = sorted(ctx.study_findings(view.study.id), key=lambda f: -f.confidence)
    measured = measured_ids(ranked, frame, detected.threshold)
    if measured:
        yield ("fit_gaussian", {"finding_ids": measured})
    yield ("render_overlay", {"layers": FIGURE_LAYERS})
    closer = closer_ids(ranked, frame, detected.threshold)
    if closer:
        yield ("render_overlay", {"layers": PER_FINDING_LAYERS, "finding_ids": closer})
    return detected


def analyse_current(ctx: ToolContext) -> tuple[DetectAnomaliesOutput, list[Artifact]]:
    """Run ``analysis_steps`` on the current study; the search's output and the figures."""
    steps = analysis_steps(ctx)
    artifacts: list[Artifact] = []
    request = next(steps)
    while True:
        result = run_tool(ctx, *request)
        if request[0] == "render_overlay":
            artifacts += result.artifacts
        try:
            request = steps.send(result.output)
        except StopIteration as finished:
            return finished.value, artifacts


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


def compare_studies(current: str | list[str], prior: str, out_dir: Path, *, settings: LoupeSettings,
                    modality: str | None = None, interval_days: int | None = None) -> dict[str, Any]:
    """``loupe compare``: the current study analysed as ``analyze`` does, then compared with
    ``prior`` (``compare_with_prior``); writes comparison.json, the comparison's figures and the
    current study's overlay to ``out_dir``. The JSON (returned) has the tool's output; no date."""
    ctx = _context(settings, "offline")
    try:
        run_tool(ctx, "load_study", {"path": current, "modality": modality})
        _, artifacts = analyse_current(ctx)
        compared = run_tool(ctx, "compare_with_prior", {"prior": prior, "interval_days": interval_days})
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [_write(out_dir, a) for a in [*artifacts, *compared.artifacts] if a.name.startswith(("overlay", "comparison"))]
        result = {**compared.output.model_dump(mode="json"), "files": sorted([*files, "comparison.json"])}
        write_atomically(out_dir / "comparison.json", json.dumps(result, indent=2).encode())
        return result
    finally:
        ctx.close()
