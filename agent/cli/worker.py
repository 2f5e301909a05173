"""``loupe worker [--queues stat,routine] [--concurrency N] [--sweep-every S] [--stuck-after S] [--sweep-once]``: a
Celery worker of pre-read jobs on this machine (``LOUPE_BROKER_URL``), with the sweeper that
submits again the ledger's jobs a lost worker or an emptied broker left behind.

Any machine that sees the database (``LOUPE_DB_URL``), the data folder (``LOUPE_DATA_DIR``) and
the PACS can run one; stop it with SIGTERM (running jobs finish first) — a worker killed outright
loses nothing: its jobs come back when their lease runs out.
"""

from __future__ import annotations

import argparse
import os
import sys

from agent.cli.parsing import fail
from agent.settings import LoupeSettings

QUEUE_NAMES = ("stat", "routine")


def add_parser(commands) -> None:
    worker = commands.add_parser("worker", help="Run pre-read jobs from the broker (LOUPE_BROKER_URL) on this machine.")
    worker.add_argument("--queues", default="stat,routine",
                        help="Queues to take jobs from (default stat,routine; STAT jobs are always taken first).")
    worker.add_argument("--concurrency", type=int, default=None,
                        help="Jobs run at once, one process each (default: this machine's CPU count).")
    worker.add_argument("--sweep-every", type=float, default=None, metavar="SECONDS",
                        help="How often to submit again jobs left behind by a lost worker or broker (default 15; "
                             "0 turns the sweeper off).")
    worker.add_argument("--stuck-after", type=float, default=None, metavar="SECONDS", dest="stuck_after",
                        help="Stop this worker when a received job has not started for this long while a pool "
                             "process is free: Celery's pool can stop after a process is killed (default 120; "
                             "0 turns this off). Run the worker under a supervisor that restarts it.")
    worker.add_argument("--sweep-once", action="store_true",
                        help="Only submit again the jobs left behind, then exit (for cron).")
    worker.set_defaults(run=run)


def _queues(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in QUEUE_NAMES]
    if not names or unknown:
        fail(f"--queues takes {' and/or '.join(QUEUE_NAMES)}, comma-separated (got '{text}')")
    return [name for name in QUEUE_NAMES if name in names]  # stat before routine, however they were given


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    if not settings.broker_url:
        fail("LOUPE_BROKER_URL is not set; a worker needs the pre-read broker (e.g. redis://host:6379/0) — "
             "without one, `loupe preread` runs the jobs in this machine's own processes")
    queues = _queues(args.queues)
    if args.concurrency is not None and args.concurrency < 1:
        fail("--concurrency must be 1 or more")
    if args.sweep_every is not None and args.sweep_every < 0:
        fail("--sweep-every must be 0 (off) or more seconds")

    from agent.preread import celery_app
    from agent.preread.ledger import PrereadLedger

    app = celery_app.make_app(settings.broker_url)
    celery_app.check_broker(app)
    PrereadLedger(settings).close()  # the database answers (and is migrated) before any job is taken

    if args.sweep_once:
        dispatcher = celery_app.CeleryDispatcher(settings)
        try:
            submitted = celery_app.sweep(settings, dispatcher)
        finally:
            dispatcher.close()
        print(f"submitted again: {', '.join(map(str, submitted)) if submitted else 'nothing'}")
        return

    # Loaded once here, before the pool forks: each job process starts with the imaging stack.
    import agent.preread.job  # noqa: F401
    from celery import signals

    every = celery_app.SWEEP_EVERY_S if args.sweep_every is None else args.sweep_every
    stuck_after = celery_app.POOL_STUCK_AFTER_S if args.stuck_after is None else args.stuck_after
    threads = [thread for thread in (
        celery_app.Sweeper(settings, every) if every > 0 else None,
        celery_app.PoolWatchdog(args.concurrency or os.cpu_count() or 1, stuck_after) if stuck_after > 0 else None,
    ) if thread is not None]

    def start_threads(**_kwargs) -> None:  # after the pool's processes are forked: they never inherit them
        for thread in threads:
            if not thread.is_alive():
                thread.start()

    def stop_threads(**_kwargs) -> None:
        for thread in threads:
            thread.stop()

    signals.worker_ready.connect(start_threads, weak=False)
    signals.worker_shutdown.connect(stop_threads, weak=False)
    argv = ["worker", "--queues", ",".join(queues), "--pool", "prefork", "-O", "fair",
            "--hostname", f"loupe-{os.getpid()}@%h", "--loglevel", "INFO",
            # Loupe's ledger, not Celery's cluster chatter, coordinates workers: start at once.
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if args.concurrency is not None:
        argv += ["--concurrency", str(args.concurrency)]
    sys.stdout.flush()
    app.worker_main(argv)
