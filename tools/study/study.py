"""A loaded study: frames, physical values, display images, geometry and metadata.

``open_study`` is the one entry point: it accepts a file, a folder, a list of files or a .zip
(DICOM or PNG/JPEG), decodes the first frame to prove the study is readable, and returns a
``Study``. Frames are decoded lazily and a handful are kept in a small cache so that window
changes and frame scrubbing do not decode again.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydicom.uid import UID

from tools.errors import FrameOutOfRangeError, InvalidWindowError, NotAnImageError, UnsupportedStudyError
from tools.study.colour import luma, strongly_coloured
from tools.study.dicom import DicomFile
from tools.study.display import RenderedFrame, render_colour, render_grey
from tools.study.geometry import positive_float, ultrasound_regions
from tools.study.modality import ModalityGuess, guess_modality
from tools.study.model import (
    FrameGeometry,
    IdentifyingMetadata,
    SafeMetadata,
    StudyLimits,
)
from tools.study.raster import RasterImage, read_raster
from tools.study.series import order_series
from tools.study.sources import ResolvedSource, resolve_source
from tools.study.windowing import Window, apply_window, parse_window, percentile_window, presets_for, to_uint8

T = TypeVar("T")

StudySource = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

# Decoded, physical and rendered arrays of the last few frames (a frame uses up to three).
_CACHE_ENTRIES = 24


class Study(ABC):
    """What the clinician opened, ready to display and measure.

    Attributes
    ----------
    id:
        ``st-`` + the first 16 hex digits of a SHA-256 over the pixel-bearing files' bytes;
        stable for the same content, carries no PHI.
    safe:
        Technical metadata on the allow-list.
    identifying:
        Header PHI, kept apart; never sent to a model.
    """

    def __init__(self, *, study_id: str, safe: SafeMetadata, identifying: IdentifyingMetadata,
                 source: ResolvedSource) -> None:
        self.id = study_id
        self.safe = safe
        self.identifying = identifying
        self._source = source
        self._cache: OrderedDict[tuple, object] = OrderedDict()

    # -- frames -------------------------------------------------------------------------------
    @property
    def frame_count(self) -> int:
        return self.safe.frames

    @property
    def modality(self) -> str | None:
        return self.safe.modality

    def check_frame(self, frame: int) -> int:
        if not 0 <= frame < self.frame_count:
            raise FrameOutOfRangeError(
                f"Frame {frame} does not exist; this study has frames 0 to {self.frame_count - 1}."
            )
        return frame

    def _memo(self, key: tuple, compute: Callable[[], T]) -> T:
        """Keep the last few decoded / rendered results; arrays come back read-only."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = compute()
        for array in (value, getattr(value, "pixels", None)):
            if isinstance(array, np.ndarray):
                array.setflags(write=False)  # shared with callers: nobody may alter the cache
        self._cache[key] = value
        if len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return value

    def physical(self, frame: int = 0) -> np.ndarray:
        """Physical values of a frame as float32 (HU for CT; grey or RGB luma otherwise)."""
        self.check_frame(frame)
        return self._memo(("physical", frame), lambda: self._decode_physical(frame))

    @abstractmethod
    def _decode_physical(self, frame: int) -> np.ndarray: ...

    def render(self, frame: int = 0, window: Window | str | None = None) -> RenderedFrame:
        """The display image of a frame (uint8), with ``window`` overriding the default."""
        self.check_frame(frame)
        override = self.resolve_window(window)
        return self._memo(("render", frame, override), lambda: self._render(frame, override))

    @abstractmethod
    def _render(self, frame: int, override: Window | None) -> RenderedFrame: ...

    def name_modality(self, modality: str | None) -> None:
        """The clinician says what a PNG/JPEG shows (None: they do not know); a DICOM header's
        modality stands, so this is refused for DICOM studies."""
        if self.safe.kind != "raster":
            raise UnsupportedStudyError("A DICOM study's modality comes from its header and cannot be changed.")
        self.safe = self.safe.model_copy(update={"modality": modality.upper() if modality else None,
                                                 "modality_source": "user", "modality_reason": None})

    def coloured(self, frame: int = 0) -> np.ndarray | None:
        """Where a colour frame is strongly coloured (Doppler flow, calipers, annotations: not
        tissue), as a bool mask; None for greyscale frames and colour frames without such pixels."""
        self.check_frame(frame)
        if not self.is_colour:
            return None
        return self._memo(("coloured", frame), lambda: strongly_coloured(self.render(frame).pixels))

    def display(self, frame: int = 0, window: Window | str | None = None) -> np.ndarray:
        return self.render(frame, window).pixels

    @abstractmethod
    def geometry(self, frame: int = 0) -> FrameGeometry: ...

    def pixel_spacing_mm(self, frame: int = 0) -> tuple[float, float] | None:
        return self.geometry(frame).pixel_spacing_mm

    # -- windows ------------------------------------------------------------------------------
    @property
    def is_colour(self) -> bool:
        """Shown in colour (RGB, decoded YBR or PALETTE COLOR): no windowing applies."""
        return self.safe.samples_per_pixel != 1 or self.safe.photometric == "PALETTE COLOR"

    def window_presets(self) -> dict[str, Window]:
        """Named windows that make sense for this study (CT: lung, soft tissue, brain, bone).

        Only DICOM greyscale studies have them: a CT saved as PNG holds grey levels, not HU.
        """
        if self.is_colour or self.safe.kind != "dicom":
            return {}
        return presets_for(self.modality)

    def resolve_window(self, window: Window | str | None) -> Window | None:
        """A Window from a preset name or 'centre,width' (None keeps the default window)."""
        if window is None:
            return None
        if self.is_colour:
            raise InvalidWindowError("A display window applies to greyscale images; this image is in colour.")
        if isinstance(window, Window):
            return window
        return parse_window(window, self.modality if self.window_presets() else None)

    def close(self) -> None:
        """Release cached frames and any files extracted from an archive."""
        self._cache.clear()
        self._source.cleanup()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DicomStudy(Study):
    """One DICOM file (single or multi-frame) or one series of single-frame files."""

    def __init__(self, files: list[DicomFile], **kwargs) -> None:
        super().__init__(**kwargs)
        self.files = files

    def locate(self, frame: int) -> tuple[DicomFile, int]:
        """The file holding ``frame`` and the frame's index within that file."""
        self.check_frame(frame)
        return (self.files[0], frame) if len(self.files) == 1 else (self.files[frame], 0)

    def _stored(self, frame: int) -> np.ndarray:
        file, index = self.locate(frame)
        return self._memo(("stored", frame), lambda: file.decode(index))

    def _decode_physical(self, frame: int) -> np.ndarray:
        file, index = self.locate(frame)
        if self.is_colour:
            # Colour has no physical unit; measure on the luma of what the clinician sees.
            return luma(self.render(frame).pixels)
        return file.modality_lut(self._stored(frame), index)

    def _render(self, frame: int, override: Window | None) -> RenderedFrame:
        file, index = self.locate(frame)
        if self.is_colour:
            return render_colour(self._stored(frame), file.header)
        return render_grey(
            self.physical(frame),
            header=None if file.is_enhanced else file.header,
            modality=self.modality,
            header_window=file.window(index),
            override=override,
            monochrome1=file.photometric == "MONOCHROME1",
        )

    def geometry(self, frame: int = 0) -> FrameGeometry:
        file, index = self.locate(frame)
        return file.geometry(index)


