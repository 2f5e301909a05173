"""An answer is never lost to a click (issue 25, item 4): the turn is written in a background
thread on its own copy of the session (agent/workspace.py says why), so the app's reruns, a
reload or the viewer's controls cannot stop it, and the view the clinician scrolls to meanwhile
does not change the view the answer works on.

The first tests drive agent/workspace.py directly with a backend that waits for the test; the
last one is the real app in Chromium against the fake Gemini answering slowly.
"""

from __future__ import annotations

import re
import shutil
import threading
import time

import pytest

from agent.conversation import Conversation
from agent.events import AssistantText
from agent.settings import LoupeSettings
from agent.store.database import SessionBusyError, Store
from agent.workspace import (ANSWERING, answer_in_progress, catch_up, open_sample, second_read_act, set_view,
                             start_turn)
from tests.browser import chromium_page, screenshot, send_message, served_app, wait_idle
from tests.test_app import assert_healthy, data_dir, media, new_app  # noqa: F401 (fixtures)


class GatedBackend:
    """A model that answers only when the test opens its gate, saying which frame it looked at."""

    name = "offline"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.frames: list[int] = []

    def run_turn(self, conversation: Conversation, turn):
        assert self.gate.wait(60), "the test never let the answer finish"
        frame = conversation.ctx.view().frame
        self.frames.append(frame)
        answer = f"I looked at frame {frame + 1}."
        conversation.note_exchange(turn.message, answer)
        yield AssistantText(text=answer)


@pytest.fixture
def series(tmp_path, eval_dir):
    """LIDC-IDRI-0002's eight CT slices, images only."""
    folder = tmp_path / "LIDC-IDRI-0002"
    folder.mkdir()
    for file in sorted((eval_dir / "lidc_ct" / "LIDC-IDRI-0002").glob("*.dcm")):
        shutil.copy(file, folder / file.name)
    return folder


@pytest.fixture
def stored_session(data_dir, series):  # noqa: F811
    """The app's copy of a stored session on the series, as the app holds it for dr-test."""
    store = Store.for_data_dir(data_dir)
    conversation = Conversation.start(LoupeSettings(_env_file=None), series, store=store, owner="dr-test")
    yield conversation, store
    store.close()


