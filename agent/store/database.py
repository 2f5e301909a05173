"""Where sessions live: a database through SQLAlchemy 2 (SQLite file by default, any URL).

What is stored, per session: its owner, title and state (current study, frame, window, finding
counter, released images, usage); the studies (by content hash, their bytes copied under the
data directory — never a patient's name or a source path in a column); the model history
exactly as the model needs it (google-genai contents as JSON, thought signatures included);
every event, the images they carried (by hash), tool calls with arguments, results and
durations; findings; report versions and second-read records; and, outside any session, the
append-only audit trail; and the pre-read job ledger (``PrereadJobRow``, ``agent.preread.ledger``).

Each write is one transaction. The conversation commits a model step (the model's function
calls together with their responses) in one go, so a process killed mid-turn leaves at most
that step unrecorded, never a call without its response.

Several app servers may share one database (PostgreSQL) and one data folder. A session then has
a *version*, raised by every write of its state: a write that does not build on the version it
read is refused (``SessionConflictError``) rather than overwriting another server's. While a
turn runs, its conversation holds the session's *lock* (a row with a lease, renewed by a heartbeat
while the turn goes on): another tab, on this server or another, cannot start a turn or change the session
until it is released (``SessionBusyError``, one sentence). A lock left by a killed process is
taken over at once on the same host (its process is gone), elsewhere when its lease expires.

The schema is migrated by Alembic (``agent/store/migrations``) when the store opens.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text,
                        UniqueConstraint, create_engine, delete, event, func, inspect, select, text, update)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tools.errors import LoupeError

#: Kept beside Alembic's revision so that a Loupe from before Alembic (which reads only this)
#: refuses a database written by a newer one instead of misreading it.
SCHEMA_VERSION = 3
#: A copy's folder with no session row, untouched this long, was left by a process that died.
ABANDONED_COPY = timedelta(minutes=5)
#: How long a turn's lock lasts without renewal (a running turn's heartbeat renews it every 15 s).
LOCK_LEASE = timedelta(seconds=60)


class StoreError(LoupeError):
    """The session database cannot be used (missing permissions, damaged file, unknown session)."""


class SessionNotFoundError(StoreError):
    """No session with that id belongs to this user."""


class SessionBusyError(StoreError):
    """Another tab or server is running a turn of this session."""


class SessionConflictError(StoreError):
    """The session changed elsewhere since this copy of it was read."""


BUSY_MESSAGE = ("This session is busy answering in another tab or window; wait for that answer to finish, "
                "then try again (nothing was changed).")


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class SchemaRow(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    migrated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class SessionLockRow(Base):
    """Held while a turn of the session runs; ``expires_at`` is pushed on as the turn records events."""

    __tablename__ = "session_locks"
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StudyRow(Base):
    __tablename__ = "studies"
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    study_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    storage: Mapped[str] = mapped_column(Text, doc="Path of the stored bytes, relative to the data directory.")
    modality: Mapped[str | None] = mapped_column(String(16))
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class HistoryRow(Base):
    __tablename__ = "history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    content: Mapped[dict[str, Any]] = mapped_column(JSON)


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    turn_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ImageRow(Base):
    __tablename__ = "images"
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    mime_type: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ToolCallRow(Base):
    __tablename__ = "tool_calls"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    turn_id: Mapped[int] = mapped_column(Integer)
    call_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(64))
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    ok: Mapped[bool] = mapped_column(Boolean)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    duration_ms: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class FindingRow(Base):
    __tablename__ = "findings"
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    finding_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    study_id: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class ReportVersionRow(Base):
    __tablename__ = "report_versions"
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    study_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    author: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class SecondReadRow(Base):
    __tablename__ = "second_reads"
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AuditRow(Base):
    """Append-only: the store has no way to change or remove a row, and SQLite triggers refuse it."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    actor: Mapped[str] = mapped_column(String(200))
    session_id: Mapped[str | None] = mapped_column(String(64), index=True)  # no FK: outlives deleted sessions
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class PrereadJobRow(Base):
    """One pre-read job (``agent.preread.ledger``): a study at one instance count and analysis
    version, analysed once; a forced re-run reuses the row (``run`` counts them)."""

    __tablename__ = "preread_jobs"
    __table_args__ = (UniqueConstraint("study_uid", "instances", "version", name="uq_preread_job_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    instances: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    priority: Mapped[str] = mapped_column(String(16), default="routine")
    state: Mapped[str] = mapped_column(String(16), index=True)  # queued | running | done | failed
    run: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    session_id: Mapped[str | None] = mapped_column(String(64))  # no FK: the session is replaced by a re-run
    findings: Mapped[int | None] = mapped_column(Integer)
    anomaly_found: Mapped[bool | None] = mapped_column(Boolean)
    top_finding: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)


class PrereadChunkRow(Base):
    """Some slices of a long series that one pre-read job shares out to the workers
    (``agent.preread.chunks``): claimed, searched and answered with their detections."""

    __tablename__ = "preread_chunks"
    job_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    folder: Mapped[str] = mapped_column(Text)  # the retrieved series, in the shared data folder
    frame_count: Mapped[int] = mapped_column(Integer)  # of the whole series: a check that it is the same one
    frames: Mapped[list[int]] = mapped_column(JSON)
    per_slice: Mapped[int] = mapped_column(Integer)  # detections kept a slice
    state: Mapped[str] = mapped_column(String(16))  # queued | running | done | failed
    worker: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    detections: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)


