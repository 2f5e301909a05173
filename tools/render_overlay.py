"""render_overlay: layered figures of the shown frame and its findings, as PNG artifacts.

Layers
------
image
    The windowed display image alone, at native resolution.
annotated
    Each finding as an ellipse (its Gaussian fit's FWHM axes and angle) or, without a fit, its
    box; the id label kept inside the image; a colour per verification status (confirmed
    green, adjusted amber, rejected red dashed, unverified cyan); calipers along the major axis
    with the size (mm, or px without spacing); a scale bar when spacing is known; orientation
    letters at the four edges when ImageOrientationPatient is known.
heatmap
    A probability map over the image (semi-transparent 'inferno', alpha = probability) with a
    colour bar.
comparison
    Original and annotated side by side.
crops
    One zoomed crop per finding (separate PNGs).
statistics
    One panel per finding: intensity histogram inside the lesion vs the surrounding ring, a line
    profile through the centre and, with a Gaussian fit, the fitted profile and its residuals.

Figures use matplotlib's object API (``Figure`` + ``FigureCanvasAgg``; pyplot's global state is
never touched), DejaVu Sans (matplotlib's bundled font) and 100 dpi at 7–9 in wide, so they are
legible at chat width. The PNGs are encoded from the canvas pixels with ``tools.png`` and carry
no text chunks, so equal input gives identical bytes. Coordinates follow ``tools.coordinates``:
x = column, y = row, the centre of the top-left pixel at (0, 0), boxes inclusive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse, Rectangle
from matplotlib.ticker import MaxNLocator
from PIL import Image
from pydantic import BaseModel, Field
from scipy import ndimage

from tools.context import Artifact, ToolContext, ToolResult
from tools.errors import InvalidCoordinatesError
from tools.findings import Finding, GaussianFit
from tools.fit_gaussian import accumulate_gaussian
from tools.measurement import FWHM_PER_SIGMA, mm_per_px
from tools.png import encode_png

__all__ = [
    "DPI", "STATUS_STYLE", "Layer", "LesionShape", "LineProfile", "RenderOverlayInput", "RenderOverlayOutput",
    "annotated_figure", "crop_bounds", "direction_letters", "figure_png", "lesion_masks", "lesion_shape",
    "line_profile", "orientation_labels", "probability_map", "render_annotated", "render_comparison",
    "render_crop", "render_heatmap", "render_image", "render_overlay", "render_statistics", "scale_bar_mm",
    "size_text", "status_of",
]

Layer = Literal["image", "annotated", "heatmap", "comparison", "crops", "statistics"]
Spacing = tuple[float, float] | None  # (row, column) mm
Orientation = Sequence[float] | None  # ImageOrientationPatient, 6 direction cosines

DPI = 100
LABEL_PT = 11
TITLE_PT = 12

# colour, line style
STATUS_STYLE: dict[str, tuple[str, str]] = {
    "confirmed": ("#2ecc40", "solid"),
    "adjusted": ("#ffb000", "solid"),
    "rejected": ("#ff3030", "dashed"),
    "unverified": ("#00e5ff", "solid"),
}
_NICE_BAR_MM = tuple(round(step * 10.0**power, 3) for power in range(-1, 4) for step in (1, 2, 3, 5))
_PATIENT_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # LPS: (+, -) per patient axis
_LABEL_BOX = {"boxstyle": "round,pad=0.25", "facecolor": "black", "edgecolor": "none", "alpha": 0.6}
_LABEL_PAD_PX = 0.25 * LABEL_PT * DPI / 72.0 + 1.0


# == geometry shared by the layers ==============================================================
@dataclass(frozen=True)
class LesionShape:
    """Where a finding is drawn: centre, full axis lengths in px, major-axis angle.

    ``angle_deg`` is measured from the +x (column) axis towards +y (down the rows), as in
    ``GaussianFit``; ``ellipse`` is False for a finding drawn as its box.
    """

    x: float
    y: float
    major_px: float
    minor_px: float
    angle_deg: float
    ellipse: bool

    @property
    def direction(self) -> tuple[float, float]:
        angle = math.radians(self.angle_deg)
        return math.cos(angle), math.sin(angle)

    def half_extent(self) -> tuple[float, float]:
        """Half width and half height of the axis-aligned box around the shape."""
        a, b = self.major_px / 2.0, self.minor_px / 2.0
        c, s = (abs(v) for v in self.direction)
        if self.ellipse:
            return math.hypot(a * c, b * s), math.hypot(a * s, b * c)
        return a * c + b * s, a * s + b * c


def _usable(fit: GaussianFit | None) -> bool:
    if fit is None:
        return False
    values = (*fit.center_px, fit.fwhm_major_px, fit.fwhm_minor_px, fit.angle_deg)
    return all(math.isfinite(v) for v in values) and fit.fwhm_major_px > 0 and fit.fwhm_minor_px > 0


def lesion_shape(finding: Finding) -> LesionShape:
    """The ellipse of the finding's Gaussian fit (FWHM axes), else its box."""
    fit = finding.gaussian
    if _usable(fit):
        return LesionShape(fit.center_px[0], fit.center_px[1], max(fit.fwhm_major_px, 1.0),
                           max(fit.fwhm_minor_px, 1.0), fit.angle_deg, True)
    box = finding.bbox_px
    x, y = box.center
    if box.width >= box.height:
        return LesionShape(x, y, box.width, box.height, 0.0, False)
    return LesionShape(x, y, box.height, box.width, 90.0, False)


def status_of(finding: Finding) -> str:
    """The verification status, 'unverified' when the finding was never checked."""
    return finding.verification.status if finding.verification is not None else "unverified"



def _format_size(major: float, minor: float, unit: str) -> str:
    digits = 0 if unit == "px" or major >= 100 else 1
    return f"{major:.{digits}f} × {minor:.{digits}f} {unit}"


