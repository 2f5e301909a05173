"""Guided second reads: walk a modality checklist step by step, record the clinician's
judgement, and end with a concordance summary.

Flow (the four tools)::

    start_second_read     choose the checklist, optionally take the clinician's own findings
                          first (text, points or boxes), make sure the frame has findings, show step 1
    second_read_step      next / previous / jump / current: the step, a zoomed crop in the step's
                          window, and Loupe's observations for that region
    record_assessment     agree / disagree / uncertain, a note, optionally a new clinician finding
                          (verified like any proposal); then, by default, the next step
    second_read_summary   concordance (both saw, AI-only, clinician-only, disagreements with crops),
                          time per step, unchecked steps; optionally appended to the report

Everything the second read remembers is a ``SecondReadState`` in ``ctx.second_reads`` (by study
id): plain JSON, so a session can store it, and a paused read resumes after a reload
(``second_reads_json`` / ``restore_second_reads``).

Concordance rules
-----------------
*AI findings* are the session's automatic findings on the frame that reach the anomaly threshold
and were not rejected by verification (the ones a report would state). Each is judged on its
*home step*: the most specific focal step whose region contains its centre (smallest region,
first in checklist order on a tie) — fixed by the checklist and the findings, not by which
steps were answered, so it is predictable. Then:

- **both** — a clinician finding marks the same lesion (centres within either lesion's half
  size), or the clinician agreed on the home step;
- **AI-only** — the clinician disagreed or was uncertain on the home step, did not check it, or
  no step's region contains the finding (the reason says which);
- **clinician-only** — clinician findings that match no AI finding (a weaker, sub-threshold
  candidate at the same place is named);
- **disagreements** — every step answered "disagree", with its note, its findings and a crop.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from tools.checklists import (
    DEFAULT_WINDOW,
    Checklist,
    ChecklistStep,
    ResolvedRegion,
    checklist_for,
    load_checklists,
    resolve_regions,
)
from tools.context import Artifact, ToolContext, ToolResult
from tools.coordinates import BoxPx, SentImage
from tools.detect_anomalies import DetectAnomaliesInput, detect_anomalies
from tools.detection.detector import frame_analysis
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.draft_report import DraftReportInput, draft_report
from tools.errors import InvalidCoordinatesError, InvalidWindowError, LoupeError
from tools.findings import Finding
from tools.fit_gaussian import FitGaussianInput, fit_gaussian
from tools.location import location_in_words
from tools.render_overlay import lesion_shape, render_annotated, size_text, status_of
from tools.report import AddFinding, SetSection
from tools.revise_report import revise
from tools.study import Study
from tools.verify_coordinates import VerifyCoordinatesInput, proposal_box, verify_location

Assessment = Literal["agree", "disagree", "uncertain"]
ADDENDUM_PREFIX = "Second-read addendum"
#: Time on a step counts at most this long per visit: a step left open over lunch (or a paused
#: read resumed the next day) is not 3 hours of reading.
MAX_VISIT_SECONDS = 600.0
#: Weaker candidates listed per step (the strongest first): enough to review, not a list of noise.
MAX_WEAKER = 3
#: Two marks are the same lesion when their centres lie within either lesion's half size (and
#: at least this many px apart never separates them: clicks are not pixel-exact).
MIN_MATCH_PX = 8.0
#: A crop zoomed on findings shows them at twice their extent, at least this many px.
MIN_ZOOM_PX = 96


class SecondReadError(LoupeError):
    """A second-read action that cannot be done as asked (none started, no such step, ...)."""


# == state ======================================================================================
class StepRecord(BaseModel):
    """What happened on one checklist step."""

    step_id: str
    assessment: Assessment | None = None
    note: str = ""
    started_at: datetime | None = Field(default=None, description="When the step was first shown.")
    answered_at: datetime | None = None
    seconds: float = Field(default=0.0, ge=0, description="Time the step was on screen (visits capped).")
    shown_at: datetime | None = Field(default=None, description="Start of the current visit, if on screen.")
    clinician_finding_ids: list[str] = Field(default_factory=list)


class ClinicianMarkRecord(BaseModel):
    """Where the clinician put a finding, before verification refined it (nothing is lost)."""

    finding_id: str
    marked_box_px: list[float]
    step_id: str | None = Field(default=None, description="None for a finding entered before the read.")


class SecondReadState(BaseModel):
    """A second read in progress or finished; JSON-serialisable (``model_dump(mode="json")``)."""

    study_id: str
    checklist_id: str
    checklist_version: str = ""
    frame: int = Field(ge=0)
    current: int = Field(default=0, ge=0, description="0-based index of the step on screen.")
    steps: list[StepRecord]
    pre_read_note: str = ""
    pre_read_finding_ids: list[str] = Field(default_factory=list)
    marks: list[ClinicianMarkRecord] = Field(default_factory=list)
    started_at: datetime
    summarised_at: datetime | None = None

    @property
    def checklist(self) -> Checklist:
        return checklist_for(None, self.checklist_id)

    def clinician_finding_ids(self) -> list[str]:
        return [*self.pre_read_finding_ids, *(i for r in self.steps for i in r.clinician_finding_ids)]

    def checked(self) -> int:
        return sum(r.assessment is not None for r in self.steps)


def second_reads_json(ctx: ToolContext) -> dict[str, dict]:
    """Every second read of the session as JSON (for the session store)."""
    return {study_id: state.model_dump(mode="json") for study_id, state in ctx.second_reads.items()}


def restore_second_reads(ctx: ToolContext, data: dict[str, dict]) -> None:
    """Put stored second reads back. The step on screen when the session was stored is not
    counted as read while the session was closed: its visit ends at the pause."""
    for study_id, raw in data.items():
        state = SecondReadState.model_validate(raw)
        for record in state.steps:
            record.shown_at = None
        ctx.second_reads[study_id] = state


# == inputs and outputs =========================================================================
class ClinicianMark(BaseModel):
    """A finding the clinician places: exactly one of box_2d, point or box_px."""

    label: str = Field(default="clinician-marked finding", min_length=1, description="What it is, in a few words.")
    box_2d: list[float] | None = Field(default=None, description="[ymin, xmin, ymax, xmax], 0–1000 of the native frame.")
    point: list[float] | None = Field(default=None, description="[y, x], 0–1000 of the native frame.")
    box_px: list[float] | None = Field(default=None, description="[x0, y0, x1, y1] in native pixels (inclusive).")
    size_px: float = Field(default=24.0, gt=0, description="Box size to assume around a point, in native px.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ClinicianMark:
        if sum(v is not None for v in (self.box_2d, self.point, self.box_px)) != 1:
            raise ValueError("give exactly one of box_2d, point or box_px")
        return self


class ClinicianFindingOutput(BaseModel):
    finding_id: str
    label: str
    center_px: tuple[float, float]
    verification: str = Field(description="confirmed / adjusted / rejected, with the first reason.")
    size: str | None
    location: str


class Observation(BaseModel):
    """One of Loupe's findings inside a step's region."""

    finding_id: str
    label: str
    called: bool = Field(description="Reaches the anomaly threshold and was not rejected.")
    confidence: float
    verification: str
    size: str | None
    location: str
    decided_here: bool = Field(description="This step's answer decides the finding's concordance (its home step).")
    lexicon_hints: dict[str, str] = Field(default_factory=dict, description="What the measurements suggest, per descriptor.")


class StepOutput(BaseModel):
    """One checklist step as shown to the clinician."""

    study_id: str
    number: int = Field(description="1-based step number.")
    total: int
    step_id: str
    title: str
    window: str = Field(description="The window the crop is shown in.")
    look_for: list[str]
    lexicon: dict[str, list[str]]
    region_px: list[float] = Field(description="[x0, y0, x1, y1] native px of the region.")
    observations: list[Observation]
    observation: str = Field(description="Loupe's observations in words.")
    assessment: Assessment | None = None
    note: str = ""
    clinician_finding_ids: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="Window or mask fallbacks on this image.")
    crop: str = Field(description="Name of the crop artifact.")


class SecondReadStepOutput(BaseModel):
    step: StepOutput | None = Field(description="The step now on screen; None past the last step.")
    checked: int
    total: int
    unchecked: list[int] = Field(description="1-based numbers of steps not yet answered.")
    message: str


class StartSecondReadInput(BaseModel):
    """Arguments of ``start_second_read``."""

    study_id: str | None = Field(default=None, description="Which open study; default the current one.")
    checklist: str | None = Field(default=None, description="Checklist id (chest_xray, ct_chest, brain_mr, breast_us, "
                                                            "generic); default: the one for the study's modality.")
    pre_read_text: str = Field(default="", description="The clinician's own findings in words, before seeing Loupe's.")
    pre_read_findings: list[ClinicianMark] = Field(default_factory=list,
                                                   description="The clinician's own findings placed on the image first.")
    detect: bool = Field(default=True, description="Detect findings first if the frame has none.")
    restart: bool = Field(default=False, description="Start over even if a second read of this study is in progress.")


class StartSecondReadOutput(BaseModel):
    study_id: str
    checklist_id: str
    checklist_title: str
    steps: list[str] = Field(description="'1. title' for every step.")
    resumed: bool
    ai_findings: list[str] = Field(description="Ids of Loupe's findings at the anomaly threshold on this frame.")
    pre_read_findings: list[ClinicianFindingOutput]
    current: SecondReadStepOutput


class SecondReadStepInput(BaseModel):
    """Arguments of ``second_read_step``."""

    action: Literal["next", "previous", "jump", "current"] = Field(default="next")
    step: int | str | None = Field(default=None, description="For jump: 1-based step number or step id.")
    study_id: str | None = Field(default=None, description="Which open study; default the current one.")

    @model_validator(mode="after")
    def _jump_needs_step(self) -> SecondReadStepInput:
        if self.action == "jump" and self.step is None:
            raise ValueError("jump needs a step (number or id)")
        return self


class RecordAssessmentInput(BaseModel):
    """Arguments of ``record_assessment``."""

    assessment: Assessment = Field(description="The clinician's judgement of Loupe's observation for the step.")
    note: str = Field(default="", max_length=2000, description="The clinician's note, in their words.")
    step: int | str | None = Field(default=None, description="1-based step number or id; default the step on screen.")
    finding: ClinicianMark | None = Field(default=None, description="A finding the clinician sees on this step.")
    advance: bool = Field(default=True, description="Show the next step afterwards.")
    study_id: str | None = Field(default=None, description="Which open study; default the current one.")


class RecordAssessmentOutput(BaseModel):
    step_number: int
    step_id: str
    assessment: Assessment
    note: str
    clinician_finding: ClinicianFindingOutput | None
    next: SecondReadStepOutput | None = Field(description="The next step, when advancing.")


class ConcordantItem(BaseModel):
    ai_finding_id: str
    clinician_finding_id: str | None = None
    step_id: str | None
    basis: str = Field(description="'clinician marked it' or 'agreed on the step'.")


class AiOnlyItem(BaseModel):
    finding_id: str
    step_id: str | None
    reason: str


class ClinicianOnlyItem(BaseModel):
    finding_id: str
    step_id: str | None = Field(description="None when entered before the read.")
    label: str
    verification: str
    nearby_weaker_candidate: str | None = None


class DisagreementItem(BaseModel):
    step_number: int
    step_id: str
    title: str
    note: str
    ai_finding_ids: list[str]
    clinician_finding_ids: list[str]
    crop: str


class StepTime(BaseModel):
    number: int
    step_id: str
    title: str
    assessment: Assessment | None
    seconds: float
    note: str = ""


class ConcordanceCounts(BaseModel):
    both: int
    ai_only: int
    clinician_only: int
    disagreements: int
    checked_steps: int
    unchecked_steps: int
    total_steps: int


class Concordance(BaseModel):
    """The concordance of a second read."""

    study_id: str
    checklist_id: str
    counts: ConcordanceCounts
    both: list[ConcordantItem]
    ai_only: list[AiOnlyItem]
    clinician_only: list[ClinicianOnlyItem]
    disagreements: list[DisagreementItem]
    steps: list[StepTime]
    unchecked: list[str] = Field(description="Ids of the steps not answered.")
    total_seconds: float
    pre_read_note: str = ""


class SecondReadSummaryInput(BaseModel):
    """Arguments of ``second_read_summary``."""

    study_id: str | None = Field(default=None, description="Which open study; default the current one.")
    append_to_report: bool = Field(default=False, description="Add the summary to the report as an addendum "
                                                              "(a new report version; a report is drafted first if none).")
    author_name: str | None = Field(default=None, description="The clinician, for the report version.")


class SecondReadSummaryOutput(BaseModel):
    summary: Concordance
    text: str
    report_version: int | None = None


# == the tools ==================================================================================
def start_second_read(ctx: ToolContext, args: StartSecondReadInput) -> ToolResult:
    """Start (or resume) a guided second read of the study: a modality checklist walked step by
    step, each step a zoomed crop in its window with Loupe's observations for that region.

    Give the clinician's own findings first (pre_read_text, pre_read_findings) when they have
    read the image already. Then show each step, ask the clinician to agree, disagree or say
    uncertain (record_assessment), and end with second_read_summary.
    """
    study = ctx.view(args.study_id).study
    state = ctx.second_reads.get(study.id)
    resumed = state is not None and not args.restart
    if resumed:
        state.summarised_at = None  # back in progress: the clinician may change answers
    else:
        state = _new_state(ctx, study, args)
        ctx.second_reads[study.id] = state
    _ensure_findings(ctx, study, state.frame, args.detect)
    if args.pre_read_text.strip():
        state.pre_read_note = "\n".join(p for p in (state.pre_read_note, args.pre_read_text.strip()) if p)
    marked = [_add_clinician_finding(ctx, study, state, mark, step_id=None) for mark in args.pre_read_findings]
    state.pre_read_finding_ids += [f.id for f in marked]
    current, artifacts = _move(ctx, study, state, state.current)
    checklist = state.checklist
    output = StartSecondReadOutput(
        study_id=study.id, checklist_id=checklist.id, checklist_title=checklist.title,
        steps=[f"{i}. {s.title}" for i, s in enumerate(checklist.steps, start=1)], resumed=resumed,
        ai_findings=[f.id for f in _ai_findings(ctx, state) if _called(f)],
        pre_read_findings=[_clinician_output(study, f) for f in marked], current=current)
    return ToolResult(output=output, artifacts=artifacts)


def second_read_step(ctx: ToolContext, args: SecondReadStepInput) -> ToolResult:
    """Move through the second-read checklist (next, previous, jump to a step, or the current
    one) and show the step: what to look for, a zoomed crop in the step's window, and Loupe's
    observations in that region (its findings with verification and size, or nothing focal).
    """
    study, state = _state(ctx, args.study_id)
    if args.action == "jump":
        index, _ = state.checklist.step(args.step)
    else:
        index = state.current + {"next": 1, "previous": -1, "current": 0}[args.action]
    output, artifacts = _move(ctx, study, state, max(index, 0))
    return ToolResult(output=output, artifacts=artifacts)


def record_assessment(ctx: ToolContext, args: RecordAssessmentInput) -> ToolResult:
    """Record the clinician's judgement of a second-read step: agree, disagree or uncertain,
    with an optional note and an optional finding of their own (a point or box, verified
    against the pixels like any proposal). Then show the next step unless advance is false.
    """
    study, state = _state(ctx, args.study_id)
    checklist = state.checklist
    index = state.current if args.step is None else checklist.step(args.step)[0]
    if index >= len(state.steps):
        raise SecondReadError("All steps have been shown; name the step to record (a number or id), "
                              "or ask for the summary.")
    now = _now()
    record = state.steps[index]
    _end_visit(record, now)
    record.assessment, record.note, record.answered_at = args.assessment, args.note.strip(), now
    record.started_at = record.started_at or now
    added = None
    if args.finding is not None:
        added = _add_clinician_finding(ctx, study, state, args.finding, step_id=record.step_id)
        record.clinician_finding_ids.append(added.id)
    following, artifacts = (_move(ctx, study, state, index + 1) if args.advance else (None, []))
    output = RecordAssessmentOutput(step_number=index + 1, step_id=record.step_id, assessment=args.assessment,
                                    note=record.note, clinician_finding=_clinician_output(study, added) if added else None,
                                    next=following)
    return ToolResult(output=output, artifacts=artifacts)


def second_read_summary(ctx: ToolContext, args: SecondReadSummaryInput) -> ToolResult:
    """Summarise the second read: findings both saw, AI-only, clinician-only, disagreements
    (each with a crop), time per step and the steps not checked. With append_to_report, the
    summary becomes an addendum to the report (a new version).
    """
    study, state = _state(ctx, args.study_id)
    _end_visit(state.steps[min(state.current, len(state.steps) - 1)], _now())
    summary, artifacts = concordance(ctx, study, state)
    state.summarised_at = _now()
    version = None
    if args.append_to_report:
        version = append_to_report(ctx, study, summary, author_name=args.author_name)
    return ToolResult(output=SecondReadSummaryOutput(summary=summary, text=summary_text(summary),
                                                     report_version=version), artifacts=artifacts)


# == state handling =============================================================================
def _now() -> datetime:
    return datetime.now(UTC)


def _state(ctx: ToolContext, study_id: str | None) -> tuple[Study, SecondReadState]:
    study = ctx.view(study_id).study
    state = ctx.second_reads.get(study.id)
    if state is None:
        raise SecondReadError("No second read has been started on this study; start one first.")
    return study, state


def _new_state(ctx: ToolContext, study: Study, args: StartSecondReadInput) -> SecondReadState:
    checklist = checklist_for(study.modality, args.checklist, study.safe.body_part)
    return SecondReadState(study_id=study.id, checklist_id=checklist.id, checklist_version=checklist.version,
                           frame=ctx.view(study.id).frame, steps=[StepRecord(step_id=s.id) for s in checklist.steps],
                           started_at=_now())


def _end_visit(record: StepRecord, now: datetime) -> None:
    if record.shown_at is not None:
        record.seconds = round(record.seconds + min((now - record.shown_at).total_seconds(), MAX_VISIT_SECONDS), 3)
        record.shown_at = None


def _move(ctx: ToolContext, study: Study, state: SecondReadState, index: int) -> tuple[SecondReadStepOutput, list[Artifact]]:
    """Put step ``index`` on screen (or nothing, past the last step) and describe it."""
    now = _now()
    if state.current < len(state.steps):
        _end_visit(state.steps[state.current], now)
    total = len(state.steps)
    state.current = min(index, total)
    unchecked = [i + 1 for i, r in enumerate(state.steps) if r.assessment is None]
    if state.current == total:
        message = ("All steps have been shown. " + (f"Steps not checked: {', '.join(map(str, unchecked))}. "
                   if unchecked else "") + "Ask for the summary when ready.")
        return SecondReadStepOutput(step=None, checked=state.checked(), total=total, unchecked=unchecked,
                                    message=message), []
    record = state.steps[state.current]
    record.started_at = record.started_at or now
    record.shown_at = now
    step, artifact = _step_view(ctx, study, state, state.current)
    message = f"Step {step.number} of {total}: {step.title.rstrip('?.')}."
    return SecondReadStepOutput(step=step, checked=state.checked(), total=total, unchecked=unchecked,
                                message=message), [artifact]


# == findings ===================================================================================
def _called(finding: Finding) -> bool:
    return finding.confidence >= ANOMALY_THRESHOLD and status_of(finding) != "rejected"


def _ai_findings(ctx: ToolContext, state: SecondReadState) -> list[Finding]:
    """Loupe's own findings on the read's frame, strongest first."""
    found = [f for f in ctx.study_findings(state.study_id) if f.frame == state.frame and f.source != "clinician"]
    return sorted(found, key=lambda f: -f.confidence)


def _ensure_findings(ctx: ToolContext, study: Study, frame: int, detect: bool) -> None:
    """Detect on the frame if it has no findings yet, and measure the ones a report would state."""
    automatic = [f for f in ctx.study_findings(study.id) if f.frame == frame and f.source != "clinician"]
    if not automatic and detect:
        detect_anomalies(ctx, DetectAnomaliesInput(study_id=study.id, frame=frame))
    unmeasured = [f.id for f in ctx.study_findings(study.id)
                  if f.frame == frame and f.source != "clinician" and _called(f) and f.gaussian is None]
    if unmeasured:
        fit_gaussian(ctx, FitGaussianInput(finding_ids=unmeasured, study_id=study.id))


def _add_clinician_finding(ctx: ToolContext, study: Study, state: SecondReadState, mark: ClinicianMark,
                           *, step_id: str | None) -> Finding:
    """The clinician's mark as a finding, verified with the same evidence code as
    verify_coordinates (a refined box; the mark as placed is kept in the state)."""
    sent = SentImage.identity(study.safe.columns, study.safe.rows)
    box = proposal_box(VerifyCoordinatesInput(box_2d=mark.box_2d, point=mark.point, box_px=mark.box_px,
                                              size_px=mark.size_px), sent)
    analysis = frame_analysis(ctx, study, state.frame)
    result = verify_location(analysis.work, box, spacing_mm=study.pixel_spacing_mm(state.frame),
                             candidates=analysis.detections, space=analysis.space)
    finding = Finding(id=ctx.next_finding_id(), study_id=study.id, label=mark.label.strip(), frame=state.frame,
                      center_px=(round(result.center[0], 2), round(result.center[1], 2)), bbox_px=result.box,
                      confidence=1.0, source="clinician", verification=result.verification)
    ctx.findings[finding.id] = finding
    state.marks.append(ClinicianMarkRecord(finding_id=finding.id, marked_box_px=[round(v, 2) for v in box.as_list()],
                                           step_id=step_id))
    try:
        fit_gaussian(ctx, FitGaussianInput(finding_ids=[finding.id], study_id=study.id))
    except InvalidCoordinatesError:
        pass  # a mark at the image edge may not fit; the finding stands without a size
    return ctx.findings[finding.id]


def _verification_words(finding: Finding) -> str:
    verification = finding.verification
    if verification is None:
        return "not verified"
    return f"{verification.status} ({verification.reasons[0]})" if verification.reasons else verification.status


def _clinician_output(study: Study, finding: Finding) -> ClinicianFindingOutput:
    return ClinicianFindingOutput(finding_id=finding.id, label=finding.label, center_px=finding.center_px,
                                  verification=_verification_words(finding),
                                  size=size_text(finding, study.pixel_spacing_mm(finding.frame)),
                                  location=location_in_words(study, finding))


# == regions and observations ===================================================================
def _regions(ctx: ToolContext, study: Study, state: SecondReadState) -> list[ResolvedRegion]:
    work = frame_analysis(ctx, study, state.frame).work
    return resolve_regions([step.region for step in state.checklist.steps], work)


def home_steps(ctx: ToolContext, study: Study, state: SecondReadState,
               regions: list[ResolvedRegion] | None = None) -> dict[str, int | None]:
    """Each AI finding's home step (0-based index): the smallest focal region containing its
    centre, first in checklist order on a tie; None when no focal region contains it."""
    regions = regions or _regions(ctx, study, state)
    steps = state.checklist.steps
    homes: dict[str, int | None] = {}
    for finding in _ai_findings(ctx, state):
        containing = [i for i, (step, region) in enumerate(zip(steps, regions, strict=True))
                      if step.focal and region.contains(*finding.center_px)]
        homes[finding.id] = min(containing, key=lambda i: (regions[i].area_fraction, i)) if containing else None
    return homes


def _observation(study: Study, finding: Finding, step: ChecklistStep, decided_here: bool) -> Observation:
    return Observation(finding_id=finding.id, label=finding.label, called=_called(finding),
                       confidence=round(finding.confidence, 3), verification=_verification_words(finding),
                       size=size_text(finding, study.pixel_spacing_mm(finding.frame)),
                       location=location_in_words(study, finding), decided_here=decided_here,
                       lexicon_hints=_lexicon_hints(finding, step))


def _lexicon_hints(finding: Finding, step: ChecklistStep) -> dict[str, str]:
    """What the Gaussian fit suggests for shape and orientation (the other descriptors need the
    clinician's eye). Ultrasound convention: the skin line is at the top of the image."""
    fit = finding.gaussian
    if not step.lexicon or fit is None or not fit.converged:
        return {}
    hints = {}
    shape = lesion_shape(finding)
    if "orientation" in step.lexicon:
        half_w, half_h = shape.half_extent()
        hints["orientation"] = ("wider than tall on the fit: suggests parallel" if half_w >= half_h
                                else "taller than wide on the fit: suggests not parallel")
    if "shape" in step.lexicon:
        ratio = shape.major_px / max(shape.minor_px, 1e-6)
        hints["shape"] = (f"axis ratio {ratio:.2f} on the fit: {'round' if ratio <= 1.15 else 'oval'} outline; "
                          "an irregular outline cannot be judged from a fit")
    return hints


def _step_window(study: Study, step: ChecklistStep) -> tuple[str | None, list[str]]:
    """The window to render the step in (None = the study's default), and a note if the
    checklist's window is not available on this image (e.g. a CT saved as PNG has no HU)."""
    if step.window == DEFAULT_WINDOW:
        return None, []
    if step.window in study.window_presets():
        return step.window, []
    name = step.window.replace("_", " ")
    return None, [f"the {name} window needs a greyscale DICOM image with physical values; shown in the default window"]


def _step_view(ctx: ToolContext, study: Study, state: SecondReadState, index: int) -> tuple[StepOutput, Artifact]:
    checklist = state.checklist
    step = checklist.steps[index]
    regions = _regions(ctx, study, state)
    region = regions[index]
    homes = home_steps(ctx, study, state, regions)
    inside = [f for f in _ai_findings(ctx, state) if region.contains(*f.center_px)]
    called = [f for f in inside if _called(f)]
    weaker = [f for f in inside if not _called(f)][:MAX_WEAKER]
    observations = ([_observation(study, f, step, homes.get(f.id) == index) for f in [*called, *weaker]]
                    if step.focal else [])
    window, notes = _step_window(study, step)
    notes += [region.note] if region.note else []
    record = state.steps[index]
    mine = [ctx.findings[i] for i in state.clinician_finding_ids() if i in ctx.findings]
    mine = [f for f in mine if region.contains(*f.center_px)]
    bounds = _zoom_bounds(study, called, region.bounds) if step.zoom == "findings" else region.bounds
    name = f"second-read-step{index + 1:02d}-{step.id}.png"
    shown = [*called, *weaker, *mine] if step.focal else mine
    title = f"Step {index + 1}/{len(checklist.steps)} · {step.title}" + (f" · {window.replace('_', ' ')} window" if window else "")
    artifact = Artifact(name=name, data=_crop_png(study, state.frame, window, bounds, shown, title), for_model=True,
                        caption=f"Second read, step {index + 1}: {step.title}.")
    output = StepOutput(
        study_id=study.id, number=index + 1, total=len(checklist.steps), step_id=step.id, title=step.title,
        window=window or "default", look_for=list(step.look_for), lexicon=dict(step.lexicon),
        region_px=[round(v, 1) for v in region.bounds.as_list()], observations=observations,
        observation=_observation_text(step, observations, mine), assessment=record.assessment, note=record.note,
        clinician_finding_ids=list(record.clinician_finding_ids), notes=notes, crop=name)
    return output, artifact


def _observation_text(step: ChecklistStep, observations: list[Observation], mine: list[Finding]) -> str:
    """Loupe's observation for a step, in words (the offline answer; Gemini words its own)."""
    if not step.focal:
        text = "Loupe does not assess this step (its detector finds focal lesions only): your reading."
    else:
        called = [o for o in observations if o.called]
        weaker = [o for o in observations if not o.called]
        parts = [_observation_line(o) for o in called] or [
            f"Nothing focal: no finding here reaches the anomaly threshold ({ANOMALY_THRESHOLD:.2f})."]
        if weaker:
            listed = ", ".join(f"{o.finding_id} ({o.confidence:.2f})" for o in weaker)
            parts.append(f"Weaker candidates below the threshold, for your review only: {listed}.")
        text = " ".join(parts)
    if mine:
        text += f" Your findings here: {', '.join(f.id for f in mine)}."
    return text


def _observation_line(observation: Observation) -> str:
    size = f", {observation.size}" if observation.size else ""
    hints = "".join(f" {name.replace('_', ' ').capitalize()}: {hint}." for name, hint in observation.lexicon_hints.items())
    return (f"{observation.finding_id}: {observation.label} in the {observation.location}{size}; confidence "
            f"{observation.confidence:.2f}, {observation.verification}.{hints}")


# == crops ======================================================================================
def _zoom_bounds(study: Study, findings: list[Finding], fallback: BoxPx) -> BoxPx:
    """A square around the findings at twice their extent (the region when there are none)."""
    if not findings:
        return fallback
    x0 = min(f.bbox_px.x0 for f in findings)
    y0 = min(f.bbox_px.y0 for f in findings)
    x1 = max(f.bbox_px.x1 for f in findings)
    y1 = max(f.bbox_px.y1 for f in findings)
    side = max(2 * max(x1 - x0, y1 - y0), MIN_ZOOM_PX)
    return BoxPx.around((x0 + x1) / 2, (y0 + y1) / 2, side, side).clipped(study.safe.columns, study.safe.rows)


def _shifted(finding: Finding, dx: float, dy: float) -> Finding:
    """The finding in the coordinates of a crop whose top-left pixel is (dx, dy)."""
    box = finding.bbox_px
    moved = {"center_px": (finding.center_px[0] - dx, finding.center_px[1] - dy),
             "bbox_px": BoxPx(x0=box.x0 - dx, y0=box.y0 - dy, x1=box.x1 - dx, y1=box.y1 - dy)}
    if finding.gaussian is not None:
        cx, cy = finding.gaussian.center_px
        moved["gaussian"] = finding.gaussian.model_copy(update={"center_px": (cx - dx, cy - dy)})
    return finding.model_copy(update=moved)


def _crop_png(study: Study, frame: int, window: str | None, bounds: BoxPx, findings: list[Finding], title: str) -> bytes:
    """The region in the step's window, with the findings inside it drawn (render_overlay's style)."""
    try:
        display = study.render(frame, window).pixels
    except InvalidWindowError:  # e.g. a colour image: there is no window to apply
        display = study.render(frame).pixels
    rows, cols = display.shape[:2]
    x0, y0 = max(0, math.floor(bounds.x0)), max(0, math.floor(bounds.y0))
    x1, y1 = min(cols, math.ceil(bounds.x1) + 1), min(rows, math.ceil(bounds.y1) + 1)
    crop = np.ascontiguousarray(display[y0:y1, x0:x1])
    inside = [_shifted(f, x0, y0) for f in findings if x0 <= f.center_px[0] < x1 and y0 <= f.center_px[1] < y1]
    return render_annotated(crop, inside, spacing_mm=study.pixel_spacing_mm(frame),
                            orientation=study.geometry(frame).orientation, title=title)


# == concordance ================================================================================
def _same_lesion(a: Finding, b: Finding) -> bool:
    if a.frame != b.frame:
        return False
    reach = max(0.5 * max(a.bbox_px.width, a.bbox_px.height), 0.5 * max(b.bbox_px.width, b.bbox_px.height), MIN_MATCH_PX)
    return math.dist(a.center_px, b.center_px) <= reach


def concordance(ctx: ToolContext, study: Study, state: SecondReadState) -> tuple[Concordance, list[Artifact]]:
    """The concordance of the read as it stands (see the module docstring for the rules)."""
    steps = state.checklist.steps
    ai = _ai_findings(ctx, state)
    called = [f for f in ai if _called(f)]
    mine = [ctx.findings[i] for i in state.clinician_finding_ids() if i in ctx.findings]
    step_of_mark = {m.finding_id: m.step_id for m in state.marks}
    regions = _regions(ctx, study, state)
    homes = home_steps(ctx, study, state, regions)
    both: list[ConcordantItem] = []
    ai_only: list[AiOnlyItem] = []
    for finding in called:
        home = homes.get(finding.id)
        step_id = None if home is None else steps[home].id
        match = next((c for c in mine if _same_lesion(finding, c)), None)
        assessment = None if home is None else state.steps[home].assessment
        if match is not None:
            both.append(ConcordantItem(ai_finding_id=finding.id, clinician_finding_id=match.id, step_id=step_id,
                                       basis="clinician marked it"))
        elif assessment == "agree":
            both.append(ConcordantItem(ai_finding_id=finding.id, step_id=step_id, basis="agreed on the step"))
        else:
            ai_only.append(AiOnlyItem(finding_id=finding.id, step_id=step_id, reason=_ai_only_reason(home, assessment)))
    clinician_only = [
        ClinicianOnlyItem(finding_id=c.id, step_id=step_of_mark.get(c.id), label=c.label,
                          verification=_verification_words(c),
                          nearby_weaker_candidate=next((f.id for f in ai if not _called(f) and _same_lesion(f, c)), None))
        for c in mine if not any(_same_lesion(f, c) for f in called)]
    disagreements, artifacts = _disagreements(ctx, study, state, homes, regions)
    times = [StepTime(number=i + 1, step_id=s.id, title=s.title, assessment=r.assessment, seconds=round(r.seconds, 1),
                      note=r.note) for i, (s, r) in enumerate(zip(steps, state.steps, strict=True))]
    unchecked = [r.step_id for r in state.steps if r.assessment is None]
    counts = ConcordanceCounts(both=len(both), ai_only=len(ai_only), clinician_only=len(clinician_only),
                               disagreements=len(disagreements), checked_steps=state.checked(),
                               unchecked_steps=len(unchecked), total_steps=len(steps))
    summary = Concordance(study_id=study.id, checklist_id=state.checklist_id, counts=counts, both=both,
                          ai_only=ai_only, clinician_only=clinician_only, disagreements=disagreements, steps=times,
                          unchecked=unchecked, total_seconds=round(sum(t.seconds for t in times), 1),
                          pre_read_note=state.pre_read_note)
    return summary, artifacts


def _ai_only_reason(home: int | None, assessment: Assessment | None) -> str:
    if home is None:
        return "outside every checklist region"
    return {"disagree": "the clinician disagreed", "uncertain": "the clinician was uncertain",
            None: "its step was not checked"}[assessment]


def _disagreements(ctx: ToolContext, study: Study, state: SecondReadState, homes: dict[str, int | None],
                   regions: list[ResolvedRegion]) -> tuple[list[DisagreementItem], list[Artifact]]:
    """Every step answered 'disagree', with a crop of its region and its findings."""
    steps = state.checklist.steps
    items, artifacts = [], []
    for index, record in enumerate(state.steps):
        if record.assessment != "disagree":
            continue
        step = steps[index]
        ai_ids = [fid for fid, home in homes.items() if home == index and _called(ctx.findings[fid])]
        drawn = [ctx.findings[i] for i in [*ai_ids, *record.clinician_finding_ids] if i in ctx.findings]
        bounds = _zoom_bounds(study, drawn, regions[index].bounds) if step.zoom == "findings" else regions[index].bounds
        name = f"second-read-disagreement-{index + 1:02d}-{step.id}.png"
        window, _ = _step_window(study, step)
        data = _crop_png(study, state.frame, window, bounds, drawn, f"Disagreement · step {index + 1} · {step.title}")
        artifacts.append(Artifact(name=name, data=data, caption=f"Disagreement on step {index + 1}: {step.title}."))
        items.append(DisagreementItem(step_number=index + 1, step_id=step.id, title=step.title, note=record.note,
                                      ai_finding_ids=ai_ids, clinician_finding_ids=list(record.clinician_finding_ids),
                                      crop=name))
    return items, artifacts


# == wording and the report addendum ============================================================
def summary_text(summary: Concordance) -> str:
    """The concordance in a few lines (the offline answer and the CLI's text output)."""
    counts = summary.counts
    checklist = load_checklists()[summary.checklist_id]
    lines = [(f"Second read, {checklist.title}: {counts.checked_steps} of {counts.total_steps} steps checked "
              f"in {summary.total_seconds:.0f} s.")]
    lines.append(f"- Both saw: {_ids([b.ai_finding_id for b in summary.both])}")
    lines.append("- AI only: " + (", ".join(f"{a.finding_id} ({a.reason})" for a in summary.ai_only) or "none"))
    lines.append("- Clinician only: " + (", ".join(
        f"{c.finding_id} ({c.label}; {c.verification.split(' (')[0]})" for c in summary.clinician_only) or "none"))
    lines.append("- Disagreements: " + ("; ".join(
        f"step {d.step_number} {d.title}" + (f" — \"{d.note}\"" if d.note else "") for d in summary.disagreements)
        or "none"))
    lines.append(f"- Unchecked steps: {', '.join(summary.unchecked) or 'none'}")
    return "\n".join(lines)


def _ids(ids: list[str]) -> str:
    return ", ".join(ids) or "none"


def addendum_lines(summary: Concordance) -> list[str]:
    """The addendum as report items (one line each)."""
    counts = summary.counts
    checklist = load_checklists()[summary.checklist_id]
    lines = [(f"{ADDENDUM_PREFIX}, {checklist.title}: {counts.checked_steps} of {counts.total_steps} steps checked; "
              f"both saw {_ids([b.ai_finding_id for b in summary.both])}; AI only "
              f"{_ids([a.finding_id for a in summary.ai_only])}; clinician only "
              f"{_ids([c.finding_id for c in summary.clinician_only])}.")]
    lines += [f"{ADDENDUM_PREFIX}: disagreement on {d.title.lower()}" + (f": {_one_line(d.note)}" if d.note else "") + "."
              for d in summary.disagreements]
    if summary.unchecked:
        lines.append(f"{ADDENDUM_PREFIX}: not checked — {', '.join(summary.unchecked)}.")
    return lines


def _one_line(text: str) -> str:
    return " ".join(text.split())


def append_to_report(ctx: ToolContext, study: Study, summary: Concordance, *, author_name: str | None = None) -> int:
    """Add the summary to the study's report as a clinician's addendum: a new version with the
    clinician-only findings added to the findings and the addendum lines at the end of the
    limitations (replacing an earlier second-read addendum). Drafts a report first if there is
    none. Returns the new version number."""
    if not ctx.reports.get(study.id) or not ctx.reports[study.id].versions:
        draft_report(ctx, DraftReportInput(study_id=study.id))
    current = ctx.reports[study.id].current
    listed = {f.finding_id for f in current.findings}
    edits: list = [AddFinding(finding_id=c.finding_id, characteristics=f"{c.label}; marked by the clinician at second read")
                   for c in summary.clinician_only if c.finding_id not in listed]
    kept = [item for item in current.limitations if not item.startswith(ADDENDUM_PREFIX)]
    edits.append(SetSection(section="limitations", text="\n".join([*kept, *addendum_lines(summary)])))
    output = revise(ctx, edits, author="clinician", reason="second-read addendum", study_id=study.id,
                    author_name=author_name)
    return output.version
