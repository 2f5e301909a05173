"""Compare with prior in a real browser: `loupe serve`, Chromium at 1280×800, the (current, prior)
CT pair of tests/prior_studies.py. The current series dropped into the chat and analysed, the
prior uploaded in the sidebar's "Compare with prior": the prior shows beside the current study,
both slices move together by table position, the compared findings are listed.

Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re

import pytest

from tests.browser import chromium_page, screenshot, send_message, served_app, wait_idle
from tests.prior_studies import write_prior_pair

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _positions(viewer) -> tuple[str, str]:
    """The (prior, current) captions under the two images."""
    captions = viewer.locator("[data-testid=stCaptionContainer]")
    prior = captions.filter(has_text=re.compile(r"^prior frame ")).first.inner_text()
    current = captions.filter(has_text=re.compile(r"^frame ")).first.inner_text()
    return prior, current


def _mm(caption: str) -> float:
    return float(caption.split("slice position ")[1].split(" mm")[0])


def test_the_prior_beside_the_current_study_moves_with_it(browser_available, tmp_path):
    from playwright.sync_api import expect

    pair = write_prior_pair(tmp_path / "pair")
    with served_app(tmp_path / "data") as url, chromium_page() as page:
        page.goto(url)
        wait_idle(page)
        send_message(page, "Analyse this scan", files=sorted(pair.current.glob("*.dcm")))
        page.get_by_text("offline classical detector").first.wait_for(timeout=90_000)
        wait_idle(page)
        viewer = page.locator(".st-key-viewer")
        expect(viewer.locator("[data-testid=stCaptionContainer]").first).to_contain_text("frame 6 of 10",
                                                                                         timeout=30_000)

        sidebar = page.locator("[data-testid=stSidebar]")
        sidebar.get_by_text("Compare with prior").click()
        wait_idle(page)
        section = sidebar.locator("[data-testid=stExpander]").filter(has_text="Compare with prior")
        section.locator("input[type=file]").set_input_files([str(p) for p in sorted(pair.prior.glob("*.dcm"))])
        button = section.get_by_role("button", name="Compare", exact=True)
        button.wait_for(timeout=30_000)  # drawn once the files are uploaded
        wait_idle(page)
        button.click()
        expect(section.locator("[data-testid=stAlertContentSuccess]")).to_contain_text(
            "Compared with the prior over 181 days: F1 grown", timeout=90_000)
        wait_idle(page)

        # Both images on screen, labelled, at one table position and in one window.
        expect(viewer.get_by_text("Prior (2023-12-03)")).to_be_visible()
        expect(viewer.locator("strong").get_by_text("Current", exact=True)).to_be_visible()
        expect(viewer.locator("[data-testid=stImage] img")).to_be_visible()
        expect(page.frame_locator("iframe[title*='streamlit_image_coordinates']").locator("#image")).to_be_visible()
        prior, current = _positions(viewer)
        assert prior.startswith("prior frame 6 of 10") and current.startswith("frame 6 of 10"), (prior, current)
        assert abs(_mm(prior) - _mm(current)) <= 2.5, (prior, current)  # within the slice spacing
        assert prior.split(" · window ")[1] == current.split(" · window ")[1], "one window for both"
        expect(viewer.locator("[data-testid=stTable]")).to_contain_text("grown")
        screenshot(page, "compare-01-prior-beside")

        # The slice control moves both: the prior's slice follows the current one's table position.
        viewer.get_by_role("button", name="Next ▶").click()
        expect(viewer.locator("[data-testid=stCaptionContainer]").filter(has_text=re.compile(r"^prior frame "))
               ).to_contain_text("prior frame 7 of 10", timeout=30_000)
        wait_idle(page)
        prior, current = _positions(viewer)
        assert current.startswith("frame 7 of 10") and abs(_mm(prior) - _mm(current)) <= 2.5, (prior, current)
        screenshot(page, "compare-02-next-slice")
        assert not page.locator("[data-testid=stException]").count()
        assert not page.locator("[data-testid=stAlertContentError]").count()
