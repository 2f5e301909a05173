"""Where to look: body/foreground masks and organ masks, per modality.

All masks are computed on the *working image* (see ``tools.detection.working``): a greyscale
float image scaled to [0, 1] at a resolution whose long side is at most 512 px. They are
deliberately coarse — they exclude air, table, text bands and skull, not define anatomy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull


def _largest_components(mask: np.ndarray, keep: int = 1, min_fraction: float = 0.0) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count == 0:
        return mask.copy()
    sizes = ndi.sum(mask, labels, index=np.arange(1, count + 1))
    order = np.argsort(sizes)[::-1][:keep]
    chosen = [i + 1 for i in order if sizes[i] >= min_fraction * mask.size]
    return np.isin(labels, chosen) if chosen else labels == (order[0] + 1)


def _otsu(values: np.ndarray) -> float:
    histogram, edges = np.histogram(values, bins=128)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(histogram)
    total = weight[-1]
    if total == 0:
        return float(values.mean()) if values.size else 0.5
    mean = np.cumsum(histogram * centres)
    between = (mean[-1] * weight - mean * total) ** 2 / np.maximum(weight * (total - weight), 1e-12)
    return float(centres[int(np.argmax(between[:-1]))])


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """The body (or imaged region): above an Otsu threshold of the smoothed image, holes filled."""
    smooth = ndi.gaussian_filter(image, 2.0)
    threshold = min(_otsu(smooth), 0.5 * float(np.percentile(smooth, 99)))
    mask = smooth > max(threshold * 0.6, 0.02)
    mask = ndi.binary_opening(mask, iterations=2)
    mask = _largest_components(mask, keep=2, min_fraction=0.02)
    return ndi.binary_fill_holes(mask)


def ct_lung_mask(hu: np.ndarray) -> np.ndarray:
    """Lung fields of an axial CT slice (HU): aerated tissue inside the body, closed so that
    nodules and vessels inside the lungs, and juxtapleural nodules, are included."""
    body = ndi.binary_fill_holes(_largest_components(ndi.binary_opening(hu > -500, iterations=2)))
    air = (hu < -400) & body
    air = ndi.binary_opening(air, iterations=1)
    lungs = _largest_components(air, keep=2, min_fraction=0.002)
    if not lungs.any():
        return lungs
    # Close across vessels and nodules (bright, so excluded by the threshold), then fill. A
    # disk of ~12 px (~8 mm) also rolls over juxtapleural nodules that indent the lung outline.
    # Each lung is closed on its own, so that the closing never bridges the mediastinum.
    # (Within each lung's bounding box: the closing cannot reach further than its radius.)
    labels, count = ndi.label(lungs)
    closed = np.zeros_like(lungs)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        window = tuple(slice(max(0, s.start - 14), s.stop + 14) for s in box)
        closed[window] |= ndi.binary_fill_holes(close_disk(labels[window] == index, 12))
    return closed & body


def close_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological closing with a disk, via two Euclidean distance transforms.

    Equivalent to dilating then eroding with a disk of ``radius`` px, but linear in the image
    size instead of growing with the disk's area.
    """
    pad = int(np.ceil(radius)) + 1
    padded = np.pad(mask, pad)
    dilated = ndi.distance_transform_edt(~padded) <= radius
    closed = ndi.distance_transform_edt(dilated) > radius
    return closed[pad:-pad, pad:-pad]


def brain_mask(image: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Inside of the head: the head mask eroded by ~6% of its size to drop scalp and skull.

    A real skull strip (threshold, cut bridges, keep the central component) lost lesions at
    the brain's edge and cystic lesions on the dev set; the erosion keeps them.
    """
    if not head.any():
        return head
    radius = np.sqrt(head.sum() / np.pi)
    depth = max(2, int(round(0.06 * radius)))
    return ndi.binary_erosion(head, iterations=depth)


def thorax_mask(body: np.ndarray) -> np.ndarray:
    """The body of a chest radiograph with the lung fields in it: ``body`` closed over gaps up to
    ~12 px (at 512 px), then hole-filled. A lung field is dark, so the body threshold leaves it
    out, and filling the body's holes brings it back only if the body encloses it; where a thin
    dark gap (above the clavicle, along a thin chest wall) joins it to the outside, the whole
    lung was left out of the body, and so out of the lung mask (1 of 30 dev radiographs, with
    the mass in that lung)."""
    radius = max(2.0, 6.0 * max(body.shape) / 512.0)
    return ndi.binary_fill_holes(close_disk(body, radius))


def chest_lung_mask(image: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Lung fields of a frontal chest radiograph: the darker regions inside the thorax.

    Radiographs have no HU; lungs are the large darker areas left and right of the mediastinum.
    A location prior (the central 80% of the width, 8–80% of the height) keeps out neck,
    shoulders and abdomen, and the mask is closed so that opacities inside the lungs count.
    """
    rows, cols = image.shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    prior = (xx > 0.08 * cols) & (xx < 0.92 * cols) & (yy > 0.06 * rows) & (yy < 0.82 * rows)
    smooth = ndi.gaussian_filter(image, 4.0)
    region = prior & body
    if not region.any():
        return region
    threshold = np.percentile(smooth[region], 55)
    lungs = (smooth < threshold) & region
    lungs = ndi.binary_opening(lungs, iterations=3)
    lungs = _largest_components(lungs, keep=2, min_fraction=0.01)
    closed = ndi.binary_closing(lungs, iterations=8)
    return ndi.binary_fill_holes(closed) & prior


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of ``mask`` (pixel centres within half a pixel of the hull)."""
    points = np.argwhere(mask & ~ndi.binary_erosion(mask))  # the hull of the outline is the hull
    if len(points) < 3 or np.linalg.matrix_rank(points - points[0]) < 2:
        return mask.copy()  # a point or a line is its own hull
    hull = ConvexHull(points)
    rows, cols = np.indices(mask.shape)
    inside = np.ones(mask.shape, dtype=bool)
    for normal_row, normal_col, offset in hull.equations:  # inside: normal · p + offset <= 0
        inside &= normal_row * rows + normal_col * cols + offset <= 0.5
    return inside


def ultrasound_mask(image: np.ndarray) -> np.ndarray:
    """The imaged sector: non-black tissue, away from the borders where text and rulers sit."""
    rows, cols = image.shape
    tissue = ndi.gaussian_filter(image, 3.0) > 0.03
    tissue = ndi.binary_fill_holes(ndi.binary_closing(tissue, iterations=5))
    border = np.zeros_like(tissue)
    margin_r, margin_c = max(2, rows // 20), max(2, cols // 20)
    border[margin_r:rows - margin_r, margin_c:cols - margin_c] = True
    return tissue & border
