"""fit_gaussian: model each finding's intensity as a rotated 2-D Gaussian on a background.

The fit gives a sub-pixel centre, a size (FWHM along the major and minor axes, in px and in mm
when the study has pixel spacing), an orientation and a goodness of fit. The fit itself is
``tools.gaussian.fit.fit_gaussian_2d`` (on a bare array); this module is the tool that runs it on
the session's findings.

Coordinates follow ``tools.coordinates``: native pixels, x = column, y = row, the centre of the
top-left pixel at (0, 0), inclusive boxes. Angles are measured in those pixel coordinates, from
+x towards +y; because y points down the screen, a positive angle tilts the major axis down to
the right as displayed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, Field

from tools.context import ToolContext, ToolResult
from tools.detection.working import Polarity, expected_polarity
from tools.errors import InvalidCoordinatesError
from tools.findings import Finding, GaussianFit
from tools.gaussian.fit import fit_gaussian_2d
from tools.gaussian.uncertainty import PositionalUncertainty, positional_uncertainty
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
        description="FWHM along the major and minor axes in mm; None without pixel spacing or a converged fit."
    )
    size_px: tuple[float, float] | None = Field(
        description="FWHM along the major and minor axes in px; None without a converged fit."
    )
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
    """Measure findings by fitting a 2-D Gaussian to each: sub-pixel centre, size (FWHM along
    the major and minor axes, in mm when the study has pixel spacing, else px), orientation and
    goodness of fit.

    Bright peaks are fitted on CT, MR and radiographs, dark dips on ultrasound. The fits are
    stored on the findings (``gaussian``, ``size_mm``, ``size_px``); a fit that does not
    converge is reported with its reason and leaves the sizes unchanged.

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
                  else f"this study has no findings on frame {view.frame}")
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
        finding = ctx.findings.get(raw)
        if finding is None:
            known = ", ".join(sorted(ctx.findings, key=_id_number))
            listing = f"the findings are {known}." if known else "there are no findings yet."
            raise InvalidCoordinatesError(f"There is no finding {raw}; {listing}")
        if finding.study_id != study_id:
            raise InvalidCoordinatesError(
                f"Finding {raw} belongs to another open study ({finding.study_id}); pass its study_id to fit it."
            )
        chosen.append(finding)
    return chosen


def _id_number(finding_id: str) -> int:
    return int(finding_id[1:]) if finding_id[1:].isdigit() else 0


def _fit_finding(ctx: ToolContext, finding: Finding, study: Study, polarity: Polarity,
                 centres: Sequence[tuple[float, float]] | None) -> FindingFit:
    """Fit one finding, store the result on it, and describe it."""
    spacing = study.pixel_spacing_mm(finding.frame)
    try:
        values = study.physical(finding.frame)
        fit = fit_gaussian_2d(values, finding.bbox_px, polarity=polarity, spacing_mm=spacing)
    except InvalidCoordinatesError as error:
        raise InvalidCoordinatesError(f"Finding {finding.id}: {error.message}") from error
    size_px = (fit.fwhm_major_px, fit.fwhm_minor_px) if fit.converged else None
    size_mm = None
    if fit.converged and fit.fwhm_major_mm is not None and fit.fwhm_minor_mm is not None:
        size_mm = (fit.fwhm_major_mm, fit.fwhm_minor_mm)
    update: dict[str, object] = {"gaussian": fit}
    if fit.converged:
        update.update(size_px=size_px, size_mm=size_mm)
    ctx.findings[finding.id] = finding.model_copy(update=update)
    uncertainty = positional_uncertainty(centres, spacing) if centres else None
    return FindingFit(finding_id=finding.id, frame=finding.frame, gaussian=fit, size_mm=size_mm,
                      size_px=size_px, uncertainty=uncertainty)


def _summary(results: list[FindingFit]) -> str:
    parts = []
    for result in results:
        fit = result.gaussian
        if not fit.converged:
            parts.append(f"{result.finding_id}: no reliable fit ({fit.note})")
        elif result.size_mm is not None:
            parts.append(f"{result.finding_id}: {result.size_mm[0]:.1f} x {result.size_mm[1]:.1f} mm FWHM")
        else:
            parts.append(f"{result.finding_id}: {fit.fwhm_major_px:.1f} x {fit.fwhm_minor_px:.1f} px FWHM")
        if fit.converged and fit.note:
            parts[-1] += f" ({fit.note})"
    return f"Fitted {len(results)} finding{'s' if len(results) != 1 else ''}: " + "; ".join(parts) + "."
