"""What kind of image a PNG or JPEG without a named modality is, judged from its pixels.

A clinician who drags a screenshot into the chat does not say "US"; the detector's modality
search finds far more than its generic one, so Loupe guesses, says so and why, and lets the
clinician correct it. The rules look at the layout a clinician would recognise, in order:

1. **Chest radiograph** — smooth (little speckle), filling the frame, with two dark lung fields
   either side of a brighter mediastinum.
2. **Ultrasound** — speckled texture, and either a fan-shaped sector on black (narrow at the
   transducer, widening downwards at a steady rate) or tissue reaching the top edge (the skin line).
3. **CT or MR** — one compact body on a black background: CT when its outer rim is the brightest
   part of the image (bone: a skull ring or ribs) or it holds dark aerated lungs; MR otherwise (a
   head whose skull gives no signal).
4. Otherwise unknown: the generic search runs, and the clinician is asked.

DICOM studies never need this: their header names the modality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: The guess looks at the image with its long side at this many px.
GUESS_SIDE = 256
#: Speckle: the fine-scale (σ = 1.5 px) residual's spread relative to the tissue's spread.
#: Radiographs are smooth (dev: 0.04-0.16); ultrasound and MR are grainy (0.12-0.40).
SPECKLE_MIN = 0.12
#: Speckle is coarse as well as relative: the fine-scale residual spreads at least this much of
#: the image's range (dev ultrasound: 0.033 and up; a smooth synthetic blob with noise: 0.026).
GRAIN_MIN = 0.03
#: Radiographs are smoother than this (dev chest films: 0.04-0.16).
RADIOGRAPH_SPECKLE_MAX = 0.2
#: How much brighter (of the [0, 1] range) the mediastinum's columns are than the lung fields'.
MEDIASTINUM_MARGIN = 0.1
#: A radiograph fills most of its frame (dev chest films: at most 25 % black border).
RADIOGRAPH_BACKGROUND_MAX = 0.3
#: A background is black pixels connected to the border covering at least this share.
BACKGROUND_MIN = 0.15
#: Share of the top rows' width that tissue must cover for "tissue reaches the top edge".
TOP_COVER_MIN = 0.75


@dataclass(frozen=True)
class ModalityGuess:
    """The modality a picture looks like (None: cannot tell), and why, in words."""

    modality: str | None
    reason: str


@dataclass(frozen=True)
class _Layout:
    image: np.ndarray  # [0, 1], long side GUESS_SIDE
    background: np.ndarray  # black, connected to the border
    speckle: float
    grain: float  # the fine-scale residual's spread, in the [0, 1] range of the image
    top_cover: float  # share of the top rows that is not background


def _layout(grey: np.ndarray) -> _Layout:
    values = np.asarray(grey, dtype=np.float32)
    scale = min(1.0, GUESS_SIDE / max(values.shape))
    if scale < 1.0:
        values = ndi.zoom(ndi.gaussian_filter(values, 0.4 / scale), scale, order=1)
    low, high = np.percentile(values, [1.0, 99.5])
    image = np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)
    labels, _ = ndi.label(image < 0.04)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge_labels[edge_labels > 0])
    tissue = ~background
    residual = image - ndi.gaussian_filter(image, 1.5)
    grain = float(np.std(residual[tissue])) if tissue.any() else 0.0
    speckle = grain / max(float(np.std(image[tissue])), 1e-3) if tissue.any() else 0.0
    top = tissue[: max(1, image.shape[0] // 10)]
    return _Layout(image=image, background=background, speckle=speckle, grain=grain, top_cover=float(top.mean()))


def guess_modality(grey: np.ndarray) -> ModalityGuess:
    """Guess the modality of a greyscale (or luma) picture from its layout; see the module."""
    if grey.ndim != 2 or min(grey.shape) < 32 or float(np.ptp(grey)) == 0.0:
        return ModalityGuess(None, "the image is too small or uniform to tell what it shows")
    layout = _layout(grey)
    for rule in (_chest_radiograph, _ultrasound, _cross_section):
        guess = rule(layout)
        if guess is not None:
            return guess
    return ModalityGuess(None, "its layout matches none Loupe recognises (ultrasound sector, chest radiograph, "
                               "head or body cross-section)")


def _ultrasound(layout: _Layout) -> ModalityGuess | None:
    if layout.speckle < SPECKLE_MIN or layout.grain < GRAIN_MIN:
        return None
    tissue = ~layout.background
    if layout.background.mean() >= BACKGROUND_MIN and _widens_downwards(tissue):
        return ModalityGuess("US", "a speckled fan-shaped sector on black, as an ultrasound probe images")
    if layout.top_cover >= TOP_COVER_MIN:
        return ModalityGuess("US", "speckled tissue reaching the top edge, where an ultrasound probe's skin line is")
    return None


def _widens_downwards(tissue: np.ndarray) -> bool:
    """A fan: from a narrow top the imaged region widens at a steady rate (straight edges from the
    probe), where a round head widens fast and then hardly at all. Widths at 10, 30 and 50 % of
    its height: the top one at most 60 % of the middle one, the second step at least 60 % of the first."""
    rows = np.nonzero(tissue.any(axis=1))[0]
    if rows.size < 20:
        return False
    first, height = rows[0], rows[-1] - rows[0]
    w10, w30, w50 = (float(tissue[first + int(f * height)].sum()) for f in (0.1, 0.3, 0.5))
    return w10 <= 0.6 * w50 and w30 > w10 and (w50 - w30) >= 0.6 * (w30 - w10)


def _chest_radiograph(layout: _Layout) -> ModalityGuess | None:
    """A frontal chest film: across the chest (20-70 % of the height), the columns of the
    mediastinum (the middle tenth) are brighter than those of either lung field (20-35 % and
    65-80 % of the width)."""
    if layout.speckle >= RADIOGRAPH_SPECKLE_MAX or layout.background.mean() >= RADIOGRAPH_BACKGROUND_MAX:
        return None
    image = layout.image
    rows, cols = image.shape
    profile = np.median(image[int(0.2 * rows): int(0.7 * rows)], axis=0)
    middle = float(np.median(profile[int(0.45 * cols): int(0.55 * cols)]))
    left = float(np.median(profile[int(0.2 * cols): int(0.35 * cols)]))
    right = float(np.median(profile[int(0.65 * cols): int(0.8 * cols)]))
    if middle - max(left, right) < MEDIASTINUM_MARGIN:
        return None
    return ModalityGuess("DX", "a chest radiograph's layout: two dark lung fields either side of a brighter "
                               "mediastinum")


def _cross_section(layout: _Layout) -> ModalityGuess | None:
    image, tissue = layout.image, ~layout.background
    if layout.background.mean() < BACKGROUND_MIN:
        return None
    labels, count = ndi.label(tissue)
    if count == 0:
        return None
    sizes = ndi.sum(tissue, labels, index=np.arange(1, count + 1))
    body = labels == int(np.argmax(sizes)) + 1
    share = body.sum() / tissue.sum() if tissue.any() else 0.0
    rows, cols = np.nonzero(body)
    if share < 0.8 or rows.size < 100:
        return None
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    if not 0.55 <= body.sum() / box <= 0.95:  # an ellipse fills pi/4 = 0.79 of its box
        return None
    filled = ndi.binary_fill_holes(body)
    depth = max(2, int(round(0.04 * np.sqrt(filled.sum() / np.pi))))
    inner = ndi.binary_erosion(filled, iterations=depth)
    rim, core = image[filled & ~inner], image[inner]
    if rim.size == 0 or core.size == 0:
        return None
    if np.percentile(rim, 90) >= 0.9 and np.percentile(rim, 90) > np.percentile(core, 95):
        return ModalityGuess("CT", "a cross-section on black whose outer rim is its brightest part (bone), as on CT")
    aerated = (core < 0.15).mean()
    if aerated >= 0.15:
        return ModalityGuess("CT", "a body cross-section on black with dark aerated lungs inside, as on CT")
    return ModalityGuess("MR", "a round or oval head on black whose skull gives little signal, as on MR")
