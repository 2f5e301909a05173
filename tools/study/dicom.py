"""Reading DICOM files: the header once, pixel data one frame at a time.

A ``DicomFile`` parses the header without pixel data (about a millisecond) and decodes a single
frame on request through ``pydicom.pixels.pixel_array(path, index=k)``, so one frame of a
120-frame ultrasound costs one frame's decode, not 120. Every pydicom / codec failure is
translated here, once, into a clinician-facing error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from tools.errors import NotAnImageError, StudyTooLargeError, UnreadableStudyError
from tools.study.codecs import ensure_decodable, preferred_plugin
from tools.study.geometry import classic_geometry, enhanced_geometry, functional_group
from tools.study.model import FrameGeometry, StudyLimits
from tools.study.windowing import Window

log = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: an index, not an image

# Exceptions pydicom and its codec plugins raise for damaged data. Caught only around header
# parsing and frame decoding, and always re-raised as a typed error chained to the original.
_DECODE_FAILURES = (ValueError, RuntimeError, OSError, EOFError, TypeError, KeyError, IndexError,
                    AttributeError, NotImplementedError, InvalidDicomError, OverflowError)


@dataclass(frozen=True)
class Rescale:
    """A linear modality LUT (stored value -> physical value)."""

    slope: float
    intercept: float

    def apply(self, stored: np.ndarray) -> np.ndarray:
        return stored.astype(np.float32) * np.float32(self.slope) + np.float32(self.intercept)


def _first_number(value: object) -> float | None:
    """First of a possibly multi-valued DS, as float; None when absent or malformed."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def header_window(ds: Dataset) -> Window | None:
    """WindowCenter/WindowWidth (first value when multi-valued) with its VOI LUT function."""
    center, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    return Window(center=center, width=width, name="header", function=function)  # type: ignore[arg-type]


