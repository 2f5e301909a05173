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

Figures use matplotlib's object API (``Figure`` on an Agg canvas; pyplot's global state is
never touched), DejaVu Sans (matplotlib's bundled font) and 100 dpi at 7–9 in wide, so they are
legible at chat width. For speed no figure has an Axes: image panels and the statistics plots
are plain artists placed through their own transforms (hand-made ticks and colour bar), and
text is rasterised once per string and remembered (see ``_Renderer``). The PNGs are encoded
from the canvas pixels with ``tools.png`` and carry no text chunks, so equal input gives
identical bytes. Coordinates follow ``tools.coordinates``:
x = column, y = row, the centre of the top-left pixel at (0, 0), boxes inclusive.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import (
    FigureCanvasAgg,
    RendererAgg,
    get_hinting_flag,
)
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import fontManager, get_font
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse, Rectangle, StepPatch
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Affine2D, Bbox, TransformedBbox
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
    "annotated_figure", "clear_text_cache", "crop_bounds", "direction_letters", "figure_png", "lesion_masks", "lesion_shape",
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
# Figures are drawn without Axes: an Axes (spines, tick machinery, three title slots) costs
# ~12 ms before anything is on it, and most layers only need an image with shapes and labels
# on top. Image panels (``_Panel``) and plots (``_Plot``) place plain artists on the figure
# through their own pixel transforms and clip boxes.
_TEXT_CACHE: OrderedDict[tuple, tuple] = OrderedDict()
_TEXT_CACHE_SIZE = 512
_TEXT_LOCK = threading.Lock()


def clear_text_cache() -> None:
    """Forget the rasterised strings (benchmarks call this to time text as if first drawn)."""
    with _TEXT_LOCK:
        _TEXT_CACHE.clear()


def _font_key(prop) -> tuple:
    """What picks the font file and size of a FontProperties (the fields its hash uses).

    Keying on these rather than on the file that ``findfont`` resolves saves a font look-up
    per text; Loupe never changes the font rcParams while running.
    """
    return (tuple(prop.get_family()), prop.get_style(), prop.get_variant(), prop.get_weight(),
            prop.get_stretch(), prop.get_size_in_points(), prop.get_file(), prop.get_math_fontfamily())


class _Renderer(RendererAgg):
    """Agg with each line of text rasterised by FreeType in one call and remembered.

    matplotlib 3.11 lays text out and renders it glyph by glyph from Python (~0.1 ms a glyph,
    plus ~1 ms of layout for a measurement and again for drawing). Here one ``set_text`` gives
    both the metrics and the bitmap of the whole line (as matplotlib ≤ 3.10 drew it), and the
    result is kept for the next use of the same string, font and size: orientation letters,
    legends, titles and tick labels recur across layers and studies. The pixels depend only on
    the string, font, size and dpi, so the output stays deterministic.
    """

    def _raster(self, s: str, prop) -> tuple:
        flags = get_hinting_flag()
        key = (s, _font_key(prop), self.dpi, str(flags))
        with _TEXT_LOCK:
            hit = _TEXT_CACHE.get(key)
            if hit is not None:
                _TEXT_CACHE.move_to_end(key)
                return hit
        font = self._prepare_font(prop)
        font.set_text(s, 0.0, flags=flags)
        font.draw_glyphs_to_bitmap(antialiased=True)
        width, height = font.get_width_height()
        x_offset, y_offset = font.get_bitmap_offset()
        hit = (np.array(font.get_image(), dtype=np.uint8), x_offset / 64.0, y_offset / 64.0,
               width / 64.0, height / 64.0, font.get_descent() / 64.0)
        with _TEXT_LOCK:
            _TEXT_CACHE[key] = hit
            while len(_TEXT_CACHE) > _TEXT_CACHE_SIZE:
                _TEXT_CACHE.popitem(last=False)
        return hit

    def _get_font_height_metrics(self, prop) -> tuple[float, float, float]:
        """(ascent, descent, line gap) of the font in px, as ``Text._get_layout`` reads them
        from the font's OS/2 or hhea table; remembered per font, size and dpi."""
        key = ("height metrics", _font_key(prop), self.dpi)
        hit = _TEXT_CACHE.get(key)
        if hit is None:
            font = get_font(fontManager._find_fonts_by_props(prop))
            size = prop.get_size_in_points()
            hit = (None, None, None)
            for table_name, gap_key, ascent_key, descent_key in (
                    ("OS/2", "sTypoLineGap", "sTypoAscender", "sTypoDescender"),
                    ("hhea", "lineGap", "ascent", "descent")):
                table = font.get_sfnt_table(table_name)
                if table is not None:
                    scale = size * self.dpi / 72 / font.get_sfnt_table("head")["unitsPerEm"]
                    hit = (table[ascent_key] * scale, -table[descent_key] * scale, table[gap_key] * scale)
                    break
            with _TEXT_LOCK:
                _TEXT_CACHE[key] = hit
        return hit

    def get_text_width_height_descent(self, s, prop, ismath):
        if ismath:
            return super().get_text_width_height_descent(s, prop, ismath)
        _, _, _, width, height, descent = self._raster(s, prop)
        return width, height, descent

    def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if ismath or not gc.get_antialiased():
            return super().draw_text(gc, x, y, s, prop, angle, ismath, mtext)
        bitmap, x_offset, y_offset, _, _, descent = self._raster(s, prop)
        if bitmap.size == 0:
            return None
        # As matplotlib 3.10's Agg backend: the bitmap is rotated in raster space.
        x_descent = descent * math.sin(math.radians(angle))
        y_descent = descent * math.cos(math.radians(angle))
        self._renderer.draw_text_image(bitmap, round(x + x_offset + x_descent),
                                       round(y + y_offset + y_descent) + 1, angle, gc)
        return None


class _Canvas(FigureCanvasAgg):
    """An Agg canvas drawing with ``_Renderer``."""

    def get_renderer(self):
        w, h = self.get_width_height(physical=True)
        key = w, h, self.figure.dpi
        if self._lastKey != key:
            self.renderer = _Renderer(w, h, self.figure.dpi)
            self._lastKey = key
        return self.renderer


@dataclass(frozen=True)
class _View:
    """The image region a panel shows (pixel edges) and its zoom in figure px per image px."""

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
    _Canvas(figure)
    return figure


def figure_png(figure: Figure) -> bytes:
    """Draw ``figure`` and encode its pixels as RGB PNG (no metadata: deterministic bytes)."""
    canvas = figure.canvas
    canvas.draw()
    width, height = canvas.get_width_height(physical=True)
    # Pillow drops the alpha channel ~3x faster than a strided numpy copy.
    rgb = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
    return encode_png(np.asarray(rgb))




def _fit_px(aspect: float, max_w: int, max_h: int) -> tuple[int, int]:
    """Largest (width, height) in px with height / width ~ ``aspect`` inside max_w x max_h."""
    width = min(float(max_w), max_h / aspect)
    return max(1, round(width)), max(1, min(max_h, round(width * aspect)))


def _px(figure: Figure) -> Affine2D:
    """Figure pixels (from the bottom-left corner, at ``DPI``) to display coordinates."""
    return Affine2D().scale(1.0 / DPI) + figure.dpi_scale_trans


def _box(figure: Figure, left: float, bottom: float, width: float, height: float) -> TransformedBbox:
    return TransformedBbox(Bbox.from_bounds(left, bottom, width, height), _px(figure))


def _suptitle(figure: Figure, title: str) -> None:
    figure.suptitle(title, fontsize=TITLE_PT, y=1.0 - 8.0 / figure.bbox.height, va="top")


def _figure_text(figure: Figure, x: float, y: float, text: str, **kwargs) -> Text:
    """Text at figure pixel (x, y), from the bottom-left corner."""
    return figure.text(x, y, text, transform=_px(figure), **kwargs)


class _Pixels(Artist):
    """RGBA pixels already at their box's size, copied 1:1 (the image of a panel, a colour bar).

    ``rows_up`` lists the rows from the bottom, as Agg's draw_image counts them. Pillow
    resamples beforehand; matplotlib's own resampler costs ~40 ms per image even at 1:1, which
    would dominate the time of every layer.
    """

    def __init__(self, rows_up: np.ndarray, box: TransformedBbox, gid: str | None = None) -> None:
        super().__init__()
        self._rows_up = np.ascontiguousarray(rows_up)
        self._box = box
        self.set_zorder(0)
        self.set_gid(gid)

    def get_window_extent(self, renderer=None) -> Bbox:
        return Bbox(self._box.get_points())

    def draw(self, renderer) -> None:
        box = self._box
        gc = renderer.new_gc()
        gc.set_clip_rectangle(box)
        renderer.draw_image(gc, round(box.x0), round(box.y0), self._rows_up)
        gc.restore()
        self.stale = False


# The 'gray' colormap's 256 RGBA entries, each packed in one uint32: one 4-byte take per pixel.
_GREY_LUT = np.ascontiguousarray(colormaps["gray"](np.arange(256), bytes=True)).view(np.uint32).ravel()


def _rows_up(pixels: np.ndarray) -> np.ndarray:
    """uint8 grey or RGB -> RGBA with the bottom row first; grey through the 'gray' colormap
    with vmin 0, vmax 255 (uint8 values index its 256-entry LUT, as Normalize(0, 255) gives).
    """
    flipped = pixels[::-1]
    if pixels.ndim == 2:
        return _GREY_LUT.take(flipped).view(np.uint8).reshape(*pixels.shape, 4)
    rgba = np.empty((*pixels.shape[:2], 4), dtype=np.uint8)
    rgba[..., :3] = flipped
    rgba[..., 3] = 255
    return rgba


def _resized(image: np.ndarray, width_px: int, height_px: int, nearest: bool) -> np.ndarray:
    """Resample to the panel's pixel size with Pillow (area-aware when shrinking).

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


class _Panel:
    """An image region of a figure, in native image coordinates, without an Axes.

    ``rows_up`` (RGBA already at the panel's size in figure px, bottom row first; see
    ``_rows_up``) shows the native region ``bounds`` (x0, y0, x1, y1; x1, y1 exclusive) in the
    figure-pixel rectangle (left, bottom, width, height). Artists added through the panel are drawn in image coordinates (x = column,
    y = row, the centre of the top-left pixel at (0, 0)) and clipped to the panel.
    """

    def __init__(self, figure: Figure, rect: tuple[float, float, float, float], rows_up: np.ndarray,
                 bounds: tuple[int, int, int, int]) -> None:
        left, bottom, width, height = rect
        x0, y0, x1, y1 = bounds
        self.figure = figure
        self.view = _View(x0 - 0.5, x1 - 0.5, y0 - 0.5, y1 - 0.5, width / (x1 - x0))
        to_figure = (Affine2D().translate(-self.view.left, -self.view.bottom)
                     .scale(self.view.scale, -height / (y1 - y0)).translate(left, bottom))
        self.transform = to_figure + _px(figure)
        self.box = _box(figure, left, bottom, width, height)
        figure.add_artist(_Pixels(rows_up, self.box, gid="image"))

    def add(self, artist: Artist) -> Artist:
        artist.set_transform(self.transform)
        artist.set_clip_box(self.box)
        return self.figure.add_artist(artist)

    def text(self, x: float, y: float, text: str, **kwargs) -> Text:
        artist = self.figure.text(x, y, text, transform=self.transform, **kwargs)
        artist.set_clip_box(self.box)
        return artist


def _show(figure: Figure, rect: tuple[float, float, float, float], image: np.ndarray,
          bounds: tuple[int, int, int, int], nearest: bool = False) -> _Panel:
    """A panel showing ``image[y0:y1, x0:x1]`` (x1, y1 exclusive) in ``rect`` (figure px)."""
    x0, y0, x1, y1 = bounds
    pixels = _resized(image[y0:y1, x0:x1], round(rect[2]), round(rect[3]), nearest)
    return _Panel(figure, rect, _rows_up(pixels), bounds)


def _check_display(display: np.ndarray) -> None:
    if display.dtype != np.uint8 or not (display.ndim == 2 or (display.ndim == 3 and display.shape[2] == 3)):
        raise ValueError(
            f"expected a uint8 (H, W) or (H, W, 3) display image, got {display.dtype} {display.shape}"
        )


# == annotation drawing =========================================================================
def _draw_outline(panel: _Panel, finding: Finding, shape: LesionShape, colour: str, style: str) -> None:
    common = {"fill": False, "edgecolor": colour, "linewidth": 2.0, "linestyle": style}
    if shape.ellipse:
        panel.add(Ellipse((shape.x, shape.y), shape.major_px, shape.minor_px, angle=shape.angle_deg,
                          gid=f"outline-{finding.id}", **common))
    else:
        box = finding.bbox_px
        panel.add(Rectangle((box.x0 - 0.5, box.y0 - 0.5), box.width, box.height,
                            gid=f"outline-{finding.id}", **common))


def _draw_calipers(panel: _Panel, finding: Finding, shape: LesionShape, length_px: float, colour: str) -> None:
    """A line along the major axis with perpendicular end ticks, on a dark underlay."""
    c, s = shape.direction
    half, tick = length_px / 2.0, 7.0 / panel.view.scale
    ends = [(shape.x - half * c, shape.y - half * s), (shape.x + half * c, shape.y + half * s)]
    segments = [ends] + [[(x + tick * s, y - tick * c), (x - tick * s, y + tick * c)] for x, y in ends]
    # The underlay keeps the calipers visible where they cross a bright lesion.
    gid = f"calipers-{finding.id}"
    panel.add(LineCollection(segments, colors="black", linewidths=3.2, alpha=0.7, gid=gid))
    panel.add(LineCollection(segments, colors=colour, linewidths=1.6, gid=gid))


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(value, high))


def _place_label(panel: _Panel, text: str, shape: LesionShape, colour: str, gid: str) -> None:
    """Put the label above the shape (below it near the top edge), always inside the view."""
    view = panel.view
    artist = panel.text(0, 0, text, color=colour, fontsize=LABEL_PT, fontweight="bold", ha="left",
                        va="top", bbox=_LABEL_BOX, gid=gid)
    extent = artist.get_window_extent(panel.figure.canvas.get_renderer())
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


def _draw_finding(panel: _Panel, finding: Finding, spacing_mm: Spacing) -> None:
    colour, style = STATUS_STYLE[status_of(finding)]
    shape = lesion_shape(finding)
    _draw_outline(panel, finding, shape, colour, style)
    caliper = _caliper_px(finding, shape, spacing_mm)
    if caliper is not None:
        _draw_calipers(panel, finding, shape, caliper, colour)
    size = size_text(finding, spacing_mm)
    _place_label(panel, f"{finding.id}  {size}" if size else finding.id, shape, colour,
                 gid=f"label-{finding.id}")


def _draw_scale_bar(panel: _Panel, spacing_mm: Spacing) -> None:
    if spacing_mm is None:
        return
    view = panel.view
    mm = scale_bar_mm(view.width, spacing_mm[1])
    length = mm / spacing_mm[1]
    x0, y = view.left + 0.04 * view.width, view.bottom - 0.05 * view.height
    for width, colour in ((5.0, "black"), (3.0, "white")):  # a dark rim keeps it visible on white
        panel.add(Line2D([x0, x0 + length], [y, y], color=colour, linewidth=width,
                         solid_capstyle="butt", gid="scale-bar"))
    panel.text(x0 + length / 2, y - 6.0 / view.scale, _length_label(mm), color="white", fontsize=10,
               ha="center", va="bottom", bbox=_LABEL_BOX, gid="scale-label")


def _draw_orientation(panel: _Panel, orientation: Orientation) -> None:
    labels = orientation_labels(orientation)
    if labels is None:
        return
    view = panel.view
    m = 6.0 / view.scale
    cx, cy = view.left + view.width / 2, view.top + view.height / 2
    places = {"left": (view.left + m, cy, "left", "center"), "right": (view.right - m, cy, "right", "center"),
              "top": (cx, view.top + m, "center", "top"), "bottom": (cx, view.bottom - m, "center", "bottom")}
    for edge, (x, y, ha, va) in places.items():
        panel.text(x, y, labels[edge], color="white", fontsize=12, fontweight="bold", ha=ha, va=va,
                   bbox=_LABEL_BOX, gid=f"orientation-{edge}")


def _annotate(panel: _Panel, findings: Sequence[Finding], spacing_mm: Spacing, orientation: Orientation) -> None:
    _draw_orientation(panel, orientation)
    _draw_scale_bar(panel, spacing_mm)
    for finding in findings:
        _draw_finding(panel, finding, spacing_mm)


def _status_legend(figure: Figure, findings: Sequence[Finding]) -> None:
    """One line per status present (its colour and dash) and its name, centred at the bottom.

    Drawn by hand, as a Legend would (handle 2.5 em, 0.8 em to the text, 2 em between
    entries), without a Legend's boxes and packing.
    """
    statuses = [s for s in STATUS_STYLE if any(status_of(f) == s for f in findings)]
    if not statuses:
        return
    em = 10 * DPI / 72.0
    handle, to_text, between, y = 2.5 * em, 0.8 * em, 2.0 * em, 21.0
    renderer = figure.canvas.get_renderer()
    texts = [_figure_text(figure, 0, y, s, fontsize=10, ha="left", va="center", gid=f"legend-{s}")
             for s in statuses]
    widths = [t.get_window_extent(renderer).width for t in texts]
    x = (figure.bbox.width - sum(widths) - len(texts) * (handle + to_text) - (len(texts) - 1) * between) / 2
    for status, text, width in zip(statuses, texts, widths):
        colour, style = STATUS_STYLE[status]
        figure.add_artist(Line2D([x, x + handle], [y, y], color=colour, linestyle=style, linewidth=2.5,
                                 transform=_px(figure), gid=f"legend-{status}"))
        text.set_x(x + handle + to_text)
        x += handle + to_text + width + between


# == layers: pure functions =====================================================================
def annotated_figure(display: np.ndarray, findings: Sequence[Finding], *, spacing_mm: Spacing,
                     orientation: Orientation, title: str | None = None) -> Figure:
    """The annotated layer as a matplotlib Figure (see ``render_annotated``)."""
    _check_display(display)
    h, w = display.shape[:2]
    top, bottom = (45 if title else 10), (40 if findings else 10)
    ax_w, ax_h = _fit_px(h / w, 780, 800)
    figure = _figure(800, top + ax_h + bottom)
    panel = _show(figure, ((800 - ax_w) // 2, bottom, ax_w, ax_h), display, (0, 0, w, h))
    _annotate(panel, findings, spacing_mm, orientation)
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
    panel = _Panel(figure, (10, 10, ax_w, ax_h), _heat_blend(display, probability, ax_w, ax_h), (0, 0, w, h))
    for finding in findings:
        _place_label(panel, finding.id, lesion_shape(finding), "white", gid=f"label-{finding.id}")
    _colour_bar(figure, 10 + ax_w + 20, 10 + round(ax_h * 0.1), 25, round(ax_h * 0.8))
    if title:
        _suptitle(figure, title)
    return figure_png(figure)


def _colour_bar(figure: Figure, left: int, bottom: int, width: int, height: int) -> None:
    """The 'inferno' scale from 0 (bottom) to 1 (top): a strip, a frame, three ticks, a label."""
    strip = colormaps["inferno"](np.linspace(0.0, 1.0, max(height, 1)), bytes=True)  # bottom row first
    figure.add_artist(_Pixels(np.repeat(strip[:, None, :], width, axis=1), _box(figure, left, bottom, width, height),
                              gid="colour-bar"))
    px = _px(figure)
    figure.add_artist(Rectangle((left, bottom), width, height, fill=False, edgecolor="black", linewidth=0.8,
                                transform=px))
    tick, pad = 3.5 * DPI / 72.0, 3.5 * DPI / 72.0
    right = left + width
    levels = (0.0, 0.5, 1.0)
    figure.add_artist(LineCollection([[(right, bottom + v * height), (right + tick, bottom + v * height)]
                                      for v in levels], colors="black", linewidths=0.8, transform=px))
    renderer = figure.canvas.get_renderer()
    labels = [_figure_text(figure, right + tick + pad, bottom + v * height, f"{v:.1f}", fontsize=10,
                           ha="left", va="center_baseline") for v in levels]
    label_width = max(t.get_window_extent(renderer).width for t in labels)
    _figure_text(figure, right + tick + pad + label_width + 4.0 * DPI / 72.0, bottom + height / 2, "probability",
                 fontsize=11, rotation=90, ha="left", va="center", gid="colour-bar-label")


_INFERNO_LUT = colormaps["inferno"](np.arange(256), bytes=True)[:, :3].astype(np.float32)


def _heat_blend(display: np.ndarray, probability: np.ndarray, width_px: int, height_px: int) -> np.ndarray:
    """The display under 'inferno' with alpha = 0.85 × probability, as RGBA at panel size with
    the bottom row first (see ``_rows_up``).

    Blending here rather than stacking two matplotlib images avoids a second resampling, and
    only the box around the pixels with a visible probability is touched (usually a small part
    of the image).
    """
    base = _resized(display, width_px, height_px, nearest=False)[::-1]
    out = np.empty((height_px, width_px, 4), dtype=np.uint8)
    out[..., :3] = base[..., None] if base.ndim == 2 else base  # grey levels as they are, no LUT
    out[..., 3] = 255
    # Resample first, sanitise after: NaN and out-of-range values are cleaned on the small map.
    small = Image.fromarray(np.asarray(probability, dtype=np.float32)).resize((width_px, height_px),
                                                                              Image.Resampling.BILINEAR)
    prob = np.asarray(small)[::-1]
    visible = prob > 0.5 / 255.0  # False for NaN
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    if rows.size == 0:
        return out
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    p = np.clip(np.nan_to_num(prob[box], nan=0.0), 0.0, 1.0)
    # The colormap's own float -> index rule (x * N, 1.0 -> N - 1), without its per-call overhead.
    index = p * np.float32(256)
    index[index == 256] = 255
    colour = _INFERNO_LUT[index.astype(np.intp)]
    alpha = (0.85 * p)[..., None]
    rgb = out[box][..., :3]
    blended = np.rint(rgb * (1.0 - alpha) + colour * alpha).astype(np.uint8)
    np.copyto(rgb, blended, where=visible[box][..., None])
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
    pixels = _rows_up(_resized(display, ax_w, ax_h, nearest=False))  # both panels show the same pixels
    for index, name in enumerate(("original", "annotated")):
        left = gap + index * (ax_w + gap)
        panel = _Panel(figure, (left, bottom, ax_w, ax_h), pixels, (0, 0, w, h))
        _figure_text(figure, left + ax_w / 2, bottom + ax_h + 6.0 * DPI / 72.0, name, fontsize=11,
                     ha="center", va="baseline", gid=f"panel-{name}")
        if index:
            _annotate(panel, findings, spacing_mm, orientation)
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
    panel = _show(figure, ((720 - ax_w) // 2, 10, ax_w, ax_h), display, (x0, y0, x1, y1), nearest=True)
    others = [f for f in findings if f.id != finding.id and _reaches_into(f, (x0, y0, x1, y1))]
    _annotate(panel, [*others, finding], spacing_mm, orientation)
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


_PT = DPI / 72.0  # figure px per point
_TICK_PX = 3.5 * _PT  # matplotlib's default tick length and label pad
_MINUS = "\N{MINUS SIGN}"


def _limits(low: float, high: float, margin: float = 0.05) -> tuple[float, float]:
    """Data limits with matplotlib's default 5 % margins; a degenerate range is widened."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.0, 1.0
    if high - low <= 1e-12 * max(abs(low), abs(high), 1.0):
        spread = max(abs(low) * 0.05, 0.5)
        return low - spread, high + spread
    extra = margin * (high - low)
    return low - extra, high + extra


def _finite_range(*arrays: np.ndarray) -> tuple[float, float]:
    values = np.concatenate([np.ravel(a) for a in arrays])
    values = values[np.isfinite(values)]
    return (float(values.min()), float(values.max())) if values.size else (math.nan, math.nan)


def _ticks(low: float, high: float, bins: int) -> list[float]:
    """At most ``bins`` + 1 round values inside [low, high] (matplotlib's MaxNLocator)."""
    values = MaxNLocator(bins).tick_values(low, high)
    tolerance = 1e-9 * (high - low)
    return [float(v) for v in values if low - tolerance <= v <= high + tolerance]


def _tick_labels(values: Sequence[float]) -> list[str]:
    """Plain labels with as few decimals as the ticks need and a true minus sign."""
    if not values:
        return []
    digits = next((d for d in range(7) if all(abs(round(v, d) - v) <= 1e-9 * max(1.0, abs(v)) for v in values)), 6)
    labels = []
    for value in values:
        text = f"{value:.{digits}f}"
        if float(text) == 0.0:
            text = text.lstrip("-")
        labels.append(text.replace("-", _MINUS))
    return labels


def _number(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


class _Plot:
    """A plot region drawn with a few figure-level artists instead of an Axes.

    ``rect`` is (left, bottom, width, height) in figure px; data within ``xlim`` x ``ylim`` maps
    onto it. Only the left and bottom spines are drawn; ticks point outwards, as matplotlib's.
    """

    def __init__(self, figure: Figure, rect: tuple[float, float, float, float],
                 xlim: tuple[float, float], ylim: tuple[float, float]) -> None:
        left, bottom, width, height = rect
        (x0, x1), (y0, y1) = xlim, ylim
        self.figure, self.rect, self.xlim, self.ylim = figure, rect, xlim, ylim
        self.px = _px(figure)
        self.transform = (Affine2D().translate(-x0, -y0).scale(width / (x1 - x0), height / (y1 - y0))
                          .translate(left, bottom) + self.px)
        self.box = _box(figure, left, bottom, width, height)
        self.renderer = figure.canvas.get_renderer()
        figure.add_artist(Line2D([left, left, left + width], [bottom + height, bottom, bottom], color="black",
                                 linewidth=0.8, solid_capstyle="projecting", zorder=2.5, transform=self.px))
        self._ytick_width = 0.0
        self._xtick_height = 0.0

    def _x_px(self, value: float) -> float:
        left, _, width, _ = self.rect
        return left + (value - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * width

    def _y_px(self, value: float) -> float:
        _, bottom, _, height = self.rect
        return bottom + (value - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * height

    def add(self, artist: Artist) -> Artist:
        artist.set_transform(self.transform)
        artist.set_clip_box(self.box)
        return self.figure.add_artist(artist)

    def line(self, x: Sequence[float], y: Sequence[float], **kwargs) -> Artist:
        return self.add(Line2D(x, y, **kwargs))

    def vline(self, x: float, **kwargs) -> Artist:
        return self.line([x, x], list(self.ylim), **kwargs)

    def hline(self, y: float, **kwargs) -> Artist:
        return self.line(list(self.xlim), [y, y], **kwargs)

    def xticks(self, values: Sequence[float]) -> None:
        bottom = self.rect[1]
        xs = [self._x_px(v) for v in values]
        self.figure.add_artist(LineCollection([[(x, bottom), (x, bottom - _TICK_PX)] for x in xs], colors="black",
                                              linewidths=0.8, transform=self.px))
        for x, label in zip(xs, _tick_labels(values)):
            text = _figure_text(self.figure, x, bottom - 2 * _TICK_PX, label, fontsize=10, ha="center", va="top")
            self._xtick_height = max(self._xtick_height, text.get_window_extent(self.renderer).height)

    def yticks(self, values: Sequence[float]) -> None:
        left = self.rect[0]
        ys = [self._y_px(v) for v in values]
        self.figure.add_artist(LineCollection([[(left, y), (left - _TICK_PX, y)] for y in ys], colors="black",
                                              linewidths=0.8, transform=self.px))
        for y, label in zip(ys, _tick_labels(values)):
            text = _figure_text(self.figure, left - 2 * _TICK_PX, y, label, fontsize=10, ha="right",
                                va="center_baseline")
            self._ytick_width = max(self._ytick_width, text.get_window_extent(self.renderer).width)

    def xlabel(self, text: str) -> None:
        left, bottom, width, _ = self.rect
        below = bottom - (2 * _TICK_PX + self._xtick_height if self._xtick_height else 0.0) - 4 * _PT
        _figure_text(self.figure, left + width / 2, below, text, fontsize=10, ha="center", va="top")

    def ylabel(self, text: str) -> None:
        left, bottom, _, height = self.rect
        beside = left - (2 * _TICK_PX + self._ytick_width if self._ytick_width else 0.0) - 4 * _PT
        _figure_text(self.figure, beside, bottom + height / 2, text, fontsize=10, rotation=90, ha="right",
                     va="center")

    def title(self, text: str) -> None:
        left, bottom, width, height = self.rect
        _figure_text(self.figure, left + width / 2, bottom + height + 6 * _PT, text, fontsize=11, ha="center",
                     va="baseline")

    def key(self, line: int, text: str, colour: str, corner: str = "left") -> None:
        """One coloured line of a key in an upper corner (cheaper to draw than a Legend)."""
        left, bottom, width, height = self.rect
        x = left + (0.02 if corner == "left" else 0.98) * width
        _figure_text(self.figure, x, bottom + (0.98 - 0.07 * line) * height, text, color=colour, fontsize=10,
                     fontweight="bold", ha=corner, va="top")


def _plot_histogram(figure: Figure, rect: tuple[float, float, float, float], lesion: np.ndarray,
                    ring: np.ndarray, unit: str) -> None:
    """Normalised histograms on shared bins; the key states n and mean ± SD of each region."""
    both = np.concatenate([lesion, ring])
    edges = np.histogram_bin_edges(both, bins=int(_clamp(math.sqrt(both.size), 10, 40)))
    regions = (("lesion", lesion, "tab:orange"), ("ring", ring, "tab:blue"))
    densities = [np.histogram(values, bins=edges, density=True)[0] if values.size else None
                 for _, values, _ in regions]
    top = max((float(d.max()) for d in densities if d is not None), default=1.0)
    top = top if math.isfinite(top) and top > 0 else 1.0
    ylim = (0.0, top * 1.05 * 1.3)  # 5 % margin, then room for the key above the bars
    plot = _Plot(figure, rect, _limits(float(edges[0]), float(edges[-1])), ylim)
    for index, ((name, values, colour), density) in enumerate(zip(regions, densities)):
        if density is not None:
            # One filled step path per region: the bins are numpy's, the shapes carry the comparison.
            plot.add(StepPatch(density, edges, baseline=0.0, fill=True, facecolor=colour, linewidth=0,
                               alpha=0.55))
            plot.key(index, f"{name}: n={values.size}, {_number(values.mean())} ± {_number(values.std())} {unit}",
                     colour)
    plot.xticks(_ticks(*plot.xlim, 4))  # no y ticks: densities mean little to a reader
    plot.xlabel(unit)
    plot.ylabel("relative frequency")
    plot.title("inside the lesion vs the ring around it")


def _plot_profile(figure: Figure, rect: tuple[float, float, float, float], profile: LineProfile, unit: str,
                  r_squared: float | None, with_distance: bool) -> None:
    curves = [profile.values] + ([profile.fitted] if profile.fitted is not None else [])
    low, high = _limits(*_finite_range(*curves))
    xlim = (float(profile.distance[0]), float(profile.distance[-1]))
    plot = _Plot(figure, rect, xlim, (low, high + 0.35 * (high - low)))  # room for the key
    plot.line(profile.distance, profile.values, color="black", linewidth=1.2)
    plot.key(0, "— image", "black", corner="right")
    if profile.fitted is not None:
        plot.line(profile.distance, profile.fitted, color="tab:red", linewidth=1.5, linestyle="--")
        plot.key(1, f"- - Gaussian fit (R² {r_squared:.2f})", "tab:red", corner="right")
    for edge in (-profile.half_extent, profile.half_extent):
        plot.vline(edge, color="tab:orange", linewidth=1.0, linestyle=":")
    plot.yticks(_ticks(*plot.ylim, 4))
    if with_distance:
        plot.xticks(_ticks(*xlim, 4))
        plot.xlabel(f"distance from centre ({profile.unit})")
    plot.ylabel(unit)
    along = " (major axis)" if profile.fitted is not None else " (horizontal)"
    plot.title("profile through the centre" + along)


def _plot_residual(figure: Figure, rect: tuple[float, float, float, float], profile: LineProfile,
                   unit: str) -> None:
    residual = profile.values - profile.fitted
    xlim = (float(profile.distance[0]), float(profile.distance[-1]))
    plot = _Plot(figure, rect, xlim, _limits(*_finite_range(residual, np.zeros(1))))
    plot.hline(0.0, color="grey", linewidth=0.8)
    plot.line(profile.distance, residual, color="tab:red", linewidth=1.0)
    plot.xticks(_ticks(*xlim, 4))
    plot.yticks(_ticks(*plot.ylim, 2))
    plot.xlabel(f"distance from centre ({profile.unit})")
    plot.ylabel(f"residual ({unit})")


# Panel rectangles (figure px) of the 850 x 560 statistics figure: two columns, the right one
# split 2.4 : 1 between the profile and its residuals when there is a fit.
_STATS_SIZE = (850, 560)
_STATS_LEFT = (60, 489)
_STATS_WIDTH = 344
_STATS_BOTTOM, _STATS_HEIGHT = 56, 426
_STATS_SPLIT = (193, 289, 120)  # profile bottom and height, residual height (from _STATS_BOTTOM)


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
    figure = _figure(*_STATS_SIZE)
    fitted = profile.fitted is not None
    left, right = _STATS_LEFT
    _plot_histogram(figure, (left, _STATS_BOTTOM, _STATS_WIDTH, _STATS_HEIGHT),
                    local[lesion].astype(np.float64), local[ring].astype(np.float64), unit)
    if fitted:
        profile_bottom, profile_height, residual_height = _STATS_SPLIT
        _plot_profile(figure, (right, profile_bottom, _STATS_WIDTH, profile_height), profile, unit,
                      finding.gaussian.r_squared, with_distance=False)
        _plot_residual(figure, (right, _STATS_BOTTOM, _STATS_WIDTH, residual_height), profile, unit)
    else:
        _plot_profile(figure, (right, _STATS_BOTTOM, _STATS_WIDTH, _STATS_HEIGHT), profile, unit, None,
                      with_distance=True)
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
