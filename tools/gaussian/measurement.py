"""Small measurement helpers shared by the tools: Gaussian widths and lengths in mm."""

from __future__ import annotations

import math

#: FWHM of a Gaussian in units of its sigma: 2·sqrt(2·ln 2).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def mm_per_px(angle_deg: float, spacing_mm: tuple[float, float]) -> float:
    """Length in mm of one pixel step along ``angle_deg`` from +x.

    ``spacing_mm`` is (row, column) as in DICOM PixelSpacing, so anisotropic pixels give
    different lengths along x and y.
    """
    dy, dx = spacing_mm
    theta = math.radians(angle_deg)
    return math.hypot(math.cos(theta) * dx, math.sin(theta) * dy)
