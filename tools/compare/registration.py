"""A 2-D similarity registration of a prior image to the current one, robust to a different
exposure, window and field of view.

What it finds: ``Similarity``, the map from a point of the current image to the same anatomy in
the prior (native pixels of each): a scale, a rotation and a shift — what differs between two
acquisitions of one patient in one position (zoom or pixel size, a slight tilt, where the patient
lay). Not a deformation: a lesion that grew must stay measurable, not be warped away.

How:

1. Both images are reduced to at most ``WORK_SIDE`` pixels a side and their grey levels replaced
   by their rank (histogram equalisation): any monotonic change of exposure or window gives the
   same picture.
2. Starts: rotation and scale from the log-polar transform of the Fourier magnitude (which a
   shift does not change), by phase correlation (scikit-image's ``warp_polar`` and
   ``phase_cross_correlation``), with the candidates its symmetry leaves (±θ, s or 1/s), plus a
   coarse grid (±10°, ±10 %) for nearly round pictures where that estimate is weak; each
   completed with a shift by phase correlation.
3. The ``REFINED_STARTS`` best starts refined, the four parameters maximising the normalised
   cross-correlation (NCC) over the overlap (SciPy's Powell); the best by structure NCC kept.

The residual is ``1 − NCC`` of the two images' structure (a difference of Gaussians: edges and
texture, not areas of one grey, which any two images can be made to agree on) over the overlap
after registration; 0 is the same picture. Two images whose best alignment still leaves a
structure NCC below ``MIN_NCC``, or an overlap below ``MIN_OVERLAP`` of the current image, do
not show the same region: ``RegistrationError``, in one sentence. (Dev images warped by known
transforms, with another exposure and noise: structure NCC 0.61–0.97 and the map within 0.12 %
of the diagonal; images of another body part: 0.01–0.08; the same body part of another patient:
0.15–0.29 — the same region, so not refused. Real priors, acquired apart, will sit lower than
the warped copies: the threshold leaves them room.)

Why not SimpleITK: its registration framework would do this with more metrics and optimisers,
at a 50 MB dependency; the pieces needed here (a Fourier start, an NCC refinement of four
parameters) are a page of SciPy and scikit-image, both already used by the detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy import optimize
from skimage.exposure import equalize_hist
from skimage.registration import phase_cross_correlation
from skimage.transform import rescale, warp_polar

from tools.errors import RegistrationError

#: The longest side of the working images (px).
WORK_SIDE = 256
#: Below this NCC after the best alignment, the two images do not show the same region.
MIN_NCC = 0.2
#: The part of the current image that must land inside the prior.
MIN_OVERLAP = 0.4
#: Rotations beyond this are not tried: two acquisitions of one patient are not turned further.
MAX_ROTATION_DEG = 30.0
#: The best starts (by structure NCC) that are refined; the best refined one is kept.
REFINED_STARTS = 3
METHOD = "similarity (scale, rotation, shift): log-polar phase correlation, then NCC refinement"


@dataclass(frozen=True)
class Similarity:
    """``prior = scale · R(rotation) · current + shift``, points as (x, y) in native pixels."""

    scale: float
    rotation_deg: float
    shift_x: float
    shift_y: float

    @property
    def matrix(self) -> np.ndarray:
        """The 3×3 homogeneous matrix of the map (x, y, 1)."""
        angle = math.radians(self.rotation_deg)
        cos, sin = self.scale * math.cos(angle), self.scale * math.sin(angle)
        return np.array([[cos, -sin, self.shift_x], [sin, cos, self.shift_y], [0.0, 0.0, 1.0]])

    def apply(self, x: float, y: float) -> tuple[float, float]:
        """Where the current image's point (x, y) lies in the prior."""
        px, py, _ = self.matrix @ np.array([x, y, 1.0])
        return float(px), float(py)

    def inverse(self) -> Similarity:
        """The map from the prior back to the current image."""
        inverse = np.linalg.inv(self.matrix)
        return Similarity(1.0 / self.scale, -self.rotation_deg, float(inverse[0, 2]), float(inverse[1, 2]))

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> Similarity:
        scale = math.hypot(matrix[0, 0], matrix[1, 0])
        return cls(scale, math.degrees(math.atan2(matrix[1, 0], matrix[0, 0])), float(matrix[0, 2]),
                   float(matrix[1, 2]))

    @classmethod
    def about(cls, center: tuple[float, float], scale: float, rotation_deg: float, shift_x: float = 0.0,
              shift_y: float = 0.0) -> Similarity:
        """Rotated and scaled about ``center`` (x, y), then shifted."""
        matrix = _matrix(scale, rotation_deg, shift_x, shift_y, center)
        return cls(scale, rotation_deg, float(matrix[0, 2]), float(matrix[1, 2]))

    def as_json(self) -> dict[str, object]:
        return {"scale": round(self.scale, 5), "rotation_deg": round(self.rotation_deg, 3),
                "shift_px": [round(self.shift_x, 2), round(self.shift_y, 2)],
                "matrix": [[round(v, 6) for v in row] for row in self.matrix.tolist()]}


