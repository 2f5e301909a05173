"""A rotated 2-D Gaussian on a background, fitted to a lesion in a bare image array.

``fit_gaussian_2d`` finds the blob in a proposed box, fits it by bounded least squares (with an
analytic Jacobian, opposite-polarity outliers censored) and reports a sub-pixel centre, sigmas,
FWHM sizes in px and mm, orientation and R². It falls back to the box, with a note, where there
is nothing to fit (a flat region, too few samples, a fit that runs away).

Coordinates follow ``tools.coordinates``: native pixels, x = column, y = row, the centre of the
top-left pixel at (0, 0), inclusive boxes. Angles are measured from +x towards +y; because y
points down the screen, a positive angle tilts the major axis down to the right as displayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import OptimizeResult, least_squares

from tools.coordinates import BoxPx
from tools.detection.working import Polarity
from tools.errors import InvalidCoordinatesError
from tools.findings import GaussianFit
from tools.gaussian.measurement import FWHM_PER_SIGMA, mm_per_px

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
            theta = math.radians(half_turn(math.degrees(math.atan2(eigvecs[1, 1], eigvecs[0, 1]))))
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
    angle = half_turn(math.degrees(theta))
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


def half_turn(angle_deg: float) -> float:
    """Fold an axis angle into (-90, 90]."""
    folded = math.fmod(angle_deg, 180.0)
    if folded <= -90.0:
        folded += 180.0
    elif folded > 90.0:
        folded -= 180.0
    return folded
