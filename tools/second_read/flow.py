"""The four second-read tools, their arguments and results.

Flow::

    start_second_read     choose the checklist, optionally take the clinician's own findings
                          first (text, points or boxes), make sure the frame has findings, show step 1
    second_read_step      next / previous / jump / current: the step, a zoomed crop in the step's
                          window, and Loupe's observations for that region
    record_assessment     agree / disagree / uncertain, a note, optionally a new clinician finding
                          (verified like any proposal); then, by default, the next step
    second_read_summary   concordance (both saw, AI-only, clinician-only, disagreements with crops),
                          time per step, unchecked steps; optionally appended to the report

Everything the second read remembers is a ``SecondReadState`` (``tools.checklists.record``) in
``ctx.second_reads`` (by study id): plain JSON, so a session can store it, and a paused read
resumes after a reload.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from tools.checklists.catalogue import checklist_for
from tools.checklists.record import Assessment, ClinicianMarkRecord, SecondReadState, StepRecord
from tools.context import Artifact, ToolContext, ToolResult
from tools.coordinates import SentImage
from tools.detect_anomalies import DetectAnomaliesInput, detect_anomalies
from tools.errors import InvalidCoordinatesError, LoupeError
from tools.findings import Finding
from tools.fit_gaussian import FitGaussianInput, fit_gaussian
from tools.render.geometry import size_text
from tools.report.location import location_in_words
from tools.second_read.concordance import Concordance, append_to_report, concordance, summary_text
from tools.second_read.steps import StepOutput, ai_findings, is_called, step_view, verification_words
from tools.study import Study
from tools.verify_coordinates import VerifyCoordinatesInput, clinician_finding, proposal_box

#: Time on a step counts at most this long per visit: a step left open over lunch (or a paused
#: read resumed the next day) is not 3 hours of reading.
MAX_VISIT_SECONDS = 600.0


class SecondReadError(LoupeError):
    """A second-read action that cannot be done as asked (none started, no such step, ...)."""


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
    report_unchanged: bool = Field(default=False, description="The report already held this summary: no new version.")


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
        ai_findings=[f.id for f in ai_findings(ctx, state) if is_called(f)],
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
    version, unchanged = None, False
    if args.append_to_report:
        history = ctx.reports.get(study.id)
        before = history.current.version if history and history.versions else None
        version = append_to_report(ctx, study, summary, author_name=args.author_name)
        unchanged = version == before
    return ToolResult(output=SecondReadSummaryOutput(summary=summary, text=summary_text(summary), report_version=version,
                                                     report_unchanged=unchanged), artifacts=artifacts)


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
    step, artifact = step_view(ctx, study, state, state.current)
    message = f"Step {step.number} of {total}: {step.title.rstrip('?.')}."
    return SecondReadStepOutput(step=step, checked=state.checked(), total=total, unchecked=unchecked,
                                message=message), [artifact]


def _ensure_findings(ctx: ToolContext, study: Study, frame: int, detect: bool) -> None:
    """Detect on the frame if it has no findings yet, and measure the ones a report would state."""
    automatic = [f for f in ctx.study_findings(study.id) if f.frame == frame and f.source != "clinician"]
    if not automatic and detect:
        detect_anomalies(ctx, DetectAnomaliesInput(study_id=study.id, frame=frame))
    unmeasured = [f.id for f in ctx.study_findings(study.id)
                  if f.frame == frame and f.source != "clinician" and is_called(f) and f.gaussian is None]
    if unmeasured:
        fit_gaussian(ctx, FitGaussianInput(finding_ids=unmeasured, study_id=study.id))


def _add_clinician_finding(ctx: ToolContext, study: Study, state: SecondReadState, mark: ClinicianMark,
                           *, step_id: str | None) -> Finding:
    """The clinician's mark as a finding, verified with the same evidence code as
    verify_coordinates (a refined box; the mark as placed is kept in the state)."""
    sent = SentImage.identity(study.safe.columns, study.safe.rows)
    box = proposal_box(VerifyCoordinatesInput(box_2d=mark.box_2d, point=mark.point, box_px=mark.box_px,
                                              size_px=mark.size_px), sent)
    finding = clinician_finding(ctx, box, frame=state.frame, label=mark.label, study_id=study.id)
    state.marks.append(ClinicianMarkRecord(finding_id=finding.id, marked_box_px=[round(v, 2) for v in box.as_list()],
                                           step_id=step_id))
    try:
        fit_gaussian(ctx, FitGaussianInput(finding_ids=[finding.id], study_id=study.id))
    except InvalidCoordinatesError:
        pass  # a mark at the image edge may not fit; the finding stands without a size
    return ctx.findings[finding.id]


def _clinician_output(study: Study, finding: Finding) -> ClinicianFindingOutput:
    return ClinicianFindingOutput(finding_id=finding.id, label=finding.label, center_px=finding.center_px,
                                  verification=verification_words(finding),
                                  size=size_text(finding, study.pixel_spacing_mm(finding.frame)),
                                  location=location_in_words(study, finding))
