"""The worklist (issue 26): pre-read studies in reading order, and a clinician's own session
opened from a pre-read as a copy of it (``Store.copy_session``), against a real Orthanc and the
real pre-read (``loupe preread study``, no broker), on SQLite; the store copy also on PostgreSQL."""

from __future__ import annotations

import os
from datetime import timedelta

import pydicom
import pytest

from agent.conversation import Conversation
from agent.models.planner import OfflinePlanner
from agent.preread.job import PREREAD_OWNER
from agent.preread.ledger import JobKey, PrereadError, PrereadLedger, utc_now
from agent.preread.worklist import copy_id, open_preread, worklist
from agent.settings import LoupeSettings
from agent.store.database import StoreError
from agent.workspace import findings_table, replay
from tests.conftest import pydicom_file, run_cli

pytestmark = pytest.mark.usefixtures("isolated_cli")

CT_SMALL = pydicom.dcmread(pydicom_file("CT_small.dcm"), stop_before_pixels=True).StudyInstanceUID
MR_SMALL = pydicom.dcmread(pydicom_file("MR_small.dcm"), stop_before_pixels=True).StudyInstanceUID


def finished(ledger: PrereadLedger, uid: str, priority: str, confidence: float | None, *,
             queued_minutes_ago: float = 0) -> int:
    job_id = ledger.enqueue(JobKey(uid, 10), priority).job_id
    assert ledger.claim(job_id, "w", 60)
    top = None if confidence is None else {"id": "F1", "label": "nodule", "confidence": confidence, "slice": 3}
    assert ledger.finish(job_id, "w", session_id=f"s-{uid}", findings=int(confidence is not None),
                         anomaly_found=confidence is not None, top_finding=top)
    if queued_minutes_ago:
        from sqlalchemy import update
        from sqlalchemy.orm import Session

        from agent.store.database import PrereadJobRow

        with Session(ledger.engine) as db, db.begin():
            db.execute(update(PrereadJobRow).where(PrereadJobRow.id == job_id).values(
                queued_at=utc_now() - timedelta(minutes=queued_minutes_ago)))
    return job_id


def test_order_is_stat_then_strength_then_arrival_and_filters(tmp_path):
    settings = LoupeSettings(_env_file=None, data_dir=tmp_path / "data")
    ledger = PrereadLedger(settings)
    weak_old = finished(ledger, "1.1", "routine", 0.40, queued_minutes_ago=90)
    strong = finished(ledger, "1.2", "routine", 0.95, queued_minutes_ago=5)
    stat_weak = finished(ledger, "1.3", "stat", 0.20, queued_minutes_ago=1)
    weak_new = finished(ledger, "1.4", "routine", 0.40, queued_minutes_ago=2)
    nothing = finished(ledger, "1.5", "routine", None, queued_minutes_ago=300)
    queued = ledger.enqueue(JobKey("1.6", 5)).job_id
    ledger.close()

    rows = worklist(settings)
    assert [r.job_id for r in rows] == [stat_weak, strong, weak_old, weak_new, nothing, queued]
    first = rows[0]
    assert (first.priority, first.state, first.findings) == ("stat", "done", 1)
    assert first.top_finding == "nodule · 0.20 · slice 3" and first.since_arrival == "1 min"
    assert rows[2].since_arrival == "1 h" and rows[4].top_finding == "" and rows[4].since_arrival == "5 h"
    assert rows[-1].state == "queued" and not rows[-1].openable and rows[0].openable
    assert [r.job_id for r in worklist(settings, state="queued")] == [queued]
    assert [r.job_id for r in worklist(settings, state="done")][:1] == [stat_weak]
    assert worklist(settings, modality="CT") == []  # no pre-read session, so no modality known


# -- against a real Orthanc and the real pre-read ---------------------------------------------------


def preread(capsys, uid: str, *extra: str) -> None:
    code, out, err = run_cli(capsys, "preread", "study", f"pacs:{uid}", *extra)
    assert code == 0 and "done" in out, (out, err)


def snapshot(store, session_id: str) -> dict:
    return {"row": (lambda r: (r.owner, r.title, r.version, r.state))(store.session_row(session_id, PREREAD_OWNER)),
            "history": store.history(session_id), "events": store.events(session_id),
            "findings": sorted(store.findings(session_id), key=lambda f: f["id"]),
            "reports": [(r.study_id, r.version, r.status, r.data) for r in store.report_versions(session_id)],
            "calls": [(c.name, c.args, c.result) for c in store.tool_calls(session_id)],
            "studies": [(s.study_id, s.storage) for s in store.studies(session_id)]}


