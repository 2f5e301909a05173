"""Candidate lesions: scale-space blob maxima inside the search mask, described by features.

Candidates are local maxima of the polarity-signed, scale-normalised LoG in space *and* scale,
found level by level, inside the organ mask. Taking maxima per level (not of the max over
scales) keeps a large lesion as a candidate even when fine texture inside it responds more
strongly at small scales. Each carries the ``Evidence`` at its scale; the detector ranks them
with ``tools.detection.scoring`` and then suppresses overlapping blobs, so the best-scored
blob of a lesion speaks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tools.detection.evidence import SQRT2, Evidence, ScaleSpace, measure

MAX_CANDIDATES = 30
#: Peaks kept per scale level (strongest first) before evidence is measured: enough that every
#: level contributes, few enough to keep the per-candidate measurements cheap.
PEAKS_PER_LEVEL = 15


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


def _max3x3(layer: np.ndarray) -> np.ndarray:
    """3×3 maximum filter by shifted maxima (separable); several times faster than ndimage's."""
    padded = np.pad(layer, 1, mode="edge")
    rows = np.maximum(np.maximum(padded[:-2], padded[1:-1]), padded[2:])
    return np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def _level_peaks(space: ScaleSpace, level: int) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of this level's spatial maxima that are also maxima across neighbouring scales.

    Looked for within the search mask's window only (``ScaleSpace.search_window``): it holds
    every pixel of the mask and its neighbours, or ends where the image does, so each maximum
    is the one the whole image gives, and the peaks come in the same (row-major) order.
    """
    rows, cols = space.search_window
    stack = space.stack[:, rows, cols]
    layer = stack[level]
    peaks = (layer == _max3x3(layer)) & space.work.search[rows, cols] & (layer > 0)
    if level > 0:
        peaks &= layer >= stack[level - 1]
    if level < len(space.sigmas) - 1:
        peaks &= layer >= stack[level + 1]
    ys, xs = np.nonzero(peaks)
    order = np.argsort(layer[ys, xs])[::-1][:PEAKS_PER_LEVEL]
    return ys[order] + rows.start, xs[order] + cols.start


def find_candidates(space: ScaleSpace) -> list[Candidate]:
    """Every scale-space peak (the strongest per level) with its evidence, unranked."""
    found: list[Candidate] = []
    for level, sigma in enumerate(space.sigmas):
        layer = space.stack[level]
        for yi, xi in zip(*_level_peaks(space, level)):
            x, y = _refine_subpixel(layer, int(xi), int(yi))
            found.append(Candidate(x=x, y=y, sigma=sigma, evidence=measure(space, x, y, sigma)))
    return found


def suppress_overlaps(ranked: Sequence[Candidate], limit: int = MAX_CANDIDATES) -> list[Candidate]:
    """Greedy non-maximum suppression over candidates sorted best first.

    A lower-ranked blob whose centre lies inside a better blob (or the better one's centre
    inside it) is the same lesion seen at another scale or a bump of its texture.
    """
    kept: list[Candidate] = []
    for candidate in ranked:
        if any(np.hypot(k.x - candidate.x, k.y - candidate.y) < 1.2 * max(k.radius, candidate.radius) for k in kept):
            continue
        kept.append(candidate)
        if len(kept) >= limit:
            break
    return kept


def ranked_candidates(space: ScaleSpace, rank: Callable[[Sequence[Candidate]], Sequence[float]],
                      limit: int = MAX_CANDIDATES) -> list[tuple[Candidate, float]]:
    """Candidates with their value under ``rank`` (which scores all of them at once, as a
    candidate's value may depend on the others), best first, overlaps suppressed."""
    found = find_candidates(space)
    values = {id(c): v for c, v in zip(found, rank(found), strict=True)}
    kept = suppress_overlaps(sorted(found, key=lambda c: -values[id(c)]), limit)
    return [(c, values[id(c)]) for c in kept]
