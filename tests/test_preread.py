"""Pre-read (issue 26): the job ledger on SQLite and a real PostgreSQL, the job against a real
Orthanc, the in-process runner, and ``loupe preread`` without a broker. Nothing of Loupe's own
is mocked; the PACS that "cannot be reached" is a closed port."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from agent.conversation import Conversation
from agent.models.planner import OfflinePlanner
from agent.preread.job import PREREAD_OWNER, run_job
from agent.preread.ledger import ANALYSIS_VERSION, MAX_ATTEMPTS, JobKey, PrereadLedger, utc_now
from agent.preread.runner import LocalDispatcher, dispatcher_for
from agent.settings import LoupeSettings
from agent.store.database import PrereadJobRow, Store
from agent.workspace import replay
from tests.browser import free_port
from tests.conftest import EVAL_DIR, run_cli
from tools.normal_wording import normal_study_phrases
from tools.report.document import ClinicalReport
from tools.report.markdown import report_markdown

LIDC_STUDY = "1.3.6.1.4.1.14519.5.2.1.6279.6001.490157381160200744295382098329"
LIDC_SLICES = len(list((EVAL_DIR / "lidc_ct" / "LIDC-IDRI-0002").glob("*.dcm")))  # as the fixture seeds
STATUS_KEYS = {"study_uid", "state", "priority", "findings", "anomaly_found", "top_finding", "queued_at",
               "started_at", "finished_at", "error"}

pytestmark = pytest.mark.usefixtures("isolated_cli")


def settings_for(tmp_path: Path, db_url: str | None = None, **overrides) -> LoupeSettings:
    return LoupeSettings(_env_file=None, data_dir=tmp_path / "data", db_url=db_url, **overrides)


@pytest.fixture
def ledger(tmp_path, db_url):
    opened = PrereadLedger(settings_for(tmp_path, db_url))
    yield opened
    opened.close()


def rows(ledger: PrereadLedger) -> int:
    with Session(ledger.engine) as db:
        return db.scalar(select(func.count()).select_from(PrereadJobRow))


# -- the ledger (SQLite and PostgreSQL) ------------------------------------------------------------


def test_a_duplicate_enqueue_makes_no_second_job(ledger):
    key = JobKey("1.2.3", 40)
    first = ledger.enqueue(key)
    again = ledger.enqueue(JobKey("1.2.3", 40, ANALYSIS_VERSION), "routine")
    assert first.created and first.state == "queued"
    assert not again.created and again.job_id == first.job_id and again.message == "already queued"
    assert rows(ledger) == 1
    grown = ledger.enqueue(JobKey("1.2.3", 41))  # more instances arrived: a new job
    assert grown.created and grown.job_id != first.job_id
    assert [r["instances"] for r in ledger.status()] == [41]  # one row per study: the newest


def test_force_reruns_the_same_row(ledger):
    job_id = ledger.enqueue(JobKey("1.2.3", 40)).job_id
    assert ledger.claim(job_id, "w1", 60)
    assert ledger.finish(job_id, "w1", session_id="s1", findings=2, anomaly_found=True,
                         top_finding={"id": "F1", "label": "nodule", "confidence": 0.9, "slice": 3})
    done = ledger.enqueue(JobKey("1.2.3", 40))
    assert (done.created, done.state, done.job_id) == (False, "done", job_id)
    assert done.message.startswith("already done")
    forced = ledger.enqueue(JobKey("1.2.3", 40), force=True)
    assert (forced.created, forced.state, forced.job_id) == (False, "queued", job_id)
    job = ledger.job(job_id)
    assert (job["run"], job["attempts"], job["state"]) == (2, 0, "queued")
    assert rows(ledger) == 1


def test_two_claims_one_wins(ledger):
    job_id = ledger.enqueue(JobKey("1.2.3", 40)).job_id
    assert ledger.claim(job_id, "w1", 60)
    assert not ledger.claim(job_id, "w2", 60)
    assert ledger.job(job_id)["worker"] == "w1" and ledger.job(job_id)["attempts"] == 1


def test_racing_claims_from_threads_one_wins(tmp_path, db_url):
    settings = settings_for(tmp_path, db_url)
    first = PrereadLedger(settings)
    job_id = first.enqueue(JobKey("1.2.3", 40)).job_id
    ledgers = [PrereadLedger(settings) for _ in range(6)]
    start, won = threading.Barrier(len(ledgers)), []

    def claim(index: int) -> None:
        start.wait()
        if ledgers[index].claim(job_id, f"w{index}", 60):
            won.append(index)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(ledgers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and first.job(job_id)["worker"] == f"w{won[0]}"
    for opened in [first, *ledgers]:
        opened.close()


def test_an_expired_lease_is_listed_and_claimable_again(ledger):
    job_id = ledger.enqueue(JobKey("1.2.3", 40), "stat").job_id
    assert ledger.claim(job_id, "killed", 0.2)
    assert ledger.expired() == []
    time.sleep(0.4)
    assert ledger.expired() == [(job_id, "stat")]
    assert ledger.claim(job_id, "w2", 60)
    assert ledger.expired() == []
    # the first worker comes back: it no longer holds the job, and changes nothing
    assert not ledger.finish(job_id, "killed", session_id="x", findings=0, anomaly_found=False, top_finding=None)
    ledger.fail(job_id, "killed", "late", retry=False)
    assert ledger.job(job_id)["state"] == "running" and ledger.job(job_id)["attempts"] == 2


def test_a_queued_job_whose_message_was_lost_is_listed_after_the_lease(ledger):
    job_id = ledger.enqueue(JobKey("1.2.3", 40)).job_id
    assert ledger.expired() == []
    later = utc_now() + timedelta(seconds=ledger.settings.preread_lease_s + 1)
    assert ledger.expired(later) == [(job_id, "routine")]
    ledger.resubmitted(job_id)
    assert ledger.expired(utc_now() + timedelta(seconds=1)) == []


def test_retry_keeps_attempts_and_a_job_that_keeps_dying_fails(ledger):
    job_id = ledger.enqueue(JobKey("1.2.3", 40)).job_id
    assert ledger.claim(job_id, "w1", 60)
    ledger.fail(job_id, "w1", "The PACS could not be reached.", retry=True)
    job = ledger.job(job_id)
    assert (job["state"], job["attempts"], job["error"]) == ("queued", 1, "The PACS could not be reached.")
    for attempt in range(2, MAX_ATTEMPTS + 1):  # each worker lost mid-job: its lease runs out
        assert ledger.claim(job_id, f"w{attempt}", 0.01)
        time.sleep(0.05)
    assert not ledger.claim(job_id, "w-last", 60)  # lost its worker MAX_ATTEMPTS times
    job = ledger.job(job_id)
    assert job["state"] == "failed" and "3 times" in job["error"]


def test_priority_stat_upgrades_a_queued_job_and_status_lists_stat_first(ledger):
    routine = ledger.enqueue(JobKey("1.2.3", 40)).job_id
    other = ledger.enqueue(JobKey("1.2.4", 10)).job_id
    ledger.enqueue(JobKey("1.2.4", 10), "stat")
    assert [r["job_id"] for r in ledger.status()] == [other, routine]
    assert STATUS_KEYS <= set(ledger.status()[0])


def test_a_new_database_has_the_ledger_and_the_migration_adds_it(tmp_path, db_url):
    store = Store.for_data_dir(tmp_path / "data", db_url)
    with store.engine.connect() as db:
        from sqlalchemy import inspect, text

        assert {"preread_jobs", "preread_chunks"} <= set(inspect(db).get_table_names())
        assert db.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
    store.close()


def test_an_older_database_is_upgraded_with_the_ledger(tmp_path):
    """A database at revision 0002 (made by the Loupe before pre-read) gains the tables in place."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, inspect, text

    import agent.store.database as database

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as connection:
        tables = [t for t in database.Base.metadata.sorted_tables if not t.name.startswith("preread_")]
        database.Base.metadata.create_all(connection, tables=tables)
        config = Config()
        config.set_main_option("script_location", str(Path(database.__file__).with_name("migrations")))
        config.attributes["connection"] = connection
        command.stamp(config, "0002")
    engine.dispose()
    (tmp_path / "data").mkdir()
    store = Store(f"sqlite:///{tmp_path / 'old.db'}", tmp_path / "data")
    with store.engine.connect() as db:
        assert {"preread_jobs", "preread_chunks"} <= set(inspect(db).get_table_names())
        assert db.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
    store.close()


