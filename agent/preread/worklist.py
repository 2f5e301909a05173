"""The clinician's worklist: the pre-read studies, and a clinician's own session opened from one.

``worklist`` lists the ledger's studies (one row each, its newest job) STAT first, then by the
strength of Loupe's top finding, then by arrival (earliest first), with what a clinician picks a
study by: state, priority, findings, the top finding, the time since it arrived, and the
modality and description of the pre-read session's title (``Pre-read · CT · CHEST · 2000-01-01``,
made from the study's header by ``agent.samples.session_title``): the PACS is not asked again.

``open_preread`` starts the clinician's own session **from** a done pre-read: a copy of the
pre-read session (``Store.copy_session``: history, events, images, tool calls, findings, report
versions, its state; the study bytes hard-linked under the new session's folder), owned by the
clinician, so the findings, figures and draft are there at once and nothing is recomputed. The
pre-read session itself is not changed and stays no clinician's (``PREREAD_OWNER``). The copy's
id is derived from the pre-read session and the clinician, so opening the same pre-read again
brings back the clinician's copy (and what they did in it) instead of making a second one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.conversation import Conversation
from agent.preread.job import PREREAD_OWNER
from agent.preread.ledger import PrereadError, PrereadLedger
from agent.settings import LoupeSettings
from agent.store.database import PrereadJobRow, SessionRow, Store, StoreError

#: The pre-read session's title starts so (``agent.preread.job``); the rest is the study's.
TITLE_PREFIX = "Pre-read · "


@dataclass(frozen=True)
class WorklistRow:
    job_id: int
    study_uid: str
    state: str
    priority: str
    findings: int | None
    #: "nodule · 0.93 · slice 12", or "" before the pre-read is done / when it found no candidate.
    top_finding: str
    top_confidence: float
    queued_at: str | None
    #: "4 min", "2 h", "3 d" since the study was queued ("" when unknown).
    since_arrival: str
    modality: str
    description: str
    session_id: str | None
    error: str | None

    @property
    def openable(self) -> bool:
        return self.state == "done" and bool(self.session_id)


def worklist(settings: LoupeSettings, modality: str | None = None, state: str | None = None,
             *, store: Store | None = None, now: datetime | None = None) -> list[WorklistRow]:
    """The pre-read studies in the order a clinician reads them (see the module's docstring);
    only those of ``modality`` (CT, MR, ...) and in ``state`` (queued, running, done, failed)
    when given. ``store``: the session database already open (the app's), else one is opened."""
    ledger = PrereadLedger(settings, store)  # on the app's store when given, else its own
    try:
        jobs = ledger.status()
        titles = _titles(ledger.store, [j["session_id"] for j in jobs if j["session_id"]])
    finally:
        ledger.close()
    now = now or datetime.now(UTC)
    rows = [_row(job, titles.get(job["session_id"] or ""), now) for job in jobs]
    return [r for r in rows if (state is None or r.state == state)  # in the ledger's order (status())
            and (modality is None or r.modality.upper() == modality.upper())]


def any_preread(store: Store) -> bool:
    """The ledger holds at least one job (the app then shows the worklist without a PACS too)."""
    with Session(store.engine) as db:
        return db.scalar(select(PrereadJobRow.id).limit(1)) is not None


def modalities(rows: list[WorklistRow]) -> list[str]:
    return sorted({r.modality for r in rows if r.modality})


def _titles(store: Store, session_ids: list[str]) -> dict[str, str]:
    if not session_ids:
        return {}
    with Session(store.engine) as db:
        return dict(db.execute(select(SessionRow.id, SessionRow.title).where(
            SessionRow.id.in_(session_ids), SessionRow.owner == PREREAD_OWNER)).all())


def _row(job: dict[str, Any], title: str | None, now: datetime) -> WorklistRow:
    parts = (title or "").removeprefix(TITLE_PREFIX).split(" · ") if title else []
    top = job["top_finding"] or {}
    top_text = (f"{top.get('label') or 'finding'} · {float(top.get('confidence') or 0):.2f} · slice {top.get('slice')}"
                if top else "")
    return WorklistRow(job_id=job["job_id"], study_uid=job["study_uid"], state=job["state"],
                       priority=job["priority"], findings=job["findings"], top_finding=top_text,
                       top_confidence=float(top.get("confidence") or 0.0), queued_at=job["queued_at"],
                       since_arrival=_since(job["queued_at"], now), modality=parts[0] if parts else "",
                       description=" · ".join(parts[1:]), session_id=job["session_id"], error=job["error"])


def _since(iso: str | None, now: datetime) -> str:
    if not iso:
        return ""
    seconds = max(0.0, (now - datetime.fromisoformat(iso)).total_seconds())
    if seconds < 60:
        return "<1 min"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def copy_id(preread_session_id: str, owner: str) -> str:
    """The id of ``owner``'s session opened from the pre-read session (within 64 characters)."""
    return f"{preread_session_id[:40]}-{hashlib.sha256(owner.encode()).hexdigest()[:16]}"


def open_preread(settings: LoupeSettings, store: Store, job_id: int, owner: str, *, vision=None) -> Conversation:
    """The clinician's own session of pre-read job ``job_id`` (which must be done): made as a
    copy of the pre-read session the first time, resumed after that. A ``PrereadError`` in one
    sentence when the job is not done or its session is gone."""
    if owner == PREREAD_OWNER:
        raise PrereadError("Pre-read sessions are opened by clinicians, not by the pre-read itself.")
    job = PrereadLedger(settings, store).job(job_id)  # on the open store: no migration check per call
    source = job["session_id"]
    if job["state"] != "done" or not source:
        raise PrereadError(f"The pre-read of this study is {job['state']}, not done: there is nothing to open yet.")
    if not store.exists(source, PREREAD_OWNER):
        raise PrereadError("The pre-read session of this study is gone (a newer pre-read may be running); "
                           "refresh the worklist.")
    new_id = copy_id(source, owner)
    if not store.exists(new_id, owner):
        title = store.session_row(source, PREREAD_OWNER).title.removeprefix(TITLE_PREFIX)
        try:
            store.copy_session(source, PREREAD_OWNER, new_id, owner, f"{title} (pre-read)"[:200])
        except StoreError:
            if not store.exists(new_id, owner):
                raise
            # opened at the same moment in another tab: that tab's copy is this clinician's copy
        else:
            store.audit(owner, "preread_opened", {"job_id": job_id, "source_session": source}, session_id=new_id)
    return Conversation.resume(settings, store, new_id, owner, vision=vision)
