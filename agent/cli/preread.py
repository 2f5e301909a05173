"""``loupe preread``: studies on the PACS analysed before a clinician opens them.

- ``loupe preread study pacs:STUDY_UID [--priority stat|routine] [--force]`` — queue the study's
  pre-read and, without a broker, run it here; one line says what happened (``done``, ``already
  done — not run again (use --force)``, ``queued`` for the Celery workers, ``failed: ...``).
- ``loupe preread run --date YYYYMMDD[-YYYYMMDD] [--modality M] [--priority ...] [--force]
  [--jobs N]`` — the same for every study of those dates (a backlog, a re-run after an upgrade);
  ``--jobs N`` runs N local processes when no broker is configured.
- ``loupe preread watch [--interval S] [--since YYYYMMDD] [--once] [--jobs N]`` — follow the PACS
  (``agent.preread.watch``): each study pre-read once its instance count has been quiet for
  ``LOUPE_PREREAD_STABLE_S``; STAT by ``LOUPE_PREREAD_STAT_MODALITIES`` / ``..._PATTERN``.
- ``loupe preread status [--json]`` — one row per study; ``--json`` prints a list of objects with
  at least ``study_uid, state, priority, findings, anomaly_found, top_finding, queued_at,
  started_at, finished_at, error`` (also ``job_id, instances, session_id, run, attempts, note``).

A study is a job per (study, its number of image instances, analysis version): asked for again
in the same state it is not run again, unless ``--force``. ``LOUPE_BROKER_URL`` sends the jobs to
Celery workers (``loupe worker``) instead of running them here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from agent.cli.parsing import Parser
from agent.settings import LoupeSettings
from tools.errors import LoupeError

if TYPE_CHECKING:
    from agent.pacs.search import StudyMatch

#: ``loupe preread run`` asks the PACS for at most this many studies at once.
RUN_LIMIT = 1000


def add_parser(commands) -> None:
    preread = commands.add_parser("preread", help="Pre-read studies on the PACS before a clinician opens them.")
    actions = preread.add_subparsers(dest="action", required=True, parser_class=Parser)
    study = actions.add_parser("study", help="Pre-read one study (pacs:STUDY_UID).")
    study.add_argument("study", metavar="pacs:STUDY_UID")
    _job_options(study)
    dated = actions.add_parser("run", help="Pre-read every study of a date range.")
    dated.add_argument("--date", required=True, help="Study date YYYYMMDD, or a range YYYYMMDD-YYYYMMDD.")
    dated.add_argument("--modality", help="Only studies with this modality: CT, MR, DX, ...")
    dated.add_argument("--jobs", type=int, default=1,
                     help="Local processes running the jobs when no broker is configured (default 1: this one).")
    _job_options(dated)
    follow = actions.add_parser("watch", help="Follow the PACS and pre-read each study once it has arrived.")
    follow.add_argument("--interval", type=float, default=30.0, metavar="S", help="Seconds between polls (default 30).")
    follow.add_argument("--since", metavar="YYYYMMDD",
                        help="First Study Date to look at (default: the stored watermark, else "
                             "LOUPE_PREREAD_SWEEP_DAYS back).")
    follow.add_argument("--once", action="store_true",
                        help="Stop once every study seen has arrived and its jobs have run (for cron).")
    follow.add_argument("--jobs", type=int, default=1,
                        help="Local processes running the jobs when no broker is configured (default 1).")
    status = actions.add_parser("status", help="One row per pre-read study.")
    status.add_argument("--json", action="store_true")
    preread.set_defaults(run=run)


def _job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", choices=["stat", "routine"], default=None,
                        help="Default: STAT as the settings or the images' Requested Procedure Priority say, "
                             "else routine.")
    parser.add_argument("--force", action="store_true", help="Run again a study already done (or failed).")


def run(args: argparse.Namespace, settings: LoupeSettings) -> None:
    from agent.preread.ledger import PrereadLedger

    ledger = PrereadLedger(settings)
    try:
        if args.action == "status":
            _status(ledger, args.json)
            return
        if args.action == "watch":
            _watch(settings, args)
            return
        matches = [_study(settings, args.study)] if args.action == "study" else _dated(settings, args.date,
                                                                                       args.modality)
        if not matches:
            print("No study on the PACS matches.")
            return
        states = _preread(settings, ledger, matches, args.priority, args.force, jobs=getattr(args, "jobs", 1))
    finally:
        ledger.close()
    if "failed" in states:
        raise SystemExit(2)


def _study(settings: LoupeSettings, text: str) -> StudyMatch:
    from agent.pacs.client import PacsConnection
    from agent.pacs.search import check_uid, study

    uid = text.removeprefix("pacs:").strip()
    if "/" in uid:
        raise LoupeError("A pre-read is of a whole study: give pacs:STUDY_UID without a series.")
    return study(PacsConnection(settings), check_uid(uid))


def _dated(settings: LoupeSettings, dates: str, modality: str | None) -> list[StudyMatch]:
    from agent.pacs.client import PacsConnection
    from agent.pacs.search import StudyQuery, search_studies

    matches = search_studies(PacsConnection(settings), StudyQuery(date=dates, modality=modality), limit=RUN_LIMIT)
    if len(matches) >= RUN_LIMIT:
        print(f"note: the PACS answered {RUN_LIMIT} studies, perhaps not all; run again with a shorter --date range",
              file=sys.stderr)
    return matches


def _preread(settings: LoupeSettings, ledger, matches: list[StudyMatch], priority: str | None, force: bool, *,
             jobs: int) -> list[str]:
    """Queue each study, submit what is queued (STAT first), and print one line per study; the
    states the jobs run here ended in (``queued`` for each one sent to the workers)."""
    from agent.pacs.client import PacsConnection
    from agent.preread.job import job_key_for
    from agent.preread.priority import priority_of
    from agent.preread.runner import LocalDispatcher, dispatcher_for

    connection = PacsConnection(settings)
    asked: list[tuple[str, Any]] = []
    for match in matches:
        uid = match.study_uid
        try:
            level = priority or priority_of(settings, match, connection).level
            asked.append((uid, ledger.enqueue(job_key_for(connection, uid), level, force=force)))
        except LoupeError as error:
            if len(matches) == 1:
                raise
            print(f"pacs:{uid}  not queued: {error.message}")
    dispatcher = dispatcher_for(settings, max_workers=0 if jobs <= 1 else jobs)
    local = isinstance(dispatcher, LocalDispatcher)
    queued = [(uid, e) for uid, e in asked if e.state == "queued"]
    for uid, enqueued in asked:
        if enqueued.state != "queued":
            print(f"pacs:{uid}  {enqueued.message} (job {enqueued.job_id})")
    states: list[str] = []  # of the jobs run now (a study that failed before is only reported)
    order = sorted(queued, key=lambda item: ledger.job(item[1].job_id)["priority"] != "stat")
    try:
        for uid, enqueued in order:
            dispatcher.submit(enqueued.job_id, ledger.job(enqueued.job_id)["priority"])
            if not local:
                print(f"pacs:{uid}  {enqueued.message} for the workers (job {enqueued.job_id})")
                states.append("queued")
        if local:
            dispatcher.wait()
            for uid, enqueued in order:
                job = ledger.job(enqueued.job_id)
                print(f"pacs:{uid}  {_outcome(job)} (job {enqueued.job_id})")
                states.append(job["state"])
    finally:
        close = getattr(dispatcher, "close", None)
        if close is not None:
            close()
    return states


def _watch(settings: LoupeSettings, args: argparse.Namespace) -> None:
    """Poll until interrupted (or, with ``--once``, until nothing is waiting); jobs run here
    without a broker, one process each up to ``--jobs`` (one: in a pool process beside the poll)."""
    from datetime import datetime

    from agent.preread.runner import dispatcher_for
    from agent.preread.watch import watch

    if args.interval <= 0:
        raise LoupeError("--interval must be a positive number of seconds.")
    try:
        since = None if args.since is None else datetime.strptime(args.since, "%Y%m%d").date()
    except ValueError:
        raise LoupeError(f"--since must be a date as YYYYMMDD, not '{args.since}'.") from None
    dispatcher = dispatcher_for(settings, max_workers=max(args.jobs, 1))
    try:
        watch(settings, dispatcher, interval_s=args.interval, since=since, once=args.once,
              report=lambda line: print(line, flush=True))
        wait = getattr(dispatcher, "wait", None)
        if wait is not None:
            wait()
    except KeyboardInterrupt:
        print("stopped watching the PACS", file=sys.stderr)
    finally:
        close = getattr(dispatcher, "close", None)
        if close is not None:
            close()


def _outcome(job: dict[str, Any]) -> str:
    if job["state"] == "done":
        top = job["top_finding"]
        strongest = (f"; strongest {top['id']} {top['label']} {top['confidence']:.2f} on slice {top['slice']}"
                     if top else "")
        return (f"done: {job['findings']} finding(s) at the threshold{strongest}; pre-read session "
                f"{job['session_id']}")
    if job["state"] == "failed":
        return f"failed: {job['error']}"
    return f"{job['state']}" + (f": {job['error']}" if job["error"] else "")


def _status(ledger, as_json: bool) -> None:
    rows = ledger.status()
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        print("No study has been pre-read yet.")
        return
    print(f"{'state':8} {'priority':8} {'findings':>8}  {'top finding':28} {'queued at':25} study")
    for row in rows:
        top = row["top_finding"]
        top_text = f"{top['id']} {top['label'][:14]} {top['confidence']:.2f} s{top['slice']}" if top else "—"
        findings = "—" if row["findings"] is None else str(row["findings"])
        line = (f"{row['state']:8} {row['priority']:8} {findings:>8}  {top_text:28} {row['queued_at'] or '':25} "
                f"pacs:{row['study_uid']}")
        if row["error"]:
            line += f"  ({row['error']})"
        print(line)