def test_open_a_preread_makes_the_clinicians_own_copy(preread_env, capsys):
    preread(capsys, CT_SMALL)
    preread(capsys, MR_SMALL, "--priority", "stat")
    settings = LoupeSettings()
    rows = worklist(settings)
    assert [r.study_uid for r in rows] == [MR_SMALL, CT_SMALL]  # STAT first
    ct = rows[1]
    assert (ct.state, ct.modality, ct.openable) == ("done", "CT", True) and ct.description
    assert [r.study_uid for r in worklist(settings, modality="ct")] == [CT_SMALL]
    assert [r.study_uid for r in worklist(settings, modality="MR", state="done")] == [MR_SMALL]

    from agent.store.database import Store

    store = Store.for_data_dir(settings.data_dir)
    before = snapshot(store, ct.session_id)
    opened = open_preread(settings, store, ct.job_id, "dr-a")
    new_id = opened.session_id
    assert new_id == copy_id(ct.session_id, "dr-a") != ct.session_id
    assert store.exists(new_id, "dr-a") and not store.exists(new_id, PREREAD_OWNER)
    assert [s.id for s in store.list_sessions("dr-a")] == [new_id]
    assert store.list_sessions("dr-a")[0].title.startswith("CT") and "pre-read" in store.list_sessions("dr-a")[0].title
    # the same findings, report versions, figures and turn: nothing recomputed
    copied = snapshot_of = {"findings": sorted(store.findings(new_id), key=lambda f: f["id"]),
                            "reports": [(r.study_id, r.version, r.status, r.data) for r in store.report_versions(new_id)],
                            "calls": [(c.name, c.args, c.result) for c in store.tool_calls(new_id)],
                            "history": store.history(new_id), "events": store.events(new_id)}
    for key, value in snapshot_of.items():
        assert value == before[key], key
    assert copied["reports"] and copied["reports"][0][2] == "draft"
    assert {f.id for f in opened.ctx.findings.values()} == {f["id"] for f in before["findings"]}
    assert findings_table(opened) == findings_table(Conversation.resume(settings, store, ct.session_id,
                                                                        PREREAD_OWNER))
    [turn] = replay(store, new_id)
    assert turn.tool_calls[0].name == "detect_anomalies" and any(c.images for c in turn.tool_calls)
    # the study bytes: the clinician's own, under their session's folder (deleting either keeps the other's)
    [(study_id, storage)] = [(s.study_id, s.storage) for s in store.studies(new_id)]
    assert storage.startswith(f"sessions/{new_id}/") and study_id == before["studies"][0][0]
    source_files = sorted((settings.data_dir / before["studies"][0][1]).iterdir())
    copy_files = sorted((settings.data_dir / storage).iterdir())
    assert [f.name for f in copy_files] == [f.name for f in source_files]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(source_files, copy_files, strict=True))
    # audited, for the clinician
    actions = [a.action for a in store.audit_rows(session_id=new_id, actor="dr-a")]
    assert "session_copied" in actions and "preread_opened" in actions

    # "what did you find?" is answered from the stored findings: no detector run in the new session
    calls_before = len(store.tool_calls(new_id))
    events = list(opened.ask("What did you find?", OfflinePlanner()))
    assert not any(e.kind == "tool_started" and e.name == "detect_anomalies" for e in events)
    answer = " ".join(e.text for e in events if e.kind == "assistant_text")
    assert "nothing was run again" in answer and "Report version 1 (draft)" in answer
    assert [c.name for c in store.tool_calls(new_id)[calls_before:]].count("detect_anomalies") == 0
    opened.ctx.close()

    # the pre-read session is unchanged and still no clinician's
    assert snapshot(store, ct.session_id) == before
    assert store.list_sessions(PREREAD_OWNER) and all(s.owner == PREREAD_OWNER
                                                      for s in store.list_sessions(PREREAD_OWNER))

    # opened again by the same clinician: their copy (with their question), not a second one
    again = open_preread(settings, store, ct.job_id, "dr-a")
    assert again.session_id == new_id and again.turns == 2
    again.ctx.close()
    # another clinician gets a copy of their own, from the untouched pre-read
    other = open_preread(settings, store, ct.job_id, "dr-b")
    assert other.session_id not in (new_id, ct.session_id) and other.turns == 1
    other.ctx.close()

    # the clinician's copy survives the pre-read session being replaced (a forced re-run)
    store.delete(ct.session_id, PREREAD_OWNER)
    assert not (settings.data_dir / before["studies"][0][1]).exists()
    resumed = Conversation.resume(settings, store, new_id, "dr-a")
    assert {f.id for f in resumed.ctx.findings.values()} == {f["id"] for f in before["findings"]}
    resumed.ctx.close()
    with pytest.raises(PrereadError, match="gone"):
        open_preread(settings, store, ct.job_id, "dr-c")
    store.close()


