"""How a finding is drawn and measured on the image: its ellipse (Gaussian fit) or box, its
size text, calipers, scale bars and masks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tools.findings import CaliperLine, Finding, GaussianFit
from tools.gaussian.measurement import mm_per_px

Spacing = tuple[float, float] | None  # (row, column) mm
_NICE_BAR_MM = tuple(round(step * 10.0**power, 3) for power in range(-1, 4) for step in (1, 2, 3, 5))


@dataclass(frozen=True)
class LesionShape:
    """Where a finding is drawn: centre, full axis lengths in px, major-axis angle.

    ``angle_deg`` is measured from the +x (column) axis towards +y (down the rows), as in
    ``GaussianFit``; ``ellipse`` is False for a finding drawn as its box.
    """

    x: float
    y: float
    major_px: float
    minor_px: float
    angle_deg: float
    ellipse: bool

    @property
    def direction(self) -> tuple[float, float]:
        angle = math.radians(self.angle_deg)
        return math.cos(angle), math.sin(angle)

    def half_extent(self) -> tuple[float, float]:
        """Half width and half height of the axis-aligned box around the shape."""
        a, b = self.major_px / 2.0, self.minor_px / 2.0
        c, s = (abs(v) for v in self.direction)
        if self.ellipse:
            return math.hypot(a * c, b * s), math.hypot(a * s, b * c)
        return a * c + b * s, a * s + b * c


def _usable(fit: GaussianFit | None) -> bool:
    if fit is None:
        return False
    values = (*fit.center_px, fit.fwhm_major_px, fit.fwhm_minor_px, fit.angle_deg)
    return all(math.isfinite(v) for v in values) and fit.fwhm_major_px > 0 and fit.fwhm_minor_px > 0


def lesion_shape(finding: Finding) -> LesionShape:
    """The ellipse of the finding's Gaussian fit (FWHM axes), else its box."""
    fit = finding.gaussian
    if _usable(fit):
        return LesionShape(fit.center_px[0], fit.center_px[1], max(fit.fwhm_major_px, 1.0),
                           max(fit.fwhm_minor_px, 1.0), fit.angle_deg, True)
    box = finding.bbox_px
    x, y = box.center
    if box.width >= box.height:
        return LesionShape(x, y, box.width, box.height, 0.0, False)
    return LesionShape(x, y, box.height, box.width, 90.0, False)


def status_of(finding: Finding) -> str:
    """The verification status, 'unverified' when the finding was never checked."""
    return finding.verification.status if finding.verification is not None else "unverified"


def _format_size(major: float, minor: float, unit: str) -> str:
    digits = 0 if unit == "px" or major >= 100 else 1
    return f"{major:.{digits}f} × {minor:.{digits}f} {unit}"


def size_text(finding: Finding, spacing_mm: Spacing) -> str | None:
    """'12.3 × 8.1 mm' (or px without spacing); None when the finding has no size."""
    if finding.size_mm is not None:
        return _format_size(*finding.size_mm, "mm")
    if finding.size_px is None:
        return None
    if spacing_mm is None:
        return _format_size(*finding.size_px, "px")
    angle = lesion_shape(finding).angle_deg
    return _format_size(finding.size_px[0] * mm_per_px(angle, spacing_mm),
                        finding.size_px[1] * mm_per_px(angle + 90.0, spacing_mm), "mm")


def caliper_px(finding: Finding, shape: LesionShape, spacing_mm: Spacing) -> float | None:
    """The measured major diameter in px, which the calipers span."""
    if finding.size_px is not None:
        return finding.size_px[0]
    if finding.size_mm is not None and spacing_mm is not None:
        return finding.size_mm[0] / mm_per_px(shape.angle_deg, spacing_mm)
    return shape.major_px if finding.size_mm is not None else None


def caliper_lines(finding: Finding, shape: LesionShape, spacing_mm: Spacing) -> list[CaliperLine]:
    """The lines the calipers are drawn on: where the size was measured (the long axis, then the
    short axis) when the finding says; else the measured major diameter along the shape's major
    axis, through its centre; none for a finding without a size."""
    if finding.size_axes is not None:
        axes = finding.size_axes
        return [axes.long_axis] + ([axes.short_axis] if axes.short_axis is not None else [])
    length = caliper_px(finding, shape, spacing_mm)
    if length is None:
        return []
    c, s = shape.direction
    half = length / 2.0
    return [((shape.x - half * c, shape.y - half * s), (shape.x + half * c, shape.y + half * s))]


def scale_bar_mm(view_width_px: float, column_spacing_mm: float) -> float:
    """A round length (1, 2, 3 or 5 × 10^n mm) closest to a fifth of the view's width.

    With these steps the bar always covers 14–28 % of the width (15–25 % in most cases).
    """
    width_mm = view_width_px * column_spacing_mm
    return min(_NICE_BAR_MM, key=lambda mm: abs(math.log(mm / (0.2 * width_mm))))


def length_label(mm: float) -> str:
    return f"{mm:.3g} mm" if mm < 10 else f"{mm / 10:.3g} cm"


def _rotated_grid(shape: LesionShape, x0: int, x1: int, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets from the shape's centre along its major (u) and minor (v) axes."""
    c, s = shape.direction
    dx = np.arange(x0, x1, dtype=np.float64)[None, :] - shape.x
    dy = np.arange(y0, y1, dtype=np.float64)[:, None] - shape.y
    return dx * c + dy * s, -dx * s + dy * c


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(value, high))


# == masks ======================================================================================
def lesion_masks(image_shape: tuple[int, ...],
                 finding: Finding) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Lesion and surrounding-ring masks on a local window of the image.

    The lesion is the FWHM ellipse (or the box); the ring is the shape scaled 2× (at least 3 px
    wider on each side) minus the lesion. Returns the window's slices and the two masks.
    """
    h, w = image_shape[:2]
    shape = lesion_shape(finding)
    outer = LesionShape(shape.x, shape.y, max(2 * shape.major_px, shape.major_px + 6),
                        max(2 * shape.minor_px, shape.minor_px + 6), shape.angle_deg, shape.ellipse)
    hx, hy = outer.half_extent()
    # At least one pixel, even for a finding that lies (partly) outside the frame.
    x0 = int(clamp(math.floor(shape.x - hx), 0, w - 1))
    y0 = int(clamp(math.floor(shape.y - hy), 0, h - 1))
    x1 = int(clamp(math.ceil(shape.x + hx) + 1, x0 + 1, w))
    y1 = int(clamp(math.ceil(shape.y + hy) + 1, y0 + 1, h))
    u, v = _rotated_grid(shape, x0, x1, y0, y1)
    lesion = _inside(u, v, shape)
    if not lesion.any():  # a sub-pixel shape still has the pixel under its centre
        row, col = clamp(round(shape.y), y0, y1 - 1) - y0, clamp(round(shape.x), x0, x1 - 1) - x0
        lesion[int(row), int(col)] = True
    ring = _inside(u, v, outer) & ~lesion
    return (slice(y0, y1), slice(x0, x1)), lesion, ring


def _inside(u: np.ndarray, v: np.ndarray, shape: LesionShape) -> np.ndarray:
    a, b = shape.major_px / 2.0, shape.minor_px / 2.0
    if shape.ellipse:
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return (np.abs(u) <= a) & (np.abs(v) <= b)
