"""The app's Worklist (ui/worklist_panel.py) through Streamlit's AppTest: a study pre-read from
the real test Orthanc by ``loupe preread study`` (no broker: in this process) is listed, and Open
shows its findings, figures and draft in the clinician's own session without a detector run."""

from __future__ import annotations

import pytest

from agent.preread.job import PREREAD_OWNER
from agent.preread.worklist import copy_id, worklist
from agent.settings import LoupeSettings
from agent.store.database import Store
from tests.conftest import run_cli
from tests.test_app import assert_healthy, data_dir, media, new_app, open_sections  # noqa: F401 (fixtures)

CT_SMALL_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


@pytest.fixture
def prereads(pacs_env, data_dir, monkeypatch, capsys):  # noqa: F811 (fixtures imported above)
    monkeypatch.setenv("LOUPE_DICOMWEB_RETRY_INITIAL_S", "0")
    monkeypatch.delenv("LOUPE_BROKER_URL", raising=False)
    code, out, err = run_cli(capsys, "preread", "study", f"pacs:{CT_SMALL_STUDY}", "--priority", "stat")
    assert code == 0 and "done" in out, (out, err)
    [row] = worklist(LoupeSettings())
    return row


def detector_runs_by(folder, owner: str) -> int:
    store = Store.for_data_dir(folder)
    try:
        return sum(1 for a in store.audit_rows(actor=owner)
                   if a.action == "tool_call" and a.detail.get("tool") == "detect_anomalies")
    finally:
        store.close()


def test_the_worklist_lists_a_preread_and_open_shows_it_without_a_detector_run(prereads, data_dir, media):  # noqa: F811
    at = new_app()
    assert "Worklist" in [e.label for e in at.sidebar.expander]
    open_sections(at, "worklist_section_open")
    texts = " ".join(m.value for m in at.sidebar.markdown) + " ".join(c.value for c in at.sidebar.caption)
    assert "STAT" in texts and "CT" in texts and "done" in texts and "arrived" in texts
    assert at.selectbox(key="worklist_state").options[1:] == ["queued", "running", "done", "failed"]
    assert "CT" in at.selectbox(key="worklist_modality").options
    sample_session = at.query_params["chat"][0] if isinstance(at.query_params["chat"], list) else at.query_params["chat"]

    at.button(key=f"worklist_open_{prereads.job_id}").click().run()
    assert_healthy(at)
    assert not at.error, [e.value for e in at.error]
    opened = copy_id(prereads.session_id, "dr-test")
    chat = at.query_params["chat"]
    assert (chat[0] if isinstance(chat, list) else chat) == opened != sample_session
    # the draft, the findings table and the pre-read's turn with its figures, at once
    assert any("**Version 1 of 1 · DRAFT**" in m.value for m in at.markdown)
    assert any("Pre-read" in m.markdown[0].value for m in at.chat_message if m.markdown)
    statuses = [e.label for e in at.main.expander]  # a finished tool call is an expander
    assert any("detect_anomalies" in label for label in statuses) and any("draft_report" in s for s in statuses)
    assert any(e.label.startswith("Findings (") for e in at.main.expander)  # the report panel's table
    facts = " ".join(m.value for m in at.sidebar.markdown)
    assert "**Modality** CT" in facts
    assert detector_runs_by(data_dir, "dr-test") == 0
    assert at.button(key=f"worklist_open_{prereads.job_id}").disabled  # this one is shown

    # "what did you find?": answered from the stored findings, still no detector run
    at.chat_input[0].set_value("What did you find?").run()
    assert_healthy(at)
    assert len(at.chat_message) >= 4
    answer = " ".join(m.value for m in at.chat_message[-1].markdown)
    assert "nothing was run again" in answer and "Report version 1 (draft)" in answer
    assert prereads.top_finding.split(" · ")[0] in answer  # the stored top finding, named
    assert detector_runs_by(data_dir, "dr-test") == 0
    store = Store.for_data_dir(data_dir)
    assert store.exists(prereads.session_id, PREREAD_OWNER) and store.exists(opened, "dr-test")
    assert len(store.events(opened)) > len(store.events(prereads.session_id))  # the question went to the copy
    store.close()


def test_no_worklist_without_a_pacs_or_a_preread(data_dir, media):  # noqa: F811
    at = new_app()
    assert "Worklist" not in [e.label for e in at.sidebar.expander]


def test_worklist_shown_without_a_pacs_once_a_preread_exists(prereads, data_dir, media, monkeypatch):  # noqa: F811
    monkeypatch.delenv("LOUPE_DICOMWEB_URL", raising=False)
    at = new_app()
    assert "Worklist" in [e.label for e in at.sidebar.expander]
    open_sections(at, "worklist_section_open")
    at.selectbox(key="worklist_state").set_value("failed").run()
    assert any("No pre-read study matches" in i.value for i in at.sidebar.info)
    at.selectbox(key="worklist_state").set_value("done").run()
    assert at.button(key=f"worklist_open_{prereads.job_id}")


def test_behind_a_proxy_without_a_user_nothing_is_listed(prereads, data_dir, media, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LOUPE_AUTH", "proxy-header")
    at = new_app()
    assert at.error and "sign-in proxy" in at.error[0].value
    assert "Worklist" not in [e.label for e in at.sidebar.expander]
