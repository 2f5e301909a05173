"""Series (folders, lists of files, .zip) sorted by geometry, and archive safety."""

from __future__ import annotations

import random
import stat
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import pydicom_file
from tools.errors import StudyTooLargeError, UnreadableStudyError, UnsafeArchiveError, UnsupportedStudyError
from tools.study import open_study
from tools.study.geometry import pixel_to_patient


def _write_series(folder: Path, count: int, *, shuffle_instance_numbers: bool = True,
                  series_uid: str | None = None, spacing: float = 2.5) -> list[float]:
    """Copies of CT_small along z with distinct pixels; returns z of each written file."""
    source = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    series_uid = series_uid or generate_uid()
    numbers = list(range(1, count + 1))
    rng = random.Random(7)
    if shuffle_instance_numbers:
        rng.shuffle(numbers)
    positions = [float(source.ImagePositionPatient[2]) + i * spacing for i in range(count)]
    order = list(range(count))
    rng.shuffle(order)  # files are written (and named) in random order too
    folder.mkdir(parents=True, exist_ok=True)
    for file_index, i in enumerate(order):
        ds = source.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = numbers[i]
        ds.ImagePositionPatient = [source.ImagePositionPatient[0], source.ImagePositionPatient[1], positions[i]]
        pixels = source.pixel_array.copy()
        pixels[0, 0] = i  # a marker of the true slice index
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"IM{file_index:04d}", enforce_file_format=True)
    return positions


def _slice_markers(study) -> list[int]:
    return [int(study.physical(i)[0, 0] - study.files[i].header.RescaleIntercept) for i in range(study.frame_count)]


def test_folder_series_sorted_by_geometry_not_instance_number(tmp_path):
    _write_series(tmp_path / "series", 12)
    with open_study(tmp_path / "series") as study:
        assert study.frame_count == 12
        assert _slice_markers(study) == list(range(12))
        z = [study.geometry(i).position_mm[2] for i in range(12)]
        assert z == sorted(z)
        assert study.safe.spacing_between_slices_mm == pytest.approx(2.5)


def test_list_of_files_is_a_series(tmp_path):
    _write_series(tmp_path / "s", 5)
    files = sorted((tmp_path / "s").iterdir(), reverse=True)
    with open_study(files) as study:
        assert _slice_markers(study) == list(range(5))


def test_series_without_geometry_falls_back_to_instance_number(tmp_path):
    folder = tmp_path / "s"
    _write_series(folder, 4, shuffle_instance_numbers=False)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    with open_study(folder) as study:
        assert [int(f.header.InstanceNumber) for f in study.files] == [1, 2, 3, 4]


def test_real_ct_series_from_eval_folder(eval_dir):
    folder = eval_dir / "lidc_ct" / "LIDC-IDRI-0003"  # DICOM slices beside an XML annotation
    with open_study(folder) as study:
        assert study.modality == "CT" and study.frame_count >= 2
        locations = [study.geometry(i).position_mm[2] for i in range(study.frame_count)]
        assert locations == sorted(locations) or locations == sorted(locations, reverse=True)
        assert study.safe.physical_unit == "HU"


def test_folder_with_dicomdir_and_images():
    folder = pydicom_file("dicomdirtests/77654033/CT2/17106").parent
    with open_study(folder) as study:
        assert study.frame_count == 4 and study.modality == "CT"


def test_folder_with_several_series_is_refused():
    folder = pydicom_file("dicomdirtests/DICOMDIR").parent / "77654033"
    with pytest.raises(UnsupportedStudyError, match="different series"):
        open_study(folder)


def test_zip_of_a_series(tmp_path):
    _write_series(tmp_path / "s", 6)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("readme.txt", "exported from PACS")
        zf.writestr("__MACOSX/._IM0000", b"junk")
        for path in sorted((tmp_path / "s").iterdir()):
            zf.write(path, f"study/series/{path.name}")
    with open_study(archive) as study:
        assert study.frame_count == 6
        assert _slice_markers(study) == list(range(6))
        extracted = study.files[0].path
        assert extracted.exists()
    assert not extracted.exists(), "closing the study removes the extracted files"


def test_zip_with_mixed_series_is_refused(tmp_path):
    _write_series(tmp_path / "a", 3)
    _write_series(tmp_path / "b", 2)
    archive = tmp_path / "mixed.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tmp_path.glob("[ab]/*")):
            zf.write(path, f"{path.parent.name}/{path.name}")
    with pytest.raises(UnsupportedStudyError, match="2 different series"):
        open_study(archive)


@pytest.mark.parametrize("entry", ["../evil.dcm", "/etc/evil.dcm", "a/../../evil.dcm", "C:\\evil.dcm",
                                   "..\\evil.dcm"])
def test_zip_path_traversal_is_refused(tmp_path, entry):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(pydicom_file("CT_small.dcm"), "ok.dcm")
        zf.writestr(zipfile.ZipInfo(entry), pydicom_file("CT_small.dcm").read_bytes())
    with pytest.raises(UnsafeArchiveError, match="unsafe path"):
        open_study(archive)
    assert not (tmp_path.parent / "evil.dcm").exists()


def test_zip_symlink_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        open_study(archive)


def test_zip_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * (64 * 1024 * 1024))
    with pytest.raises(StudyTooLargeError, match="decompression bomb"):
        open_study(archive)


def test_damaged_zip(tmp_path):
    archive = tmp_path / "broken.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(pydicom_file("CT_small.dcm"), "a.dcm")
    data = bytearray(archive.read_bytes())
    data[60:400] = b"\xff" * 340  # corrupt the compressed stream
    archive.write_bytes(bytes(data))
    with pytest.raises(UnreadableStudyError, match="damaged"):
        open_study(archive)


def test_pixel_to_patient_matches_highdicom():
    highdicom = pytest.importorskip("highdicom")
    ds = pydicom.dcmread(pydicom_file("MR2_UNCI.dcm"), stop_before_pixels=True)  # oblique shoulder
    with open_study(pydicom_file("MR2_UNCI.dcm")) as study:
        geometry = study.geometry(0)
        transformer = highdicom.spatial.PixelToReferenceTransformer(
            image_position=ds.ImagePositionPatient, image_orientation=ds.ImageOrientationPatient,
            pixel_spacing=ds.PixelSpacing)
        for column, row in [(0, 0), (10, 500), (1023, 1023), (511, 3)]:
            expected = transformer(np.array([[column, row]]))[0]
            assert pixel_to_patient(geometry, column, row) == pytest.approx(tuple(expected), abs=1e-6)
