"""The ``crops`` layer: one zoomed crop per finding."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tools.findings import Finding
from tools.render.annotated import annotate
from tools.render.geometry import Spacing, clamp, lesion_shape, size_text, status_of
from tools.render.panel import check_display, show_image
from tools.render.style import figure_png, fit_px, new_figure, suptitle
from tools.study.orientation import Orientation


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
    x0 = int(clamp(round(shape.x - side_x / 2), 0, w - side_x))
    y0 = int(clamp(round(shape.y - side_y / 2), 0, h - side_y))
    return x0, y0, x0 + side_x, y0 + side_y


def finding_title(finding: Finding, spacing_mm: Spacing) -> str:
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
    check_display(display)
    x0, y0, x1, y1 = crop_bounds(display.shape, finding)
    ax_w, ax_h = fit_px((y1 - y0) / (x1 - x0), 700, 700)
    figure = new_figure(720, ax_h + 55)
    panel = show_image(figure, ((720 - ax_w) // 2, 10, ax_w, ax_h), display, (x0, y0, x1, y1), nearest=True)
    others = [f for f in findings if f.id != finding.id and _reaches_into(f, (x0, y0, x1, y1))]
    annotate(panel, [*others, finding], spacing_mm, orientation)
    suptitle(figure, finding_title(finding, spacing_mm))
    return figure_png(figure)
