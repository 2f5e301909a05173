"""compare_with_prior: bring a prior study into the current one's frame, look for each current
finding there, and say what changed.

Steps, per current finding (``CompareWithPriorInput.finding_ids``, by default those at the
anomaly threshold):

1. The prior slice at the finding's table position (``tools.compare.slices``, series only), and
   the 2-D similarity that brings that slice onto the current one
   (``tools.compare.registration``; refused in one sentence when the two do not show the same
   region).
2. The finding carried to the prior, verified there like any proposal, and judged present or
   absent by its contrast (``carry``).
3. Both measured as a reader would (long and short axis), with each size's uncertainty
   (``carry.lesion_size``), and the status and change by ``tools.compare.change``: ``new``,
   ``grown``, ``shrunk``, ``stable`` — or ``present`` when it is there but one of the two cannot
   be measured, so its change is not given.
4. The prior's own candidates at the threshold on the slices compared, carried back: one with
   nothing at its place now is ``resolved`` (ids P1, P2, ...).

What the model is told: the interval in days, never a date (the prior's date is kept for the
clinician's report only). Sizes in mm where both studies have a pixel spacing; in the current
image's pixels otherwise (the 1.5 mm minimum cannot then be applied, only the measurements' own
uncertainty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from tools.compare.change import CLINICAL_MIN_MM, LesionSize, change, status, status_reliability
from tools.compare.registration import Registration, register_images
from tools.compare.slices import SliceMatch, matching_slice
from tools.compare_with_prior.carry import carry_to_prior, lesion_contrast, lesion_size
from tools.compare_with_prior.figures import comparison_figures
from tools.compare.record import (
    CompareWithPriorOutput,
    ComparedFinding,
    FindingChange,
    LesionThere,
    PriorComparison,
    RegistrationSummary,
    SliceMatchSummary,
)
from tools.context import ToolContext, ToolResult
from tools.coordinates import BoxPx
from tools.detection.detector import frame_analysis
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.errors import InvalidCoordinatesError, RegistrationError, UnreadableStudyError
from tools.findings import Finding, FindingId
from tools.study import Study, dicom_date, iso_date, open_study

PACS_PREFIX = "pacs:"
#: How many prior candidates (at the threshold, per slice compared) are looked for now.
PRIOR_CANDIDATES = 5


class CompareWithPriorInput(BaseModel):
    """Arguments of ``compare_with_prior``."""

    prior: str = Field(description=(
        "The prior study: the id of a study open in this session, a file, folder or .zip path, "
        "'pacs:latest' for the patient's newest earlier study on the configured PACS, or "
        "pacs:STUDY_UID (pacs:STUDY_UID/SERIES_UID for one series)."))
    finding_ids: list[FindingId] | None = Field(default=None, description=(
        "Current findings to compare, e.g. ['F1']. Omit for every finding at the anomaly threshold "
        "(the strongest one when none reaches it)."))
    study_id: str | None = Field(default=None, description="The current study; default: the one open now.")
    interval_days: int | None = Field(default=None, ge=0, description=(
        "Days from the prior to the current study, when the files carry no date (PNG/JPEG); "
        "ignored when both have one."))


@dataclass(frozen=True)
class FramePair:
    """A current frame, the prior frame compared with it, and the map between them."""

    current_frame: int
    prior_frame: int
    registration: Registration
    match: SliceMatch | None


class Pairing:
    """The prior frame and registration for each current frame, each computed once."""

    def __init__(self, current: Study, prior: Study):
        self.current, self.prior = current, prior
        self.series = current.frame_count > 1 and prior.frame_count > 1
        if not self.series and current.frame_count != prior.frame_count:
            raise RegistrationError("One study is a series and the other a single image; compare a series with a "
                                    "series, or an image with an image.")
        self._pairs: dict[int, FramePair] = {}

    def __call__(self, frame: int) -> FramePair:
        if frame not in self._pairs:
            match = matching_slice(self.current, frame, self.prior) if self.series else None
            prior_frame = match.prior_frame if match else frame
            registration = register_images(self.current.physical(frame), self.prior.physical(prior_frame))
            self._pairs[frame] = FramePair(frame, prior_frame, registration, match)
        return self._pairs[frame]

    @property
    def pairs(self) -> list[FramePair]:
        return [self._pairs[frame] for frame in sorted(self._pairs)]


@dataclass(frozen=True)
class Units:
    """Sizes in mm when both studies have a pixel spacing, else in the current image's pixels."""

    mm: bool

    @classmethod
    def of(cls, current: Study, prior: Study) -> Units:
        return cls(current.pixel_spacing_mm(0) is not None and prior.pixel_spacing_mm(0) is not None)

    @property
    def name(self) -> str:
        return "mm" if self.mm else "px"

    @property
    def minimum(self) -> float:
        return CLINICAL_MIN_MM if self.mm else 0.0


