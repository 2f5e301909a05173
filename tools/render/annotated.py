"""The ``image`` and ``annotated`` layers.

Each finding is drawn as an ellipse (its Gaussian fit's FWHM axes and angle) or, without a fit,
its box; the id label kept inside the image; the outline scheme of ``style.py`` (a colour per
source — detector yellow, vision model cyan, trained model green, clinician magenta — solid when
verified, dashed when rejected, dotted when unchecked); calipers on the measured long and short
axes (along the ellipse's major axis for a size measured without them) with the size (mm, or px
without spacing); a scale bar when spacing is known; orientation letters at the
four edges when ImageOrientationPatient is known."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse, Rectangle

from tools.findings import CaliperLine, Finding
from tools.render.geometry import (
    LesionShape,
    Spacing,
    caliper_lines,
    clamp,
    length_label,
    lesion_shape,
    scale_bar_mm,
    size_text,
    status_of,
)
from tools.render.panel import Panel, check_display, show_image
from tools.render.png import encode_png
from tools.render.style import (
    DPI,
    LABEL_BOX,
    LABEL_PAD_PX,
    LABEL_PT,
    SOURCE_COLOURS,
    SOURCE_NAMES,
    STATUS_LINES,
    figure_png,
    figure_px,
    figure_text,
    fit_px,
    new_figure,
    outline_colour,
    palette,
    suptitle,
)
from tools.study.orientation import Orientation, orientation_labels


# == annotation drawing =========================================================================
def _draw_outline(panel: Panel, finding: Finding, shape: LesionShape, colour: str, style: str) -> None:
    common = {"fill": False, "edgecolor": colour, "linewidth": 2.0, "linestyle": style}
    if shape.ellipse:
        panel.add(Ellipse((shape.x, shape.y), shape.major_px, shape.minor_px, angle=shape.angle_deg,
                          gid=f"outline-{finding.id}", **common))
    else:
        box = finding.bbox_px
        panel.add(Rectangle((box.x0 - 0.5, box.y0 - 0.5), box.width, box.height,
                            gid=f"outline-{finding.id}", **common))


def _draw_calipers(panel: Panel, finding: Finding, lines: Sequence[CaliperLine], colour: str) -> None:
    """Each measured line (the long axis, and the short axis where it was measured) with
    perpendicular end ticks, on a dark underlay."""
    tick = 7.0 / panel.view.scale
    segments = []
    for (x0, y0), (x1, y1) in lines:
        length = max(math.hypot(x1 - x0, y1 - y0), 1e-9)
        c, s = (x1 - x0) / length, (y1 - y0) / length
        ends = [(x0, y0), (x1, y1)]
        segments += [ends] + [[(x + tick * s, y - tick * c), (x - tick * s, y + tick * c)] for x, y in ends]
    # The underlay keeps the calipers visible where they cross a bright lesion.
    gid = f"calipers-{finding.id}"
    panel.add(LineCollection(segments, colors="black", linewidths=3.2, alpha=0.7, gid=gid))
    panel.add(LineCollection(segments, colors=colour, linewidths=1.6, gid=gid))


#: How many label heights a label may be pushed further above or below its shape to stay clear
#: of the labels placed before it.
_LABEL_STACK = 8


def place_label(panel: Panel, text: str, shape: LesionShape, colour: str, gid: str) -> None:
    """Put the label next to its shape, always inside the view and never over another label:
    above the shape if it fits (below near the top edge), else at its other corners or sides,
    else pushed further out; where every place is taken, the one overlapping least. Other
    findings' outlines (``panel.obstacles``) are avoided where a free place allows."""
    view = panel.view
    artist = panel.text(0, 0, text, color=colour, fontsize=LABEL_PT, fontweight="bold", ha="left",
                        va="top", bbox=LABEL_BOX, gid=gid)
    extent = artist.get_window_extent(panel.figure.canvas.get_renderer())
    pad = LABEL_PAD_PX / view.scale
    w, h = extent.width / view.scale + 2 * pad, extent.height / view.scale + 2 * pad
    margin, gap = 3.0 / view.scale, 4.0 / view.scale
    best = None
    for order, (x, y) in enumerate(_label_places(shape, w, h, gap)):
        kept_x = clamp(x, view.left + margin, view.right - margin - w)
        kept_y = clamp(y, view.top + margin, view.bottom - margin - h)
        inside, x, y = (kept_x, kept_y) == (x, y), kept_x, kept_y
        box = (x, y, x + w, y + h)
        overlap = sum(_overlap(box, placed) for placed in panel.labels)
        covered = sum(_overlap(box, other) for other in panel.obstacles
                      if not (other[0] <= shape.x <= other[2] and other[1] <= shape.y <= other[3]))
        cost = (overlap > 0, not inside, covered > 0, overlap, order)
        if best is None or cost < best[0]:
            best = (cost, x, y)
        if overlap == 0 and inside and covered == 0:
            break
    _, x, y = best
    panel.labels.append((x, y, x + w, y + h))
    artist.set_position((x + pad, y + pad))


def _label_places(shape: LesionShape, w: float, h: float, gap: float) -> list[tuple[float, float]]:
    """Top-left corners to try for a w × h label, in order of preference."""
    hx, hy = shape.half_extent()
    left, right = shape.x - hx, shape.x + hx - w
    above, below = shape.y - hy - gap - h, shape.y + hy + gap
    places = [(left, above), (left, below), (right, above), (right, below),
              (shape.x + hx + gap, shape.y - h / 2), (shape.x - hx - gap - w, shape.y - h / 2)]
    for step in range(1, _LABEL_STACK + 1):
        places += [(left, above - step * (h + gap)), (left, below + step * (h + gap))]
    return places


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0


