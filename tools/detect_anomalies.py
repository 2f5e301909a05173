"""detect_anomalies: find candidate lesions with the classical detector and, when available, a
vision model; verify the model's proposals and merge both into findings F1, F2, ...

The vision model (``ctx.vision``) sees the display image downscaled so that its long side is at
most ``ctx.model_image_max_side``; its boxes come back in Gemini's ``box_2d`` convention
relative to that image and are converted with ``tools.coordinates``. Repeated samples of the
same lesion are grouped; each group is verified once against the pixels.

A finding keeps its name within a session: searched again, a finding whose new centre lies within
an earlier automatic finding's box (or radius) on the same study and frame keeps that id and takes
the new measurements; one not found again is dropped and its id retired (``ctx.retired_findings``),
never given to another finding. The clinician's findings always stay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from pydantic import BaseModel, Field

from tools.context import ToolContext, ToolResult, VisionProposal
from tools.coordinates import BoxPx, box_2d_to_px
from tools.detection.detector import (
    REFINED_DETECTIONS,
    Detection,
    FrameAnalysis,
    detect_volume,
    frame_analysis,
    label_for,
    recentred,
    search_slices,
)
from tools.detection.performance import (Assessment, AssessmentResult, ImageKind, KindPerformance, Measured,
                                         assess, image_kind, silent_model)
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.detection.working import COMPETENCE
from tools.errors import ImageWithheldError, InvalidCoordinatesError, LoupeError, ModelUnavailableError
from tools.findings import Finding, Verification
from tools.render.model_image import model_image
from tools.study import Study
from tools.verify_coordinates import VerifiedLocation, verify_location


class DetectAnomaliesInput(BaseModel):
    """Arguments of ``detect_anomalies``."""

    study_id: str | None = Field(default=None, description="Which open study; default the current one.")
    frame: int | None = Field(default=None, ge=0, description="Frame to search; default the one shown.")
    all_frames: bool = Field(
        default=False, description="On a CT/MR series or multi-frame study, search every slice and report each finding's slice."
    )
    max_findings: int = Field(default=5, ge=1, le=20, description="Most findings to report.")
    use_vision_model: bool = Field(default=True, description="Also ask the vision model for proposals, if one is configured.")
    samples: int = Field(default=3, ge=1, le=5, description="How many times to ask the vision model (consistency check).")


class DetectAnomaliesOutput(BaseModel):
    study_id: str
    frames_searched: list[int]
    findings: list[Finding]
    anomaly_found: bool = Field(description="True when any finding reaches the anomaly threshold.")
    threshold: float
    summary: str
    vision_model: str | None = Field(description="Name of the vision model consulted, if any.")
    outside_competence: str | None = Field(
        default=None, description="What the study is, when the offline detector is not built for it: its "
                                  "findings are then regions for review, never anomalies.")
    assessment: AssessmentResult = Field(
        description="'anomaly' (a finding reached the threshold), 'no_anomaly_found' (nothing did, on a kind of "
                    "image where the detector's measured sensitivity supports a negative) or 'inconclusive' "
                    "(nothing did, but a negative here says too little). Never a normal study.")
    assessment_reason: str = Field(description="Why, with the detector's measured figures for this kind of image.")
    confidence_meaning: str | None = Field(
        default=None, description="What a flagged finding's confidence means on this kind of image (the "
                                  "precision of a flagged top finding in Loupe's evaluation); quote it with confidences.")
    image_kind: str | None = Field(default=None, description="The kind of image, as the detector's table names it.")
    performance: KindPerformance | None = Field(
        default=None, description="The offline detector's measured figures for this kind of image, if measured.")


@dataclass(frozen=True)
class _Proposal:
    """A group of vision-model samples for one lesion, in native pixels."""

    box: BoxPx
    label: str
    centres: tuple[tuple[float, float], ...]


def group_proposals(boxes: Sequence[tuple[BoxPx, str]]) -> list[_Proposal]:
    """Group boxes whose centres fall inside each other's box (samples of the same lesion)."""
    groups: list[list[tuple[BoxPx, str]]] = []
    for box, label in boxes:
        for group in groups:
            anchor = group[0][0]
            if anchor.contains(*box.center) or box.contains(*anchor.center):
                group.append((box, label))
                break
        else:
            groups.append([(box, label)])
    proposals = []
    for group in groups:
        corners = np.array([b.as_list() for b, _ in group])
        x0, y0, x1, y1 = np.median(corners, axis=0)
        proposals.append(_Proposal(BoxPx(x0=x0, y0=y0, x1=max(x1, x0), y1=max(y1, y0)),
                                   group[0][1], tuple(b.center for b, _ in group)))
    return proposals


