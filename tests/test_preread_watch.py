"""When a study counts as arrived: its instance count unchanged for the quiet time."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from agent.preread.arrivals import ArrivalTracker
from agent.preread.ledger import PrereadLedger
from agent.preread.priority import _priority_in, priority_of
from agent.preread.runner import LocalDispatcher
from agent.preread.watch import PacsWatch, Watermark
from agent.settings import LoupeSettings
from tests.conftest import preread_settings, pydicom_file, run_cli


def test_a_study_arriving_in_two_halves_is_handed_on_once_after_it_is_whole():
    tracker = ArrivalTracker(stable_s=60)
    assert not tracker.observe("1.2.3", 50, now=0)  # first seen: how long it has been quiet is unknown
    assert not tracker.observe("1.2.3", 50, now=30)  # not quiet long enough
    assert not tracker.observe("1.2.3", 100, now=59)  # the second half: the wait starts again
    assert not tracker.observe("1.2.3", 100, now=100)
    assert tracker.waiting() == ["1.2.3"]
    assert tracker.observe("1.2.3", 100, now=119)
    tracker.handed_on("1.2.3", 100)
    assert not tracker.observe("1.2.3", 100, now=500)  # handed on at this count: not again
    assert tracker.waiting() == []


def test_a_new_series_makes_the_study_wait_again_and_be_handed_on_at_its_new_count():
    tracker = ArrivalTracker(stable_s=10)
    tracker.observe("9", 3, now=0)
    assert tracker.observe("9", 3, now=10)
    tracker.handed_on("9", 3)
    assert not tracker.observe("9", 4, now=11)  # Loupe's SR, or a late series
    assert tracker.observe("9", 4, now=21)


def test_without_a_quiet_time_a_study_is_handed_on_when_first_seen():
    tracker = ArrivalTracker(stable_s=0)
    assert tracker.observe("7", 2, now=0)


# -- following a real Orthanc ---------------------------------------------------------------------



SAMPLE = Path(__file__).parents[1] / "agent" / "sample_data" / "lidc-idri-0003"
SLICES = sorted(SAMPLE.glob("*.dcm"))
#: A day after the sample's Study Date (20000101): the polls of that day sweep it.
ACQUIRED = date(2000, 1, 2)


def loupe_sr_in(study_file: Path, tmp_path: Path) -> Path:
    """An SR stored into the study, as Loupe stores its report."""
    sr = pydicom.dcmread(pydicom_file("test-SR.dcm"))
    study = pydicom.dcmread(study_file, stop_before_pixels=True)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyID", "AccessionNumber"):
        if keyword in study:
            setattr(sr, keyword, getattr(study, keyword))
    sr.SeriesInstanceUID, sr.SOPInstanceUID = generate_uid(), generate_uid()
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    path = tmp_path / "loupe-sr.dcm"
    sr.save_as(path)
    return path


def test_a_study_arriving_in_two_halves_is_preread_once_after_it_is_whole_and_its_sr_makes_no_job(
        own_pacs, tmp_path, monkeypatch):
    monkeypatch.setenv("LOUPE_PREREAD_STABLE_S", "60")
    monkeypatch.setenv("LOUPE_PREREAD_STAT_MODALITIES", "CT")
    settings = LoupeSettings()
    ledger = PrereadLedger(settings)
    try:
        watcher = PacsWatch(settings, ledger, LocalDispatcher(settings))
        own_pacs.seed(SLICES[:5])
        assert watcher.poll(now=0, today=ACQUIRED) == []
        own_pacs.seed(SLICES[5:])  # the second half, within the quiet time
        assert watcher.poll(now=30, today=ACQUIRED) == []
        assert ledger.status() == []
        [handed] = watcher.poll(now=100, today=ACQUIRED)  # quiet for 70 s: arrived, whole
        assert handed.priority == "stat" and handed.enqueued.created
        [job] = ledger.status()
        assert (job["instances"], job["state"], job["priority"]) == (len(SLICES), "done", "stat")

        own_pacs.seed([loupe_sr_in(SLICES[0], tmp_path)])  # Loupe's own report stored into the study
        assert watcher.poll(now=200, today=ACQUIRED) == []
        [again] = watcher.poll(now=300, today=ACQUIRED)  # stable again (as Orthanc would say), but the same job key
        assert not again.enqueued.created and again.enqueued.message.startswith("already done")
        assert len(ledger.status()) == 1 and ledger.job(job["job_id"])["run"] == 1
    finally:
        ledger.close()


def test_the_watermark_is_kept_and_moves_on_never_back(own_pacs):
    settings = LoupeSettings()
    mark = Watermark(settings)
    assert mark.range_for(date(2026, 12, 6)) == "20261203-"  # three days back by default
    mark.advance(date(2026, 12, 6))
    later = Watermark(settings)  # a restart reads it back
    assert later.since == date(2026, 12, 3)
    later.advance(date(2026, 12, 1))
    assert Watermark(settings).since == date(2026, 12, 3)
    later.advance(date(2026, 12, 20), waiting=[date(2026, 12, 10)])  # a study still arriving holds it back
    assert Watermark(settings).since == date(2026, 12, 10)


def test_stat_by_description_pattern_and_a_bad_pattern_is_one_sentence(monkeypatch):
    from agent.pacs.search import StudyMatch
    from tools.errors import LoupeError

    match = StudyMatch(study_uid="1.2", study_date="20261206", modalities=["MR"], description="Stroke protocol",
                       series=1, instances=20, accession="", patient_name="", patient_id="")
    monkeypatch.setenv("LOUPE_PREREAD_STAT_PATTERN", "(?i)stroke|trauma")
    assert priority_of(LoupeSettings(), match).level == "stat"
    monkeypatch.setenv("LOUPE_PREREAD_STAT_PATTERN", "(?i)trauma")
    assert priority_of(LoupeSettings(), match).level == "routine"
    monkeypatch.setenv("LOUPE_PREREAD_STAT_PATTERN", "(unclosed")
    with pytest.raises(LoupeError, match="not a regular expression"):
        priority_of(LoupeSettings(), match)


def sr_only_study(tmp_path: Path) -> Path:
    """A study holding only an SR, with a Study Date (pydicom's has none)."""
    sr = pydicom.dcmread(pydicom_file("test-SR.dcm"))
    sr.StudyDate = "20000102"
    path = tmp_path / "sr-only.dcm"
    sr.save_as(path)
    return path


def test_loupe_preread_watch_once_prereads_what_has_arrived(own_pacs, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LOUPE_PREREAD_STABLE_S", "0")
    own_pacs.seed(SLICES + [sr_only_study(tmp_path)])
    code, out, err = run_cli(capsys, "preread", "watch", "--once", "--since", "19900101", "--interval", "0.2")
    assert code == 0, err
    assert "arrived (routine): queued" in out and "not queued:" in out and "holds no images" in out
    code, out, err = run_cli(capsys, "preread", "status", "--json")
    [row] = json.loads(out)
    assert row["state"] == "done" and row["instances"] == len(SLICES)
    code, out, err = run_cli(capsys, "preread", "watch", "--once", "--interval", "0.2")  # the watermark was kept
    assert code == 0 and "arrived" not in out


# -- the order's own priority ---------------------------------------------------------------------


def test_the_requested_procedure_priority_is_read_at_the_top_or_in_the_request_attributes():
    def element(value: str) -> dict:
        return {"00401003": {"vr": "SH", "Value": [value]}}

    assert _priority_in(element("stat ")) == "STAT"
    assert _priority_in({"00400275": {"vr": "SQ", "Value": [{}, element("HIGH")]}}) == "HIGH"
    assert _priority_in({"00400275": {"vr": "SQ", "Value": []}}) is None
    assert _priority_in({"00401003": {"vr": "SH"}}) is None  # present, empty


def ordered_study(tmp_path: Path, priority: str | None, *, in_request: bool = False) -> tuple[str, list[Path]]:
    """The sample's slices as a new study whose images carry ``priority`` as their Requested
    Procedure Priority (at the top level, or in the Request Attributes Sequence)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    folder = tmp_path / study_uid
    folder.mkdir()
    paths = []
    for index, source in enumerate(SLICES[:3]):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if priority is not None and in_request:
            item = pydicom.Dataset()
            item.RequestedProcedureID, item.RequestedProcedurePriority = "RP1", priority
            ds.RequestAttributesSequence = [item]
        elif priority is not None:
            ds.RequestedProcedurePriority = priority
        path = folder / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


def test_a_study_ordered_stat_is_preread_as_stat(own_pacs, tmp_path, monkeypatch):
    monkeypatch.setenv("LOUPE_PREREAD_STABLE_S", "0")
    monkeypatch.setenv("LOUPE_PREREAD_STAT_PRIORITIES", "STAT, HIGH")
    studies = {"stat": ordered_study(tmp_path, "STAT"), "high": ordered_study(tmp_path, "HIGH", in_request=True),
               "routine": ordered_study(tmp_path, "ROUTINE"), "unsaid": ordered_study(tmp_path, None)}
    for _, paths in studies.values():
        own_pacs.seed(paths)
    settings = LoupeSettings()
    ledger = PrereadLedger(settings)
    try:
        handed = PacsWatch(settings, ledger, LocalDispatcher(settings)).poll(now=0, today=ACQUIRED)
    finally:
        ledger.close()
    priorities = {h.study_uid: h.priority for h in handed}
    assert {name: priorities[uid] for name, (uid, _) in studies.items()} == {
        "stat": "stat", "high": "stat", "routine": "routine", "unsaid": "routine"}


def test_loupe_preread_study_takes_the_orders_priority_unless_told(own_pacs, tmp_path, capsys, monkeypatch):
    stat_uid, paths = ordered_study(tmp_path, "STAT")
    routine_uid, more = ordered_study(tmp_path, "ROUTINE")
    own_pacs.seed(paths + more)
    assert run_cli(capsys, "preread", "study", f"pacs:{stat_uid}")[0] == 0
    assert run_cli(capsys, "preread", "study", f"pacs:{routine_uid}", "--priority", "stat")[0] == 0
    code, out, _ = run_cli(capsys, "preread", "status", "--json")
    assert {row["study_uid"]: row["priority"] for row in json.loads(out)} == {stat_uid: "stat", routine_uid: "stat"}
    monkeypatch.setenv("LOUPE_PREREAD_STAT_PRIORITIES", "")  # a site that does not trust the order's priority
    other_uid, others = ordered_study(tmp_path, "STAT")
    own_pacs.seed(others)
    assert run_cli(capsys, "preread", "study", f"pacs:{other_uid}")[0] == 0
    code, out, _ = run_cli(capsys, "preread", "status", "--json")
    assert {row["study_uid"]: row["priority"] for row in json.loads(out)}[other_uid] == "routine"


# -- Orthanc's changes feed ----------------------------------------------------------------------


def test_orthancs_stable_study_is_handed_on_without_the_quiet_time(monkeypatch, tmp_path):
    """StableStudy on the feed hands the study on at once (Loupe's own quiet time is an hour
    here); Loupe's SR makes Orthanc announce it again, and the ledger says "already done"; a
    restarted watcher reads on from the place it kept."""
    import time

    from tests.orthanc import OrthancServer, orthanc_installed

    if not orthanc_installed():
        if os.environ.get("CI"):
            pytest.fail("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        pytest.skip("Orthanc is not installed")
    with OrthancServer(stable_age_s=1) as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        preread_settings(monkeypatch, tmp_path / "data")
        monkeypatch.setenv("LOUPE_PREREAD_STABLE_S", "3600")
        monkeypatch.setenv("LOUPE_PREREAD_ORTHANC_URL", server.url)
        settings = LoupeSettings()
        ledger = PrereadLedger(settings)

        def poll_until_handed(watcher: PacsWatch, timeout_s: float = 20.0) -> list:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                handed = watcher.poll(today=ACQUIRED)
                if handed:
                    return handed
                time.sleep(0.3)
            raise AssertionError("Orthanc announced no stable study")

        try:
            watcher = PacsWatch(settings, ledger, LocalDispatcher(settings))
            assert watcher.poll(today=ACQUIRED) == []  # the feed's place is set at its end
            server.seed(SLICES)
            [handed] = poll_until_handed(watcher)
            assert handed.enqueued.created and ledger.job(handed.enqueued.job_id)["state"] == "done"

            server.seed([loupe_sr_in(SLICES[0], tmp_path)])  # Loupe's report: Orthanc calls the study stable again
            [again] = poll_until_handed(watcher)
            assert again.study_uid == handed.study_uid and not again.enqueued.created
            assert again.enqueued.message.startswith("already done")

            restarted = PacsWatch(settings, ledger, LocalDispatcher(settings))
            time.sleep(1.5)
            assert restarted.poll(today=ACQUIRED) == []  # nothing new on the feed; the sweep waits its hour
            assert len(ledger.status()) == 1
        finally:
            ledger.close()
