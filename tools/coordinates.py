"""Pixel coordinates and Gemini's normalised ``box_2d`` / ``point`` convention, both ways.

Internal convention (design.md): pixel coordinates of the displayed frame at native
resolution, x = column, y = row, with the *centre* of the top-left pixel at (0, 0). The image
therefore spans [-0.5, W - 0.5] in x. A box in pixels is *inclusive*: ``x0..x1`` are the
centres of its first and last columns (the manifest's convention), so a one-pixel box has
x0 == x1 and its width is ``x1 - x0 + 1``.

Model-facing convention (Gemini): ``box_2d = [ymin, xmin, ymax, xmax]`` and ``point = [y, x]``,
numbers 0–1000 measured along the *edges* of the image that was actually sent, after any
resize and padding. ``SentImage`` records that resize/padding; every conversion goes through
``to_sent_edge`` / ``from_sent_edge`` and is tested as a round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.errors import InvalidCoordinatesError

NORMALISED = 1000.0

#: How a vision model writes a box, all along the edges of the image it was sent:
#: ``yxyx-1000`` Gemini's and MedGemma's ``[ymin, xmin, ymax, xmax]`` in 0–1000; ``xyxy-1``
#: ``[xmin, ymin, xmax, ymax]`` normalised to 0–1; ``xyxy-px`` the same in the sent image's pixels.
BoxFormat = Literal["yxyx-1000", "xyxy-1", "xyxy-px"]
BOX_FORMATS: dict[str, str] = {
    "yxyx-1000": "[ymin, xmin, ymax, xmax] as numbers from 0 to 1000 of the image height and width",
    "xyxy-1": "[xmin, ymin, xmax, ymax] as fractions from 0 to 1 of the image width and height",
    "xyxy-px": "[xmin, ymin, xmax, ymax] in pixels of the image you were sent",
}


class SentImage(BaseModel):
    """How the native frame was placed into the image sent to a model.

    ``scale`` = sent pixels per native pixel along x (``scale_y`` along y, default the same);
    the native image occupies ``[pad_left, pad_left + native_width * scale]`` horizontally in
    the sent image. A resize to whole pixels generally scales the two axes slightly
    differently, so ``fit_long_side`` records both.
    """

    model_config = ConfigDict(frozen=True)

    native_width: int = Field(gt=0)
    native_height: int = Field(gt=0)
    sent_width: int = Field(gt=0)
    sent_height: int = Field(gt=0)
    scale: float = Field(gt=0)
    scale_y: float | None = Field(default=None, gt=0)
    pad_left: float = 0.0
    pad_top: float = 0.0

    @property
    def y_scale(self) -> float:
        return self.scale if self.scale_y is None else self.scale_y

    @classmethod
    def identity(cls, width: int, height: int) -> SentImage:
        return cls(native_width=width, native_height=height, sent_width=width, sent_height=height, scale=1.0)

    @classmethod
    def fit_long_side(cls, width: int, height: int, max_side: int) -> SentImage:
        """Downscale (never upscale) so the long side is at most ``max_side``; no padding."""
        scale = min(1.0, max_side / max(width, height))
        sent_width, sent_height = max(1, round(width * scale)), max(1, round(height * scale))
        return cls(native_width=width, native_height=height, sent_width=sent_width, sent_height=sent_height,
                   scale=sent_width / width, scale_y=sent_height / height)


class BoxPx(BaseModel):
    """An inclusive pixel box in native coordinates (see module docstring)."""

    model_config = ConfigDict(frozen=True)

    x0: float
    y0: float
    x1: float
    y1: float

    @model_validator(mode="after")
    def _ordered(self) -> BoxPx:
        if not (self.x1 >= self.x0 and self.y1 >= self.y0):
            raise ValueError(f"box corners out of order: ({self.x0}, {self.y0}) – ({self.x1}, {self.y1})")
        return self

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0

    @property
    def width(self) -> float:
        return self.x1 - self.x0 + 1.0

    @property
    def height(self) -> float:
        return self.y1 - self.y0 + 1.0

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    def contains(self, x: float, y: float) -> bool:
        return self.x0 - 0.5 <= x <= self.x1 + 0.5 and self.y0 - 0.5 <= y <= self.y1 + 0.5

    def clipped(self, width: int, height: int) -> BoxPx:
        return BoxPx(x0=min(max(self.x0, 0), width - 1), y0=min(max(self.y0, 0), height - 1),
                     x1=min(max(self.x1, 0), width - 1), y1=min(max(self.y1, 0), height - 1))

    @classmethod
    def around(cls, x: float, y: float, width: float, height: float) -> BoxPx:
        """A box of ``width`` x ``height`` pixels centred on (x, y); at least one pixel each way."""
        width, height = max(width, 1.0), max(height, 1.0)
        return cls(x0=x - (width - 1) / 2, y0=y - (height - 1) / 2, x1=x + (width - 1) / 2, y1=y + (height - 1) / 2)


# -- the one conversion pair: native pixel-centre coordinate <-> normalised sent-image edge ------
def to_sent_edge(value: float, axis_scale: float, pad: float, sent_size: int) -> float:
    """Native pixel-centre coordinate -> 0–1000 along the sent image's edge."""
    return ((value + 0.5) * axis_scale + pad) / sent_size * NORMALISED


def from_sent_edge(normalised: float, axis_scale: float, pad: float, sent_size: int) -> float:
    """0–1000 along the sent image's edge -> native pixel-centre coordinate (inverse of above)."""
    return (normalised / NORMALISED * sent_size - pad) / axis_scale - 0.5