def _vision_proposals(ctx: ToolContext, study: Study, frame: int, window, samples: int) -> list[_Proposal]:
    image = model_image(study, frame, window, ctx.model_image_max_side, ctx.image_policy)
    raw: list[VisionProposal] = ctx.vision.propose(image.png, modality=study.modality, samples=samples)
    sent = image.sent
    boxes = []
    for proposal in raw:
        try:
            boxes.append((box_2d_to_px(proposal.box_2d, sent), proposal.label))
        except InvalidCoordinatesError:
            continue  # a malformed or hallucinated box: ignore it, the rest still count
    return group_proposals(boxes)


@dataclass(frozen=True)
class _Draft:
    """A finding before it gets its id (ids are given only to what is kept)."""

    detection: Detection
    source: str
    verification: Verification
    sample_centres: tuple[tuple[float, float], ...] = ()


def _verified_proposal(analysis: FrameAnalysis, study: Study, frame: int, box: BoxPx,
                       detections: Sequence[Detection], used: set[int],
                       sample_centres: Sequence[tuple[float, float]] = ()) -> tuple[VerifiedLocation, list[int]] | None:
    """A proposed box verified against the pixels, with the detector candidates inside it (also
    marked in ``used``, so that the same lesion is not listed twice); None when rejected."""
    result = verify_location(analysis.work, box, spacing_mm=study.pixel_spacing_mm(frame),
                             candidates=analysis.detections, sample_centres=sample_centres, space=analysis.space)
    if result.verification.status == "rejected":
        return None
    agreeing = [i for i, d in enumerate(detections) if result.box.contains(d.x, d.y) and d.frame == frame]
    used.update(agreeing)
    return result, agreeing


def _model_drafts(ctx: ToolContext, study: Study, frame: int, limit: int, detections: Sequence[Detection],
                  used: set[int]) -> list[_Draft]:
    """The trained detector's boxes, verified against the pixels like any proposal; rejected ones
    are dropped, and classical candidates inside a kept box are marked in ``used``."""
    analysis = frame_analysis(ctx, study, frame)
    drafts = []
    for found in ctx.detector.detect(study, frame, limit):
        verified = _verified_proposal(analysis, study, frame, found.box, detections, used)
        if verified is None:
            continue
        result, _ = verified
        anchor = replace(found, x=result.center[0], y=result.center[1], box=result.box,
                         radius_px=max(result.box.width, result.box.height) / 2)
        drafts.append(_Draft(anchor, "model", result.verification))
    return drafts


def _vision_drafts(ctx: ToolContext, study: Study, frame: int, window, samples: int,
                   detections: Sequence[Detection], used: set[int]) -> list[_Draft]:
    """The vision model's proposals, verified against the pixels; rejected ones are dropped.

    Detector candidates inside a verified proposal are marked in ``used`` so that the same
    lesion is not listed twice.
    """
    analysis = frame_analysis(ctx, study, frame)
    drafts = []
    for proposal in _vision_proposals(ctx, study, frame, window, samples):
        verified = _verified_proposal(analysis, study, frame, proposal.box, detections, used, proposal.centres)
        if verified is None:
            continue
        result, agreeing = verified
        agreement = max((detections[i].confidence for i in agreeing), default=0.0)
        # A proposal the pixels support is at least as likely as the evidence and the detector say.
        confidence = max(result.verification.evidence or 0.0, agreement, 0.5 if agreeing else 0.35)
        anchor = Detection(frame=frame, x=result.center[0], y=result.center[1], box=result.box,
                           radius_px=max(result.box.width, result.box.height) / 2, score=confidence,
                           confidence=confidence, label=proposal.label or label_for(study.modality, analysis.work.organ))
        drafts.append(_Draft(anchor, "vlm", result.verification, proposal.centres))
    return drafts


