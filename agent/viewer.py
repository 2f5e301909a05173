"""The reading room's viewer, in plain data: the current view of the study as the tools and the
model see it (``StudyView``: frame and window), with the findings' outlines, zoomed to a finding
on request; window/level and slice changes; and the clinician's own marks, which become verified
findings with source ``clinician``; and the clinician's caliper: lines dragged on the image,
measured as ``set_finding_size`` measures them (mm with the frame's pixel spacing, px without),
drawn with their lengths. The same drawing (``shown_region``, ``draw_outlines``) shows a prior
beside the current view (``agent.comparison``).

Drawn with Pillow (no figure machinery): a slice change must reach the screen in well under
300 ms on a 512² CT series.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from agent.conversation import Conversation
from agent.workspace import set_view
from tools.coordinates import BoxPx
from tools.errors import InvalidCoordinatesError, LoupeError
from tools.findings import Finding
from tools.fit_gaussian import FitGaussianInput, fit_gaussian
from tools.render.geometry import status_of
from tools.render.style import DASH_PATTERNS, STATUS_LINES, outline_rgb
# The tool's own measure: what the caliper shows is exactly what it sets as the finding's size.
from tools.set_finding_size import line_length
from tools.study.geometry import slice_location
from tools.verify_coordinates import clinician_finding

#: The image sent to the browser: at most this many pixels on its long side.
MAX_SIDE = 1024
#: A zoomed finding is shown at least this large, and with this much context around it.
ZOOM_MIN_SIDE = 512
ZOOM_CONTEXT = 3.0
#: A click (not a drag) marks a box of this many native pixels around the point (at least).
POINT_BOX_PX = 24
#: A caliper drag shorter than this (native px) is a click, not a line.
MIN_CALIPER_PX = 1.0

#: A caliper line: (x0, y0, x1, y1) in native pixel-centre coordinates of the frame shown.
Line = tuple[float, float, float, float]


@dataclass(frozen=True)
class ViewerImage:
    """One rendered view: the PNG and how its pixels map to the native frame."""

    png: bytes
    width: int
    height: int
    #: Native pixel-edge coordinates (x, y) of the PNG's top-left corner, and PNG px per native px.
    origin: tuple[float, float]
    scale: float
    frame: int
    frames: int
    caption: str
    #: The findings drawn (id, label), for zoom buttons and the legend.
    findings: tuple[tuple[str, str], ...] = ()

    def to_native(self, x: float, y: float) -> tuple[float, float]:
        """PNG pixel-edge coordinates (a click) -> native pixel-centre coordinates."""
        return self.origin[0] + x / self.scale - 0.5, self.origin[1] + y / self.scale - 0.5


def viewer_image(conversation: Conversation, *, outlines: bool = True, zoom: str | None = None,
                 calipers: Sequence[Line] = ()) -> ViewerImage | None:
    """The current view (None without a study), findings outlined, zoomed to ``zoom`` (a finding
    id), with the clinician's caliper ``calipers`` (lines on the shown frame) and their lengths."""
    ctx = conversation.ctx
    if ctx.current_study_id is None:
        return None
    view = ctx.view()
    study = view.study
    rendered = study.render(view.frame, view.window)
    shown = [f for f in ctx.study_findings(study.id) if f.frame == view.frame]
    finding = ctx.findings.get(zoom) if zoom else None
    image, (left, top), scale = shown_region(
        rendered.pixels, None if finding is None else (finding.center_px, max(finding.bbox_px.width,
                                                                               finding.bbox_px.height)))
    if outlines:
        draw_outlines(image, [finding_outline(f) for f in shown], (left, top), scale)
    if calipers:
        lengths, unit = caliper_lengths(conversation, view.frame, calipers)
        _draw_calipers(image, calipers, [caliper_text([length], unit) for length in lengths], (left, top), scale)
    window = rendered.window
    parts = [f"frame {view.frame + 1} of {study.frame_count}"]
    position = slice_position_mm(conversation)
    if position is not None:
        parts.append(f"slice position {position:.1f} mm")
    if window is not None:
        parts.append(f"window {window.center:g}/{window.width:g}")
    if zoom:
        parts.append(f"zoomed to {zoom}")
    return ViewerImage(png=png_bytes(image), width=image.width, height=image.height, origin=(left, top), scale=scale,
                       frame=view.frame, frames=study.frame_count, caption=" · ".join(parts),
                       findings=tuple((f.id, f.label) for f in shown))


