"""(prior, current) pairs with a known truth, made from the dev images: the eval data holds no
public longitudinal set, so the comparison is measured on pairs whose change is known.

A pair starts from a dev image and its lesion box (the current study), and makes the other study
of the pair from it:

1. the lesion's change — ``grown`` or ``shrunk``: the lesion in the prior is the current one
   scaled by ``1 / factor`` with a smooth radial warp centred on it (unchanged beyond three lesion
   radii); ``new``: the lesion removed from the prior (biharmonic inpainting of its disc);
   ``resolved``: removed from the current image instead; ``stable``: left as it is;
2. a known similarity (``Similarity``: a point of the current image → the prior), as between two
   exams of one patient (shift, small rotation and zoom);
3. another exposure (a gamma on the grey levels, in their own units) and noise, when asked.

``factor`` is the current lesion's size over the prior's (> 1 grown).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.restoration import inpaint_biharmonic

from tools.compare.change import Status
from tools.compare.registration import Similarity, resampled

#: The radial warp fades from the lesion's own scaling to none between one and this many radii.
WARP_REACH_RADII = 3.0
#: The disc removed for ``new`` / ``resolved`` reaches this many lesion radii.
REMOVED_RADII = 1.3


@dataclass(frozen=True)
class Lesion:
    """Where the lesion is in the current image: centre (x, y) and radius, native px."""

    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class Pair:
    prior: np.ndarray
    current: np.ndarray
    status: Status
    transform: Similarity
    #: Current size / prior size (1 for stable; None when the lesion is in one image only).
    factor: float | None
    lesion: Lesion


def radially_scaled(image: np.ndarray, lesion: Lesion, factor: float) -> np.ndarray:
    """``image`` with the lesion scaled by ``factor`` about its centre: inside its radius every
    distance from the centre is multiplied by ``factor``; the warp fades smoothly to nothing at
    ``WARP_REACH_RADII`` radii (a smoothstep of the displacement, so the map stays monotonic)."""
    rows, cols = np.mgrid[0:image.shape[0], 0:image.shape[1]].astype(np.float64)
    dx, dy = cols - lesion.x, rows - lesion.y
    r = np.hypot(dx, dy)
    reach = WARP_REACH_RADII * lesion.radius
    t = np.clip((r - lesion.radius) / max(reach - lesion.radius, 1e-9), 0.0, 1.0)
    fade = 1.0 - t * t * (3 - 2 * t)
    # An output pixel at distance r shows the input at distance r / factor (inside), fading to r.
    source = r - (r - r / factor) * fade
    scale = np.divide(source, r, out=np.ones_like(r), where=r > 0)
    return ndi.map_coordinates(image.astype(np.float64), [lesion.y + dy * scale, lesion.x + dx * scale],
                               order=1, mode="nearest")


def removed(image: np.ndarray, lesion: Lesion) -> np.ndarray:
    """``image`` with the lesion's disc filled in from its surroundings (biharmonic inpainting)."""
    rows, cols = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    disc = np.hypot(cols - lesion.x, rows - lesion.y) <= REMOVED_RADII * lesion.radius
    data = image.astype(np.float64)
    low, high = float(data.min()), float(data.max())
    span = high - low or 1.0
    filled = inpaint_biharmonic((data - low) / span, disc)
    return filled * span + low


def moved(image: np.ndarray, transform: Similarity, shape: tuple[int, int] | None = None) -> np.ndarray:
    """``image`` as the other study shows it: the content at ``p`` appears at ``transform(p)``."""
    data = image.astype(np.float64)
    return resampled(data, np.linalg.inv(transform.matrix), shape or image.shape, fill=float(image.min()))[0]


