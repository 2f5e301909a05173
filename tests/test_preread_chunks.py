"""A long series' search shared out in chunks (``agent.preread.chunks``), without a broker: the
ledger's chunk rows, the job's worker taking over what another worker lost or failed, and a
chunked search finding exactly what a search in one process does. The same with real Celery
workers is in ``test_preread_celery.py``."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from agent.preread.chunks import ChunkLedger, SharedSliceSearch, pieces_of, run_chunk
from agent.preread.ledger import JobKey, PrereadLedger, utc_now
from agent.settings import LoupeSettings
from agent.store.database import PrereadChunkRow
from tools.detection.detector import detect_volume, detection_from_json, detection_json, search_slices
from tools.study import open_study

SAMPLE = Path(__file__).resolve().parent.parent / "agent" / "sample_data" / "lidc-idri-0003"
LEASE_S = 30.0


@pytest.fixture
def settings(tmp_path, db_url) -> LoupeSettings:
    return LoupeSettings(_env_file=None, data_dir=tmp_path / "data", db_url=db_url, preread_chunk_slices=4,
                         preread_lease_s=LEASE_S)


@pytest.fixture
def ledger(settings):
    opened = PrereadLedger(settings)
    yield opened
    opened.close()


@pytest.fixture
def sample():
    with open_study(SAMPLE) as study:
        yield study


def running_job(ledger: PrereadLedger, worker: str = "parent:1") -> dict:
    job_id = ledger.enqueue(JobKey("1.2.826.0.1.3680043.8.498.1", 10)).job_id
    assert ledger.claim(job_id, worker, LEASE_S)
    return ledger.job(job_id)


def shared(settings, ledger, job, study, submit=None, folder: Path = SAMPLE) -> SharedSliceSearch:
    return SharedSliceSearch(settings, ledger, job, job["worker"], submit, {study.id: folder})


def test_pieces_are_consecutive_and_even():
    assert pieces_of(list(range(9)), 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert [len(p) for p in pieces_of(list(range(65)), 64)] == [32, 33]
    assert pieces_of([0, 1, 3, 4], 4) == [[0, 1, 3, 4]]
    assert sum(pieces_of(list(range(300)), 64), []) == list(range(300))


def test_a_detection_survives_json_exactly(sample):
    found = search_slices(sample, [4, 5], 5)
    assert found and [detection_from_json(detection_json(d)) for d in found] == found


def test_a_chunked_search_finds_exactly_what_one_process_finds(settings, ledger, sample):
    job = running_job(ledger)
    search = shared(settings, ledger, job, sample)
    assert detect_volume(sample, limit=5, search=search) == detect_volume(sample, limit=5)
    assert len(search.searched_by) == 3  # ten slices, four at most a chunk: 3 + 4 + 3
    assert search.note() == "series searched in 3 chunks, 0 of them by other workers"
    assert ChunkLedger(ledger.engine, job["job_id"], job["run"]).rows() == []  # removed once merged


def test_a_short_series_is_searched_here_without_chunks(settings, ledger, sample):
    job = running_job(ledger)
    search = shared(settings.model_copy(update={"preread_chunk_slices": 64}), ledger, job, sample)
    assert search(sample, list(range(10)), 5) == search_slices(sample, list(range(10)), 5)
    assert search.note() is None


def test_chunks_are_searched_by_another_worker_and_merged(settings, ledger, sample):
    """A helper answering the submitted chunks (as a Celery worker would) searches some of them;
    every chunk is searched once, and the result is the one-process result."""
    job = running_job(ledger)
    submitted: list[int] = []

    def submit(job_id: int, run: int, chunk: int) -> None:
        submitted.append(chunk)
        threading.Thread(target=run_chunk, args=(settings, job_id, run, chunk, "helper:2")).start()

    search = shared(settings, ledger, job, sample, submit)
    assert detect_volume(sample, limit=5, search=search) == detect_volume(sample, limit=5)
    assert submitted == [0, 1, 2]
    assert set(search.searched_by.values()) <= {"helper:2", "parent:1"}


def test_the_jobs_worker_takes_over_a_chunk_whose_worker_was_lost(settings, ledger, sample):
    job = running_job(ledger)
    chunks = ChunkLedger(ledger.engine, job["job_id"], job["run"])
    frames = list(range(10))
    chunks.plan(str(SAMPLE), 10, pieces_of(frames, 4), 5)
    assert chunks.claim(1, "lost:3", LEASE_S)  # a worker that took chunk 1, then was killed
    assert not chunks.claim(1, "other:4", LEASE_S)  # held: nobody else takes it
    with Session(ledger.engine) as db, db.begin():  # ... until its lease runs out
        db.execute(update(PrereadChunkRow).where(PrereadChunkRow.chunk == 1)
                   .values(lease_expires_at=utc_now() - timedelta(seconds=1)))
    search = shared(settings, ledger, job, sample)
    assert search(sample, frames, 5) == search_slices(sample, frames, 5)
    assert search.searched_by == {(sample.id, chunk): "parent:1" for chunk in range(3)}


def test_a_chunk_that_failed_on_another_worker_is_searched_by_the_jobs_worker(settings, ledger, sample, tmp_path):
    job = running_job(ledger)
    chunks = ChunkLedger(ledger.engine, job["job_id"], job["run"])
    frames = list(range(10))
    elsewhere = tmp_path / "not-mounted-here"
    chunks.plan(str(elsewhere), 10, pieces_of(frames, 4), 5)
    # A worker on a machine that does not see the data folder: the chunk fails there, in one sentence.
    assert run_chunk(settings, job["job_id"], job["run"], 0, "elsewhere:5") == "failed"
    row = chunks.row(0)
    assert row.state == "failed" and row.error and "\n" not in row.error
    search = shared(settings, ledger, job, sample, folder=elsewhere)
    assert search(sample, frames, 5) == search_slices(sample, frames, 5)
    assert search.searched_by[(sample.id, 0)] == "parent:1"


def test_a_chunk_message_for_a_job_not_running_is_skipped(settings, ledger, sample):
    job = running_job(ledger)
    chunks = ChunkLedger(ledger.engine, job["job_id"], job["run"])
    chunks.plan(str(SAMPLE), 10, pieces_of(list(range(10)), 4), 5)
    assert run_chunk(settings, job["job_id"], job["run"] + 1, 0, "helper:2") == "skipped"  # another run
    assert run_chunk(settings, 9999, 1, 0, "helper:2") == "skipped"  # no such job
    assert run_chunk(settings, job["job_id"], job["run"], 0, "helper:2") == "done"
    assert run_chunk(settings, job["job_id"], job["run"], 0, "helper:3") == "skipped"  # searched once
    ledger.fail(job["job_id"], job["worker"], "stopped", retry=False)
    assert run_chunk(settings, job["job_id"], job["run"], 1, "helper:2") == "skipped"  # the job ended


def test_a_retried_attempt_keeps_the_chunks_already_done(settings, ledger, sample):
    job = running_job(ledger)
    chunks = ChunkLedger(ledger.engine, job["job_id"], job["run"])
    pieces = pieces_of(list(range(10)), 4)
    chunks.plan(str(SAMPLE), 10, pieces, 5)
    assert run_chunk(settings, job["job_id"], job["run"], 2, "helper:2") == "done"
    chunks.plan(str(SAMPLE), 10, pieces, 5)  # the job's next attempt plans the same chunks
    assert [row.state for row in chunks.rows()] == ["queued", "queued", "done"]
    chunks.plan("/another/series", 10, pieces, 5)  # the next series of the study, split the same way
    assert [row.state for row in chunks.rows()] == ["queued", "queued", "queued"]  # not the other's results
    ChunkLedger(ledger.engine, job["job_id"], job["run"] + 1).plan(str(SAMPLE), 10, pieces, 5)  # a forced re-run
    assert chunks.rows() == []  # the older run's chunks are gone