# -- the job and the command, against a real Orthanc -----------------------------------------------


def one_sentence(text: str) -> bool:
    return "\n" not in text and text.endswith(".") and not re.search(r"[.;!?]\s+[A-Z]", text)


def preread_sessions(settings: LoupeSettings) -> list:
    store = Store.for_data_dir(settings.data_dir, settings.db_url)
    try:
        return store.list_sessions(PREREAD_OWNER)
    finally:
        store.close()


def test_preread_study_without_a_broker_runs_it_here_once(preread_env, capsys):
    code, out, err = run_cli(capsys, "preread", "study", f"pacs:{LIDC_STUDY}")
    assert code == 0, err
    assert out.startswith(f"pacs:{LIDC_STUDY}  done:") and len(out.splitlines()) == 1
    settings = LoupeSettings()
    ledger = PrereadLedger(settings)
    [row] = ledger.status()
    ledger.close()
    assert (row["study_uid"], row["state"], row["instances"], row["priority"]) == (LIDC_STUDY, "done",
                                                                                   LIDC_SLICES, "routine")
    assert row["findings"] is not None and row["anomaly_found"] is not None and row["error"] is None
    top = row["top_finding"]
    assert top is not None and set(top) == {"id", "label", "confidence", "slice"} and 1 <= top["slice"] <= LIDC_SLICES
    [session] = preread_sessions(settings)
    assert session.id == row["session_id"] and session.title.startswith("Pre-read · CT")

    # The session is a stored session like a clinician's: its findings, figures and draft come back
    # with nothing recomputed, and "what did you find?" is answered from the stored findings.
    store = Store.for_data_dir(settings.data_dir)
    stored_findings = store.findings(session.id)
    assert stored_findings and any(f["id"] == top["id"] for f in stored_findings)
    [draft] = store.report_versions(session.id)
    report = ClinicalReport.model_validate(draft.data)
    assert draft.status == "draft" and normal_study_phrases(report_markdown(report)) == []
    [turn] = replay(store, session.id)
    names = [call.name for call in turn.tool_calls]
    assert names[0] == "detect_anomalies" and names[-1] == "draft_report" and "render_overlay" in names
    assert turn.tool_calls[0].args == {"all_frames": True}
    assert any(images for call in turn.tool_calls for images in call.images)
    assert turn.finished and turn.texts and "pre-read" in turn.texts[0]
    resumed = Conversation.resume(settings, store, session.id, PREREAD_OWNER)
    assert {f.id for f in resumed.ctx.findings.values()} == {f["id"] for f in stored_findings}
    events = list(resumed.ask("What did you find?", OfflinePlanner()))
    assert not any(e.kind == "tool_started" and e.name == "detect_anomalies" for e in events)
    resumed.ctx.close()
    store.close()

    # asked again: not run again, and said so; still one session
    code, out, _ = run_cli(capsys, "preread", "study", f"pacs:{LIDC_STUDY}")
    assert code == 0 and "already done — not run again (use --force)" in out
    assert [s.id for s in preread_sessions(settings)] == [session.id]

    # forced: the same ledger row, run 2, done again, and the new session replaces the old one
    code, out, err = run_cli(capsys, "preread", "study", f"pacs:{LIDC_STUDY}", "--force", "--priority", "stat")
    assert code == 0, err
    assert "done:" in out
    ledger = PrereadLedger(settings)
    [again] = ledger.status()
    assert (again["job_id"], again["run"], again["state"], again["priority"]) == (row["job_id"], 2, "done", "stat")
    assert rows(ledger) == 1
    ledger.close()
    [replaced] = preread_sessions(settings)
    assert replaced.id == again["session_id"] != session.id

    # status, as JSON and as a table
    code, out, _ = run_cli(capsys, "preread", "status", "--json")
    [listed] = json.loads(out)
    assert code == 0 and STATUS_KEYS <= set(listed) and listed["state"] == "done"
    code, out, _ = run_cli(capsys, "preread", "status")
    assert code == 0 and f"pacs:{LIDC_STUDY}" in out and out.splitlines()[1].startswith("done")


