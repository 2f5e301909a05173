"""fit_gaussian: model each finding's intensity as a rotated 2-D Gaussian on a background.

The fit gives a sub-pixel centre, a size (FWHM along the major and minor axes, in px and in mm
when the study has pixel spacing), an orientation and a goodness of fit. Beside the tool live
the pieces other tools reuse: ``fit_gaussian_2d`` (the fit on a bare array),
``positional_uncertainty`` (a Gaussian over the centres of repeated proposals of one finding)
and ``probability_map`` (all fitted findings as one map in [0, 1]).

Coordinates follow ``tools.coordinates``: native pixels, x = column, y = row, the centre of the
top-left pixel at (0, 0), inclusive boxes. Angles are measured in those pixel coordinates, from
+x towards +y; because y points down the screen, a positive angle tilts the major axis down to
the right as displayed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from scipy.optimize import OptimizeResult, least_squares

from tools.context import ToolContext, ToolResult
from tools.coordinates import BoxPx
from tools.detection.working import Polarity, expected_polarity
from tools.errors import InvalidCoordinatesError
from tools.findings import Finding, GaussianFit
from tools.measurement import FWHM_PER_SIGMA, mm_per_px
from tools.study import Study


MIN_SIGMA_PX = 0.5
# The search window is the box grown by half its size on each side (at least MIN_MARGIN_PX,
# so even a 1-px box has background around it).
WINDOW_GROWTH = 0.5
MIN_MARGIN_PX = 4.0
MAX_SEARCH_SIDE = 64  # samples per side when looking for the blob
# Samples per side in the least-squares fit. The block-mean blur is part of the model, so
# coarser sampling costs little accuracy, while each solver step's cost grows with the samples.
MAX_FIT_SIDE = 24
FIT_RADIUS_SCALES = 3.0  # the fit window reaches this many blob scales from the blob
CENSOR_NOISE = 3.0  # opposite-polarity outliers beyond this many noise units are censored
MIN_VALID_SAMPLES = 9
POSITION_FLOOR_PX2 = 0.5
FLAT_NOTE = "flat region: no intensity peak to fit"


# -- sampling a window ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Window:
    """Inclusive integer pixel window, clipped to the image."""

    x0: int
    y0: int
    x1: int
    y1: int



@dataclass(frozen=True)
class _Grid:
    """A window, block-averaged to at most ``max_side`` samples a side, polarity-flipped.

    ``values`` is 2-D with NaN where no finite pixel fell; ``xs`` / ``ys`` are the native
    coordinates of the sample centres; a block mean of ``step`` pixels blurs by ``blur_var``.
    """

    values: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    step: int
    window: _Window

    @property
    def blur_var(self) -> float:
        # A mean over `step` pixels convolves with a box of variance (step^2 - 1) / 12.
        return (self.step * self.step - 1) / 12.0

    @property
    def finite(self) -> np.ndarray:
        return np.isfinite(self.values)


def _search_window(box: BoxPx, rows: int, columns: int) -> _Window:
    """``box`` grown by half its size on each side, clipped to the image."""
    if not all(math.isfinite(v) for v in box.as_list()):
        raise InvalidCoordinatesError("The box has a corner that is not a finite number.")
    if box.x1 < -0.5 or box.y1 < -0.5 or box.x0 > columns - 0.5 or box.y0 > rows - 0.5:
        raise InvalidCoordinatesError(
            f"The box ({box.x0:g}, {box.y0:g}) – ({box.x1:g}, {box.y1:g}) lies entirely outside "
            f"the {columns} x {rows} pixel image."
        )
    mx = max(WINDOW_GROWTH * box.width, MIN_MARGIN_PX)
    my = max(WINDOW_GROWTH * box.height, MIN_MARGIN_PX)
    return _clip_window(box.x0 - mx, box.y0 - my, box.x1 + mx, box.y1 + my, rows, columns)


def _clip_window(x0: float, y0: float, x1: float, y1: float, rows: int, columns: int) -> _Window:
    return _Window(max(0, math.floor(x0)), max(0, math.floor(y0)),
                   min(columns - 1, math.ceil(x1)), min(rows - 1, math.ceil(y1)))


def _grid(image: np.ndarray, window: _Window, sign: float, max_side: int) -> _Grid:
    """Cut ``window``, flip for polarity, block-average to ``max_side``, NaN for no data."""
    patch = image[window.y0:window.y1 + 1, window.x0:window.x1 + 1].astype(np.float64) * sign
    patch[~np.isfinite(patch)] = np.nan
    step = max(1, math.ceil(max(patch.shape) / max_side))
    rows, cols = patch.shape[0] // step * step, patch.shape[1] // step * step
    if step > 1:
        # Partial blocks at the far edges are dropped: at most step - 1 px of background.
        blocks = patch[:rows, :cols].reshape(rows // step, step, cols // step, step)
        finite = np.isfinite(blocks)
        counts = finite.sum(axis=(1, 3))
        sums = np.where(finite, blocks, 0.0).sum(axis=(1, 3))
        patch = np.full(counts.shape, np.nan)
        np.divide(sums, counts, out=patch, where=counts > 0)
    offset = (step - 1) / 2.0
    xs = window.x0 + offset + step * np.arange(patch.shape[1], dtype=np.float64)
    ys = window.y0 + offset + step * np.arange(patch.shape[0], dtype=np.float64)
    return _Grid(patch, xs, ys, step, window)


def _noise(values: np.ndarray) -> float:
    """Pixel noise from the MAD of neighbour differences (smooth structure cancels out)."""
    diffs = np.concatenate([np.diff(values, axis=0).ravel(), np.diff(values, axis=1).ravel()])
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return 0.0
    return float(np.median(np.abs(diffs))) * 1.4826 / math.sqrt(2.0)


def _is_flat(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return True
    spread = float(finite.max() - finite.min())
    return not spread > 1e-9 * max(1.0, float(np.abs(finite).max()))


# -- finding the blob ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Blob:
    x: float
    y: float
    scale: float  # px; for a Gaussian blob the scale-normalised LoG peaks at its sigma


def _locate(grid: _Grid, box: BoxPx) -> _Blob:
    """The strongest blob of the fitted polarity inside ``box``, by scale-normalised LoG.

    Looking first and fitting afterwards, in a window sized from the blob, keeps broad
    structures in a generous box (an organ edge, fat beside a liver lesion) from winning a
    single global fit.
    """
    filled = np.where(grid.finite, grid.values, np.nanmedian(grid.values))
    inside = (((grid.xs >= box.x0 - 0.5) & (grid.xs <= box.x1 + 0.5))[None, :]
              & ((grid.ys >= box.y0 - 0.5) & (grid.ys <= box.y1 + 0.5))[:, None])
    if not inside.any():  # the box is smaller than one block: use the nearest sample
        inside = np.zeros_like(inside)
        inside[np.argmin(np.abs(grid.ys - box.center[1])), np.argmin(np.abs(grid.xs - box.center[0]))] = True
    # A box is drawn around its finding: a blob far from the centre must respond more strongly
    # to win (otherwise an organ edge at a large scale can outscore the lesion itself).
    reach = max(box.width, box.height) / 2.0
    prior = np.exp(-0.5 * (((grid.xs - box.center[0]) / reach) ** 2)[None, :]
                   - 0.5 * (((grid.ys - box.center[1]) / reach) ** 2)[:, None])
    best = (-np.inf, box.center[0], box.center[1], max(min(box.width, box.height) / 4, MIN_SIGMA_PX))
    for scale_px in _scales(box):
        s = max(scale_px / grid.step, 0.5)
        response = -(s * s) * ndimage.gaussian_laplace(filled, s, mode="nearest")
        response = np.where(response > 0, response * prior, response)
        response[~inside] = -np.inf
        row, col = np.unravel_index(int(np.argmax(response)), response.shape)
        if response[row, col] > best[0]:
            best = (float(response[row, col]), float(grid.xs[col]), float(grid.ys[row]), float(scale_px))
    return _Blob(best[1], best[2], best[3])


def _scales(box: BoxPx) -> np.ndarray:
    """Candidate blob scales: from a tenth of the box's short side to a third of its long side."""
    low = max(MIN_SIGMA_PX, min(box.width, box.height) / 10)
    high = max(low, max(box.width, box.height) / 3)
    count = 1 + math.ceil(math.log(high / low, math.sqrt(2.0)))
    return np.geomspace(low, high, count)


