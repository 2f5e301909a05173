"""Recording a session as it happens, and what a stored session needs to come back.

``SessionRecorder`` is what the conversation calls: every event is written before it is shown;
each completed model step (history contents, findings, reports, second reads, state) is one
transaction; tool calls and model requests also go to the audit trail. It knows the tool
context and the events, not the conversation: the conversation hands it its state as a dict and
rebuilds itself from the stored rows (``Conversation.resume``). A history cut by a crash is
repaired here so that no function call is left without its response.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update

from agent.events import Event, ToolFailed, ToolFinished, ToolStarted
from agent.store.database import (AuditRow, EventRow, FindingRow, HistoryRow, ImageRow, ReportVersionRow,
                                  SecondReadRow, SessionConflictError, SessionRow, Store, StudyRow, ToolCallRow, _now)
from tools.checklists.record import restore_second_reads, second_reads_json
from tools.compare.record import PriorComparison
from tools.context import ToolContext
from tools.findings import Finding
from tools.report.document import ClinicalReport, ReportHistory
from tools.study import Study, Window

log = logging.getLogger(__name__)

INTERRUPTED_NOTE = "(The previous turn was interrupted before an answer; ask again if needed.)"
CONFLICT_MESSAGE = ("This session was changed in another tab or window since this one last read it; it has been "
                    "reloaded, so repeat your last action if it is still needed.")
#: While a turn holds its session, its lease is pushed on this often, whether or not events come
#: (a model call may run for minutes with retries).
_RENEW_EVERY_S = 15.0


class SessionRecorder:
    """Writes one session's events, steps, studies and audit entries to the store."""

    def __init__(self, store: Store, session_id: str, owner: str, version: int = 0):
        self.store = store
        self.session_id = session_id
        self.owner = owner
        #: The session's version this copy builds on; every commit must find it unchanged.
        self.version = version
        #: This copy of the session (one tab, one server) when it holds the session's lock.
        self.holder = f"{owner[:80]}:{uuid.uuid4().hex}"
        self.holding = False
        self._heartbeat: threading.Event | None = None
        self._started_args: dict[str, dict[str, Any]] = {}

    # -- the lock of a turn ---------------------------------------------------------------------

    def acquire(self) -> None:
        """Hold the session for a turn (``SessionBusyError`` when another copy holds it); a
        heartbeat keeps the lease alive until ``release``."""
        self.store.acquire(self.session_id, self.holder)
        self.holding = True
        self._heartbeat = stop = threading.Event()
        threading.Thread(target=self._beat, args=(stop,), daemon=True, name=f"lease-{self.session_id[:8]}").start()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(_RENEW_EVERY_S):
            try:
                self.store.renew(self.session_id, self.holder)
            except Exception:  # a failed renewal is retried at the next beat; the lease is long
                log.warning("could not renew the lock of session %s", self.session_id, exc_info=True)

    def release(self) -> None:
        if self.holding:
            self.holding = False
            if self._heartbeat is not None:
                self._heartbeat.set()
            self.store.release(self.session_id, self.holder)

    def stale(self) -> bool:
        """Another copy wrote the session since this one read or wrote it."""
        return self.store.version(self.session_id) != self.version

    # -- events and tool calls ------------------------------------------------------------------

    def event(self, event: Event, turn_id: int) -> None:
        payload = event.model_dump(mode="json", exclude={"artifacts"})
        with self.store.transaction() as db:
            if isinstance(event, ToolFinished):
                payload["artifacts"] = [self._image_row(db, a) for a in event.artifacts]
            db.add(EventRow(session_id=self.session_id, turn_id=turn_id, kind=event.kind, payload=payload))
            if isinstance(event, ToolStarted):
                self._started_args[event.call_id] = event.args
            elif isinstance(event, ToolFinished | ToolFailed):
                self._tool_call(db, event, turn_id)

    def _image_row(self, db, artifact) -> dict[str, Any]:
        digest = hashlib.sha256(artifact.data).hexdigest()
        if db.get(ImageRow, (self.session_id, digest)) is None:
            db.add(ImageRow(session_id=self.session_id, sha256=digest, mime_type=artifact.mime_type, data=artifact.data))
        return {"name": artifact.name, "caption": artifact.caption, "mime_type": artifact.mime_type,
                "for_model": artifact.for_model, "sha256": digest}

    def _tool_call(self, db, event: ToolFinished | ToolFailed, turn_id: int) -> None:
        args = self._started_args.pop(event.call_id, getattr(event, "args", {}))
        ok = isinstance(event, ToolFinished)
        result = event.output if ok else {"error": event.message}
        db.add(ToolCallRow(session_id=self.session_id, turn_id=turn_id, call_id=event.call_id, name=event.name,
                           args=args, ok=ok, result=result, duration_ms=event.duration_ms))
        self.audit("tool_call", {"tool": event.name, "args": audit_safe(args), "ok": ok,
                                 "duration_ms": event.duration_ms}, db=db)

    def audit(self, action: str, detail: dict[str, Any], *, db=None) -> None:
        """Append to the audit trail (inside ``db``'s transaction when given)."""
        if db is None:
            self.store.audit(self.owner, action, detail, session_id=self.session_id)
            return
        db.add(AuditRow(actor=self.owner, action=action, detail=detail, session_id=self.session_id))

    # -- steps ----------------------------------------------------------------------------------

    def commit(self, contents: list[dict[str, Any]], ctx: ToolContext, state: dict[str, Any]) -> None:
        """One transaction: new history contents, the findings, reports and second reads as they
        are in ``ctx``, and the conversation's ``state`` — refused (``SessionBusyError``) while
        another copy's turn holds the session, and (``SessionConflictError``) when the session
        changed since this copy read it: nothing of another server's is overwritten."""
        with self.store.transaction() as db:
            self.store.check_not_locked(db, self.session_id, self.holder)
            bumped = db.execute(update(SessionRow).where(SessionRow.id == self.session_id,
                                                         SessionRow.version == self.version)
                                .values(version=self.version + 1))
            if bumped.rowcount != 1:
                raise SessionConflictError(CONFLICT_MESSAGE)
            for content in contents:
                db.add(HistoryRow(session_id=self.session_id, content=content))
            self._write_findings(db, ctx)
            self._write_report_versions(db, ctx)
            self._write_second_reads(db, ctx)
            db.execute(update(SessionRow).where(SessionRow.id == self.session_id)
                       .values(state=state, updated_at=_now()))
        self.version += 1

    def _write_findings(self, db, ctx: ToolContext) -> None:
        db.execute(delete(FindingRow).where(FindingRow.session_id == self.session_id))
        for finding in ctx.findings.values():
            db.add(FindingRow(session_id=self.session_id, finding_id=finding.id, study_id=finding.study_id,
                              data=finding.model_dump(mode="json")))

    def _write_report_versions(self, db, ctx: ToolContext) -> None:
        """Versions are immutable: write the ones not stored yet, and audit each change."""
        for study_id, history in ctx.reports.items():
            stored = db.scalar(select(func.max(ReportVersionRow.version)).where(
                ReportVersionRow.session_id == self.session_id, ReportVersionRow.study_id == study_id)) or 0
            for report in history.versions[stored:]:
                db.add(ReportVersionRow(session_id=self.session_id, study_id=study_id, version=report.version,
                                        author=report.author_name or report.author, reason=report.reason,
                                        status=report.status, data=report.model_dump(mode="json")))
                action = "report_signed" if report.status == "signed" and report.reason == "signed" else "report_change"
                self.audit(action, {"study_id": study_id, "version": report.version, "author": report.author,
                                    "reason": report.reason, "status": report.status,
                                    "sha256": hashlib.sha256(report.model_dump_json().encode()).hexdigest()}, db=db)

    def _write_second_reads(self, db, ctx: ToolContext) -> None:
        if not ctx.second_reads:
            return
        data = second_reads_json(ctx)
        row = db.get(SecondReadRow, self.session_id)
        if row is None:
            db.add(SecondReadRow(session_id=self.session_id, data=data))
        elif row.data != data:
            row.data, row.updated_at = data, _now()

    # -- studies --------------------------------------------------------------------------------

    def save_study(self, study: Study, source: Path, modality: str | None = None) -> None:
        """Keep a copy of the study's bytes in the session folder, under neutral names."""
        with self.store.transaction() as db:
            if db.get(StudyRow, (self.session_id, study.id)) is not None:
                return
            relative = Path("sessions") / self.session_id / "studies" / study.id
            _copy_neutral(source, self.store.data_dir / relative)
            # The modality the clinician gave a PNG/JPEG is needed to reopen it the same way; a
            # guessed one is not stored (the same pixels give the same guess, still a guess).
            named = modality or (study.safe.modality if study.safe.modality_source != "guess" else None)
            db.add(StudyRow(session_id=self.session_id, study_id=study.id, storage=str(relative), modality=named))


