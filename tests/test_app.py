"""The Streamlit chat app (ui/app.py) through Streamlit's AppTest.

The images the app hands to the browser are captured from Streamlit's in-memory media storage,
so the tests check what a clinician would actually see, not only captions.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import streamlit as st
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from agent.store.database import Store
from tests.conftest import pydicom_file
from tests.fake_gemini import FakeGemini, fixture

APP = Path(__file__).resolve().parent.parent / "ui" / "app.py"


@pytest.fixture
def media(monkeypatch) -> dict[str, tuple[bytes, str]]:
    """Every media file the app registers, by file id: (bytes, mimetype)."""
    stored: dict[str, tuple[bytes, str]] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def recording(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        stored[file_id] = (self.get_file(file_id).content, mimetype)
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    return stored


@pytest.fixture
def data_dir(monkeypatch, tmp_path) -> Path:
    folder = tmp_path / "loupe-data"
    monkeypatch.setenv("LOUPE_DATA_DIR", str(folder))
    monkeypatch.setenv("LOUPE_USER", "dr-test")
    monkeypatch.chdir(tmp_path)  # no stray .env from the caller's working directory
    # Settings and the store are st.cache_resource, which lives for the whole process.
    st.cache_resource.clear()
    yield folder
    st.cache_resource.clear()


def new_app(chat: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=90)
    if chat:
        at.query_params["chat"] = chat
    at.run()
    assert_healthy(at)
    return at


@pytest.fixture
def app(data_dir, media) -> AppTest:
    return new_app()


TOOLS = ("load_study", "detect_anomalies", "verify_coordinates", "fit_gaussian", "render_overlay", "draft_report",
         "revise_report")


def tool_boxes(at: AppTest) -> list[str]:
    """Labels of the tool-call boxes in the chat (as replayed after the turn)."""
    return [e.label for e in at.expander if e.label.split(" ")[0] in TOOLS]


def assert_healthy(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def open_sections(at: AppTest, *keys: str) -> None:
    """Open expanders drawn only while open (ui/sections.py), as a click on their label does."""
    for key in keys:
        at.session_state[key] = True
    at.run()
    assert_healthy(at)


def images_shown(media) -> list[Image.Image]:
    return [Image.open(io.BytesIO(data)) for data, mime in media.values() if mime == "image/png"]


def test_opens_the_sample_study_with_the_chat_id_in_the_url(app, data_dir):
    assert app.query_params["chat"]
    facts = " ".join(m.value for m in app.sidebar.markdown)
    # The default sample: a chest CT series on which the offline answer is right (agent/samples.py).
    assert "**Modality** CT" in facts and "**Native size** 512×512 px" in facts and "**Frames** 10" in facts
    assert [b.label for b in app.button][:4] == ["Analyse this scan", "Where is the lesion and how big?",
                                                 "Draft a report", "Start a second read"]
    assert "offline planner" in " ".join(c.value for c in app.sidebar.caption)


def test_an_offline_turn_runs_tools_and_shows_the_overlay(app, media):
    media.clear()
    app.button(key="suggest-Analyse this scan").click().run()
    assert_healthy(app)
    labels = tool_boxes(app)
    # A CT series is searched slice by slice; the view then moves to the strongest finding's slice.
    assert [label.split(" ")[0] for label in labels] == ["detect_anomalies", "load_study", "fit_gaussian",
                                                         "render_overlay"]
    assert not any("failed:" in label for label in labels)
    assert "offline classical detector" in app.chat_message[1].markdown[0].value
    overlays = [img for img in images_shown(media) if img.width >= 300]
    assert overlays, "the annotated overlay reached the page"


def test_a_bad_upload_is_one_clear_sentence_and_the_session_survives(app):
    app.button(key="suggest-Analyse this scan").click().run()
    app.chat_input[0].upload("scan.dcm", b"DICM" + b"\x00" * 50).run()
    assert_healthy(app)
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and errors[0].endswith(".") and "Traceback" not in errors[0]
    assert len(app.chat_message) == 2  # the earlier turn is still there
    assert "**Native size** 512×512 px" in " ".join(m.value for m in app.sidebar.markdown)  # still the same study


def test_an_upload_in_the_chat_opens_it_and_the_question_runs_on_it(app):
    app.chat_input[0].upload("IM0001", pydicom_file("CT_small.dcm").read_bytes()).set_value("How big is it?").run()
    assert_healthy(app)
    assert "**Modality** CT" in " ".join(m.value for m in app.sidebar.markdown)  # extension-less DICOM accepted
    assert "mm (full width at half maximum" in app.chat_message[-1].markdown[-1].value


def test_report_draft_edit_sign_and_downloads(app):
    app.chat_input[0].set_value("Draft a report").run()
    assert_healthy(app)
    assert any("**Version 1 of 1 · DRAFT**" in m.value for m in app.markdown)
    assert not app.text_area, "closed sections draw nothing until opened"
    open_sections(app, "edit_report_open")
    app.text_area(key="impression-1").set_value("No focal liver lesion is reported by Loupe.").run()
    app.session_state["edit_report_open"] = False  # closed before saving: the edit is not drawn ...
    app.run()
    assert not app.text_area
    open_sections(app, "edit_report_open")  # ... and is still there, unsaved, when it opens again
    assert app.text_area(key="impression-1").value == "No focal liver lesion is reported by Loupe."
    app.button(key="save-1").click().run()
    assert_healthy(app)
    assert any("**Version 2 of 2 · DRAFT**" in m.value for m in app.markdown)
    open_sections(app, "sign_off_open")
    app.text_input(key="signer_name").set_value("Dr Test").run()
    app.session_state["sign_off_open"] = False  # closed: the name field is not drawn ...
    app.run()
    assert not app.text_input and app.session_state["signer_name"] == "Dr Test"
    open_sections(app, "sign_off_open")  # ... and the typed name is still there when it opens again
    assert app.text_input(key="signer_name").value == "Dr Test"
    app.button(key="sign").click().run()
    assert_healthy(app)
    assert any("**Version 3 of 3 · SIGNED by Dr Test**" in m.value for m in app.markdown)
    assert any(s.value == "Signed version 3 (the text of version 2)." for s in app.success)
    labels = [b.label for b in app.get("download_button")]
    assert {"Markdown · v3", "PDF · v3", "JSON · v3"} <= set(labels)  # named with the version they export


def report_header(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**Version "))


def test_the_report_shows_the_latest_version_unless_an_older_one_is_chosen(app):
    for _ in range(3):
        app.chat_input[0].set_value("Draft a report").run()
    assert report_header(app) == "**Version 3 of 3 · DRAFT**"
    assert app.selectbox(key="report_version").value == 3 and not app.warning

    app.selectbox(key="report_version").set_value(1).run()  # an explicit choice of an older version
    assert report_header(app) == "**Version 1 of 3 · DRAFT**"
    assert [w.value for w in app.main.warning] == ["Viewing version 1 of 3 — latest is 3."]
    assert any(c.value.startswith("Sign-off and edits act on the latest version") for c in app.caption)
    assert "Sign off" not in [e.label for e in app.expander]  # ... and they say why they are not here
    assert "PDF · v1" in [b.label for b in app.get("download_button")]
    open_sections(app, "findings_open")  # any other rerun keeps the choice
    assert report_header(app) == "**Version 1 of 3 · DRAFT**"

    app.chat_input[0].set_value("Draft a report").run()  # a new version from the chat: shown at once
    assert report_header(app) == "**Version 4 of 4 · DRAFT**" and not app.main.warning

    app.selectbox(key="report_version").set_value(2).run()
    app.button(key="report_latest").click().run()  # back to the latest
    assert report_header(app) == "**Version 4 of 4 · DRAFT**" and not app.main.warning
    app.selectbox(key="report_version").set_value(2).run()
    app.button(key="restore").click().run()  # a restore is a new version: the latest, shown
    assert_healthy(app)
    assert report_header(app) == "**Version 5 of 5 · DRAFT**"
    assert [s.value for s in app.success] == ["Restored version 2 as version 5, now the latest."]


def test_reload_from_the_url_brings_the_conversation_back(app, data_dir, media):
    app.button(key="suggest-Analyse this scan").click().run()
    chat_id = app.query_params["chat"]
    media.clear()
    reloaded = new_app(chat_id)
    assert reloaded.query_params["chat"] == chat_id
    assert [m.markdown[0].value for m in reloaded.chat_message][:1] == ["Analyse this scan"]
    assert [label.split(" ")[0] for label in tool_boxes(reloaded)] == ["detect_anomalies", "load_study",
                                                                        "fit_gaussian", "render_overlay"]
    assert images_shown(media), "stored images are replayed"
    arguments = lambda: [c.value for c in reloaded.main.caption if c.value.startswith("{")]  # noqa: E731
    assert not arguments(), "a closed tool box draws only its status line"
    open_sections(reloaded, min(key for key in reloaded.session_state if key.startswith("call-")))
    assert arguments(), "an opened tool box shows its arguments"


def test_someone_elses_chat_id_opens_a_new_session(app, data_dir, monkeypatch):
    chat_id = app.query_params["chat"]
    monkeypatch.setenv("LOUPE_USER", "dr-other")
    st.cache_resource.clear()
    other = new_app(chat_id)
    assert other.query_params["chat"] != chat_id
    assert not other.chat_message


def test_a_turn_against_the_fake_gemini(data_dir, media, monkeypatch):
    with FakeGemini() as fake:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        fake.script(fixture("detect_call.json"), fixture("answer_text.json"))
        at = new_app()
        assert "Gemini (gemini-2.5-flash)" in " ".join(c.value for c in at.sidebar.caption)
        assert at.sidebar.warning, "the sample's pixels are held until the clinician confirms"
        at.button(key="confirm_release").click().run()
        at.chat_input[0].set_value("Analyse this scan").run()
        assert_healthy(at)
        boxes = tool_boxes(at)
        assert boxes[0].startswith("detect_anomalies") and "failed:" not in boxes[0]
        assert "F1 is the strongest candidate" in at.chat_message[1].markdown[-1].value
        assert fake.calls()[0].images(), "after the confirmation the image was sent"


def test_gemini_down_offers_the_offline_planner(data_dir, monkeypatch):
    from tests.fake_gemini import error_reply

    with FakeGemini() as fake:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        monkeypatch.setenv("LOUPE_RETRY_ATTEMPTS", "1")
        fake.script(error_reply(503))
        at = new_app()
        at.chat_input[0].set_value("How big is it?").run()
        assert_healthy(at)
        assert any("Gemini is unavailable" in e.value for e in at.error)
        offer = next(b for b in at.button if b.label == "Answer this with the offline planner")
        offer.click().run()
        assert_healthy(at)
        assert any("mm (longest diameter and the short axis across it" in m.value for m in at.markdown)


def test_sessions_can_be_deleted_from_the_sidebar(app, data_dir):
    first = app.query_params["chat"]
    open_sections(app, "sessions_open")
    app.button(key="new_session").click().run()
    assert app.query_params["chat"] != first
    app.button(key=f"delete-{first}").click().run()
    assert_healthy(app)
    store = Store.for_data_dir(data_dir)
    assert first not in [s.id for s in store.list_sessions("dr-test")]
    store.close()


def test_window_preset_changes_the_view(data_dir, media):
    at = new_app()
    from agent.workspace import open_sample

    open_sample(at.session_state["conversation"], "ct-small")
    at.run()
    conversation = at.session_state["conversation"]
    key = f"window-{conversation.ctx.current_study_id}"
    at.selectbox(key=key).set_value("lung").run()
    assert_healthy(at)
    assert conversation.ctx.view().window.center == -600


def test_second_read_mode_in_the_app(data_dir, media):
    at = new_app()
    at.button(key="suggest-Start a second read").click().run()
    assert_healthy(at)
    assert any(m.value.startswith("**Step 1 of") for m in at.markdown)
    at.text_input(key="second-read-note-1").set_value("looks fine").run()
    at.button(key="assess-agree").click().run()
    assert_healthy(at)
    assert any(m.value.startswith("**Step 2 of") for m in at.markdown)
    at.button(key="assess-disagree").click().run()
    at.button(key="second-read-to-report").click().run()
    assert_healthy(at)
    summary = next(e for e in at.expander if e.label == "Second-read summary")
    assert "2 of" in summary.markdown[0].value
    assert any(m.value.startswith("**Version 2 of 2") for m in at.markdown)  # drafted, then the addendum


def test_findings_table_matches_the_ids_in_the_chat(app):
    app.button(key="suggest-Analyse this scan").click().run()
    open_sections(app, "findings_open")
    table = next(e for e in app.expander if e.label.startswith("Findings ("))
    ids = list(table.dataframe[0].value["id"])
    assert ids[0] == "F1" and f"({len(ids)})" in table.label
    assert "F1" in app.chat_message[1].markdown[0].value


def test_a_long_conversation_shows_its_latest_turns_and_the_rest_on_request(app):
    for _ in range(7):
        app.chat_input[0].set_value("How big is it?").run()
    assert_healthy(app)
    assert len(app.chat_message) == 12  # the last six turns
    app.button(key="show_all_turns_button").click().run()
    assert len(app.chat_message) == 14


def test_several_uploaded_files_open_as_one_series(data_dir, eval_dir):
    from agent.conversation import Conversation
    from agent.settings import LoupeSettings
    from agent.workspace import open_uploads

    conversation = Conversation.start(LoupeSettings(_env_file=None), pydicom_file("CT_small.dcm"))
    slices = sorted((eval_dir / "lidc_ct" / "LIDC-IDRI-0003").glob("*.dcm"))[:3]
    open_uploads(conversation, [(f"Doe_John_{i}.dcm", f.read_bytes()) for i, f in enumerate(slices)])
    assert conversation.ctx.view().study.frame_count == 3
    stored = sorted(p.name for p in (data_dir / "uploads").rglob("*.dcm"))
    assert stored == ["00000.dcm", "00001.dcm", "00002.dcm"]  # written once, under neutral names


def test_a_png_is_taken_as_what_it_looks_like_and_the_clinician_can_say_otherwise(data_dir, media, eval_dir):
    from agent.workspace import open_uploads

    at = new_app()
    conversation = at.session_state["conversation"]
    open_uploads(conversation, [("screenshot.png", (eval_dir / "busi" / "benign_030.png").read_bytes())])
    at.run()
    assert_healthy(at)
    study_id = conversation.ctx.current_study_id
    choice = at.selectbox(key=f"modality-{study_id}")
    assert choice.value == "US" and choice.label == "What does this image show?"
    assert any("Loupe's guess from the picture" in c.value and "ultrasound" in c.value for c in at.caption)
    choice.set_value("DX").run()
    assert_healthy(at)
    study = conversation.ctx.view().study
    assert (study.modality, study.safe.modality_source) == ("DX", "user")
    assert any(c.value == "As you set it." for c in at.caption)
    reloaded = new_app(chat=conversation.session_id)  # the session remembers what the clinician said
    again = reloaded.session_state["conversation"].ctx.view().study
    assert (again.modality, again.safe.modality_source) == ("DX", "user")
    assert reloaded.selectbox(key=f"modality-{study_id}").value == "DX"


def test_a_dicom_study_offers_no_modality_choice(app):
    conversation = app.session_state["conversation"]
    assert conversation.ctx.view().study.safe.kind == "dicom"
    assert not [s for s in app.selectbox if s.label == "What does this image show?"]