# -- the least-squares fit -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Problem:
    """Finite samples of the fit window, standardised as (value - offset) / unit.

    ``tx`` / ``ty`` are the samples' offsets from the window's centre, for the tilt.
    """

    x: np.ndarray
    y: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    values: np.ndarray
    noise: float
    offset: float
    unit: float
    blur_var: float
    bounds: tuple[float, float, float, float]

    @property
    def centre(self) -> tuple[float, float]:
        x_lo, y_lo, x_hi, y_hi = self.bounds
        return (x_lo + x_hi) / 2.0, (y_lo + y_hi) / 2.0

    @property
    def size(self) -> float:
        x_lo, y_lo, x_hi, y_hi = self.bounds
        return max(x_hi - x_lo, y_hi - y_lo)


def _problem(grid: _Grid) -> _Problem:
    finite = grid.finite
    ring = np.zeros_like(finite)
    ring[[0, -1], :] = True
    ring[:, [0, -1]] = True
    border = grid.values[ring & finite]
    # The border's median is the first estimate of the background; the data are expressed
    # relative to it, in units of their largest deviation, so the optimiser sees numbers near 1.
    offset = float(np.median(border)) if border.size else float(np.nanmedian(grid.values))
    unit = float(np.nanmax(np.abs(grid.values - offset)))
    gx, gy = np.meshgrid(grid.xs, grid.ys)
    w = grid.window
    bounds = (w.x0 - 0.5, w.y0 - 0.5, w.x1 + 0.5, w.y1 + 0.5)
    x, y = gx[finite], gy[finite]
    return _Problem(
        x=x, y=y, tx=x - (bounds[0] + bounds[2]) / 2.0, ty=y - (bounds[1] + bounds[3]) / 2.0,
        values=(grid.values[finite] - offset) / unit, noise=max(_noise(grid.values) / unit, 1e-3),
        offset=offset, unit=unit, blur_var=grid.blur_var, bounds=bounds,
    )