@dataclass(frozen=True)
class Registration:
    transform: Similarity
    #: 1 − NCC of the overlapping pixels after registration (0: the same picture).
    residual: float
    #: The part of the current image whose place lies inside the prior.
    overlap: float
    method: str = METHOD

    def as_json(self) -> dict[str, object]:
        return {"method": self.method, "transform": self.transform.as_json(), "residual": round(self.residual, 4),
                "overlap": round(self.overlap, 3)}


@dataclass(frozen=True)
class _Working:
    """An image at the working size, its grey levels ranked; ``factor``: working px per native px."""

    image: np.ndarray
    factor: float


def _working(image: np.ndarray) -> _Working:
    data = np.asarray(image, dtype=np.float64)
    if data.ndim == 3:
        data = data.mean(axis=2)
    factor = min(1.0, WORK_SIDE / max(data.shape))
    if factor < 1.0:
        data = rescale(data, factor, anti_aliasing=True, preserve_range=True)
    if np.ptp(data) == 0:
        raise RegistrationError("One of the two images is blank; there is nothing to align.")
    return _Working(equalize_hist(data), factor)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def resampled(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int], *,
              fill: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``image`` sampled (bilinear) at ``matrix``'s place of every pixel (x, y) of a ``shape``
    image, and which of those places lie inside it; a place outside takes the nearest edge
    value, or ``fill`` when given."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    x = matrix[0, 0] * cols + matrix[0, 1] * rows + matrix[0, 2]
    y = matrix[1, 0] * cols + matrix[1, 1] * rows + matrix[1, 2]
    inside = (x >= 0) & (y >= 0) & (x <= image.shape[1] - 1) & (y <= image.shape[0] - 1)
    mode = {"mode": "nearest"} if fill is None else {"mode": "constant", "cval": fill}
    return ndi.map_coordinates(image, [y, x], order=1, **mode), inside


def structure(image: np.ndarray) -> np.ndarray:
    """The image's structure at the working scale: a difference of Gaussians (σ 1 and 4 px), so
    that two images agree on edges and texture, not on large areas of one grey."""
    return ndi.gaussian_filter(image, 1.0) - ndi.gaussian_filter(image, 4.0)


def _score(current: np.ndarray, prior: np.ndarray, matrix: np.ndarray) -> tuple[float, float]:
    """(NCC over the overlap, the overlap's share of the current image)."""
    sampled, inside = resampled(prior, matrix, current.shape)
    overlap = float(inside.mean())
    if inside.sum() < 64:
        return -1.0, overlap
    return _ncc(current[inside], sampled[inside]), overlap


def _square(image: np.ndarray) -> np.ndarray:
    side = max(image.shape)
    padded = np.zeros((side, side))
    padded[:image.shape[0], :image.shape[1]] = image - image.mean()
    return padded