def exposed(image: np.ndarray, gamma: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Another exposure, in the image's own units (HU stay HU): the grey levels, as a share of
    their range, raised to ``gamma``; plus Gaussian noise of ``noise`` times the range."""
    low, span = float(image.min()), float(np.ptp(image)) or 1.0
    return low + ((image - low) / span) ** gamma * span + rng.normal(0.0, noise * span, image.shape)


def make_pair(image: np.ndarray, lesion: Lesion, status: Status, transform: Similarity, *,
              factor: float = 1.0, gamma: float = 1.0, noise: float = 0.0, seed: int = 0) -> Pair:
    """The pair of the module's recipe; ``factor`` is used for ``grown`` / ``shrunk``."""
    if status in ("grown", "shrunk") and (factor > 1) != (status == "grown"):
        raise ValueError(f"a {status} lesion needs a factor {'above' if status == 'grown' else 'below'} 1")
    current = np.asarray(image, dtype=np.float64)
    if status in ("grown", "shrunk"):
        before = radially_scaled(current, lesion, 1.0 / factor)
    elif status == "new":
        before = removed(current, lesion)
    elif status == "resolved":
        before, current = current, removed(current, lesion)
    else:
        before = current
    prior = moved(before, transform)
    if gamma != 1.0 or noise > 0:
        prior = exposed(prior, gamma, noise, np.random.default_rng(seed))
    known = factor if status in ("grown", "shrunk") else (1.0 if status == "stable" else None)
    return Pair(prior, current, status, transform, known, lesion)


def lesion_from_box(x0: float, y0: float, x1: float, y1: float) -> Lesion:
    return Lesion((x0 + x1) / 2, (y0 + y1) / 2, max(2.0, ((x1 - x0) + (y1 - y0)) / 4))


def random_transform(rng: np.random.Generator, shape: tuple[int, int]) -> Similarity:
    """A plausible difference between two exams: a shift of up to 5 % of the side, a tilt of up
    to 8°, a zoom of ±10 %, about the image's centre."""
    rows, cols = shape
    scale, angle = float(rng.uniform(0.9, 1.1)), float(rng.uniform(-8, 8))
    shift = rng.uniform(-0.05, 0.05, 2) * np.array([cols, rows])
    return Similarity.about(((cols - 1) / 2, (rows - 1) / 2), scale, angle, float(shift[0]), float(shift[1]))


#: The columns of a pairs manifest (``loupe eval --change`` reads it).
PAIR_FIELDS = ("pair", "dataset", "modality", "source", "status", "factor", "scale", "rotation_deg", "shift_x",
               "shift_y", "lesion_x", "lesion_y", "lesion_radius", "prior", "current", "low", "high")


def written(pair: Pair, folder: Path, number: int, *, dataset: str, modality: str, source: str) -> dict[str, object]:
    """Write the pair's two images as 16-bit PNGs (``<number>-prior.png``, ``-current.png``, one
    grey range for both) into ``folder``; its row of the pairs manifest."""
    low = float(min(pair.prior.min(), pair.current.min()))
    high = float(max(pair.prior.max(), pair.current.max()))
    names = (f"{number:04d}-prior.png", f"{number:04d}-current.png")
    for image, name in zip((pair.prior, pair.current), names, strict=True):
        scaled = np.clip((image - low) / ((high - low) or 1.0), 0, 1) * 65535
        Image.fromarray(scaled.round().astype(np.uint16)).save(folder / name)
    transform, lesion = pair.transform, pair.lesion
    return {"pair": number, "dataset": dataset, "modality": modality, "source": source, "status": pair.status,
            "factor": "" if pair.factor is None else round(pair.factor, 4), "scale": round(transform.scale, 6),
            "rotation_deg": round(transform.rotation_deg, 4), "shift_x": round(transform.shift_x, 4),
            "shift_y": round(transform.shift_y, 4), "lesion_x": round(lesion.x, 2), "lesion_y": round(lesion.y, 2),
            "lesion_radius": round(lesion.radius, 2), "prior": names[0], "current": names[1], "low": low,
            "high": high}


def write_manifest(rows: list[dict[str, object]], path: Path) -> None:
    """The pairs manifest (``PAIR_FIELDS``); image names are relative to its folder."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PAIR_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
