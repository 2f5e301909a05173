"""The ``heatmap`` layer: a probability map over the image (semi-transparent 'inferno', alpha =
probability) with a colour bar."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from tools.findings import Finding
from tools.gaussian.measurement import FWHM_PER_SIGMA
from tools.gaussian.uncertainty import accumulate_gaussian
from tools.render.annotated import place_label
from tools.render.geometry import lesion_shape
from tools.render.panel import Panel, Pixels, check_display, resized
from tools.render.style import (
    DPI,
    figure_box,
    figure_png,
    figure_px,
    figure_text,
    fit_px,
    new_figure,
    palette,
    suptitle,
)


def probability_map(image_shape: tuple[int, int], findings: Sequence[Finding]) -> np.ndarray:
    """A probability map built from the findings, float32 in [0, 1], of ``image_shape`` (H, W).

    Each finding contributes a Gaussian normalised to a peak of 1 (its fit's FWHM axes and
    angle; without a fit, a Gaussian whose FWHM equals the box), weighted by its confidence
    ``w``; contributions combine as ``1 - Π(1 - w·g)`` (see ``tools.gaussian.uncertainty.accumulate_gaussian``).
    """
    absent = np.ones(image_shape, dtype=np.float32)  # Π(1 - w·g)
    for finding in findings:
        lesion = lesion_shape(finding)
        accumulate_gaussian(absent, (lesion.x, lesion.y), lesion.major_px / FWHM_PER_SIGMA,
                            lesion.minor_px / FWHM_PER_SIGMA, lesion.angle_deg, finding.confidence)
    return np.subtract(1.0, absent, out=absent)


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
    check_display(display)
    h, w = display.shape[:2]
    if probability.shape != (h, w):
        raise ValueError(f"the probability map is {probability.shape}, the image is {(h, w)}")
    top = 45 if title else 10
    ax_w, ax_h = fit_px(h / w, 720, 800)
    figure = new_figure(860, top + ax_h + 10)
    panel = Panel(figure, (10, 10, ax_w, ax_h), _heat_blend(display, probability, ax_w, ax_h), (0, 0, w, h))
    for finding in findings:
        place_label(panel, finding.id, lesion_shape(finding), "white", gid=f"label-{finding.id}")
    _colour_bar(figure, 10 + ax_w + 20, 10 + round(ax_h * 0.1), 25, round(ax_h * 0.8))
    if title:
        suptitle(figure, title)
    return figure_png(figure)


def _colour_bar(figure: Figure, left: int, bottom: int, width: int, height: int) -> None:
    """The 'inferno' scale from 0 (bottom) to 1 (top): a strip, a frame, three ticks, a label
    (the frame, ticks and labels in the palette's foreground, so they show on either theme)."""
    strip = colormaps["inferno"](np.linspace(0.0, 1.0, max(height, 1)), bytes=True)  # bottom row first
    figure.add_artist(Pixels(np.repeat(strip[:, None, :], width, axis=1),
                             figure_box(figure, left, bottom, width, height), gid="colour-bar"))
    px, ink = figure_px(figure), palette().foreground
    figure.add_artist(Rectangle((left, bottom), width, height, fill=False, edgecolor=ink, linewidth=0.8,
                                transform=px))
    tick, pad = 3.5 * DPI / 72.0, 3.5 * DPI / 72.0
    right = left + width
    levels = (0.0, 0.5, 1.0)
    figure.add_artist(LineCollection([[(right, bottom + v * height), (right + tick, bottom + v * height)]
                                      for v in levels], colors=ink, linewidths=0.8, transform=px))
    renderer = figure.canvas.get_renderer()
    labels = [figure_text(figure, right + tick + pad, bottom + v * height, f"{v:.1f}", fontsize=10,
                           ha="left", va="center_baseline") for v in levels]
    label_width = max(t.get_window_extent(renderer).width for t in labels)
    figure_text(figure, right + tick + pad + label_width + 4.0 * DPI / 72.0, bottom + height / 2, "probability",
                 fontsize=11, rotation=90, ha="left", va="center", gid="colour-bar-label")


_INFERNO_LUT = colormaps["inferno"](np.arange(256), bytes=True)[:, :3].astype(np.float32)


def _heat_blend(display: np.ndarray, probability: np.ndarray, width_px: int, height_px: int) -> np.ndarray:
    """The display under 'inferno' with alpha = 0.85 × probability, as RGBA at panel size with
    the bottom row first (see ``rows_up``).

    Blending here rather than stacking two matplotlib images avoids a second resampling, and
    only the box around the pixels with a visible probability is touched (usually a small part
    of the image).
    """
    base = resized(display, width_px, height_px, nearest=False)[::-1]
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
