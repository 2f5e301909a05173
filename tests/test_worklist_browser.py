"""The Worklist in a real browser: LIDC-IDRI-0002's CT series pre-read from the real test Orthanc
by ``loupe preread study`` (no broker: in this process), then `loupe serve` and Chromium: the
study listed, opened from the worklist, its findings and draft on screen without a detector run.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import pytest

from agent.preread.worklist import worklist
from agent.settings import LoupeSettings
from agent.store.database import Store
from tests.browser import chromium_page, screenshot, served_app, wait_idle
from tests.conftest import run_cli

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("isolated_cli")]

LIDC_STUDY = "1.3.6.1.4.1.14519.5.2.1.6279.6001.490157381160200744295382098329"


def test_open_a_preread_study_from_the_worklist(browser_available, pacs_env, tmp_path, monkeypatch, capsys):
    from playwright.sync_api import expect

    data = tmp_path / "data"
    monkeypatch.setenv("LOUPE_DATA_DIR", str(data))
    monkeypatch.setenv("LOUPE_DICOMWEB_RETRY_INITIAL_S", "0")
    monkeypatch.delenv("LOUPE_BROKER_URL", raising=False)
    code, out, err = run_cli(capsys, "preread", "study", f"pacs:{LIDC_STUDY}")
    assert code == 0 and "done" in out, (out, err)
    [row] = worklist(LoupeSettings())
    store = Store.for_data_dir(data)
    top = max(store.findings(row.session_id), key=lambda f: f["confidence"])
    store.close()

    with served_app(data, extra_env=pacs_env.env()) as url, chromium_page() as page:
        page.goto(url)
        wait_idle(page)
        sidebar = page.locator("[data-testid=stSidebar]")
        sidebar.get_by_text("Worklist").click()
        wait_idle(page)
        listed = sidebar.locator(f".st-key-worklist_row_{row.job_id}")
        expect(listed).to_contain_text("CT")
        expect(listed).to_contain_text("done")
        expect(listed).to_contain_text(f"top: {row.top_finding}")
        expect(listed).to_contain_text("arrived")
        screenshot(page, "worklist-01-listed")
        listed.get_by_role("button", name="Open").click()
        wait_idle(page)
        main = page.locator("[data-testid=stMain]")
        expect(main).to_contain_text("Version 1 of 1 · DRAFT", timeout=60_000)
        expect(main).to_contain_text("Pre-read: analyse this study")  # the pre-read's turn, replayed
        expect(page.get_by_role("button", name=f"Zoom to {top['id']}")).to_be_visible(timeout=30_000)
        expect(sidebar).to_contain_text("Modality CT")
        viewer_image = page.frame_locator("iframe[title*='streamlit_image_coordinates']").locator("#image")
        expect(viewer_image).to_be_visible(timeout=30_000)  # the slice of the strongest finding, drawn
        assert not page.locator("[data-testid=stAlertContentError]").count()
        assert f"chat={row.session_id}-" in page.url  # the clinician's copy, not the pre-read session
        screenshot(page, "worklist-02-opened")

    store = Store.for_data_dir(data)
    try:
        runs = [a for a in store.audit_rows(actor="dr-browser")
                if a.action == "tool_call" and a.detail.get("tool") == "detect_anomalies"]
        [mine] = [s for s in store.list_sessions("dr-browser") if "pre-read" in s.title]
        assert runs == []  # the detector never ran for the clinician
        assert {f["id"] for f in store.findings(mine.id)} == {f["id"] for f in store.findings(row.session_id)}
    finally:
        store.close()
