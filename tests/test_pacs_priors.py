"""``loupe pacs priors``: the same patient's earlier studies on a real Orthanc, the same modality
and body part first, with the interval in days; another patient's and later studies left out."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import pydicom_file, run_cli

SAMPLE = Path(__file__).resolve().parent.parent / "agent" / "sample_data" / "lidc-idri-0003"

pytestmark = pytest.mark.usefixtures("isolated_cli")


def stored_study(folder: Path, source: Path, *, patient: str, study_date: str, body_part: str,
                 modality: str | None = None) -> tuple[str, list[Path]]:
    """``source`` as a new study of ``patient`` on ``study_date``."""
    study_uid, series_uid = generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName, ds.StudyDate = patient, f"Prior^{patient}", study_date
    ds.BodyPartExamined, ds.StudyDescription = body_part, f"{body_part.title()} study"
    if modality:
        ds.Modality = modality
    path = folder / "0.dcm"
    ds.save_as(path, enforce_file_format=True)
    return study_uid, [path]


def test_priors_are_the_patients_earlier_studies_same_kind_first(own_pacs, tmp_path, capsys):
    ct = sorted(SAMPLE.glob("*.dcm"))[0]
    current, a = stored_study(tmp_path / "current", ct, patient="P-1", study_date="20240601", body_part="CHEST")
    chest, b = stored_study(tmp_path / "chest", ct, patient="P-1", study_date="20231203", body_part="CHEST")
    old_chest, c = stored_study(tmp_path / "old", ct, patient="P-1", study_date="20220601", body_part="CHEST")
    head, d = stored_study(tmp_path / "head", pydicom_file("MR_small.dcm"), patient="P-1", study_date="20240101",
                           body_part="HEAD")
    _, e = stored_study(tmp_path / "other", ct, patient="P-2", study_date="20231203", body_part="CHEST")
    _, f = stored_study(tmp_path / "later", ct, patient="P-1", study_date="20250101", body_part="CHEST")
    own_pacs.seed(a + b + c + d + e + f)

    code, out, err = run_cli(capsys, "pacs", "priors", current, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["study_uid"] for r in rows] == [chest, old_chest, head]  # same kind, newest first; then the MR
    assert [r["interval_days"] for r in rows] == [181, 731, 152]
    assert {"study_uid", "study_date", "modalities", "description", "interval_days"} <= set(rows[0])
    assert rows[0]["same_body_part"] and not rows[2]["same_modality"]

    code, out, _ = run_cli(capsys, "pacs", "priors", f"pacs:{old_chest}")
    assert code == 0 and out.strip() == "No earlier study of this patient on the PACS."


def test_a_study_without_a_patient_id_has_no_priors_in_one_sentence(own_pacs, tmp_path, capsys):
    uid, paths = stored_study(tmp_path / "anon", sorted(SAMPLE.glob("*.dcm"))[0], patient="", study_date="20240601",
                              body_part="CHEST")
    own_pacs.seed(paths)
    code, _, err = run_cli(capsys, "pacs", "priors", uid)
    assert code != 0 and "has no Patient ID" in err and len(err.strip().splitlines()) == 1
