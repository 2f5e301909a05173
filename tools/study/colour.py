"""Colour images as the imaging tools see them: the luma of what the clinician sees, and the
pixels that are strongly coloured (colour-Doppler flow, coloured calipers, annotations), which
are not tissue.

A greyscale image saved as colour (JPEG or YBR noise included) stays within a few levels of the
grey axis; Doppler flow and annotation colours are far from it.
"""

from __future__ import annotations

import numpy as np

#: ITU-R BT.601 luma weights: what a greyscale rendering of the display image shows.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: Chroma (largest minus smallest of R, G, B, 0-255) from which a pixel counts as strongly
#: coloured. JPEG and YBR round-trips leave grey pixels within about 10 levels of the grey axis;
#: Doppler red/blue and annotation yellow/green are 100 or more away.
STRONG_CHROMA = 40


def luma(rgb: np.ndarray) -> np.ndarray:
    """The luma (float32) of an RGB image of shape (rows, columns, 3)."""
    return rgb[..., :3].astype(np.float32) @ LUMA_WEIGHTS


def strongly_coloured(rgb: np.ndarray) -> np.ndarray | None:
    """Where an 8-bit RGB image is far from the grey axis (bool mask), or None when nowhere."""
    channels = rgb[..., :3]
    chroma = channels.max(axis=-1).astype(np.int16) - channels.min(axis=-1)
    mask = chroma >= STRONG_CHROMA
    return mask if mask.any() else None