def _copy_neutral(source: Path, target: Path) -> None:
    """Copy a file or a folder's files as 00000.ext, 00001.ext… (names may carry PHI)."""
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for index, path in enumerate(files):
        shutil.copyfile(path, target / f"{index:05d}{path.suffix.lower()[:6]}")


def audit_safe(args: dict[str, Any]) -> dict[str, Any]:
    """Tool arguments fit for the audit trail: file paths (which may name a patient) hashed."""
    safe = {}
    for key, value in args.items():
        if key == "path" and value is not None:
            text = value if isinstance(value, str) else "\n".join(map(str, value))
            safe[key] = "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
        else:
            safe[key] = value
    return safe


def tool_state(ctx: ToolContext) -> dict[str, Any]:
    """The tool context's part of a session's stored state: views, counters, sample centres."""
    return {
        "current_study_id": ctx.current_study_id,
        "views": {sid: {"frame": v.frame, "window": None if v.window is None else v.window.model_dump(mode="json")}
                  for sid, v in ctx.views.items()},
        "finding_counter": ctx.findings_issued,
        "retired_findings": dict(ctx.retired_findings),
        "finding_samples": {fid: [list(c) for c in centres] for fid, centres in ctx.finding_samples.items()},
        "comparisons": {sid: comparison.model_dump(mode="json") for sid, comparison in ctx.comparisons.items()},
    }


