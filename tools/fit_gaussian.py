"""fit_gaussian: measure each finding as a reader would, and model its intensity as a rotated 2-D
Gaussian on a background.

The size is the lesion's long axis and the short axis perpendicular to it (RECIST), from a
segmentation of the lesion at the finding's centre (``tools.measure``), in mm when the study has
pixel spacing. The Gaussian gives a sub-pixel centre, an orientation, a goodness of fit and the
full widths at half maximum (kept in ``gaussian``); its widths are the size only when the
segmentation fails (``size_method`` says which). A size the clinician set is never replaced. The
fit itself is ``tools.gaussian.fit.fit_gaussian_2d`` (on a bare array); this module is the tool
that runs both on the session's findings.

Coordinates follow ``tools.coordinates``: native pixels, x = column, y = row, the centre of the
top-left pixel at (0, 0), inclusive boxes. Angles are measured in those pixel coordinates, from
+x towards +y; because y points down the screen, a positive angle tilts the major axis down to
the right as displayed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from tools.context import ToolContext, ToolResult
from tools.detection.detector import frame_analysis
from tools.detection.working import Polarity, expected_polarity
from tools.errors import InvalidCoordinatesError
from tools.findings import Finding, GaussianFit, SizeAxes, SizeMethod
from tools.gaussian.fit import fit_gaussian_2d
from tools.gaussian.uncertainty import PositionalUncertainty, positional_uncertainty
from tools.measure.diameters import Diameters
from tools.measure.segmentation import measure_lesion, settings_for
from tools.study import Study


class FitGaussianInput(BaseModel):
    """Arguments of ``fit_gaussian``."""

    finding_ids: list[str] | None = Field(
        default=None,
        description=(
            "Findings to fit, by id, e.g. ['F1', 'F3']. Omit to fit every finding of the study "
            "on the frame being shown."
        ),
    )
    study_id: str | None = Field(
        default=None, description="Which open study the findings belong to; default: the current one."
    )


class FindingFit(BaseModel):
    """The fit of one finding."""

    finding_id: str
    frame: int = Field(description="Frame (0-based) the finding is on.")
    gaussian: GaussianFit
    size_mm: tuple[float, float] | None = Field(
        description="Long and short axis in mm; None without pixel spacing or a measurement."
    )
    size_px: tuple[float, float] | None = Field(
        description="Long and short axis in px; None without a measurement."
    )
    size_method: SizeMethod | None = Field(
        default=None, description=("'segmentation' (the segmented lesion's axes), 'gaussian fwhm' (the fit's widths, "
                                   "when the segmentation failed), 'clinician' (the clinician's size, kept), or None "
                                   "when nothing was measured."))
    uncertainty: PositionalUncertainty | None = Field(
        default=None, description="Spread of the centres of repeated proposals of this finding, if several."
    )


class FitGaussianOutput(BaseModel):
    """What ``fit_gaussian`` reports."""

    study_id: str
    results: list[FindingFit]
    message: str = Field(description="One-line summary, or why there was nothing to fit.")


def fit_gaussian(ctx: ToolContext, args: FitGaussianInput, *,
                 samples: Mapping[str, Sequence[tuple[float, float]]] | None = None) -> ToolResult:
    """Measure findings as a reader would: the long axis and the perpendicular short axis of the
    lesion segmented at each finding's centre (in mm when the study has pixel spacing, else px),
    and a 2-D Gaussian fit for its sub-pixel centre, orientation and goodness of fit.

    The Gaussian fits bright peaks on CT, MR and radiographs, dark dips on ultrasound; its full
    widths at half maximum are kept in ``gaussian`` and are the size only where the segmentation
    fails (``size_method`` "gaussian fwhm"). Sizes are stored on the findings (``size_mm``,
    ``size_px``, ``size_method``, ``size_axes``); when neither measures, the sizes are left
    unchanged and the reason is reported. A size the clinician set is kept.

    Parameters
    ----------
    ctx:
        The session's context; ``ctx.findings`` is updated in place.
    args:
        Which findings, on which study.
    samples:
        Centres ``(x, y)`` of repeated proposals per finding id; by default those the vision
        model produced (``ctx.finding_samples``). With two or more, the result carries a
        ``PositionalUncertainty``.

    Raises
    ------
    NoStudyOpenError
        No study is open, or ``study_id`` is unknown.
    InvalidCoordinatesError
        An unknown finding id, a finding of another study, or a box outside the image.
    """
    view = ctx.view(args.study_id)
    study = view.study
    findings = _selected(ctx, study.id, view.frame, args.finding_ids)
    if not findings:
        reason = ("no finding ids were given" if args.finding_ids is not None
                  else f"no finding has been made on frame {view.frame + 1} of this study")
        return ToolResult(output=FitGaussianOutput(study_id=study.id, results=[],
                                                   message=f"There is nothing to fit: {reason}."))
    polarity = expected_polarity(study.modality)
    if study.safe.photometric == "MONOCHROME1":  # dense tissue is stored low: a bright lesion is low
        polarity = "dark" if polarity == "bright" else "bright"
    samples = samples or ctx.finding_samples
    results = [_fit_finding(ctx, finding, study, polarity, samples.get(finding.id)) for finding in findings]
    return ToolResult(output=FitGaussianOutput(study_id=study.id, results=results, message=_summary(results)))


def _selected(ctx: ToolContext, study_id: str, frame: int, finding_ids: list[str] | None) -> list[Finding]:
    """The requested findings (in the order asked), or all of the study's on ``frame``."""
    if finding_ids is None:
        return [f for f in ctx.study_findings(study_id) if f.frame == frame]
    chosen: list[Finding] = []
    for raw in dict.fromkeys(fid.strip().upper() for fid in finding_ids):
        # An id of another study (or retired) is named as such, never substituted by another finding.
        if (elsewhere := ctx.finding_not_here(raw, study_id)) is not None:
            raise InvalidCoordinatesError(elsewhere)
        finding = ctx.findings[raw]
        chosen.append(finding)
    return chosen