def _to_findings(ctx: ToolContext, study: Study, drafts: Sequence[_Draft]) -> list[Finding]:
    """The kept drafts as findings: one found again at the same place on the same frame keeps its
    id (and takes the new measurements), the others get new ids, never reused."""
    earlier = [f for f in ctx.study_findings(study.id) if f.source != "clinician"]
    claimed: set[str] = set()
    findings = []
    for draft in drafts:
        detection = draft.detection
        same = _same_place(earlier, detection, claimed)
        if same is not None:
            claimed.add(same.id)
        findings.append(Finding(
            id=ctx.next_finding_id() if same is None else same.id, study_id=study.id, label=detection.label,
            frame=detection.frame, center_px=(round(detection.x, 2), round(detection.y, 2)), bbox_px=detection.box,
            confidence=round(min(max(detection.confidence, 0.0), 1.0), 4), source=draft.source,
            verification=draft.verification))
    return findings


def _same_place(earlier: Sequence[Finding], detection: Detection, claimed: set[str]) -> Finding | None:
    """The earlier finding this detection finds again: on the same frame, the new centre inside its
    box or within its radius (the nearest, when several qualify); each id is kept at most once."""
    def reach(finding: Finding) -> float:
        return max(finding.bbox_px.width, finding.bbox_px.height) / 2

    candidates = [f for f in earlier if f.frame == detection.frame and f.id not in claimed
                  and (f.bbox_px.contains(detection.x, detection.y)
                       or math.dist(f.center_px, (detection.x, detection.y)) <= reach(f))]
    return min(candidates, key=lambda f: math.dist(f.center_px, (detection.x, detection.y)), default=None)


def detect_anomalies(ctx: ToolContext, args: DetectAnomaliesInput) -> ToolResult:
    """Find focal anomalies on the current frame (or every slice) and list them as findings.

    Uses the offline classical detector, plus the vision model's proposals when available
    (verified against the pixels). When nothing reaches the threshold, ``assessment`` says what
    that is worth on this kind of image: never a normal study.
    """
    view = ctx.view(args.study_id)
    study = view.study
    frame = study.check_frame(view.frame if args.frame is None else args.frame)
    notes: tuple[str, ...] = ()
    analysis = frame_analysis(ctx, study, frame)
    if args.all_frames and study.frame_count > 1:
        detections = detect_volume(study, limit=args.max_findings, analysed={frame: analysis},
                                   search=ctx.slice_search or search_slices)
        searched = list(range(study.frame_count))
    else:
        detections, notes = _listed_detections(analysis, args.max_findings), analysis.work.notes
        searched = [frame]
    outside = analysis.work.outside
    used: set[int] = set()
    drafts: list[_Draft] = []
    vision_name, vision_note = None, ""
    if args.use_vision_model and ctx.vision is not None:
        try:
            drafts += _vision_drafts(ctx, study, frame, view.window, args.samples, detections, used)
            vision_name = ctx.vision.name
        except (ModelUnavailableError, ImageWithheldError) as error:
            # The classical detector still answers; say plainly that the model did not help.
            vision_note = f" The vision model was not consulted: {error}"
    if ctx.detector is not None and searched == [frame]:
        try:
            drafts += _model_drafts(ctx, study, frame, max(args.max_findings, 10), detections, used)
        except ModelUnavailableError as error:  # the classical detector still answers
            vision_note += f" The detector model was not used: {error}"
    drafts += [_Draft(d, "classical", _classical_verification(d, notes))
               for i, d in enumerate(detections) if i not in used]
    drafts.sort(key=lambda draft: -draft.detection.confidence)
    kept = drafts[: args.max_findings]
    findings = _to_findings(ctx, study, kept)
    _replace_findings(ctx, study.id, searched, findings)
    for finding, draft in zip(findings, kept, strict=True):
        if len(draft.sample_centres) >= 2:
            ctx.finding_samples[finding.id] = draft.sample_centres
    anomaly = any(f.confidence >= ANOMALY_THRESHOLD for f in findings)
    kind = image_kind(analysis.work)
    consulted, table_note = _consulted(ctx, kind, vision_name, model_used=searched == [frame])
    assessment = assess(anomaly, kind, consulted)
    if anomaly:
        summary = f"{_describe(findings)} What a confidence means here: {assessment.confidence_meaning}."
    elif outside is not None:
        summary = (f"Outside what the offline detector judges: it is built for {COMPETENCE}, and this is "
                   f"{outside}. The strongest regions are listed for review, not as anomalies. {assessment.reason}")
    else:
        summary = f"{assessment.reason} The strongest candidates are listed for review."
    if not anomaly and vision_name is not None:
        summary += " " + silent_model(vision_name)
    output = DetectAnomaliesOutput(study_id=study.id, frames_searched=searched, findings=findings,
                                   anomaly_found=anomaly, threshold=ANOMALY_THRESHOLD,
                                   summary=summary + vision_note + table_note, vision_model=vision_name,
                                   outside_competence=outside, assessment=assessment.result,
                                   assessment_reason=assessment.reason,
                                   confidence_meaning=assessment.confidence_meaning,
                                   image_kind=None if kind is None else kind.key,
                                   performance=ctx.performance.for_kind(kind))
    return ToolResult(output=output)