class RasterStudy(Study):
    """A PNG or JPEG image: one frame, values as saved, no physical units."""

    def __init__(self, image: RasterImage, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image = image

    def _decode_physical(self, frame: int) -> np.ndarray:
        if self.image.is_colour:
            return luma(self.image.pixels)  # as for colour DICOM: the luma of what is shown
        return self.image.pixels.astype(np.float32)

    def _render(self, frame: int, override: Window | None) -> RenderedFrame:
        pixels = self.image.pixels
        if self.image.is_colour:
            return RenderedFrame(pixels, None)
        if override is not None:
            return RenderedFrame(to_uint8(apply_window(self.physical(frame), override)), override)
        if pixels.dtype == np.uint8:
            return RenderedFrame(pixels, None)  # already a display image
        window = percentile_window(pixels)
        return RenderedFrame(to_uint8(apply_window(self.physical(frame), window)), window)

    def geometry(self, frame: int = 0) -> FrameGeometry:
        self.check_frame(frame)
        return FrameGeometry()


def open_study(source: StudySource, *, limits: StudyLimits | None = None,
               modality: str | None = None) -> Study:
    """Open a DICOM file, series (folder, list or .zip) or a PNG/JPEG image.

    Parameters
    ----------
    source:
        A path, or a list of paths, to files, folders or .zip archives.
    limits:
        Size guards; defaults to ``StudyLimits()``.
    modality:
        For PNG/JPEG only: the modality the caller knows (DICOM headers win otherwise). Without
        it, the modality is guessed from the pixels (``tools.study.modality``) and the study's
        metadata says so (``modality_source="guess"``, ``modality_reason``).

    Raises
    ------
    StudyError
        One of its subclasses, with a sentence for the clinician.
    """
    limits = limits or StudyLimits()
    resolved = resolve_source(source, limits)
    try:
        if resolved.dicom_files and resolved.raster_files:
            raise UnsupportedStudyError(
                "What was opened mixes DICOM files and PNG/JPEG images; open them separately."
            )
        study = _open_raster(resolved, limits, modality) if resolved.raster_files else _open_dicom(resolved, limits)
        study.render(0)  # decode the first frame now, so a damaged file fails at open
        return study
    except BaseException:
        resolved.cleanup()
        raise


def _content_id(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return "st-" + digest.hexdigest()[:16]


def _open_raster(resolved: ResolvedSource, limits: StudyLimits, modality: str | None) -> RasterStudy:
    if len(resolved.raster_files) > 1:
        raise UnsupportedStudyError(
            f"What was opened holds {len(resolved.raster_files)} separate images; open one at a time."
        )
    path = resolved.raster_files[0]
    image = read_raster(path, limits)
    if modality:
        assumed = ModalityGuess(modality.upper(), "given by the clinician")
    else:  # nobody said: guess from the layout, and say so (the clinician may correct it)
        assumed = guess_modality(luma(image.pixels) if image.is_colour else image.pixels)
    safe = SafeMetadata(
        kind="raster",
        modality=assumed.modality,
        modality_source="user" if modality else "guess",
        modality_reason=None if modality else assumed.reason,
        rows=image.pixels.shape[0],
        columns=image.pixels.shape[1],
        frames=1,
        photometric="RGB" if image.is_colour else "MONOCHROME2",
        samples_per_pixel=3 if image.is_colour else 1,
        bits_stored=image.bits,
        image_format=image.image_format,
    )
    identifying = IdentifyingMetadata(source_names=tuple(resolved.original_names))
    return RasterStudy(image, study_id=_content_id([path]), safe=safe, identifying=identifying,
                       source=resolved)


def _open_dicom(resolved: ResolvedSource, limits: StudyLimits) -> DicomStudy:
    files, first_refusal = [], None
    several = len(resolved.dicom_files) > 1
    for path in resolved.dicom_files:
        try:
            files.append(DicomFile(path, limits))
        except NotAnImageError as refusal:
            # In a folder or zip, reports, plans and DICOMDIR indexes sit beside the images.
            if not several:
                raise
            first_refusal = first_refusal or refusal
    if not files:
        raise first_refusal or NotAnImageError("No image was found among the DICOM files opened.")
    files, slice_spacing = order_series(files)
    first = files[0]
    header = first.header
    geometry = first.geometry(0)
    modality = _text(header.get("Modality"))
    regions = ultrasound_regions(header) if not first.is_enhanced else ()
    safe = SafeMetadata(
        kind="dicom",
        modality=modality,
        body_part=_text(header.get("BodyPartExamined")),
        rows=int(header.Rows),
        columns=int(header.Columns),
        frames=first.frame_count if len(files) == 1 else len(files),
        photometric=first.photometric,
        samples_per_pixel=first.samples_per_pixel,
        bits_stored=_int(header.get("BitsStored")),
        pixel_spacing_mm=geometry.pixel_spacing_mm,
        spacing_source=geometry.spacing_source,
        slice_thickness_mm=geometry.slice_thickness_mm,
        spacing_between_slices_mm=slice_spacing or positive_float(header.get("SpacingBetweenSlices")),
        window=first.window(0),
        physical_unit=_physical_unit(header, modality),
        transfer_syntax=_uid_name(first.transfer_syntax),
        sop_class=_uid_name(header.get("SOPClassUID")),
        burned_in_annotation=_text(header.get("BurnedInAnnotation")),
        ultrasound_regions=regions,
    )
    return DicomStudy(
        files,
        study_id=_content_id([f.path for f in files]),
        safe=safe,
        identifying=_identifying(header, resolved.original_names),
        source=resolved,
    )


def _identifying(header, names: Sequence[str]) -> IdentifyingMetadata:
    fields = {
        "patient_name": "PatientName", "patient_id": "PatientID",
        "patient_birth_date": "PatientBirthDate", "patient_sex": "PatientSex",
        "patient_age": "PatientAge", "study_date": "StudyDate",
        "accession_number": "AccessionNumber", "institution_name": "InstitutionName",
        "referring_physician": "ReferringPhysicianName", "study_description": "StudyDescription",
        "series_description": "SeriesDescription", "study_instance_uid": "StudyInstanceUID",
        "series_instance_uid": "SeriesInstanceUID",
    }
    values = {key: _text(header.get(keyword)) for key, keyword in fields.items()}
    return IdentifyingMetadata(**values, source_names=tuple(names))


def _physical_unit(header, modality: str | None) -> str | None:
    rescale_type = _text(header.get("RescaleType"))
    if rescale_type and rescale_type.upper() != "US":  # "US" = unspecified
        return rescale_type
    if modality == "CT":
        return "HU"
    if modality == "RTDOSE":
        return _text(header.get("DoseUnits"))
    return None


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _uid_name(value: object) -> str | None:
    if not value:
        return None
    uid = UID(str(value))
    return uid.name if uid.name else str(uid)
