"""Login when shared: ``LOUPE_AUTH=proxy-header`` behind a real reverse proxy (Debian's nginx).

One app (``loupe serve``) for the module, and nginx in front of it with a port per test user,
each setting ``X-Forwarded-User`` (overwriting whatever the browser sends), and a port that
forwards with the header cleared. In Chromium, through nginx: alice's session cannot be opened,
listed or deleted by bob, a request without the header is refused, and a browser cannot make
itself bob by sending the header. On the command line (``LOUPE_USER``): bob cannot list, export,
rename, delete, continue or read the audit trail of alice's session.

Screenshots go to test-artifacts/ (proxy-*.png).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.browser import chromium_page, screenshot, send_message, served_app, wait_idle
from tests.conftest import pydicom_file, run_cli
from tests.proxy import NginxProxy, require_nginx

REFUSAL = "This app must be reached through the hospital's sign-in proxy."
ALICE_TITLE = "Alice private CT follow-up"
CHAT_INPUT = "[data-testid=stChatInput]"


# -- the app behind nginx (one for the module) --------------------------------------------------




class ProxiedApp:
    def __init__(self, data_dir: Path, app_url: str, proxy: NginxProxy):
        self.data_dir, self.app_url, self.proxy = data_dir, app_url, proxy

    def url(self, user: str | None, chat: str | None = None) -> str:
        return self.proxy.url_for(user) + (f"/?chat={chat}" if chat else "/")


@pytest.fixture(scope="module")
def proxied_app(tmp_path_factory):
    require_nginx()
    data_dir = tmp_path_factory.mktemp("proxied-data")
    with served_app(data_dir, {"LOUPE_AUTH": "proxy-header"}) as app_url:
        with NginxProxy(int(app_url.rsplit(":", 1)[1]), ["alice", "bob"]) as proxy:
            yield ProxiedApp(data_dir, app_url, proxy)
            assert proxy.serious_errors() == [], proxy.serious_errors()


def loupe(data_dir: Path, user: str, *args: str) -> subprocess.CompletedProcess:
    """The real ``loupe`` command as ``user`` on the app's data folder (no stray .env: run in it)."""
    env = {**os.environ, "LOUPE_DATA_DIR": str(data_dir), "LOUPE_USER": user}
    env.pop("LOUPE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=data_dir, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def chat_id(page) -> str:
    from urllib.parse import parse_qs, urlparse

    ids = parse_qs(urlparse(page.url).query).get("chat", [])
    return ids[0] if ids else ""


def wait_for_chat_id(page, timeout_ms: int = 60_000) -> str:
    page.wait_for_function("() => new URL(location.href).searchParams.get('chat')", timeout=timeout_ms)
    return chat_id(page)


def open_sessions(page):
    """Open the sidebar's Sessions section (drawn only while open); the sidebar locator."""
    from playwright.sync_api import expect

    sidebar = page.locator("[data-testid=stSidebar]")
    sidebar.get_by_text("Sessions", exact=True).click()
    expect(sidebar.get_by_role("button", name="New session")).to_be_visible(timeout=60_000)
    wait_idle(page)
    return sidebar


@pytest.fixture(scope="module")
def alice_session(proxied_app, browser_available) -> str:
    """Alice, through her nginx port, asks one question about the sample study; her session's id
    (from the URL). Retitled with the CLI as alice: the header's user and LOUPE_USER are one owner."""
    from playwright.sync_api import expect

    with chromium_page() as page:
        page.goto(proxied_app.url("alice"))
        wait_idle(page)
        page.get_by_text("Analyse this scan").first.wait_for(timeout=60_000)
        send_message(page, "Analyse this scan")
        page.get_by_text("offline classical detector").first.wait_for(timeout=120_000)
        wait_idle(page)
        expect(page.locator("[data-testid=stChatMessage]").first).to_be_visible(timeout=30_000)
        session_id = wait_for_chat_id(page)
        assert session_id
        renamed = loupe(proxied_app.data_dir, "alice", "sessions", "rename", session_id, ALICE_TITLE)
        assert renamed.returncode == 0, renamed.stderr
        page.reload()
        wait_idle(page)
        sidebar = open_sessions(page)
        expect(sidebar).to_contain_text(ALICE_TITLE, timeout=30_000)
        expect(sidebar).to_contain_text("1 turn(s)")
        screenshot(page, "proxy-01-alice-session")
    return session_id


# -- through nginx, in Chromium -----------------------------------------------------------------


@pytest.mark.browser
def test_bob_cannot_open_list_or_delete_alices_session(proxied_app, alice_session):
    from playwright.sync_api import expect

    with chromium_page() as page:
        # Bob is given alice's link: he gets a new, empty session of his own, nothing of hers.
        page.goto(proxied_app.url("bob", chat=alice_session))
        wait_idle(page)
        page.locator(CHAT_INPUT).wait_for(timeout=60_000)
        page.wait_for_function("id => new URL(location.href).searchParams.get('chat') !== id", arg=alice_session,
                               timeout=60_000)
        bobs_session = wait_for_chat_id(page)
        assert bobs_session and bobs_session != alice_session
        wait_idle(page)
        assert page.locator("[data-testid=stChatMessage]").count() == 0
        assert page.get_by_text("offline classical detector").count() == 0
        sidebar = open_sessions(page)
        expect(sidebar).to_contain_text("CT · CHEST", timeout=30_000)  # his own, listed (titled after its study)
        assert ALICE_TITLE not in sidebar.inner_text()
        # Neither an open nor a delete button for her session (their keys carry the session id).
        assert page.locator(f"[class*='st-key-open-{alice_session}']").count() == 0
        assert page.locator(f"[class*='st-key-delete-{alice_session}']").count() == 0
        assert page.locator(f"[class*='st-key-open-{bobs_session}']").count() == 1
        assert alice_session not in page.content()
        screenshot(page, "proxy-02-bob-given-alices-link")

    # The store agrees: bob's new session is his, alice's is whole and still hers.
    bob = json.loads(loupe(proxied_app.data_dir, "bob", "sessions", "list", "--json").stdout)
    alice = json.loads(loupe(proxied_app.data_dir, "alice", "sessions", "list", "--json").stdout)
    assert [s["id"] for s in bob] == [bobs_session]
    assert {s["id"]: (s["title"], s["turns"]) for s in alice} == {alice_session: (ALICE_TITLE, 1)}


@pytest.mark.browser
def test_a_request_without_the_header_is_refused(proxied_app, browser_available):
    with chromium_page() as page:
        # The browser's own header does not get through the port that clears it either.
        page.set_extra_http_headers({"X-Forwarded-User": "alice"})
        page.goto(proxied_app.url(None))
        wait_idle(page)
        page.get_by_text(REFUSAL).wait_for(timeout=60_000)
        wait_idle(page)
        assert page.locator(CHAT_INPUT).count() == 0
        assert page.locator("[data-testid=stSidebar]").count() == 0
        assert "chat=" not in page.url  # no session was opened for nobody
        screenshot(page, "proxy-03-no-header-refused")
    # Nothing was stored for an anonymous visitor: every session has a named owner.
    from sqlalchemy import select

    from agent.store.database import SessionRow, Store

    store = Store.for_data_dir(proxied_app.data_dir)
    try:
        with store.transaction() as db:
            owners = set(db.scalars(select(SessionRow.owner)))
    finally:
        store.close()
    assert all(owners) and owners <= {"alice", "bob", "mallory"}, owners


@pytest.mark.browser
def test_a_browser_cannot_make_itself_someone_else(proxied_app, alice_session):
    from playwright.sync_api import expect

    with chromium_page() as page:
        # Control: straight to the app (no proxy), the header the browser sends is what the app
        # sees (so the test below would notice it getting through) — which is why the app's own
        # port must only be reachable by the proxy.
        page.set_extra_http_headers({"X-Forwarded-User": "mallory"})
        page.goto(proxied_app.app_url + "/")
        wait_idle(page)
        page.locator(CHAT_INPUT).wait_for(timeout=60_000)
        assert page.get_by_text(REFUSAL).count() == 0

    with chromium_page() as page:
        # Through alice's port, claiming to be bob: nginx overwrites the header, the app sees alice.
        page.set_extra_http_headers({"X-Forwarded-User": "bob"})
        page.goto(proxied_app.url("alice", chat=alice_session))
        wait_idle(page)
        page.get_by_text("offline classical detector").first.wait_for(timeout=60_000)  # her turn, replayed
        assert chat_id(page) == alice_session
        sidebar = open_sessions(page)
        expect(sidebar).to_contain_text(ALICE_TITLE, timeout=30_000)
        assert page.locator(f"[class*='st-key-open-{alice_session}']").count() == 1
        screenshot(page, "proxy-04-header-from-browser-ignored")
    mallory = json.loads(loupe(proxied_app.data_dir, "mallory", "sessions", "list", "--json").stdout)
    assert len(mallory) == 1  # the control's direct visit opened a session for "mallory"
    bob = json.loads(loupe(proxied_app.data_dir, "bob", "sessions", "list", "--json").stdout)
    assert alice_session not in [s["id"] for s in bob]


def test_nginx_workers_can_buffer_to_their_temp_folders(proxied_app):
    """An upload bigger than nginx's in-memory buffer goes through a temp file the workers
    (nobody, when the tests run as root) write: it reaches the app (which answers 405 on the
    health endpoint), and nginx logs no [crit] error."""
    request = urllib.request.Request(proxied_app.url("alice") + "_stcore/health", data=b"\0" * 2_000_000,
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 405
    with urllib.request.urlopen(proxied_app.url("alice"), timeout=30) as response:  # the page and its scripts
        page = response.read().decode()
    scripts = [part.split('"')[0] for part in page.split('src="')[1:] if part.split('"')[0].endswith(".js")]
    assert scripts
    for script in scripts:
        with urllib.request.urlopen(proxied_app.url("alice") + script.removeprefix("./"), timeout=30) as response:
            assert len(response.read()) > 0
    log = proxied_app.proxy.read_error_log()
    assert "client request body is buffered to a temporary file" in log
    assert proxied_app.proxy.serious_errors() == []


# -- the command line: LOUPE_USER ---------------------------------------------------------------


@pytest.fixture
def alice_cli_session(isolated_cli, capsys, monkeypatch, tmp_path) -> str:
    """Alice's session with a drafted report (``loupe report STUDY``), in this test's data folder."""
    monkeypatch.setenv("LOUPE_USER", "alice")
    code, _, err = run_cli(capsys, "report", pydicom_file("CT_small.dcm"), "--out", tmp_path / "alice",
                           "--format", "md,json")
    assert code == 0, err
    session_id = next(line.split(": ", 1)[1] for line in err.splitlines() if line.startswith("session: "))
    monkeypatch.setenv("LOUPE_USER", "bob")
    return session_id


def as_alice(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    monkeypatch.setenv("LOUPE_USER", "alice")
    try:
        return run_cli(capsys, *args)
    finally:
        monkeypatch.setenv("LOUPE_USER", "bob")


def alices_sessions(capsys, monkeypatch) -> dict[str, tuple[str, int]]:
    code, out, err = as_alice(capsys, monkeypatch, "sessions", "list", "--json")
    assert code == 0, err
    return {s["id"]: (s["title"], s["turns"]) for s in json.loads(out)}


def refused_in_one_line(code: int, out: str, err: str) -> None:
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert "unexpected internal error" not in err


def test_bob_cannot_list_alices_sessions(alice_cli_session, capsys, monkeypatch):
    code, out, _ = run_cli(capsys, "sessions", "list", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run_cli(capsys, "sessions", "list")
    assert code == 0 and alice_cli_session not in out
    assert alice_cli_session in alices_sessions(capsys, monkeypatch)


def test_bob_cannot_export_alices_report(alice_cli_session, capsys, monkeypatch, tmp_path):
    out_dir = tmp_path / "bob"
    refused_in_one_line(*run_cli(capsys, "report", "--session", alice_cli_session, "--out", out_dir))
    assert not out_dir.exists()
    # Nor sign it in her name.
    refused_in_one_line(*run_cli(capsys, "report", "--session", alice_cli_session, "--out", out_dir,
                                 "--sign", "Dr Bob"))
    assert not out_dir.exists()
    # Alice still can, and it is still her unsigned draft.
    code, out, err = as_alice(capsys, monkeypatch, "report", "--session", alice_cli_session, "--out",
                              tmp_path / "alice-again", "--format", "json")
    assert code == 0, err
    exported = Path(out.strip())
    assert exported.name.endswith("-draft.json") and "Dr Bob" not in exported.read_text()


def test_bob_cannot_rename_or_delete_alices_session(alice_cli_session, capsys, monkeypatch):
    title = alices_sessions(capsys, monkeypatch)[alice_cli_session][0]
    refused_in_one_line(*run_cli(capsys, "sessions", "rename", alice_cli_session, "taken by bob"))
    refused_in_one_line(*run_cli(capsys, "sessions", "delete", alice_cli_session))
    assert alices_sessions(capsys, monkeypatch)[alice_cli_session] == (title, 0)
    # Her report is still there to export (the delete removed nothing of hers).
    code, _, err = as_alice(capsys, monkeypatch, "report", "--session", alice_cli_session, "--out",
                            Path.cwd() / "alice-after", "--format", "md")
    assert code == 0, err


def test_bob_cannot_continue_alices_session(alice_cli_session, capsys, monkeypatch):
    from agent.settings import LoupeSettings
    from agent.store.database import Store

    store = Store.for_data_dir(LoupeSettings().data_dir)
    try:
        events_before = store.events(alice_cli_session)
        code, _, _ = run_cli(capsys, "ask", pydicom_file("CT_small.dcm"), "Analyse this scan", "--session",
                             alice_cli_session, "--backend", "offline")
        assert code == 2
        assert store.events(alice_cli_session) == events_before  # not a word added to her session
        assert store.list_sessions("bob") == []
    finally:
        store.close()
    assert alices_sessions(capsys, monkeypatch)[alice_cli_session][1] == 0


def test_bob_continuing_alices_session_is_refused_in_one_sentence(alice_cli_session, capsys):
    refused_in_one_line(*run_cli(capsys, "ask", pydicom_file("CT_small.dcm"), "Analyse this scan", "--session",
                                 alice_cli_session, "--backend", "offline"))


def test_alice_reads_her_own_audit_trail(alice_cli_session, capsys, monkeypatch):
    code, out, err = as_alice(capsys, monkeypatch, "audit", "-", "--session", alice_cli_session)
    assert code == 0, err
    entries = [json.loads(line) for line in out.splitlines()]
    assert entries and {e["actor"] for e in entries} == {"alice"}
    assert {e["session_id"] for e in entries} == {alice_cli_session}


def test_bob_cannot_read_alices_audit_trail(alice_cli_session, capsys):
    code, out, err = run_cli(capsys, "audit", "-", "--session", alice_cli_session)
    assert alice_cli_session not in out and '"actor": "alice"' not in out
    assert code == 2 and err.startswith("error: ")
