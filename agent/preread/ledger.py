"""The pre-read job ledger: what was asked, what runs, what is done — in Loupe's own database.

A job is keyed by (Study Instance UID, the study's number of image instances — Loupe's own SR /
PDF series not counted —, analysis version): a duplicate trigger finds the job it would make
and makes none; a study that grows (more instances arrived) is a new key, so a new job; a new
analysis version is a new key too. A forced re-run re-queues the same row (``run`` counts them).

Running a job: ``claim`` (atomic: one UPDATE that only a queued job, or a running one whose lease
ran out, passes), ``renew`` the lease while it runs, then ``finish`` or ``fail`` — both only while
the worker still holds it, so a worker that lost its lease cannot overwrite a newer attempt.
``expired`` lists what a sweeper re-submits: running jobs past their lease (a worker SIGKILLed,
a machine gone) and queued jobs not picked up within the lease (a broker restarted empty).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from agent.settings import LoupeSettings
from agent.store.database import PrereadJobRow, Store
from tools.errors import LoupeError

log = logging.getLogger(__name__)

#: Part of every job key: a new analysis (detector, report rules) makes every study a new job.
ANALYSIS_VERSION = "loupe-preread-1"
PRIORITIES = ("stat", "routine")
STATES = ("queued", "running", "done", "failed")
#: Tries of one run before it is ``failed`` (a PACS that stays down, a job that kills its worker).
MAX_ATTEMPTS = 3


class PrereadError(LoupeError):
    """A pre-read job cannot be found or asked for."""


@dataclass(frozen=True)
class JobKey:
    study_uid: str
    instances: int
    version: str = ANALYSIS_VERSION


@dataclass(frozen=True)
class Enqueued:
    job_id: int
    created: bool
    state: str
    message: str


@contextmanager
def lease_kept(renew: Callable[[], None], lease_s: float, what: str) -> Iterator[None]:
    """Call ``renew`` every third of the lease while the body runs (a job, a chunk of one): a
    worker that is killed stops renewing, and its work is taken up again once the lease runs out."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(max(lease_s / 3, 0.5)):
            try:
                renew()
            except Exception:  # retried at the next beat; the lease is long
                log.warning("could not renew the lease of %s", what, exc_info=True)

    threading.Thread(target=beat, daemon=True, name=f"lease-{what}").start()
    try:
        yield
    finally:
        stop.set()


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite gives datetimes back without their zone; every one stored here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class PrereadLedger:
    """The ``preread_jobs`` table of the session database (``LOUPE_DB_URL``, else the SQLite file
    under ``LOUPE_DATA_DIR``), migrated like the rest of it when it opens."""

    def __init__(self, settings: LoupeSettings, store: Store | None = None):
        """``store``: the session database already open (the app's, shared by its threads), kept
        open by its owner; else the ledger opens its own (and migrates it) and ``close`` closes it."""
        self.settings = settings
        self._owns_store = store is None
        self.store = store or Store.for_data_dir(settings.data_dir, settings.db_url)
        self.engine = self.store.engine

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    # -- asking for a job -------------------------------------------------------------------------

    def enqueue(self, key: JobKey, priority: str = "routine", *, force: bool = False) -> Enqueued:
        """Queue the job of ``key`` unless it exists; ``force`` re-queues a done or failed one
        (the same row, a new run). A queued job asked for as ``stat`` becomes ``stat``."""
        if priority not in PRIORITIES:
            raise PrereadError(f"Priority '{priority}' is not one of {', '.join(PRIORITIES)}.")
        if key.instances < 1:
            raise PrereadError(f"Study {key.study_uid} has no image instances to pre-read.")
        for _ in range(2):  # a racing enqueue of the same key: the loser finds the winner's row
            existing = self._find(key)
            if existing is None:
                try:
                    with Session(self.engine) as db, db.begin():
                        now = utc_now()
                        row = PrereadJobRow(study_uid=key.study_uid, instances=key.instances, version=key.version,
                                            priority=priority, state="queued", run=1, attempts=0,
                                            queued_at=now, submitted_at=now)
                        db.add(row)
                        db.flush()
                        job_id = row.id
                    return Enqueued(job_id, True, "queued", "queued")
                except IntegrityError:
                    continue
            return self._existing(existing, priority, force)
        raise PrereadError(f"The pre-read job of study {key.study_uid} could not be queued; try again.")

    def _find(self, key: JobKey) -> PrereadJobRow | None:
        with Session(self.engine, expire_on_commit=False) as db:
            return db.scalar(select(PrereadJobRow).where(PrereadJobRow.study_uid == key.study_uid,
                                                         PrereadJobRow.instances == key.instances,
                                                         PrereadJobRow.version == key.version))

    def _existing(self, row: PrereadJobRow, priority: str, force: bool) -> Enqueued:
        if row.state in ("done", "failed") and force:
            with Session(self.engine) as db, db.begin():
                now = utc_now()
                requeued = db.execute(
                    update(PrereadJobRow).where(PrereadJobRow.id == row.id, PrereadJobRow.state == row.state,
                                                PrereadJobRow.run == row.run)
                    .values(state="queued", run=row.run + 1, attempts=0, priority=priority, worker=None,
                            queued_at=now, submitted_at=now, started_at=None, finished_at=None,
                            lease_expires_at=None, error=None, note=None)).rowcount
            if requeued:
                return Enqueued(row.id, False, "queued", f"queued again (run {row.run + 1})")
            return self._existing(self._reread(row.id), priority, force=False)
        if row.state == "queued" and priority == "stat" and row.priority != "stat":
            with Session(self.engine) as db, db.begin():
                db.execute(update(PrereadJobRow).where(PrereadJobRow.id == row.id).values(priority="stat"))
        messages = {"done": "already done — not run again (use --force)",
                    "failed": f"failed before — not run again (use --force): {row.error or 'no reason recorded'}",
                    "queued": "already queued", "running": "already running"}
        return Enqueued(row.id, False, row.state, messages[row.state])

    def _reread(self, job_id: int) -> PrereadJobRow:
        with Session(self.engine, expire_on_commit=False) as db:
            row = db.get(PrereadJobRow, job_id)
        if row is None:
            raise PrereadError(f"There is no pre-read job {job_id}.")
        return row

    # -- running a job ----------------------------------------------------------------------------

    def claim(self, job_id: int, worker: str, lease_s: float) -> bool:
        """Take the job for ``worker``: True for exactly one of any number of racing claims.
        A running job whose lease ran out after ``MAX_ATTEMPTS`` tries is ``failed`` instead
        (it kills its worker every time)."""
        now = utc_now()
        claimable = or_(PrereadJobRow.state == "queued",
                        (PrereadJobRow.state == "running") & (PrereadJobRow.lease_expires_at < now))
        with Session(self.engine) as db, db.begin():
            db.execute(update(PrereadJobRow).where(
                PrereadJobRow.id == job_id, PrereadJobRow.state == "running", PrereadJobRow.lease_expires_at < now,
                PrereadJobRow.attempts >= MAX_ATTEMPTS).values(
                state="failed", finished_at=now, lease_expires_at=None,
                error=f"The pre-read stopped without finishing {MAX_ATTEMPTS} times (its worker was lost each time); "
                      "it was not tried again."))
            taken = db.execute(update(PrereadJobRow).where(PrereadJobRow.id == job_id, claimable).values(
                state="running", started_at=now, lease_expires_at=now + timedelta(seconds=lease_s), worker=worker,
                attempts=PrereadJobRow.attempts + 1, finished_at=None)).rowcount
        return taken == 1

    def renew(self, job_id: int, worker: str, lease_s: float) -> None:
        with Session(self.engine) as db, db.begin():
            db.execute(update(PrereadJobRow).where(PrereadJobRow.id == job_id, PrereadJobRow.worker == worker,
                                                   PrereadJobRow.state == "running")
                       .values(lease_expires_at=utc_now() + timedelta(seconds=lease_s)))

    def finish(self, job_id: int, worker: str, *, session_id: str, findings: int, anomaly_found: bool,
               top_finding: dict[str, Any] | None, note: str | None = None) -> bool:
        """Record the result; False (nothing written) when ``worker`` no longer holds the job."""
        with Session(self.engine) as db, db.begin():
            return db.execute(update(PrereadJobRow).where(
                PrereadJobRow.id == job_id, PrereadJobRow.worker == worker, PrereadJobRow.state == "running").values(
                state="done", finished_at=utc_now(), lease_expires_at=None, session_id=session_id, findings=findings,
                anomaly_found=anomaly_found, top_finding=top_finding, note=note, error=None)).rowcount == 1

    def fail(self, job_id: int, worker: str, error: str, *, retry: bool) -> None:
        """``retry``: back to ``queued`` (its attempts kept, so ``MAX_ATTEMPTS`` still bounds it);
        else ``failed`` with ``error``, one sentence. Nothing when ``worker`` lost the job."""
        now = utc_now()
        values: dict[str, Any] = ({"state": "queued", "submitted_at": now, "lease_expires_at": None, "error": error}
                                  if retry else
                                  {"state": "failed", "finished_at": now, "lease_expires_at": None, "error": error})
        with Session(self.engine) as db, db.begin():
            db.execute(update(PrereadJobRow).where(PrereadJobRow.id == job_id, PrereadJobRow.worker == worker,
                                                   PrereadJobRow.state == "running").values(**values))

    def expired(self, now: datetime | None = None) -> list[tuple[int, str]]:
        """(job id, priority) of running jobs past their lease and of queued jobs submitted more
        than a lease ago (their broker message was lost): what a sweeper submits again. A job
        still waiting its turn behind a long queue is submitted twice at worst; the second
        delivery finds it claimed and is skipped."""
        now = now or utc_now()
        grace = now - timedelta(seconds=self.settings.preread_lease_s)
        with Session(self.engine) as db:
            rows = db.execute(select(PrereadJobRow.id, PrereadJobRow.priority).where(or_(
                (PrereadJobRow.state == "running") & (PrereadJobRow.lease_expires_at < now),
                (PrereadJobRow.state == "queued") & (PrereadJobRow.submitted_at < grace)))
                .order_by(PrereadJobRow.priority != "stat", PrereadJobRow.queued_at)).all()
        return [(int(job_id), str(priority)) for job_id, priority in rows]

    def resubmitted(self, job_id: int) -> None:
        """A sweeper submitted a queued job again: its grace period starts anew."""
        with Session(self.engine) as db, db.begin():
            db.execute(update(PrereadJobRow).where(PrereadJobRow.id == job_id, PrereadJobRow.state == "queued")
                       .values(submitted_at=utc_now()))

    # -- reading it -------------------------------------------------------------------------------

    def job(self, job_id: int) -> dict[str, Any]:
        return _as_dict(self._reread(job_id))

    def status(self) -> list[dict[str, Any]]:
        """One row per study (its newest job), STAT first, then the strongest top finding, then by arrival."""
        with Session(self.engine, expire_on_commit=False) as db:
            rows = list(db.scalars(select(PrereadJobRow).order_by(PrereadJobRow.queued_at, PrereadJobRow.id)))
        newest: dict[str, PrereadJobRow] = {}
        for row in rows:
            newest[row.study_uid] = row
        listed = [_as_dict(row) for row in newest.values()]
        return sorted(listed, key=lambda r: (r["priority"] != "stat",
                                             -((r["top_finding"] or {}).get("confidence") or 0.0), r["queued_at"]))


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return None if value is None else value.isoformat(timespec="seconds")


def _as_dict(row: PrereadJobRow) -> dict[str, Any]:
    return {"job_id": row.id, "study_uid": row.study_uid, "instances": row.instances, "version": row.version,
            "state": row.state, "priority": row.priority, "run": row.run, "attempts": row.attempts,
            "worker": row.worker, "findings": row.findings, "anomaly_found": row.anomaly_found,
            "top_finding": row.top_finding, "queued_at": _iso(row.queued_at), "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at), "lease_expires_at": _iso(row.lease_expires_at),
            "error": row.error, "note": row.note, "session_id": row.session_id}
