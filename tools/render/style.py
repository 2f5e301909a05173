"""The figure style every layer shares, and the fast path that draws it.

Figures use matplotlib's object API (``Figure`` on an Agg canvas; pyplot's global state is
never touched), DejaVu Sans (matplotlib's bundled font) and 100 dpi at 7–9 in wide, so they are
legible at chat width. For speed no figure has an Axes: image panels and the statistics plots
are plain artists placed through their own transforms (hand-made ticks and colour bar), and
text is rasterised once per string and remembered (see ``_Renderer``). The PNGs are encoded
from the canvas pixels with ``tools.render.png`` and carry no text chunks, so equal input gives
identical bytes.

Figures follow the page's theme: ``figure_theme("dark")`` (a context manager over a
``ContextVar``, so concurrent sessions never see each other's theme) picks the ``DARK`` palette
for the figures made inside it; ``palette()`` is the current one. Only what surrounds the image
changes (background, titles, legends, axes, ticks, colour-bar frame); the study's pixels, the
heatmap's colours and the outline colours (``SOURCE_COLOURS``) are the same in both.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg, get_hinting_flag
from matplotlib.figure import Figure
from matplotlib.font_manager import fontManager, get_font
from matplotlib.text import Text
from matplotlib.transforms import Affine2D, Bbox, TransformedBbox
from PIL import Image

from tools.render.png import encode_png

DPI = 100
LABEL_PT = 11
TITLE_PT = 12
LABEL_BOX = {"boxstyle": "round,pad=0.25", "facecolor": "black", "edgecolor": "none", "alpha": 0.6}
LABEL_PAD_PX = 0.25 * LABEL_PT * DPI / 72.0 + 1.0

# == outlines ===================================================================================
# One scheme wherever a finding is outlined (the viewer, agent/viewer.py, and every figure): the
# colour says where the finding came from, the line how its check went. The outlines lie on the
# study's pixels, which are the same in both themes, so they do not change with the theme.
#: Outline colour by finding source.
SOURCE_COLOURS: dict[str, str] = {
    "classical": "#ffc800",  # Loupe's detector
    "vlm": "#00e5ff",  # a vision model's proposal
    "model": "#2ecc40",  # a trained detector model
    "clinician": "#ff40ff",  # the clinician's own mark
}
#: What each colour is called in a caption, and whose finding it marks, in a legend.
SOURCE_COLOUR_WORDS = {"classical": "yellow", "vlm": "cyan", "model": "green", "clinician": "magenta"}
SOURCE_NAMES = {"classical": "detector", "vlm": "vision model", "model": "trained model", "clinician": "clinician"}
#: Line style by verification status: solid when the pixels bear the finding out, dashed when
#: they do not, dotted when it was never checked.
STATUS_LINES: dict[str, str] = {"confirmed": "solid", "adjusted": "solid", "rejected": "dashed",
                                "unverified": "dotted"}
#: On and off lengths of a dash and a dot, in line widths (matplotlib's own proportions).
DASH_PATTERNS: dict[str, tuple[float, float]] = {"dashed": (3.7, 1.6), "dotted": (1.0, 1.65)}


def outline_colour(source: str) -> str:
    """The outline colour of a finding from ``source`` (white for a source not in the scheme)."""
    return SOURCE_COLOURS.get(source, "#ffffff")


def outline_rgb(source: str) -> tuple[int, int, int]:
    """``outline_colour`` as an RGB triple, for drawing with Pillow."""
    colour = outline_colour(source)
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


# == theme ======================================================================================
ThemeName = Literal["light", "dark"]


@dataclass(frozen=True)
class Palette:
    """The colours around a figure's images: its background, and the text and lines on it."""

    name: ThemeName
    background: str
    foreground: str


LIGHT = Palette("light", background="white", foreground="black")
#: Streamlit's dark theme: its page background and text colour.
DARK = Palette("dark", background="#0e1117", foreground="#fafafa")
PALETTES: dict[str, Palette] = {"light": LIGHT, "dark": DARK}
_PALETTE: ContextVar[Palette] = ContextVar("loupe_figure_palette", default=LIGHT)


def palette() -> Palette:
    """The palette of the figures being made now (``LIGHT`` outside ``figure_theme``)."""
    return _PALETTE.get()


@contextmanager
def figure_theme(name: ThemeName) -> Iterator[Palette]:
    """Make the figures created inside the block in the ``name`` theme ('light' or 'dark')."""
    try:
        chosen = PALETTES[name]
    except KeyError:
        raise ValueError(f"unknown figure theme {name!r}; expected one of {', '.join(PALETTES)}") from None
    token = _PALETTE.set(chosen)
    try:
        yield chosen
    finally:
        _PALETTE.reset(token)


# == figure plumbing ============================================================================
# Figures are drawn without Axes: an Axes (spines, tick machinery, three title slots) costs
# ~12 ms before anything is on it, and most layers only need an image with shapes and labels
# on top. Image panels (``Panel``) and plots (``_Plot``) place plain artists on the figure
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
    the string, font, size and dpi, so the output stays deterministic. The bitmap is a coverage
    mask: the text's colour is applied when it is drawn (``draw_text_image`` with the artist's
    graphics context), so one cached string serves every colour and theme.
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


def new_figure(width_px: int, height_px: int) -> Figure:
    """A figure of exactly ``width_px`` x ``height_px`` at ``DPI`` in the current palette's
    background (white in the light theme), on its own Agg canvas."""
    # A quarter pixel more: Agg truncates the size, and 8.65 * 100 may come out as 864.99...
    figure = Figure(figsize=((width_px + 0.25) / DPI, (height_px + 0.25) / DPI), dpi=DPI,
                    facecolor=palette().background)
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


def fit_px(aspect: float, max_w: int, max_h: int) -> tuple[int, int]:
    """Largest (width, height) in px with height / width ~ ``aspect`` inside max_w x max_h."""
    width = min(float(max_w), max_h / aspect)
    return max(1, round(width)), max(1, min(max_h, round(width * aspect)))


def figure_px(figure: Figure) -> Affine2D:
    """Figure pixels (from the bottom-left corner, at ``DPI``) to display coordinates."""
    return Affine2D().scale(1.0 / DPI) + figure.dpi_scale_trans


def figure_box(figure: Figure, left: float, bottom: float, width: float, height: float) -> TransformedBbox:
    return TransformedBbox(Bbox.from_bounds(left, bottom, width, height), figure_px(figure))


def suptitle(figure: Figure, title: str, *, y: float | None = None, color: str | None = None) -> Text:
    """The title at the top of the figure (8 px below its edge unless ``y``, in figure
    fraction, says otherwise), in the palette's foreground unless ``color`` is given."""
    y = 1.0 - 8.0 / figure.bbox.height if y is None else y
    return figure.suptitle(title, fontsize=TITLE_PT, y=y, va="top", color=color or palette().foreground)


def figure_text(figure: Figure, x: float, y: float, text: str, **kwargs) -> Text:
    """Text at figure pixel (x, y), from the bottom-left corner; in the palette's foreground
    unless a ``color`` is given."""
    if kwargs.get("color") is None and "c" not in kwargs:
        kwargs["color"] = palette().foreground
    return figure.text(x, y, text, transform=figure_px(figure), **kwargs)
