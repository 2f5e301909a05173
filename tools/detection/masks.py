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
    return _largest_labelled(mask, keep, min_fraction)[0]


def _largest_labelled(mask: np.ndarray, keep: int = 1,
                      min_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The ``keep`` largest components of ``mask`` of at least ``min_fraction`` of the image (the
    largest one when none is), with the labels of ``mask``'s components and the chosen labels."""
    labels, count = ndi.label(mask)
    if count == 0:
        return mask.copy(), labels, []
    # Pixel counts as float64, as ``ndi.sum`` gives them, so that ties sort the same way.
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:].astype(np.float64)
    order = np.argsort(sizes)[::-1][:keep]
    chosen = [int(i) + 1 for i in order if sizes[i] >= min_fraction * mask.size] or [int(order[0]) + 1]
    wanted = np.zeros(count + 1, dtype=bool)
    wanted[chosen] = True
    return wanted[labels], labels, chosen


# The morphology below is scipy.ndimage's with its default cross-shaped structuring element
# (binary_opening, _closing, _erosion, _fill_holes), written with array shifts and one
# labelling: the same pixels (``tests/test_series_speed_identity.py`` checks them against
# scipy), several times faster on a 512² mask. Every slice of a series runs them a dozen times.

def _eroded(mask: np.ndarray) -> np.ndarray:
    """One erosion by the 3×3 cross, pixels beyond the image counting as unset."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[0] = out[-1] = False
    out[:, 0] = out[:, -1] = False
    return out


def _dilated(mask: np.ndarray) -> np.ndarray:
    """One dilation by the 3×3 cross."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def binary_opening(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndi.binary_opening(mask, iterations=iterations)`` of a 2-D mask."""
    for _ in range(iterations):
        mask = _eroded(mask)
    for _ in range(iterations):
        mask = _dilated(mask)
    return mask