def _model(p: np.ndarray, prob: _Problem) -> tuple[np.ndarray, tuple]:
    """Gaussian on a tilted background at the samples, and the pieces the Jacobian reuses.

    ``p`` = (cx, cy, sigma_x, sigma_y, theta, amplitude, background, tilt_x, tilt_y); the tilt
    is per px from the window's centre, where the background level is ``background``.
    """
    cx, cy, sx, sy, theta, amplitude, background, tilt_x, tilt_y = p
    a, b = sx * sx + prob.blur_var, sy * sy + prob.blur_var
    cos, sin = math.cos(theta), math.sin(theta)
    dx, dy = prob.x - cx, prob.y - cy
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    e = np.exp(-0.5 * (u * u / a + v * v / b))
    plane = background + tilt_x * prob.tx + tilt_y * prob.ty
    return plane + amplitude * e, (u, v, e, a, b, cos, sin)


def _jacobian(p: np.ndarray, prob: _Problem) -> np.ndarray:
    sx, sy, amplitude = p[2], p[3], p[5]
    _, (u, v, e, a, b, cos, sin) = _model(p, prob)
    ae = amplitude * e
    return np.column_stack([
        ae * (u * cos / a - v * sin / b),
        ae * (u * sin / a + v * cos / b),
        ae * u * u * sx / (a * a),
        ae * v * v * sy / (b * b),
        -ae * u * v * (1.0 / a - 1.0 / b),
        e,
        np.ones_like(e),
        prob.tx,
        prob.ty,
    ])