def _check_numbers(values: Sequence[float], count: int, what: str) -> list[float]:
    if len(values) != count:
        raise InvalidCoordinatesError(f"A {what} needs {count} numbers, got {len(values)}.")
    numbers = []
    for value in values:
        # Model output is JSON: a number must arrive as a number, not a string or a boolean.
        if isinstance(value, bool) or not isinstance(value, Real):
            raise InvalidCoordinatesError(f"The {what} contains a non-number ({value!r}).")
        number = float(value)
        if not 0.0 <= number <= NORMALISED:
            raise InvalidCoordinatesError(f"The {what} values must lie between 0 and 1000 (got {number:g}).")
        numbers.append(number)
    return numbers


def box_2d_to_px(box_2d: Sequence[float], sent: SentImage) -> BoxPx:
    """Gemini ``[ymin, xmin, ymax, xmax]`` (0–1000 of the sent image) -> inclusive native box.

    Raises
    ------
    InvalidCoordinatesError
        Wrong length, non-numbers, values outside 0–1000, or min > max.
    """
    ymin, xmin, ymax, xmax = _check_numbers(box_2d, 4, "box_2d")
    if ymin > ymax or xmin > xmax:
        raise InvalidCoordinatesError("The box_2d has its minimum after its maximum ([ymin, xmin, ymax, xmax]).")
    # Edges -> the centres of the first and last pixels inside: +0.5 px in, -0.5 px in.
    left = from_sent_edge(xmin, sent.scale, sent.pad_left, sent.sent_width)
    right = from_sent_edge(xmax, sent.scale, sent.pad_left, sent.sent_width)
    top = from_sent_edge(ymin, sent.y_scale, sent.pad_top, sent.sent_height)
    bottom = from_sent_edge(ymax, sent.y_scale, sent.pad_top, sent.sent_height)
    x0, x1 = left + 0.5, max(left + 0.5, right - 0.5)
    y0, y1 = top + 0.5, max(top + 0.5, bottom - 0.5)
    return BoxPx(x0=x0, y0=y0, x1=x1, y1=y1)


def px_to_box_2d(box: BoxPx, sent: SentImage) -> list[float]:
    """Inclusive native box -> Gemini ``[ymin, xmin, ymax, xmax]`` (inverse of box_2d_to_px)."""
    return [
        to_sent_edge(box.y0 - 0.5, sent.y_scale, sent.pad_top, sent.sent_height),
        to_sent_edge(box.x0 - 0.5, sent.scale, sent.pad_left, sent.sent_width),
        to_sent_edge(box.y1 + 0.5, sent.y_scale, sent.pad_top, sent.sent_height),
        to_sent_edge(box.x1 + 0.5, sent.scale, sent.pad_left, sent.sent_width),
    ]


def point_to_px(point: Sequence[float], sent: SentImage) -> tuple[float, float]:
    """Gemini ``[y, x]`` (0–1000) -> native (x, y) pixel-centre coordinates."""
    y, x = _check_numbers(point, 2, "point")
    return (from_sent_edge(x, sent.scale, sent.pad_left, sent.sent_width),
            from_sent_edge(y, sent.y_scale, sent.pad_top, sent.sent_height))


def px_to_point(x: float, y: float, sent: SentImage) -> list[float]:
    """Native (x, y) -> Gemini ``[y, x]`` (inverse of point_to_px)."""
    return [to_sent_edge(y, sent.y_scale, sent.pad_top, sent.sent_height),
            to_sent_edge(x, sent.scale, sent.pad_left, sent.sent_width)]


def box_to_box_2d(box: Sequence[float], box_format: BoxFormat, sent_width: int, sent_height: int) -> list[float]:
    """A model's box written in ``box_format`` -> ``box_2d`` ``[ymin, xmin, ymax, xmax]`` (0–1000
    of the sent image), for the same validation and conversion as every proposal. Only the
    arithmetic: range and order are checked on the result, where the sentences are."""
    a, b, c, d = (float(v) for v in box)
    if box_format == "yxyx-1000":
        return [a, b, c, d]
    if box_format == "xyxy-1":
        return [b * NORMALISED, a * NORMALISED, d * NORMALISED, c * NORMALISED]
    if box_format == "xyxy-px":
        return [b / sent_height * NORMALISED, a / sent_width * NORMALISED,
                d / sent_height * NORMALISED, c / sent_width * NORMALISED]
    raise InvalidCoordinatesError(f"Unknown box format '{box_format}' (expected one of {', '.join(BOX_FORMATS)}).")


def box_2d_to_box(box_2d: Sequence[float], box_format: BoxFormat, sent_width: int, sent_height: int) -> list[float]:
    """``box_2d`` -> the same box written in ``box_format`` (inverse of ``box_to_box_2d``)."""
    ymin, xmin, ymax, xmax = (float(v) for v in box_2d)
    if box_format == "yxyx-1000":
        return [ymin, xmin, ymax, xmax]
    if box_format == "xyxy-1":
        return [xmin / NORMALISED, ymin / NORMALISED, xmax / NORMALISED, ymax / NORMALISED]
    if box_format == "xyxy-px":
        return [xmin / NORMALISED * sent_width, ymin / NORMALISED * sent_height,
                xmax / NORMALISED * sent_width, ymax / NORMALISED * sent_height]
    raise InvalidCoordinatesError(f"Unknown box format '{box_format}' (expected one of {', '.join(BOX_FORMATS)}).")
