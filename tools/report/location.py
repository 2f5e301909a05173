"""Where a finding is, in words a report can use: the image region, and the patient's side
when the study's geometry says which side is which (never guessed from the image alone)."""

from __future__ import annotations

from tools.findings import Finding
from tools.study import Study
from tools.study.orientation import orientation_labels

_SIDE_WORDS = {"R": "patient's right", "L": "patient's left"}


def location_in_words(study: Study, finding: Finding) -> str:
    width, height = study.safe.columns, study.safe.rows
    x, y = finding.center_px
    vertical = ("upper", "middle", "lower")[min(int(3 * y / height), 2)]
    horizontal = ("left", "central", "right")[min(int(3 * x / width), 2)]
    if (vertical, horizontal) == ("middle", "central"):
        region = "centre of the image"
    else:
        region = f"{vertical} {'' if horizontal == 'central' else horizontal + ' '}part of the image"
    labels = orientation_labels(study.geometry(finding.frame).orientation)
    if labels is None or horizontal == "central":
        return region
    side = _SIDE_WORDS.get(labels["left" if horizontal == "left" else "right"][0])
    return f"{region} ({side})" if side else region