def compare_with_prior(ctx: ToolContext, args: CompareWithPriorInput) -> ToolResult:
    """Compare the current study with a prior of the same patient: register the prior to the
    current study, carry each current finding there and verify it, measure both, and give each
    finding a status — new, grown, shrunk, stable — and prior findings with nothing at their
    place now as resolved, with the change in mm and %, and a doubling time for a growing CT nodule.

    The figures show each finding's prior and current crops side by side at one scale and window,
    and a difference panel. The interval is given in days; dates are never reported here.

    Raises
    ------
    RegistrationError
        The two studies do not show the same region (another body part, another orientation).
    NoStudyOpenError, UnreadableStudyError
        No current study, or the prior cannot be opened.
    """
    view = ctx.view(args.study_id)
    current = view.study
    prior = _open_prior(ctx, args.prior)
    if prior.id == current.id:
        raise RegistrationError("The prior given is the current study itself; give the earlier study.")
    interval = interval_days(current, prior, args.interval_days)
    chosen = _chosen(ctx, current, args.finding_ids)
    # Kept for the session's follow-ups ("has F1 grown?"): the registration is most of the work.
    pairing = ctx.derived(("pairing", current.id, prior.id), lambda: Pairing(current, prior))
    units = Units.of(current, prior)
    compared = [_compared(ctx, pairing, units, finding, interval) for finding in chosen]
    frames = sorted({f.frame for f in chosen} or {view.frame})
    compared += _resolved(ctx, pairing, units, frames, compared)
    pairs = [pairing(frame) for frame in frames]
    output = CompareWithPriorOutput(
        study_id=current.id, prior_study_id=prior.id, interval_days=interval,
        registration=_registration_summary(pairs), findings=compared,
        summary=_summary(compared, interval),
        message=_message(chosen, args.finding_ids, units, status_reliability(current.modality)))
    ctx.comparisons[current.id] = _kept(ctx.comparisons.get(current.id), PriorComparison(
        output=output, prior_date=iso_date(prior.identifying.study_date), prior_modality=prior.safe.modality,
        prior_frames=sorted({pair.prior_frame for pair in pairs})), partial=args.finding_ids is not None)
    figures = comparison_figures(current, prior, pairs, compared, window=view.window)
    return ToolResult(output=output, artifacts=figures)


def _kept(earlier: PriorComparison | None, new: PriorComparison, *, partial: bool) -> PriorComparison:
    """What the session keeps: a comparison of some findings only ("has F1 grown?") updates those
    in the earlier comparison with the same prior, so the report still lists the others."""
    if not partial or earlier is None or earlier.output.prior_study_id != new.output.prior_study_id:
        return new
    fresh = {item.id: item for item in new.output.findings}
    merged = [fresh.pop(item.id, item) for item in earlier.output.findings] + list(fresh.values())
    output = new.output.model_copy(update={"findings": merged, "summary": _summary(merged, new.output.interval_days)})
    frames = sorted(set(earlier.prior_frames) | set(new.prior_frames))
    return new.model_copy(update={"output": output, "prior_frames": frames})


# -- the prior and the interval ---------------------------------------------------------------


def _open_prior(ctx: ToolContext, reference: str) -> Study:
    reference = reference.strip()
    if reference in ctx.views:
        return ctx.views[reference].study
    if reference.startswith(PACS_PREFIX):
        if ctx.resolve_reference is None:
            raise UnreadableStudyError("No PACS is configured here, so a pacs: prior cannot be retrieved; "
                                       "give the prior as a file or folder.")
        path = ctx.resolve_reference(reference)
    else:
        path = ctx.check_path(Path(reference))
    study = open_study(path, limits=ctx.limits)
    return ctx.add_study(study, source=path, make_current=False).study


