"""Findings: what Loupe believes it sees, where, how sure, and how it was checked.

A finding has a stable id within a session (F1, F2, ...), a source (the vision model, the
classical detector, a trained detector model, or the clinician), a confidence in [0, 1], its verification result, its
Gaussian fit (a sub-pixel centre and the lesion's intensity profile) and its size, with who measured
it. Coordinates follow ``tools.coordinates`` (native pixels, pixel-centre origin, inclusive boxes).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tools.coordinates import BoxPx

FindingSource = Literal["vlm", "classical", "model", "clinician"]
VerificationStatus = Literal["confirmed", "adjusted", "rejected", "unverified"]
#: How a tool measured a size: the long and short axes of the segmented lesion, or the Gaussian
#: fit's full widths at half maximum (when the segmentation fails).
ToolSizeMethod = Literal["segmentation", "gaussian fwhm"]
#: Who measured a finding's size: a tool, by one of its methods, or the clinician.
SizeMethod = Literal["segmentation", "gaussian fwhm", "clinician"]
#: A line on the frame, ((x0, y0), (x1, y1)) in native pixels: a caliper.
CaliperLine = tuple[tuple[float, float], tuple[float, float]]

_FINDING_ID = re.compile(r"^F[1-9][0-9]*$")


def _valid_id(value: str) -> str:
    if not _FINDING_ID.match(value):
        raise ValueError(f"finding ids look like F1, F2, ...; got '{value}'")
    return value


FindingId = Annotated[str, AfterValidator(_valid_id)]


class Verification(BaseModel):
    """The verdict of ``verify_coordinates`` on one proposed location."""

    model_config = ConfigDict(frozen=True)

    status: VerificationStatus
    reasons: list[str] = Field(default_factory=list, description="Plain-language reasons for the verdict.")
    shift_px: float | None = Field(default=None, description="How far the centre moved, in px.")
    shift_mm: float | None = Field(default=None, description="How far the centre moved, in mm (None without spacing).")
    contrast_to_noise: float | None = Field(default=None, description="Lesion vs surrounding ring, in noise units.")
    evidence: float | None = Field(default=None, description="Combined image evidence in [0, 1].")


class GaussianFit(BaseModel):
    """A 2-D Gaussian model of a finding's intensity (background removed)."""

    model_config = ConfigDict(frozen=True)

    center_px: tuple[float, float] = Field(description="Sub-pixel centre (x, y).")
    sigma_major_px: float
    sigma_minor_px: float
    angle_deg: float = Field(description="Major axis angle from the +x (column) axis, degrees, in (-90, 90].")
    fwhm_major_px: float
    fwhm_minor_px: float
    fwhm_major_mm: float | None = None
    fwhm_minor_mm: float | None = None
    amplitude: float = Field(description="Peak above background, in the image's physical units.")
    background: float
    r_squared: float = Field(description="Goodness of fit in [0, 1] (1 = perfect).")
    converged: bool
    note: str | None = Field(default=None, description="Why the fit is degenerate, if it is.")


class SizeAxes(BaseModel):
    """The lines a size was measured along, for drawing calipers: the long axis and the short
    axis perpendicular to it (native pixels)."""

    model_config = ConfigDict(frozen=True)

    long_axis: CaliperLine
    short_axis: CaliperLine | None = None


class Finding(BaseModel):
    """One candidate anomaly on one frame of one study."""

    id: FindingId
    study_id: str
    label: str = Field(description="Short description, e.g. 'focal hyperdense nodule'.")
    frame: int = Field(ge=0, description="Frame / slice index the finding is on.")
    center_px: tuple[float, float] = Field(description="Centre (x, y) in native pixels.")
    bbox_px: BoxPx
    confidence: float = Field(ge=0.0, le=1.0)
    source: FindingSource
    verification: Verification | None = None
    gaussian: GaussianFit | None = None
    size_mm: tuple[float, float] | None = Field(
        default=None, description="Long and short axis in mm (None when spacing is unknown)."
    )
    size_px: tuple[float, float] | None = Field(default=None, description="Long and short axis in px.")
    size_method: SizeMethod | None = Field(
        default=None, description=("Who measured the size: 'segmentation' (the long and short axes of the segmented "
                                   "lesion), 'gaussian fwhm' (the Gaussian fit's widths, when the segmentation "
                                   "failed) or 'clinician'; None for a size of unknown origin."))
    size_axes: SizeAxes | None = Field(default=None, description="Where the size was measured, when known.")
