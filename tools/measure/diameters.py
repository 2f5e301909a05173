"""A lesion's diameters from its mask, as a RECIST reader measures them.

The long axis is the longest diameter: the farthest pair of points of the lesion's outline (the
maximum Feret diameter). The short axis is the longest extent perpendicular to it: across every
line perpendicular to the long axis, the distance between the outline's first and last
crossings, the longest of them. Both are measured in mm with the pixel spacing (rows and columns
may differ), or in px without one, and come with their end points in native pixels, for drawing
calipers.

The outline is the mask's iso-contour at one half (``skimage.measure.find_contours``), which runs
along the pixels' outer edges: a run of N pixels measures N px, as a caliper laid on the screen
from edge to edge would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import find_contours

Point = tuple[float, float]
Line = tuple[Point, Point]

#: Perpendicular lines tried per px of long axis when looking for the short axis.
_SHORT_AXIS_SAMPLES_PER_PX = 2


@dataclass(frozen=True)
class Diameters:
    """The long and short axes of a lesion: lengths (mm with spacing, else px) and end points.

    ``long_px``/``short_px`` are in native px along each line (with anisotropic pixels they are
    not ``long``/``short`` divided by one spacing); ``unit`` says what ``long``/``short`` are in.
    """

    long: float
    short: float
    unit: str  # "mm" or "px"
    long_px: float
    short_px: float
    #: ((x0, y0), (x1, y1)) in native pixel-centre coordinates.
    long_axis: Line
    short_axis: Line


def lesion_diameters(mask: np.ndarray, *, spacing_mm: tuple[float, float] | None = None,
                     scale: float = 1.0, offset: tuple[int, int] = (0, 0)) -> Diameters | None:
    """The long axis and the perpendicular short axis of the lesion in ``mask``.

    Parameters
    ----------
    mask:
        2-D boolean array: the lesion (one connected region; holes do not matter).
    spacing_mm:
        ``(row, column)`` pixel spacing of the native image, in mm; None measures in px.
    scale:
        Mask pixels per native pixel (a mask made on a reduced working image has ``scale`` < 1,
        as ``WorkingImage.scale``).
    offset:
        ``(column, row)`` of the mask's first pixel in the image it was cut from (at ``scale``).

    Returns
    -------
    Diameters or None
        None for an empty mask, or one without width.
    """
    outline = _outline(mask)
    if outline is None:
        return None
    native = (outline + np.asarray(offset, dtype=np.float64) + 0.5) / scale - 0.5  # as WorkingImage.to_native
    row_mm, column_mm = spacing_mm if spacing_mm is not None else (1.0, 1.0)
    # Lengths are measured in physical space (mm, or px when there is no spacing).
    physical = native * np.array([column_mm, row_mm])
    start, end = _farthest_pair(physical)
    long_vector = physical[end] - physical[start]
    long = float(np.hypot(*long_vector))
    if long <= 0.0:
        return None
    along = long_vector / long
    across = np.array([-along[1], along[0]])
    short, short_ends = _widest_perpendicular(physical, physical[start], along, across,
                                              samples=max(8, math.ceil(long / min(row_mm, column_mm)
                                                                       * _SHORT_AXIS_SAMPLES_PER_PX)))
    if short <= 0.0:  # no width across the long axis: a line of pixels, not a lesion to measure
        return None
    to_native = np.array([1.0 / column_mm, 1.0 / row_mm])
    long_line = _line(physical[start] * to_native, physical[end] * to_native)
    short_line = _line(short_ends[0] * to_native, short_ends[1] * to_native)
    return Diameters(long=long, short=short, unit="mm" if spacing_mm is not None else "px",
                     long_px=_length(long_line), short_px=_length(short_line),
                     long_axis=long_line, short_axis=short_line)


def _outline(mask: np.ndarray) -> np.ndarray | None:
    """The longest closed iso-contour of ``mask`` at 1/2, as (x, y) in mask pixel coordinates."""
    if mask.ndim != 2 or not mask.any():
        return None
    # A border of zeros closes every contour, so the polygon is the whole region's outline.
    padded = np.pad(mask.astype(np.float32), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        return None
    rows_cols = max(contours, key=len) - 1.0
    return rows_cols[:, ::-1]


def _farthest_pair(points: np.ndarray) -> tuple[int, int]:
    """Indices of the two points farthest apart (among the convex hull's vertices)."""
    candidates = np.arange(len(points))
    if len(points) >= 3:
        try:
            candidates = ConvexHull(points).vertices
        except QhullError:  # all points on one line: every point is a candidate
            pass
    hull = points[candidates]
    squared = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(axis=-1)
    i, j = np.unravel_index(int(np.argmax(squared)), squared.shape)
    return int(candidates[i]), int(candidates[j])


def _widest_perpendicular(polygon: np.ndarray, start: np.ndarray, along: np.ndarray, across: np.ndarray,
                          samples: int) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    """The longest extent of the closed ``polygon`` across lines perpendicular to ``along``."""
    u = (polygon - start) @ along
    v = (polygon - start) @ across
    u_next, v_next = np.roll(u, -1), np.roll(v, -1)
    best, ends = 0.0, (start, start)
    for t in np.linspace(0.0, float(u.max()), samples + 2)[1:-1]:
        crossing = ((u - t) * (u_next - t) <= 0) & (u != u_next)
        if not crossing.any():
            continue
        f = (t - u[crossing]) / (u_next[crossing] - u[crossing])
        hits = v[crossing] + f * (v_next[crossing] - v[crossing])
        low, high = float(hits.min()), float(hits.max())
        if high - low > best:
            best = high - low
            ends = (start + t * along + low * across, start + t * along + high * across)
    return best, ends


def _line(a: np.ndarray, b: np.ndarray) -> Line:
    return (float(a[0]), float(a[1])), (float(b[0]), float(b[1]))


def _length(line: Line) -> float:
    (x0, y0), (x1, y1) = line
    return math.hypot(x1 - x0, y1 - y0)