def restore_tool_state(ctx: ToolContext, store: Store, session_id: str, state: dict[str, Any]) -> None:
    """Put findings, reports, second reads, views and counters back into ``ctx``, whose studies
    have been reopened from their stored copies."""
    for sid, view in state.get("views", {}).items():
        if sid in ctx.views:
            ctx.views[sid].frame = view["frame"]
            ctx.views[sid].window = None if view["window"] is None else Window.model_validate(view["window"])
    if state.get("current_study_id") in ctx.views:
        ctx.current_study_id = state["current_study_id"]
    for data in store.findings(session_id):
        finding = Finding.model_validate(data)
        ctx.findings[finding.id] = finding
    second_reads = store.second_reads(session_id)
    if second_reads:
        restore_second_reads(ctx, second_reads)
    for row in store.report_versions(session_id):
        ctx.reports.setdefault(row.study_id, ReportHistory()).versions.append(ClinicalReport.model_validate(row.data))
    ctx.findings_issued = int(state.get("finding_counter", len(ctx.findings)))
    ctx.retired_findings = dict(state.get("retired_findings", {}))
    ctx.comparisons = {sid: PriorComparison.model_validate(data) for sid, data in state.get("comparisons", {}).items()}
    ctx.finding_samples = {fid: tuple(tuple(c) for c in centres)
                           for fid, centres in state.get("finding_samples", {}).items()}


def repaired_history(history: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The history fit to send, and the contents added to make it so.

    Steps are committed whole (a model turn with function calls together with their responses),
    so a crash can only leave the clinician's message without the model's reply; a short note
    from the model restores the user/model alternation.
    """
    if history and history[-1].get("role") == "user":
        added = [{"role": "model", "parts": [{"text": INTERRUPTED_NOTE}]}]
        return history + added, added
    return list(history), []
