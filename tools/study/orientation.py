"""Which way the patient lies in an image: patient-direction letters (LPS) of the image
axes, from ImageOrientationPatient; never guessed from the pixels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Orientation = Sequence[float] | None  # ImageOrientationPatient, 6 direction cosines
_PATIENT_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # LPS: (+, -) per patient axis


def direction_letters(vector: Sequence[float]) -> str:
    """Patient-direction letters (LPS: L/R, P/A, H/F) of a direction, dominant first.

    A second letter is added when the next component is at least 0.3 (an oblique direction),
    e.g. ``(0.87, 0.5, 0)`` gives ``"LP"``. A zero vector gives ``""``.
    """
    v = np.asarray(vector, dtype=float)[:3]
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0:
        return ""
    v = v / norm
    order = np.argsort(-np.abs(v), kind="stable")[:2]
    return "".join(_PATIENT_LETTERS[i][0 if v[i] > 0 else 1] for i in order
                   if i == order[0] or abs(v[i]) >= 0.3)


def orientation_labels(orientation: Orientation) -> dict[str, str] | None:
    """Letters for the left, right, top and bottom image edges, or None when unknown.

    ``orientation`` is ImageOrientationPatient: the row direction (+x, towards the right edge)
    then the column direction (+y, towards the bottom edge). A standard axial CT gives
    ``{"left": "R", "right": "L", "top": "A", "bottom": "P"}``.
    """
    if orientation is None or len(orientation) != 6:
        return None
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    labels = {"left": direction_letters(-row), "right": direction_letters(row),
              "top": direction_letters(-col), "bottom": direction_letters(col)}
    return labels if all(labels.values()) else None