def size_text(finding: Finding, spacing_mm: Spacing) -> str | None:
    """'12.3 × 8.1 mm' (or px without spacing); None when the finding has no size."""
    if finding.size_mm is not None:
        return _format_size(*finding.size_mm, "mm")
    if finding.size_px is None:
        return None
    if spacing_mm is None:
        return _format_size(*finding.size_px, "px")
    angle = lesion_shape(finding).angle_deg
    return _format_size(finding.size_px[0] * mm_per_px(angle, spacing_mm),
                        finding.size_px[1] * mm_per_px(angle + 90.0, spacing_mm), "mm")


def _caliper_px(finding: Finding, shape: LesionShape, spacing_mm: Spacing) -> float | None:
    """The measured major diameter in px, which the calipers span."""
    if finding.size_px is not None:
        return finding.size_px[0]
    if finding.size_mm is not None and spacing_mm is not None:
        return finding.size_mm[0] / mm_per_px(shape.angle_deg, spacing_mm)
    return shape.major_px if finding.size_mm is not None else None


def direction_letters(vector: Sequence[float]) -> str:
    """Patient-direction letters (LPS: L/R, P/A, H/F) of a direction, dominant first.

    A second letter is added when the next component is at least 0.3 (an oblique direction),
    e.g. ``(0.87, 0.5, 0)`` gives ``"LP"``. A zero vector gives ``""``.
    """
    v = np.asarray(vector, dtype=float)[:3]
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0:
        return ""
    v = v / norm
    order = np.argsort(-np.abs(v), kind="stable")[:2]
    return "".join(_PATIENT_LETTERS[i][0 if v[i] > 0 else 1] for i in order
                   if i == order[0] or abs(v[i]) >= 0.3)


def orientation_labels(orientation: Orientation) -> dict[str, str] | None:
    """Letters for the left, right, top and bottom image edges, or None when unknown.

    ``orientation`` is ImageOrientationPatient: the row direction (+x, towards the right edge)
    then the column direction (+y, towards the bottom edge). A standard axial CT gives
    ``{"left": "R", "right": "L", "top": "A", "bottom": "P"}``.
    """
    if orientation is None or len(orientation) != 6:
        return None
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    labels = {"left": direction_letters(-row), "right": direction_letters(row),
              "top": direction_letters(-col), "bottom": direction_letters(col)}
    return labels if all(labels.values()) else None


def scale_bar_mm(view_width_px: float, column_spacing_mm: float) -> float:
    """A round length (1, 2, 3 or 5 × 10^n mm) closest to a fifth of the view's width.

    With these steps the bar always covers 14–28 % of the width (15–25 % in most cases).
    """
    width_mm = view_width_px * column_spacing_mm
    return min(_NICE_BAR_MM, key=lambda mm: abs(math.log(mm / (0.2 * width_mm))))


def _length_label(mm: float) -> str:
    return f"{mm:.3g} mm" if mm < 10 else f"{mm / 10:.3g} cm"


# == probability map ============================================================================
def probability_map(image_shape: tuple[int, int], findings: Sequence[Finding]) -> np.ndarray:
    """A probability map built from the findings, float32 in [0, 1], of ``image_shape`` (H, W).

    Each finding contributes a Gaussian normalised to a peak of 1 (its fit's FWHM axes and
    angle; without a fit, a Gaussian whose FWHM equals the box), weighted by its confidence
    ``w``; contributions combine as ``1 - Π(1 - w·g)`` (see ``fit_gaussian.accumulate_gaussian``).
    """
    absent = np.ones(image_shape, dtype=np.float32)  # Π(1 - w·g)
    for finding in findings:
        lesion = lesion_shape(finding)
        accumulate_gaussian(absent, (lesion.x, lesion.y), lesion.major_px / FWHM_PER_SIGMA,
                            lesion.minor_px / FWHM_PER_SIGMA, lesion.angle_deg, finding.confidence)
    return np.subtract(1.0, absent, out=absent)


def _rotated_grid(shape: LesionShape, x0: int, x1: int, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets from the shape's centre along its major (u) and minor (v) axes."""
    c, s = shape.direction
    dx = np.arange(x0, x1, dtype=np.float64)[None, :] - shape.x
    dy = np.arange(y0, y1, dtype=np.float64)[:, None] - shape.y
    return dx * c + dy * s, -dx * s + dy * c


# == figure plumbing ============================================================================
@dataclass(frozen=True)
class _View:
    """The image region an axes shows (pixel edges) and its zoom in figure px per image px."""

    left: float
    right: float
    top: float
    bottom: float
    scale: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top


def _figure(width_px: int, height_px: int) -> Figure:
    """A white figure of exactly ``width_px`` x ``height_px`` at ``DPI``, on its own Agg canvas."""
    # A quarter pixel more: Agg truncates the size, and 8.65 * 100 may come out as 864.99...
    figure = Figure(figsize=((width_px + 0.25) / DPI, (height_px + 0.25) / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure) -> bytes:
    """Draw ``figure`` and encode its pixels as RGB PNG (no metadata: deterministic bytes)."""
    canvas = figure.canvas
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return encode_png(rgba[..., :3])


def _fit_px(aspect: float, max_w: int, max_h: int) -> tuple[int, int]:
    """Largest (width, height) in px with height / width ~ ``aspect`` inside max_w x max_h."""
    width = min(float(max_w), max_h / aspect)
    return max(1, round(width)), max(1, min(max_h, round(width * aspect)))


def _place_axes(figure: Figure, left: float, bottom: float, width: float, height: float) -> Axes:
    """An axes at pixel position (from the figure's bottom-left corner) and pixel size."""
    fig_w, fig_h = figure.bbox.width, figure.bbox.height
    return figure.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))


def _suptitle(figure: Figure, title: str) -> None:
    figure.suptitle(title, fontsize=TITLE_PT, y=1.0 - 8.0 / figure.bbox.height, va="top")


