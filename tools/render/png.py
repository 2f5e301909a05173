"""PNG encoding of display images (the one image format tools hand to the UI and the model).

The encoder is written here rather than left to Pillow: every PNG row gets the 'Up' filter
(the difference from the row above, one numpy subtraction) and the result is deflated once at
zlib level 1. On Loupe's figures and on medical images that gives files about the size of
Pillow's level-1 output in roughly half the time. The bytes depend only on the pixels (and
zlib), and no text or time chunk is written, so equal input gives identical output.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UP_FILTER = 2
_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _up_filtered(pixels: np.ndarray) -> np.ndarray:
    """Rows as PNG scanlines: a filter byte, then each byte minus the one above (mod 256)."""
    # One contiguous copy first: numpy subtracts strided channels (RGB of RGBA) ~2x slower.
    rows = np.ascontiguousarray(pixels).reshape(pixels.shape[0], -1)
    lines = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    lines[:, 0] = _UP_FILTER
    lines[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=lines[1:, 1:])  # uint8 arithmetic wraps, as PNG wants
    return lines


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode a uint8 greyscale (H, W) or (H, W, C) array (C = 1 to 4) losslessly as PNG.

    ``pixels`` may be a strided view, e.g. the RGB channels of an RGBA canvas.
    """
    channels = 1 if pixels.ndim == 2 else (pixels.shape[2] if pixels.ndim == 3 else 0)
    if pixels.dtype != np.uint8 or channels not in _COLOUR_TYPE or 0 in pixels.shape:
        raise ValueError(f"expected a uint8 (H, W) or (H, W, 1-4) array, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPE[channels], 0, 0, 0)
    # Level 1: several times faster than the default for ~10% larger files, still lossless.
    data = zlib.compress(_up_filtered(pixels).data, 1)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
