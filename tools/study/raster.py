"""PNG and JPEG images: 8/16-bit greyscale, RGB, RGBA and palette.

A raster image has no header physics: its values are what was saved. Greyscale stays one
channel (an RGB file whose channels are all equal is greyscale saved as colour); alpha is
dropped after compositing on black, which is how a viewer shows it; pixels are kept as stored
(no EXIF rotation), so coordinates match the file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tools.errors import StudyTooLargeError, UnreadableStudyError, UnsupportedStudyError
from tools.study.model import StudyLimits

_FORMATS = {"PNG", "JPEG"}


@dataclass(frozen=True)
class RasterImage:
    """Decoded pixels: (rows, columns) greyscale or (rows, columns, 3) RGB."""

    pixels: np.ndarray
    image_format: str
    bits: int

    @property
    def is_colour(self) -> bool:
        return self.pixels.ndim == 3


def read_raster(path: Path, limits: StudyLimits) -> RasterImage:
    """Decode a PNG or JPEG file, enforcing the pixel limit before decoding.

    Raises
    ------
    UnreadableStudyError
        Not an image, or a truncated / damaged stream.
    UnsupportedStudyError
        An image format other than PNG or JPEG, or an exotic mode.
    StudyTooLargeError
        More pixels than ``limits.max_frame_pixels`` (decompression-bomb guard).
    """
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's warning-level bomb check.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check(image, limits)
                image.load()
                return _to_array(image)
    except Image.DecompressionBombError as error:
        raise StudyTooLargeError(
            f"The image '{path.name}' declares absurd dimensions and was not opened."
        ) from error
    except UnidentifiedImageError as error:
        raise UnreadableStudyError(f"The file '{path.name}' is not a readable image.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableStudyError(
            f"The image '{path.name}' is truncated or damaged and cannot be displayed."
        ) from error


def _check(image: Image.Image, limits: StudyLimits) -> None:
    if image.format not in _FORMATS:
        raise UnsupportedStudyError(
            f"This is a {image.format} image; Loupe opens DICOM, PNG and JPEG."
        )
    width, height = image.size
    if width <= 0 or height <= 0:
        raise UnreadableStudyError("The image has no pixels.")
    if width * height > limits.max_frame_pixels:
        raise StudyTooLargeError(
            f"The image is {width} x {height} pixels, larger than the limit of "
            f"{limits.max_frame_pixels:,} pixels."
        )


def _to_array(image: Image.Image) -> RasterImage:
    fmt = image.format or "PNG"
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return RasterImage(np.asarray(image).astype(np.uint16), fmt, 16)
    if mode == "I":
        array = np.asarray(image)
        bits = 16 if array.min(initial=0) >= 0 and array.max(initial=0) <= 65535 else 32
        return RasterImage(array.astype(np.uint16 if bits == 16 else np.int32), fmt, bits)
    if mode == "F":
        return RasterImage(np.asarray(image, dtype=np.float32), fmt, 32)
    if mode in ("1", "L"):
        return RasterImage(np.asarray(image.convert("L")), fmt, 8)
    if mode in ("LA", "La", "PA", "P", "RGBA", "RGBa", "RGB", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = _flatten_alpha(image)
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            return RasterImage(np.ascontiguousarray(rgb[..., 0]), fmt, 8)
        return RasterImage(rgb, fmt, 8)
    raise UnsupportedStudyError(f"Images in Pillow mode '{mode}' are not supported.")


def _flatten_alpha(image: Image.Image) -> np.ndarray:
    """RGB uint8, compositing any transparency over black."""
    if image.mode == "P" and "transparency" not in image.info:
        return np.asarray(image.convert("RGB"))
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA", "P"):
        rgba = np.asarray(image.convert("RGBA")).astype(np.float32)
        alpha = rgba[..., 3:4] / 255.0
        return np.clip(np.rint(rgba[..., :3] * alpha), 0, 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"))
