"""The comparison's figures: each finding's prior and current crops side by side with their
difference, and the whole slice's difference.

Both studies are shown in the current image's frame: the prior is sampled at the registration's
place of every current pixel (``tools.compare.registration.resampled``), so the two crops cover
the same anatomy at one scale and orientation. One window shows both: the current view's (see
``display_window``) on each study's physical values, the prior's first put on the current's
scale where the two are not calibrated alike (``prior_levels``). The difference is current −
prior of the two windowed images (0–1), in 'RdBu_r' centred on 0: red where the current image
is brighter, blue where it is darker, full colour at half the window (``DIFFERENCE_LIMIT``),
grey where the prior does not reach. A different exposure or contrast phase shows in it too: it
is a guide to where to look, not a measurement.

Coordinates follow ``tools.coordinates`` (x = column, y = row, the centre of the top-left pixel
at (0, 0)); every place drawn is in the current image's native pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from scipy import ndimage as ndi

from tools.compare.record import ComparedFinding, LesionThere
from tools.compare.registration import Registration, resampled
from tools.compare.slices import SliceMatch
from tools.context import Artifact
from tools.render.annotated import place_label
from tools.render.geometry import LesionShape, clamp
from tools.render.panel import Panel, Pixels, resized, rows_up
from tools.render.style import (
    DPI,
    figure_box,
    figure_png,
    figure_text,
    fit_px,
    new_figure,
    outline_colour,
    suptitle,
)
from tools.study import Study, Window
from tools.study.windowing import apply_window, percentile_window, to_uint8

#: Findings with a figure of their own (the first ones, in the tool's order).
MAX_FINDINGS = 6
#: A difference of this part of the window (or more) shows at full colour.
DIFFERENCE_LIMIT = 0.5
#: The side of a finding's crop in current pixels: this many lesion radii, at least ``MIN_CROP_PX``.
CROP_RADII = 5.0
MIN_CROP_PX = 64
#: The radius drawn for a lesion without a measured size (current pixels).
UNSIZED_RADIUS_PX = 8.0
#: Panel sides in figure px: a finding's crops, and the whole slice (three of them ≤ 1600 px wide).
CROP_PANEL_PX = 300
SLICE_PANEL_PX = 500
#: The grid (longest side, px) on which the two studies' grey levels are ranked against each other.
MATCH_SIDE_PX = 256
GAP_PX = 20
#: Not a finding source: white, on a dark rim, so the outline reads on the image and on the difference.
OUTLINE = outline_colour("comparison")
_DIVERGING = colormaps["RdBu_r"](np.linspace(0.0, 1.0, 256), bytes=True)[:, :3]
_NO_PRIOR_GREY = 128
#: Puts the prior's values on the current study's scale (see ``prior_levels``).
Levels = Callable[[np.ndarray], np.ndarray]


class PairedFrames(Protocol):
    """What the figures read of ``compare.FramePair``. Named here rather than imported: compare.py
    imports this module, and the import graph counts a ``TYPE_CHECKING`` import as an arrow too."""

    @property
    def current_frame(self) -> int: ...

    @property
    def prior_frame(self) -> int: ...

    @property
    def registration(self) -> Registration: ...

    @property
    def match(self) -> SliceMatch | None: ...


# == the two images in the current frame =========================================================
@dataclass(frozen=True)
class Aligned:
    """A region of the current image and the registered prior over it, both windowed to 0–1.

    ``bounds`` (x0, y0, x1, y1; x1, y1 exclusive) is the region in current native pixels; the
    arrays may be coarser than it (the whole slice is downscaled). ``covered``: where the prior
    reaches.
    """

    current: np.ndarray
    prior: np.ndarray
    covered: np.ndarray
    bounds: tuple[int, int, int, int]

    @property
    def difference(self) -> np.ndarray:
        """current − prior where the prior reaches, 0 elsewhere."""
        return np.where(self.covered, self.current - self.prior, 0.0)


def display_window(study: Study, frame: int, window: Window | None) -> Window:
    """The window the current view is shown in: ``window``, else the study's display window.

    A display without a centre/width (a PNG's own grey levels, a colour image, a VOI LUT) gets
    the window that reproduces it: 0–255 for 8-bit values, the robust percentiles otherwise.
    """
    if window is not None and not study.is_colour:
        return window
    rendered = study.render(frame)
    if rendered.window is not None:
        return rendered.window
    values = study.physical(frame)
    if float(values.min()) >= 0 and float(values.max()) <= 255:
        return Window(center=127.5, width=255.0, name="8-bit", function="LINEAR_EXACT")
    return percentile_window(values)


def _sampled(values: np.ndarray, matrix: np.ndarray, bounds: tuple[int, int, int, int],
             step: float, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``values`` at ``matrix``'s place of each pixel of a ``shape`` grid that covers ``bounds``
    of the current image at ``step`` current pixels a cell (pixel centres as skimage's resize
    places them), blurred first where a cell spans more than one of their pixels."""
    x0, y0 = bounds[:2]
    offset = (step - 1.0) / 2.0
    place = matrix @ np.array([[step, 0.0, x0 + offset], [0.0, step, y0 + offset], [0.0, 0.0, 1.0]])
    # As skimage's anti-aliasing: a cell covering n source pixels is averaged with σ = (n − 1) / 2.
    sigma = (math.hypot(place[0, 0], place[1, 0]) - 1.0) / 2.0
    # Only the part the grid reaches is read and blurred: a crop needs a corner of a large image.
    rows, cols = shape
    xs, ys, _ = place @ np.array([[0, cols - 1, 0, cols - 1], [0, 0, rows - 1, rows - 1], [1, 1, 1, 1]])
    pad = 4 * max(sigma, 0.0) + 2
    h, w = values.shape[:2]
    c0, c1 = (int(clamp(v, 0, w)) for v in (math.floor(xs.min() - pad), math.ceil(xs.max() + pad) + 1))
    r0, r1 = (int(clamp(v, 0, h)) for v in (math.floor(ys.min() - pad), math.ceil(ys.max() + pad) + 1))
    if c1 - c0 < 2 or r1 - r0 < 2:  # the grid lies wholly outside
        return np.zeros(shape, np.float32), np.zeros(shape, bool)
    source = values[r0:r1, c0:c1]
    if sigma > 0.25:
        source = ndi.gaussian_filter(source, sigma)
    return resampled(source, np.array([[1.0, 0.0, -c0], [0.0, 1.0, -r0], [0.0, 0.0, 1.0]]) @ place, shape)


def _windowed(current: Study, values: np.ndarray, window: Window) -> np.ndarray:
    unit = apply_window(values, window)
    # MONOCHROME1 is inverted after the window, as the current study's own display does.
    return 1.0 - unit if current.safe.photometric == "MONOCHROME1" else unit


def calibrated(current: Study, prior: Study) -> bool:
    """Both DICOM in one physical unit (HU): a value means the same tissue in both studies."""
    unit = current.safe.physical_unit
    return current.safe.kind == prior.safe.kind == "dicom" and unit is not None and unit == prior.safe.physical_unit


def prior_levels(current: Study, prior: Study, pair: PairedFrames) -> Levels:
    """How the prior's values are put on the current's scale, so that one window shows both.

    Calibrated values (``calibrated``) stay as they are. Others (two PNGs, two MR scans, an
    exposure apart) are matched by rank over the part of the slice both show: the prior's
    percentiles onto the current's, as the registration ranks grey levels; without that the
    current's window can show the prior all white or all black.
    """
    if calibrated(current, prior):
        return lambda values: values
    h, w = current.physical(pair.current_frame).shape[:2]
    step = max(1.0, max(h, w) / MATCH_SIDE_PX)
    shape = (max(1, round(h / step)), max(1, round(w / step)))
    # A MONOCHROME1 study shows high values dark: its values turn round before they are ranked.
    sign = -1.0 if (current.safe.photometric == "MONOCHROME1") != (prior.safe.photometric == "MONOCHROME1") else 1.0
    now, _ = _sampled(np.asarray(current.physical(pair.current_frame), np.float32), np.eye(3), (0, 0, w, h), step,
                      shape)
    before, covered = _sampled(sign * np.asarray(prior.physical(pair.prior_frame), np.float32),
                               pair.registration.transform.matrix, (0, 0, w, h), step, shape)
    if not covered.any():
        return lambda values: values
    ranks = np.linspace(0.0, 100.0, 101)
    source, target = np.percentile(before[covered], ranks), np.percentile(now[covered], ranks)
    return lambda values: np.interp(sign * values, source, target).astype(np.float32)


def aligned(current: Study, prior: Study, pair: PairedFrames, bounds: tuple[int, int, int, int], *,
            window: Window, levels: Levels | None = None, step: float = 1.0) -> Aligned:
    """The current image over ``bounds`` and the prior registered onto it, at ``step`` current
    pixels a cell, both in ``window``, the prior's values put on the current's scale by ``levels``
    (``prior_levels`` when not given)."""
    x0, y0, x1, y1 = bounds
    shape = (max(1, round((y1 - y0) / step)), max(1, round((x1 - x0) / step)))
    now, _ = _sampled(np.asarray(current.physical(pair.current_frame), np.float32), np.eye(3), bounds, step, shape)
    before, covered = _sampled(np.asarray(prior.physical(pair.prior_frame), np.float32),
                               pair.registration.transform.matrix, bounds, step, shape)
    levels = levels or prior_levels(current, prior, pair)
    before = _windowed(current, levels(before), window)
    # Black where the prior does not reach: its edge values, repeated, would look like anatomy.
    return Aligned(_windowed(current, now, window), np.where(covered, before, 0.0), covered, bounds)


# == where each lesion is, in the current image ==================================================
@dataclass(frozen=True)
class Place:
    """A lesion's place in the current image's native pixels."""

    x: float
    y: float
    radius: float

    @property
    def shape(self) -> LesionShape:
        return LesionShape(self.x, self.y, 2 * self.radius, 2 * self.radius, 0.0, True)


def _radius(there: LesionThere, spacing_mm: tuple[float, float] | None) -> float:
    """Half the mean diameter in current pixels (a prior's size in pixels is already in them)."""
    if there.size_px is not None:
        return sum(there.size_px) / 4
    if there.size_mm is not None and spacing_mm is not None:
        return sum(there.size_mm) / 4 / (sum(spacing_mm) / 2)
    return UNSIZED_RADIUS_PX


def places(item: ComparedFinding, pair: PairedFrames,
           spacing_mm: tuple[float, float] | None) -> tuple[Place | None, Place | None]:
    """(prior, current) places of a finding in the current image; the prior's centre brought
    back with the registration's inverse. None where the lesion is not there."""
    now = None if item.current is None else Place(*item.current.center_px, _radius(item.current, spacing_mm))
    before = None
    if item.prior is not None:
        x, y = pair.registration.transform.inverse().apply(*item.prior.center_px)
        before = Place(x, y, _radius(item.prior, spacing_mm))
    return before, now


def crop_bounds(image_shape: tuple[int, ...], centre: Place, radius: float) -> tuple[int, int, int, int]:
    """The square crop (x1, y1 exclusive) around ``centre``, ``CROP_RADII`` radii a side, kept inside."""
    h, w = image_shape[:2]
    side = math.ceil(max(CROP_RADII * radius, MIN_CROP_PX))
    side_x, side_y = min(side, w), min(side, h)
    x0 = int(clamp(round(centre.x - side_x / 2), 0, w - side_x))
    y0 = int(clamp(round(centre.y - side_y / 2), 0, h - side_y))
    return x0, y0, x0 + side_x, y0 + side_y


def finding_crop(current: Study, prior: Study, pair: PairedFrames, item: ComparedFinding, *,
                 window: Window, levels: Levels | None = None) -> Aligned:
    """The crop of a finding: centred on it now (on its prior place brought back, once resolved),
    wide enough for the larger of the two lesions."""
    before, now = places(item, pair, current.pixel_spacing_mm(pair.current_frame))
    centre = now or before
    if centre is None:
        raise ValueError(f"{item.id} has a place in neither study")
    radius = max(p.radius for p in (before, now) if p is not None)
    shape = current.physical(pair.current_frame).shape
    return aligned(current, prior, pair, crop_bounds(shape, centre, radius), window=window, levels=levels)


# == captions ====================================================================================
def _mean(there: LesionThere | None) -> tuple[float, str] | None:
    if there is None:
        return None
    if there.size_mm is not None:
        return sum(there.size_mm) / 2, "mm"
    return None if there.size_px is None else (sum(there.size_px) / 2, "px")


def _axes_text(there: LesionThere | None) -> str:
    """'11.3 × 10.2 mm' (px without spacing); '' without a measurement."""
    if there is None or (there.size_mm or there.size_px) is None:
        return ""
    axes, unit = (there.size_mm, "mm") if there.size_mm is not None else (there.size_px, "px")
    return f"{axes[0]:.1f} × {axes[1]:.1f} {unit}"


def caption(item: ComparedFinding) -> str:
    """One line, e.g. 'F1 grown: 8.1 → 11.3 mm mean diameter (+39 %)'."""
    before, now = _mean(item.prior), _mean(item.current)
    if item.status == "new":
        size = f"{now[0]:.1f} {now[1]} mean diameter now; " if now else ""
        return f"{item.id} new: {size}nothing at its place in the prior"
    if item.status == "resolved":
        size = f"{before[0]:.1f} {before[1]} mean diameter in the prior; " if before else ""
        return f"{item.id} resolved: {size}nothing at its place now"
    if before is None or now is None:
        return f"{item.id} {item.status} (not measurable in one of the two studies)"
    pct = item.change.mean_diameter_pct if item.change else 100 * (now[0] - before[0]) / before[0]
    return f"{item.id} {item.status}: {before[0]:.1f} → {now[0]:.1f} {now[1]} mean diameter ({pct:+.0f} %)"


# == drawing =====================================================================================
def _difference_rgb(crop: Aligned) -> np.ndarray:
    """The difference through the diverging colormap (0 at its white middle), grey where the
    prior does not reach."""
    unit = np.clip(crop.difference / DIFFERENCE_LIMIT, -1.0, 1.0) * 0.5 + 0.5
    rgb = _DIVERGING[np.rint(unit * 255).astype(np.intp)]
    rgb[~crop.covered] = _NO_PRIOR_GREY
    return rgb


def _outline(panel: Panel, place: Place, label: str | None, *, absent: bool, gid: str) -> None:
    """A circle at the lesion's place on a dark rim; dashed where the lesion is not in this study."""
    style = "dashed" if absent else "solid"
    for colour, width in (("black", 3.5), (OUTLINE, 1.8)):
        panel.add(Circle((place.x, place.y), place.radius, fill=False, edgecolor=colour, linewidth=width,
                         linestyle=style, alpha=0.7 if colour == "black" else 1.0, gid=gid))
    if label:
        place_label(panel, label, place.shape, OUTLINE, gid=f"label-{gid}")


def _panels(figure: Figure, crop: Aligned, titles: Sequence[str], size: tuple[int, int], bottom: int,
            nearest: bool) -> list[Panel]:
    """Prior, current and difference side by side, each titled, in native current coordinates."""
    ax_w, ax_h = size
    images = (to_uint8(crop.prior), to_uint8(crop.current), _difference_rgb(crop))
    result = []
    for index, (title, image) in enumerate(zip(titles, images, strict=True)):
        left = GAP_PX + index * (ax_w + GAP_PX)
        panel = Panel(figure, (left, bottom, ax_w, ax_h), rows_up(resized(image, ax_w, ax_h, nearest)), crop.bounds)
        figure_text(figure, left + ax_w / 2, bottom + ax_h + 6.0 * DPI / 72.0, title, fontsize=11,
                    ha="center", va="baseline", gid=f"panel-{index}")
        result.append(panel)
    _difference_key(figure, GAP_PX + 2 * (ax_w + GAP_PX), bottom - 24, ax_w)
    return result


def _difference_key(figure: Figure, left: float, y: float, width: float) -> None:
    """'darker now' — the colormap — 'brighter now', under the difference panel."""
    renderer = figure.canvas.get_renderer()
    low = figure_text(figure, left, y, "darker now", fontsize=9, ha="left", va="center", gid="key-darker")
    high = figure_text(figure, left + width, y, "brighter now", fontsize=9, ha="right", va="center",
                       gid="key-brighter")
    start = left + low.get_window_extent(renderer).width + 6
    length = max(10, round(width - (start - left) - high.get_window_extent(renderer).width - 6))
    strip = np.repeat(_DIVERGING[np.linspace(0, 255, length).astype(np.intp)][None], 10, axis=0)
    figure.add_artist(Pixels(rows_up(np.ascontiguousarray(strip)), figure_box(figure, start, y - 5, length, 10),
                             gid="difference-key"))


def _finding_png(crop: Aligned, item: ComparedFinding, before: Place | None, now: Place | None) -> bytes:
    x0, y0, x1, y1 = crop.bounds
    size = fit_px((y1 - y0) / (x1 - x0), CROP_PANEL_PX, CROP_PANEL_PX)
    top, bottom = 70, 45
    figure = new_figure(3 * size[0] + 4 * GAP_PX, top + size[1] + bottom)
    titles = (f"Prior  {_axes_text(item.prior)}".rstrip(), f"Current  {_axes_text(item.current)}".rstrip(),
              "Difference (current − prior)")
    prior_panel, current_panel, difference_panel = _panels(figure, crop, titles, size, bottom, nearest=True)
    # A lesion missing on one side is drawn there at the other side's place, dashed.
    _outline(prior_panel, before or now, item.id if before else "nothing here in the prior",
             absent=before is None, gid=f"prior-{item.id}")
    _outline(current_panel, now or before, item.id if now else "nothing here now", absent=now is None,
             gid=f"current-{item.id}")
    _outline(difference_panel, now or before, None, absent=now is None, gid=f"difference-{item.id}")
    suptitle(figure, caption(item))
    return figure_png(figure)


def _slice_png(crop: Aligned, pair: PairedFrames, marks: Sequence[tuple[str, Place, bool]]) -> bytes:
    x0, y0, x1, y1 = crop.bounds
    size = fit_px((y1 - y0) / (x1 - x0), SLICE_PANEL_PX, SLICE_PANEL_PX)
    top, bottom = 70, 45
    figure = new_figure(3 * size[0] + 4 * GAP_PX, top + size[1] + bottom)
    titles = ("Prior, registered to the current image", "Current", "Difference (current − prior)")
    panels = _panels(figure, crop, titles, size, bottom, nearest=False)
    for name, place, absent in marks:  # a resolved finding: dashed at its prior place
        _outline(panels[1], place, name, absent=absent, gid=f"slice-{name}")
    suptitle(figure, _slice_title(pair))
    return figure_png(figure)


def _slice_title(pair: PairedFrames) -> str:
    if pair.match is None:
        return "The prior registered to the current image, and their difference"
    return (f"Current slice {pair.current_frame + 1} and prior slice {pair.prior_frame + 1}, registered, "
            "and their difference")


# == the tool's figures ==========================================================================
def _pair_of(item: ComparedFinding, pairs: Sequence[PairedFrames]) -> PairedFrames | None:
    """The frame pair a finding was compared on: its current frame's, or (resolved) its prior frame's."""
    for pair in pairs:
        if (item.current is not None and pair.current_frame == item.current.frame) or (
                item.current is None and item.prior is not None and pair.prior_frame == item.prior.frame):
            return pair
    return None


def comparison_figures(current: Study, prior: Study, pairs: Sequence[PairedFrames],
                       compared: Sequence[ComparedFinding],
                       *, window: Window | None) -> list[Artifact]:
    """'comparison-<ID>.png' for each of the first ``MAX_FINDINGS`` findings (prior, current and
    difference crops) and 'comparison-difference.png' for the first frame pair (the whole slice)."""
    artifacts = []
    levels: dict[tuple[int, int], Levels] = {}  # ranking the grey levels reads both whole slices: once a pair
    for item in compared[:MAX_FINDINGS]:
        pair = _pair_of(item, pairs)
        if pair is None:
            continue
        key = (pair.current_frame, pair.prior_frame)
        if key not in levels:
            levels[key] = prior_levels(current, prior, pair)
        shown = display_window(current, pair.current_frame, window)
        crop = finding_crop(current, prior, pair, item, window=shown, levels=levels[key])
        before, now = places(item, pair, current.pixel_spacing_mm(pair.current_frame))
        artifacts.append(Artifact(name=f"comparison-{item.id}.png", data=_finding_png(crop, item, before, now),
                                  caption=caption(item), for_model=False))
    if pairs:
        first = pairs[0]
        artifacts.append(_slice_artifact(current, prior, first, compared, window,
                                         levels.get((first.current_frame, first.prior_frame))))
    return artifacts


def _slice_artifact(current: Study, prior: Study, pair: PairedFrames, compared: Sequence[ComparedFinding],
                    window: Window | None, levels: Levels | None) -> Artifact:
    h, w = current.physical(pair.current_frame).shape[:2]
    step = max(1.0, max(h, w) / SLICE_PANEL_PX)  # the panels are no larger: sample no finer
    crop = aligned(current, prior, pair, (0, 0, w, h), window=display_window(current, pair.current_frame, window),
                   levels=levels, step=step)
    spacing = current.pixel_spacing_mm(pair.current_frame)
    marks = []
    for item in compared:
        if _pair_of(item, [pair]) is not None:
            before, now = places(item, pair, spacing)
            marks.append((item.id, now or before, now is None))
    caption_text = "The prior registered to the current image, and their difference (red: brighter now)."
    return Artifact(name="comparison-difference.png", data=_slice_png(crop, pair, marks), caption=caption_text,
                    for_model=False)