def shown_region(pixels, zoom: tuple[tuple[float, float], float] | None = None
                 ) -> tuple[Image.Image, tuple[int, int], float]:
    """A rendered frame (uint8 array) as the viewer shows it: the whole frame, or with ``zoom``
    (a centre and a size in native px) a square around it with context, scaled for the screen.
    The image, the native pixel-edge coordinates of its top-left corner, and PNG px per native px."""
    image = Image.fromarray(pixels).convert("RGB")
    left, top, right, bottom = _region(image.size, zoom)
    image = image.crop((left, top, right, bottom))
    long_side = max(image.size)
    target = ZOOM_MIN_SIDE if zoom and long_side < ZOOM_MIN_SIDE else min(long_side, MAX_SIDE)
    scale = target / long_side
    if scale != 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR)
    return image, (left, top), scale


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over size: this is redrawn per slice
    return buffer.getvalue()


def _region(size: tuple[int, int], zoom: tuple[tuple[float, float], float] | None) -> tuple[int, int, int, int]:
    """The native crop shown: the whole frame, or a square around ``zoom`` (centre, size) with context."""
    width, height = size
    if zoom is None:
        return 0, 0, width, height
    (cx, cy), extent = zoom
    side = min(max(width, height), max(64, round(ZOOM_CONTEXT * extent)))
    left = int(min(max(0, round(cx - side / 2)), max(0, width - side)))
    top = int(min(max(0, round(cy - side / 2)), max(0, height - side)))
    return left, top, min(width, left + side), min(height, top + side)


@dataclass(frozen=True)
class Outline:
    """One outline to draw: a closed contour in native pixel-centre coordinates, its colour, its
    line (``tools/render/style.py``'s STATUS_LINES: solid, dashed, dotted) and its label."""

    label: str
    points: tuple[tuple[float, float], ...]
    colour: tuple[int, int, int]
    line: str = "solid"


def finding_outline(finding: Finding) -> Outline:
    """A finding in the figures' scheme: its source's colour, dashed when rejected, dotted when
    never checked; its Gaussian's FWHM contour, else its box."""
    if finding.gaussian is not None and finding.gaussian.converged:
        points = _ellipse(finding)
    else:
        box = finding.bbox_px  # its edges run around the corner pixels, not through their centres
        x0, y0, x1, y1 = box.x0 - 0.5, box.y0 - 0.5, box.x1 + 0.5, box.y1 + 0.5
        points = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return Outline(finding.id, tuple(points), outline_rgb(finding.source), STATUS_LINES[status_of(finding)])


def circle_outline(label: str, centre: tuple[float, float], radius: float, colour: tuple[int, int, int],
                   line: str = "solid", points: int = 48) -> Outline:
    """A circle of ``radius`` native px about ``centre`` (a lesion's place known by its size only)."""
    cx, cy = centre
    return Outline(label, tuple((cx + radius * math.cos(t), cy + radius * math.sin(t))
                                for t in (2 * math.pi * i / points for i in range(points))), colour, line)


def draw_outlines(image: Image.Image, outlines: Sequence[Outline], origin: tuple[float, float], scale: float) -> None:
    """Each outline on ``image`` (shown from native ``origin`` at ``scale``), its label above it."""
    draw = ImageDraw.Draw(image)
    line = max(1, round(max(image.size) / 340))
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 36)))

    def to_png(x: float, y: float) -> tuple[float, float]:
        return (x + 0.5 - origin[0]) * scale, (y + 0.5 - origin[1]) * scale

    for outline in outlines:
        points = [to_png(*p) for p in outline.points]
        _outline(draw, [*points, points[0]], outline.colour, line, outline.line)
        left, top = min(p[0] for p in points), min(p[1] for p in points)
        draw.text((left, max(0, top - line - 2)), outline.label, fill=outline.colour, font=font, anchor="lb",
                  stroke_width=2, stroke_fill=(0, 0, 0))  # a dark rim: legible on bright bone too


def _outline(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour: tuple[int, int, int],
             width: int, style: str) -> None:
    """A closed polyline, solid or in the figures' dash pattern (Pillow draws no dashes itself)."""
    if style not in DASH_PATTERNS:
        draw.line(points, fill=colour, width=width, joint="curve")
        return
    on, off = (max(1.0, length * width) for length in DASH_PATTERNS[style])
    for start, end in _dashes(points, on, off):
        draw.line([start, end], fill=colour, width=width)


