"""Value-of-interest (VOI) windowing: from physical values to a displayable 0–1 range.

The functions here implement the DICOM VOI LUT functions of PS3.3 C.11.2.1.2 (LINEAR,
LINEAR_EXACT, SIGMOID) on *modality-LUT output* (HU for CT) and return floats in [0, 1], so
that every display path ends in the same ``to_uint8`` step. Presets are per modality; a study
without a header window and without a preset falls back to robust percentiles.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tools.errors import InvalidWindowError

VoiFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]


class Window(BaseModel):
    """A VOI window in physical units (HU for CT), as DICOM defines it."""

    model_config = ConfigDict(frozen=True)

    center: float = Field(description="Window centre (level) in the study's physical units.")
    width: float = Field(description="Window width in the study's physical units; > 0.")
    name: str | None = Field(default=None, description="Preset or source name, e.g. 'lung'.")
    function: VoiFunction = "LINEAR"

    @field_validator("width")
    @classmethod
    def _positive_width(cls, width: float) -> float:
        if not np.isfinite(width) or width <= 0:
            raise ValueError(f"window width must be a positive number, got {width}")
        return width


#: Presets by modality. CT values are in HU (dicom.md, standard radiology practice).
WINDOW_PRESETS: dict[str, dict[str, Window]] = {
    "CT": {
        "lung": Window(center=-600, width=1500, name="lung"),
        "soft_tissue": Window(center=40, width=400, name="soft_tissue"),
        "brain": Window(center=40, width=80, name="brain"),
        "bone": Window(center=400, width=1800, name="bone"),
    },
}

#: The preset used for a CT with no window in its header.
DEFAULT_PRESET = {"CT": "soft_tissue"}

_PRESET_ALIASES = {"soft": "soft_tissue", "soft-tissue": "soft_tissue", "softtissue": "soft_tissue",
                   "mediastinum": "soft_tissue"}


def presets_for(modality: str | None) -> dict[str, Window]:
    """Window presets that make sense for ``modality`` (empty when none do)."""
    return WINDOW_PRESETS.get((modality or "").upper(), {})


def parse_window(text: str, modality: str | None) -> Window:
    """Parse a preset name (``lung``) or a ``C,W`` pair (``-600,1500``) into a Window.

    Raises
    ------
    InvalidWindowError
        Unknown preset for this modality, or a malformed / non-positive width.
    """
    cleaned = text.strip()
    if "," in cleaned:
        parts = cleaned.split(",")
        try:
            center, width = (float(p) for p in parts)
        except ValueError as error:
            raise InvalidWindowError(
                f"The window '{text}' is not understood; give a preset name or centre,width "
                "such as -600,1500."
            ) from error
        if not (np.isfinite(center) and np.isfinite(width)) or width <= 0:
            raise InvalidWindowError(f"The window width must be a positive number (got '{text}').")
        return Window(center=center, width=width, name="custom")
    key = _PRESET_ALIASES.get(cleaned.lower(), cleaned.lower())
    available = presets_for(modality)
    if key not in available:
        names = ", ".join(available) or "none (only centre,width)"
        subject = f"{modality} images" if modality else "this image"
        raise InvalidWindowError(f"There is no '{text}' window for {subject}; available presets: {names}.")
    return available[key]


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Map physical values through a DICOM VOI window to floats in [0, 1].

    LINEAR follows PS3.3 C.11.2.1.2.1 (the ``c - 0.5`` / ``w - 1`` form), LINEAR_EXACT
    C.11.2.1.3.2, SIGMOID C.11.2.1.3.1.
    """
    v = values.astype(np.float32, copy=False)
    c, w = float(window.center), float(window.width)
    if window.function == "SIGMOID":
        exponent = np.clip(-4.0 * (v - c) / w, -80.0, 80.0)  # exp(80) fits a float32
        return (1.0 / (1.0 + np.exp(exponent))).astype(np.float32)
    if window.function == "LINEAR_EXACT":
        low, span = c - w / 2.0, w
    else:
        if w <= 1:
            # PS3.3 requires width >= 1 for LINEAR, and width 1 is a hard threshold.
            return (v > c - 0.5).astype(np.float32)
        low, span = (c - 0.5) - (w - 1) / 2.0, w - 1
    return np.clip((v - low) / span, 0.0, 1.0).astype(np.float32)


def percentile_window(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> Window:
    """A window spanning the robust [low, high] percentile range of ``values``."""
    finite = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    if finite.size == 0:
        return Window(center=0.0, width=1.0, name="auto")
    # Subsample large frames: percentiles of 1 M points are stable and 10x cheaper.
    flat = finite.ravel()
    if flat.size > 1_000_000:
        flat = flat[:: flat.size // 1_000_000]
    lo, hi = np.percentile(flat, [low, high])
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    width = float(hi - lo) if hi > lo else 1.0  # a constant image: any width shows it flat
    return Window(center=float(lo + hi) / 2.0, width=width, name="auto", function="LINEAR_EXACT")


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """Round floats in [0, 1] to 0–255 display values."""
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