def _fit_finding(ctx: ToolContext, finding: Finding, study: Study, polarity: Polarity,
                 centres: Sequence[tuple[float, float]] | None) -> FindingFit:
    """Fit and measure one finding, store the result on it, and describe it."""
    spacing = study.pixel_spacing_mm(finding.frame)
    try:
        values = study.physical(finding.frame)
        fit = fit_gaussian_2d(values, finding.bbox_px, polarity=polarity, spacing_mm=spacing)
    except InvalidCoordinatesError as error:
        raise InvalidCoordinatesError(f"Finding {finding.id}: {error.message}") from error
    update: dict[str, object] = {"gaussian": fit}
    if finding.size_method == "clinician":  # the clinician's own measurement stands
        size = _Size(finding.size_mm, finding.size_px, "clinician", finding.size_axes)
    else:
        work = frame_analysis(ctx, study, finding.frame).work
        size = _measured(measure_lesion(work, finding.center_px, spacing, settings_for(study.modality)), fit)
        if size.method is not None:
            update.update(size_mm=size.mm, size_px=size.px, size_method=size.method, size_axes=size.axes)
    ctx.findings[finding.id] = finding.model_copy(update=update)
    uncertainty = positional_uncertainty(centres, spacing) if centres else None
    return FindingFit(finding_id=finding.id, frame=finding.frame, gaussian=fit, size_mm=size.mm,
                      size_px=size.px, size_method=size.method, uncertainty=uncertainty)


@dataclass(frozen=True)
class _Size:
    mm: tuple[float, float] | None
    px: tuple[float, float] | None
    method: SizeMethod | None
    axes: SizeAxes | None = None


def _measured(diameters: Diameters | None, fit: GaussianFit) -> _Size:
    """The segmentation's axes; else the converged Gaussian's FWHM; else no size."""
    if diameters is not None:
        mm = (diameters.long, diameters.short) if diameters.unit == "mm" else None
        axes = SizeAxes(long_axis=diameters.long_axis, short_axis=diameters.short_axis)
        return _Size(mm, (diameters.long_px, diameters.short_px), "segmentation", axes)
    if not fit.converged:
        return _Size(None, None, None)
    mm = None
    if fit.fwhm_major_mm is not None and fit.fwhm_minor_mm is not None:
        mm = (fit.fwhm_major_mm, fit.fwhm_minor_mm)
    return _Size(mm, (fit.fwhm_major_px, fit.fwhm_minor_px), "gaussian fwhm")


_MEASURED_BY = {"segmentation": "long x short axis of the segmented lesion",
                "gaussian fwhm": "Gaussian FWHM; the lesion could not be segmented",
                "clinician": "the clinician's measurement, kept"}


def _summary(results: list[FindingFit]) -> str:
    parts = []
    for result in results:
        fit = result.gaussian
        if result.size_mm is not None:
            size = f"{result.size_mm[0]:.1f} x {result.size_mm[1]:.1f} mm"
        elif result.size_px is not None:
            size = f"{result.size_px[0]:.1f} x {result.size_px[1]:.1f} px"
        else:
            size = None
        if size is None:
            parts.append(f"{result.finding_id}: not measured (no lesion could be segmented at its centre, and "
                         f"the Gaussian fit failed: {fit.note})")
        else:
            parts.append(f"{result.finding_id}: {size} ({_MEASURED_BY[result.size_method]})")
        if fit.converged and fit.note:
            parts[-1] += f"; Gaussian fit: {fit.note}"
        elif not fit.converged and size is not None:
            parts[-1] += f"; no reliable Gaussian fit ({fit.note})"
    return f"Measured {len(results)} finding{'s' if len(results) != 1 else ''}: " + "; ".join(parts) + "."
