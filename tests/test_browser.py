"""End to end in a real browser: `loupe serve`, Chromium, a real DICOM uploaded through the chat.

Screenshots of the main states go to test-artifacts/ for a human to look at.
"""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from tests.browser import chromium_page, screenshot, search_pacs, send_message, served_app, wait_idle
from tests.conftest import pydicom_file

pytestmark = pytest.mark.browser




def test_upload_analyse_report_download_and_reload(browser_available, tmp_path, monkeypatch):
    from playwright.sync_api import expect
    from pypdf import PdfReader

    # Extension-less, like files straight off a modality or PACS export.
    dicom = tmp_path / "IM0001"
    dicom.write_bytes(pydicom_file("CT_small.dcm").read_bytes())
    with served_app(tmp_path / "data") as url, chromium_page() as page:
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(url)
        wait_idle(page)
        page.get_by_text("Analyse this scan").first.wait_for()
        screenshot(page, "01-sample-study")

        send_message(page, "Analyse this scan", files=[dicom])
        page.get_by_text("offline classical detector").first.wait_for(timeout=90_000)
        wait_idle(page)
        statuses = page.locator("[data-testid=stExpander] summary").all_inner_texts()
        assert any("detect_anomalies" in s and "check" in s for s in statuses), statuses  # "check": done
        assert any("render_overlay" in s for s in statuses), statuses
        # Waited for, not read at once: the app reruns after a turn to redraw the sidebar and the
        # replayed turn, and the browser can report idle between the two runs.
        page.locator("[data-testid=stChatMessage] img").first.wait_for(timeout=30_000)
        expect(page.locator("[data-testid=stSidebar]")).to_contain_text("CT", timeout=30_000)
        screenshot(page, "02-analysed")

        send_message(page, "Draft a report")
        page.get_by_text("Version 1 of 1 · DRAFT").wait_for(timeout=90_000)
        wait_idle(page)
        page.get_by_text("Edit the report").click()
        impression = page.get_by_role("textbox", name="Impression")
        impression.fill("Small CT slice: no focal abnormality reported by Loupe.")
        impression.press("Tab")
        wait_idle(page)
        page.get_by_role("button", name="Save as a new version").click()
        page.get_by_text("Version 2 of 2 · DRAFT").wait_for(timeout=60_000)
        wait_idle(page)
        screenshot(page, "03-report-edited")

        with page.expect_download() as download_info:
            page.get_by_role("button", name="PDF").click()
        pdf_path = tmp_path / "report.pdf"
        download_info.value.save_as(pdf_path)
        text = " ".join(p.extract_text() for p in PdfReader(pdf_path).pages)
        assert "DRAFT" in text and "no focal abnormality reported by Loupe" in text

        chat_url = page.url
        assert "chat=" in chat_url
        page.reload()
        wait_idle(page)
        screenshot(page, "04-reloaded")
        page.get_by_text("Analyse this scan").first.wait_for()
        assert page.get_by_text("offline classical detector").count() >= 1
        assert page.get_by_text("Version 2 of 2 · DRAFT").count() == 1
        screenshot(page, "04-reloaded")
        # Hospitals run this without internet: the page fetches nothing (no fonts, no analytics)
        # from anywhere but the app itself.
        outside = [u for u in requested if not u.startswith((url, "data:", "blob:"))]
        assert outside == [], outside


def test_second_read_in_the_browser(browser_available, tmp_path):
    # 1920×1080 in the dark theme (the first test covers 1280×800 in the light one).
    with served_app(tmp_path / "data") as url, chromium_page(viewport=(1920, 1080), color_scheme="dark") as page:
        page.goto(url)
        wait_idle(page)
        page.get_by_role("button", name="Start a second read").click()
        page.get_by_text("Step 1 of").first.wait_for(timeout=90_000)
        wait_idle(page)
        screenshot(page, "05-second-read-step-1")
        # Figures follow the page's theme: no white figure background on this dark page (the
        # chat's crop and the second-read panel's).
        figures = page.locator("[data-testid=stImage] img")
        figures.first.wait_for(timeout=60_000)
        corners = [Image.open(io.BytesIO(figures.nth(i).screenshot())).convert("L").getpixel((2, 2))
                   for i in range(figures.count())]
        assert len(corners) >= 2 and max(corners) < 60, f"light figures on the dark page: {corners}"
        page.get_by_role("button", name="Agree Shortcut A").click()
        page.get_by_text("Step 2 of").first.wait_for(timeout=60_000)
        wait_idle(page)
        page.keyboard.press("d")  # the keyboard shortcut for Disagree
        page.get_by_text("Step 3 of").first.wait_for(timeout=60_000)
        wait_idle(page)
        page.get_by_role("button", name="Finish and add to the report").click()
        page.get_by_text("Second-read summary").wait_for(timeout=60_000)
        wait_idle(page)
        assert page.get_by_text("Version 2 of 2").count() == 1
        screenshot(page, "06-second-read-summary")


