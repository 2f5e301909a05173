"""Serving a department: one session database (SQLite or PostgreSQL) and one data folder shared
by several app servers. Migrations by Alembic; a version per session and a lock per turn, so two
tabs on two servers never lose an event nor interleave a model step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import text

from agent import reports
from agent.conversation import Conversation
from agent.events import TurnStarted
from agent.models.planner import OfflinePlanner
from agent.settings import LoupeSettings
from agent.store.database import SCHEMA_VERSION, SessionBusyError, SessionConflictError, Store, StoreError
from tests.conftest import REPO, pydicom_file
from tests.test_app import data_dir, media  # noqa: F401  (fixtures)
from tests.test_sessions import assert_consistent

V1_DATABASE = REPO / "tests" / "fixtures" / "store-v1"
V1_SESSION = "0123456789abcdef0123456789abcdef"


def two_copies(store: Store, settings: LoupeSettings) -> tuple[Conversation, Conversation]:
    """One session open in two tabs (or on two servers): two copies built from the store."""
    first = Conversation.start(settings, pydicom_file("CT_small.dcm"), store=store, owner="dr-a")
    return first, Conversation.resume(settings, store, first.session_id, "dr-a")


# -- schema and migrations ------------------------------------------------------------------------


def test_a_database_from_before_alembic_is_upgraded_in_place(tmp_path):
    shutil.copytree(V1_DATABASE, tmp_path / "data")
    store = Store.for_data_dir(tmp_path / "data")
    with store.engine.connect() as db:
        assert db.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
        assert db.execute(text("SELECT MAX(version) FROM schema_version")).scalar() == SCHEMA_VERSION
    [summary] = store.list_sessions("dr-a")
    assert summary.title == "a session from before Alembic" and store.version(V1_SESSION) == 0
    resumed = Conversation.resume(LoupeSettings(_env_file=None), store, V1_SESSION, "dr-a")
    assert [c["parts"][0]["text"] for c in resumed.history] == ["Hello", "Hi."]
    list(resumed.ask("What can you do?", OfflinePlanner()))  # and it goes on, versioned now
    assert store.version(V1_SESSION) >= 1
    store.close()
    Store.for_data_dir(tmp_path / "data").close()  # a second start finds it current


def test_new_databases_are_created_at_the_newest_revision(store):
    with store.engine.connect() as db:
        assert db.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
        assert db.execute(text("SELECT COUNT(*) FROM session_locks")).scalar() == 0


def test_a_database_from_a_newer_loupe_is_refused(tmp_path, db_url):
    Store.for_data_dir(tmp_path / "data", db_url).close()
    store = Store.for_data_dir(tmp_path / "data", db_url)
    with store.engine.begin() as db:
        db.execute(text("INSERT INTO schema_version (version, migrated_at) VALUES (99, CURRENT_TIMESTAMP)"))
    store.close()
    with pytest.raises(StoreError, match="newer Loupe"):
        Store.for_data_dir(tmp_path / "data", db_url)


# -- two copies of one session ---------------------------------------------------------------------


def test_a_second_tab_cannot_start_a_turn_while_one_runs(store):
    settings = LoupeSettings(_env_file=None)
    first, second = two_copies(store, settings)
    running = first.ask("Analyse this scan", OfflinePlanner())
    assert isinstance(next(running), TurnStarted)  # the first tab's turn holds the session now
    with pytest.raises(SessionBusyError, match="busy answering in another tab"):
        next(second.ask("Draft a report", OfflinePlanner()))
    with pytest.raises(SessionBusyError):
        second.confirm_no_burned_in_text()  # any change, not only a turn, waits for the turn
    with pytest.raises(SessionBusyError):
        second.open_study(pydicom_file("MR_small.dcm"))  # a study's stored copy too
    assert len(store.studies(first.session_id)) == 1
    assert store.turn_running(first.session_id)
    list(running)  # the first turn finishes and lets go
    assert not store.turn_running(first.session_id)
    events = list(second.ask("Draft a report", OfflinePlanner()))
    assert events[-1].ok
    assert [c["parts"][0]["text"] for c in second.history if c["role"] == "user"] == [
        "Analyse this scan", "Draft a report"]  # the second tab built on the first tab's turn
    assert_consistent(store.history(first.session_id))
    assert [e["kind"] for e in store.events(first.session_id)].count("turn_finished") == 2


def test_a_write_from_a_stale_copy_is_refused_and_the_copy_reloaded(store):
    settings = LoupeSettings(_env_file=None)
    first, second = two_copies(store, settings)
    list(first.ask("Analyse this scan and draft a report", OfflinePlanner()))
    reports.clinician_edit(first, [{"op": "set_section", "section": "impression", "text": "Read by Dr A."}],
                           name="Dr A", reason="impression")
    signed = reports.sign(first, reports.history(first).current.version, name="Dr A")
    with pytest.raises(SessionConflictError, match="changed in another tab"):
        second.confirm_no_burned_in_text()  # built on the session before the first tab's turn
    assert reports.history(second).current.status == "signed" and second.turns == 1  # reloaded
    second.confirm_no_burned_in_text()  # now it builds on the stored version
    assert store.version(first.session_id) == second.recorder.version
    assert reports.history(second).current.version == signed.version


def database_host() -> str:
    from agent.store.database import _HOST

    return _HOST


def test_the_lease_is_kept_alive_while_a_turn_runs_without_events(store, monkeypatch):
    """A model call may run for minutes without an event: the heartbeat renews the lease."""
    import time

    from agent.store import sessions

    monkeypatch.setattr(sessions, "_RENEW_EVERY_S", 0.05)
    settings = LoupeSettings(_env_file=None)
    first, second = two_copies(store, settings)
    first.recorder.acquire()
    try:
        with store.engine.begin() as db:  # as if the lease had nearly run out
            db.execute(text("UPDATE session_locks SET expires_at = :t"), {"t": "2000-01-01 00:00:00+00:00"})
        time.sleep(0.3)
        with pytest.raises(SessionBusyError):
            next(second.ask("Analyse this scan", OfflinePlanner()))
    finally:
        first.recorder.release()
    assert list(second.ask("Analyse this scan", OfflinePlanner()))[-1].ok


def test_a_lock_left_by_a_killed_process_is_taken_over(store):
    settings = LoupeSettings(_env_file=None)
    first, second = two_copies(store, settings)
    with store.engine.begin() as db:  # a lock as a process that died mid-turn leaves it
        db.execute(text("INSERT INTO session_locks (session_id, holder, host, pid, expires_at) "
                        "VALUES (:s, 'gone', :host, 999999999, CURRENT_TIMESTAMP + INTERVAL '1 hour')"
                        if store.engine.dialect.name == "postgresql" else
                        "INSERT INTO session_locks (session_id, holder, host, pid, expires_at) "
                        "VALUES (:s, 'gone', :host, 999999999, datetime('now', '+1 hour'))"),
                   {"s": first.session_id, "host": database_host()})
    assert list(second.ask("Analyse this scan", OfflinePlanner()))[-1].ok


# -- two real processes on one session ---------------------------------------------------------------


WORKER = textwrap.dedent("""
    import json, sys, time
    from agent.conversation import Conversation
    from agent.models.planner import OfflinePlanner
    from agent.settings import LoupeSettings
    from agent.store.database import SessionBusyError, Store

    settings = LoupeSettings(_env_file=None)
    store = Store.for_data_dir(settings.data_dir, settings.db_url)
    conversation = Conversation.resume(settings, store, sys.argv[1], "dr-a")
    done, busy = 0, 0
    messages = ["Analyse this scan", "How big is F1?", "Show the heatmap", "Where is F1?"]
    while done < int(sys.argv[2]):
        try:
            events = list(conversation.ask(f"{messages[done % 4]} ({sys.argv[3]} {done})", OfflinePlanner()))
        except SessionBusyError:
            busy += 1
            time.sleep(0.02)
            continue
        assert events[-1].ok, events[-1]
        done += 1
    print(json.dumps({"done": done, "busy": busy}))