def _log_polar_magnitude(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    padded = np.zeros((side, side))
    padded[:image.shape[0], :image.shape[1]] = (image - image.mean()) * np.outer(np.hanning(image.shape[0]),
                                                                                 np.hanning(image.shape[1]))
    magnitude = np.abs(np.fft.fftshift(np.fft.fft2(padded)))
    freq = np.fft.fftshift(np.fft.fftfreq(side))
    fx, fy = np.meshgrid(freq, freq)
    magnitude *= np.hypot(fx, fy)  # a high-pass: the low frequencies say little about rotation
    radius = side // 2
    return warp_polar(magnitude, radius=radius, output_shape=(360, radius), scaling="log", order=1), radius


def _rotation_scale_candidates(current: np.ndarray, prior: np.ndarray) -> list[tuple[float, float]]:
    """(scale, rotation in degrees) of the prior relative to the current image, with the
    candidates the Fourier magnitude's symmetries leave open."""
    side = max(*current.shape, *prior.shape)
    polar_current, radius = _log_polar_magnitude(current, side)
    polar_prior, _ = _log_polar_magnitude(prior, side)
    shifts, _, _ = phase_cross_correlation(polar_current[:180], polar_prior[:180], upsample_factor=20,
                                           normalization=None)
    angle = float(shifts[0])  # the polar image has a row a degree
    scale = math.exp(float(shifts[1]) / (radius / math.log(radius)))
    # The magnitude leaves the sign open; a prior upside down (180°) is not a plausible acquisition.
    found = [(s, a) for s in (scale, 1.0 / scale) for a in (angle, -angle) if abs(a) <= MAX_ROTATION_DEG]
    # A coarse grid as well: on a nearly round picture (a head in its skull) the Fourier estimate is weak.
    return found + [(s, a) for s in (0.9, 1.0, 1.1) for a in (-10.0, -5.0, 0.0, 5.0, 10.0)]


def _matrix(scale: float, angle_deg: float, tx: float, ty: float, center: tuple[float, float]) -> np.ndarray:
    """current (x, y) → prior: rotate and scale about the current image's ``center``, then shift."""
    angle = math.radians(angle_deg)
    cos, sin = scale * math.cos(angle), scale * math.sin(angle)
    cx, cy = center
    return np.array([[cos, -sin, cx - cos * cx + sin * cy + tx],
                     [sin, cos, cy - sin * cx - cos * cy + ty],
                     [0.0, 0.0, 1.0]])


def _with_shift(current: np.ndarray, prior: np.ndarray, scale: float, angle: float,
                center: tuple[float, float]) -> tuple[np.ndarray, float]:
    """The candidate completed with its shift (phase correlation of the current image and the
    prior resampled into its frame), and its NCC."""
    base = _matrix(scale, angle, 0.0, 0.0, center)
    in_frame, inside = resampled(prior, base, current.shape)
    in_frame = np.where(inside, in_frame, in_frame[inside].mean() if inside.any() else 0.0)
    shift, _, _ = phase_cross_correlation(_square(current), _square(in_frame), upsample_factor=4,
                                          normalization=None)
    dy, dx = float(shift[0]), float(shift[1])
    # current(p) ≈ in_frame(p − d) = prior(base·(p − d)): the shift in the prior is −A·d.
    linear = base[:2, :2]
    tx, ty = -(linear @ np.array([dx, dy]))
    matrix = base.copy()
    matrix[0, 2] += tx
    matrix[1, 2] += ty
    return matrix, _score(current, prior, matrix)[0]


def _refined(current: np.ndarray, prior: np.ndarray, start: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    """``start`` refined to the best NCC of the two working images, keeping the overlap."""
    similarity = Similarity.from_matrix(start)
    # Parameters about the centre (so rotation and shift are not entangled): θ, log s, tx, ty.
    base = _matrix(similarity.scale, similarity.rotation_deg, 0.0, 0.0, center)
    x0 = np.array([similarity.rotation_deg, math.log(similarity.scale), start[0, 2] - base[0, 2],
                   start[1, 2] - base[1, 2]])

    def cost(params: np.ndarray) -> float:
        ncc, overlap = _score(current, prior, _matrix(math.exp(params[1]), params[0], params[2], params[3], center))
        return -ncc if overlap >= MIN_OVERLAP else 1.0

    result = optimize.minimize(cost, x0, method="Powell",
                               options={"xtol": 1e-3, "ftol": 1e-5, "maxfev": 600})
    best = result.x if result.fun <= cost(x0) else x0
    return _matrix(math.exp(best[1]), best[0], best[2], best[3], center)


def register_images(current: np.ndarray, prior: np.ndarray) -> Registration:
    """The similarity that brings ``prior`` onto ``current`` (2-D arrays of any grey levels);
    ``RegistrationError`` when they do not show the same region."""
    work_current, work_prior = _working(current), _working(prior)
    a, b = work_current.image, work_prior.image
    center = ((a.shape[1] - 1) / 2, (a.shape[0] - 1) / 2)
    structure_a, structure_b = structure(a), structure(b)
    starts = [_with_shift(a, b, s, angle, center)[0] for s, angle in _rotation_scale_candidates(a, b)]
    starts.sort(key=lambda m: -_score(structure_a, structure_b, m)[0])
    refined = [_refined(a, b, start, center) for start in starts[:REFINED_STARTS]]
    matrix = max(refined, key=lambda m: _score(structure_a, structure_b, m)[0])
    ncc, overlap = _score(structure_a, structure_b, matrix)
    # Back to native pixels: native current → working current → working prior → native prior.
    native = (np.diag([1 / work_prior.factor, 1 / work_prior.factor, 1.0]) @ matrix
              @ np.diag([work_current.factor, work_current.factor, 1.0]))
    if overlap < MIN_OVERLAP or ncc < MIN_NCC:
        raise RegistrationError(
            f"The prior does not show the same region as the current image (after the best alignment "
            f"{overlap:.0%} of the image overlaps and the structures agree at {max(ncc, 0):.2f} of 1); "
            "they cannot be compared.")
    return Registration(Similarity.from_matrix(native), 1.0 - ncc, overlap)