#: The classical detector, in the words of the assessments.
OFFLINE_DETECTOR = "the offline detector"


def study_assessment(ctx: ToolContext, study: Study, frame: int, anomaly: bool = False) -> Assessment:
    """What a search of ``frame`` by the offline detector is worth (for a report or an answer that
    has to say so without running the search again)."""
    kind = image_kind(frame_analysis(ctx, study, frame).work)
    return assess(anomaly, kind, [Measured(OFFLINE_DETECTOR, ctx.performance.for_kind(kind))])


def _consulted(ctx: ToolContext, kind: ImageKind | None, vision_name: str | None,
               model_used: bool) -> tuple[list[Measured], str]:
    """The detectors that searched, with their figures for this kind of image (the classical one
    first), and a note when a trained model's table cannot be read."""
    consulted = [Measured(OFFLINE_DETECTOR, ctx.performance.for_kind(kind))]
    note = ""
    if ctx.detector is not None and model_used:
        try:
            table = ctx.detector.performance()
        except LoupeError as error:
            table, note = None, f" {error.message} Its performance counts as not measured."
        consulted.append(Measured(f"the detector model {ctx.detector.name}",
                                  None if table is None else table.for_kind(kind)))
    if vision_name is not None:  # a vision model's sensitivity cannot be measured here
        consulted.append(Measured(f"the vision model {vision_name}", None))
    return consulted, note


def _listed_detections(analysis: FrameAnalysis, max_findings: int) -> list[Detection]:
    """The frame's leading detections (at least ten, for the vision model's proposals to be weighed
    against), the first ``max_findings`` centred by their Gaussian fit: the shared analysis fits
    only the first ``REFINED_DETECTIONS`` (the default ``max_findings``), to keep it fast."""
    return [recentred(d, analysis.work) if REFINED_DETECTIONS <= rank < max_findings else d
            for rank, d in enumerate(analysis.detections[: max(max_findings, 10)])]


def _classical_verification(detection: Detection, notes: Sequence[str] = ()) -> Verification:
    """The detector's own evidence is its check: strong enough to call, or only worth a look.
    ``notes`` say how the frame was searched (e.g. coloured pixels left out)."""
    if detection.confidence >= ANOMALY_THRESHOLD:
        return Verification(status="confirmed", evidence=round(detection.confidence, 3),
                            reasons=[f"lesion-like contrast found by the classical detector "
                                     f"(confidence {detection.confidence:.2f})", *notes])
    return Verification(status="unverified", evidence=round(detection.confidence, 3),
                        reasons=[f"weak evidence (confidence {detection.confidence:.2f}), below the "
                                 f"{ANOMALY_THRESHOLD:.2f} at which Loupe calls an anomaly", *notes])


def _describe(findings: Sequence[Finding]) -> str:
    strong = [f for f in findings if f.confidence >= ANOMALY_THRESHOLD]
    parts = [f"{f.id} ({f.label}, confidence {f.confidence:.2f})" for f in strong]
    return f"{len(strong)} possible anomal{'y' if len(strong) == 1 else 'ies'}: " + "; ".join(parts) + "."


def _replace_findings(ctx: ToolContext, study_id: str, frames: Sequence[int], findings: Sequence[Finding]) -> None:
    """A new detection replaces earlier automatic findings on those frames (a finding found again
    keeps its id); the clinician's stay. An id not found again is retired with its study, so that
    a question naming it is told so instead of being answered with another finding."""
    kept = {f.id for f in findings}
    stale = [fid for fid, f in ctx.findings.items()
             if f.study_id == study_id and f.frame in frames and f.source != "clinician"]
    for fid in stale:
        del ctx.findings[fid]
        ctx.finding_samples.pop(fid, None)
        if fid not in kept:
            ctx.retired_findings[fid] = study_id
    for finding in findings:
        ctx.findings[finding.id] = finding
        ctx.retired_findings.pop(finding.id, None)
