"""What a comparison with a prior found, as data: what ``compare_with_prior`` answers (the
model sees it: only the interval in days, never a date) and what the session keeps of it for
the report (the prior's date, for the clinician; which of its slices were used, for the SR).

Sizes are long and short-axis diameters in mm, or in the current image's pixels where a study
has no pixel spacing (``unit``); a prior's size in pixels is given in the current image's
pixels too (divided by the registration's scale), so that the two compare.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: ``present``: in both studies, but not measurable in one of them, so its change is not given.
ComparisonStatus = Literal["new", "grown", "shrunk", "stable", "resolved", "present"]


class LesionThere(BaseModel):
    """A finding's lesion in one of the two studies."""

    model_config = ConfigDict(frozen=True)

    center_px: tuple[float, float] = Field(description="Centre (x, y) in that study's native pixels.")
    frame: int = Field(ge=0, description="Frame (slice, 0-based) of that study.")
    size_mm: tuple[float, float] | None = Field(
        default=None, description="Long and short-axis diameter in mm; None without pixel spacing or a measurement.")
    size_px: tuple[float, float] | None = Field(
        default=None, description="Long and short-axis diameter in the current image's pixels; None without a measurement.")
    uncertainty: float | None = Field(
        default=None, description="How sure the mean diameter is, in the size's unit (its spread when re-measured "
                                  "from centres one working pixel away).")

    def size_text(self) -> str:
        """'18.9 × 15.6 mm', '12.0 × 9.0 px' or 'not measured'."""
        axes, unit = (self.size_mm, "mm") if self.size_mm is not None else (self.size_px, "px")
        return f"{axes[0]:.1f} × {axes[1]:.1f} {unit}" if axes is not None else "not measured"


class FindingChange(BaseModel):
    """How a finding seen in both studies changed, prior to current."""

    model_config = ConfigDict(frozen=True)

    unit: Literal["mm", "px"]
    long_axis: float = Field(description="Change in the long-axis diameter.")
    short_axis: float = Field(description="Change in the short-axis diameter.")
    mean_diameter_mm: float | None = Field(description="Change in mean diameter, mm (None without pixel spacing).")
    mean_diameter_pct: float
    area_pct: float
    volume_pct: float | None = Field(
        default=None, description="Change in volume (an ellipsoid on the two axes), % — for a CT/MR series only.")
    doubling_time_days: float | None = Field(
        default=None, description="Volume doubling time for a CT nodule that grew, from the interval.")
    threshold: float = Field(description="The change in mean diameter that counts as growth or shrinkage here.")


class ComparedFinding(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(description="The current finding's id (F1, ...), or P1, P2, ... for a prior finding "
                                "with nothing at its place now.")
    status: ComparisonStatus
    current: LesionThere | None
    prior: LesionThere | None
    change: FindingChange | None = None
    verification: str | None = Field(
        default=None, description="The verification of the carried place in the other study (confirmed, "
                                  "adjusted, rejected, unverified).")
    note: str = ""


class SliceMatchSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    current_frame: int
    prior_frame: int
    distance_mm: float = Field(description="How far the prior slice lies from the current one's table position.")


class RegistrationSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    method: str
    transform: dict[str, object] = Field(description="Current → prior: scale, rotation_deg, shift_px, matrix.")
    residual: float = Field(description="1 − NCC of the two images' structure after registration (0: identical).")
    overlap: float
    slices: list[SliceMatchSummary] = Field(
        default_factory=list, description="For series: which prior slice was compared with which current one.")


class CompareWithPriorOutput(BaseModel):
    """What ``compare_with_prior`` reports."""

    study_id: str
    prior_study_id: str
    interval_days: int | None = Field(description="Days from the prior to the current study; None when a date is unknown.")
    registration: RegistrationSummary
    findings: list[ComparedFinding]
    summary: str = Field(description="One line: what changed.")
    message: str = Field(default="", description="What the clinician should know about this comparison.")


class PriorComparison(BaseModel):
    """A comparison as the session keeps it (never sent to a model as such)."""

    output: CompareWithPriorOutput
    #: The prior's Study Date (YYYY-MM-DD) for the clinician's report; identifying: never sent to a model.
    prior_date: str | None = None
    prior_modality: str | None = None
    #: Frames of the prior used for the comparison (the measurement SR references their instances).
    prior_frames: list[int] = Field(default_factory=list)
