"""Assembling several DICOM files into one series, ordered by geometry.

Slices are sorted by their position along the slice normal, ``dot(cross(row, col), IPP)``,
because InstanceNumber is often wrong or reset after editing. Without full geometry the
order falls back to InstanceNumber, then to the order the files were given.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from tools.errors import UnsupportedStudyError
from tools.study.dicom import DicomFile
from tools.study.geometry import slice_location


def order_series(files: list[DicomFile]) -> tuple[list[DicomFile], float | None]:
    """Check the files form one series of single-frame images and sort them.

    Returns the sorted files and the median spacing between slice centres (mm), or None.

    Raises
    ------
    UnsupportedStudyError
        Several series, multi-frame files mixed into a series, or differing image sizes.
    """
    if len(files) == 1:
        return files, None
    _require_one_series(files)
    if any(f.frame_count > 1 for f in files):
        raise UnsupportedStudyError(
            "These files include multi-frame images; open each multi-frame file on its own."
        )
    shapes = {(int(f.header.Rows), int(f.header.Columns), f.samples_per_pixel) for f in files}
    if len(shapes) > 1:
        raise UnsupportedStudyError(
            "The images in this series have different sizes and cannot be shown as one stack."
        )
    locations = [slice_location(f.geometry(0)) for f in files]
    if all(loc is not None for loc in locations):
        order = np.argsort(np.array(locations, dtype=np.float64), kind="stable")
        ordered = [files[i] for i in order]
        steps = np.diff(np.sort(np.array(locations, dtype=np.float64)))
        spacing = float(np.median(np.abs(steps))) if steps.size else None
        return ordered, (spacing if spacing else None)
    numbers = [_instance_number(f) for f in files]
    if all(n is not None for n in numbers):
        return [f for _, f in sorted(zip(numbers, files), key=lambda pair: pair[0])], None
    return files, None


def _instance_number(file: DicomFile) -> int | None:
    try:
        return int(file.header.get("InstanceNumber"))
    except (TypeError, ValueError):
        return None


def _require_one_series(files: list[DicomFile]) -> None:
    series = Counter(str(f.header.get("SeriesInstanceUID", "")) for f in files)
    if len(series) <= 1:
        return
    by_modality = Counter(
        (str(f.header.get("SeriesInstanceUID", "")), str(f.header.get("Modality", "?"))) for f in files
    )
    parts = ", ".join(f"{modality} ({count} images)" for (_, modality), count in by_modality.most_common())
    raise UnsupportedStudyError(
        f"What was opened holds {len(series)} different series ({parts}); open one series at a time."
    )