def _start(prob: _Problem, blob: _Blob) -> np.ndarray:
    """Initial parameters: the blob's centre and scale, orientation from moments near it."""
    near = (prob.x - blob.x) ** 2 + (prob.y - blob.y) ** 2 <= (2.0 * blob.scale) ** 2
    if np.count_nonzero(near) < 3:
        near = np.ones_like(near)
    weight = np.clip(prob.values[near], 0.0, None)
    sx = sy = blob.scale
    theta = 0.0
    if np.count_nonzero(weight) > 2:
        cov = np.cov(np.vstack([prob.x[near], prob.y[near]]), aweights=weight)
        eigvals, eigvecs = np.linalg.eigh(cov + 1e-9 * np.eye(2))
        if np.all(np.isfinite(eigvals)) and eigvals[0] > 0:
            # Moments of a clipped, truncated peak are too small; keep the blob's scale and
            # borrow only the elongation and orientation.
            ratio = math.sqrt(math.sqrt(eigvals[1] / eigvals[0]))
            sx, sy = blob.scale * ratio, blob.scale / ratio
            # An axis has no sign: fold into (-pi/2, pi/2], well inside the +-pi bounds.
            theta = math.radians(_half_turn(math.degrees(math.atan2(eigvecs[1, 1], eigvecs[0, 1]))))
    amplitude = max(float(np.percentile(prob.values[near], 95)), prob.noise)
    return np.array([blob.x, blob.y, sx, sy, theta, amplitude, 0.0, 0.0, 0.0])


def _bounds(prob: _Problem) -> tuple[np.ndarray, np.ndarray]:
    x_lo, y_lo, x_hi, y_hi = prob.bounds
    size = max(prob.size, 2 * MIN_SIGMA_PX)
    inf = np.inf
    lower = np.array([x_lo, y_lo, MIN_SIGMA_PX, MIN_SIGMA_PX, -math.pi, 0.0, -inf, -inf, -inf])
    upper = np.array([x_hi, y_hi, size, size, math.pi, inf, inf, inf, inf])
    return lower, upper


def _least_squares(prob: _Problem, blob: _Blob) -> tuple[np.ndarray, bool, np.ndarray]:
    """Run the bounded, robust fit; return parameters, success and the data it fitted.

    Pixels far on the wrong side of the background (fat beside a bright lesion, echogenic
    speckle beside a dark cyst) cannot belong to this peak, so they are censored to the
    background: first to the border's median, then, if that censored differently, once more
    to the fitted tilted background, starting from the first fit (so that a steep organ
    gradient is not censored away).
    """
    lower, upper = _bounds(prob)
    start = np.clip(_start(prob, blob), lower + 1e-6, upper - 1e-6)
    values = np.maximum(prob.values, -CENSOR_NOISE * prob.noise)
    result = _solve(prob, values, start, lower, upper, max_nfev=50)
    p = result.x
    if not (result.success and np.all(np.isfinite(p))):
        return p, False, values
    background = p[6] + p[7] * prob.tx + p[8] * prob.ty
    recensored = np.maximum(prob.values, background - CENSOR_NOISE * prob.noise)
    if np.count_nonzero(recensored != values) <= 0.01 * values.size:
        return p, True, values
    second = _solve(prob, recensored, np.clip(p, lower + 1e-6, upper - 1e-6), lower, upper, max_nfev=25)
    if second.success and np.all(np.isfinite(second.x)):
        return second.x, True, recensored
    return p, True, values


def _solve(prob: _Problem, values: np.ndarray, start: np.ndarray, lower: np.ndarray, upper: np.ndarray,
           *, max_nfev: int) -> OptimizeResult:
    with np.errstate(all="ignore"):
        return least_squares(
            lambda q: _model(q, prob)[0] - values, start, jac=lambda q: _jacobian(q, prob),
            bounds=(lower, upper), method="trf",
            # At most 24 x 24 samples by 9 parameters, a dense SVD per step is cheap, and it takes
            # fewer, lighter steps than the iterative 'lsmr' (whose Python overhead dominated).
            tr_solver="exact",
            x_scale="jac",  # theta is irrelevant for a round spot: keep it from stalling the fit
            loss="soft_l1", f_scale=CENSOR_NOISE * prob.noise,
            ftol=1e-6, xtol=1e-6, max_nfev=max_nfev,  # 1e-6 of the parameters is ~0.001 px
        )


def _r_squared(values: np.ndarray, fitted: np.ndarray) -> float:
    total = float(np.sum((values - values.mean()) ** 2))
    ss_res = float(np.sum((values - fitted) ** 2))
    if not (total > 0 and math.isfinite(ss_res)):
        return 0.0
    return float(np.clip(1.0 - ss_res / total, 0.0, 1.0))