class _Pixels(Artist):
    """RGBA pixels already at their axes' size, copied 1:1 under the annotations.

    Pillow resamples beforehand; matplotlib's own resampler costs ~40 ms per image even at
    1:1, which would dominate the time of every layer.
    """

    def __init__(self, rgba: np.ndarray) -> None:
        super().__init__()
        self._rows_up = np.ascontiguousarray(rgba[::-1])  # Agg's draw_image counts rows from the bottom
        self.set_zorder(0)

    def draw(self, renderer) -> None:
        box = self.axes.bbox
        gc = renderer.new_gc()
        gc.set_clip_rectangle(box)
        renderer.draw_image(gc, round(box.x0), round(box.y0), self._rows_up)
        gc.restore()
        self.stale = False


def _rgba(pixels: np.ndarray) -> np.ndarray:
    """uint8 grey or RGB -> RGBA; grey through the 'gray' colormap with vmin 0, vmax 255.

    uint8 values index the 256-entry LUT directly, which is what Normalize(0, 255) gives.
    """
    if pixels.ndim == 2:
        return colormaps["gray"](pixels, bytes=True)
    return np.dstack([pixels, np.full(pixels.shape[:2], 255, dtype=np.uint8)])


def _resized(image: np.ndarray, width_px: int, height_px: int, nearest: bool) -> np.ndarray:
    """Resample to the axes' pixel size with Pillow (area-aware when shrinking).

    ``nearest`` asks for nearest-neighbour when enlarging, as zoomed crops want.
    """
    h, w = image.shape[:2]
    if (w, h) == (width_px, height_px):
        return image
    # Pixels blown up a lot (or zoomed crops) show as blocks, not blur; shrinking always averages.
    blocks = width_px >= 3 * w or (nearest and width_px >= w)
    method = Image.Resampling.NEAREST if blocks else Image.Resampling.BILINEAR
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((width_px, height_px), method,
                                                                   reducing_gap=2.0)
    return np.asarray(resized)


def _draw_pixels(ax: Axes, pixels: np.ndarray, bounds: tuple[int, int, int, int]) -> _View:
    """Draw ``pixels`` (already at the axes' pixel size) over the native region ``bounds``."""
    x0, y0, x1, y1 = bounds
    ax.add_artist(_Pixels(_rgba(pixels)))
    ax.set_xlim(x0 - 0.5, x1 - 0.5)
    ax.set_ylim(y1 - 0.5, y0 - 0.5)
    ax.set_axis_off()
    return _View(x0 - 0.5, x1 - 0.5, y0 - 0.5, y1 - 0.5, pixels.shape[1] / (x1 - x0))


def _show(ax: Axes, image: np.ndarray, bounds: tuple[int, int, int, int], size_px: tuple[int, int],
          nearest: bool = False) -> _View:
    """Show ``image[y0:y1, x0:x1]`` (x1, y1 exclusive) in native coordinates on ``ax``."""
    x0, y0, x1, y1 = bounds
    return _draw_pixels(ax, _resized(image[y0:y1, x0:x1], *size_px, nearest), bounds)


def _check_display(display: np.ndarray) -> None:
    if display.dtype != np.uint8 or not (display.ndim == 2 or (display.ndim == 3 and display.shape[2] == 3)):
        raise ValueError(
            f"expected a uint8 (H, W) or (H, W, 3) display image, got {display.dtype} {display.shape}"
        )


# == annotation drawing =========================================================================
def _draw_outline(ax: Axes, finding: Finding, shape: LesionShape, colour: str, style: str) -> None:
    common = {"fill": False, "edgecolor": colour, "linewidth": 2.0, "linestyle": style}
    if shape.ellipse:
        ax.add_patch(Ellipse((shape.x, shape.y), shape.major_px, shape.minor_px, angle=shape.angle_deg,
                             gid=f"outline-{finding.id}", **common))
    else:
        box = finding.bbox_px
        ax.add_patch(Rectangle((box.x0 - 0.5, box.y0 - 0.5), box.width, box.height,
                               gid=f"outline-{finding.id}", **common))


def _draw_calipers(ax: Axes, shape: LesionShape, length_px: float, colour: str, view: _View) -> None:
    """A line along the major axis with perpendicular end ticks, on a dark underlay."""
    c, s = shape.direction
    half, tick = length_px / 2.0, 7.0 / view.scale
    ends = [(shape.x - half * c, shape.y - half * s), (shape.x + half * c, shape.y + half * s)]
    segments = [ends] + [[(x + tick * s, y - tick * c), (x - tick * s, y + tick * c)] for x, y in ends]
    # The underlay keeps the calipers visible where they cross a bright lesion.
    ax.add_collection(LineCollection(segments, colors="black", linewidths=3.2, alpha=0.7))
    ax.add_collection(LineCollection(segments, colors=colour, linewidths=1.6))


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(value, high))


def _place_label(ax: Axes, text: str, shape: LesionShape, colour: str, view: _View, gid: str) -> None:
    """Put the label above the shape (below it near the top edge), always inside the view."""
    artist = ax.text(0, 0, text, color=colour, fontsize=LABEL_PT, fontweight="bold", ha="left",
                     va="top", bbox=_LABEL_BOX, clip_on=True, gid=gid)
    extent = artist.get_window_extent(ax.figure.canvas.get_renderer())
    pad = _LABEL_PAD_PX / view.scale
    w, h = extent.width / view.scale + 2 * pad, extent.height / view.scale + 2 * pad
    margin, gap = 3.0 / view.scale, 4.0 / view.scale
    hx, hy = shape.half_extent()
    x, y = shape.x - hx, shape.y - hy - gap - h
    if y < view.top + margin:
        y = shape.y + hy + gap
    x = _clamp(x, view.left + margin, view.right - margin - w)
    y = _clamp(y, view.top + margin, view.bottom - margin - h)
    artist.set_position((x + pad, y + pad))


