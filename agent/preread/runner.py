"""Who runs pre-read jobs: a local process pool when no broker is configured (the embedded
default, ``make run`` on a laptop), else Celery workers (``LOUPE_BROKER_URL``,
``agent.preread.celery_app``) on any machine that sees the database, the data folder and the PACS.

Either way a job is only its ledger id: the worker claims it in the ledger, so a job submitted
twice (a duplicate trigger, a sweeper's re-submission) runs once.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Protocol

from agent.preread.job import run_job, worker_name
from agent.settings import LoupeSettings

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def submit(self, job_id: int, priority: str) -> None:
        """Have job ``job_id`` run (once: a job already claimed or done is skipped by its worker)."""
        ...


def run_until_settled(settings: LoupeSettings, job_id: int, retry_delay_s: float = 1.0) -> str:
    """Run the job, and again after a growing pause while it goes back to ``queued`` (a PACS
    that could not be reached; the ledger bounds the tries); the state it settled in."""
    worker = worker_name()
    state = run_job(settings, job_id, worker)
    tries = 1
    while state == "queued":
        time.sleep(min(retry_delay_s * 2 ** (tries - 1), 60.0))
        state = run_job(settings, job_id, worker)
        tries += 1
    return state


class LocalDispatcher:
    """Jobs run in this machine's process pool (``max_workers`` processes), or in this process
    one after another (``max_workers=0``). STAT jobs submitted together with routine ones are not
    reordered here: the pool takes them as submitted (``loupe preread run`` submits STAT first)."""

    def __init__(self, settings: LoupeSettings, max_workers: int = 0, *, retry_delay_s: float = 1.0):
        self.settings = settings
        self.retry_delay_s = retry_delay_s
        self.results: dict[int, str] = {}
        self._futures: list[tuple[int, Future]] = []
        # Spawned, not forked: the parent holds database connections and threads.
        self._pool = (ProcessPoolExecutor(max_workers=max_workers, mp_context=multiprocessing.get_context("spawn"))
                      if max_workers > 0 else None)

    def submit(self, job_id: int, priority: str) -> None:
        if self._pool is None:
            self._record(job_id, run_until_settled(self.settings, job_id, self.retry_delay_s))
            return
        self._futures.append((job_id, self._pool.submit(run_until_settled, self.settings, job_id, self.retry_delay_s)))

    def _record(self, job_id: int, state: str) -> None:
        """A duplicate submission's ``skipped`` does not hide what the job's run ended in."""
        if state != "skipped" or job_id not in self.results:
            self.results[job_id] = state

    def wait(self) -> dict[int, str]:
        """Block until every submitted job has settled; each job's final state by id (``skipped``
        only when this dispatcher never ran it)."""
        while self._futures:
            job_id, future = self._futures.pop(0)
            try:
                self._record(job_id, future.result())
            except Exception:  # a pool process that died: the job's lease runs out and a sweep retries it
                log.exception("pre-read job %s stopped in its worker process", job_id)
                self._record(job_id, "lost")
        return dict(self.results)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def dispatcher_for(settings: LoupeSettings, max_workers: int = 0) -> Dispatcher:
    """Celery when ``LOUPE_BROKER_URL`` is set, else a ``LocalDispatcher`` of ``max_workers``."""
    if settings.broker_url:
        from agent.preread.celery_app import CeleryDispatcher

        return CeleryDispatcher(settings)
    return LocalDispatcher(settings, max_workers)
