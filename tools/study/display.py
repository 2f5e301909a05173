"""The DICOM display pipeline: what a radiologist expects to see for a frame.

1. Modality LUT (rescale or LUT sequence; functional groups for enhanced images) -> physical.
2. VOI: an explicit window if the clinician chose one; else the header's VOI LUT sequence;
   else the header window; else the modality preset; else robust 0.5–99.5 percentiles.
3. MONOCHROME1 is inverted after VOI (pydicom never inverts).
4. PALETTE COLOR goes through its colour LUT; YBR arrives as RGB from the decoders; colour
   images are scaled to 8 bits and not windowed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_voi_lut

from tools.study.windowing import (
    DEFAULT_PRESET,
    Window,
    apply_window,
    percentile_window,
    presets_for,
    to_uint8,
)


@dataclass(frozen=True)
class RenderedFrame:
    """A display image and the window that produced it.

    ``window`` is None for colour images and when a VOI LUT sequence (not a centre/width)
    was applied.
    """

    pixels: np.ndarray  # uint8, (rows, columns) or (rows, columns, 3)
    window: Window | None


def scale_colour(rgb: np.ndarray, bits: int) -> np.ndarray:
    """Scale an RGB array with ``bits`` significant bits to uint8."""
    if rgb.dtype == np.uint8 and bits <= 8:
        return rgb
    peak = float(2**bits - 1)
    return to_uint8(rgb.astype(np.float32) / peak)


def render_colour(stored: np.ndarray, header: Dataset) -> RenderedFrame:
    """RGB (or decoded YBR) and PALETTE COLOR frames to uint8 RGB."""
    if str(header.get("PhotometricInterpretation", "")).strip().upper() == "PALETTE COLOR":
        rgb = apply_color_lut(stored, header)
        descriptor = header.get("RedPaletteColorLookupTableDescriptor", [0, 0, 8])
        lut_bits = int(descriptor[2]) if int(descriptor[2]) in (8, 16) else 8
        # Some 16-bit LUTs hold 8-bit values; scale by what the LUT actually uses.
        if lut_bits == 16 and int(rgb.max(initial=0)) <= 255:
            lut_bits = 8
        return RenderedFrame(scale_colour(rgb, lut_bits), None)
    bits = int(header.get("BitsStored", 8) or 8)
    if stored.dtype == np.uint8:
        bits = 8  # decoders return 8-bit RGB even when the header claims otherwise
    return RenderedFrame(scale_colour(stored, bits), None)


def choose_window(physical: np.ndarray, modality: str | None, header_window: Window | None,
                  override: Window | None) -> Window:
    """The window to use: the clinician's, the header's, the modality preset, or percentiles."""
    if override is not None:
        return override
    if header_window is not None:
        return header_window
    preset = DEFAULT_PRESET.get((modality or "").upper())
    if preset:
        return presets_for(modality)[preset]
    return percentile_window(physical)


def render_grey(physical: np.ndarray, *, header: Dataset | None, modality: str | None,
                header_window: Window | None, override: Window | None,
                monochrome1: bool) -> RenderedFrame:
    """Physical values of a greyscale frame to uint8 via VOI (and MONOCHROME1 inversion)."""
    unit, window = None, None
    if header is not None and override is None and "VOILUTSequence" in header:
        unit = _apply_voi_lut_sequence(physical, header)  # window stays None: a LUT, not C/W
    if unit is None:
        window = choose_window(physical, modality, header_window, override)
        unit = apply_window(physical, window)
    if monochrome1:
        unit = 1.0 - unit
    return RenderedFrame(to_uint8(unit), window)


def _apply_voi_lut_sequence(physical: np.ndarray, header: Dataset) -> np.ndarray | None:
    """The header's first VOI LUT, normalised to [0, 1] by the LUT's own output range."""
    item = header.VOILUTSequence[0]
    lut_data = np.asarray(item.get("LUTData", []), dtype=np.float64)
    if lut_data.size == 0:
        return None
    # A LUT is indexed by integers: round the modality output instead of letting pydicom
    # guess with floats.
    indices = np.rint(physical).astype(np.int64)
    out = apply_voi_lut(indices, header, index=0, prefer_lut=True).astype(np.float32)
    low, high = float(lut_data.min()), float(lut_data.max())
    if high <= low:
        return None
    return np.clip((out - low) / (high - low), 0.0, 1.0)