def test_a_png_gets_a_modality_the_clinician_can_change(browser_available, eval_dir, tmp_path):
    from playwright.sync_api import expect

    screenshot_png = tmp_path / "screenshot.png"  # a clinician's screenshot: no modality anywhere
    screenshot_png.write_bytes((eval_dir / "busi" / "malignant_013.png").read_bytes())
    with served_app(tmp_path / "data") as url, chromium_page() as page:
        page.goto(url)
        wait_idle(page)
        send_message(page, "Analyse this scan", files=[screenshot_png])
        page.get_by_text("offline classical detector").first.wait_for(timeout=90_000)
        wait_idle(page)
        # Searched as an ultrasound: its candidates are hypoechoic masses.
        expect(page.locator("[data-testid=stChatMessage]").last).to_contain_text("hypoechoic mass", timeout=30_000)
        sidebar = page.locator("[data-testid=stSidebar]")
        expect(sidebar).to_contain_text("What does this image show?", timeout=30_000)
        expect(sidebar).to_contain_text("Loupe's guess from the picture")
        choice = sidebar.get_by_role("combobox", name="What does this image show?")
        expect(choice).to_have_value("ultrasound (US)")
        screenshot(page, "05-png-modality-guessed")

        choice.click()
        page.get_by_role("option", name="radiograph (DX)").click()
        wait_idle(page)
        expect(sidebar).to_contain_text("As you set it.", timeout=30_000)
        page.reload()
        wait_idle(page)
        choice = page.locator("[data-testid=stSidebar]").get_by_role("combobox", name="What does this image show?")
        expect(choice).to_have_value("radiograph (DX)", timeout=30_000)  # remembered by the session
        screenshot(page, "06-png-modality-set")


def test_a_study_opened_from_the_pacs(browser_available, orthanc, tmp_path):
    from playwright.sync_api import expect

    with served_app(tmp_path / "data", extra_env=orthanc.env()) as url, chromium_page() as page:
        page.goto(url)
        wait_idle(page)
        sidebar = search_pacs(page, "Patient id", "LIDC-IDRI-0002")
        # The results: one study, picked, with its date, modality, series and images under the patient.
        study = sidebar.get_by_role("radiogroup", name="Study")
        expect(study).to_contain_text("LIDC-IDRI-0002")
        expect(study).to_contain_text(re.compile(r"CT · .* · \d+ series, \d+ images"))
        expect(study.get_by_role("radio")).to_be_checked()
        screenshot(page, "07-pacs-search")
        sidebar.get_by_role("button", name="Open study").click()
        expect(sidebar).to_contain_text("8 image(s) retrieved", timeout=90_000)
        wait_idle(page)
        expect(sidebar).to_contain_text("Modality CT", timeout=30_000)
        expect(sidebar).to_contain_text("Frame 1 of 8")
        assert not page.locator("[data-testid=stAlertContentError]").count()
        screenshot(page, "08-pacs-study-open")


def _viewer_caption(page) -> str:
    return page.locator(".st-key-viewer [data-testid=stCaptionContainer]").filter(
        has_text=re.compile(r"^frame \d+ of")).first.inner_text()


def _wait_caption(page, pattern: str) -> str:
    """Wait until the viewer's caption matches ``pattern`` (the picture is redrawn with it)."""
    from playwright.sync_api import expect

    caption = page.locator(".st-key-viewer [data-testid=stCaptionContainer]").filter(
        has_text=re.compile(r"^frame \d+ of")).first
    # (the caption's help icon leaves a space at its end)
    expect(caption).to_have_text(re.compile(pattern.replace("$", r"\s*$")), timeout=30_000)
    wait_idle(page)
    return caption.inner_text()


