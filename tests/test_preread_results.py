"""A pre-read's draft stored in its study (LOUPE_PREREAD_SEND): once, marked preliminary, and a
forced re-run a newer instance of the same series — never a second set."""

from __future__ import annotations

import pydicom
import pytest
import requests

from sqlalchemy import update
from sqlalchemy.orm import Session

from agent.preread.job import run_job
from agent.preread.ledger import JobKey, PrereadLedger
from agent.store.database import PrereadJobRow
from agent.preread.results import derived_uid, kinds_to_send
from agent.settings import LoupeSettings
from tests.conftest import run_cli
from tests.orthanc import PASSWORD, USER
from tests.test_preread_watch import SLICES
from tools.errors import LoupeError


def loupe_series(pacs) -> dict[str, dict]:
    """Description -> {"instances": [Instance Numbers], "uid": Series Instance UID} of the SR/DOC series."""
    found = {}
    for series_id in requests.get(f"{pacs.url}/series", auth=(USER, PASSWORD), timeout=10).json():
        series = requests.get(f"{pacs.url}/series/{series_id}", auth=(USER, PASSWORD), timeout=10).json()
        tags = series["MainDicomTags"]
        if tags.get("Modality") not in ("SR", "DOC"):
            continue
        numbers = []
        for instance_id in series["Instances"]:
            instance = requests.get(f"{pacs.url}/instances/{instance_id}", auth=(USER, PASSWORD), timeout=10).json()
            numbers.append(int(instance["MainDicomTags"]["InstanceNumber"]))
        found[tags.get("SeriesDescription", "")] = {"instances": sorted(numbers), "uid": tags["SeriesInstanceUID"]}
    return found


def test_the_draft_is_stored_once_and_a_forced_rerun_is_a_newer_instance(own_pacs, capsys, monkeypatch):
    monkeypatch.setenv("LOUPE_PREREAD_SEND", "sr,pdf")
    own_pacs.seed(SLICES)
    study_uid = str(pydicom.dcmread(SLICES[0], stop_before_pixels=True).StudyInstanceUID)
    code, out, err = run_cli(capsys, "preread", "study", f"pacs:{study_uid}")
    assert code == 0 and "done:" in out, (out, err)
    first = loupe_series(own_pacs)
    assert set(first) == {"Loupe pre-read: PRELIMINARY automated result (SR)",
                          "Loupe pre-read: PRELIMINARY automated result (PDF)"}
    sr, pdf = (first[f"Loupe pre-read: PRELIMINARY automated result ({k})"] for k in ("SR", "PDF"))
    # The narrative SR is instance 2 (the measurement SR, when there are findings to measure, 1).
    assert sr["instances"] in ([2], [1, 2]) and pdf["instances"] == [1]
    key = JobKey(study_uid, len(SLICES))
    assert sr["uid"] == derived_uid(key.study_uid, key.instances, key.version, "sr")
    ledger = PrereadLedger(LoupeSettings())
    [row] = ledger.status()
    assert "stored in the study as a preliminary result:" in row["note"] and "narrative SR, PDF" in row["note"]

    # A retry of the same run (a worker killed after storing, before the ledger heard) stores the
    # very same instances: the PACS takes them as already stored.
    with Session(ledger.engine) as db, db.begin():
        db.execute(update(PrereadJobRow).where(PrereadJobRow.id == row["job_id"]).values(state="queued"))
    assert run_job(LoupeSettings(), row["job_id"], "retrying-worker") == "done"
    assert loupe_series(own_pacs) == first
    ledger.close()

    # Loupe's own SR and PDF do not count: the same job, "already done".
    code, out, err = run_cli(capsys, "preread", "study", f"pacs:{study_uid}")
    assert "already done" in out and loupe_series(own_pacs) == first

    code, out, err = run_cli(capsys, "preread", "study", f"pacs:{study_uid}", "--force")
    assert code == 0 and "done:" in out, (out, err)
    again = loupe_series(own_pacs)
    assert set(again) == set(first)  # the same two series, a newer instance in each
    newer = [n + 2 for n in sr["instances"]]
    assert again["Loupe pre-read: PRELIMINARY automated result (SR)"] == {"instances": sr["instances"] + newer,
                                                                           "uid": sr["uid"]}
    assert again["Loupe pre-read: PRELIMINARY automated result (PDF)"]["instances"] == [1, 2]


def test_the_send_setting_takes_sr_and_pdf_only():
    assert kinds_to_send("") == [] and kinds_to_send("pdf, SR") == ["sr", "pdf"]
    with pytest.raises(LoupeError, match="takes sr and pdf, not png"):
        kinds_to_send("sr,png")
