"""The viewer's caliper in a real browser (issue 25, item 3): `loupe serve` on the default sample,
Chromium at 1280×800. Two lines dragged across the nodule on the image become its size, measured
by the clinician, in the findings table and the report.

The screenshot of the viewer with both lines drawn goes to /work/shots/after/caliper.png (the
release note's) and to test-artifacts/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser import ARTIFACTS, chromium_page, element_screenshot, screenshot, send_message, served_app, wait_idle

pytestmark = pytest.mark.browser

SHOTS = Path("/work/shots/after")
#: The default sample's F1 after "Analyse this scan" (the nodule), native px on slice 6 of 10,
#: pixel spacing 0.820312 mm: a long axis across it and a short one across that.
LONG = ((350.0, 350.0), (383.0, 350.0))  # 33 px: 27.1 mm
SHORT = ((366.0, 340.0), (366.0, 360.0))  # 20 px: 16.4 mm


def _drag(page, image, line) -> None:
    """Mouse down at one end of ``line`` (native px), moved, up at the other: a drag on the image."""
    box = image.bounding_box()
    (x0, y0), (x1, y1) = [(box["x"] + (x + 0.5) * box["width"] / 512, box["y"] + (y + 0.5) * box["height"] / 512)
                          for x, y in line]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=8)
    page.mouse.up()


def _caliper_caption(page, pattern: str) -> str:
    from playwright.sync_api import expect

    caption = page.locator(".st-key-viewer [data-testid=stCaptionContainer]").filter(
        has_text=re.compile(r"^Caliper: ")).first
    expect(caption).to_have_text(re.compile(pattern), timeout=30_000)
    wait_idle(page)
    return caption.inner_text()


def _mm(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"(\d+\.\d) (?=×|mm)", text)]


def test_two_caliper_lines_become_the_findings_size_by_the_clinician(browser_available, tmp_path):
    from playwright.sync_api import expect

    with served_app(tmp_path / "data") as url, chromium_page() as page:
        page.goto(url)
        wait_idle(page)
        page.get_by_role("button", name="Analyse this scan").click()
        page.get_by_text("offline classical detector").first.wait_for(timeout=90_000)
        wait_idle(page)
        send_message(page, "Draft a report")
        page.get_by_text("Version 1 of 1 · DRAFT").wait_for(timeout=90_000)
        wait_idle(page)
        viewer = page.locator(".st-key-viewer")
        expect(viewer.get_by_role("button", name="Zoom to F1")).to_be_visible(timeout=30_000)
        expect(viewer.locator("[data-testid=stCaptionContainer]").first).to_contain_text("frame 6 of 10")

        viewer.get_by_role("radio", name="Caliper").click()
        _caliper_caption(page, r"^Caliper: drag along")
        image = page.frame_locator("iframe[title*='streamlit_image_coordinates']").locator("#image")
        _drag(page, image, LONG)
        one = _caliper_caption(page, r"^Caliper: \d+\.\d mm\s*$")
        assert abs(_mm(one)[0] - 27.1) <= 1.0, one
        expect(viewer).to_contain_text("draw the short axis across it too")
        expect(viewer.get_by_role("button", name="Set as F1's size")).to_be_disabled()

        _drag(page, image, SHORT)
        both = _caliper_caption(page, r"^Caliper: \d+\.\d × \d+\.\d mm \(long × short\)")
        long_mm, short_mm = _mm(both)
        assert abs(long_mm - 27.1) <= 1.0 and abs(short_mm - 16.4) <= 1.0, both
        expect(viewer).not_to_contain_text("draw the short axis across it too")
        screenshot(page, "caliper-01-two-lines")
        # Zoomed to the nodule for the release note's picture: the lines stay, on their slice.
        viewer.get_by_role("button", name="Zoom to F1").click()
        expect(viewer.locator("[data-testid=stCaptionContainer]").first).to_contain_text("zoomed to F1",
                                                                                         timeout=30_000)
        assert _caliper_caption(page, r"^Caliper: ") == both
        page.wait_for_timeout(300)  # the new picture decoded in the component's frame
        for folder in (SHOTS, ARTIFACTS):
            element_screenshot(page, viewer, folder / "caliper.png")

        viewer.get_by_role("button", name="Set as F1's size").click()
        confirmation = viewer.locator("[data-testid=stAlertContentSuccess]")
        expect(confirmation).to_contain_text(f"F1 is now {long_mm:.1f} × {short_mm:.1f} mm (clinician)",
                                             timeout=30_000)
        expect(confirmation).to_contain_text("report version 2 states it")
        wait_idle(page)
        assert viewer.locator("[data-testid=stCaptionContainer]").filter(
            has_text=re.compile(r"^Caliper: \d")).count() == 0, "the lines cleared"

        # The report panel: a new version stating the clinician's size, and who measured it.
        page.get_by_text("Version 2 of 2 · DRAFT").wait_for(timeout=30_000)
        row = page.locator("[data-testid=stMarkdownContainer] tr").filter(has_text="F1").first
        expect(row).to_contain_text(f"{long_mm:.1f} × {short_mm:.1f} mm")
        expect(row).to_contain_text("clinician")
        # The findings table: a canvas grid, read through the table it keeps for screen readers.
        page.get_by_text(re.compile(r"^Findings \(\d+\)")).click()
        wait_idle(page)
        grid = page.locator("[data-testid=stDataFrame]")
        expect(grid).to_be_visible(timeout=30_000)
        expect(grid.locator("[role=row]").filter(has_text="F1").first.locator("[role=gridcell]").nth(3)
               ).to_have_text(f"{long_mm:.1f} × {short_mm:.1f} mm (clinician)", timeout=30_000)
        screenshot(page, "caliper-02-size-set")

        send_message(page, "How big is F1?")  # the chat knows the size is the clinician's
        answer = page.locator("[data-testid=stChatMessage]").filter(has_text="measured by the clinician")
        expect(answer.first).to_be_visible(timeout=90_000)
        wait_idle(page)
        assert not page.locator("[data-testid=stException]").count()
        assert not page.locator("[data-testid=stAlertContentError]").count()