class DicomFile:
    """One DICOM file: its header (without pixels) and lazy per-frame decoding."""

    def __init__(self, path: Path, limits: StudyLimits) -> None:
        self.path = path
        try:
            self.header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            self._validate(limits)
        except _DECODE_FAILURES as error:
            raise UnreadableStudyError(
                "The DICOM header of this file is damaged and cannot be read."
            ) from error

    # -- header facts -------------------------------------------------------------------------
    def _validate(self, limits: StudyLimits) -> None:
        ds = self.header
        meta = getattr(ds, "file_meta", None)
        sop_class = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
        if not sop_class and "Rows" not in ds:
            # What pydicom parses out of random bytes after a 'DICM' marker: no object at all.
            raise UnreadableStudyError("This file is not a readable DICOM file.")
        if str(ds.get("SOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
            raise NotAnImageError(
                "This is a DICOMDIR index, not an image; open the folder that contains it instead."
            )
        if "Rows" not in ds or "Columns" not in ds:
            raise NotAnImageError(f"{self.describe_object()} holds no image to display.")
        rows, columns = int(ds.Rows), int(ds.Columns)
        if rows <= 0 or columns <= 0:
            raise UnreadableStudyError(f"The DICOM header gives an impossible image size ({rows} x {columns}).")
        if rows * columns > limits.max_frame_pixels:
            raise StudyTooLargeError(
                f"The image is {columns} x {rows} pixels, larger than the limit of "
                f"{limits.max_frame_pixels:,} pixels per frame."
            )
        frames = self.frame_count
        if frames < 1:
            raise UnreadableStudyError(f"The DICOM header gives an impossible frame count ({frames}).")
        if rows * columns * frames > limits.max_total_pixels:
            raise StudyTooLargeError(
                f"The study has {frames} frames of {columns} x {rows} pixels, more than the limit "
                f"of {limits.max_total_pixels:,} pixels in all."
            )
        ensure_decodable(self.transfer_syntax, self.header.get("BitsStored"))

    def describe_object(self) -> str:
        """"This DICOM file (Comprehensive SR)" style phrase for messages."""
        sop = self.header.get("SOPClassUID")
        name = UID(str(sop)).name if sop else ""
        if name and name != str(sop):
            return f"This DICOM file ({name.removesuffix(' Storage')})"
        return "This DICOM file"

    @cached_property
    def frame_count(self) -> int:
        value = self.header.get("NumberOfFrames", 1)
        try:
            return int(value) if value not in (None, "") else 1
        except (TypeError, ValueError) as error:
            raise UnreadableStudyError(
                f"The DICOM header gives an unreadable number of frames ('{value}')."
            ) from error

    @cached_property
    def transfer_syntax(self) -> UID:
        meta = getattr(self.header, "file_meta", None)
        uid = meta.get("TransferSyntaxUID") if meta is not None else None
        if uid:
            return UID(str(uid))
        # No file meta: pydicom guessed the encoding while reading.
        implicit, little = self.header.original_encoding
        if implicit:
            return ImplicitVRLittleEndian
        return ExplicitVRLittleEndian if little else ExplicitVRBigEndian

    @cached_property
    def is_enhanced(self) -> bool:
        return "PerFrameFunctionalGroupsSequence" in self.header or "SharedFunctionalGroupsSequence" in self.header

    @property
    def photometric(self) -> str:
        return str(self.header.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()

    @property
    def samples_per_pixel(self) -> int:
        return int(self.header.get("SamplesPerPixel", 1) or 1)

    # -- per-frame facts ----------------------------------------------------------------------
    def geometry(self, frame: int) -> FrameGeometry:
        return enhanced_geometry(self.header, frame) if self.is_enhanced else classic_geometry(self.header)

    def window(self, frame: int) -> Window | None:
        if self.is_enhanced:
            voi = functional_group(self.header, frame, "FrameVOILUTSequence")
            return header_window(voi) if voi is not None else None
        return header_window(self.header)

    def rescale(self, frame: int) -> Rescale | None:
        """The enhanced-IOD rescale for ``frame``; None for classic files (use the header LUT)."""
        if not self.is_enhanced:
            return None
        item = functional_group(self.header, frame, "PixelValueTransformationSequence")
        slope = _first_number(item.get("RescaleSlope")) if item is not None else None
        intercept = _first_number(item.get("RescaleIntercept")) if item is not None else None
        return Rescale(slope if slope is not None else 1.0, intercept if intercept is not None else 0.0)

    # -- pixels -------------------------------------------------------------------------------
    @cached_property
    def _needs_full_dataset(self) -> bool:
        # pixel_array(path) cannot inflate deflated files or read files without file meta.
        meta = getattr(self.header, "file_meta", None)
        has_syntax = meta is not None and "TransferSyntaxUID" in meta
        return self.transfer_syntax == DeflatedExplicitVRLittleEndian or not has_syntax

    def decode(self, frame: int) -> np.ndarray:
        """Stored pixel values of one frame (YBR already converted to RGB by pydicom)."""
        try:
            if self._needs_full_dataset:
                ds = pydicom.dcmread(self.path, force=True)
                if "TransferSyntaxUID" not in ds.file_meta:
                    ds.file_meta.TransferSyntaxUID = self.transfer_syntax
                array = pixel_array(ds, index=frame, decoding_plugin=preferred_plugin(self.transfer_syntax))
            else:
                array = pixel_array(self.path, index=frame, decoding_plugin=preferred_plugin(self.transfer_syntax))
        except _DECODE_FAILURES as error:
            log.info("decoding %s frame %d failed: %r", self.path.name, frame, error)
            if "no 'Pixel Data'" in str(error) or "no pixel data" in str(error).lower():
                raise NotAnImageError(f"{self.describe_object()} holds no image to display.") from error
            syntax = self.transfer_syntax.name if self.transfer_syntax.is_compressed else "uncompressed"
            raise UnreadableStudyError(
                f"The image data in this file is incomplete or damaged and cannot be displayed "
                f"({syntax})."
            ) from error
        return array.astype(array.dtype.newbyteorder("="), copy=False)

    def modality_lut(self, stored: np.ndarray, frame: int) -> np.ndarray:
        """Stored values -> physical values (HU for CT) as float32."""
        rescale = self.rescale(frame)
        if rescale is not None:
            return rescale.apply(stored)
        physical = apply_modality_lut(stored, self.header)
        scaling = _first_number(self.header.get("DoseGridScaling"))
        if self.header.get("Modality") == "RTDOSE" and scaling:
            physical = physical * scaling
        return np.asarray(physical, dtype=np.float32)
