"""Which slice of a prior series lies where a slice of the current series lies.

Slices are matched by their table position — the position along the series' normal, from Image
Position and Image Orientation (Patient), as the loader reads them — once the two series are
known to be cut the same way (their normals within ``MAX_TILT_DEG``). The in-plane registration
(``registration``) then aligns the two matched slices.

Two exams place the patient on the table a little differently, so the positions match only to
within that; a prior that does not reach the current slice's position (another body region) or is
cut another way (coronal against axial) is refused in one sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tools.errors import RegistrationError
from tools.study import Study
from tools.study.geometry import slice_location

#: Series whose slice normals differ by more than this are cut another way.
MAX_TILT_DEG = 10.0
#: A prior slice further than this from the current slice's position (beyond the prior's own
#: slice spacing) does not show it.
MAX_GAP_MM = 5.0


@dataclass(frozen=True)
class SliceMatch:
    prior_frame: int
    #: The current slice's table position, and how far the prior slice lies from it (mm).
    position_mm: float
    distance_mm: float


def _normal(study: Study, frame: int) -> np.ndarray | None:
    orientation = study.geometry(frame).orientation
    if orientation is None:
        return None
    return np.cross(np.array(orientation[:3]), np.array(orientation[3:]))


def _positions(study: Study) -> list[float]:
    positions = [slice_location(study.geometry(frame)) for frame in range(study.frame_count)]
    if any(p is None for p in positions):
        raise RegistrationError("The prior series does not say where its slices lie (no Image Position or "
                                "Orientation), so its slices cannot be matched to the current ones.")
    return [float(p) for p in positions]  # type: ignore[arg-type]


def matching_slice(current: Study, frame: int, prior: Study) -> SliceMatch:
    """The prior's slice at the table position of the current series' slice ``frame``."""
    position = slice_location(current.geometry(frame))
    normal, prior_normal = _normal(current, frame), _normal(prior, 0)
    if position is None or normal is None or prior_normal is None:
        raise RegistrationError("The series do not say where their slices lie (no Image Position or Orientation), "
                                "so their slices cannot be matched.")
    cosine = float(np.dot(normal, prior_normal) / (np.linalg.norm(normal) * np.linalg.norm(prior_normal)))
    tilt = math.degrees(math.acos(min(1.0, abs(cosine))))
    if tilt > MAX_TILT_DEG:
        raise RegistrationError(f"The prior series is cut another way ({tilt:.0f}° from the current one: coronal "
                                "against axial, say); open a prior series cut the same way.")
    positions = _positions(prior)
    if cosine < 0:  # the same planes, the normal pointing the other way
        positions = [-p for p in positions]
    nearest = int(np.argmin([abs(p - position) for p in positions]))
    distance = abs(positions[nearest] - position)
    spacing = float(np.median(np.abs(np.diff(sorted(positions))))) if len(positions) > 1 else 0.0
    if distance > max(spacing, 0.0) / 2 + MAX_GAP_MM:
        low, high = min(positions), max(positions)
        raise RegistrationError(f"The prior series covers table positions {low:.0f} to {high:.0f} mm and does not "
                                f"reach the current slice at {position:.0f} mm; it shows another region.")
    return SliceMatch(nearest, position, distance)