def interval_days(current: Study, prior: Study, given: int | None) -> int | None:
    """Days from the prior's Study Date to the current one's; ``given`` when either has none."""
    now, before = dicom_date(current.identifying.study_date), dicom_date(prior.identifying.study_date)
    if now is None or before is None:
        return given
    days = (now - before).days
    if days < 0:
        raise RegistrationError(f"The study given as the prior was made {-days} days after the current one; "
                                "give the earlier study as the prior.")
    return days


# -- the current findings ---------------------------------------------------------------------


def _chosen(ctx: ToolContext, study: Study, ids: list[str] | None) -> list[Finding]:
    if ids is not None:
        for finding_id in ids:
            reason = ctx.finding_not_here(finding_id, study.id)
            if reason is not None:
                raise InvalidCoordinatesError(reason)
        return [ctx.findings[i] for i in ids]
    ranked = sorted((f for f in ctx.study_findings(study.id)
                     if f.verification is None or f.verification.status != "rejected"), key=lambda f: -f.confidence)
    return [f for f in ranked if f.confidence >= ANOMALY_THRESHOLD] or ranked[:1]


def _radius(box: BoxPx) -> float:
    return max(box.width, box.height) / 2


def _size(ctx: ToolContext, study: Study, frame: int, centre: tuple[float, float], units: Units,
          per_px: float = 1.0) -> LesionSize | None:
    work = frame_analysis(ctx, study, frame).work
    return lesion_size(work, centre, study.pixel_spacing_mm(frame) if units.mm else None, per_px=per_px)


def _there(centre: tuple[float, float], frame: int, size: LesionSize | None, units: Units) -> LesionThere:
    axes = None if size is None else (round(size.long_mm, 2), round(size.short_mm, 2))
    return LesionThere(center_px=(round(centre[0], 2), round(centre[1], 2)), frame=frame,
                       size_mm=axes if units.mm else None, size_px=None if units.mm else axes,
                       uncertainty=None if size is None else round(size.uncertainty_mm, 2))


def _compared(ctx: ToolContext, pairing: Pairing, units: Units, finding: Finding,
              interval: int | None) -> ComparedFinding:
    pair = pairing(finding.frame)
    transform = pair.registration.transform
    current, prior = pairing.current, pairing.prior
    contrast = lesion_contrast(frame_analysis(ctx, current, finding.frame).work, finding.center_px,
                               _radius(finding.bbox_px))
    carried = carry_to_prior(frame_analysis(ctx, prior, pair.prior_frame).work, finding.bbox_px, transform,
                             prior.pixel_spacing_mm(pair.prior_frame), contrast_here=contrast)
    now = _size(ctx, current, finding.frame, finding.center_px, units)
    here = _there(finding.center_px, finding.frame, now, units)
    verification = carried.verification.status
    if carried.center_px is None:
        return ComparedFinding(id=finding.id, status="new", current=here, prior=None, verification=verification,
                               note="Nothing at its place in the prior.")
    before = _size(ctx, prior, pair.prior_frame, carried.center_px, units, per_px=1 / transform.scale)
    there = _there(carried.center_px, pair.prior_frame, before, units)
    if now is None or before is None:
        return ComparedFinding(id=finding.id, status="present", current=here, prior=there, verification=verification,
                               note="Present in both studies, but not measurable in "
                                    f"{'the current study' if now is None else 'the prior'}; its change is not given.")
    return ComparedFinding(id=finding.id, status=status(before, now, units.minimum), current=here, prior=there,
                           change=_change(before, now, interval, units, current), verification=verification)


def _change(before: LesionSize, now: LesionSize, interval: int | None, units: Units, current: Study) -> FindingChange:
    measured = change(before, now, interval, units.minimum)
    series = current.frame_count > 1 and current.modality in ("CT", "MR")
    return FindingChange(
        unit=units.name, long_axis=round(now.long_mm - before.long_mm, 2),
        short_axis=round(now.short_mm - before.short_mm, 2),
        mean_diameter_mm=round(measured.mean_diameter_mm, 2) if units.mm else None,
        mean_diameter_pct=round(measured.mean_diameter_pct, 1), area_pct=round(measured.area_pct, 1),
        volume_pct=round(measured.volume_pct, 1) if series else None,
        doubling_time_days=(round(measured.doubling_time_days) if measured.doubling_time_days is not None
                            and current.modality == "CT" else None),
        threshold=round(measured.threshold_mm, 2))


