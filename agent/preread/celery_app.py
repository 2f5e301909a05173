"""Pre-read jobs on Celery, with Redis (or RabbitMQ) as broker: ``LOUPE_BROKER_URL`` set.

The broker only carries job ids; the ledger (``ledger.py``, Loupe's own database) is the truth
of what was done, so a message lost, duplicated or delivered twice never makes a second result
or loses one: ``run_job`` claims the job in the ledger first and does nothing ("skipped") when
another worker holds it or it is done.

Delivery (facts checked in ``../shared/docs/preread.md``):

- a message is acknowledged only when its job returned (``task_acks_late``), and put back when
  the pool child running it dies (``task_reject_on_worker_lost``); each worker process takes one
  message at a time (``worker_prefetch_multiplier=1``), so queued jobs stay in the broker where any
  idle worker — and a STAT job queued later — can still get ahead of them;
- a whole worker killed (SIGKILL, a machine gone) leaves its message in Redis's ``unacked`` hash
  until the visibility timeout (2 h here, well above the longest job, so a long job is never
  delivered twice); the ledger's lease brings the job back one lease later, not hours: the sweeper of
  every ``loupe worker`` submits again what ``ledger.expired()`` lists — running jobs past their
  lease and queued jobs whose message a broker restarted empty has lost;
- STAT first: two queues, ``stat`` and ``routine``, and each worker asks Redis for ``stat`` before
  ``routine`` on every fetch (kombu's ``queue_order_strategy="priority"``: BRPOP on the keys in that
  order, never rotated), so a STAT job queued after routine ones is started first (that option is
  Redis's; on RabbitMQ give ``stat`` workers of its own, ``loupe worker --queues stat``);
- retries: no Celery retry (on Redis a countdown/ETA task waits unacknowledged in a worker's memory
  and comes back after the visibility timeout as a duplicate). A transient failure is the job's
  ``ledger.fail(retry=True)``: the job goes back to ``queued`` and the sweeper submits it again one
  lease later — a backoff that survives a worker's death and a broker's restart — while the PACS
  client's own quick retries (``LOUPE_DICOMWEB_RETRY_*``) cover blips inside one attempt. The
  ledger's attempts count bounds it all: a job lost ``MAX_ATTEMPTS`` (3) times, a job that kills
  its worker every time included, is ``failed`` at its next claim, never looped forever.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.utils.url import maybe_sanitize_url

from agent.settings import LoupeSettings
from tools.errors import LoupeError

#: The tasks' names on the wire (a worker of another version still understands them).
TASK_NAME = "loupe.preread.run"
CHUNK_TASK_NAME = "loupe.preread.chunk"
#: Queues in the order a worker consumes them: ``stat`` before ``routine``.
QUEUES = ("stat", "routine")
#: Redis gives an unacknowledged message back after this long: well above the longest job.
VISIBILITY_TIMEOUT_S = 2 * 60 * 60
#: How often the sweeper of a ``loupe worker`` looks for jobs to submit again.
SWEEP_EVERY_S = 15.0
#: A job received but not begun this long while a pool process is free: the pool is stuck.
POOL_STUCK_AFTER_S = 120.0
#: The exit status of a worker that stopped because its pool was stuck.
EXIT_POOL_STUCK = 75

log = logging.getLogger("loupe.preread")


class BrokerError(LoupeError):
    """The pre-read broker is not configured or cannot be reached."""


def make_app(broker_url: str) -> Celery:
    """A Celery app for ``broker_url`` with the one pre-read task registered."""
    app = Celery("loupe", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_queue="routine",
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            # Consume the queues in the order given (stat, routine) on every fetch, never rotated.
            "queue_order_strategy": "priority",
        },
        broker_connection_retry_on_startup=True,
        # A broker that goes away does not stop the jobs running: the ledger records their results.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    app.task(name=TASK_NAME, ignore_result=True)(_run)
    app.task(name=CHUNK_TASK_NAME, ignore_result=True)(_run_chunk)
    return app


def _run(job_id: int) -> str:
    """The task: one pre-read job, claimed in the ledger by the pool process that runs it
    (``host:pid``); its outcome is ``done``, ``failed``, ``queued`` (to be retried) or
    ``skipped`` (held by another worker, or already done: a duplicate message)."""
    from agent.preread.job import run_job, worker_name

    worker, settings = worker_name(), LoupeSettings()
    dispatcher = CeleryDispatcher(settings)  # a long series' chunks go to the other workers
    try:
        outcome = run_job(settings, int(job_id), worker, share=dispatcher.submit_chunk)
    finally:
        dispatcher.close()
    log.info("pre-read job %s: %s (%s)", job_id, outcome, worker)
    return outcome


def _run_chunk(job_id: int, run: int, chunk: int) -> str:
    """The task: one chunk of a long series' search (``agent.preread.chunks``), for the job's
    run ``run``; ``done``, ``failed`` (the job's own worker then tries it) or ``skipped``."""
    from agent.preread.chunks import run_chunk
    from agent.preread.job import worker_name

    worker = worker_name()
    outcome = run_chunk(LoupeSettings(), int(job_id), int(run), int(chunk), worker)
    log.info("pre-read job %s chunk %s: %s (%s)", job_id, chunk, outcome, worker)
    return outcome


def safe_url(url: str) -> str:
    """The broker URL without its password, for messages."""
    return str(maybe_sanitize_url(url))


class CeleryDispatcher:
    """Submits pre-read jobs to the broker: the queue named by the job's priority."""

    def __init__(self, settings: LoupeSettings):
        if not settings.broker_url:
            raise BrokerError("LOUPE_BROKER_URL is not set; set it to the broker of the pre-read workers "
                              "(e.g. redis://host:6379/0).")
        self.settings = settings
        self.app = make_app(settings.broker_url)

    def submit(self, job_id: int, priority: str) -> None:
        self._send(TASK_NAME, [int(job_id)], priority,
                   f"job {job_id} stays queued in the ledger and a worker's sweeper submits it again")

    def submit_chunk(self, job_id: int, run: int, chunk: int, priority: str) -> None:
        """Have another worker search chunk ``chunk`` of the job's run (on the job's queue)."""
        self._send(CHUNK_TASK_NAME, [int(job_id), int(run), int(chunk)], priority,
                   f"the worker of job {job_id} searches chunk {chunk} itself")

    def _send(self, task: str, args: list[int], priority: str, meanwhile: str) -> None:
        queue = priority if priority in QUEUES else "routine"
        try:
            self.app.send_task(task, args=args, queue=queue, routing_key=queue,
                               retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2,
                                                         "interval_step": 0.5, "interval_max": 2.0})
        except Exception as error:  # kombu's OperationalError and friends: the broker is away
            raise BrokerError(
                f"The pre-read broker at {safe_url(self.settings.broker_url)} cannot be reached "
                f"({type(error).__name__}); {meanwhile}.") from error

    def close(self) -> None:
        self.app.close()