def test_run_job_on_a_done_job_is_skipped_and_makes_nothing(preread_env, tmp_path):
    settings = LoupeSettings()
    ledger = PrereadLedger(settings)
    job_id = ledger.enqueue(JobKey(LIDC_STUDY, LIDC_SLICES)).job_id
    assert run_job(settings, job_id, "w1") == "done"
    assert run_job(settings, job_id, "w2") == "skipped"
    assert len(preread_sessions(settings)) == 1
    ledger.close()


def test_a_pacs_that_cannot_be_reached_is_retried_then_failed(preread_env, monkeypatch, capsys):
    settings = LoupeSettings()
    ledger = PrereadLedger(settings)
    job_id = ledger.enqueue(JobKey(LIDC_STUDY, LIDC_SLICES)).job_id  # asked while the PACS was up
    down = LoupeSettings(dicomweb_url=f"http://127.0.0.1:{free_port()}/dicom-web", dicomweb_retry_attempts=1)
    assert run_job(down, job_id, "w1") == "queued"
    job = ledger.job(job_id)
    assert job["attempts"] == 1 and "could not be reached" in job["error"] and "tried again" in job["error"]
    dispatcher = LocalDispatcher(down, retry_delay_s=0)
    dispatcher.submit(job_id, "routine")
    assert dispatcher.wait() == {job_id: "failed"}
    job = ledger.job(job_id)
    assert (job["state"], job["attempts"]) == ("failed", MAX_ATTEMPTS)
    assert one_sentence(job["error"]) and "could not be reached" in job["error"] and "tried 3 times" in job["error"]
    assert preread_sessions(settings) == []  # nothing half-made is left
    ledger.close()
    code, out, _ = run_cli(capsys, "preread", "status", "--json")
    [listed] = json.loads(out)
    assert listed["state"] == "failed" and listed["error"] == job["error"]


