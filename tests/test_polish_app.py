"""Polish a reader notices (issue 25), through Streamlit's AppTest and the services under it:
another study opened after a conversation about the first starts a conversation of its own (the
sidebar, the chat and the PACS); one outline colour scheme in the viewer and the figures; the PACS
results with every field; the second-read summary in step titles, not checklist ids.

The layout items (labels and placeholder that fit, the viewer kept in view) need a browser:
tests/test_polish_browser.py.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

import agent.viewer
from agent.conversation import Conversation
from agent.samples import sample_path
from agent.settings import LoupeSettings
from agent.store.database import Store
from agent.viewer import _dashes, viewer_image
from agent.workspace import open_to_read
from tests.conftest import pydicom_file
from tests.test_app import assert_healthy, data_dir, media, new_app, open_sections  # noqa: F401 (fixtures)
from tools.coordinates import BoxPx
from tools.findings import Finding, Verification
from tools.render.style import SOURCE_COLOURS, outline_rgb
from ui.opened import NEW_CONVERSATION

CT_SMALL = pydicom_file("CT_small.dcm")
#: A checklist id as the clinician should never read it: lower case words joined by underscores.
SNAKE_ID = re.compile(r"\b[a-z]+(?:_[a-z]+)+\b")


def current(at) -> Conversation:
    return at.session_state["conversation"]


def sidebar_text(at) -> str:
    return " ".join(m.value for m in at.sidebar.markdown) + " ".join(i.value for i in at.sidebar.info)


def talk(at, message: str = "Analyse this scan") -> None:
    at.chat_input[0].set_value(message).run()
    assert_healthy(at)


def turns_of(data_dir, session_id: str) -> int:  # noqa: F811 (the fixture's name)
    store = Store.for_data_dir(data_dir)
    try:
        return next(s.turns for s in store.list_sessions("dr-test") if s.id == session_id)
    finally:
        store.close()


# -- opening another study ------------------------------------------------------------------------
def test_before_anything_is_said_another_study_replaces_the_first_in_place(data_dir, media):  # noqa: F811
    at = new_app()
    first = current(at).session_id
    open_sections(at, "open_study_open")
    at.selectbox(key="sample").set_value("ct-small")
    at.button(key="open_sample").click().run()
    assert_healthy(at)
    assert current(at).session_id == first and at.query_params["chat"] == first
    assert "**Native size** 128×128 px" in sidebar_text(at)
    assert NEW_CONVERSATION not in sidebar_text(at)


def test_a_sample_opened_after_talking_starts_a_new_conversation(data_dir, media):  # noqa: F811
    at = new_app()
    talk(at)
    first = current(at).session_id
    assert len(at.chat_message) == 2
    open_sections(at, "open_study_open")
    at.selectbox(key="sample").set_value("ct-small")
    at.button(key="open_sample").click().run()
    assert_healthy(at)
    second = current(at).session_id
    assert second != first and at.query_params["chat"] == second  # its own chat id in the URL
    assert "**Native size** 128×128 px" in sidebar_text(at) and NEW_CONVERSATION in sidebar_text(at)
    assert not at.chat_message  # the first study's answers stay with it
    assert turns_of(data_dir, first) == 1 and turns_of(data_dir, second) == 0
    store = Store.for_data_dir(data_dir)
    titles = {s.id: s.title for s in store.list_sessions("dr-test")}
    store.close()
    assert titles[second].startswith("CT")  # titled after its study, like any session
    # Going back to the first conversation shows its study and its chat again.
    at.query_params["chat"] = first
    at.run()
    assert_healthy(at)
    assert current(at).session_id == first and len(at.chat_message) == 2
    assert "**Native size** 512×512 px" in sidebar_text(at) and NEW_CONVERSATION not in sidebar_text(at)


def test_a_file_dropped_in_the_chat_after_talking_is_asked_about_in_a_new_conversation(data_dir, media):  # noqa: F811
    at = new_app()
    talk(at)
    first = current(at).session_id
    at.chat_input[0].upload("IM0001", CT_SMALL.read_bytes()).set_value("How big is it?").run()
    assert_healthy(at)
    second = current(at).session_id
    assert second != first
    assert "**Native size** 128×128 px" in sidebar_text(at)
    # The question went with the files: the new conversation holds it, answered on the new study.
    assert [m.markdown[0].value for m in at.chat_message if m.name == "user"] == ["How big is it?"]
    assert "mm (full width at half maximum" in at.chat_message[-1].markdown[-1].value
    assert turns_of(data_dir, first) == 1 and turns_of(data_dir, second) == 1


def test_the_same_files_again_stay_in_the_conversation(data_dir, media):  # noqa: F811
    at = new_app()
    at.chat_input[0].upload("IM0001", CT_SMALL.read_bytes()).set_value("How big is it?").run()
    assert_healthy(at)
    first = current(at).session_id
    at.chat_input[0].upload("copy.dcm", CT_SMALL.read_bytes()).set_value("And where?").run()
    assert_healthy(at)
    assert current(at).session_id == first and turns_of(data_dir, first) == 2
    store = Store.for_data_dir(data_dir)
    sessions = store.list_sessions("dr-test")
    store.close()
    assert [s.id for s in sessions] == [first]  # no session left behind by the check


def test_a_file_that_cannot_be_opened_changes_nothing(data_dir, media):  # noqa: F811
    at = new_app()
    talk(at)
    first = current(at).session_id
    at.chat_input[0].upload("scan.dcm", b"DICM" + b"\x00" * 50).run()
    assert_healthy(at)
    assert len(at.error) == 1 and current(at).session_id == first
    store = Store.for_data_dir(data_dir)
    sessions = store.list_sessions("dr-test")
    trail = [row.action for row in store.audit_rows(actor="dr-test")]
    store.close()
    assert [s.id for s in sessions] == [first] and "session_deleted" in trail  # the attempt is on record


def test_another_series_of_the_open_study_stays_in_the_conversation(tmp_path, eval_dir):
    series = sorted((eval_dir / "lidc_ct" / "LIDC-IDRI-0002").glob("*.dcm"))
    one, rest = tmp_path / "one", tmp_path / "rest"
    for folder, files in ((one, series[:1]), (rest, series[1:])):
        folder.mkdir()
        for file in files:
            (folder / file.name).write_bytes(file.read_bytes())
    store = Store.for_data_dir(tmp_path / "data")
    conversation = Conversation.start(LoupeSettings(_env_file=None, data_dir=tmp_path / "data"), one, store=store,
                                      owner="dr-test")
    conversation.note_exchange("Is there a nodule?", "Not on this slice.")
    assert open_to_read(conversation, rest) is conversation  # same Study Instance UID, other files
    other = open_to_read(conversation, sample_path("ct-small"))
    assert other is not conversation and other.session_id != conversation.session_id
    store.close()


# -- one outline colour scheme -------------------------------------------------------------------
def _mark(conversation: Conversation, fid: str, source: str, x: float, status: str) -> Finding:
    study_id = conversation.ctx.current_study_id
    finding = Finding(id=fid, study_id=study_id, label="nodule", frame=conversation.ctx.view().frame,
                      center_px=(x, 40.0), bbox_px=BoxPx.around(x, 40.0, 20, 20), confidence=0.9, source=source,
                      verification=Verification(status=status))
    conversation.ctx.findings[fid] = finding
    return finding


def test_the_viewer_outlines_in_the_figures_colours_by_source(tmp_path):
    conversation = Conversation.start(LoupeSettings(_env_file=None, data_dir=tmp_path), CT_SMALL)
    assert not hasattr(agent.viewer, "SOURCE_COLOURS")  # one palette: tools/render/style.py
    for number, source in enumerate(SOURCE_COLOURS, start=1):
        _mark(conversation, f"F{number}", source, 14.0 + 28 * (number - 1), "confirmed")
    image = viewer_image(conversation)
    pixels = np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB")).astype(int)
    for source in SOURCE_COLOURS:
        near = (np.abs(pixels - outline_rgb(source)).max(axis=2) <= 10).sum()
        assert near > 50, source


def test_a_rejected_finding_is_dashed_in_the_viewer_too(tmp_path):
    conversation = Conversation.start(LoupeSettings(_env_file=None, data_dir=tmp_path), CT_SMALL)
    colour = outline_rgb("classical")

    def ink(status: str) -> int:
        conversation.ctx.findings.clear()
        _mark(conversation, "F1", "classical", 64.0, status)
        pixels = np.asarray(Image.open(io.BytesIO(viewer_image(conversation).png)).convert("RGB")).astype(int)
        return int((np.abs(pixels - colour).max(axis=2) <= 10).sum())

    solid, dashed, dotted = ink("confirmed"), ink("rejected"), ink("unverified")
    assert solid > dashed > dotted > 0, (solid, dashed, dotted)


def test_dashes_follow_the_pattern_along_a_closed_outline():
    square = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0), (0.0, 0.0)]
    dashes = _dashes(square, 3.0, 2.0)
    drawn = sum(np.hypot(b[0] - a[0], b[1] - a[1]) for a, b in dashes)
    assert drawn == pytest.approx(40 * 3 / 5, abs=0.01)  # three fifths of the perimeter
    assert dashes[0][0] == (0.0, 0.0) and dashes[0][1] == pytest.approx((3.0, 0.0))


# -- the second-read summary in words ------------------------------------------------------------
def test_the_second_read_summary_names_steps_by_their_titles(data_dir, media):  # noqa: F811
    at = new_app()
    at.button(key="suggest-Start a second read").click().run()
    assert_healthy(at)
    at.button(key="assess-agree").click().run()
    at.button(key="second-read-to-report").click().run()  # the other steps unchecked
    assert_healthy(at)
    summary = next(e for e in at.expander if e.label == "Second-read summary").markdown[0].value
    conversation = current(at)
    study_id = conversation.ctx.current_study_id
    second_step = conversation.ctx.second_reads[study_id].checklist.steps[1]
    unchecked = next(line for line in summary.splitlines() if line.startswith("- Unchecked steps:"))
    assert f"step 2 {second_step.title}" in unchecked and second_step.id not in unchecked, unchecked
    assert not SNAKE_ID.search(summary), summary
    report = conversation.ctx.reports[study_id].current
    addendum = " ".join(item for item in report.limitations if item.startswith("Second-read addendum"))
    assert f"not checked — step 2 {second_step.title};" in addendum
    assert not SNAKE_ID.search(addendum), addendum


# -- the PACS: every field of a result, and a study opened after talking -------------------------
def _search_pacs(at, **fields: str) -> None:
    open_sections(at, "pacs_section_open")
    for name, value in fields.items():
        at.text_input(key=f"pacs_{name}").set_value(value)
    at.button(key="pacs_search").click().run()
    assert_healthy(at)


def test_pacs_results_show_date_modality_description_series_and_images(pacs_env, data_dir, media):  # noqa: F811
    at = new_app()
    _search_pacs(at, patient_id="LIDC-IDRI-0002")
    choice = at.radio(key="pacs_study")
    ((patient, details),) = zip(choice.options, choice.proto.captions, strict=True)
    assert patient.endswith(" · LIDC-IDRI-0002")
    date, modalities, description, counts, *_ = details.split(" · ")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) and "CT" in modalities.split(", ")
    assert description and re.fullmatch(r"\d+ series, \d+ images", counts), details


def test_a_pacs_study_opened_after_talking_gets_a_conversation_of_its_own(pacs_env, data_dir, media):  # noqa: F811
    from tests.test_app_pacs import CT_SMALL_STUDY

    at = new_app()
    talk(at)
    first = current(at).session_id
    _search_pacs(at, patient_name="compressed*")
    at.radio(key="pacs_study").set_value(CT_SMALL_STUDY)
    at.button(key="pacs_open_study").click().run()
    assert_healthy(at)
    assert not at.error
    assert current(at).session_id != first and at.query_params["chat"] == current(at).session_id
    assert "**Native size** 128×128 px" in sidebar_text(at) and NEW_CONVERSATION in sidebar_text(at)
    assert at.sidebar.success[0].value.startswith("Opened series")  # the retrieval's note, in the new one
    assert not at.chat_message and turns_of(data_dir, first) == 1
