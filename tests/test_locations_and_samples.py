"""Locations in patient terms (radiograph zones, the side from the header or the usual display, or
"unknown"), the whole series searched from the chat, the default sample on which the offline
answer is right, and session titles from the study."""

from __future__ import annotations

import csv

import pydicom
import pytest

from agent.conversation import Conversation
from agent.events import AssistantText, ToolStarted
from agent.models.planner import OfflinePlanner
from agent.samples import DEFAULT_SAMPLE, SAMPLE_DATA, sample_path, session_title
from agent.settings import LoupeSettings
from agent.workspace import open_session
from tests.conftest import pydicom_file
from tools.coordinates import BoxPx
from tools.findings import Finding
from tools.report.location import location_in_words
from tools.study import StudyLimits, open_study


def _at(study, fx: float, fy: float, frame: int = 0) -> Finding:
    x, y = fx * study.safe.columns, fy * study.safe.rows
    return Finding(id="F1", study_id=study.id, label="opacity", frame=frame, center_px=(x, y),
                   bbox_px=BoxPx(x0=x - 2, y0=y - 2, x1=x + 2, y1=y + 2), confidence=0.6, source="classical")


def test_a_chest_radiograph_png_gets_zones_with_the_side_assumed(eval_dir):
    image = sorted((eval_dir / "nih_cxr14").glob("*.png"))[0]
    with open_study(image, limits=StudyLimits(), modality="DX") as study:
        words = location_in_words(study, _at(study, 0.2, 0.8))
        assert words.startswith("right lower zone (lower left part of the image")
        assert "side assumed" in words
        assert location_in_words(study, _at(study, 0.8, 0.2)).startswith("left upper zone")


def test_a_radiograph_header_that_says_the_image_is_flipped_is_followed(tmp_path):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.Modality = "DX"
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient"):
        delattr(ds, keyword)
    ds.PatientOrientation = ["R", "F"]  # the row runs towards the patient's right: flipped
    ds.save_as(tmp_path / "flipped.dcm", enforce_file_format=True)
    with open_study(tmp_path / "flipped.dcm", limits=StudyLimits()) as study:
        words = location_in_words(study, _at(study, 0.2, 0.8))
    assert words == "left lower zone (lower left part of the image)"


def test_cross_sections_give_the_patients_side_and_unknown_sides_say_so(eval_dir):
    with open_study(sample_path("ct-chest-nodule"), limits=StudyLimits()) as study:
        assert location_in_words(study, _at(study, 0.72, 0.68, frame=5)).startswith("patient's left posterior region")
        assert location_in_words(study, _at(study, 0.35, 0.4, frame=5)).startswith("patient's right region")
    with open_study(eval_dir / "busi" / "benign_030.png", limits=StudyLimits(), modality="US") as study:
        words = location_in_words(study, _at(study, 0.2, 0.2))
    assert words.startswith("upper left part of the image (patient's side unknown")


def _turn(conversation: Conversation, message: str) -> tuple[str, list]:
    events = list(conversation.ask(message, OfflinePlanner()))
    return "\n".join(e.text for e in events if isinstance(e, AssistantText)), events


def test_the_default_sample_is_answered_right_offline(eval_dir):
    """Its top finding, on the whole-series search the chat runs, is the nodule the LIDC readers
    outlined on that slice (the manifest's box)."""
    assert DEFAULT_SAMPLE == "ct-chest-nodule" and (SAMPLE_DATA / "lidc-idri-0003" / "ATTRIBUTION.md").exists()
    conversation = Conversation.start(LoupeSettings(_env_file=None), sample_path())
    answer, events = _turn(conversation, "Analyse this scan")
    detect = next(e for e in events if isinstance(e, ToolStarted) and e.name == "detect_anomalies")
    assert detect.args.get("all_frames") is True
    assert "I searched all 10 slices of the series" in answer
    top = max(conversation.ctx.findings.values(), key=lambda f: f.confidence)
    view = conversation.ctx.view()
    assert view.frame == top.frame  # the view moved to the strongest finding's slice
    z = view.study.geometry(top.frame).position_mm[2]
    with open(eval_dir / "manifest.csv", newline="") as handle:
        boxes = [row for row in csv.DictReader(handle) if row["image_path"].startswith("lidc_ct/LIDC-IDRI-0003/")
                 and abs(float(row["image_path"].rsplit("z-", 1)[1][:-4]) - abs(z)) < 0.01]
    assert boxes, "the manifest has the readers' nodule on that slice"
    assert any(float(b["bbox_x0"]) <= top.center_px[0] <= float(b["bbox_x1"])
               and float(b["bbox_y0"]) <= top.center_px[1] <= float(b["bbox_y1"]) for b in boxes)
    assert f"- {top.id}: " in answer and f"on slice {top.frame + 1} of 10, table position" in answer


def test_the_abdominal_mr_sample_stays_selectable():
    assert sample_path("mr-liver").name == "examples_overlay.dcm"


@pytest.mark.parametrize("message", ["Search every slice", "Analyse the whole series", "check all slices"])
def test_all_slices_in_words_searches_a_multiframe_study(message):
    conversation = Conversation.start(LoupeSettings(_env_file=None), pydicom_file("examples_ybr_color.dcm"))
    _, events = _turn(conversation, message)
    detect = next(e for e in events if isinstance(e, ToolStarted) and e.name == "detect_anomalies")
    assert detect.args.get("all_frames") is True


def test_a_new_session_is_titled_after_its_study(tmp_path):
    from agent.store.database import Store

    store = Store.for_data_dir(tmp_path / "data", None)
    try:
        conversation = open_session(LoupeSettings(_env_file=None, data_dir=tmp_path / "data"), store, "ada", None)
        title = next(s.title for s in store.list_sessions("ada") if s.id == conversation.session_id)
    finally:
        store.close()
    assert title == "CT · CHEST · 2000-01-01"
    with open_study(pydicom_file("CT_small.dcm"), limits=StudyLimits()) as study:
        assert session_title(study).startswith("CT · ")
