"""Polish a reader notices (issue 25), measured in a real browser: `loupe serve`, Chromium at the
widths of a reading-room laptop and monitor.

- The suggestion buttons' labels and the chat box's placeholder are whole (measured: each label's
  text box inside its button and not clipped; the placeholder's wrapped height inside the box).
- The viewer stays in view while a long conversation scrolls, and the report under it can still be
  scrolled to.
- The PACS results in the sidebar show every field, inside the sidebar.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import chromium_page, screenshot, search_pacs, served_app, wait_idle

pytestmark = pytest.mark.browser

WIDTHS = ((1280, 800), (1440, 900))

#: Per suggestion button: its label's text box, the button's box, and whether the label is clipped.
_LABELS = """names => names.map(name => {
  const button = [...document.querySelectorAll('.stMain button')].find(b => b.innerText.trim() === name);
  if (!button) return {name, missing: true};
  const label = button.querySelector('[data-testid=stMarkdownContainer]');
  const text = document.createRange(); text.selectNodeContents(label);
  const t = text.getBoundingClientRect(), b = button.getBoundingClientRect();
  return {name, text: [t.left, t.right, t.top, t.bottom], button: [b.left, b.right, b.top, b.bottom],
          clipped: label.scrollWidth > label.clientWidth};
})"""
_PLACEHOLDER = """() => {
  const box = document.querySelector('[data-testid=stChatInput] textarea');
  return {placeholder: box.placeholder, value: box.value, scroll: box.scrollHeight, client: box.clientHeight,
          width: box.clientWidth};
}"""


def _inside(inner: list[float], outer: list[float], slack: float = 1.0) -> bool:
    return (inner[0] >= outer[0] - slack and inner[1] <= outer[1] + slack and inner[2] >= outer[2] - slack
            and inner[3] <= outer[3] + slack)


def _assert_whole(page, suggestions: tuple[str, ...], where: str) -> None:
    for label in page.evaluate(_LABELS, list(suggestions)):
        assert not label.get("missing"), f"{where}: no button {label['name']!r}"
        assert not label["clipped"] and _inside(label["text"], label["button"]), f"{where}: {label}"
    box = page.evaluate(_PLACEHOLDER)
    assert box["value"] == "" and box["placeholder"], box
    assert box["scroll"] <= box["client"] + 1, f"{where}: the placeholder is cut: {box}"


def test_suggestions_and_the_chat_placeholder_are_whole(browser_available, tmp_path):
    from ui.chat import SUGGESTIONS

    with served_app(tmp_path / "data") as url:
        for width, height in WIDTHS:
            with chromium_page(viewport=(width, height)) as page:
                page.goto(url)
                wait_idle(page)
                box = page.locator("[data-testid=stChatInput] textarea")
                box.wait_for()
                page.get_by_role("button", name=SUGGESTIONS[0]).wait_for()
                wait_idle(page)
                _assert_whole(page, SUGGESTIONS, f"{width}×{height}")
                screenshot(page, f"polish-suggestions-{width}")
                box.fill("Where is the lesion?")  # typed, then cleared: the placeholder is whole again
                box.fill("")
                page.wait_for_timeout(200)
                _assert_whole(page, SUGGESTIONS, f"{width}×{height}, after typing")


def _long_conversation(data_dir: Path) -> str:
    """A stored session of the sample study with four answered turns (pictures, a report): far
    longer than a screen. Returns its chat id."""
    from agent.conversation import Conversation
    from agent.samples import DEFAULT_SAMPLE, sample_path
    from agent.settings import LoupeSettings
    from agent.store.database import Store
    from agent.workspace import backend_for

    settings = LoupeSettings(_env_file=None, data_dir=data_dir)
    store = Store.for_data_dir(data_dir)
    conversation = Conversation.start(settings, sample_path(DEFAULT_SAMPLE), store=store, owner="dr-browser",
                                      title="a long conversation")
    backend = backend_for(settings, "offline")
    for message in ("Analyse this scan", "Where is the lesion and how big?", "Analyse this scan", "Draft a report"):
        for _ in conversation.ask(message, backend):
            pass
    store.close()
    return conversation.session_id


_IN_VIEW = """() => {
  const image = document.querySelector('.st-key-viewer iframe').getBoundingClientRect();
  const main = document.querySelector('.stMain');
  return {top: image.top, bottom: image.bottom, height: image.height, scrolled: main.scrollTop,
          scrollable: main.scrollHeight - main.clientHeight, viewport: innerHeight};
}"""
_SCROLL_MAIN = "() => { const main = document.querySelector('.stMain'); main.scrollTop = main.scrollHeight; }"
_SCROLL_STUDY_COLUMN = """() => {
  const column = document.querySelector('.st-key-viewer').closest('[data-testid=stColumn]');
  column.scrollTop = column.scrollHeight;
  const box = column.getBoundingClientRect();
  return {scrolls: column.scrollHeight > column.clientHeight, top: box.top, bottom: box.bottom,
          end: column.scrollTop + column.clientHeight >= column.scrollHeight - 1};
}"""


def test_the_viewer_stays_in_view_while_a_long_chat_scrolls(browser_available, tmp_path):
    data_dir = tmp_path / "data"
    chat = _long_conversation(data_dir)
    with served_app(data_dir) as url:
        for width, height in WIDTHS:
            with chromium_page(viewport=(width, height)) as page:
                page.goto(f"{url}/?chat={chat}")
                wait_idle(page)
                page.locator(".st-key-viewer iframe").first.wait_for()
                page.get_by_text("Version 1 of 1").first.wait_for(timeout=60_000)
                wait_idle(page)
                before = page.evaluate(_IN_VIEW)
                assert before["scrollable"] > height, f"the conversation is not longer than the screen: {before}"
                page.evaluate(_SCROLL_MAIN)
                page.wait_for_timeout(300)
                after = page.evaluate(_IN_VIEW)
                assert after["scrolled"] > height, after
                assert 0 <= after["top"] and after["bottom"] <= height, f"{width}×{height}: {before} → {after}"
                screenshot(page, f"polish-viewer-in-view-{width}")
                # The report under the viewer scrolls inside the study column, down to its end.
                column = page.evaluate(_SCROLL_STUDY_COLUMN)
                assert column["scrolls"] and column["end"] and 0 <= column["top"] and column["bottom"] <= height, column
                version = page.get_by_text("Version 1 of 1").first
                version.scroll_into_view_if_needed()
                box = version.bounding_box()
                assert box and 0 <= box["y"] and box["y"] + box["height"] <= height, box


#: Per study listed (its radio option and the caption under it): its text, box and clipping.
_LISTED = """() => [...document.querySelectorAll('[data-testid=stSidebar] [role=radiogroup] > div')].map(option => {
  const sidebar = document.querySelector('[data-testid=stSidebarContent]').getBoundingClientRect();
  const r = option.getBoundingClientRect();
  const clipped = [...option.querySelectorAll('p')].some(e => e.scrollWidth > e.clientWidth + 1);
  return {text: option.innerText, left: r.left, right: r.right, sidebar: [sidebar.left, sidebar.right], clipped};
})"""


def test_pacs_results_show_every_field_in_the_sidebar(browser_available, orthanc, tmp_path):
    with served_app(tmp_path / "data", extra_env=orthanc.env()) as url, chromium_page() as page:
        page.goto(url)
        wait_idle(page)
        search_pacs(page, "Patient name (* and ? as wildcards)", "compressed*")
        # The list is drawn again by each rerun (a busy machine can catch one between two): wait for it.
        page.wait_for_function(f"({_LISTED})().length >= 2", timeout=30_000)
        listed = page.evaluate(_LISTED)
        screenshot(page, "polish-pacs-results")
        assert len(listed) >= 2, listed
        for study in listed:
            assert not study["clipped"], study
            assert study["sidebar"][0] <= study["left"] and study["right"] <= study["sidebar"][1], study
            assert "CompressedSamples" in study["text"] and " series, " in study["text"], study
            assert any(modality in study["text"] for modality in ("CT", "MR")), study
