"""The ``comparison`` layer: the original and the annotated image side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tools.findings import Finding
from tools.render.annotated import annotate, status_legend
from tools.render.geometry import Spacing
from tools.render.panel import Panel, check_display, resized, rows_up
from tools.render.style import DPI, figure_png, figure_text, fit_px, new_figure, suptitle
from tools.study.orientation import Orientation


def render_comparison(display: np.ndarray, findings: Sequence[Finding], *, spacing_mm: Spacing,
                      orientation: Orientation, title: str | None = None) -> bytes:
    """Original (left) and annotated (right) side by side, as PNG (900 px wide)."""
    check_display(display)
    h, w = display.shape[:2]
    top, bottom = (75 if title else 40), (40 if findings else 10)
    ax_w, ax_h = fit_px(h / w, 435, 600)
    figure = new_figure(900, top + ax_h + bottom)
    gap = (900 - 2 * ax_w) // 3
    pixels = rows_up(resized(display, ax_w, ax_h, nearest=False))  # both panels show the same pixels
    for index, name in enumerate(("original", "annotated")):
        left = gap + index * (ax_w + gap)
        panel = Panel(figure, (left, bottom, ax_w, ax_h), pixels, (0, 0, w, h))
        figure_text(figure, left + ax_w / 2, bottom + ax_h + 6.0 * DPI / 72.0, name, fontsize=11,
                     ha="center", va="baseline", gid=f"panel-{name}")
        if index:
            annotate(panel, findings, spacing_mm, orientation)
    if title:
        suptitle(figure, title)
    status_legend(figure, findings)
    return figure_png(figure)