def finished(live, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not live.finished:
        assert time.monotonic() < deadline, "the answer did not finish"
        live.wait(len(live.events), 0.2)


def stored_view(store: Store, session_id: str):
    return Conversation.resume(LoupeSettings(_env_file=None), store, session_id, "dr-test").ctx.view()


def test_the_view_moved_during_an_answer_is_not_the_answers_and_becomes_the_shared_one_after(stored_session):
    conversation, store = stored_session
    backend = GatedBackend()
    live = start_turn(conversation, "Which frame do you see?", backend)
    assert answer_in_progress(conversation) is live
    with pytest.raises(SessionBusyError, match="An answer is being written"):
        start_turn(conversation, "A second question", backend)  # the first is not replaced

    # The clinician scrolls and changes the window while the answer is written: this copy only.
    assert set_view(conversation, frame=3, window="lung") is None
    catch_up(conversation)  # a rerun meanwhile: the clinician's view stays
    assert conversation.ctx.view().frame == 3
    assert stored_view(store, conversation.session_id).frame == 0
    # What would write the session waits, in one sentence.
    assert second_read_act(conversation, "second_read_step", {"action": "next"}) == ANSWERING
    with pytest.raises(SessionBusyError, match="An answer is being written"):
        open_sample(conversation, "ct-small")

    backend.gate.set()
    finished(live)
    assert live.error is None
    assert backend.frames == [0], "the answer worked on the frame it was asked about"
    assert [e.kind for e in live.events][-2:] == ["assistant_text", "turn_finished"]

    catch_up(conversation)  # the answer is in this copy now, and the clinician's view is the shared one
    assert answer_in_progress(conversation) is None
    assert conversation.turns == 1 and "I looked at frame 1." in str(conversation.history)
    view = stored_view(store, conversation.session_id)
    assert (view.frame, view.window.name) == (3, "lung")

    again = start_turn(conversation, "And now?", backend)  # the next question sees that view
    finished(again)
    assert backend.frames == [0, 3]


def test_a_reloaded_tab_follows_the_answer_being_written(stored_session, media):  # noqa: F811
    conversation, _ = stored_session
    backend = GatedBackend()
    live = start_turn(conversation, "Which frame do you see?", backend)  # asked in a tab since reloaded
    at = new_app(chat=conversation.session_id)
    asked, answer = at.chat_message
    assert asked.markdown[0].value == "Which frame do you see?" and not answer.markdown
    assert answer.caption[-1].value.startswith("Writing the answer…")
    assert at.chat_input[0].disabled, "one answer at a time"
    assert not at.error, [e.value for e in at.error]  # not "interrupted"
    backend.gate.set()
    finished(live)
    at.run()  # the fragment's next redraw, in the browser
    assert_healthy(at)
    assert [m.markdown[0].value for m in at.chat_message] == ["Which frame do you see?", "I looked at frame 1."]
    assert not at.error and not at.chat_input[0].disabled


# -- the real app in Chromium, the fake Gemini answering slowly ----------------------------------


def _caption(page):
    return page.locator(".st-key-viewer [data-testid=stCaptionContainer]").filter(
        has_text=re.compile(r"^frame \d+ of")).first


def _expect_caption(page, pattern: str) -> None:
    """The viewer's caption matches ``pattern`` — without waiting for the app to be idle, which
    it is not while an answer is written."""
    from playwright.sync_api import expect

    expect(_caption(page)).to_have_text(re.compile(pattern.replace("$", r"\s*$")), timeout=30_000)


@pytest.mark.browser
def test_next_a_preset_and_zoom_mid_answer_do_not_interrupt_it(browser_available, eval_dir, tmp_path, fake):
    from playwright.sync_api import expect

    from tests.fake_gemini import call_reply, text_reply

    files = sorted((eval_dir / "lidc_ct" / "LIDC-IDRI-0002").glob("*.dcm"))
    detect = ("detect_anomalies", {"use_vision_model": False})
    fake.script(call_reply(detect), text_reply("The candidates are outlined; F1 is the strongest."))
    env = {"GOOGLE_GEMINI_BASE_URL": fake.url, "GEMINI_API_KEY": "test-key"}
    with served_app(tmp_path / "data", extra_env=env) as url, chromium_page() as page:
        page.goto(url)
        wait_idle(page)
        send_message(page, "Analyse this scan", files=files)
        page.get_by_text("F1 is the strongest").first.wait_for(timeout=90_000)
        wait_idle(page)
        viewer = page.locator(".st-key-viewer")
        expect(viewer.get_by_role("button", name="Zoom to F1")).to_be_visible(timeout=30_000)
        for frame in (2, 3, 4):  # the question is asked about frame 4
            viewer.get_by_role("button", name=re.compile("^Next")).click()
            _expect_caption(page, rf"^frame {frame} of 8")
            wait_idle(page)

        # A slow model: four seconds before the tool call, four more before the answer.
        fake.script({"delay_s": 4.0, "body": call_reply(detect)},
                    {"delay_s": 4.0, "body": text_reply("Looked again: nothing new beyond the outlined candidates.")})
        send_message(page, "Look again at this slice")
        time.sleep(0.15)
        viewer.get_by_role("button", name=re.compile("^Next")).click()
        _expect_caption(page, r"^frame 5 of 8")
        viewer.get_by_role("button", name=re.compile("^Lung")).click()
        _expect_caption(page, r"^frame 5 of 8 .*window -600/1500$")
        viewer.get_by_role("button", name="Zoom to F1").click()
        _expect_caption(page, r"^frame 1 of 8 .*zoomed to F1$")
        wait_idle(page)  # the click's run has ended; the answer goes on, redrawn by a fragment
        expect(page.get_by_text(re.compile(r"^Writing the answer… [3-9] s$"))).to_be_visible(timeout=10_000)
        expect(page.locator("[data-testid=stChatInput] textarea")).to_be_disabled()  # one answer at a time
        assert page.get_by_text("Looked again").count() == 0, "the clicks came while the answer was written"
        assert viewer.get_by_role("button", name="Zoom to F1").count() == 1, "nothing left over from before"
        expect(viewer).to_contain_text("The answer being written works on frame 4 of 8")
        screenshot(page, "turn-01-clicked-mid-answer")

        page.get_by_text("Looked again: nothing new").first.wait_for(timeout=90_000)
        # Ended, and the app redrawn from the stored session (the answer's text comes a moment before).
        expect(page.get_by_text(re.compile("^Writing the answer"))).to_have_count(0, timeout=30_000)
        wait_idle(page)
        expect(viewer).not_to_contain_text("The answer being written")
        assert fake.remaining == 0
        statuses = page.locator("[data-testid=stChatMessage] [data-testid=stExpander] summary").all_inner_texts()
        assert sum("detect_anomalies" in s for s in statuses) == 2, statuses
        assert not any("failed" in s for s in statuses), statuses
        assert page.get_by_text("interrupted").count() == 0
        assert not page.locator("[data-testid=stAlertContentError]").count()
        # The answer's tool ran on frame 4, the one asked about, whatever was clicked meanwhile.
        response = [p["functionResponse"] for p in fake.calls()[-1].parts() if "functionResponse" in p]
        assert response and re.search(r"'frames_searched': \[3\]", str(response[-1])), response
        # The slice shown changed, and the view the clinician chose is now the shared one.
        _expect_caption(page, r"^frame 1 of 8 .*window -600/1500 · zoomed to F1$")
        screenshot(page, "turn-02-answer-complete")
        page.reload()
        wait_idle(page)
        _expect_caption(page, r"^frame 1 of 8 .*window -600/1500$")
