"""Where a finding is, in words a report can use: the patient's side first, then where it lies
in the image, and the slice with its table position on a series.

The patient's side comes from the study's geometry (ImageOrientationPatient), else the header's
PatientOrientation; a radiograph without either (a PNG, say) is read in the standard
radiological convention — the patient's right on the viewer's left — and the words say the side
is assumed. Where nothing tells the side (an ultrasound, an MR saved as PNG), the image position
stands with "patient's side unknown": a side is never guessed from the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from tools.detection.working import is_chest
from tools.findings import Finding
from tools.study import Study
from tools.study.geometry import slice_location
from tools.study.orientation import orientation_labels

#: Patient-direction letters (LPS) in words.
_DIRECTION_WORDS = {"R": "right", "L": "left", "A": "anterior", "P": "posterior", "H": "superior", "F": "inferior"}
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "H": "F", "F": "H"}
_RADIOGRAPHS = ("DX", "CR")
#: Within this fraction of the width either side of the image's centre line, a finding is "near
#: the midline" rather than on one side of the patient.
_MIDLINE = 0.05


@dataclass(frozen=True)
class _Sides:
    """Patient-direction letters of the image edges, and how they are known."""

    labels: dict[str, str]
    assumed: bool


def location_in_words(study: Study, finding: Finding) -> str:
    """The finding's place for a report or an answer, always with the patient's side or a plain
    statement that it is unknown (see the module docstring)."""
    x, y = finding.center_px
    width, height = study.safe.columns, study.safe.rows
    region = _image_region(x / width, y / height)
    sides = _sides(study, finding.frame)
    if _is_radiograph(study) and is_chest(study.safe.body_part):
        return _chest_zone(x / width, y / height, region, sides)
    if sides is None:
        return f"{region} (patient's side unknown: the image does not say which way the patient faces)"
    terms = _patient_terms(x / width, y / height, sides)
    assumed = "; side assumed from the usual display of a radiograph" if sides.assumed else ""
    return f"{terms} ({region}{assumed})"


def slice_words(study: Study, frame: int) -> str:
    """'slice 6 of 10, table position -191.5 mm' on a series ('slice 6 of 10' without the header's
    position); '' for a single image."""
    if study.frame_count <= 1:
        return ""
    position = table_position_mm(study, frame)
    where = "" if position is None else f", table position {position:.1f} mm"
    return f"slice {frame + 1} of {study.frame_count}{where}"


def table_position_mm(study: Study, frame: int) -> float | None:
    """Where the slice lies along the series' normal, in mm, as the viewer shows it (None when the
    header does not say)."""
    try:
        return slice_location(study.geometry(frame))
    except (ValueError, TypeError):  # a header with malformed geometry: no position rather than a wrong one
        return None


def _image_region(fx: float, fy: float) -> str:
    vertical = ("upper", "middle", "lower")[min(int(3 * fy), 2)]
    horizontal = ("left", "central", "right")[min(int(3 * fx), 2)]
    if (vertical, horizontal) == ("middle", "central"):
        return "centre of the image"
    return f"{vertical} {'' if horizontal == 'central' else horizontal + ' '}part of the image"


def _sides(study: Study, frame: int) -> _Sides | None:
    labels = orientation_labels(study.geometry(frame).orientation)
    if labels is not None:
        return _Sides(labels, assumed=False)
    header = _header(study, frame)
    letters = _patient_orientation(header)
    if letters is not None:
        row, column = letters
        return _Sides({"left": _OPPOSITE[row], "right": row, "top": _OPPOSITE[column], "bottom": column},
                      assumed=False)
    if _is_radiograph(study):
        # The standard radiological display: the patient's right on the viewer's left, head up.
        return _Sides({"left": "R", "right": "L", "top": "H", "bottom": "F"}, assumed=True)
    return None


def _header(study: Study, frame: int):
    """The DICOM header holding ``frame``; None for a PNG/JPEG."""
    locate = getattr(study, "locate", None)
    return None if locate is None else locate(frame)[0].header


def _patient_orientation(header) -> tuple[str, str] | None:
    """PatientOrientation's dominant letters for the row and column directions, if coded."""
    value = None if header is None else header.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    row, column = (str(part).strip().upper()[:1] for part in value)
    if row not in _OPPOSITE or column not in _OPPOSITE:
        return None
    return row, column


def _is_radiograph(study: Study) -> bool:
    return (study.safe.modality or "").upper() in _RADIOGRAPHS


def _chest_zone(fx: float, fy: float, region: str, sides: _Sides | None) -> str:
    """Upper, middle or lower zone (thirds of the image height) of the right or left lung."""
    zone = ("upper", "middle", "lower")[min(int(3 * fy), 2)]
    if sides is None or abs(fx - 0.5) <= _MIDLINE:
        side_of_image = "" if abs(fx - 0.5) <= _MIDLINE else ("left" if fx < 0.5 else "right")
        if not side_of_image:
            return f"{zone} zone, near the midline ({region})"
        return f"{zone} zone, {side_of_image} half of the image (patient's side unknown)"
    letter = sides.labels["left" if fx < 0.5 else "right"][0]
    lung = _DIRECTION_WORDS.get(letter, "")
    assumed = "; side assumed from the usual display, the patient's right on the viewer's left" if sides.assumed else ""
    if letter not in ("R", "L"):
        return f"{zone} zone ({region}{assumed})"
    return f"{lung} {zone} zone ({region}{assumed})"


def _patient_terms(fx: float, fy: float, sides: _Sides) -> str:
    """The patient's side (the image half, unless near the centre line) and front/back or
    head/feet (the outer image thirds) where the centre lies."""
    horizontal = None if abs(fx - 0.5) <= _MIDLINE else ("left" if fx < 0.5 else "right")
    vertical = ("top", None, "bottom")[min(int(3 * fy), 2)]
    words = [_DIRECTION_WORDS.get(sides.labels[edge][0], "") for edge in (horizontal, vertical) if edge]
    words = [w for w in words if w]
    if not words:
        return "central region, near the patient's midline"
    side = next((w for w in words if w in ("right", "left")), None)
    rest = [w for w in words if w != side]
    if side is None:
        return f"{' '.join(rest)} region, near the patient's midline"
    return f"patient's {side}" + (f" {' '.join(rest)}" if rest else "") + " region"