def _problems_with(p: np.ndarray, prob: _Problem, success: bool) -> str | None:
    """Why a finished fit should not count as converged (None when it can)."""
    x_lo, y_lo, x_hi, y_hi = prob.bounds
    if not success:
        return "the optimiser did not converge"
    if not p[5] > 1e-9:
        return "no peak above the background: the region is uniform or only has edges"
    if min(p[0] - x_lo, x_hi - p[0], p[1] - y_lo, y_hi - p[1]) < 1e-3:
        return "the peak ran into the edge of the fitting window"
    if max(p[2], p[3]) >= 0.999 * prob.size:
        return "the fitted spot is as large as the fitting window: no compact peak"
    return None


def _remarks(p: np.ndarray, prob: _Problem, box: BoxPx) -> str | None:
    """What a reader of a converged fit should still be told."""
    if not box.contains(float(p[0]), float(p[1])):
        return "the fitted peak lies outside the finding's box"
    if p[5] < CENSOR_NOISE * prob.noise:
        return "weak peak: its amplitude is below 3 times the image noise"
    return None


def _physical(p: np.ndarray, prob: _Problem) -> np.ndarray:
    """(cx, cy, sx, sy, theta, amplitude, background at the centre), in the flipped image units."""
    cx, cy = p[0], p[1]
    centre_x, centre_y = prob.centre
    background = p[6] + p[7] * (cx - centre_x) + p[8] * (cy - centre_y)
    return np.array([cx, cy, p[2], p[3], p[4], p[5] * prob.unit, background * prob.unit + prob.offset])


# -- the public fit ------------------------------------------------------------------------------
def fit_gaussian_2d(values: np.ndarray, box: BoxPx, *, polarity: Polarity = "bright",
                    spacing_mm: tuple[float, float] | None = None) -> GaussianFit:
    """Fit a rotated 2-D Gaussian on a background to the finding in ``box``.

    Two steps. First the strongest blob of the right polarity inside ``box`` is found with a
    scale-normalised Laplacian of Gaussian, searched over the box grown by half its size on
    each side (clipped to the image) and favouring blobs near the box's centre. Then a bounded,
    robust (soft-L1) least-squares fit runs in a window of three blob scales around it:
    centre within that window, sigmas from 0.5 px to the window's size, amplitude >= 0, the
    background starting at the median of the window's border. The background is a level plus
    a gentle linear tilt, because a constant level cannot follow the gradient of an organ
    (the reported ``background`` is its value under the peak). Large windows are
    block-averaged (to 64 samples a side for the search, 24 for the fit) and the blur this
    adds is part of the model, so sizes stay unbiased.
    Non-finite pixels are ignored; pixels on the wrong side of the background by more than
    three noise units are censored to it (they are neighbouring tissue, not this peak).

    Parameters
    ----------
    values:
        2-D array (rows, columns) of physical values, e.g. ``Study.physical(frame)``.
    box:
        Inclusive pixel box of the finding (``tools.coordinates``); may overhang the image.
    polarity:
        ``"bright"`` fits a peak above the background, ``"dark"`` a dip below it.
    spacing_mm:
        ``(row, column)`` pixel spacing in mm; without it the mm sizes are None.

    Returns
    -------
    GaussianFit
        ``amplitude`` is always >= 0: the height of the peak (bright) or the depth of the dip
        (dark) relative to ``background``, in the image's units; ``background`` is the level
        itself, also in the image's units. ``r_squared`` is measured over the fit window after
        censoring. A degenerate region gives ``converged=False`` and a ``note``; its centre
        and shape then fall back to the box (taken as the FWHM). Every number is finite.

    Raises
    ------
    InvalidCoordinatesError
        The box lies entirely outside the image, or has non-finite corners.
    ValueError
        ``values`` is not a non-empty 2-D array.
    """
    image = np.asarray(values)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"fit_gaussian_2d needs a non-empty 2-D array, got shape {image.shape}")
    sign = 1.0 if polarity == "bright" else -1.0
    search_window = _search_window(box, *image.shape)
    box = box.clipped(image.shape[1], image.shape[0])  # the part of the finding we can see
    search = _grid(image, search_window, sign, MAX_SEARCH_SIDE)
    failure = _degenerate(search.values)
    if failure:
        return _fallback(box, search.values, sign, spacing_mm, failure)
    blob = _locate(search, box)
    radius = max(FIT_RADIUS_SCALES * blob.scale, MIN_MARGIN_PX)
    window = _clip_window(blob.x - radius, blob.y - radius, blob.x + radius, blob.y + radius, *image.shape)
    grid = _grid(image, window, sign, MAX_FIT_SIDE)
    failure = _degenerate(grid.values)
    if failure:
        return _fallback(box, grid.values, sign, spacing_mm, failure)
    prob = _problem(grid)
    p, success, data = _least_squares(prob, blob)
    if not np.all(np.isfinite(p)):
        return _fallback(box, grid.values, sign, spacing_mm, "the fit did not produce finite parameters")
    failure = _problems_with(p, prob, success)
    r_squared = _r_squared(data, _model(p, prob)[0])
    return _to_fit(_physical(p, prob), sign, r_squared, converged=failure is None, spacing_mm=spacing_mm,
                   note=failure or _remarks(p, prob, box))