def test_preread_run_takes_every_study_of_the_dates(preread_env, capsys):
    code, out, err = run_cli(capsys, "preread", "run", "--date", "19000101-20991231", "--modality", "MR")
    assert code == 0, err
    ledger = PrereadLedger(LoupeSettings())
    listed = ledger.status()
    ledger.close()
    assert listed and all(r["state"] == "done" for r in listed)
    assert len(out.splitlines()) == len(listed)


def test_a_study_with_no_images_is_refused_in_one_sentence(preread_env, capsys):
    import pydicom

    from tests.conftest import pydicom_file

    sr_only = pydicom.dcmread(pydicom_file("test-SR.dcm"), stop_before_pixels=True).StudyInstanceUID
    code, _, err = run_cli(capsys, "preread", "study", f"pacs:{sr_only}")
    assert code == 2 and err.startswith("error:") and "no images" in err and len(err.splitlines()) == 1


def test_without_a_broker_the_dispatcher_is_local(tmp_path):
    assert isinstance(dispatcher_for(settings_for(tmp_path)), LocalDispatcher)


def test_the_local_process_pool_runs_jobs(preread_env):
    settings = LoupeSettings()
    ledger = PrereadLedger(settings)
    job_id = ledger.enqueue(JobKey(LIDC_STUDY, LIDC_SLICES)).job_id
    dispatcher = LocalDispatcher(settings, max_workers=2)
    try:
        dispatcher.submit(job_id, "routine")
        dispatcher.submit(job_id, "routine")  # a duplicate submission: skipped by its worker
        assert dispatcher.wait() == {job_id: "done"}
    finally:
        dispatcher.close()
    assert ledger.job(job_id)["state"] == "done"
    assert len(preread_sessions(settings)) == 1
    ledger.close()