def test_viewer_slices_window_a_clinician_mark_the_chat_and_the_report(browser_available, eval_dir, tmp_path):
    """The reading room at 1280×800: the LIDC series uploaded through the chat, slices scrolled
    (buttons, keys, slider), a window preset, the nodule clicked on the image, asked about by id,
    and reported."""
    from playwright.sync_api import expect

    from agent.conversation import Conversation
    from agent.settings import LoupeSettings

    source = eval_dir / "lidc_ct" / "LIDC-IDRI-0002"
    files = sorted(source.glob("*.dcm"))
    probe = Conversation.start(LoupeSettings(_env_file=None, data_dir=tmp_path / "probe"), source)
    nodule_frame = [f.path.name for f in probe.ctx.view().study.files].index("z-0094.50.dcm")
    nodule = (346, 361)  # native px of the annotated nodule on that slice
    with served_app(tmp_path / "data") as url, chromium_page() as page:
        page.goto(url)
        wait_idle(page)
        send_message(page, "Analyse this scan", files=files)
        page.get_by_text("offline classical detector").first.wait_for(timeout=90_000)
        caption = _wait_caption(page, r"^frame 1 of 8 · slice position -?\d+\.\d mm · window ")
        viewer = page.locator(".st-key-viewer")
        image = page.frame_locator("iframe[title*='streamlit_image_coordinates']").locator("#image")
        expect(image).to_have_attribute("src", re.compile("^data:image/png;base64,"))
        box = image.bounding_box()
        assert box["width"] >= 400 and abs(box["width"] - box["height"]) < 2, box  # large, square as the slice
        assert box["y"] + box["height"] <= 800, "the slice is above the fold at 1280×800"
        assert "Frame" not in page.locator("[data-testid=stSidebar]").get_by_role("slider").all_inner_texts()
        screenshot(page, "viewer-01-series-open")

        viewer.get_by_role("button", name=re.compile("^Next")).click()
        _wait_caption(page, r"^frame 2 of 8")
        page.keyboard.press("j")  # Next's shortcut
        _wait_caption(page, r"^frame 3 of 8")
        page.keyboard.press("k")  # Prev's shortcut
        _wait_caption(page, r"^frame 2 of 8")
        thumb = viewer.get_by_role("slider")
        thumb.focus()
        thumb.press("End")
        last = _wait_caption(page, r"^frame 8 of 8")
        assert last.split(" · ")[1] != caption.split(" · ")[1], "the slice position follows the slice"
        screenshot(page, "viewer-02-slices")

        viewer.get_by_role("button", name=re.compile("^Lung")).click()
        _wait_caption(page, r"window -600/1500$")
        page.keyboard.press("1")  # the study's own window
        _wait_caption(page, r"window 40/350$")
        page.keyboard.press("2")  # the first preset: lung
        _wait_caption(page, r"window -600/1500$")
        screenshot(page, "viewer-03-lung-window")

        thumb.focus()
        thumb.press("Home")
        _wait_caption(page, r"^frame 1 of 8")
        for number in range(2, nodule_frame + 2):
            page.keyboard.press("j")
            _wait_caption(page, rf"^frame {number} of 8")
        box = image.bounding_box()
        image.click(position={"x": (nodule[0] + 0.5) * box["width"] / 512,
                              "y": (nodule[1] + 0.5) * box["height"] / 512})
        marked = viewer.locator("[data-testid=stAlertContentSuccess]")
        expect(marked).to_contain_text("(clinician-marked finding) at (", timeout=30_000)
        wait_idle(page)
        sentence = marked.inner_text()
        found = re.search(r"(F\d+) \(clinician-marked finding\) at \((\d+), (\d+)\) px on frame (\d+)", sentence)
        assert found, sentence
        finding_id = found.group(1)
        assert abs(int(found.group(2)) - nodule[0]) <= 3 and abs(int(found.group(3)) - nodule[1]) <= 3, sentence
        assert int(found.group(4)) == nodule_frame + 1 and "confirmed" in sentence, sentence
        screenshot(page, "viewer-04-clinician-mark")

        viewer.get_by_role("button", name=f"Zoom to {finding_id}").click()
        _wait_caption(page, rf"zoomed to {finding_id}$")
        screenshot(page, "viewer-05-zoomed")
        viewer.get_by_role("button", name="Whole image").click()
        _wait_caption(page, r"window -600/1500$")

        send_message(page, f"Where is {finding_id}?")
        answer = page.locator("[data-testid=stChatMessage]").filter(has_text=f"{finding_id} is in the")
        expect(answer.first).to_be_visible(timeout=90_000)
        wait_idle(page)
        screenshot(page, "viewer-06-asked-by-id")

        send_message(page, "Draft a report")
        page.get_by_text("Version 1 of 1 · DRAFT").wait_for(timeout=90_000)
        wait_idle(page)
        report = page.locator("[data-testid=stVerticalBlock]").filter(
            has=page.get_by_text("Version 1 of 1 · DRAFT")).last
        expect(report).to_contain_text(finding_id)
        expect(report).to_contain_text("clinician-marked finding")
        assert page.get_by_text("Version 1 of 1 · DRAFT").count() == 1
        assert page.get_by_role("heading", name="Impression").count() == 1  # the full report: once, in the panel
        _wait_caption(page, rf"^frame {nodule_frame + 1} of 8")  # the report changed nothing in the view
        assert not page.locator("[data-testid=stException]").count()
        assert not page.locator("[data-testid=stAlertContentError]").count()
        screenshot(page, "viewer-07-report")
