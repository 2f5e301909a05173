"""The ``statistics`` layer: one panel per finding with the intensity histogram inside the
lesion against the surrounding ring, a line profile through the centre and, with a Gaussian fit,
the fitted profile and its residuals. Plots are drawn without Axes (hand-made ticks)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.artist import Artist
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import StepPatch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Affine2D
from scipy import ndimage

from tools.findings import Finding
from tools.gaussian.measurement import FWHM_PER_SIGMA, mm_per_px
from tools.render.crops import finding_title
from tools.render.geometry import Spacing, clamp, lesion_masks, lesion_shape
from tools.render.style import DPI, figure_box, figure_png, figure_px, figure_text, new_figure, palette, suptitle


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
    Spines, ticks and labels take the palette's foreground (``ink``).
    """

    def __init__(self, figure: Figure, rect: tuple[float, float, float, float],
                 xlim: tuple[float, float], ylim: tuple[float, float]) -> None:
        left, bottom, width, height = rect
        (x0, x1), (y0, y1) = xlim, ylim
        self.figure, self.rect, self.xlim, self.ylim = figure, rect, xlim, ylim
        self.px = figure_px(figure)
        self.transform = (Affine2D().translate(-x0, -y0).scale(width / (x1 - x0), height / (y1 - y0))
                          .translate(left, bottom) + self.px)
        self.box = figure_box(figure, left, bottom, width, height)
        self.renderer = figure.canvas.get_renderer()
        self.ink = palette().foreground
        figure.add_artist(Line2D([left, left, left + width], [bottom + height, bottom, bottom], color=self.ink,
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
        self.figure.add_artist(LineCollection([[(x, bottom), (x, bottom - _TICK_PX)] for x in xs], colors=self.ink,
                                              linewidths=0.8, transform=self.px))
        for x, label in zip(xs, _tick_labels(values)):
            text = figure_text(self.figure, x, bottom - 2 * _TICK_PX, label, fontsize=10, ha="center", va="top")
            self._xtick_height = max(self._xtick_height, text.get_window_extent(self.renderer).height)

    def yticks(self, values: Sequence[float]) -> None:
        left = self.rect[0]
        ys = [self._y_px(v) for v in values]
        self.figure.add_artist(LineCollection([[(left, y), (left - _TICK_PX, y)] for y in ys], colors=self.ink,
                                              linewidths=0.8, transform=self.px))
        for y, label in zip(ys, _tick_labels(values)):
            text = figure_text(self.figure, left - 2 * _TICK_PX, y, label, fontsize=10, ha="right",
                                va="center_baseline")
            self._ytick_width = max(self._ytick_width, text.get_window_extent(self.renderer).width)

    def xlabel(self, text: str) -> None:
        left, bottom, width, _ = self.rect
        below = bottom - (2 * _TICK_PX + self._xtick_height if self._xtick_height else 0.0) - 4 * _PT
        figure_text(self.figure, left + width / 2, below, text, fontsize=10, ha="center", va="top")

    def ylabel(self, text: str) -> None:
        left, bottom, _, height = self.rect
        beside = left - (2 * _TICK_PX + self._ytick_width if self._ytick_width else 0.0) - 4 * _PT
        figure_text(self.figure, beside, bottom + height / 2, text, fontsize=10, rotation=90, ha="right",
                     va="center")

    def title(self, text: str) -> None:
        left, bottom, width, height = self.rect
        figure_text(self.figure, left + width / 2, bottom + height + 6 * _PT, text, fontsize=11, ha="center",
                     va="baseline")

    def key(self, line: int, text: str, colour: str, corner: str = "left") -> None:
        """One coloured line of a key in an upper corner (cheaper to draw than a Legend)."""
        left, bottom, width, height = self.rect
        x = left + (0.02 if corner == "left" else 0.98) * width
        figure_text(self.figure, x, bottom + (0.98 - 0.07 * line) * height, text, color=colour, fontsize=10,
                     fontweight="bold", ha=corner, va="top")


def _plot_histogram(figure: Figure, rect: tuple[float, float, float, float], lesion: np.ndarray,
                    ring: np.ndarray, unit: str) -> None:
    """Normalised histograms on shared bins; the key states n and mean ± SD of each region."""
    both = np.concatenate([lesion, ring])
    edges = np.histogram_bin_edges(both, bins=int(clamp(math.sqrt(both.size), 10, 40)))
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
    plot.line(profile.distance, profile.values, color=plot.ink, linewidth=1.2)
    plot.key(0, "— image", plot.ink, corner="right")
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
    figure = new_figure(*_STATS_SIZE)
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
    suptitle(figure, finding_title(finding, spacing_mm), y=0.98)
    return figure_png(figure)