def _draw_finding(ax: Axes, finding: Finding, view: _View, spacing_mm: Spacing) -> None:
    colour, style = STATUS_STYLE[status_of(finding)]
    shape = lesion_shape(finding)
    _draw_outline(ax, finding, shape, colour, style)
    caliper = _caliper_px(finding, shape, spacing_mm)
    if caliper is not None:
        _draw_calipers(ax, shape, caliper, colour, view)
    size = size_text(finding, spacing_mm)
    _place_label(ax, f"{finding.id}  {size}" if size else finding.id, shape, colour, view,
                 gid=f"label-{finding.id}")


def _draw_scale_bar(ax: Axes, view: _View, spacing_mm: Spacing) -> None:
    if spacing_mm is None:
        return
    mm = scale_bar_mm(view.width, spacing_mm[1])
    length = mm / spacing_mm[1]
    x0, y = view.left + 0.04 * view.width, view.bottom - 0.05 * view.height
    for width, colour in ((5.0, "black"), (3.0, "white")):  # a dark rim keeps it visible on white
        ax.add_line(Line2D([x0, x0 + length], [y, y], color=colour, linewidth=width,
                           solid_capstyle="butt", gid="scale-bar"))
    ax.text(x0 + length / 2, y - 6.0 / view.scale, _length_label(mm), color="white", fontsize=10,
            ha="center", va="bottom", bbox=_LABEL_BOX, gid="scale-label")


def _draw_orientation(ax: Axes, view: _View, orientation: Orientation) -> None:
    labels = orientation_labels(orientation)
    if labels is None:
        return
    m = 6.0 / view.scale
    cx, cy = view.left + view.width / 2, view.top + view.height / 2
    places = {"left": (view.left + m, cy, "left", "center"), "right": (view.right - m, cy, "right", "center"),
              "top": (cx, view.top + m, "center", "top"), "bottom": (cx, view.bottom - m, "center", "bottom")}
    for edge, (x, y, ha, va) in places.items():
        ax.text(x, y, labels[edge], color="white", fontsize=12, fontweight="bold", ha=ha, va=va,
                bbox=_LABEL_BOX, gid=f"orientation-{edge}")


def _annotate(ax: Axes, view: _View, findings: Sequence[Finding], spacing_mm: Spacing,
              orientation: Orientation) -> None:
    _draw_orientation(ax, view, orientation)
    _draw_scale_bar(ax, view, spacing_mm)
    for finding in findings:
        _draw_finding(ax, finding, view, spacing_mm)


def _status_legend(figure: Figure, findings: Sequence[Finding]) -> None:
    statuses = [s for s in STATUS_STYLE if any(status_of(f) == s for f in findings)]
    if not statuses:
        return
    handles = [Line2D([], [], color=STATUS_STYLE[s][0], linestyle=STATUS_STYLE[s][1], linewidth=2.5, label=s)
               for s in statuses]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=10,
                  bbox_to_anchor=(0.5, 0.0), handlelength=2.5)