_AUDIT_TRIGGERS = {
    "sqlite": (
        "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
    ),
    "postgresql": (
        "CREATE OR REPLACE FUNCTION loupe_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$",
        # DROP + CREATE rather than CREATE OR REPLACE TRIGGER, which PostgreSQL has only from 14.
        "DROP TRIGGER IF EXISTS audit_append_only ON audit",
        "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
        "FOR EACH ROW EXECUTE PROCEDURE loupe_audit_append_only()",
    ),
}
#: Serialises two servers migrating one PostgreSQL database at the same moment.
_MIGRATION_LOCK_KEY = 0x4C4F555045  # "LOUPE"


@dataclass(frozen=True)
class SessionSummary:
    id: str
    owner: str
    title: str
    created_at: datetime
    updated_at: datetime
    turns: int


class Store:
    """The database and the folder of stored study bytes (``data_dir``)."""

    def __init__(self, url: str, data_dir: Path):
        self.url = url
        self.data_dir = data_dir
        self.engine = _engine(url)
        try:
            self._migrate()
        except (OperationalError, DatabaseError) as error:
            self.engine.dispose()
            raise StoreError(f"The session database cannot be used ({_reason(error)}); check the file "
                             "or set LOUPE_DB_URL to another database.") from error

    @classmethod
    def for_data_dir(cls, data_dir: Path, url: str | None = None) -> Store:
        """The default SQLite file under ``data_dir`` (``loupe.db``), or ``url`` when given."""
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"The data folder {data_dir} cannot be created ({error.strerror}).") from error
        return cls(url or f"sqlite:///{data_dir / 'loupe.db'}", data_dir)

    def close(self) -> None:
        self.engine.dispose()

    def _migrate(self) -> None:
        """Create or upgrade the schema (Alembic), then the audit trail's append-only triggers."""
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            tables = set(inspect(connection).get_table_names())
            if "schema_version" in tables:
                current = connection.scalar(select(func.max(SchemaRow.version)))
                if current is not None and current > SCHEMA_VERSION:
                    raise StoreError("The session database was written by a newer Loupe; upgrade Loupe to open it.")
            _alembic_upgrade(connection, tables)
            for statement in _AUDIT_TRIGGERS.get(connection.dialect.name, ()):
                connection.exec_driver_sql(statement)
            if connection.scalar(select(func.max(SchemaRow.version))) == SCHEMA_VERSION:
                connection.execute(update(SchemaRow).values(migrated_at=_now()))  # proves it is writable now
            else:
                connection.execute(SchemaRow.__table__.insert().values(version=SCHEMA_VERSION, migrated_at=_now()))

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with Session(self.engine) as db, db.begin():
            yield db

    # -- several servers: versions and locks ------------------------------------------------------

    def version(self, session_id: str) -> int:
        with Session(self.engine) as db:
            return int(db.scalar(select(SessionRow.version).where(SessionRow.id == session_id)) or 0)

    def acquire(self, session_id: str, holder: str) -> None:
        """Take the session's lock for ``holder``, or raise ``SessionBusyError``."""
        for _ in range(2):
            try:
                with self.transaction() as db:
                    db.add(SessionLockRow(session_id=session_id, holder=holder, host=_HOST, pid=os.getpid(),
                                          expires_at=_now() + LOCK_LEASE))
                return
            except IntegrityError:
                if not self._clear_dead_lock(session_id, holder):
                    raise SessionBusyError(BUSY_MESSAGE) from None
        raise SessionBusyError(BUSY_MESSAGE)

    def _clear_dead_lock(self, session_id: str, holder: str) -> bool:
        """Remove a lock whose holder is this one, whose lease ran out, or whose process on this
        host is gone (killed mid-turn); True when there is no other live holder. The removal
        names the holder it judged dead, so a fresh lock taken meanwhile by another copy stays."""
        with self.transaction() as db:
            lock = db.get(SessionLockRow, session_id)
            if lock is None:
                return True
            if _held_by_other(lock, holder):
                return False
            # Holder tokens are unique per copy: a lock taken meanwhile by another copy has another.
            db.execute(delete(SessionLockRow).where(SessionLockRow.session_id == session_id,
                                                    SessionLockRow.holder == lock.holder))
            return True

    def renew(self, session_id: str, holder: str) -> None:
        with self.transaction() as db:
            db.execute(update(SessionLockRow).where(SessionLockRow.session_id == session_id,
                                                    SessionLockRow.holder == holder)
                       .values(expires_at=_now() + LOCK_LEASE))

    def release(self, session_id: str, holder: str) -> None:
        with self.transaction() as db:
            db.execute(delete(SessionLockRow).where(SessionLockRow.session_id == session_id,
                                                    SessionLockRow.holder == holder))

    def check_not_locked(self, db: Session, session_id: str, holder: str) -> None:
        """Inside a write: refuse it while another holder's live turn has the session."""
        if _held_by_other(db.get(SessionLockRow, session_id), holder):
            raise SessionBusyError(BUSY_MESSAGE)

    def held_by_other(self, session_id: str, holder: str | None) -> bool:
        """A live turn of another copy than ``holder`` (of any copy when None) holds the session now."""
        with Session(self.engine) as db:
            return _held_by_other(db.get(SessionLockRow, session_id), holder)

    def turn_running(self, session_id: str) -> bool:
        """A live turn (in any tab, on any server) holds the session now."""
        return self.held_by_other(session_id, None)

    # -- sessions -------------------------------------------------------------------------------

    def create_session(self, owner: str, title: str = "", session_id: str | None = None) -> str:
        new_id = session_id or uuid.uuid4().hex
        with self.transaction() as db:
            db.add(SessionRow(id=new_id, owner=owner, title=title, state={}))
        return new_id

    def session_row(self, session_id: str, owner: str) -> SessionRow:
        with Session(self.engine, expire_on_commit=False) as db:
            row = db.get(SessionRow, session_id)
        if row is None or row.owner != owner:
            raise SessionNotFoundError(f"There is no session '{session_id}' for you.")
        return row

    def exists(self, session_id: str, owner: str) -> bool:
        with Session(self.engine) as db:
            row = db.get(SessionRow, session_id)
            return row is not None and row.owner == owner

    def taken(self, session_id: str) -> bool:
        """Some user's session has this id (a new one cannot take it)."""
        with Session(self.engine) as db:
            return db.get(SessionRow, session_id) is not None

    def list_sessions(self, owner: str) -> list[SessionSummary]:
        with Session(self.engine) as db:
            rows = db.scalars(select(SessionRow).where(SessionRow.owner == owner)
                              .order_by(SessionRow.updated_at.desc())).all()
            return [SessionSummary(r.id, r.owner, r.title, r.created_at, r.updated_at, int(r.state.get("turns", 0)))
                    for r in rows]

    def rename(self, session_id: str, owner: str, title: str) -> None:
        self.session_row(session_id, owner)
        with self.transaction() as db:
            db.execute(update(SessionRow).where(SessionRow.id == session_id).values(title=title, updated_at=_now()))

    def delete(self, session_id: str, owner: str) -> None:
        """Delete a session and everything stored for it, including its study bytes."""
        self.session_row(session_id, owner)
        with self.transaction() as db:
            for table in (HistoryRow, EventRow, ImageRow, ToolCallRow, FindingRow, ReportVersionRow, SecondReadRow,
                          StudyRow, SessionLockRow):
                db.execute(delete(table).where(table.session_id == session_id))
            db.execute(delete(SessionRow).where(SessionRow.id == session_id))
        shutil.rmtree(self.session_folder(session_id), ignore_errors=True)

    def copy_session(self, source_id: str, source_owner: str, new_id: str, new_owner: str, title: str) -> str:
        """A copy of session ``source_id`` (``source_owner``'s) under ``new_id``, owned by
        ``new_owner``: its state, history, events, images, tool calls, findings, report versions
        and second reads, in one transaction, and its stored study bytes under the new session's
        folder (hard links where the file system allows, else copies: deleting either session
        never takes the other's bytes). The source is not changed; the copy is audited."""
        source = self.session_row(source_id, source_owner)
        if self.taken(new_id):
            raise StoreError(f"A session '{new_id}' exists already.")
        studies = self.studies(source_id)
        moved: dict[str, str] = {}
        self._claim_folder(new_id)
        try:
            for study in studies:
                relative = Path("sessions") / new_id / "studies" / study.study_id
                _link_tree(self.data_dir / study.storage, self.data_dir / relative)
                moved[study.study_id] = str(relative)
            with self.transaction() as db:
                db.add(SessionRow(id=new_id, owner=new_owner, title=title, state=dict(source.state), version=0))
                db.flush()
                for table in (HistoryRow, EventRow, ImageRow, ToolCallRow, FindingRow, ReportVersionRow,
                              SecondReadRow, StudyRow):
                    columns = table.__table__.columns
                    serial = [c.name for c in columns if c.primary_key and c.autoincrement is True]
                    order = [columns[name] for name in serial] or list(table.__table__.primary_key.columns)
                    rows = db.execute(select(table.__table__).where(columns["session_id"] == source_id)
                                      .order_by(*order)).mappings().all()
                    copies = []
                    for row in rows:
                        copy = {k: v for k, v in row.items() if k not in serial}
                        copy["session_id"] = new_id
                        if table is StudyRow:
                            copy["storage"] = moved[row["study_id"]]
                        copies.append(copy)
                    if copies:
                        db.execute(table.__table__.insert(), copies)
                db.add(AuditRow(actor=new_owner, action="session_copied", session_id=new_id,
                                detail={"source_session": source_id, "source_owner": source_owner,
                                        "studies": len(studies)}))
        except Exception as error:
            if not self.taken(new_id):  # nothing of a copy that did not happen is left
                shutil.rmtree(self.session_folder(new_id), ignore_errors=True)
            if isinstance(error, IntegrityError):  # made meanwhile under the same id
                raise StoreError(f"A session '{new_id}' exists already.") from error
            raise
        return new_id

    def _claim_folder(self, new_id: str) -> None:
        """Make the new session's folder, or refuse: another copy under the same id (a second tab)
        is being made in it. Creating a folder is atomic, so of two racing copies one makes it and
        the other never touches it; a folder left by a copy whose process died (no session row,
        untouched for ``ABANDONED_COPY``) is cleared first."""
        folder = self.session_folder(new_id)
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists() and not self.taken(new_id):
            age = datetime.now().timestamp() - folder.stat().st_mtime
            if age > ABANDONED_COPY.total_seconds():
                shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.mkdir()
        except FileExistsError:
            raise StoreError(f"A session '{new_id}' is being made already.") from None

    def session_folder(self, session_id: str) -> Path:
        return self.data_dir / "sessions" / session_id

    # -- reading a session back -----------------------------------------------------------------

    def history(self, session_id: str) -> list[dict[str, Any]]:
        with Session(self.engine) as db:
            return list(db.scalars(select(HistoryRow.content).where(HistoryRow.session_id == session_id)
                                   .order_by(HistoryRow.id)))

    def events(self, session_id: str) -> list[dict[str, Any]]:
        with Session(self.engine) as db:
            return [dict(r.payload, kind=r.kind, turn_id=r.turn_id)
                    for r in db.scalars(select(EventRow).where(EventRow.session_id == session_id).order_by(EventRow.id))]

    def image(self, session_id: str, sha256: str) -> bytes | None:
        with Session(self.engine) as db:
            row = db.get(ImageRow, (session_id, sha256))
            return None if row is None else row.data

    def set_study_modality(self, session_id: str, study_id: str, modality: str | None) -> None:
        """The modality a stored PNG/JPEG is reopened with (the clinician named it)."""
        with self.transaction() as db:
            row = db.get(StudyRow, (session_id, study_id))
            if row is not None:
                row.modality = modality

    def studies(self, session_id: str) -> list[StudyRow]:
        with Session(self.engine, expire_on_commit=False) as db:
            return list(db.scalars(select(StudyRow).where(StudyRow.session_id == session_id)
                                   .order_by(StudyRow.added_at)))

    def findings(self, session_id: str) -> list[dict[str, Any]]:
        with Session(self.engine) as db:
            return list(db.scalars(select(FindingRow.data).where(FindingRow.session_id == session_id)))

    def report_versions(self, session_id: str) -> list[ReportVersionRow]:
        with Session(self.engine, expire_on_commit=False) as db:
            return list(db.scalars(select(ReportVersionRow).where(ReportVersionRow.session_id == session_id)
                                   .order_by(ReportVersionRow.study_id, ReportVersionRow.version)))

    def second_reads(self, session_id: str) -> dict[str, Any] | None:
        with Session(self.engine) as db:
            row = db.get(SecondReadRow, session_id)
            return None if row is None else row.data

    def tool_calls(self, session_id: str) -> list[ToolCallRow]:
        with Session(self.engine, expire_on_commit=False) as db:
            return list(db.scalars(select(ToolCallRow).where(ToolCallRow.session_id == session_id)
                                   .order_by(ToolCallRow.id)))

    # -- audit ----------------------------------------------------------------------------------

    def audit(self, actor: str, action: str, detail: dict[str, Any], session_id: str | None = None) -> None:
        with self.transaction() as db:
            db.add(AuditRow(actor=actor, action=action, detail=detail, session_id=session_id))

    def audit_rows(self, session_id: str | None = None, actor: str | None = None) -> list[AuditRow]:
        """The trail, or a session's part of it; only ``actor``'s entries when given."""
        with Session(self.engine, expire_on_commit=False) as db:
            query = select(AuditRow).order_by(AuditRow.id)
            if session_id is not None:
                query = query.where(AuditRow.session_id == session_id)
            if actor is not None:
                query = query.where(AuditRow.actor == actor)
            return list(db.scalars(query))


