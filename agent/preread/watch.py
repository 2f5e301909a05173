"""``loupe preread watch``: follow the PACS and pre-read each study once it has arrived.

Any DICOMweb PACS will do: each poll is a QIDO study search on a Study Date range starting at a
stored watermark (``preread-watch.json`` in the data folder), which moves on to "today minus
``LOUPE_PREREAD_SWEEP_DAYS``" and never back — a study sent late keeps its acquisition date, so
a few days are swept each time (and never past a study still waiting to become stable). ``NumberOfStudyRelatedInstances`` comes with every row; a study
counts as arrived once that number has stayed the same for ``LOUPE_PREREAD_STABLE_S``
(``agent.preread.arrivals``). Then the job key is read (its image instances: Loupe's own SR /
PDF series never count, so a result stored back makes no new job) and the job is enqueued in
the ledger and submitted; the ledger answers a study already done with "already done".

On Orthanc, with ``LOUPE_PREREAD_ORTHANC_URL``, its ``/changes`` feed (``StableStudy``) is read
first on every poll and what it announces is handed on at once (``agent.preread.orthanc_changes``);
the sweep still runs, since a restart of Orthanc loses its events (``docs/preread.md``).
Studies without a Study Date are not found by a date range; ``loupe preread study`` takes them.

Which studies are STAT: ``agent.preread.priority`` (the settings, else the images' Requested
Procedure Priority).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from agent.pacs.client import PacsConnection, PacsNotFoundError
from agent.pacs.search import StudyMatch, StudyQuery, search_studies, study
from agent.preread.arrivals import ArrivalTracker
from agent.preread.job import job_key_for
from agent.preread.ledger import Enqueued, PrereadError, PrereadLedger
from agent.preread.orthanc_changes import OrthancChanges
from agent.preread.priority import priority_of
from agent.preread.runner import Dispatcher
from agent.settings import LoupeSettings
from agent.store.files import write_atomically
from tools.errors import LoupeError

log = logging.getLogger(__name__)

#: Studies asked for per poll; more are taken on the next polls as the watermark allows.
POLL_LIMIT = 1000
WATERMARK_FILE = "preread-watch.json"


@dataclass(frozen=True)
class Handed:
    """A study that arrived during a poll, and what the ledger made of it."""

    study_uid: str
    priority: str
    enqueued: Enqueued | None
    error: str | None = None


class Watermark:
    """The first Study Date each poll asks for, kept in the data folder across restarts."""

    def __init__(self, settings: LoupeSettings, since: date | None = None):
        self.path = Path(settings.data_dir) / WATERMARK_FILE
        self.sweep = timedelta(days=settings.preread_sweep_days)
        stored = self._stored()
        self.since = since or stored

    def _stored(self) -> date | None:
        try:
            return date.fromisoformat(json.loads(self.path.read_text())["since"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as error:
            raise PrereadError(f"The pre-read watermark {self.path} is damaged ({error}); delete it or give --since."
                               ) from error

    def range_for(self, today: date) -> str:
        start = self.since if self.since is not None else today - self.sweep
        return f"{start:%Y%m%d}-"

    def advance(self, today: date, waiting: list[date] = ()) -> None:
        """Move on to today minus the sweep, never back, and never past the Study Date of a
        study still ``waiting`` to become stable (it would drop out of the next polls)."""
        floor = min([today - self.sweep, *waiting])
        if self.since is None or floor > self.since:
            self.since = floor
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, json.dumps({"since": floor.isoformat()}).encode())


class PacsWatch:
    """One watcher: ``poll()`` asks the PACS once and hands on what has arrived."""

    def __init__(self, settings: LoupeSettings, ledger: PrereadLedger, dispatcher: Dispatcher, *,
                 since: date | None = None):
        self.settings, self.ledger, self.dispatcher = settings, ledger, dispatcher
        self.connection = PacsConnection(settings)
        self.tracker = ArrivalTracker(settings.preread_stable_s)
        self.watermark = Watermark(settings, since)
        self.changes = OrthancChanges(settings, self.connection) if settings.preread_orthanc_url else None

    def poll(self, now: float | None = None, today: date | None = None) -> list[Handed]:
        now = time.monotonic() if now is None else now
        today = today or date.today()
        handed = self._announced(now)
        matches = search_studies(self.connection, StudyQuery(date=self.watermark.range_for(today)), limit=POLL_LIMIT)
        handed += [self._hand_on(match) for match in matches
                   if self.tracker.observe(match.study_uid, match.instances, now)]
        waiting = set(self.tracker.waiting())
        self.watermark.advance(today, [_date(m.study_date) for m in matches if m.study_uid in waiting and m.study_date])
        return handed

    def _announced(self, now: float) -> list[Handed]:
        """The studies Orthanc's feed announced stable, handed on without Loupe's quiet time (the
        ones already handed on at their count are passed over)."""
        if self.changes is None:
            return []
        handed = []
        for study_uid in self.changes.stable_studies():
            try:
                match = study(self.connection, study_uid)
            except PacsNotFoundError:  # deleted since it was announced
                continue
            if not self.tracker.stable_now(match.study_uid, match.instances, now):
                continue
            handed.append(self._hand_on(match))
        self.changes.handed_on()
        return handed

    def _hand_on(self, match: StudyMatch) -> Handed:
        priority = "routine"
        try:
            priority = priority_of(self.settings, match, self.connection).level
            enqueued = self.ledger.enqueue(job_key_for(self.connection, match.study_uid), priority)
        except LoupeError as error:  # one study the PACS cannot give (no images): the others go on
            self.tracker.handed_on(match.study_uid, match.instances)
            return Handed(match.study_uid, priority, None, error.message)
        self.tracker.handed_on(match.study_uid, match.instances)
        if enqueued.state == "queued":  # new, or queued before a restart: a duplicate submit is skipped
            self.dispatcher.submit(enqueued.job_id, priority)
        return Handed(match.study_uid, priority, enqueued)


def watch(settings: LoupeSettings, dispatcher: Dispatcher, *, interval_s: float, since: date | None = None,
          once: bool = False, stop: threading.Event | None = None, report=print) -> None:
    """Poll every ``interval_s`` until ``stop`` is set; a PACS that does not answer is reported
    and asked again at the next poll. ``once``: stop as soon as no study seen is still waiting to
    become stable (for cron; a PACS that does not answer ends it)."""
    stop = stop or threading.Event()
    ledger = PrereadLedger(settings)
    try:
        watcher = PacsWatch(settings, ledger, dispatcher, since=since)
        while not stop.is_set():
            try:
                for handed in watcher.poll():
                    report(_line(handed))
            except LoupeError as error:
                if once:
                    raise
                report(f"the PACS could not be polled: {error.message} (trying again in {interval_s:g} s)")
            if once and not watcher.tracker.waiting():
                return
            stop.wait(interval_s)
    finally:
        ledger.close()


def _date(study_date: str) -> date:
    return datetime.strptime(study_date[:8], "%Y%m%d").date()


def _line(handed: Handed) -> str:
    if handed.enqueued is None:
        return f"pacs:{handed.study_uid}  not queued: {handed.error}"
    return f"pacs:{handed.study_uid}  arrived ({handed.priority}): {handed.enqueued.message} (job {handed.enqueued.job_id})"