# == layers: pure functions =====================================================================
def annotated_figure(display: np.ndarray, findings: Sequence[Finding], *, spacing_mm: Spacing,
                     orientation: Orientation, title: str | None = None) -> Figure:
    """The annotated layer as a matplotlib Figure (see ``render_annotated``)."""
    _check_display(display)
    h, w = display.shape[:2]
    top, bottom = (45 if title else 10), (40 if findings else 10)
    ax_w, ax_h = _fit_px(h / w, 780, 800)
    figure = _figure(800, top + ax_h + bottom)
    ax = _place_axes(figure, (800 - ax_w) // 2, bottom, ax_w, ax_h)
    view = _show(ax, display, (0, 0, w, h), (ax_w, ax_h))
    _annotate(ax, view, findings, spacing_mm, orientation)
    if title:
        _suptitle(figure, title)
    _status_legend(figure, findings)
    return figure


def render_annotated(display: np.ndarray, findings: Sequence[Finding], *, spacing_mm: Spacing,
                     orientation: Orientation, title: str | None = None) -> bytes:
    """The display image with each finding drawn, as PNG (800 px wide).

    Parameters
    ----------
    display:
        uint8 display image, (H, W) greyscale or (H, W, 3) RGB, at native resolution.
    findings:
        Findings on this frame; each is drawn as its Gaussian FWHM ellipse or its box, coloured
        by verification status, with its id label and (when it has a size) calipers.
    spacing_mm:
        (row, column) pixel spacing in mm, or None (no scale bar; sizes in px).
    orientation:
        ImageOrientationPatient (6 cosines) for the edge letters, or None.
    title:
        Optional line above the image.
    """
    return figure_png(annotated_figure(display, findings, spacing_mm=spacing_mm,
                                       orientation=orientation, title=title))


def render_image(display: np.ndarray) -> bytes:
    """The display image alone as PNG at native resolution (no matplotlib: cheap)."""
    _check_display(display)
    return encode_png(np.ascontiguousarray(display))


def render_heatmap(display: np.ndarray, probability: np.ndarray, findings: Sequence[Finding] = (), *,
                   title: str | None = None) -> bytes:
    """A probability map over the image, as PNG (860 px wide) with a colour bar.

    The map is drawn with 'inferno' and an alpha of 0.85 × probability, so the image shows
    through where the probability is low.

    Parameters
    ----------
    display:
        uint8 display image, (H, W) or (H, W, 3).
    probability:
        Float map in [0, 1] of shape (H, W); NaN counts as 0, values are clipped to [0, 1].
    findings:
        Only their id labels are drawn, to tie the hot spots to the findings.
    title:
        Optional line above the image.

    Raises
    ------
    ValueError
        When ``probability`` does not match the image's shape.
    """
    _check_display(display)
    h, w = display.shape[:2]
    if probability.shape != (h, w):
        raise ValueError(f"the probability map is {probability.shape}, the image is {(h, w)}")
    top = 45 if title else 10
    ax_w, ax_h = _fit_px(h / w, 720, 800)
    figure = _figure(860, top + ax_h + 10)
    ax = _place_axes(figure, 10, 10, ax_w, ax_h)
    view = _draw_pixels(ax, _heat_blend(display, probability, ax_w, ax_h), (0, 0, w, h))
    for finding in findings:
        _place_label(ax, finding.id, lesion_shape(finding), "white", view, gid=f"label-{finding.id}")
    cax = _place_axes(figure, 10 + ax_w + 20, 10 + ax_h * 0.1, 25, ax_h * 0.8)
    colourbar = figure.colorbar(ScalarMappable(Normalize(0.0, 1.0), "inferno"), cax=cax,
                                ticks=[0.0, 0.5, 1.0])
    colourbar.set_label("probability", fontsize=11)
    cax.tick_params(labelsize=10)
    if title:
        _suptitle(figure, title)
    return figure_png(figure)


def _heat_blend(display: np.ndarray, probability: np.ndarray, width_px: int, height_px: int) -> np.ndarray:
    """The display under 'inferno' with alpha = 0.85 × probability, as RGB at axes size.

    Blending here rather than stacking two matplotlib images avoids a second resampling, and
    only pixels with a visible probability are touched (usually a small part of the image).
    """
    base = _resized(display, width_px, height_px, nearest=False)
    out = np.array(base if base.ndim == 3 else np.repeat(base[..., None], 3, axis=2))
    # Resample first, sanitise after: NaN and out-of-range values are cleaned on the small map.
    small = Image.fromarray(np.asarray(probability, dtype=np.float32)).resize((width_px, height_px),
                                                                              Image.Resampling.BILINEAR)
    prob = np.nan_to_num(np.asarray(small), nan=0.0)
    rows, cols = np.nonzero(prob > 0.5 / 255.0)
    p = np.clip(prob[rows, cols], 0.0, 1.0)
    colour = colormaps["inferno"](p, bytes=True)[:, :3].astype(np.float32)
    alpha = (0.85 * p)[:, None]
    out[rows, cols] = np.rint(out[rows, cols] * (1.0 - alpha) + colour * alpha).astype(np.uint8)
    return out


def render_comparison(display: np.ndarray, findings: Sequence[Finding], *, spacing_mm: Spacing,
                      orientation: Orientation, title: str | None = None) -> bytes:
    """Original (left) and annotated (right) side by side, as PNG (900 px wide)."""
    _check_display(display)
    h, w = display.shape[:2]
    top, bottom = (75 if title else 40), (40 if findings else 10)
    ax_w, ax_h = _fit_px(h / w, 435, 600)
    figure = _figure(900, top + ax_h + bottom)
    gap = (900 - 2 * ax_w) // 3
    pixels = _resized(display, ax_w, ax_h, nearest=False)  # both panels show the same pixels
    for index, name in enumerate(("original", "annotated")):
        ax = _place_axes(figure, gap + index * (ax_w + gap), bottom, ax_w, ax_h)
        view = _draw_pixels(ax, pixels, (0, 0, w, h))
        ax.set_title(name, fontsize=11, y=1.0)
        if index:
            _annotate(ax, view, findings, spacing_mm, orientation)
    if title:
        _suptitle(figure, title)
    _status_legend(figure, findings)
    return figure_png(figure)


def crop_bounds(image_shape: tuple[int, ...], finding: Finding,
                minimum_px: int = 48) -> tuple[int, int, int, int]:
    """The square crop around a finding: its box (or ellipse) grown 2×, at least ``minimum_px``.

    Returns ``(x0, y0, x1, y1)`` with x1, y1 exclusive, shifted to stay inside the image.
    """
    h, w = image_shape[:2]
    shape, box = lesion_shape(finding), finding.bbox_px
    hx, hy = shape.half_extent()
    extent = max(box.width, box.height, 2 * hx, 2 * hy)
    side = int(math.ceil(max(2.0 * extent, minimum_px)))
    side_x, side_y = min(side, w), min(side, h)
    x0 = int(_clamp(round(shape.x - side_x / 2), 0, w - side_x))
    y0 = int(_clamp(round(shape.y - side_y / 2), 0, h - side_y))
    return x0, y0, x0 + side_x, y0 + side_y


def _finding_title(finding: Finding, spacing_mm: Spacing) -> str:
    size = size_text(finding, spacing_mm)
    parts = [finding.id, finding.label, size, status_of(finding)]
    return " · ".join(p for p in parts if p)


def _reaches_into(finding: Finding, bounds: tuple[int, int, int, int]) -> bool:
    """Whether the finding's drawn shape overlaps the region (x1, y1 exclusive)."""
    shape = lesion_shape(finding)
    hx, hy = shape.half_extent()
    x0, y0, x1, y1 = bounds
    return (shape.x + hx > x0 - 0.5 and shape.x - hx < x1 - 0.5
            and shape.y + hy > y0 - 0.5 and shape.y - hy < y1 - 0.5)


def render_crop(display: np.ndarray, finding: Finding, findings: Sequence[Finding] = (), *,
                spacing_mm: Spacing, orientation: Orientation) -> bytes:
    """A zoomed crop around ``finding`` as PNG (720 px wide, nearest-neighbour upscaling).

    ``findings`` are the others on the frame; those reaching into the crop are drawn too. The
    title carries the id, label, size and verification status.
    """
    _check_display(display)
    x0, y0, x1, y1 = crop_bounds(display.shape, finding)
    ax_w, ax_h = _fit_px((y1 - y0) / (x1 - x0), 700, 700)
    figure = _figure(720, ax_h + 55)
    ax = _place_axes(figure, (720 - ax_w) // 2, 10, ax_w, ax_h)
    view = _show(ax, display, (x0, y0, x1, y1), (ax_w, ax_h), nearest=True)
    others = [f for f in findings if f.id != finding.id and _reaches_into(f, (x0, y0, x1, y1))]
    _annotate(ax, view, [*others, finding], spacing_mm, orientation)
    _suptitle(figure, _finding_title(finding, spacing_mm))
    return figure_png(figure)


# == statistics =================================================================================
def lesion_masks(image_shape: tuple[int, ...],
                 finding: Finding) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Lesion and surrounding-ring masks on a local window of the image.

    The lesion is the FWHM ellipse (or the box); the ring is the shape scaled 2× (at least 3 px
    wider on each side) minus the lesion. Returns the window's slices and the two masks.
    """
    h, w = image_shape[:2]
    shape = lesion_shape(finding)
    outer = LesionShape(shape.x, shape.y, max(2 * shape.major_px, shape.major_px + 6),
                        max(2 * shape.minor_px, shape.minor_px + 6), shape.angle_deg, shape.ellipse)
    hx, hy = outer.half_extent()
    # At least one pixel, even for a finding that lies (partly) outside the frame.
    x0 = int(_clamp(math.floor(shape.x - hx), 0, w - 1))
    y0 = int(_clamp(math.floor(shape.y - hy), 0, h - 1))
    x1 = int(_clamp(math.ceil(shape.x + hx) + 1, x0 + 1, w))
    y1 = int(_clamp(math.ceil(shape.y + hy) + 1, y0 + 1, h))
    u, v = _rotated_grid(shape, x0, x1, y0, y1)
    lesion = _inside(u, v, shape)
    if not lesion.any():  # a sub-pixel shape still has the pixel under its centre
        row, col = _clamp(round(shape.y), y0, y1 - 1) - y0, _clamp(round(shape.x), x0, x1 - 1) - x0
        lesion[int(row), int(col)] = True
    ring = _inside(u, v, outer) & ~lesion
    return (slice(y0, y1), slice(x0, x1)), lesion, ring


def _inside(u: np.ndarray, v: np.ndarray, shape: LesionShape) -> np.ndarray:
    a, b = shape.major_px / 2.0, shape.minor_px / 2.0
    if shape.ellipse:
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return (np.abs(u) <= a) & (np.abs(v) <= b)


@dataclass(frozen=True)
class LineProfile:
    """Values sampled along a line through a finding's centre.

    ``distance`` is measured from the centre in ``unit`` ('mm' or 'px'); ``values`` are NaN
    outside the image; ``fitted`` is the Gaussian fit along the same line (None without a
    fit); ``half_extent`` is the lesion's half-length along the line, in ``unit``.
    """

    distance: np.ndarray
    values: np.ndarray
    fitted: np.ndarray | None
    unit: str
    half_extent: float


def line_profile(physical: np.ndarray, finding: Finding, spacing_mm: Spacing) -> LineProfile:
    """Values along the major axis through the centre (horizontal without a Gaussian fit)."""
    shape = lesion_shape(finding)
    angle = shape.angle_deg if shape.ellipse else 0.0
    half_lesion = shape.major_px / 2 if shape.ellipse else finding.bbox_px.width / 2
    reach = max(3.0 * half_lesion, 12.0)
    t = np.linspace(-reach, reach, int(min(801, 4 * reach + 1)))
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    coords = np.vstack([shape.y + t * s, shape.x + t * c])
    values = ndimage.map_coordinates(physical.astype(np.float32, copy=False), coords, order=1,
                                     mode="constant", cval=np.nan)
    fitted = None
    fit = finding.gaussian
    if shape.ellipse and fit is not None:
        sigma = fit.fwhm_major_px / FWHM_PER_SIGMA
        fitted = fit.background + fit.amplitude * np.exp(-0.5 * (t / sigma) ** 2)
    step = mm_per_px(angle, spacing_mm) if spacing_mm else 1.0
    return LineProfile(t * step, values, fitted, "mm" if spacing_mm else "px", half_lesion * step)


def _few_ticks(ax: Axes, x: int, y: int) -> None:
    """At most ``x`` and ``y`` ticks: every tick is several artists and a few ms to draw."""
    ax.xaxis.set_major_locator(MaxNLocator(x))
    ax.yaxis.set_major_locator(MaxNLocator(y))
    ax.spines[["top", "right"]].set_visible(False)


def _headroom(ax: Axes, fraction: float) -> None:
    """Room above the data, so the key in the upper corner covers no curve."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + fraction * (high - low))


def _number(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


def _plot_histogram(ax: Axes, lesion: np.ndarray, ring: np.ndarray, unit: str) -> None:
    """Normalised histograms on shared bins; the key states n and mean ± SD of each region."""
    both = np.concatenate([lesion, ring])
    edges = np.histogram_bin_edges(both, bins=int(_clamp(math.sqrt(both.size), 10, 40)))
    regions = (("lesion", lesion, "tab:orange"), ("ring", ring, "tab:blue"))
    for index, (name, values, colour) in enumerate(regions):
        if values.size:
            # numpy bins, one filled step path: ax.hist would build a patch per call and more.
            density = np.histogram(values, bins=edges, density=True)[0]
            ax.stairs(density, edges, fill=True, alpha=0.55, color=colour)
            key = f"{name}: n={values.size}, {_number(values.mean())} ± {_number(values.std())} {unit}"
            _key(ax, index, key, colour)
    _headroom(ax, 0.3)
    _few_ticks(ax, 4, 1)
    ax.set_yticks([])  # densities mean little to a reader; the shapes and the key carry it
    ax.set_xlabel(unit, fontsize=10)
    ax.set_ylabel("relative frequency", fontsize=10)
    ax.set_title("inside the lesion vs the ring around it", fontsize=11, y=1.0)


def _key(ax: Axes, line: int, text: str, colour: str, corner: str = "left") -> None:
    """One coloured line of a key in an upper corner (cheaper to draw than a Legend)."""
    x = 0.02 if corner == "left" else 0.98
    ax.text(x, 0.98 - 0.07 * line, text, transform=ax.transAxes, color=colour, fontsize=10,
            fontweight="bold", ha=corner, va="top")


def _plot_profile(ax: Axes, profile: LineProfile, unit: str, r_squared: float | None) -> None:
    ax.plot(profile.distance, profile.values, color="black", linewidth=1.2)
    _key(ax, 0, "— image", "black", corner="right")
    if profile.fitted is not None:
        ax.plot(profile.distance, profile.fitted, color="tab:red", linewidth=1.5, linestyle="--")
        _key(ax, 1, f"- - Gaussian fit (R² {r_squared:.2f})", "tab:red", corner="right")
    for edge in (-profile.half_extent, profile.half_extent):
        ax.axvline(edge, color="tab:orange", linewidth=1.0, linestyle=":")
    ax.set_xlim(profile.distance[0], profile.distance[-1])
    _headroom(ax, 0.35)
    _few_ticks(ax, 4, 4)
    ax.set_ylabel(unit, fontsize=10)
    along = " (major axis)" if profile.fitted is not None else " (horizontal)"
    ax.set_title("profile through the centre" + along, fontsize=11, y=1.0)


def _plot_residual(ax: Axes, profile: LineProfile, unit: str) -> None:
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.plot(profile.distance, profile.values - profile.fitted, color="tab:red", linewidth=1.0)
    ax.set_xlim(profile.distance[0], profile.distance[-1])
    _few_ticks(ax, 4, 2)
    ax.set_ylabel(f"residual ({unit})", fontsize=10)


def render_statistics(physical: np.ndarray, finding: Finding, *, spacing_mm: Spacing, unit: str) -> bytes:
    """Per-finding statistics as PNG (850 x 560 px).

    Left: histograms of physical values inside the lesion (FWHM ellipse or box) and in the ring
    around it. Right: the profile along the major axis through the centre (horizontal without a
    fit), with the fitted Gaussian and its residuals when the finding has a Gaussian fit; dotted
    lines mark the lesion's extent.

    Parameters
    ----------
    physical:
        Physical values of the frame, (H, W) float (HU for CT).
    finding:
        The finding to describe.
    spacing_mm:
        (row, column) spacing in mm, or None (distances in px).
    unit:
        Label of the values, e.g. 'HU' or 'intensity'.
    """
    window, lesion, ring = lesion_masks(physical.shape, finding)
    local = physical[window]
    profile = line_profile(physical, finding, spacing_mm)
    figure = _figure(850, 560)
    fitted = profile.fitted is not None
    grid = figure.add_gridspec(2, 2, left=0.07, right=0.98, top=0.86, bottom=0.1, wspace=0.25, hspace=0.08,
                               height_ratios=(2.4, 1.0))
    _plot_histogram(figure.add_subplot(grid[:, 0]), local[lesion].astype(np.float64),
                    local[ring].astype(np.float64), unit)
    ax_profile = figure.add_subplot(grid[0, 1] if fitted else grid[:, 1])
    _plot_profile(ax_profile, profile, unit, finding.gaussian.r_squared if fitted else None)
    distance_label = f"distance from centre ({profile.unit})"
    if fitted:
        ax_profile.set_xticks([])  # the residual plot below carries the distance axis
        ax_residual = figure.add_subplot(grid[1, 1])
        _plot_residual(ax_residual, profile, unit)
        ax_residual.set_xlabel(distance_label, fontsize=10)
    else:
        ax_profile.set_xlabel(distance_label, fontsize=10)
    figure.suptitle(_finding_title(finding, spacing_mm), fontsize=TITLE_PT, y=0.98, va="top")
    return figure_png(figure)


# == the tool ===================================================================================
class RenderOverlayInput(BaseModel):
    """Arguments of ``render_overlay``."""

    layers: list[Layer] = Field(
        default_factory=lambda: ["annotated"], min_length=1,
        description=(
            "Which figures to draw: 'image' (display image alone), 'annotated' (findings drawn with "
            "ids, sizes, scale bar, orientation), 'heatmap' (probability map), 'comparison' "
            "(original beside annotated), 'crops' (one zoomed crop per finding), 'statistics' "
            "(histogram and profile per finding). Default: ['annotated']."
        ),
    )
    finding_ids: list[str] | None = Field(
        default=None,
        description="Finding ids to draw, e.g. ['F1', 'F3']; default: all findings on the shown frame.",
    )
    study_id: str | None = Field(default=None, description="Which open study; default: the current one.")


class RenderOverlayOutput(BaseModel):
    """What ``render_overlay`` drew."""

    study_id: str
    frame: int = Field(description="Frame drawn (0-based).")
    layers: list[Layer] = Field(description="Layers that produced at least one image.")
    artifacts: list[str] = Field(description="Names of the PNG artifacts, in order.")
    finding_ids: list[str] = Field(description="Findings drawn.")
    summary: str = Field(description="One or two sentences on what was drawn.")


@dataclass
class _Scene:
    """Everything the layers need, gathered once per call."""

    display: np.ndarray
    physical: Callable[[], np.ndarray]
    findings: list[Finding]
    spacing_mm: Spacing
    orientation: Orientation
    unit: str
    title: str
    where: str  # 'frame 3 of CT' for captions


def _id_number(finding: Finding) -> int:
    return int(finding.id[1:])


def _select_findings(study_findings: list[Finding], frame: int, ids: list[str] | None) -> list[Finding]:
    """Findings on ``frame`` (and among ``ids`` when given), ordered F1, F2, ..."""
    by_id = {f.id: f for f in study_findings}
    if ids is None:
        return sorted((f for f in study_findings if f.frame == frame), key=_id_number)
    for finding_id in ids:
        if finding_id not in by_id:
            known = ", ".join(f.id for f in sorted(study_findings, key=_id_number)) or "none"
            raise InvalidCoordinatesError(
                f"There is no finding '{finding_id}' on this study (known findings: {known})."
            )
        if by_id[finding_id].frame != frame:
            other = by_id[finding_id].frame
            raise InvalidCoordinatesError(
                f"Finding {finding_id} is on frame index {other}, but frame index {frame} is shown; "
                f"show it first with load_study (frame={other})."
            )
    return sorted({by_id[i].id: by_id[i] for i in ids}.values(), key=_id_number)


def _describe(finding: Finding, spacing_mm: Spacing) -> str:
    size = size_text(finding, spacing_mm)
    return f"{finding.id} ({status_of(finding)}{', ' + size if size else ''})"


_COLOUR_WORDS = {"confirmed": "green", "adjusted": "amber", "rejected": "red dashed", "unverified": "cyan"}


def _colour_key(findings: Sequence[Finding]) -> str:
    present = [s for s in STATUS_STYLE if any(status_of(f) == s for f in findings)]
    return ", ".join(f"{_COLOUR_WORDS[s]} {s}" for s in present)


def _layer_image(scene: _Scene) -> list[Artifact]:
    return [Artifact(name="overlay-image.png", data=render_image(scene.display),
                     caption=f"Display image, {scene.where}.")]


def _layer_annotated(scene: _Scene) -> list[Artifact]:
    data = render_annotated(scene.display, scene.findings, spacing_mm=scene.spacing_mm,
                            orientation=scene.orientation, title=scene.title)
    if scene.findings:
        marked = ", ".join(_describe(f, scene.spacing_mm) for f in scene.findings)
        caption = f"Findings on {scene.where}: {marked}. Colours: {_colour_key(scene.findings)}."
    else:
        caption = f"No findings are marked on {scene.where}; the image shows scale and orientation only."
    return [Artifact(name="overlay-annotated.png", data=data, caption=caption, for_model=True)]


def _layer_heatmap(scene: _Scene) -> list[Artifact]:
    probability = probability_map(scene.display.shape[:2], scene.findings)
    data = render_heatmap(scene.display, probability, scene.findings, title=scene.title)
    return [Artifact(name="overlay-heatmap.png", data=data,
                     caption=("Probability map from the findings' Gaussian fits (boxes without a fit), "
                              f"weighted by confidence, on {scene.where}."))]


def _layer_comparison(scene: _Scene) -> list[Artifact]:
    data = render_comparison(scene.display, scene.findings, spacing_mm=scene.spacing_mm,
                             orientation=scene.orientation, title=scene.title)
    return [Artifact(name="overlay-comparison.png", data=data,
                     caption=f"Original (left) and annotated (right), {scene.where}.")]


def _layer_crops(scene: _Scene) -> list[Artifact]:
    return [Artifact(name=f"overlay-crop-{f.id}.png",
                     data=render_crop(scene.display, f, scene.findings, spacing_mm=scene.spacing_mm,
                                      orientation=scene.orientation),
                     caption=f"Zoomed crop of {_describe(f, scene.spacing_mm)}.")
            for f in scene.findings]


def _layer_statistics(scene: _Scene) -> list[Artifact]:
    physical = scene.physical() if scene.findings else None
    artifacts = []
    for finding in scene.findings:
        fit = " with its Gaussian fit and residuals" if lesion_shape(finding).ellipse else ""
        artifacts.append(Artifact(
            name=f"overlay-stats-{finding.id}.png",
            data=render_statistics(physical, finding, spacing_mm=scene.spacing_mm, unit=scene.unit),
            caption=f"{finding.id}: {scene.unit} inside vs around the lesion and the profile "
                    f"through it{fit}."))
    return artifacts


_LAYERS: dict[str, Callable[[_Scene], list[Artifact]]] = {
    "image": _layer_image, "annotated": _layer_annotated, "heatmap": _layer_heatmap,
    "comparison": _layer_comparison, "crops": _layer_crops, "statistics": _layer_statistics,
}


def render_overlay(ctx: ToolContext, args: RenderOverlayInput) -> ToolResult:
    """Draw the shown frame with its findings: ellipses or boxes coloured by verification
    (green confirmed, amber adjusted, red dashed rejected, cyan unverified), id labels, calipers
    with sizes, a scale bar and orientation letters; optionally a probability heatmap, an
    original-vs-annotated comparison, and a zoomed crop and a statistics panel (histogram,
    profile, Gaussian fit) per finding.

    Only the annotated image is sent back to the model; the others are shown to the clinician.
    Findings default to all of the current study's findings on the shown frame.

    Raises
    ------
    InvalidCoordinatesError
        A requested finding id does not exist on this study or is on another frame.
    """
    view = ctx.view(args.study_id)
    study = view.study
    findings = _select_findings(ctx.study_findings(study.id), view.frame, args.finding_ids)
    rendered = study.render(view.frame, view.window)
    name = study.modality or "image"
    window = f" · window {rendered.window.center:g}/{rendered.window.width:g}" if rendered.window else ""
    scene = _Scene(
        display=rendered.pixels,
        physical=lambda: study.physical(view.frame),
        findings=findings,
        spacing_mm=study.pixel_spacing_mm(view.frame),
        orientation=study.geometry(view.frame).orientation,
        unit="HU" if study.modality == "CT" else "intensity",
        title=f"{name} · frame {view.frame + 1} of {study.frame_count}{window}",
        where=f"frame {view.frame + 1} of {name}",
    )
    artifacts, layers = [], []
    for layer in dict.fromkeys(args.layers):
        produced = _LAYERS[layer](scene)
        artifacts += produced
        layers += [layer] if produced else []
    drawn = [f.id for f in findings]
    summary = (f"Drew {', '.join(layers) or 'nothing'} for {', '.join(drawn)} on {scene.where}." if drawn else
               f"No findings are marked on {scene.where}; drew {', '.join(layers) or 'nothing'}.")
    output = RenderOverlayOutput(study_id=study.id, frame=view.frame, layers=layers,
                                 artifacts=[a.name for a in artifacts], finding_ids=drawn, summary=summary)
    return ToolResult(output=output, artifacts=artifacts)
