"""A pre-read with a model backend configured (Gemini, through the real SDK, against the fake
server on 127.0.0.1): the vision model is asked about the slice the series search found most
suspicious — one slice, never the series — when the privacy boundary releases the pixels, and
not at all when it holds them; nothing identifying crosses either way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
import pytest
from pydicom.uid import generate_uid

from agent.preread.job import PREREAD_OWNER
from agent.preread.ledger import PrereadLedger
from agent.settings import LoupeSettings
from agent.store.database import Store
from agent.workspace import replay
from tests.fake_gemini import error_reply, text_reply
from tests.conftest import run_cli
from tests.test_privacy import SEEDED, phi_values

SAMPLE = Path(__file__).parents[1] / "agent" / "sample_data" / "lidc-idri-0003"
#: The sample's nodule (slice 6 of 10, x 354–379, y 338–363 of 512²) as box_2d [ymin, xmin, ymax, xmax].
NODULE_BOX_2D = [660, 692, 708, 740]

pytestmark = pytest.mark.usefixtures("isolated_cli")


@pytest.fixture
def gemini_env(fake, monkeypatch):
    monkeypatch.setenv("LOUPE_GEMINI_API_KEY", "test-key")
    monkeypatch.setenv("LOUPE_BACKEND", "gemini")
    monkeypatch.setenv("LOUPE_RETRY_INITIAL_S", "0.01")
    return fake


def phi_study(folder: Path, burned_in: str | None) -> tuple[str, list[Path]]:
    """The sample series as a new study with identifying values in every header (and, when
    given, its BurnedInAnnotation)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    folder.mkdir()
    paths = []
    for index, source in enumerate(sorted(SAMPLE.glob("*.dcm"))):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in SEEDED.items():
            setattr(ds, keyword, value)
        if burned_in is not None:
            ds.BurnedInAnnotation = burned_in
        paths.append(folder / f"{index:02d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return study_uid, paths


def proposals_or_error(request) -> dict:
    """Boxes for a request that carries an image and asks for JSON (a detection request); a
    server error for anything else (the report's wording: the template is kept)."""
    config = request.body.get("generationConfig") or {}
    if request.images() and config.get("responseMimeType") == "application/json":
        return text_reply(json.dumps([{"box_2d": NODULE_BOX_2D, "label": "pulmonary nodule"}]))
    return error_reply(500)


class Preread(NamedTuple):
    """A study pre-read by ``loupe preread study``: its ledger row, its one turn as the chat
    replays it, and the pre-read session's findings, studies and row."""

    row: dict
    turn: Any
    findings: list[dict]
    studies: list
    session: Any


def preread_turn(capsys, study_uid: str) -> Preread:
    code, out, err = run_cli(capsys, "preread", "study", f"pacs:{study_uid}")
    assert code == 0 and "done:" in out, out + err
    settings = LoupeSettings()
    ledger = PrereadLedger(settings)
    [row] = ledger.status()
    ledger.close()
    store = Store.for_data_dir(settings.data_dir)
    try:
        [turn] = replay(store, row["session_id"])
        return Preread(row, turn, store.findings(row["session_id"]), store.studies(row["session_id"]),
                       store.session_row(row["session_id"], PREREAD_OWNER))
    finally:
        store.close()


def test_the_vision_model_is_asked_about_the_strongest_slice_only(own_pacs, gemini_env, tmp_path, capsys):
    study_uid, paths = phi_study(tmp_path / "released", burned_in="NO")
    own_pacs.seed(paths)
    gemini_env.script(*[proposals_or_error] * 12)
    row, turn, findings, _, _ = preread_turn(capsys, study_uid)

    searches = [call for call in turn.tool_calls if call.name == "detect_anomalies"]
    assert searches[0].args == {"all_frames": True, "use_vision_model": False}  # the series: no model
    assert searches[1].args == {"frame": row["top_finding"]["slice"] - 1}  # then the strongest slice, with it
    images = [r for r in gemini_env.calls() if r.images()]
    assert images and all(len(r.images()) == 1 for r in images)
    assert "vision model was not consulted" not in searches[1].summary
    assert any(f["source"] == "vlm" and f["frame"] == searches[1].args["frame"] for f in findings)
    assert f"Slice {row['top_finding']['slice']} looked at again with the vision model" in turn.texts[0]
    for request in gemini_env.requests:
        sent = request.text()
        assert [value for value in phi_values() if value in sent] == []


def test_held_pixels_are_not_sent_and_the_preread_still_finishes(own_pacs, gemini_env, tmp_path, capsys):
    study_uid, paths = phi_study(tmp_path / "held", burned_in=None)  # not stated: held for a clinician
    own_pacs.seed(paths)
    gemini_env.script(*[proposals_or_error] * 12)
    row, turn, findings, _, _ = preread_turn(capsys, study_uid)
    assert row["state"] == "done" and row["top_finding"] is not None
    assert not any(r.images() for r in gemini_env.requests)
    vision = [call for call in turn.tool_calls if call.name == "detect_anomalies"][-1]
    assert "vision model was not consulted" in vision.summary and "held" in vision.summary
    assert findings and not any(f["source"] == "vlm" for f in findings)
    for request in gemini_env.requests:
        assert [value for value in phi_values() if value in request.text()] == []