def _dashes(points: list[tuple[float, float]], on: float, off: float) -> list[tuple[tuple[float, float], ...]]:
    """The (start, end) of each dash along the polyline: ``on`` px drawn, ``off`` px left out."""
    dashes, drawn, position = [], True, 0.0  # position: how far into the current dash or gap
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length, done = math.hypot(x1 - x0, y1 - y0), 0.0
        while done < length:
            step = min((on if drawn else off) - position, length - done)
            if drawn:
                t0, t1 = done / length, (done + step) / length
                dashes.append(((x0 + t0 * (x1 - x0), y0 + t0 * (y1 - y0)), (x0 + t1 * (x1 - x0), y0 + t1 * (y1 - y0))))
            done, position = done + step, position + step
            if position >= (on if drawn else off):
                drawn, position = not drawn, 0.0
    return dashes


def _draw_calipers(image: Image.Image, lines: Sequence[Line], labels: list[str], origin: tuple[int, int],
                   scale: float) -> None:
    """Each caliper line with perpendicular end ticks on a dark underlay (visible across a bright
    lesion), in the clinician's colour, its length beside the end where the drag stopped."""
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(image.size) / 340))
    tick = 3 * width + 3
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 40)))
    colour = outline_rgb("clinician")
    for line, label in zip(lines, labels):
        x0, y0, x1, y1 = ((value + 0.5 - origin[index % 2]) * scale for index, value in enumerate(line))
        length = max(math.hypot(x1 - x0, y1 - y0), 1e-9)
        c, s = (x1 - x0) / length, (y1 - y0) / length
        segments = [[(x0, y0), (x1, y1)]] + [[(x + tick * s, y - tick * c), (x - tick * s, y + tick * c)]
                                             for x, y in ((x0, y0), (x1, y1))]
        for fill, stroke in (((0, 0, 0), width + 2), (colour, width)):
            for segment in segments:
                draw.line(segment, fill=fill, width=stroke)
        at = (min(max(x1 + c * (tick + 4), 4), image.width - 4), min(max(y1 + s * (tick + 4), 4), image.height - 4))
        # Beyond the end, away from the line; turned back near the right edge to stay on the image.
        anchor = ("l" if c >= 0 and at[0] < image.width * 0.8 else "r") + ("t" if s >= 0 else "b")
        draw.text(at, label, fill=colour, font=font, anchor=anchor, stroke_width=2, stroke_fill=(0, 0, 0))


def _ellipse(finding: Finding, points: int = 48) -> list[tuple[float, float]]:
    """The FWHM contour of the finding's Gaussian fit, in native pixels."""
    fit = finding.gaussian
    half = math.sqrt(2 * math.log(2))  # σ -> half width at half maximum
    a, b = fit.sigma_major_px * half, fit.sigma_minor_px * half
    angle = math.radians(fit.angle_deg)
    cx, cy = fit.center_px
    return [(cx + a * math.cos(t) * math.cos(angle) - b * math.sin(t) * math.sin(angle),
             cy + a * math.cos(t) * math.sin(angle) + b * math.sin(t) * math.cos(angle))
            for t in (2 * math.pi * i / points for i in range(points))]


def slice_position_mm(conversation: Conversation) -> float | None:
    """Where the shown slice lies along the series' normal, in mm (None when the header does not say)."""
    view = conversation.ctx.view()
    try:
        return slice_location(view.study.geometry(view.frame))
    except (AttributeError, ValueError, TypeError):
        return None


def window_level(conversation: Conversation) -> tuple[float, float] | None:
    """The shown window's centre and width; for a greyscale image shown through its VOI LUT (many
    radiographs), the frame's full value range, where a free window starts; None for colour."""
    view = conversation.ctx.view()
    study = view.study
    window = study.render(view.frame, view.window).window
    if window is not None:
        return window.center, window.width
    if study.safe.samples_per_pixel != 1:
        return None
    values = study.physical(view.frame)
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0)


def set_window_level(conversation: Conversation, center: float, width: float) -> str | None:
    """A free window (centre, width in the study's units); an error sentence, or None."""
    if width <= 0:
        return "The window width must be more than zero."
    return set_view(conversation, window=f"{center:g},{width:g}")


def mark(conversation: Conversation, image: ViewerImage, *, point: tuple[float, float] | None = None,
         box: tuple[float, float, float, float] | None = None, label: str = "clinician-marked finding"
         ) -> tuple[str | None, str]:
    """The clinician's click (``point``) or drag (``box``), in ``image``'s PNG pixels, as a
    verified finding with source ``clinician``: (finding id or None, a sentence saying what
    became of it). The model is told in the history, so "what is F6?" works in the chat."""
    try:
        native = _native_box(image, point, box)
        finding = clinician_finding(conversation.ctx, native, frame=image.frame, label=label)
    except LoupeError as error:
        return None, error.message
    try:
        fit_gaussian(conversation.ctx, FitGaussianInput(finding_ids=[finding.id], study_id=finding.study_id))
    except InvalidCoordinatesError:
        pass  # a mark at the image edge may not fit; the finding stands without a size
    finding = conversation.ctx.findings[finding.id]
    sentence = _marked_sentence(conversation, finding)
    conversation.note_exchange(f"(I marked {finding.id} on the image: {finding.label}.)", sentence)
    if conversation.recorder is not None:
        conversation.recorder.audit("clinician_mark", {"finding_id": finding.id, "frame": finding.frame,
                                                       "status": finding.verification.status})
    return finding.id, sentence


