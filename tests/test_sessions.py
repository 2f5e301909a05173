"""Sessions that survive: stored turns, resume after restart and SIGKILL, deletion, the audit
trail, concurrent sessions on one SQLite file, and a damaged database refused at start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from agent.conversation import Conversation
from agent.models.gemini import GeminiBackend
from agent.models.planner import OfflinePlanner
from agent.settings import LoupeSettings
from agent.store.audit import export_jsonl
from agent.store.database import SessionNotFoundError, Store, StoreError
from agent.store.sessions import INTERRUPTED_NOTE
from tests.conftest import REPO, pydicom_file, run_cli
from tests.fake_gemini import call_reply, fixture, text_reply

CT = "CT_small.dcm"


def offline(conversation: Conversation, message: str) -> list:
    return list(conversation.ask(message, OfflinePlanner()))


def assert_consistent(history: list[dict]) -> None:
    """User and model alternate, and every function call is answered in the next user turn."""
    roles = [c["role"] for c in history]
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), roles
    for index, content in enumerate(history):
        calls = [p.get("function_call") or p.get("functionCall") for p in content["parts"]
                 if "function_call" in p or "functionCall" in p]
        if not calls:
            continue
        answer = history[index + 1]
        responses = [p.get("function_response") or p.get("functionResponse") for p in answer["parts"]
                     if "function_response" in p or "functionResponse" in p]
        assert [c["id"] for c in calls] == [r["id"] for r in responses]


def test_offline_session_resumes_with_findings_view_and_images(store):
    settings = LoupeSettings(_env_file=None)
    conversation = Conversation.start(settings, pydicom_file(CT), store=store, owner="dr-a")
    offline(conversation, "Show the lung window")
    events = offline(conversation, "Analyse this scan")
    session_id = conversation.session_id
    overlay = next(e for e in events if e.kind == "tool_finished" and e.name == "render_overlay").artifacts[0]

    resumed = Conversation.resume(settings, store, session_id, "dr-a")
    assert resumed.history == conversation.history and resumed.turns == 2
    assert set(resumed.ctx.findings) == set(conversation.ctx.findings)
    assert resumed.ctx.view().window.center == -600
    stored_events = store.events(session_id)
    assert [e["kind"] for e in stored_events].count("turn_finished") == 2
    image_ref = next(e for e in stored_events if e["kind"] == "tool_finished" and e["name"] == "render_overlay")
    assert store.image(session_id, image_ref["artifacts"][0]["sha256"]) == overlay.data
    # The conversation goes on where it was: no new detection; findings found again keep their
    # names, and a new id continues the stored count.
    answer = offline(resumed, "How big is it?")
    assert "detect_anomalies" not in [e.name for e in answer if e.kind == "tool_started"]
    offline(resumed, "Analyse this scan")
    assert set(resumed.ctx.findings) == set(conversation.ctx.findings)
    assert resumed.ctx.next_finding_id() == f"F{conversation.ctx.findings_issued + 1}"


def test_a_session_with_several_studies_reopens_all_of_them(store):
    settings = LoupeSettings(_env_file=None)
    conversation = Conversation.start(settings, pydicom_file(CT), store=store, owner="dr-a")
    conversation.open_study(pydicom_file("MR_small.dcm"))
    offline(conversation, "Analyse this scan")
    resumed = Conversation.resume(settings, store, conversation.session_id, "dr-a")
    assert set(resumed.ctx.views) == set(conversation.ctx.views) and len(resumed.ctx.views) == 2
    assert resumed.ctx.current_study_id == conversation.ctx.current_study_id


def test_sessions_belong_to_their_owner(store):
    settings = LoupeSettings(_env_file=None)
    mine = Conversation.start(settings, pydicom_file(CT), store=store, owner="dr-a").session_id
    assert [s.id for s in store.list_sessions("dr-a")] == [mine]
    assert store.list_sessions("dr-b") == []
    with pytest.raises(SessionNotFoundError):
        Conversation.resume(settings, store, mine, "dr-b")
    with pytest.raises(SessionNotFoundError):
        store.delete(mine, "dr-b")
    store.rename(mine, "dr-a", "Left lung nodule follow-up")
    assert store.list_sessions("dr-a")[0].title == "Left lung nodule follow-up"


def test_delete_removes_everything_but_the_audit(store):
    settings = LoupeSettings(_env_file=None)
    conversation = Conversation.start(settings, pydicom_file(CT), store=store, owner="dr-a")
    offline(conversation, "Analyse this scan")
    session_id = conversation.session_id
    folder = store.session_folder(session_id)
    assert any(folder.rglob("*.dcm"))
    store.delete(session_id, "dr-a")
    assert not folder.exists()
    assert store.history(session_id) == [] and store.events(session_id) == [] and store.findings(session_id) == []
    with store.engine.connect() as db:  # straight SQL, past the store's own methods
        for table in ("images", "tool_calls", "studies", "sessions", "session_locks"):
            assert db.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar() == 0, table
    assert store.audit_rows(session_id)  # the trail outlives the session


def test_audit_is_append_only(store):
    """Even straight SQL, past the store, cannot change or remove the trail (SQLite and PostgreSQL triggers)."""
    store.audit("dr-a", "note", {"x": 1})
    for statement in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM audit"):
        with store.engine.begin() as db, pytest.raises(DBAPIError, match="append-only"):
            db.execute(text(statement))
    assert [row.actor for row in store.audit_rows()] == ["dr-a"]


def gemini_settings() -> LoupeSettings:
    return LoupeSettings(_env_file=None, gemini_api_key="secret-key-must-not-be-stored", retry_initial_s=0.01)


def test_gemini_session_resumes_with_signatures_and_audit(fake, store, tmp_path):
    from tests.test_privacy import phi_values, seeded_ct

    fake.script(fixture("detect_call.json"), fixture("answer_text.json"), text_reply("Still F1."))
    settings = gemini_settings()
    conversation = Conversation.start(settings, seeded_ct(tmp_path), store=store, owner="dr-a")
    conversation.confirm_no_burned_in_text()
    list(conversation.ask("Analyse this scan", GeminiBackend(settings)))

    resumed = Conversation.resume(settings, store, conversation.session_id, "dr-a")
    list(resumed.ask("And now?", GeminiBackend(settings)))
    last = fake.calls()[-1]
    sent = json.dumps(last.contents)
    assert fixture("detect_call.json")["candidates"][0]["content"]["parts"][1]["thoughtSignature"] in sent
    assert len(last.images()) == 1  # the image already seen is in the history, not sent twice
    assert_consistent(resumed.history)

    trail = export_jsonl(store, conversation.session_id)
    entries = [json.loads(line) for line in trail.splitlines()]
    requests = [e["detail"] for e in entries if e["action"] == "model_request"]
    assert len(requests) == 3
    first = requests[0]
    assert first["model"] == "gemini-2.5-flash" and first["purpose"] == "conversation"
    assert len(first["prompt_version"]) == 12 and first["outcome"] == "answered"
    assert first["images"][0]["bytes"] > 1000 and len(first["images"][0]["sha256"]) == 64
    assert first["usage"]["prompt_tokens"] == 1534
    assert {e["action"] for e in entries} >= {"session_created", "image_release_confirmed", "tool_call"}
    assert "secret-key" not in trail
    for value in phi_values():
        assert value.lower() not in trail.lower()
    assert "secret-key" not in everything_stored(store)
    if store.engine.dialect.name == "sqlite":  # free pages too
        assert b"secret-key" not in (store.data_dir / "loupe.db").read_bytes()


def everything_stored(store: Store) -> str:
    """Every row of every table, as text."""
    from sqlalchemy import inspect

    with store.engine.connect() as db:
        return "\n".join(str(row) for table in inspect(db).get_table_names()
                         for row in db.execute(text(f"SELECT * FROM {table}")))


def test_two_sessions_in_parallel_threads_share_one_file(store):
    settings = LoupeSettings(_env_file=None)
    errors: list[BaseException] = []
    ids: list[str] = []

    def work(path: Path) -> None:
        try:
            conversation = Conversation.start(settings, path, store=store, owner="dr-a")
            ids.append(conversation.session_id)
            for message in ("Analyse this scan", "How big is it?", "Draft a report"):
                offline(conversation, message)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(pydicom_file(name),)) for name in (CT, "MR_small.dcm")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for session_id in ids:
        kinds = [e["kind"] for e in store.events(session_id)]
        assert kinds.count("turn_finished") == 3
        assert len(store.history(session_id)) == 6


def test_damaged_or_read_only_database_is_refused_at_start(tmp_path, isolated_cli, capsys, monkeypatch):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "loupe.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="damaged or not a database"):
        Store.for_data_dir(damaged)
    monkeypatch.setenv("LOUPE_DATA_DIR", str(damaged))
    code, _, err = run_cli(capsys, "sessions", "list")
    assert code == 2 and "damaged or not a database" in err and err.count("\n") == 1

    read_only = tmp_path / "read-only"
    Store.for_data_dir(read_only).close()
    # A read-only database (root ignores file modes, so open it read-only by URL instead).
    url = f"sqlite:///file:{read_only / 'loupe.db'}?mode=ro&uri=true"
    with pytest.raises(StoreError, match="read-only"):
        Store.for_data_dir(read_only, url)


# -- SIGKILL at each step of a scripted turn -----------------------------------------------------


def _hang(request) -> dict:
    time.sleep(120)
    return text_reply("too late")


KILL_SCRIPT = [
    fixture("detect_call.json"),  # 1: the model asks for detection (with the vision model)
    text_reply('[{"box_2d": [300, 300, 600, 600], "label": "nodule"}]'),  # 2: inside detect_anomalies
    fixture("parallel_calls.json"),  # 3: fit and render in parallel
    fixture("answer_text.json"),  # 4: the answer
]
KILL_SCRIPT[0]["candidates"][0]["content"]["parts"][1]["functionCall"]["args"] = {"use_vision_model": True, "samples": 1}


@pytest.mark.parametrize(("kill_at", "steps_kept"), [(1, 0), (2, 0), (3, 1), (4, 2)])
def test_sigkill_at_each_step_loses_at_most_that_step(fake, tmp_path, db_url, kill_at, steps_kept):
    """Kill ``loupe ask`` while it waits for request ``kill_at``; reopen; the completed steps
    are there, the history is consistent, and the conversation can go on (SQLite and PostgreSQL)."""
    fake.script(*KILL_SCRIPT[: kill_at - 1], _hang)
    env = {**os.environ, "GEMINI_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": fake.url, "LOUPE_DATA_DIR": str(tmp_path),
           "LOUPE_RETRY_ATTEMPTS": "1", "LOUPE_REQUEST_TIMEOUT_S": "300", "PYTHONPATH": str(REPO),
           **({"LOUPE_DB_URL": db_url} if db_url else {})}
    process = subprocess.Popen([sys.executable, "-m", "agent.cli", "ask", str(pydicom_file(CT)), "Analyse this scan",
                                "--session", "killed", "--confirm-no-burned-in-text"],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(fake.requests) < kill_at and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fake.requests) == kill_at, process.stderr.read().decode() if process.poll() is not None else "timeout"
    process.send_signal(signal.SIGKILL)
    process.wait()

    store = Store.for_data_dir(tmp_path, db_url)
    settings = LoupeSettings(_env_file=None, gemini_api_key="k", retry_initial_s=0.01, data_dir=tmp_path,
                             db_url=db_url)
    owner = settings.user
    stored = store.history("killed")
    model_steps = [c for c in stored if c["role"] == "model"]
    assert len(model_steps) == steps_kept
    resumed = Conversation.resume(settings, store, "killed", owner)
    assert_consistent(resumed.history)
    assert resumed.history[-1]["role"] == "model"
    if steps_kept == 0:
        assert resumed.history[-1]["parts"][0]["text"] == INTERRUPTED_NOTE
    calls = [row.name for row in store.tool_calls("killed")]
    assert calls == ["detect_anomalies", "fit_gaussian", "render_overlay"][: {0: 0, 1: 1, 2: 3}[steps_kept]]

    fake.script(text_reply("Resumed."))
    events = list(resumed.ask("Where were we?", GeminiBackend(settings)))
    assert events[-1].ok
    assert_consistent(fake.calls()[-1].contents)
    store.close()


def test_history_roles_alternate_after_a_normal_turn(fake, store):
    fake.script(call_reply(("load_study", {"window": "bone"})), text_reply("Bone window."))
    conversation = Conversation.start(gemini_settings(), pydicom_file(CT), store=store, owner="dr-a")
    list(conversation.ask("Bone window please", GeminiBackend(conversation.settings)))
    assert_consistent(store.history(conversation.session_id))
    assert store.history(conversation.session_id) == conversation.history


def test_serving_beyond_loopback_requires_login(isolated_cli, capsys, monkeypatch):
    monkeypatch.setenv("LOUPE_HOST", "0.0.0.0")
    code, _, err = run_cli(capsys, "serve")
    assert code == 2 and "LOUPE_AUTH=oidc" in err and err.count("\n") == 1


def test_a_second_read_pauses_and_resumes_with_the_session(store, eval_dir):
    settings = LoupeSettings(_env_file=None)
    conversation = Conversation.start(settings, eval_dir / "busi" / "benign_030.png", modality="US", store=store,
                                      owner="dr-a")
    offline(conversation, "Start a second read")
    offline(conversation, "agree")
    offline(conversation, "uncertain, the margin is hard to see")
    state = conversation.ctx.second_reads[conversation.ctx.current_study_id]
    answered = [record.assessment for record in state.steps if record.assessment]
    resumed = Conversation.resume(settings, store, conversation.session_id, "dr-a")
    again = resumed.ctx.second_reads[resumed.ctx.current_study_id]
    assert [record.assessment for record in again.steps if record.assessment] == answered == ["agree", "uncertain"]
    assert again.current == state.current


def test_a_series_folder_with_other_files_reopens(store, eval_dir):
    """LIDC's folder holds its readers' XML beside the slices: stored as it was, it reopens."""
    settings = LoupeSettings(_env_file=None)
    conversation = Conversation.start(settings, eval_dir / "lidc_ct" / "LIDC-IDRI-0002", store=store, owner="dr-a")
    offline(conversation, "Analyse this scan")
    resumed = Conversation.resume(settings, store, conversation.session_id, "dr-a")
    assert resumed.ctx.view().study.frame_count == 8 and resumed.ctx.findings.keys() == conversation.ctx.findings.keys()


def test_stores_opened_from_many_threads_at_once(tmp_path):
    """Two browser sessions of one app process may open the database at the same moment; the
    migration check is run by one thread at a time (Alembic's proxies are module globals)."""
    from concurrent.futures import ThreadPoolExecutor

    from agent.store.database import Store

    (tmp_path / "data").mkdir()
    Store.for_data_dir(tmp_path / "data").close()  # the database exists; each open checks it

    def open_and_close(_: int) -> bool:
        Store.for_data_dir(tmp_path / "data").close()
        return True

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert all(pool.map(open_and_close, range(24)))