def binary_closing(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndi.binary_closing(mask, iterations=iterations)`` of a 2-D mask (its erosion, like
    scipy's, counts pixels beyond the image as unset)."""
    for _ in range(iterations):
        mask = _dilated(mask)
    for _ in range(iterations):
        mask = _eroded(mask)
    return mask


def binary_erosion(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndi.binary_erosion(mask, iterations=iterations)`` of a 2-D mask, ``iterations`` >= 1
    (scipy reads fewer as "until nothing changes")."""
    for _ in range(iterations):
        mask = _eroded(mask)
    return mask


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes(mask)`` of a 2-D mask: everything but the unset regions
    (4-connected) that reach the image's edge."""
    labels, count = ndi.label(~mask)
    filled = np.ones(count + 1, dtype=bool)
    filled[np.concatenate((labels[0], labels[-1], labels[:, 0], labels[:, -1]))] = False
    filled[0] = True
    return filled[labels]


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
    mask = binary_opening(mask, iterations=2)
    mask = _largest_components(mask, keep=2, min_fraction=0.02)
    return fill_holes(mask)


def ct_lung_mask(hu: np.ndarray) -> np.ndarray:
    """Lung fields of an axial CT slice (HU): aerated tissue inside the body, closed so that
    nodules and vessels inside the lungs, and juxtapleural nodules, are included."""
    body = fill_holes(_largest_components(binary_opening(hu > -500, iterations=2)))
    air = (hu < -400) & body
    air = binary_opening(air, iterations=1)
    lungs, labels, chosen = _largest_labelled(air, keep=2, min_fraction=0.002)
    if not lungs.any():
        return lungs
    # Close across vessels and nodules (bright, so excluded by the threshold), then fill. A
    # disk of ~12 px (~8 mm) also rolls over juxtapleural nodules that indent the lung outline.
    # Each lung is closed on its own, so that the closing never bridges the mediastinum.
    # (Within each lung's bounding box: the closing cannot reach further than its radius.)
    closed = np.zeros_like(lungs)
    boxes = ndi.find_objects(labels, max_label=max(chosen))
    for index in chosen:  # each lung is a component of the air mask, with its label there
        window = tuple(slice(max(0, s.start - 14), s.stop + 14) for s in boxes[index - 1])
        closed[window] |= fill_holes(close_disk(labels[window] == index, 12))
    return closed & body


def close_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological closing with a disk of ``radius`` px (pixel centres within ``radius``).

    The pixels of ``ndi.distance_transform_edt(~padded) <= radius`` (dilation) and then of
    ``ndi.distance_transform_edt(dilated) > radius`` (erosion), with the disk taken apart into
    its rows: a row of half-width w is a run of shifts, and each row of the disk reuses the
    widths before it, several times faster than the two distance transforms.
    """
    pad = int(np.ceil(radius)) + 1
    padded = np.pad(mask, pad)
    if not padded.any():  # no pixel to measure a distance from: as the distance transforms say
        dilated = ndi.distance_transform_edt(~padded) <= radius
        return (ndi.distance_transform_edt(dilated) > radius)[pad:-pad, pad:-pad]
    widths = _disk_half_widths(float(radius))
    dilated = _dilated_by_disk(padded, widths)
    closed = ~_dilated_by_disk(~dilated, widths)  # pixels beyond the array are not outside
    return closed[pad:-pad, pad:-pad]


def _disk_half_widths(radius: float) -> dict[int, int]:
    """For each row offset dy of the disk, the largest dx with √(dy² + dx²) <= ``radius``, the
    distance computed as ``ndi.distance_transform_edt`` does (a float64 square root)."""
    reach = int(np.ceil(radius))
    widths = {}
    for dy in range(-reach, reach + 1):
        inside = [dx for dx in range(reach + 1) if np.sqrt(np.float64(dy * dy + dx * dx)) <= radius]
        if inside:
            widths[dy] = max(inside)
    return widths


def _dilated_by_disk(mask: np.ndarray, widths: dict[int, int]) -> np.ndarray:
    """``mask`` dilated by the disk of ``_disk_half_widths`` (nothing set beyond the array)."""
    rows, cols = mask.shape
    runs = [mask]  # runs[w]: dilated along the rows by w px either side
    for w in range(1, max(widths.values()) + 1):
        run = runs[-1].copy()
        if w < cols:
            run[:, w:] |= mask[:, :-w]
            run[:, :-w] |= mask[:, w:]
        runs.append(run)
    out = np.zeros_like(mask)
    for dy, w in widths.items():  # out[r] |= runs[w][r + dy]
        if abs(dy) >= rows:
            continue
        if dy >= 0:
            out[:rows - dy] |= runs[w][dy:]
        else:
            out[-dy:] |= runs[w][:rows + dy]
    return out


def brain_mask(image: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Inside of the head: the head mask eroded by ~6% of its size to drop scalp and skull.

    A real skull strip (threshold, cut bridges, keep the central component) lost lesions at
    the brain's edge and cystic lesions on the dev set; the erosion keeps them.
    """
    if not head.any():
        return head
    radius = np.sqrt(head.sum() / np.pi)
    depth = max(2, int(round(0.06 * radius)))
    return binary_erosion(head, iterations=depth)


def thorax_mask(body: np.ndarray) -> np.ndarray:
    """The body of a chest radiograph with the lung fields in it: ``body`` closed over gaps up to
    ~12 px (at 512 px), then hole-filled. A lung field is dark, so the body threshold leaves it
    out, and filling the body's holes brings it back only if the body encloses it; where a thin
    dark gap (above the clavicle, along a thin chest wall) joins it to the outside, the whole
    lung was left out of the body, and so out of the lung mask (1 of 30 dev radiographs, with
    the mass in that lung)."""
    radius = max(2.0, 6.0 * max(body.shape) / 512.0)
    return fill_holes(close_disk(body, radius))


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
    lungs = binary_opening(lungs, iterations=3)
    lungs = _largest_components(lungs, keep=2, min_fraction=0.01)
    closed = binary_closing(lungs, iterations=8)
    return fill_holes(closed) & prior


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
    tissue = fill_holes(binary_closing(tissue, iterations=5))
    border = np.zeros_like(tissue)
    margin_r, margin_c = max(2, rows // 20), max(2, cols // 20)
    border[margin_r:rows - margin_r, margin_c:cols - margin_c] = True
    return tissue & border
