"""De-identified export (PS3.15 basic profile) against a PHI-seeded corpus and pydicom's files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from agent.privacy.deid import DeidError, deidentify
from tests.conftest import pydicom_file
from tests.reference_files import REFERENCE, Loads
from tests.test_reference_files import FILES
from tools.errors import UnreadableStudyError
from tools.study import open_study

# Every value below is identifying and unique enough to be searched for in the output bytes.
SEEDED = {
    "PatientName": "SEEDSURNAME^SEEDGIVEN",
    "PatientID": "SEEDPID-4711",
    "PatientBirthDate": "19471103",
    "OtherPatientIDs": "SEEDOTHERID-99",
    "InstitutionName": "SEEDHOSPITAL NORTH",
    "InstitutionAddress": "SEEDSTREET 12 SEEDTOWN",
    "ReferringPhysicianName": "SEEDREFERRER^ANNA",
    "StudyDescription": "SEEDSTUDYTEXT knee pain of Mr Seedsurname",
    "SeriesDescription": "SEEDSERIESTEXT left knee",
    "ImageComments": "SEEDCOMMENT patient fell at home",
    "AccessionNumber": "SEEDACC123",
    "StudyDate": "20230405",
    "SeriesDate": "20230406",
    "AcquisitionDateTime": "20230407101112",
    "OperatorsName": "SEEDOPERATOR^OLE",
    "PerformingPhysicianName": "SEEDPERFORMER^PIA",
    "DeviceSerialNumber": "SEEDSERIAL-555",
    "StationName": "SEEDSTATION1",
}
SEEDED_PRIVATE = "SEEDPRIVATE-secret"
SEEDED_REQUEST = {"RequestedProcedureID": "SEEDREQ-77", "ScheduledProcedureStepDescription": "SEEDSTEP mri"}
SEEDED_REFERENCED_PATIENT_UID = "1.2.826.0.1.3680043.8.498.1947110301"
# ContributingEquipmentSequence is not in table E.1-1: only recursion into kept sequences cleans it.
SEEDED_CONTRIBUTOR = {
    "InstitutionName": "SEEDCONTRIB INSTITUTE",
    "OperatorsName": "SEEDNESTED^OPERATOR",
    "ContributionDateTime": "20230408091011",
}
ALL_SEEDS = [*SEEDED.values(), SEEDED_PRIVATE, *SEEDED_REQUEST.values(),
             SEEDED_REFERENCED_PATIENT_UID, *SEEDED_CONTRIBUTOR.values()]

# CT, MR, a 10-frame MR and an ultrasound (colour, calibrated regions).
CORPUS = ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "US1_UNCR.dcm")


def _item(**values: str) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def seed_phi(ds: Dataset) -> None:
    """Put every kind of identifier the profile must remove into ``ds``."""
    for keyword, value in SEEDED.items():
        setattr(ds, keyword, value)
    ds.private_block(0x0009, "LOUPE TEST", create=True).add_new(0x01, "LO", SEEDED_PRIVATE)
    ds.RequestAttributesSequence = [_item(**SEEDED_REQUEST)]
    ds.ReferencedPatientSequence = [_item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.1.4",
                                          ReferencedSOPInstanceUID=SEEDED_REFERENCED_PATIENT_UID)]
    ds.ContributingEquipmentSequence = [_item(Manufacturer="ACME", **SEEDED_CONTRIBUTOR)]


def all_text(ds: Dataset) -> list[str]:
    """The str value of every element, nested items and file meta included."""
    elements = list(ds.iterall()) + list(getattr(ds, "file_meta", Dataset()).iterall())
    return [str(element.value) for element in elements if element.VR not in ("OB", "OW", "OF", "UN")]


def decoded_pixels(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


@pytest.fixture(scope="module")
def seeded_export(tmp_path_factory) -> tuple[Path, Path, object]:
    """The seeded corpus in a folder, and its de-identified copy."""
    root = tmp_path_factory.mktemp("seeded")
    source, target = root / "in", root / "out"
    source.mkdir()
    for name in CORPUS:
        ds = pydicom.dcmread(pydicom_file(name))
        seed_phi(ds)
        ds.save_as(source / name)
    report = deidentify(source, target, pseudonym_map=root / "map.json")
    return source, target, report


# -- (a) the seeded corpus -----------------------------------------------------------------------

def test_seeded_corpus_is_all_written(seeded_export):
    _, target, report = seeded_export
    assert report.written_count == len(CORPUS) and report.skipped_count == 0
    assert sorted(p.name for p in target.iterdir()) == sorted(CORPUS)


@pytest.mark.parametrize("name", CORPUS)
def test_no_seeded_identifier_is_left(seeded_export, name):
    _, target, _ = seeded_export
    raw = (target / name).read_bytes()
    left_in_bytes = [seed for seed in ALL_SEEDS if seed.encode() in raw]
    assert left_in_bytes == []
    texts = all_text(pydicom.dcmread(target / name))
    assert [seed for seed in ALL_SEEDS if any(seed in text for text in texts)] == []


@pytest.mark.parametrize("name", CORPUS)
def test_profile_is_declared(seeded_export, name):
    _, target, _ = seeded_export
    ds = pydicom.dcmread(target / name)
    assert ds.PatientIdentityRemoved == "YES"
    code = ds.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert ds.DeidentificationMethod
    assert ds.PatientName == ds.PatientID and str(ds.PatientID).startswith("LOUPE-")
    assert not any(element.tag.is_private for element in ds.iterall())
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize("name", CORPUS)
def test_output_loads_renders_and_keeps_pixels_and_geometry(seeded_export, name):
    source, target, _ = seeded_export
    with open_study(source / name) as before, open_study(target / name) as after:
        after.render(0, None)
        # Everything display and measurement use (spacing, window, geometry, regions) is kept.
        assert after.safe == before.safe
        assert after.geometry(0) == before.geometry(0)
    assert np.array_equal(decoded_pixels(target / name), decoded_pixels(source / name))


def test_burned_in_risk_is_reported_never_denied(seeded_export):
    source, target, report = seeded_export
    assert [p.name for p in report.burned_in_risk] == ["US1_UNCR.dcm"]
    assert any("burned into the image" in note for note in report.notes())
    for name in CORPUS:
        before = pydicom.dcmread(source / name).get("BurnedInAnnotation")
        assert pydicom.dcmread(target / name).get("BurnedInAnnotation") == before


def test_report_and_output_never_carry_the_map(seeded_export):
    _, target, report = seeded_export
    dumped = report.model_dump_json()
    assert [seed for seed in ALL_SEEDS if seed in dumped] == []
    assert not report.pseudonym_map.is_relative_to(target)
    assert SEEDED["PatientID"] in report.pseudonym_map.read_text()  # the only place it is kept
    assert report.pseudonym_map.stat().st_mode & 0o077 == 0


# -- (b) UIDs stay consistent ----------------------------------------------------------------------

@pytest.fixture
def two_slice_series(tmp_path) -> Path:
    """Two CT slices of one series (CT_small with a second instance 5 mm further)."""
    folder = tmp_path / "series"
    folder.mkdir()
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.save_as(folder / "slice1.dcm")
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 2
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], ds.ImagePositionPatient[2] + 5]
    ds.save_as(folder / "slice2.dcm")
    return folder


UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")


def _uids(folder: Path) -> list[dict[str, str]]:
    headers = [pydicom.dcmread(folder / name) for name in ("slice1.dcm", "slice2.dcm")]
    return [{keyword: str(ds[keyword].value) for keyword in UID_KEYWORDS} for ds in headers]


def test_a_series_stays_a_series(two_slice_series, tmp_path):
    originals = _uids(two_slice_series)
    target = tmp_path / "out"
    deidentify(two_slice_series, target, pseudonym_map=tmp_path / "map.json")
    first, second = _uids(target)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert first[keyword] == second[keyword]
    assert first["SOPInstanceUID"] != second["SOPInstanceUID"]
    assert all(uid.startswith("2.25.") and len(uid) <= 64 for uid in [*first.values(), *second.values()])
    raw = b"".join(path.read_bytes() for path in target.iterdir())
    assert [uid for uids in originals for uid in uids.values() if uid.encode() in raw] == []
    with open_study(target) as study:
        assert study.frame_count == 2


def test_the_same_map_gives_the_same_pseudonyms(two_slice_series, tmp_path):
    pseudonym_map = tmp_path / "map.json"
    deidentify(two_slice_series, tmp_path / "run1", pseudonym_map=pseudonym_map)
    second = deidentify(two_slice_series, tmp_path / "run2", pseudonym_map=pseudonym_map)
    assert _uids(tmp_path / "run1") == _uids(tmp_path / "run2")
    assert second.new_patients == 0 and second.new_uids == 0
    runs = (tmp_path / "run1", tmp_path / "run2")
    patient_ids = {pydicom.dcmread(run / "slice1.dcm").PatientID for run in runs}
    assert len(patient_ids) == 1


def test_the_map_is_merged_not_replaced(tmp_path):
    pseudonym_map = tmp_path / "map.json"
    deidentify(pydicom_file("CT_small.dcm"), tmp_path / "ct.dcm", pseudonym_map=pseudonym_map)
    deidentify(pydicom_file("MR_small.dcm"), tmp_path / "mr.dcm", pseudonym_map=pseudonym_map)
    patients = json.loads(pseudonym_map.read_text())["patients"]
    assert len(patients) == 2 and len(set(patients.values())) == 2


# -- (c) every loadable pydicom / pydicom-data file --------------------------------------------------

# Loupe displays this one by decoding its frames directly, but pydicom's full read of the file
# returns an empty data set (its pixel data lacks the closing delimiter): there is nothing to
# de-identify, and writing that empty data set would lose the study, so it is refused.
TOO_SHORT = "pydicom-data:emri_small_jpeg_2k_lossless_too_short.dcm"
LOADABLE = sorted(key for key, row in REFERENCE.items() if isinstance(row, Loads) and key != TOO_SHORT)
DATE_KEYWORDS = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
                 "InstanceCreationDate", "AcquisitionDateTime")


def _identifiers(ds: Dataset) -> list[str]:
    values = [str(ds.get(keyword) or "").strip() for keyword in ("PatientName", "PatientID", *DATE_KEYWORDS)]
    return [value for value in values if value]


def _left_over(identifier: str, texts: list[str]) -> bool:
    # Short ids ('1', '0010') would match inside unrelated values (the dummy date 19000101):
    # require equality for them.
    if len(identifier) < 6:
        return identifier in texts
    return any(identifier in text for text in texts)


@pytest.mark.parametrize("key", LOADABLE)
def test_every_loadable_reference_file_deidentifies(key, tmp_path):
    source = FILES[key]
    target = tmp_path / "out.dcm"
    report = deidentify(source, target, pseudonym_map=tmp_path / "map.json")
    assert report.written_count == 1
    before, after = pydicom.dcmread(source, force=True), pydicom.dcmread(target, force=True)
    texts = all_text(after)
    assert [value for value in _identifiers(before) if _left_over(value, texts)] == []
    assert after.PatientIdentityRemoved == "YES"
    assert not any(element.tag.is_private for element in after.iterall())
    assert not any(0x6000 <= element.tag.group <= 0x601E for element in after)  # overlay planes
    assert after.PixelData == before.PixelData
    expected = REFERENCE[key]
    with open_study(target) as study:
        assert (study.safe.modality, study.safe.rows, study.safe.columns, study.safe.frames) == expected[:4]
        study.render(0, None)


def test_a_file_pydicom_reads_as_empty_is_refused(tmp_path):
    with pytest.raises(UnreadableStudyError, match="damaged"):
        deidentify(FILES[TOO_SHORT], tmp_path / "out.dcm", pseudonym_map=tmp_path / "map.json")
    assert not (tmp_path / "out.dcm").exists()


# -- (d) what cannot be de-identified ----------------------------------------------------------------

def _no_partial_files(folder: Path) -> bool:
    return not any(path.name.endswith(".part") for path in folder.rglob("*"))


def test_folder_mode_skips_what_is_not_dicom(tmp_path):
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "ct.dcm").write_bytes(pydicom_file("CT_small.dcm").read_bytes())
    (source / "notes.txt").write_text("SEEDSURNAME was here")
    (source / "cut.dcm").write_bytes(pydicom_file("CT_small.dcm").read_bytes()[:3000])
    target = tmp_path / "out"
    report = deidentify(source, target, pseudonym_map=tmp_path / "map.json")
    assert report.files_written == (target / "sub" / "ct.dcm",)
    reasons = {skipped.path.name: skipped.reason for skipped in report.files_skipped}
    assert set(reasons) == {"notes.txt", "cut.dcm"}
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "damaged" in reasons["cut.dcm"]
    outputs = [p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()]
    assert outputs == ["sub/ct.dcm"]


@pytest.mark.parametrize("cut", [140, 3000, 34206])
def test_a_damaged_single_file_is_refused_and_nothing_is_left(tmp_path, cut):
    source = tmp_path / "damaged.dcm"
    source.write_bytes(pydicom_file("CT_small.dcm").read_bytes()[:cut])
    target = tmp_path / "out" / "copy.dcm"
    with pytest.raises(UnreadableStudyError) as caught:
        deidentify(source, target, pseudonym_map=tmp_path / "map.json")
    assert "\n" not in caught.value.message and caught.value.message.endswith(".")
    assert not target.exists()
    assert _no_partial_files(tmp_path)


def test_a_non_dicom_single_file_is_refused(tmp_path):
    source = tmp_path / "report.txt"
    source.write_text("not an image")
    with pytest.raises(UnreadableStudyError, match="not a DICOM file"):
        deidentify(source, tmp_path / "out.dcm", pseudonym_map=tmp_path / "map.json")
    assert not (tmp_path / "out.dcm").exists()


def test_never_writes_into_the_source(tmp_path, two_slice_series):
    with pytest.raises(DeidError):
        deidentify(two_slice_series, two_slice_series / "deid", pseudonym_map=tmp_path / "map.json")
    with pytest.raises(DeidError):
        deidentify(two_slice_series, two_slice_series, pseudonym_map=tmp_path / "map.json")
    single = two_slice_series / "slice1.dcm"
    with pytest.raises(DeidError):
        deidentify(single, single, pseudonym_map=tmp_path / "map.json")
    assert sorted(p.name for p in two_slice_series.iterdir()) == ["slice1.dcm", "slice2.dcm"]


def test_the_map_is_never_exported(tmp_path, two_slice_series):
    with pytest.raises(DeidError, match="outside"):
        deidentify(two_slice_series, tmp_path / "out", pseudonym_map=tmp_path / "out" / "map.json")
    assert not (tmp_path / "out").exists()


def test_a_damaged_map_stops_the_export(tmp_path):
    pseudonym_map = tmp_path / "map.json"
    pseudonym_map.write_text("{not json")
    with pytest.raises(DeidError, match="pseudonym map"):
        deidentify(pydicom_file("CT_small.dcm"), tmp_path / "out.dcm", pseudonym_map=pseudonym_map)
    assert pseudonym_map.read_text() == "{not json"


def test_a_pacs_style_folder_keeps_patients_apart(tmp_path):
    """pydicom's dicomdirtests: three patients, DICOMDIR indexes and a README."""
    source = pydicom_file("DICOMDIR").parent
    target = tmp_path / "out"
    report = deidentify(source, target, pseudonym_map=tmp_path / "map.json")
    every_file = [path for path in source.rglob("*") if path.is_file()]
    assert report.written_count + report.skipped_count == len(every_file)
    skipped = {s.path.relative_to(source).as_posix(): s.reason for s in report.files_skipped}
    assert all("DICOMDIR" in reason for name, reason in skipped.items() if "DICOMDIR" in name)
    assert "not a DICOM file" in skipped["README.txt"]
    pseudonyms: dict[str, set[str]] = {}
    for written in report.files_written:
        original = pydicom.dcmread(source / written.relative_to(target), force=True)
        pseudonyms.setdefault(str(original.PatientID), set()).add(pydicom.dcmread(written).PatientID)
    assert all(len(names) == 1 for names in pseudonyms.values())
    assert len(set().union(*pseudonyms.values())) == len(pseudonyms)


def test_loupe_deid_command(isolated_cli, capsys, tmp_path):
    from tests.conftest import run_cli

    out = tmp_path / "out" / "ct.dcm"
    out.parent.mkdir()
    code, stdout, err = run_cli(capsys, "deid", pydicom_file("CT_small.dcm"), out, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["written_count"] == 1 and Path(report["pseudonym_map"]).exists()
    assert pydicom.dcmread(out).PatientIdentityRemoved == "YES"
    code, stdout, err = run_cli(capsys, "deid", tmp_path / "missing.dcm", tmp_path / "x.dcm")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