def _degenerate(values: np.ndarray) -> str | None:
    finite = np.count_nonzero(np.isfinite(values))
    if finite < MIN_VALID_SAMPLES:
        return "too few valid (finite) pixels to fit"
    if _is_flat(values):
        return FLAT_NOTE
    with np.errstate(all="ignore"):
        if not math.isfinite(float(np.nanmax(values) - np.nanmin(values))):
            return "the pixel values are too large to fit"
    return None


def _to_fit(p: np.ndarray, sign: float, r_squared: float, *, converged: bool,
            spacing_mm: tuple[float, float] | None, note: str | None) -> GaussianFit:
    """Parameters (polarity-flipped physical units) -> GaussianFit in the image's units."""
    cx, cy, sx, sy, theta, amplitude, background = (float(v) for v in p)
    if sy > sx:
        sx, sy, theta = sy, sx, theta + math.pi / 2
    angle = _half_turn(math.degrees(theta))
    major_mm = minor_mm = None
    if spacing_mm is not None:
        major_mm = sx * FWHM_PER_SIGMA * mm_per_px(angle, spacing_mm)
        minor_mm = sy * FWHM_PER_SIGMA * mm_per_px(angle + 90.0, spacing_mm)
    return GaussianFit(
        center_px=(cx, cy), sigma_major_px=sx, sigma_minor_px=sy, angle_deg=angle,
        fwhm_major_px=sx * FWHM_PER_SIGMA, fwhm_minor_px=sy * FWHM_PER_SIGMA,
        fwhm_major_mm=major_mm, fwhm_minor_mm=minor_mm,
        amplitude=amplitude, background=sign * background, r_squared=r_squared,
        converged=converged, note=note,
    )


def _fallback(box: BoxPx, values: np.ndarray, sign: float, spacing_mm: tuple[float, float] | None,
              note: str) -> GaussianFit:
    """A finite, unconverged result: the box centre, the box taken as the FWHM, no peak."""
    finite = values[np.isfinite(values)]
    level = float(np.median(finite)) if finite.size else 0.0
    level = level if math.isfinite(level) else 0.0
    sx = max(box.width / FWHM_PER_SIGMA, MIN_SIGMA_PX)
    sy = max(box.height / FWHM_PER_SIGMA, MIN_SIGMA_PX)
    cx, cy = box.center
    p = np.array([cx, cy, sx, sy, 0.0, 0.0, level])
    return _to_fit(p, sign, 0.0, converged=False, spacing_mm=spacing_mm, note=note)


def _half_turn(angle_deg: float) -> float:
    """Fold an axis angle into (-90, 90]."""
    folded = math.fmod(angle_deg, 180.0)
    if folded <= -90.0:
        folded += 180.0
    elif folded > 90.0:
        folded -= 180.0
    return folded




# -- positional uncertainty ----------------------------------------------------------------------
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
    angle = _half_turn(math.degrees(math.atan2(eigvecs[1, 1], eigvecs[0, 1])))
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


# -- the tool ------------------------------------------------------------------------------------
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
        values = _grey(study.physical(finding.frame))
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


def _grey(values: np.ndarray) -> np.ndarray:
    """Colour raster images have RGB "physical" values: fit their luma, as displayed."""
    if values.ndim == 3:
        return values[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return values


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
