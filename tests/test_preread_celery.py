"""Pre-read on Celery: a real Redis (tests/redis_service.py), real ``loupe worker`` processes and
a real Orthanc; every job goes through ``run_job`` and the ledger is asked what happened.

Covered: a job submitted through ``CeleryDispatcher`` is done, and submitting it again makes
nothing new; a worker SIGKILLed mid-job (its whole process group) → the other worker's sweeper
submits it again once the lease ran out and that worker finishes it: one ``done`` row, one
pre-read session; Redis restarted empty → the sweeper submits again what it lost; a STAT job
queued after routine ones is started before them; ``loupe worker`` without a broker, or with
one that does not answer, fails with one sentence.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.browser import free_port
from tests.conftest import EVAL_DIR, pydicom_file, run_cli
from tests.worker_process import WorkerProcess

pytestmark = pytest.mark.slow

#: The lease the workers and the ledger use here: a lost job comes back this many seconds later.
LEASE_S = 4
#: How often each worker's sweeper looks for lost jobs.
SWEEP_S = "0.5"
#: A worker whose pool stopped starting jobs ends after this long (``loupe worker --stuck-after``).
STUCK_AFTER_S = "8"
PREREAD_OWNER = "loupe-preread"


def wait_for(what: str, condition: Callable[[], object], timeout_s: float = 30.0, every_s: float = 0.05) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, monkeypatch) -> str:
    """For the tests that take it: the ledger and sessions in the default SQLite file, then again
    in a new database on the test PostgreSQL (``LOUPE_DB_URL``), shared by every worker."""
    if request.param == "postgresql":
        monkeypatch.setenv("LOUPE_DB_URL", request.getfixturevalue("postgres").new_database())
    return request.param


@pytest.fixture
def celery_env(redis, pacs_env, monkeypatch, request):
    """The test process and every worker it starts: this Redis, this Orthanc, this data folder
    (and this PostgreSQL database, for a test that takes ``database``)."""
    if "database" in request.fixturenames:
        request.getfixturevalue("database")  # before any ledger or worker reads LOUPE_DB_URL
    monkeypatch.setenv("LOUPE_BROKER_URL", redis.url)
    monkeypatch.setenv("LOUPE_PREREAD_LEASE_S", str(LEASE_S))
    return redis


@pytest.fixture
def workers(celery_env, tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str, ready: bool = True) -> WorkerProcess:
        worker = WorkerProcess(tmp_path / f"worker-{len(started) + 1}.log", "--sweep-every", SWEEP_S, *args)
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def ledger(celery_env):
    from agent.preread.ledger import PrereadLedger
    from agent.settings import LoupeSettings

    opened = PrereadLedger(LoupeSettings())
    yield opened
    opened.close()


@pytest.fixture
def dispatcher(celery_env):
    from agent.preread.celery_app import CeleryDispatcher
    from agent.preread.runner import dispatcher_for
    from agent.settings import LoupeSettings

    chosen = dispatcher_for(LoupeSettings())
    assert isinstance(chosen, CeleryDispatcher)  # LOUPE_BROKER_URL set: Celery, not the local pool
    yield chosen
    chosen.close()


def seed_study(orthanc, folder: Path, sources: list[Path], copies: int = 1) -> tuple[str, int]:
    """A new study on the PACS made of ``copies`` copies of ``sources`` (new UIDs, the copies
    stacked one after another); its Study Instance UID and number of instances."""
    study_uid, series_uid = generate_uid(), generate_uid()
    originals = [pydicom.dcmread(path) for path in sources]
    positions = [float(ds.ImagePositionPatient[2]) for ds in originals if "ImagePositionPatient" in ds]
    span = (max(positions) - min(positions) + 2.5) if positions else 0.0
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for copy in range(copies):
        for index, original in enumerate(originals):
            ds = original.copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = copy * len(originals) + index + 1
            if "ImagePositionPatient" in ds:
                x, y, z = (float(v) for v in ds.ImagePositionPatient)
                ds.ImagePositionPatient = [x, y, z + copy * span]
            path = folder / f"{len(written):04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    orthanc.seed(written)
    return study_uid, len(written)


def small_study(orthanc, tmp_path: Path) -> tuple[str, int]:
    return seed_study(orthanc, tmp_path / generate_uid(), [pydicom_file("CT_small.dcm")])


def long_study(orthanc, tmp_path: Path) -> tuple[str, int]:
    """A 64-slice CT (as many as the series search takes): a job that runs for seconds, long
    enough to be caught mid-way also on a busy machine."""
    slices = sorted((EVAL_DIR / "lidc_ct" / "LIDC-IDRI-0002").glob("*.dcm"))
    if not slices:
        pytest.skip(f"shared evaluation data not found at {EVAL_DIR}")
    return seed_study(orthanc, tmp_path / generate_uid(), slices, copies=8)


def enqueue(ledger, dispatcher, study: tuple[str, int], priority: str = "routine") -> int:
    from agent.preread.ledger import JobKey

    asked = ledger.enqueue(JobKey(*study), priority)
    assert asked.created
    dispatcher.submit(asked.job_id, priority)
    return asked.job_id


def state_is(ledger, job_id: int, *states: str) -> Callable[[], dict | None]:
    def check() -> dict | None:
        job = ledger.job(job_id)
        return job if job["state"] in states else None
    return check


def preread_sessions(ledger) -> list[str]:
    return [summary.id for summary in ledger.store.list_sessions(PREREAD_OWNER)]


def broker(redis):
    import redis as redis_py

    return redis_py.Redis.from_url(redis.url)


def started_at(ledger, job_ids: list[int]) -> dict[int, object]:
    """When each job was (last) claimed, to the microsecond (the ledger's dicts keep seconds)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from agent.store.database import PrereadJobRow

    with Session(ledger.engine) as db:
        rows = db.execute(select(PrereadJobRow.id, PrereadJobRow.started_at).where(PrereadJobRow.id.in_(job_ids)))
        return {job_id: started for job_id, started in rows}


# -- the tests ------------------------------------------------------------------------------------


def test_a_submitted_job_is_done_and_submitting_it_again_makes_nothing_new(
        database, orthanc, workers, ledger, dispatcher, celery_env, tmp_path):
    from agent.preread.ledger import JobKey

    worker = workers("--concurrency", "1")
    study = small_study(orthanc, tmp_path)
    job_id = enqueue(ledger, dispatcher, study)

    done = wait_for("the job to be done", state_is(ledger, job_id, "done", "failed"))
    assert done["state"] == "done", done["error"]
    assert done["attempts"] == 1 and done["findings"] is not None and done["top_finding"] is not None
    assert worker.owns(int(done["worker"].rsplit(":", 1)[1]))
    assert preread_sessions(ledger) == [done["session_id"]]

    again = ledger.enqueue(JobKey(*study))
    assert (again.job_id, again.created, again.state) == (job_id, False, "done")
    dispatcher.submit(job_id, "routine")  # a duplicate message anyway (a sweeper's, a second trigger's)
    dispatcher.submit(job_id, "stat")
    wait_for("both duplicates to be skipped",
             lambda: worker.text().count(f"pre-read job {job_id}: skipped") == 2, timeout_s=20)
    client = broker(celery_env)
    # the skip is logged inside the task and the message acknowledged after it returns (acks_late)
    wait_for("both duplicates to be acknowledged",
             lambda: (client.llen("routine"), client.llen("stat"), client.hlen("unacked")) == (0, 0, 0),
             timeout_s=20)
    assert ledger.job(job_id) == done  # not claimed, not re-run
    assert preread_sessions(ledger) == [done["session_id"]]
    assert len([row for row in ledger.status() if row["study_uid"] == study[0]]) == 1


def test_a_worker_killed_mid_job_leaves_it_to_the_other_worker(database, orthanc, workers, ledger, dispatcher,
                                                                tmp_path):
    first, second = workers("--concurrency", "1"), workers("--concurrency", "1")
    job_id = enqueue(ledger, dispatcher, long_study(orthanc, tmp_path))

    running = wait_for("the job to start", state_is(ledger, job_id, "running", "done"), every_s=0.01)
    assert running["state"] == "running", "the job finished before it could be caught running"
    holder_pid = int(running["worker"].rsplit(":", 1)[1])
    holder, other = (first, second) if first.owns(holder_pid) else (second, first)
    assert holder.owns(holder_pid)
    killed_at = time.monotonic()
    holder.kill()

    done = wait_for("the other worker to finish the job", state_is(ledger, job_id, "done", "failed"), timeout_s=45)
    assert done["state"] == "done", done["error"]
    assert time.monotonic() - killed_at >= LEASE_S - 1  # taken up again only once the lease ran out
    assert done["attempts"] == 2  # the killed attempt, then the other worker's
    assert other.owns(int(done["worker"].rsplit(":", 1)[1]))
    assert f"pre-read job {job_id}: done" in other.text()
    assert preread_sessions(ledger) == [done["session_id"]]  # the killed attempt's session was removed
    assert [row["state"] for row in ledger.status() if row["job_id"] == job_id] == ["done"]


def test_a_long_series_is_searched_in_chunks_by_both_workers(orthanc, workers, ledger, dispatcher, tmp_path,
                                                               monkeypatch):
    """64 slices in chunks of 4: the job's worker and the other worker each search some of them
    (the job's worker starts at once; the other takes the chunk messages), every chunk once, and
    the findings are those of a search in one process."""
    from agent.pacs.client import PacsConnection
    from agent.pacs.retrieve import retrieve_series
    from agent.settings import LoupeSettings
    from tools.detection.detector import detect_volume
    from tools.study import open_study

    monkeypatch.setenv("LOUPE_PREREAD_CHUNK_SLICES", "4")
    first, second = workers("--concurrency", "1"), workers("--concurrency", "1")
    job_id = enqueue(ledger, dispatcher, long_study(orthanc, tmp_path))
    done = wait_for("the job to be done", state_is(ledger, job_id, "done", "failed"), timeout_s=90)
    assert done["state"] == "done", done["error"]
    assert "series searched in 16 chunks, " in done["note"], done["note"]
    helped = int(done["note"].split("series searched in 16 chunks, ")[1].split(" ")[0])
    assert helped >= 1, done["note"]

    def chunks_logged_done() -> int:  # a task's line is written once it has returned: wait for it
        lines = (first.text() + second.text()).splitlines()
        return sum(f"pre-read job {job_id} chunk " in line and ": done (" in line for line in lines)

    wait_for("the other worker's chunks in its log", lambda: chunks_logged_done() >= helped, timeout_s=10)
    assert chunks_logged_done() == helped  # each chunk searched once
    settings = LoupeSettings()
    folder = retrieve_series(PacsConnection(settings), settings, done["study_uid"]).folder  # the job's copy
    with open_study(folder, limits=settings.study_limits()) as study:
        expected = detect_volume(study, limit=5)
    top = done["top_finding"]
    assert (top["slice"], top["confidence"]) == (expected[0].frame + 1, round(expected[0].confidence, 4))


def test_the_sweeper_submits_again_what_a_broker_restarted_empty_lost(
        orthanc, workers, ledger, dispatcher, celery_env, tmp_path):
    worker = workers("--concurrency", "1")
    busy = enqueue(ledger, dispatcher, long_study(orthanc, tmp_path))
    wait_for("the first job to start", state_is(ledger, busy, "running", "done"), every_s=0.01)
    waiting = enqueue(ledger, dispatcher, small_study(orthanc, tmp_path))
    client = broker(celery_env)
    assert client.llen("routine") == 1  # waiting in Redis: the busy worker holds one job at a time

    celery_env.restart(empty=True)  # the broker comes back with no queue and no unacked message
    assert client.llen("routine") == 0 and client.hlen("unacked") == 0

    for job_id in (busy, waiting):
        done = wait_for(f"job {job_id} to be done", state_is(ledger, job_id, "done", "failed"), timeout_s=45)
        assert done["state"] == "done", done["error"]
    assert ledger.job(waiting)["attempts"] == 1  # submitted again by the sweeper, run once
    assert "pre-read sweeper: submitted again" in worker.text()
    assert len(preread_sessions(ledger)) == 2


def test_a_stat_job_is_started_before_routine_jobs_queued_earlier(orthanc, workers, ledger, dispatcher, celery_env,
                                                                   tmp_path):
    workers("--concurrency", "1")
    # A STAT job keeps the only worker busy (the last queue it took from is `stat`: a worker that
    # took turns between its queues would now take `routine` first).
    busy = enqueue(ledger, dispatcher, long_study(orthanc, tmp_path), priority="stat")
    wait_for("the first job to start", state_is(ledger, busy, "running", "done"), every_s=0.01)
    routine = [enqueue(ledger, dispatcher, small_study(orthanc, tmp_path)) for _ in range(2)]
    stat = enqueue(ledger, dispatcher, small_study(orthanc, tmp_path), priority="stat")
    client = broker(celery_env)
    assert (client.llen("routine"), client.llen("stat")) == (2, 1)  # nothing hoarded by the busy worker

    for job_id in [busy, *routine, stat]:
        done = wait_for(f"job {job_id} to be done", state_is(ledger, job_id, "done", "failed"), timeout_s=45)
        assert done["state"] == "done", done["error"]
    started = started_at(ledger, [busy, *routine, stat])
    order = sorted(started, key=started.get)
    assert order == [busy, stat, *routine], order


class PacsGate:
    """A TCP forwarder to the test PACS on a port of its own: closed, the PACS cannot be reached
    (connection refused); opened, it answers again."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.port = target_port, free_port()
        self.listener: socket.socket | None = None

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_a_pacs_down_then_up_is_retried_one_lease_later(orthanc, celery_env, ledger, dispatcher, tmp_path,
                                                        monkeypatch, request):
    gate = PacsGate(orthanc.http_port)
    request.addfinalizer(gate.close)
    monkeypatch.setenv("LOUPE_DICOMWEB_URL", f"http://127.0.0.1:{gate.port}/dicom-web")
    monkeypatch.setenv("LOUPE_DICOMWEB_RETRY_ATTEMPTS", "1")  # the client's own quick retries: none here
    worker = WorkerProcess(tmp_path / "worker.log", "--sweep-every", SWEEP_S, "--concurrency", "1").wait_ready()
    request.addfinalizer(worker.stop)
    job_id = enqueue(ledger, dispatcher, small_study(orthanc, tmp_path))

    retrying = wait_for("the job to fail once and wait for its retry",
                        lambda: (job := ledger.job(job_id))["state"] in ("queued", "failed", "done")
                        and job["attempts"] == 1 and job["error"] and job)
    assert retrying["state"] == "queued" and "attempt 1 of 3" in retrying["error"], retrying
    failed_at = time.monotonic()
    gate.open()  # the PACS is back

    done = wait_for("the retried job to be done", state_is(ledger, job_id, "done", "failed"), timeout_s=45)
    assert done["state"] == "done", done["error"]
    assert done["attempts"] == 2 and done["error"] is None
    assert time.monotonic() - failed_at >= LEASE_S - 1  # submitted again by the sweeper, one lease later
    assert f"pre-read job {job_id}: queued" in worker.text() and f"pre-read job {job_id}: done" in worker.text()


def test_a_job_that_kills_its_worker_every_time_is_failed_after_three_attempts(
        orthanc, workers, ledger, dispatcher, tmp_path):
    supervised = Supervised(workers, "--concurrency", "1", "--stuck-after", STUCK_AFTER_S)
    job_id = enqueue(ledger, dispatcher, long_study(orthanc, tmp_path))
    for attempt in (1, 2, 3):
        running = wait_for(f"attempt {attempt} to start", supervised.watching(
            lambda: (job := ledger.job(job_id))["state"] == "running" and job["attempts"] == attempt and job),
            timeout_s=90, every_s=0.01)
        child = int(running["worker"].rsplit(":", 1)[1])
        assert supervised.worker.owns(child) and child != supervised.worker.pid
        os.kill(child, signal.SIGKILL)  # the job's pool process dies, as on a crash in native code

    failed = wait_for("the job to be failed", supervised.watching(state_is(ledger, job_id, "failed", "done")),
                      timeout_s=60)
    assert failed["state"] == "failed" and failed["attempts"] == 3
    assert "3 times" in failed["error"]
    # The message Celery put back at once after each death found the job held and was skipped:
    # only the ledger's lease and the sweeper gave it another attempt.
    assert any(f"pre-read job {job_id}: skipped" in worker.text() for worker in supervised.started)
    after = enqueue(ledger, dispatcher, small_study(orthanc, tmp_path))
    assert wait_for("the next job", supervised.watching(state_is(ledger, after, "done", "failed")),
                    timeout_s=60)["state"] == "done"
    assert supervised.worker.process.poll() is None  # a worker lives on and took the next job


class Supervised:
    """A worker kept running as a supervisor (systemd ``Restart=always``) keeps it: Celery's pool
    can stop after a pool process is killed (celery/celery#2011), and the worker's watchdog then
    ends it (``--stuck-after``); a new one is started and the job comes back by its lease."""

    def __init__(self, workers, *args: str):
        self.start, self.args = workers, args
        self.started = [workers(*args)]

    @property
    def worker(self):
        return self.started[-1]

    def watching(self, condition):
        def check():
            if self.worker.process.poll() is not None:
                assert self.worker.process.returncode != 0, "the worker stopped without its pool being stuck"
                assert "the pool is stuck" in self.worker.text()
                self.started.append(self.start(*self.args))
            return condition()
        return check


def test_sweep_once_submits_again_a_job_whose_message_was_lost(celery_env, ledger, isolated_cli, capsys):
    from agent.preread.ledger import JobKey

    job_id = ledger.enqueue(JobKey(generate_uid(), 3)).job_id  # queued, its message never sent (or lost)
    wait_for("the job to be past its lease", lambda: job_id in dict(ledger.expired()), timeout_s=LEASE_S + 5,
             every_s=0.2)
    code, out, err = run_cli(capsys, "worker", "--sweep-once")
    assert code == 0, err
    assert out.strip() == f"submitted again: {job_id}"
    assert broker(celery_env).llen("routine") == 1
    assert job_id not in dict(ledger.expired())  # its grace period starts anew: not submitted every round
    assert ledger.job(job_id)["state"] == "queued"


def test_worker_needs_a_broker_that_answers(isolated_cli, capsys, monkeypatch):
    monkeypatch.delenv("LOUPE_BROKER_URL", raising=False)
    code, _, err = run_cli(capsys, "worker")
    assert code == 2 and err.startswith("error: LOUPE_BROKER_URL is not set") and len(err.strip().splitlines()) == 1

    monkeypatch.setenv("LOUPE_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, _, err = run_cli(capsys, "worker")
    assert code == 2 and "cannot be reached" in err and len(err.strip().splitlines()) == 1

    code, _, err = run_cli(capsys, "worker", "--queues", "urgent")
    assert code == 2 and "--queues" in err