def _link_tree(source: Path, target: Path) -> None:
    """The files of folder ``source`` under ``target``: hard links, else copies."""
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for path in files:
        placed = target / (path.relative_to(source) if source.is_dir() else path.name)
        placed.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, placed)
        except FileExistsError:
            raise
        except OSError:  # another file system, or no hard links there
            shutil.copyfile(path, placed)


def _host_key() -> str:
    """This host and process namespace: a pid means the same process only within one (app
    containers may share a host name yet each have their own pids)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


_HOST = _host_key()


def _held_by_other(lock: SessionLockRow | None, holder: str | None) -> bool:
    return lock is not None and lock.holder != holder and _live(lock)


def _live(lock: SessionLockRow) -> bool:
    """The lock's lease runs and, when its process is on this host, that process exists."""
    expires = lock.expires_at if lock.expires_at.tzinfo else lock.expires_at.replace(tzinfo=UTC)  # SQLite: naive
    return expires > _now() and not (lock.host == _HOST and not _alive(lock.pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


#: Alembic keeps its ``context`` and ``op`` proxies in module globals: two threads of one process
#: opening a store at once (two browser sessions) must not run its commands together.
_ALEMBIC_LOCK = threading.Lock()


def _alembic_upgrade(connection: Connection, tables: set[str]) -> None:
    """A new database: the current models, stamped at the newest revision. One Loupe made
    before Alembic: stamped at the baseline, then upgraded like any other."""
    with _ALEMBIC_LOCK:
        _alembic_commands(connection, tables)


def _alembic_commands(connection: Connection, tables: set[str]) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    config.attributes["connection"] = connection
    if "sessions" not in tables:
        Base.metadata.create_all(connection)
        command.stamp(config, "head")
        return
    if "alembic_version" not in tables:
        command.stamp(config, "0001")
    command.upgrade(config, "head")


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer, nor it them
        cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at each checkpoint, no corruption
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def _reason(error: Exception) -> str:
    text = str(getattr(error, "orig", error)).lower()
    if "readonly" in text or "read-only" in text:
        return "it is read-only"
    if "not a database" in text or "malformed" in text or "file is encrypted" in text:
        return "the file is damaged or not a database"
    if "unable to open" in text:
        return "the file cannot be opened"
    return str(getattr(error, "orig", error)).splitlines()[0]