""")


def test_two_app_processes_on_one_session_lose_nothing_and_never_interleave(tmp_path, db_url):
    """Two processes (two servers, one tab each) on one session, one shared data folder and one
    database, both asking as fast as they can: every turn is whole and in order."""
    settings = LoupeSettings(_env_file=None, data_dir=tmp_path / "shared", db_url=db_url)
    store = Store.for_data_dir(settings.data_dir, db_url)
    session_id = Conversation.start(settings, pydicom_file("CT_small.dcm"), store=store, owner="dr-a").session_id
    env = {**os.environ, "LOUPE_DATA_DIR": str(settings.data_dir), "PYTHONPATH": str(REPO),
           **({"LOUPE_DB_URL": db_url} if db_url else {})}
    turns = 6
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, session_id, str(turns), name], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("A", "B")]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["done"] for r in results] == [turns, turns]

    events = store.events(session_id)
    kinds = [e["kind"] for e in events]
    assert kinds.count("turn_started") == kinds.count("turn_finished") == 2 * turns  # nothing lost
    open_turn = None
    for event in events:  # each turn's events together: started, its own events, finished
        if event["kind"] == "turn_started":
            assert open_turn is None, "a turn started inside another"
            open_turn = event["turn_id"]
        else:
            assert event["turn_id"] == open_turn
            if event["kind"] == "turn_finished":
                open_turn = None
    assert [e["turn_id"] for e in events if e["kind"] == "turn_started"] == list(range(1, 2 * turns + 1))
    history = store.history(session_id)
    assert_consistent(history)
    asked = [c["parts"][0]["text"] for c in history if c["role"] == "user"]
    assert sorted(asked) == sorted(f"{m} ({name} {i})" for name in "AB" for i, m in enumerate(
        ["Analyse this scan", "How big is F1?", "Show the heatmap", "Where is F1?"] * 2) if i < turns)
    store.close()


# -- what the app shows ----------------------------------------------------------------------------


def test_the_app_says_when_another_tab_holds_the_session_and_catches_up_after(data_dir, media):
    """A turn running on another server holds the session: the app says so in one sentence and
    records nothing; once that turn is done, the app shows it without a reload of the page."""
    from tests.test_app import new_app

    at = new_app()
    session_id = at.query_params["chat"][0] if isinstance(at.query_params["chat"], list) else at.query_params["chat"]
    store = Store.for_data_dir(data_dir)
    other = Conversation.resume(LoupeSettings(_env_file=None, data_dir=data_dir), store, session_id, "dr-test")
    running = other.ask("Analyse this scan", OfflinePlanner())
    next(running)  # the other server's turn has started and holds the session
    at.chat_input[0].set_value("Where is F1?").run()
    assert any("busy answering in another tab" in e.value and "Where is F1?" in e.value for e in at.error)
    list(running)  # the other turn ends
    at.run()
    assert not at.error
    assert any("Analyse this scan" in m.markdown[0].value for m in at.chat_message if m.markdown)
    kinds = [e["kind"] for e in store.events(session_id)]
    assert kinds.count("turn_started") == 1  # the refused message left nothing behind
    at.chat_input[0].set_value("Where is F1?").run()
    assert [e["kind"] for e in store.events(session_id)].count("turn_started") == 2
    store.close()