def _native_box(image: ViewerImage, point: tuple[float, float] | None,
                box: tuple[float, float, float, float] | None) -> BoxPx:
    if box is not None:
        x0, y0 = image.to_native(min(box[0], box[2]), min(box[1], box[3]))
        x1, y1 = image.to_native(max(box[0], box[2]), max(box[1], box[3]))
        if x1 - x0 >= 3 and y1 - y0 >= 3:  # a real drag; a tiny one is a click
            return BoxPx(x0=x0, y0=y0, x1=x1, y1=y1)
        point = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    if point is None:
        raise InvalidCoordinatesError("Click a point or drag a box on the image to mark it.")
    x, y = image.to_native(*point)
    return BoxPx.around(x, y, POINT_BOX_PX, POINT_BOX_PX)


def _marked_sentence(conversation: Conversation, finding: Finding) -> str:
    status = finding.verification.status if finding.verification else "unverified"
    reason = finding.verification.reasons[0] if finding.verification and finding.verification.reasons else ""
    size = (f", {finding.size_mm[0]:.1f} × {finding.size_mm[1]:.1f} mm" if finding.size_mm
            else f", {finding.size_px[0]:.0f} × {finding.size_px[1]:.0f} px" if finding.size_px else "")
    x, y = finding.center_px
    where = f"at ({x:.0f}, {y:.0f}) px on frame {finding.frame + 1}"
    return f"{finding.id} ({finding.label}) {where}{size}: {status}" + (f" — {reason}." if reason else ".")


# -- the caliper --------------------------------------------------------------------------------


def caliper_line(conversation: Conversation, image: ViewerImage, drag: tuple[float, float, float, float]
                 ) -> Line | None:
    """A drag on ``image`` (PNG pixels: where it started, where it ended) as a caliper line in
    native pixels of the image's frame, its ends held on the image (a drag may end past its
    edge); None for a drag too short to measure (a click)."""
    study = conversation.ctx.view().study
    columns, rows = study.safe.columns, study.safe.rows
    ends: list[float] = []
    for x, y in (drag[:2], drag[2:]):
        native_x, native_y = image.to_native(x, y)
        ends += [min(max(native_x, -0.5), columns - 0.5), min(max(native_y, -0.5), rows - 0.5)]
    x0, y0, x1, y1 = ends
    return (x0, y0, x1, y1) if math.hypot(x1 - x0, y1 - y0) >= MIN_CALIPER_PX else None


def caliper_lengths(conversation: Conversation, frame: int, lines: Sequence[Line]) -> tuple[list[float], str]:
    """Each line's length as ``set_finding_size`` measures it, and the unit: mm with the frame's
    pixel spacing, px without one."""
    spacing = conversation.ctx.view().study.pixel_spacing_mm(frame)
    return [line_length(((x0, y0), (x1, y1)), spacing) for x0, y0, x1, y1 in lines], "mm" if spacing else "px"


def caliper_text(lengths: Sequence[float], unit: str) -> str:
    """The lengths as the findings state sizes: 23.4 mm, or 23.4 × 11.9 mm for two (longer first)."""
    digits = 1 if unit == "mm" else 0
    return " × ".join(f"{length:.{digits}f}" for length in sorted(lengths, reverse=True)) + f" {unit}"


def caliper_finding(conversation: Conversation, frame: int, line: Line) -> str | None:
    """The finding a caliper line measures unless the clinician says otherwise: the one whose box
    holds the line's midpoint (the smallest, where boxes overlap), else the nearest on the frame;
    None when the frame has none."""
    ctx = conversation.ctx
    shown = [f for f in ctx.study_findings(ctx.current_study_id) if f.frame == frame]
    if not shown:
        return None
    x, y = (line[0] + line[2]) / 2, (line[1] + line[3]) / 2
    holding = [f for f in shown if f.bbox_px.contains(x, y)]
    if holding:
        return min(holding, key=lambda f: f.bbox_px.width * f.bbox_px.height).id
    return min(shown, key=lambda f: math.hypot(f.center_px[0] - x, f.center_px[1] - y)).id
