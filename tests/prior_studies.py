"""A (prior, current) pair of DICOM CT series with a known truth, for the comparison's tests.

The current series is the bundled sample (LIDC-IDRI-0003, 10 slices, its nodule at about
(366, 350) px on frame 5) given a patient and a Study Date; the prior is the same series made as
``bench/make_longitudinal.py`` makes its pairs — the nodule scaled down by ``factor`` (or removed,
or left as it is) on the slices it spans, every slice moved by a known in-plane similarity, the
table positions offset as a patient lying a little differently would be — written as another
study of the same patient with an earlier date.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from agent.evaluation.longitudinal import Lesion, moved, radially_scaled, removed
from tools.compare.registration import Similarity

SAMPLE = Path(__file__).resolve().parent.parent / "agent" / "sample_data" / "lidc-idri-0003"
#: The sample's nodule: centre and radius (px) on frame 5, and the frames it spans.
NODULE = Lesion(366.7, 350.5, 12.0)
NODULE_FRAMES = range(3, 8)
#: The prior's map (current px → prior px): a shift, a small rotation and zoom about the centre.
TRANSFORM = Similarity.about((255.5, 255.5), 1.04, 3.0, 9.0, -6.0)


@dataclass(frozen=True)
class PriorPair:
    current: Path
    prior: Path
    current_uid: str
    prior_uid: str
    transform: Similarity


def _slices(folder: Path) -> list[pydicom.Dataset]:
    slices = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    return sorted(slices, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _write(slices: list[pydicom.Dataset], pixels: list[np.ndarray], folder: Path, *, patient: str, study_date: str,
           z_offset: float = 0.0) -> str:
    study_uid, series_uid = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for index, (original, hu) in enumerate(zip(slices, pixels, strict=True)):
        ds = original.copy()
        stored = np.round((hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
        info = np.iinfo(ds.pixel_array.dtype)
        ds.PixelData = np.clip(stored, info.min, info.max).astype(ds.pixel_array.dtype).tobytes()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName, ds.StudyDate = patient, f"Compare^{patient}", study_date
        ds.BodyPartExamined, ds.StudyDescription = "CHEST", "Chest CT"
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + z_offset]
        if "SliceLocation" in ds:
            ds.SliceLocation = float(ds.SliceLocation) + z_offset
        ds.InstanceNumber = index + 1
        ds.save_as(folder / f"{index:03d}.dcm", enforce_file_format=True)
    return study_uid


def write_prior_pair(folder: Path, *, status: str = "grown", factor: float = 1.5, patient: str = "CMP-1",
                     current_date: str = "20240601", prior_date: str = "20231203",
                     transform: Similarity = TRANSFORM, z_offset: float = 0.0) -> PriorPair:
    """The pair of the module: ``status`` grown / shrunk (the nodule ``factor`` times larger now
    than then), new (absent in the prior), resolved (absent now), stable."""
    slices = _slices(SAMPLE)
    current, prior = [], []
    for frame, ds in enumerate(slices):
        now = _hu(ds)
        before = now
        if frame in NODULE_FRAMES:
            if status in ("grown", "shrunk"):
                before = radially_scaled(now, NODULE, 1.0 / factor)
            elif status == "new":
                before = removed(now, NODULE)
            elif status == "resolved":
                now = removed(now, NODULE)
        current.append(now)
        prior.append(moved(before, transform))
    current_uid = _write(slices, current, folder / "current", patient=patient, study_date=current_date)
    prior_uid = _write(slices, prior, folder / "prior", patient=patient, study_date=prior_date, z_offset=z_offset)
    return PriorPair(folder / "current", folder / "prior", current_uid, prior_uid, transform)
