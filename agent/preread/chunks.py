"""A long series searched by several pre-read workers at once.

A pre-read job whose series has more slices than ``LOUPE_PREREAD_CHUNK_SLICES`` splits them into
chunks, records them in the ledger's ``preread_chunks`` table and submits one broker message per
chunk (``loupe.preread.chunk``, on the job's own queue). Any worker that takes a message claims
its chunk, opens the retrieved series from the shared data folder, searches the chunk's slices
and stores their detections in the ledger. The job's own worker does not sit waiting: it claims
the chunks nobody has started and searches them itself, then waits for the ones other workers
hold, taking over any whose worker's lease ran out (killed) or that failed there (a machine that
cannot see the data folder). So one worker alone searches every chunk itself — nothing waits on
a message no one is free to take —, two finish sooner, and a worker lost mid-chunk costs a lease.

The ledger is the truth, as for jobs: a claim is one atomic UPDATE, so a chunk is searched once
however many messages name it, and a message for a job that is no longer running is skipped.
Detections come back as JSON (floats round-trip exactly) and are merged across slices by the
job (``detect_volume``), so a chunked search finds exactly what a search in one process does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from agent.preread.ledger import PrereadError, PrereadLedger, lease_kept, utc_now
from agent.settings import LoupeSettings
from agent.store.database import PrereadChunkRow
from tools.detection.detector import Detection, detection_from_json, detection_json, search_slices
from tools.errors import LoupeError
from tools.study import Study, open_study

log = logging.getLogger("loupe.preread")

#: How often the job's worker looks at the chunks others hold, once none is left for it to take.
WAIT_EVERY_S = 0.1
INTERNAL_ERROR = "Loupe hit an internal error while searching these slices."

#: Submits chunk ``chunk`` of run ``run`` of job ``job_id`` to the workers.
SubmitChunk = Callable[[int, int, int], None]
#: The same, on the queue of a priority (``stat``, ``routine``): what a dispatcher offers a job.
ShareChunk = Callable[[int, int, int, str], None]


class ChunkLedger:
    """The ``preread_chunks`` rows of one run of one job."""

    def __init__(self, engine: Engine, job_id: int, run: int):
        self.engine, self.job_id, self.run = engine, job_id, run

    def _mine(self):
        return (PrereadChunkRow.job_id == self.job_id) & (PrereadChunkRow.run == self.run)

    def plan(self, folder: str, frame_count: int, pieces: Sequence[Sequence[int]], per_slice: int) -> None:
        """Record the chunks, unless this run recorded them already (a retried attempt keeps the
        chunks other workers finished). Chunks of earlier runs are removed."""
        with Session(self.engine) as db, db.begin():
            db.execute(delete(PrereadChunkRow).where(PrereadChunkRow.job_id == self.job_id,
                                                     PrereadChunkRow.run != self.run))
            known = [(row.folder, list(row.frames)) for row in db.execute(
                select(PrereadChunkRow.folder, PrereadChunkRow.frames).where(self._mine())
                .order_by(PrereadChunkRow.chunk))]
            if known == [(folder, list(p)) for p in pieces]:  # the same series (a job has several) and split
                return
            db.execute(delete(PrereadChunkRow).where(self._mine()))
            db.add_all(PrereadChunkRow(job_id=self.job_id, run=self.run, chunk=index, folder=folder,
                                       frame_count=frame_count, frames=list(frames), per_slice=per_slice,
                                       state="queued", attempts=0)
                       for index, frames in enumerate(pieces))

    def rows(self) -> list[PrereadChunkRow]:
        with Session(self.engine, expire_on_commit=False) as db:
            return list(db.scalars(select(PrereadChunkRow).where(self._mine()).order_by(PrereadChunkRow.chunk)))

    def row(self, chunk: int) -> PrereadChunkRow | None:
        with Session(self.engine, expire_on_commit=False) as db:
            return db.get(PrereadChunkRow, (self.job_id, self.run, chunk))

    @staticmethod
    def _claimable(worker: str, now: datetime, failed_too: bool):
        """Queued, or running past its lease (its worker lost); ``failed_too``: also failed on
        another worker (the job's worker tries it itself)."""
        states = [PrereadChunkRow.state == "queued",
                  (PrereadChunkRow.state == "running") & (PrereadChunkRow.lease_expires_at < now)]
        if failed_too:
            states.append((PrereadChunkRow.state == "failed") & (PrereadChunkRow.worker != worker))
        return or_(*states)

    def claimable(self, worker: str) -> list[int]:
        """The chunks the job's ``worker`` may take now (``claim(..., failed_too=True)``)."""
        with Session(self.engine) as db:
            return list(db.scalars(select(PrereadChunkRow.chunk).where(
                self._mine(), self._claimable(worker, utc_now(), True)).order_by(PrereadChunkRow.chunk)))

    def claim(self, chunk: int, worker: str, lease_s: float, *, failed_too: bool = False) -> bool:
        """Take the chunk if it is claimable (``_claimable``): True for one of any racing claims."""
        now = utc_now()
        with Session(self.engine) as db, db.begin():
            return db.execute(update(PrereadChunkRow).where(
                self._mine(), PrereadChunkRow.chunk == chunk, self._claimable(worker, now, failed_too)).values(
                state="running", worker=worker, attempts=PrereadChunkRow.attempts + 1, error=None,
                lease_expires_at=now + timedelta(seconds=lease_s))).rowcount == 1

    def renew(self, chunk: int, worker: str, lease_s: float) -> None:
        with Session(self.engine) as db, db.begin():
            db.execute(update(PrereadChunkRow).where(
                self._mine(), PrereadChunkRow.chunk == chunk, PrereadChunkRow.worker == worker,
                PrereadChunkRow.state == "running").values(lease_expires_at=utc_now() + timedelta(seconds=lease_s)))

    def settle(self, chunk: int, worker: str, *, detections: list[dict[str, Any]] | None = None,
               error: str | None = None) -> bool:
        """``done`` with its detections, or ``failed`` with ``error``; only while ``worker`` holds it."""
        values = ({"state": "failed", "error": error} if error is not None
                  else {"state": "done", "detections": detections})
        with Session(self.engine) as db, db.begin():
            return db.execute(update(PrereadChunkRow).where(
                self._mine(), PrereadChunkRow.chunk == chunk, PrereadChunkRow.worker == worker,
                PrereadChunkRow.state == "running").values(lease_expires_at=None, **values)).rowcount == 1

    def remove(self) -> None:
        with Session(self.engine) as db, db.begin():
            db.execute(delete(PrereadChunkRow).where(self._mine()))


def pieces_of(frames: Sequence[int], size: int) -> list[list[int]]:
    """``frames`` in consecutive chunks of at most ``size``, as even as can be (a 65-slice series
    is two chunks of 33 and 32, not 64 and 1)."""
    count = -(-len(frames) // size)
    bounds = [round(i * len(frames) / count) for i in range(count + 1)]
    return [list(frames[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def _search(chunks: ChunkLedger, row: PrereadChunkRow, worker: str, study: Study) -> str:
    """Search the claimed chunk on ``study`` and settle it: ``done`` or ``failed``."""
    try:
        if study.frame_count != row.frame_count:
            raise PrereadError(f"The series in {row.folder} has {study.frame_count} slices, not the "
                               f"{row.frame_count} the job found; it changed while it was searched.")
        found = search_slices(study, row.frames, row.per_slice)
    except LoupeError as error:
        chunks.settle(row.chunk, worker, error=error.message)
        return "failed"
    except Exception:
        log.exception("pre-read job %s, chunk %s failed unexpectedly", chunks.job_id, row.chunk)
        chunks.settle(row.chunk, worker, error=INTERNAL_ERROR)
        return "failed"
    chunks.settle(row.chunk, worker, detections=[detection_json(d) for d in found])
    return "done"


def run_chunk(settings: LoupeSettings, job_id: int, run: int, chunk: int, worker: str) -> str:
    """A worker's share of a job: claim the chunk, search it, store what it found; ``skipped``
    when the job is no longer running that run or the chunk is taken or done."""
    ledger = PrereadLedger(settings)
    try:
        try:
            job = ledger.job(job_id)
        except PrereadError:
            return "skipped"
        chunks = ChunkLedger(ledger.engine, job_id, run)
        lease_s = settings.preread_lease_s
        if job["state"] != "running" or job["run"] != run or not chunks.claim(chunk, worker, lease_s):
            return "skipped"
        row = chunks.row(chunk)
        with lease_kept(lambda: chunks.renew(chunk, worker, lease_s), lease_s, f"job {job_id} chunk {chunk}"):
            try:
                with open_study(Path(row.folder), limits=settings.study_limits()) as study:
                    return _search(chunks, row, worker, study)
            except LoupeError as error:  # the series cannot be opened here: the job's worker does it
                chunks.settle(chunk, worker, error=error.message)
                return "failed"
    finally:
        ledger.close()


@dataclass
class SharedSliceSearch:
    """The job's ``SliceSearch`` (``ToolContext.slice_search``): a series longer than a chunk is
    shared out to the workers; a shorter one is searched here."""

    settings: LoupeSettings
    ledger: PrereadLedger
    job: dict[str, Any]
    worker: str
    #: None: no broker (the local pool); the job's worker searches every chunk itself.
    submit: SubmitChunk | None = None
    #: Where each opened series (by study id) was retrieved: the folder a helper opens.
    folders: dict[str, Path] = field(default_factory=dict)
    #: After a search: (study id, chunk) -> the worker that searched it.
    searched_by: dict[tuple[str, int], str] = field(default_factory=dict)

    def __call__(self, study: Study, frames: Sequence[int], limit: int) -> list[Detection]:
        size = self.settings.preread_chunk_slices
        if len(frames) <= size:
            return search_slices(study, frames, limit)
        chunks = ChunkLedger(self.ledger.engine, self.job["job_id"], self.job["run"])
        chunks.plan(str(self.folders[study.id]), study.frame_count, pieces_of(frames, size), limit)
        self._submit([row.chunk for row in chunks.rows() if row.state != "done"])
        rows = self._until_all_done(chunks, study)
        self.searched_by.update({(study.id, row.chunk): row.worker or "" for row in rows})
        chunks.remove()
        return [detection_from_json(d) for row in rows for d in row.detections or []]

    def _submit(self, waiting: list[int]) -> None:
        if self.submit is None:
            return
        for chunk in waiting:
            try:
                self.submit(self.job["job_id"], self.job["run"], chunk)
            except LoupeError as error:  # no broker now: this worker searches the chunks itself
                log.warning("pre-read job %s: chunks not shared out (%s)", self.job["job_id"], error.message)
                return

    def _until_all_done(self, chunks: ChunkLedger, study: Study) -> list[PrereadChunkRow]:
        lease_s = self.settings.preread_lease_s
        while True:
            rows = chunks.rows()
            if len(rows) and all(row.state == "done" for row in rows):
                return rows
            if not rows:
                raise PrereadError("The chunks of this series' search were removed while it ran.")
            chunk = next((c for c in chunks.claimable(self.worker)
                          if chunks.claim(c, self.worker, lease_s, failed_too=True)), None)
            if chunk is None:
                time.sleep(WAIT_EVERY_S)
                continue
            taken = next(row for row in rows if row.chunk == chunk)
            with lease_kept(lambda: chunks.renew(taken.chunk, self.worker, lease_s), lease_s,
                            f"job {chunks.job_id} chunk {taken.chunk}"):
                if _search(chunks, taken, self.worker, study) == "failed":
                    failed = chunks.row(taken.chunk)
                    raise PrereadError(f"Slices {taken.frames[0] + 1}–{taken.frames[-1] + 1} could not be "
                                       f"searched: {failed.error if failed else 'no reason recorded'}")

    def note(self) -> str | None:
        """How the search was shared, for the job's note; None when it was not chunked."""
        if not self.searched_by:
            return None
        others = sum(1 for worker in self.searched_by.values() if worker != self.worker)
        return f"series searched in {len(self.searched_by)} chunks, {others} of them by other workers"
