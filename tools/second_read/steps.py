"""One checklist step on screen: its region on this image, Loupe's observations there (its
findings with verification, size and lexicon hints), and a zoomed crop in the step's window."""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, Field

from tools.checklists.catalogue import DEFAULT_WINDOW, ChecklistStep, ResolvedRegion, resolve_regions
from tools.checklists.record import Assessment, SecondReadState
from tools.context import Artifact, ToolContext
from tools.coordinates import BoxPx
from tools.detect_anomalies import study_assessment
from tools.detection.detector import frame_analysis
from tools.detection.performance import Assessment as SearchAssessment
from tools.detection.performance import region_not_cleared
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.errors import InvalidWindowError
from tools.findings import Finding
from tools.render.annotated import render_annotated
from tools.render.geometry import lesion_shape, size_text, status_of
from tools.report.location import location_in_words
from tools.study import Study

#: Weaker candidates listed per step (the strongest first): enough to review, not a list of noise.
MAX_WEAKER = 3
#: A crop zoomed on findings shows them at twice their extent, at least this many px.
MIN_ZOOM_PX = 96


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


# == findings ===================================================================================
def is_called(finding: Finding) -> bool:
    return finding.confidence >= ANOMALY_THRESHOLD and status_of(finding) != "rejected"


def ai_findings(ctx: ToolContext, state: SecondReadState) -> list[Finding]:
    """Loupe's own findings on the read's frame, strongest first."""
    found = [f for f in ctx.study_findings(state.study_id) if f.frame == state.frame and f.source != "clinician"]
    return sorted(found, key=lambda f: -f.confidence)


def verification_words(finding: Finding) -> str:
    verification = finding.verification
    if verification is None:
        return "not verified"
    return f"{verification.status} ({verification.reasons[0]})" if verification.reasons else verification.status


# == regions and observations ===================================================================
def step_regions(ctx: ToolContext, study: Study, state: SecondReadState) -> list[ResolvedRegion]:
    work = frame_analysis(ctx, study, state.frame).work
    return resolve_regions([step.region for step in state.checklist.steps], work)


def home_steps(ctx: ToolContext, study: Study, state: SecondReadState,
               regions: list[ResolvedRegion] | None = None) -> dict[str, int | None]:
    """Each AI finding's home step (0-based index): the smallest focal region containing its
    centre, first in checklist order on a tie; None when no focal region contains it."""
    regions = regions or step_regions(ctx, study, state)
    steps = state.checklist.steps
    homes: dict[str, int | None] = {}
    for finding in ai_findings(ctx, state):
        containing = [i for i, (step, region) in enumerate(zip(steps, regions, strict=True))
                      if step.focal and region.contains(*finding.center_px)]
        homes[finding.id] = min(containing, key=lambda i: (regions[i].area_fraction, i)) if containing else None
    return homes


def _observation(study: Study, finding: Finding, step: ChecklistStep, decided_here: bool) -> Observation:
    return Observation(finding_id=finding.id, label=finding.label, called=is_called(finding),
                       confidence=round(finding.confidence, 3), verification=verification_words(finding),
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


def step_window(study: Study, step: ChecklistStep) -> tuple[str | None, list[str]]:
    """The window to render the step in (None = the study's default), and a note if the
    checklist's window is not available on this image (e.g. a CT saved as PNG has no HU)."""
    if step.window == DEFAULT_WINDOW:
        return None, []
    if step.window in study.window_presets():
        return step.window, []
    name = step.window.replace("_", " ")
    return None, [f"the {name} window needs a greyscale DICOM image with physical values; shown in the default window"]


def step_view(ctx: ToolContext, study: Study, state: SecondReadState, index: int) -> tuple[StepOutput, Artifact]:
    checklist = state.checklist
    step = checklist.steps[index]
    regions = step_regions(ctx, study, state)
    region = regions[index]
    homes = home_steps(ctx, study, state, regions)
    inside = [f for f in ai_findings(ctx, state) if region.contains(*f.center_px)]
    called = [f for f in inside if is_called(f)]
    weaker = [f for f in inside if not is_called(f)][:MAX_WEAKER]
    observations = ([_observation(study, f, step, homes.get(f.id) == index) for f in [*called, *weaker]]
                    if step.focal else [])
    window, notes = step_window(study, step)
    notes += [region.note] if region.note else []
    record = state.steps[index]
    mine = [ctx.findings[i] for i in state.clinician_finding_ids() if i in ctx.findings]
    mine = [f for f in mine if region.contains(*f.center_px)]
    bounds = zoom_bounds(study, called, region.bounds) if step.zoom == "findings" else region.bounds
    name = f"second-read-step{index + 1:02d}-{step.id}.png"
    shown = [*called, *weaker, *mine] if step.focal else mine
    title = f"Step {index + 1}/{len(checklist.steps)} · {step.title}" + (f" · {window.replace('_', ' ')} window" if window else "")
    artifact = Artifact(name=name, data=crop_png(study, state.frame, window, bounds, shown, title), for_model=True,
                        caption=f"Second read, step {index + 1}: {step.title}.")
    output = StepOutput(
        study_id=study.id, number=index + 1, total=len(checklist.steps), step_id=step.id, title=step.title,
        window=window or "default", look_for=list(step.look_for), lexicon=dict(step.lexicon),
        region_px=[round(v, 1) for v in region.bounds.as_list()], observations=observations,
        observation=_observation_text(step, observations, mine, study_assessment(ctx, study, state.frame, bool(called))),
        assessment=record.assessment, note=record.note,
        clinician_finding_ids=list(record.clinician_finding_ids), notes=notes, crop=name)
    return output, artifact


def _observation_text(step: ChecklistStep, observations: list[Observation], mine: list[Finding],
                      worth: SearchAssessment) -> str:
    """Loupe's observation for a step, in words (the offline answer; Gemini words its own).
    ``worth`` is what the detector's search is worth on this kind of image: a step where nothing
    reaches the threshold is not cleared by it, and a confidence is said with its meaning."""
    if not step.focal:
        text = "Loupe does not assess this step (its detector finds focal lesions only): your reading."
    else:
        called = [o for o in observations if o.called]
        weaker = [o for o in observations if not o.called]
        parts = [_observation_line(o) for o in called] or [region_not_cleared(worth)]
        if called and worth.confidence_meaning:
            parts.append(f"What a confidence means here: {worth.confidence_meaning}.")
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
def zoom_bounds(study: Study, findings: list[Finding], fallback: BoxPx) -> BoxPx:
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


def crop_png(study: Study, frame: int, window: str | None, bounds: BoxPx, findings: list[Finding], title: str) -> bytes:
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
