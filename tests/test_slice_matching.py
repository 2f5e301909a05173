"""Matching the slices of a prior series to the current one by table position
(``tools.compare.slices``): the nearest slice, a prior cut another way or of another region
refused in one sentence."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tools.compare.slices import matching_slice
from tools.errors import RegistrationError
from tools.study import open_study

SAMPLE = Path(__file__).resolve().parent.parent / "agent" / "sample_data" / "lidc-idri-0003"


def prior_series(folder: Path, *, shift_z_mm: float = 0.0, orientation: list[float] | None = None,
                 geometry: bool = True) -> Path:
    """The sample series as another exam would give it: its table positions moved by
    ``shift_z_mm``, or cut along ``orientation``, or without geometry."""
    folder.mkdir()
    series = generate_uid()
    for index, source in enumerate(sorted(SAMPLE.glob("*.dcm"))):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + shift_z_mm]
        if orientation is not None:
            ds.ImageOrientationPatient = orientation
        if not geometry:
            del ds.ImagePositionPatient, ds.ImageOrientationPatient
        ds.save_as(folder / f"{index:02d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture
def current():
    with open_study(SAMPLE) as study:
        yield study


def test_the_same_series_matches_slice_for_slice(current):
    for frame in range(current.frame_count):
        match = matching_slice(current, frame, current)
        assert (match.prior_frame, match.distance_mm) == (frame, 0.0)


def test_a_prior_lying_one_slice_further_matches_the_neighbouring_slice(current, tmp_path):
    with open_study(SAMPLE) as study:
        spacing = abs(study.safe.spacing_between_slices_mm or 2.5)
    with open_study(prior_series(tmp_path / "prior", shift_z_mm=spacing)) as prior:
        matches = [matching_slice(current, frame, prior) for frame in range(1, current.frame_count - 1)]
    shifted = [m.prior_frame for m in matches]
    assert shifted != list(range(1, current.frame_count - 1))  # moved by one slice, one way or the other
    assert all(abs(s - f) == 1 for s, f in zip(shifted, range(1, current.frame_count - 1), strict=True))
    assert all(m.distance_mm == pytest.approx(0.0, abs=0.01) for m in matches)


def test_a_prior_cut_another_way_is_refused(current, tmp_path):
    coronal = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    with open_study(prior_series(tmp_path / "coronal", orientation=coronal)) as prior:
        with pytest.raises(RegistrationError, match="cut another way"):
            matching_slice(current, 5, prior)


def test_a_prior_of_another_region_is_refused(current, tmp_path):
    with open_study(prior_series(tmp_path / "pelvis", shift_z_mm=-400.0)) as prior:
        with pytest.raises(RegistrationError, match="does not reach the current slice"):
            matching_slice(current, 5, prior)


def test_a_prior_without_geometry_is_refused_in_one_sentence(current, tmp_path):
    with open_study(prior_series(tmp_path / "bare", geometry=False)) as prior:
        with pytest.raises(RegistrationError) as refused:
            matching_slice(current, 5, prior)
    assert "\n" not in refused.value.message
