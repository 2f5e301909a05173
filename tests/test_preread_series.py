"""A pre-read of a study with several image series: each searched, the draft made on the series
holding the strongest finding, and a series Loupe cannot take passed over in one sentence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import pydicom_file
from tests.test_preread_model import preread_turn

SAMPLE = Path(__file__).parents[1] / "agent" / "sample_data" / "lidc-idri-0003"

pytestmark = pytest.mark.usefixtures("isolated_cli")


def series_into(study_uid: str, sources: list[Path], folder: Path, number: int, *, side: int | None = None,
                description: str = "") -> list[Path]:
    """``sources`` as series ``number`` of study ``study_uid`` (new UIDs); ``side``: the pixels
    replaced by a ``side``² image."""
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study_uid, series_uid, number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName, ds.StudyDate = "PREREAD-SERIES", "Series^Test", "20000101"
        ds.SeriesDescription = description
        if side is not None:
            ds.Rows = ds.Columns = side
            ds.PixelData = np.full((side, side), 40, dtype=np.int16).tobytes()
        paths.append(folder / f"{number}-{index:02d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_every_image_series_is_searched_and_one_too_large_is_passed_over(own_pacs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOUPE_MAX_FRAME_PIXELS", str(600 * 600))
    study_uid = generate_uid()
    axial = series_into(study_uid, sorted(SAMPLE.glob("*.dcm")), tmp_path / "a", 2, description="Axial lung")
    single = series_into(study_uid, [pydicom_file("CT_small.dcm")], tmp_path / "b", 3, description="Scout")
    large = series_into(study_uid, [pydicom_file("CT_small.dcm")], tmp_path / "c", 4, side=1024,
                        description="Large")
    own_pacs.seed(axial + single + large)

    row, turn, findings, studies, session = preread_turn(capsys, study_uid)
    assert row["instances"] == len(axial) + 2  # every image instance counts in the job's key
    assert "assessments: #2 CT Axial lung" in row["note"] and "#3 CT Scout" in row["note"]
    assert "series not analysed: Series #4 CT Large" in row["note"] and "LOUPE_MAX_FRAME_PIXELS" in row["note"]
    assert len(studies) == 2  # both series kept with the session, to be reopened
    assert {f["study_id"] for f in findings} == {s.study_id for s in studies}  # findings on each
    searches = [call for call in turn.tool_calls if call.name == "detect_anomalies"]
    assert [call.args for call in searches] == [{"all_frames": True}, {"all_frames": False}]
    answer = turn.texts[0]
    assert "searched the study's 2 image series" in answer and "- #2 CT Axial lung" in answer
    assert "- #3 CT Scout" in answer and "The draft is of series #2 CT Axial lung" in answer
    top = max(findings, key=lambda f: f["confidence"])
    assert row["top_finding"]["id"] == top["id"]
    assert session.state["current_study_id"] == top["study_id"]  # the draft's series is the one shown
