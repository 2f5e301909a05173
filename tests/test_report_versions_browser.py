"""The report version on screen, in a real browser (issue 25, item 1): the panel shows the latest
version after any change; an older one only by the clinician's explicit choice, with a banner
that says so; downloads and other reruns keep that choice, a new version ends it."""

from __future__ import annotations

import re

import pytest

from tests.browser import chromium_page, screenshot, send_message, served_app, wait_idle

pytestmark = pytest.mark.browser


def test_three_drafts_an_older_version_chosen_a_download_and_a_new_draft(browser_available, tmp_path):
    from playwright.sync_api import expect

    with served_app(tmp_path / "data") as url, chromium_page() as page:
        page.goto(url)
        wait_idle(page)
        for number in (1, 2, 3):
            send_message(page, "Draft a report")
            page.get_by_text(f"Version {number} of {number} · DRAFT").wait_for(timeout=90_000)
            wait_idle(page)
        banner = page.get_by_text(re.compile(r"^Viewing version \d+ of \d+ — latest is \d+\.$"))
        expect(banner).to_have_count(0)

        picker = page.get_by_role("combobox", name="Version")
        picker.scroll_into_view_if_needed()  # first: the scroll of a click would close the list it opens
        picker.click()
        page.get_by_role("option", name=re.compile(r"^1 — ")).click()
        wait_idle(page)
        expect(page.get_by_text("Version 1 of 3 · DRAFT")).to_be_visible(timeout=30_000)
        expect(banner).to_have_text("Viewing version 1 of 3 — latest is 3.")
        expect(page.get_by_text("Sign-off and edits act on the latest version: go back to it, or restore "
                                "this one.")).to_be_visible()
        expect(page.get_by_role("button", name="Back to the latest (version 3)")).to_be_visible()
        screenshot(page, "report-01-older-version")

        with page.expect_download() as download:
            page.get_by_role("button", name="PDF · v1").click()
        assert download.value.suggested_filename == "report-v1-draft.pdf"
        page.get_by_text(re.compile(r"^Findings \(\d+\)$")).click()  # and a rerun for something else
        wait_idle(page)
        expect(page.get_by_text("Version 1 of 3 · DRAFT")).to_be_visible()
        expect(banner).to_have_text("Viewing version 1 of 3 — latest is 3.")

        send_message(page, "Draft a report")  # a new version from the chat is shown at once
        page.get_by_text("Version 4 of 4 · DRAFT").wait_for(timeout=90_000)
        wait_idle(page)
        expect(banner).to_have_count(0)
        expect(page.get_by_role("button", name="PDF · v4")).to_be_visible()
        assert not page.locator("[data-testid=stException]").count()
        screenshot(page, "report-02-new-version-shown")
