"""The data a loaded study exposes, split by what may leave the machine.

``SafeMetadata`` is the technical allow-list (modality, geometry, spacing, window): it may be
shown anywhere and, later, sent to a model. ``IdentifyingMetadata`` holds what identifies a
patient or an institution; it is kept apart so that nothing serialises it by accident.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tools.study.windowing import Window

SpacingSource = Literal[
    "PixelSpacing",
    "ImagerPixelSpacing",
    "ImagerPixelSpacing/magnification",
    "PixelMeasuresSequence",
    "UltrasoundRegion",
]


class StudyLimits(BaseModel):
    """Guards against decompression bombs and absurd inputs; all configurable."""

    model_config = ConfigDict(frozen=True)

    max_frame_pixels: int = Field(
        default=100_000_000, gt=0, description="Largest rows x columns accepted for one frame."
    )
    max_total_pixels: int = Field(
        default=2_000_000_000, gt=0, description="Largest rows x columns x frames for a study."
    )
    max_files: int = Field(default=5000, gt=0, description="Most files in one series/folder/zip.")
    max_archive_bytes: int = Field(
        default=4 * 1024**3, gt=0, description="Largest total uncompressed size of a .zip."
    )
    max_compression_ratio: float = Field(
        default=200.0, gt=1, description="A zip entry compressed more than this is bomb-like."
    )


class UltrasoundRegion(BaseModel):
    """One calibrated region of SequenceOfUltrasoundRegions, in pixel bounds (inclusive)."""

    model_config = ConfigDict(frozen=True)

    x0: int
    y0: int
    x1: int
    y1: int
    pixel_spacing_mm: tuple[float, float] | None = Field(
        description="[row, column] spacing in mm inside this region; None if not spatial in cm."
    )

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1


class FrameGeometry(BaseModel):
    """Where one frame sits and how big its pixels are."""

    model_config = ConfigDict(frozen=True)

    pixel_spacing_mm: tuple[float, float] | None = Field(
        default=None, description="[row spacing, column spacing] in mm, or None when unknown."
    )
    spacing_source: SpacingSource | None = None
    position_mm: tuple[float, float, float] | None = Field(
        default=None, description="ImagePositionPatient (LPS, mm) of the top-left pixel centre."
    )
    orientation: tuple[float, float, float, float, float, float] | None = Field(
        default=None, description="ImageOrientationPatient: row then column direction cosines."
    )
    slice_thickness_mm: float | None = None


class SafeMetadata(BaseModel):
    """Technical metadata on the allow-list: no names, ids, dates or free text."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["dicom", "raster"]
    modality: str | None = Field(description="DICOM modality code (CT, MR, CR, DX, US, ...).")
    modality_source: Literal["header", "user", "guess"] = Field(
        default="header", description="Where the modality came from: the DICOM header, the clinician, or "
                                      "Loupe's guess from the pixels of a PNG/JPEG.")
    modality_reason: str | None = Field(default=None, description="Why Loupe guessed that modality, in words.")
    body_part: str | None = Field(default=None, description="BodyPartExamined, if coded.")
    rows: int
    columns: int
    frames: int
    photometric: str = Field(description="Photometric interpretation of the stored pixels.")
    samples_per_pixel: int = 1
    bits_stored: int | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    spacing_source: SpacingSource | None = None
    slice_thickness_mm: float | None = None
    spacing_between_slices_mm: float | None = None
    window: Window | None = Field(default=None, description="Window the header recommends.")
    physical_unit: str | None = Field(default=None, description="'HU' for CT, else as coded.")
    transfer_syntax: str | None = None
    sop_class: str | None = None
    burned_in_annotation: str | None = Field(
        default=None, description="BurnedInAnnotation as coded (YES/NO) or None if absent."
    )
    ultrasound_regions: tuple[UltrasoundRegion, ...] = ()
    image_format: str | None = Field(default=None, description="PNG or JPEG for raster images.")

    def modality_assumed(self) -> dict[str, str | None]:
        """The modality the tools work with and where it came from: ``header`` (DICOM), ``user``
        (the clinician named it) or ``guess`` (from a PNG/JPEG's pixels, with the reason)."""
        return {"modality": self.modality, "source": self.modality_source, "reason": self.modality_reason}


class IdentifyingMetadata(BaseModel):
    """Header fields that identify a patient, a visit or an institution. Never sent anywhere."""

    model_config = ConfigDict(frozen=True)

    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    patient_age: str | None = None
    study_date: str | None = None
    accession_number: str | None = None
    institution_name: str | None = None
    referring_physician: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    source_names: tuple[str, ...] = Field(
        default=(), description="File names as opened; they may carry patient names."
    )


def dicom_date(value: str | None) -> date | None:
    """A DICOM date (DA, YYYYMMDD) as a date; None when absent or not a date."""
    text = (value or "").strip()
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])) if len(text) == 8 and text.isdigit() else None
    except ValueError:
        return None


def iso_date(value: str | None) -> str | None:
    """A DICOM date as a report or a screen writes it (YYYY-MM-DD); None when absent or not a date."""
    day = dicom_date(value)
    return None if day is None else day.isoformat()
