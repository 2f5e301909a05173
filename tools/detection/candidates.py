"""Candidate lesions: multi-scale blob maxima inside the search mask, described by features.

Candidates are local maxima of the polarity-signed, scale-normalised LoG (max over scales),
inside the organ mask, with non-maximum suppression between overlapping blobs. Each carries
the ``Evidence`` at its best scale; ``tools.detection.scoring`` turns that into a confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from tools.detection.evidence import SQRT2, Evidence, ScaleSpace, measure

MAX_CANDIDATES = 30


@dataclass(frozen=True)
class Candidate:
    """A blob in working-image pixels."""

    x: float
    y: float
    sigma: float
    evidence: Evidence

    @property
    def radius(self) -> float:
        return self.sigma * SQRT2


def _refine_subpixel(response: np.ndarray, xi: int, yi: int) -> tuple[float, float]:
    """Parabolic peak interpolation in x and y (stays within ±0.5 px)."""
    def offset(minus: float, centre: float, plus: float) -> float:
        denominator = minus - 2 * centre + plus
        return 0.0 if denominator >= 0 else float(np.clip(0.5 * (minus - plus) / denominator, -0.5, 0.5))

    rows, cols = response.shape
    dx = offset(response[yi, xi - 1], response[yi, xi], response[yi, xi + 1]) if 0 < xi < cols - 1 else 0.0
    dy = offset(response[yi - 1, xi], response[yi, xi], response[yi + 1, xi]) if 0 < yi < rows - 1 else 0.0
    return xi + dx, yi + dy


def find_candidates(space: ScaleSpace, limit: int = MAX_CANDIDATES) -> list[Candidate]:
    """Local maxima of the best-scale response inside the search mask, strongest first."""
    response, level = space.best
    search = space.work.search
    footprint = max(3, int(round(space.sigmas[0] * 2)) | 1)
    peaks = (response == ndi.maximum_filter(response, size=footprint)) & search & (response > 0)
    ys, xs = np.nonzero(peaks)
    order = np.argsort(response[ys, xs])[::-1]
    chosen: list[Candidate] = []
    for index in order:
        xi, yi = int(xs[index]), int(ys[index])
        sigma = space.sigmas[int(level[yi, xi])]
        # A weaker peak inside a stronger blob is part of it, not a second lesion.
        if any(np.hypot(c.x - xi, c.y - yi) < 1.2 * max(c.radius, sigma * SQRT2) for c in chosen):
            continue
        x, y = _refine_subpixel(response, xi, yi)
        chosen.append(Candidate(x=x, y=y, sigma=sigma, evidence=measure(space, x, y, sigma)))
        if len(chosen) >= limit * 2:
            break
    return chosen[: limit * 2]
