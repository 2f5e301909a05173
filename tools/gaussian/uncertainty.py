"""Where a finding may be: a Gaussian over the centres of repeated proposals of one finding
(``positional_uncertainty``), and all fitted findings as one probability map in [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tools.findings import GaussianFit
from tools.gaussian.fit import half_turn
from tools.gaussian.measurement import mm_per_px

POSITION_FLOOR_PX2 = 0.5


class PositionalUncertainty(BaseModel):
    """A 2-D Gaussian over the centres of several proposals (samples) of one finding."""

    model_config = ConfigDict(frozen=True)

    center_px: tuple[float, float] = Field(description="Mean centre (x, y) of the samples, px.")
    covariance_px2: list[list[float]] = Field(
        description="2x2 covariance of the centres [[xx, xy], [xy, yy]], px^2 (floored, never singular)."
    )
    sigma_major_px: float = Field(description="Standard deviation along the direction of largest spread, px.")
    sigma_minor_px: float = Field(description="Standard deviation across it, px.")
    angle_deg: float = Field(description="Direction of largest spread from the +x axis, degrees, in (-90, 90].")
    n_samples: int = Field(ge=2)
    sigma_major_mm: float | None = Field(default=None, description="sigma_major_px in mm (None without spacing).")
    sigma_minor_mm: float | None = Field(default=None, description="sigma_minor_px in mm (None without spacing).")


def positional_uncertainty(centers: Sequence[tuple[float, float]],
                           spacing_mm: tuple[float, float] | None = None) -> PositionalUncertainty | None:
    """How consistently repeated proposals placed one finding: mean and covariance of centres.

    Parameters
    ----------
    centers:
        ``(x, y)`` centres in native px; non-finite ones are ignored.
    spacing_mm:
        ``(row, column)`` pixel spacing in mm, for the spread in mm.

    Returns
    -------
    PositionalUncertainty or None
        None with fewer than two usable centres. The covariance's eigenvalues are floored at
        0.5 px^2 so that two points, collinear points or identical points still give a finite,
        invertible Gaussian (a proposal is never more precise than about a pixel).
    """
    points = np.asarray(list(centers), dtype=np.float64).reshape(-1, 2)
    points = points[np.all(np.isfinite(points), axis=1)]
    if len(points) < 2:
        return None
    eigvals, eigvecs = np.linalg.eigh(np.cov(points, rowvar=False))
    eigvals = np.maximum(eigvals, POSITION_FLOOR_PX2)
    covariance = eigvecs @ np.diag(eigvals) @ eigvecs.T
    major, minor = math.sqrt(eigvals[1]), math.sqrt(eigvals[0])
    angle = half_turn(math.degrees(math.atan2(eigvecs[1, 1], eigvecs[0, 1])))
    major_mm = minor_mm = None
    if spacing_mm is not None:
        major_mm = major * mm_per_px(angle, spacing_mm)
        minor_mm = minor * mm_per_px(angle + 90.0, spacing_mm)
    return PositionalUncertainty(
        center_px=(float(points[:, 0].mean()), float(points[:, 1].mean())),
        covariance_px2=[[float(v) for v in row] for row in covariance],
        sigma_major_px=major, sigma_minor_px=minor, angle_deg=angle, n_samples=len(points),
        sigma_major_mm=major_mm, sigma_minor_mm=minor_mm,
    )


# -- probability map -----------------------------------------------------------------------------
PROBABILITY_REACH_SIGMAS = 4.0


def probability_map(shape: tuple[int, int], fits: Sequence[GaussianFit],
                    weights: Sequence[float]) -> np.ndarray:
    """All fitted findings as one map: where, and how likely, there is something.

    Each fit's Gaussian is normalised to a peak of 1 and scaled by its weight (the finding's
    confidence, clipped to [0, 1]); the findings combine as ``1 - prod(1 - w * g)``, so
    overlapping findings reinforce each other without exceeding 1. Each Gaussian is
    evaluated only within 4 sigma of its centre (beyond, it is below 0.04 %).

    Parameters
    ----------
    shape:
        ``(rows, columns)`` of the map (the frame's shape).
    fits:
        Gaussian fits; callers decide whether to pass unconverged ones.
    weights:
        One weight per fit.

    Returns
    -------
    numpy.ndarray
        float32 ``(rows, columns)`` with values in [0, 1].
    """
    rows, columns = (int(n) for n in shape)
    if rows <= 0 or columns <= 0:
        raise ValueError(f"probability_map needs a positive shape, got {shape}")
    if len(fits) != len(weights):
        raise ValueError(f"probability_map got {len(fits)} fits but {len(weights)} weights")
    absent = np.ones((rows, columns), dtype=np.float32)  # probability that nothing is there
    for fit, weight in zip(fits, weights):
        w = float(np.clip(weight, 0.0, 1.0)) if math.isfinite(weight) else 0.0
        if w > 0:
            _multiply_absence(absent, fit, w)
    return np.clip(1.0 - absent, 0.0, 1.0).astype(np.float32, copy=False)


def _multiply_absence(absent: np.ndarray, fit: GaussianFit, weight: float) -> None:
    accumulate_gaussian(absent, fit.center_px, fit.sigma_major_px, fit.sigma_minor_px, fit.angle_deg, weight)


def accumulate_gaussian(absent: np.ndarray, center: tuple[float, float], sigma_major: float, sigma_minor: float,
                        angle_deg: float, weight: float) -> None:
    """absent *= 1 - weight * g for a rotated Gaussian g (peak 1), over its 4-sigma bounding box.

    ``absent`` is Π(1 - w·g) so far; the probability map is ``1 - absent``.
    """
    cx, cy = center
    theta = math.radians(angle_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    a, b = max(sigma_major, 1e-3) ** 2, max(sigma_minor, 1e-3) ** 2
    sxx, syy, sxy = a * cos * cos + b * sin * sin, a * sin * sin + b * cos * cos, (a - b) * sin * cos
    if not all(math.isfinite(v) for v in (cx, cy, sxx, syy, sxy)):
        return
    reach_x = PROBABILITY_REACH_SIGMAS * math.sqrt(sxx)
    reach_y = PROBABILITY_REACH_SIGMAS * math.sqrt(syy)
    rows, columns = absent.shape
    x0, x1 = max(0, math.floor(cx - reach_x)), min(columns - 1, math.ceil(cx + reach_x))
    y0, y1 = max(0, math.floor(cy - reach_y)), min(rows - 1, math.ceil(cy + reach_y))
    if x0 > x1 or y0 > y1:
        return
    det = sxx * syy - sxy * sxy
    dx = (np.arange(x0, x1 + 1, dtype=np.float32) - np.float32(cx))[None, :]
    dy = (np.arange(y0, y1 + 1, dtype=np.float32) - np.float32(cy))[:, None]
    # Inverse covariance applied directly: q = (syy dx^2 - 2 sxy dx dy + sxx dy^2) / det.
    q = (np.float32(syy / det) * dx * dx - np.float32(2 * sxy / det) * dx * dy
         + np.float32(sxx / det) * dy * dy)
    absent[y0:y1 + 1, x0:x1 + 1] *= 1.0 - np.float32(weight) * np.exp(-0.5 * q)