def _draw_finding(panel: Panel, finding: Finding, spacing_mm: Spacing) -> None:
    colour, style = outline_colour(finding.source), STATUS_LINES[status_of(finding)]
    shape = lesion_shape(finding)
    _draw_outline(panel, finding, shape, colour, style)
    lines = caliper_lines(finding, shape, spacing_mm)
    if lines:
        _draw_calipers(panel, finding, lines, colour)
    size = size_text(finding, spacing_mm)
    place_label(panel, f"{finding.id}  {size}" if size else finding.id, shape, colour,
                 gid=f"label-{finding.id}")


def _draw_scale_bar(panel: Panel, spacing_mm: Spacing) -> None:
    if spacing_mm is None:
        return
    view = panel.view
    mm = scale_bar_mm(view.width, spacing_mm[1])
    length = mm / spacing_mm[1]
    x0, y = view.left + 0.04 * view.width, view.bottom - 0.05 * view.height
    for width, colour in ((5.0, "black"), (3.0, "white")):  # a dark rim keeps it visible on white
        panel.add(Line2D([x0, x0 + length], [y, y], color=colour, linewidth=width,
                         solid_capstyle="butt", gid="scale-bar"))
    panel.text(x0 + length / 2, y - 6.0 / view.scale, length_label(mm), color="white", fontsize=10,
               ha="center", va="bottom", bbox=LABEL_BOX, gid="scale-label")


def _draw_orientation(panel: Panel, orientation: Orientation) -> None:
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
                   bbox=LABEL_BOX, gid=f"orientation-{edge}")


def annotate(panel: Panel, findings: Sequence[Finding], spacing_mm: Spacing, orientation: Orientation) -> None:
    _draw_orientation(panel, orientation)
    _draw_scale_bar(panel, spacing_mm)
    for finding in findings:
        shape = lesion_shape(finding)
        hx, hy = shape.half_extent()
        panel.obstacles.append((shape.x - hx, shape.y - hy, shape.x + hx, shape.y + hy))
    for finding in findings:
        _draw_finding(panel, finding, spacing_mm)


def status_legend(figure: Figure, findings: Sequence[Finding]) -> None:
    """The outline key, centred at the bottom: one line per source present (its colour) and per
    check that is not drawn solid (its dash, in the text colour), each with its name.

    Drawn by hand, as a Legend would (handle 2.5 em, 0.8 em to the text, 2 em between
    entries), without a Legend's boxes and packing. Colour handles lie on a dark rim: yellow
    and cyan alone hardly show on a light figure.
    """
    entries = [(SOURCE_NAMES[s], SOURCE_COLOURS[s], "solid", True) for s in SOURCE_COLOURS
               if any(f.source == s for f in findings)]
    entries += [(status, palette().foreground, STATUS_LINES[status], False) for status in ("rejected", "unverified")
                if any(status_of(f) == status for f in findings)]
    if not entries:
        return
    em = 10 * DPI / 72.0
    handle, to_text, between, y = 2.5 * em, 0.8 * em, 2.0 * em, 21.0
    renderer = figure.canvas.get_renderer()
    texts = [figure_text(figure, 0, y, name, fontsize=10, ha="left", va="center", gid=f"legend-{name}")
             for name, *_ in entries]
    widths = [t.get_window_extent(renderer).width for t in texts]
    # Four sources and two checks are wider than a figure: the gaps shrink before the names do.
    gaps = len(texts) * (handle + to_text) + (len(texts) - 1) * between
    fit = min(1.0, max(0.4, (figure.bbox.width - 20 - sum(widths)) / gaps))
    handle, to_text, between = handle * fit, to_text * fit, between * fit
    x = (figure.bbox.width - sum(widths) - gaps * fit) / 2
    for (name, colour, style, rimmed), text, width in zip(entries, texts, widths, strict=True):
        if rimmed:
            figure.add_artist(Line2D([x, x + handle], [y, y], color="black", linewidth=4.5, alpha=0.7,
                                     transform=figure_px(figure), gid=f"legend-{name}"))
        figure.add_artist(Line2D([x, x + handle], [y, y], color=colour, linestyle=style, linewidth=2.5,
                                 transform=figure_px(figure), gid=f"legend-{name}"))
        text.set_x(x + handle + to_text)
        x += handle + to_text + width + between


# == layers: pure functions =====================================================================
def annotated_figure(display: np.ndarray, findings: Sequence[Finding], *, spacing_mm: Spacing,
                     orientation: Orientation, title: str | None = None) -> Figure:
    """The annotated layer as a matplotlib Figure (see ``render_annotated``)."""
    check_display(display)
    h, w = display.shape[:2]
    top, bottom = (45 if title else 10), (40 if findings else 10)
    ax_w, ax_h = fit_px(h / w, 780, 800)
    figure = new_figure(800, top + ax_h + bottom)
    panel = show_image(figure, ((800 - ax_w) // 2, bottom, ax_w, ax_h), display, (0, 0, w, h))
    annotate(panel, findings, spacing_mm, orientation)
    if title:
        suptitle(figure, title)
    status_legend(figure, findings)
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
        by source and dashed by verification status (``style.py``), with its id label and (when it
        has a size) calipers.
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
    check_display(display)
    return encode_png(np.ascontiguousarray(display))
