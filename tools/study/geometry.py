"""Pixel geometry from DICOM headers: spacing in mm, slice position, orientation.

Conventions (design.md): pixel (column c, row r) with the top-left pixel's centre at (0, 0).
``PixelSpacing`` is [row spacing Δy, column spacing Δx] in mm and a pixel maps to patient LPS
mm as ``IPP + c·Δx·IOP[0:3] + r·Δy·IOP[3:6]``. Spacing is never invented: a zero, missing or
malformed value means "no mm", and the caller says "px".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from tools.study.model import FrameGeometry, SpacingSource, UltrasoundRegion

_CM_UNITS = 3  # PhysicalUnitsX/YDirection code for centimetres (PS3.3 C.8.5.5.1.15)
_SPATIAL_DATA = (1, 2)  # RegionDataType: tissue (1) and colour flow (2) are spatial images


def _pair(value: object) -> tuple[float, float] | None:
    """Two positive finite floats, else None."""
    try:
        row, col = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(row) and np.isfinite(col)) or row <= 0 or col <= 0:
        return None
    return row, col


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        return None
    return numbers


def positive_float(value: object) -> float | None:
    """A positive finite float, else None (zero spacing means "unknown" in DICOM)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def projection_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, SpacingSource | None]:
    """Pixel spacing of a classic (non-enhanced) image header.

    Order: PixelSpacing (patient plane); ImagerPixelSpacing divided by
    EstimatedRadiographicMagnificationFactor when given, else at the detector plane.
    """
    spacing = _pair(ds.get("PixelSpacing"))
    if spacing:
        return spacing, "PixelSpacing"
    imager = _pair(ds.get("ImagerPixelSpacing"))
    if imager:
        magnification = positive_float(ds.get("EstimatedRadiographicMagnificationFactor"))
        if magnification:
            return (imager[0] / magnification, imager[1] / magnification), "ImagerPixelSpacing/magnification"
        return imager, "ImagerPixelSpacing"
    return None, None


def ultrasound_regions(ds: Dataset) -> tuple[UltrasoundRegion, ...]:
    """Calibrated regions of SequenceOfUltrasoundRegions, with mm spacing where in cm."""
    regions = []
    for item in ds.get("SequenceOfUltrasoundRegions", []):
        try:
            bounds = [int(item[k].value) for k in (
                "RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")]
        except (KeyError, TypeError, ValueError):
            continue
        spacing = None
        spatial = item.get("RegionDataType") in _SPATIAL_DATA
        if spatial and item.get("PhysicalUnitsXDirection") == _CM_UNITS == item.get("PhysicalUnitsYDirection"):
            dx, dy = positive_float(item.get("PhysicalDeltaX")), positive_float(item.get("PhysicalDeltaY"))
            if dx and dy:
                spacing = (abs(dy) * 10.0, abs(dx) * 10.0)
        regions.append(UltrasoundRegion(x0=bounds[0], y0=bounds[1], x1=bounds[2], y1=bounds[3],
                                        pixel_spacing_mm=spacing))
    return tuple(regions)


def region_spacing(regions: Sequence[UltrasoundRegion]) -> tuple[float, float] | None:
    """One study-level spacing when every calibrated region agrees; None otherwise."""
    spacings = {r.pixel_spacing_mm for r in regions if r.pixel_spacing_mm}
    if len(spacings) != 1:
        return None
    return spacings.pop()


def classic_geometry(ds: Dataset) -> FrameGeometry:
    """Geometry of a classic single-frame (or non-enhanced multi-frame) image."""
    spacing, source = projection_spacing(ds)
    if spacing is None:
        spacing = region_spacing(ultrasound_regions(ds))
        source = "UltrasoundRegion" if spacing else None
    return FrameGeometry(
        pixel_spacing_mm=spacing,
        spacing_source=source,
        position_mm=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        slice_thickness_mm=positive_float(ds.get("SliceThickness")),
    )


def functional_group(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The first item of a functional-group macro for ``frame``: per-frame, else shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and index < len(items):
            macro = items[index].get(sequence)
            if macro:
                return macro[0]
    return None


def enhanced_geometry(ds: Dataset, frame: int) -> FrameGeometry:
    """Geometry of one frame of an enhanced multi-frame image (functional groups)."""
    measures = functional_group(ds, frame, "PixelMeasuresSequence")
    position = functional_group(ds, frame, "PlanePositionSequence")
    orientation = functional_group(ds, frame, "PlaneOrientationSequence")
    spacing = _pair(measures.get("PixelSpacing")) if measures else None
    return FrameGeometry(
        pixel_spacing_mm=spacing,
        spacing_source="PixelMeasuresSequence" if spacing else None,
        position_mm=_floats(position.get("ImagePositionPatient"), 3) if position else None,
        orientation=_floats(orientation.get("ImageOrientationPatient"), 6) if orientation else None,
        slice_thickness_mm=positive_float(measures.get("SliceThickness")) if measures else None,
    )


def slice_location(geometry: FrameGeometry) -> float | None:
    """Position along the slice normal, ``dot(cross(row, col), IPP)``: the sort key of a series."""
    if geometry.position_mm is None or geometry.orientation is None:
        return None
    row, col = np.array(geometry.orientation[:3]), np.array(geometry.orientation[3:])
    return float(np.dot(np.cross(row, col), np.array(geometry.position_mm)))


def pixel_to_patient(geometry: FrameGeometry, column: float, row: float) -> tuple[float, float, float] | None:
    """Patient LPS coordinates (mm) of pixel (column, row); None without full geometry."""
    if geometry.position_mm is None or geometry.orientation is None or geometry.pixel_spacing_mm is None:
        return None
    dy, dx = geometry.pixel_spacing_mm
    ipp = np.array(geometry.position_mm)
    iop = np.array(geometry.orientation)
    point = ipp + column * dx * iop[:3] + row * dy * iop[3:]
    return float(point[0]), float(point[1]), float(point[2])