# -- prior findings with nothing at their place now --------------------------------------------


def _resolved(ctx: ToolContext, pairing: Pairing, units: Units, frames: list[int],
              compared: list[ComparedFinding]) -> list[ComparedFinding]:
    """The prior's candidates at the threshold on the slices compared that are not a current
    finding's lesion and have nothing at their place now."""
    current, prior = pairing.current, pairing.prior
    resolved: list[ComparedFinding] = []
    for frame in frames:
        pair = pairing(frame)
        back = pair.registration.transform.inverse()
        taken = [c.prior.center_px for c in compared if c.prior is not None and c.prior.frame == pair.prior_frame]
        prior_analysis = frame_analysis(ctx, prior, pair.prior_frame)
        candidates = [d for d in prior_analysis.detections if d.confidence >= ANOMALY_THRESHOLD][:PRIOR_CANDIDATES]
        for detection in candidates:
            radius = _radius(detection.box)
            if any(math.dist((detection.x, detection.y), spot) <= 2 * radius for spot in taken):
                continue
            carried = carry_to_prior(frame_analysis(ctx, current, frame).work, detection.box, back,
                                     current.pixel_spacing_mm(frame),
                                     contrast_here=lesion_contrast(prior_analysis.work, (detection.x, detection.y),
                                                                   radius))
            if carried.present:
                continue
            before = _size(ctx, prior, pair.prior_frame, (detection.x, detection.y), units,
                           per_px=1 / pair.registration.transform.scale)
            resolved.append(ComparedFinding(
                id=f"P{len(resolved) + 1}", status="resolved", current=None,
                prior=_there((detection.x, detection.y), pair.prior_frame, before, units),
                verification=carried.verification.status,
                note=f"A candidate of the prior's search ({detection.label}, confidence {detection.confidence:.2f}) "
                     f"with nothing at its place now, near ({carried.carried.center[0]:.0f}, "
                     f"{carried.carried.center[1]:.0f}) px of the current image."))
            taken.append((detection.x, detection.y))
    return resolved


# -- the answer -------------------------------------------------------------------------------


def _registration_summary(pairs: list[FramePair]) -> RegistrationSummary:
    """The registration of the first slice compared (the one of a single image), with every slice match."""
    first = pairs[0].registration.as_json()
    return RegistrationSummary(
        method=("slices matched by table position, then " if pairs[0].match else "") + str(first["method"]),
        transform=first["transform"], residual=float(first["residual"]), overlap=float(first["overlap"]),  # type: ignore[arg-type]
        slices=[SliceMatchSummary(current_frame=p.current_frame, prior_frame=p.prior_frame,
                                  distance_mm=round(p.match.distance_mm, 2)) for p in pairs if p.match])


def _summary(compared: list[ComparedFinding], interval: int | None) -> str:
    when = f"over {interval} days" if interval is not None else "over an interval not known (no study dates)"
    if not compared:
        return f"Compared with the prior {when}: no current finding to compare and no prior candidate gone."
    parts = []
    for item in compared:
        if item.change is not None:
            c = item.change
            size = (f"{round(c.mean_diameter_mm, 1) + 0.0:+.1f} mm" if c.mean_diameter_mm is not None
                    else f"{round(c.mean_diameter_pct) + 0.0:+.0f} %")
            parts.append(f"{item.id} {item.status} ({size} mean diameter)")
        else:
            parts.append(f"{item.id} {item.status}")
    return f"Compared with the prior {when}: " + "; ".join(parts) + "."


def _message(chosen: list[Finding], ids: list[str] | None, units: Units, reliability: str) -> str:
    notes = [reliability]
    if not chosen:
        notes.append("The current study has no finding to compare; run detect_anomalies first to look for new ones.")
    elif ids is None and chosen[0].confidence < ANOMALY_THRESHOLD:
        notes.append(f"No current finding reaches the anomaly threshold; the strongest candidate ({chosen[0].id}) "
                     "was compared.")
    if not units.mm:
        notes.append("Sizes are in the current image's pixels (a study has no pixel spacing); the 1.5 mm minimum "
                     "for growth cannot be applied.")
    return " ".join(notes)
