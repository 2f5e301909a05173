"""An image panel in a figure: the display pixels drawn as one artist, zoomed to a view, with
image-pixel coordinates for what is drawn over them. Coordinates follow ``tools.coordinates``:
x = column, y = row, the centre of the top-left pixel at (0, 0), boxes inclusive."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Affine2D, Bbox, TransformedBbox
from PIL import Image

from tools.render.style import figure_box, figure_px


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


class Pixels(Artist):
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


def rows_up(pixels: np.ndarray) -> np.ndarray:
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


def resized(image: np.ndarray, width_px: int, height_px: int, nearest: bool) -> np.ndarray:
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


class Panel:
    """An image region of a figure, in native image coordinates, without an Axes.

    ``rows_up`` (RGBA already at the panel's size in figure px, bottom row first; see
    ``rows_up``) shows the native region ``bounds`` (x0, y0, x1, y1; x1, y1 exclusive) in the
    figure-pixel rectangle (left, bottom, width, height). Artists added through the panel are
    drawn in image coordinates (x = column, y = row, the centre of the top-left pixel at (0, 0))
    and clipped to the panel.
    """

    def __init__(self, figure: Figure, rect: tuple[float, float, float, float], rows_up: np.ndarray,
                 bounds: tuple[int, int, int, int]) -> None:
        left, bottom, width, height = rect
        x0, y0, x1, y1 = bounds
        self.figure = figure
        self.view = _View(x0 - 0.5, x1 - 0.5, y0 - 0.5, y1 - 0.5, width / (x1 - x0))
        to_figure = (Affine2D().translate(-self.view.left, -self.view.bottom)
                     .scale(self.view.scale, -height / (y1 - y0)).translate(left, bottom))
        self.transform = to_figure + figure_px(figure)
        self.box = figure_box(figure, left, bottom, width, height)
        figure.add_artist(Pixels(rows_up, self.box, gid="image"))
        #: Where labels already stand (x0, y0, x1, y1 in image coordinates), so that none hides another.
        self.labels: list[tuple[float, float, float, float]] = []
        #: What a label should rather not cover either (the findings' outlines), same coordinates.
        self.obstacles: list[tuple[float, float, float, float]] = []

    def add(self, artist: Artist) -> Artist:
        artist.set_transform(self.transform)
        artist.set_clip_box(self.box)
        return self.figure.add_artist(artist)

    def text(self, x: float, y: float, text: str, **kwargs) -> Text:
        artist = self.figure.text(x, y, text, transform=self.transform, **kwargs)
        artist.set_clip_box(self.box)
        return artist


def show_image(figure: Figure, rect: tuple[float, float, float, float], image: np.ndarray,
               bounds: tuple[int, int, int, int], nearest: bool = False) -> Panel:
    """A panel showing ``image[y0:y1, x0:x1]`` (x1, y1 exclusive) in ``rect`` (figure px)."""
    x0, y0, x1, y1 = bounds
    pixels = resized(image[y0:y1, x0:x1], round(rect[2]), round(rect[3]), nearest)
    return Panel(figure, rect, rows_up(pixels), bounds)


def check_display(display: np.ndarray) -> None:
    if display.dtype != np.uint8 or not (display.ndim == 2 or (display.ndim == 3 and display.shape[2] == 3)):
        raise ValueError(
            f"expected a uint8 (H, W) or (H, W, 3) display image, got {display.dtype} {display.shape}"
        )