def check_broker(app: Celery, timeout_s: float = 5.0) -> None:
    """Raise ``BrokerError`` (one sentence) unless the app's broker answers."""
    url = app.conf.broker_url
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s)
    except Exception as error:
        raise BrokerError(f"The pre-read broker at {safe_url(url)} cannot be reached ({type(error).__name__}: "
                          f"{error}); start it or correct LOUPE_BROKER_URL.") from error


def sweep(settings: LoupeSettings, dispatcher: Any, ledger: Any = None) -> list[int]:
    """Submit again every job the ledger lists as expired (a worker lost past its lease, a queued
    job whose message the broker lost); the ids submitted. A job submitted twice is harmless:
    the second delivery cannot claim it and is skipped."""
    from agent.preread.ledger import PrereadLedger

    own = ledger is None
    ledger = PrereadLedger(settings) if own else ledger
    submitted = []
    try:
        for job_id, priority in ledger.expired():
            dispatcher.submit(job_id, priority)
            ledger.resubmitted(job_id)
            submitted.append(job_id)
    finally:
        if own:
            ledger.close()
    return submitted


class Sweeper(threading.Thread):
    """``sweep`` every ``every_s`` seconds until stopped (a daemon thread of ``loupe worker``)."""

    def __init__(self, settings: LoupeSettings, every_s: float = SWEEP_EVERY_S):
        super().__init__(name="loupe-preread-sweeper", daemon=True)
        self.settings, self.every_s = settings, every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        from agent.preread.ledger import PrereadLedger

        dispatcher = CeleryDispatcher(self.settings)
        ledger = None
        try:
            while not self.stopped.wait(self.every_s):
                try:
                    ledger = ledger or PrereadLedger(self.settings)
                    submitted = sweep(self.settings, dispatcher, ledger)
                    if submitted:
                        log.warning("pre-read sweeper: submitted again job(s) %s", ", ".join(map(str, submitted)))
                except Exception as error:  # a broker or database away for a moment: the next round tries again
                    log.warning("pre-read sweeper: %s", getattr(error, "message", None) or error)
        finally:
            if ledger is not None:
                ledger.close()
            dispatcher.close()

    def stop(self) -> None:
        self.stopped.set()


class PoolWatchdog(threading.Thread):
    """Ends this worker when its pool has stopped starting jobs: a job received that no pool
    process has begun for ``stuck_after_s`` while a process is free. Celery's prefork pool can
    stop handing out work after a pool process is killed (celery/celery#2011; seen here about
    once in fifteen kills); a worker that only looks alive would keep its share of the queue
    forever. Run ``loupe worker`` under a supervisor that restarts it (systemd ``Restart=always``):
    the jobs it held come back through the ledger's lease, as from any lost worker."""

    def __init__(self, concurrency: int, stuck_after_s: float, every_s: float = 1.0):
        super().__init__(name="loupe-pool-watchdog", daemon=True)
        self.concurrency, self.stuck_after_s, self.every_s = concurrency, stuck_after_s, every_s
        self.stopped = threading.Event()
        self._waiting_since: dict[str, float] = {}

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            if self.stuck(time.monotonic()):
                log.error("pre-read worker: a received job has not started for %.0f s with a pool process free; "
                          "the pool is stuck, so this worker stops (its jobs come back by the ledger's lease)",
                          self.stuck_after_s)
                os.kill(os.getpid(), signal.SIGQUIT)  # Celery's cold shutdown: the pool is not waited for
                self.stopped.wait(10.0)
                os._exit(EXIT_POOL_STUCK)  # the shutdown hung on the stuck pool itself

    def stuck(self, now: float) -> bool:
        from celery.worker import state

        active = {request.id for request in list(state.active_requests)}
        waiting = {request.id for request in list(state.reserved_requests)} - active
        self._waiting_since = {rid: self._waiting_since.get(rid, now) for rid in waiting}
        free = len(active) < self.concurrency
        return free and any(now - since > self.stuck_after_s for since in self._waiting_since.values())

    def stop(self) -> None:
        self.stopped.set()


def __getattr__(name: str) -> Celery:
    """``celery -A agent.preread.celery_app worker`` finds ``app`` (from LOUPE_BROKER_URL)."""
    if name in ("app", "celery"):
        url = LoupeSettings().broker_url
        if not url:
            raise BrokerError("LOUPE_BROKER_URL is not set.")
        return make_app(url)
    raise AttributeError(name)