def test_a_job_not_done_cannot_be_opened(tmp_path):
    settings = LoupeSettings(_env_file=None, data_dir=tmp_path / "data")
    ledger = PrereadLedger(settings)
    job_id = ledger.enqueue(JobKey("1.2.3", 4)).job_id
    with pytest.raises(PrereadError, match="queued, not done"):
        open_preread(settings, ledger.store, job_id, "dr-a")
    with pytest.raises(PrereadError):
        open_preread(settings, ledger.store, job_id, PREREAD_OWNER)
    ledger.close()


# -- the store copy itself (SQLite and PostgreSQL) --------------------------------------------------


def test_copy_session_copies_every_row_in_one_go(store, tmp_path):
    settings = LoupeSettings(_env_file=None, data_dir=store.data_dir)
    source = Conversation.start(settings, pydicom_file("CT_small.dcm"), store=store, owner=PREREAD_OWNER)
    list(source.ask("Analyse this scan", OfflinePlanner()))
    list(source.ask("Draft a report", OfflinePlanner()))
    source.ctx.close()
    sid = source.session_id
    assert store.findings(sid) and store.report_versions(sid)
    store.copy_session(sid, PREREAD_OWNER, "copy-1", "dr-a", "copied")
    for read in (store.history, store.events, store.findings):
        assert read("copy-1") == read(sid)
    assert ([(r.version, r.data) for r in store.report_versions("copy-1")]
            == [(r.version, r.data) for r in store.report_versions(sid)])
    assert [(c.name, c.result) for c in store.tool_calls("copy-1")] == [(c.name, c.result) for c in store.tool_calls(sid)]
    assert store.session_row("copy-1", "dr-a").state == store.session_row(sid, PREREAD_OWNER).state
    [study] = store.studies("copy-1")
    linked = next((store.data_dir / study.storage).iterdir())
    original = next((store.data_dir / store.studies(sid)[0].storage).iterdir())
    assert linked.read_bytes() == original.read_bytes()
    assert os.stat(linked).st_ino == os.stat(original).st_ino  # a hard link: no second copy on disk
    with pytest.raises(StoreError):  # the id is taken
        store.copy_session(sid, PREREAD_OWNER, "copy-1", "dr-b", "again")
    with pytest.raises(StoreError):  # not the source owner's session
        store.copy_session(sid, "dr-a", "copy-2", "dr-b", "again")
    # two tabs copying under one id at the same moment: one copy, the other told in one sentence
    import threading

    start, outcomes = threading.Barrier(2), []

    def copy() -> None:
        start.wait()
        try:
            outcomes.append(store.copy_session(sid, PREREAD_OWNER, "copy-3", "dr-a", "raced"))
        except StoreError as error:
            outcomes.append(error.message)

    threads = [threading.Thread(target=copy) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("copy-3") == 1 and store.findings("copy-3") == store.findings(sid)
    [raced] = store.studies("copy-3")
    assert sorted(p.name for p in (store.data_dir / raced.storage).iterdir()) == [original.name]

    store.delete(sid, PREREAD_OWNER)
    resumed = Conversation.resume(settings, store, "copy-1", "dr-a")
    assert resumed.ctx.findings and resumed.ctx.reports
    resumed.ctx.close()


def test_what_did_you_find_searches_a_study_not_searched_yet(tmp_path):
    """Only a study with findings stored is answered from them; before any search, it is searched."""
    from agent.models.planner import classify

    assert classify("What did you find?") == ["recap"] and classify("what did you find on slice 3")[-1] == "recap"
    settings = LoupeSettings(_env_file=None, data_dir=tmp_path / "data")
    conversation = Conversation.start(settings, pydicom_file("CT_small.dcm"))
    events = list(conversation.ask("What did you find?", OfflinePlanner()))
    assert any(e.kind == "tool_started" and e.name == "detect_anomalies" for e in events)
    again = list(conversation.ask("What did you find?", OfflinePlanner()))
    assert not any(e.kind == "tool_started" for e in again)
    assert "nothing was run again" in next(e.text for e in again if e.kind == "assistant_text")
    conversation.ctx.close()


def test_twenty_clinicians_opening_pre_reads_at_once_on_one_app_store(preread_env, capsys):
    """The app serves every browser session from one process and one store: opening pre-reads
    from many threads at once must work (a ledger opened per call migrated the database each
    time, and Alembic's module state is not thread-safe: bench/bench_preread.py's burst)."""
    from concurrent.futures import ThreadPoolExecutor

    from agent.store.database import Store

    preread(capsys, CT_SMALL)
    settings = LoupeSettings()
    [row] = worklist(settings)
    store = Store.for_data_dir(settings.data_dir)

    def open_as(index: int) -> int:
        opened = open_preread(settings, store, row.job_id, f"dr-{index}")
        try:
            return len(opened.ctx.findings)
        finally:
            opened.ctx.close()

    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            found = list(pool.map(open_as, range(20)))
    finally:
        store.close()
    assert len(found) == 20 and all(count == found[0] for count in found) and found[0] > 0
