"""The viewer's caliper (issue 25, item 3) through Streamlit's AppTest, on the bundled chest CT
sample (LIDC-IDRI-0003, pixel spacing 0.820312 mm): lines dragged on the image, their lengths in
mm, and two of them set as a finding's size, measured by the clinician.

A drag is sent as the image component sends it (``{x1, y1, x2, y2, width, height}`` in displayed
pixels), so the viewer's own mapping to native pixels is what is tested. AppTest has no way to set
a custom component's value, so ``drag`` adds it to the widget states of the next run itself, with
AppTest's ``_run`` (private; the Chromium test, tests/test_caliper_browser.py, drags for real).
"""

from __future__ import annotations

import json
import time

import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState

from agent.conversation import Conversation
from agent.settings import LoupeSettings
from agent.viewer import caliper_finding, caliper_lengths, caliper_line, viewer_image
from agent.workspace import ANSWERING, set_size_by_caliper, start_turn
from tests.test_app import assert_healthy, data_dir, media, new_app, open_sections  # noqa: F401 (fixtures)
from tests.test_turn_survives_clicks import GatedBackend, finished
from tests.test_viewer_app import CLINICIAN, has_colour, shown_image, stored

#: Displayed width of the image in the browser (any: the viewer scales clicks to its PNG).
SHOWN_PX = 700
#: After "Analyse this scan" the view is on F1 (the nodule), slice 6 of 10, around (367, 350) px.
NODULE_FRAME = 5
LONG = (350.0, 350.0, 383.0, 350.0)  # 33 px × 0.820312 mm = 27.07 mm
SHORT = (366.0, 340.0, 366.0, 360.0)  # 20 px = 16.41 mm
SPACING_MM = 0.820312


def drag(at, line: tuple[float, float, float, float], shown: int = SHOWN_PX):
    """A drag from one end of ``line`` (native pixel centres, whole image shown) to the other, as
    the component reports it: displayed pixel edges of an image ``shown`` px wide."""
    (component,) = at.get("component_instance")
    to_shown = shown / 512
    x0, y0, x1, y1 = ((value + 0.5) * to_shown for value in line)
    states = at._tree.get_widget_states()
    states.widgets.append(WidgetState(id=component.proto.id, json_value=json.dumps(
        {"x1": x0, "y1": y0, "x2": x1, "y2": y1, "width": shown, "height": shown, "unix_time": time.time()})))
    at._run(states)
    assert_healthy(at)
    return at


def caliper_caption(at) -> str | None:
    return next((c.value for c in at.main.caption if c.value.startswith("Caliper: ")), None)


def captions(at) -> list[str]:
    return [c.value for c in at.main.caption]


@pytest.fixture
def analysed(data_dir, media):  # noqa: F811
    """The app on the default sample after "Analyse this scan", the mouse on the caliper: (app, study id)."""
    at = new_app()
    at.button(key="suggest-Analyse this scan").click().run()
    assert_healthy(at)
    conversation = at.session_state["conversation"]
    study_id = conversation.ctx.current_study_id
    assert conversation.ctx.view().frame == NODULE_FRAME
    assert conversation.ctx.findings["F1"].frame == NODULE_FRAME
    at.segmented_control(key=f"mouse-mode-{study_id}").set_value("caliper").run()
    assert_healthy(at)
    return at, study_id


def test_two_lines_measure_the_nodule_in_mm_and_become_its_size_by_the_clinician(analysed, data_dir):  # noqa: F811
    at, study_id = analysed
    session_id = at.session_state["conversation"].session_id
    at.chat_input[0].set_value("Draft a report").run()
    assert any(m.value.startswith("**Version 1 of 1") for m in at.markdown)
    assert caliper_caption(at).startswith("Caliper: drag along the lesion's long axis")
    before = shown_image(at)
    assert not has_colour(before, CLINICIAN)

    drag(at, LONG)
    assert caliper_caption(at) == "Caliper: 27.1 mm"
    assert "A size has a long and a short axis: draw the short axis across it too." in captions(at)
    assert at.selectbox(key=f"caliper-finding-{study_id}").value == "F1"  # the finding under the line
    set_size = at.button(key=f"caliper-set-{study_id}")
    assert set_size.label == "Set as F1's size" and set_size.disabled
    # Drawn in the clinician's colour, along the line (PNG px = native px here).
    assert has_colour(shown_image(at).crop((352, 346, 382, 356)), CLINICIAN)

    drag(at, SHORT)
    assert caliper_caption(at) == "Caliper: 27.1 × 16.4 mm (long × short)"
    assert not any("draw the short axis" in c for c in captions(at))
    assert has_colour(shown_image(at).crop((362, 341, 371, 348)), CLINICIAN)
    assert not at.button(key=f"caliper-set-{study_id}").disabled

    at.button(key=f"caliper-set-{study_id}").click().run()
    assert_healthy(at)
    assert [s.value for s in at.success] == ["F1 is now 27.1 × 16.4 mm (clinician); report version 2 states it."]
    assert caliper_caption(at).startswith("Caliper: drag along"), "the lines cleared"
    assert not has_colour(shown_image(at), CLINICIAN)
    finding = stored(data_dir, session_id).findings["F1"]  # as a reload or the model gets it
    assert finding.size_method == "clinician"
    assert finding.size_mm == pytest.approx((33 * SPACING_MM, 20 * SPACING_MM), abs=1e-3)
    assert finding.size_axes.long_axis == ((350.0, 350.0), (383.0, 350.0))

    open_sections(at, "findings_open")
    table = next(e for e in at.expander if e.label.startswith("Findings ("))
    rows = table.dataframe[0].value
    assert rows.set_index("id").loc["F1", "size"] == "27.1 × 16.4 mm (clinician)"
    assert any(m.value.startswith("**Version 2 of 2") for m in at.markdown)
    report = next(m.value for m in at.markdown if "| F1 |" in m.value)
    assert "27.1 × 16.4 mm | clinician |" in report

    at.chat_input[0].set_value("How big is F1?").run()  # the model was told, as of a mark
    assert_healthy(at)
    assert "27.1 × 16.4 mm (measured by the clinician)" in at.chat_message[-1].markdown[-1].value


def test_a_third_line_replaces_the_second_and_another_slice_or_clear_drops_them(analysed):
    at, study_id = analysed
    drag(at, LONG)
    drag(at, SHORT)
    drag(at, (366.0, 330.0, 366.0, 370.0))  # a longer second line: now the long axis
    assert caliper_caption(at) == "Caliper: 32.8 × 27.1 mm (long × short)"
    drag(at, (360.0, 350.0, 360.5, 350.0))  # a click, not a drag: nothing changes
    assert caliper_caption(at) == "Caliper: 32.8 × 27.1 mm (long × short)"

    at.button(key=f"caliper-clear-{study_id}").click().run()
    assert caliper_caption(at).startswith("Caliper: drag along")
    assert not has_colour(shown_image(at), CLINICIAN)

    drag(at, LONG)
    at.button(key=f"next-{study_id}").click().run()  # lines belong to the slice they were drawn on
    assert_healthy(at)
    assert caliper_caption(at).startswith("Caliper: drag along")
    at.button(key=f"prev-{study_id}").click().run()
    assert caliper_caption(at).startswith("Caliper: drag along")


def test_a_slice_without_findings_has_nothing_to_give_the_size_to(analysed):
    at, study_id = analysed
    at.slider(key=f"frame-{study_id}").set_value(5).run()  # slice 5: no finding on it
    drag(at, LONG)
    drag(at, SHORT)
    assert caliper_caption(at) == "Caliper: 27.1 × 16.4 mm (long × short)"
    assert at.button(key=f"caliper-set-{study_id}").disabled
    assert ("No finding on this slice to give the size to: mark the lesion first (Point or Box)."
            in captions(at))


def test_the_other_mouse_modes_still_mark(analysed, data_dir):  # noqa: F811
    at, study_id = analysed
    mode = at.segmented_control(key=f"mouse-mode-{study_id}")
    assert [o for o in mode.options] == ["Point", "Box", "Caliper"]
    mode.set_value("box").run()
    drag(at, (150.0, 150.0, 180.0, 175.0))  # a box: a finding of the clinician's, no caliper line
    (sentence,) = [s.value for s in at.success] or [w.value for w in at.warning] or [i.value for i in at.info]
    assert sentence.startswith("F6 (clinician-marked finding) at (165, 162) px on frame 6")
    assert caliper_caption(at) is None
    assert stored(data_dir, at.session_state["conversation"].session_id).findings["F6"].source == "clinician"


def test_setting_a_size_waits_for_the_answer_being_written_drawing_does_not(analysed, data_dir):  # noqa: F811
    at, study_id = analysed
    conversation = at.session_state["conversation"]
    backend = GatedBackend()
    live = start_turn(conversation, "Which frame do you see?", backend)
    try:
        drag(at, LONG)
        drag(at, SHORT)
        assert caliper_caption(at) == "Caliper: 27.1 × 16.4 mm (long × short)"
        at.button(key=f"caliper-set-{study_id}").click().run()
        assert [w.value for w in at.warning] == [ANSWERING]
        assert caliper_caption(at) == "Caliper: 27.1 × 16.4 mm (long × short)", "the lines are kept to try again"
        assert stored(data_dir, conversation.session_id).findings["F1"].size_method != "clinician"
    finally:
        backend.gate.set()
        finished(live)
    at.run()  # the answer is in; the app's copy catches up
    at.button(key=f"caliper-set-{study_id}").click().run()
    assert_healthy(at)
    assert [s.value for s in at.success] == ["F1 is now 27.1 × 16.4 mm (clinician)."]
    assert stored(data_dir, conversation.session_id).findings["F1"].size_method == "clinician"


# -- the services, without the app ---------------------------------------------------------------


@pytest.fixture
def analysed_session(data_dir):  # noqa: F811
    from agent.samples import sample_path
    from tests.test_planner import turn

    conversation = Conversation.start(LoupeSettings(_env_file=None), sample_path("ct-chest-nodule"))
    turn(conversation, "Analyse this scan")
    return conversation


def test_a_drag_on_a_zoomed_image_is_a_line_in_native_pixels_held_on_the_image(analysed_session):
    image = viewer_image(analysed_session, zoom="F1")
    assert image.scale > 4  # a close-up of the nodule

    def png(x: float, y: float) -> tuple[float, float]:  # native pixel centre -> PNG pixel edge
        return (x + 0.5 - image.origin[0]) * image.scale, (y + 0.5 - image.origin[1]) * image.scale

    line = caliper_line(analysed_session, image, (*png(355.0, 349.5), *png(379.25, 351.0)))
    assert line == pytest.approx((355.0, 349.5, 379.25, 351.0))
    assert caliper_line(analysed_session, image, (*png(360.0, 350.0), *png(360.3, 350.0))) is None  # a click

    whole = viewer_image(analysed_session)
    past = caliper_line(analysed_session, whole, (500.0, 10.0, whole.width + 40.0, -30.0))  # ends past the edge
    assert past[2:] == (511.5, -0.5)


def test_lengths_are_the_tools_and_the_finding_is_the_one_under_the_line(analysed_session):
    assert caliper_lengths(analysed_session, NODULE_FRAME, [LONG, SHORT]) == (
        [pytest.approx(33 * SPACING_MM), pytest.approx(20 * SPACING_MM)], "mm")
    assert caliper_finding(analysed_session, NODULE_FRAME, LONG) == "F1"
    assert caliper_finding(analysed_session, NODULE_FRAME, (10.0, 10.0, 40.0, 10.0)) == "F1"  # the nearest
    assert caliper_finding(analysed_session, 4, LONG) is None  # no finding on that slice


def test_without_pixel_spacing_the_caliper_measures_in_px(data_dir, eval_dir):  # noqa: F811
    from agent.viewer import mark

    conversation = Conversation.start(LoupeSettings(_env_file=None), eval_dir / "busi" / "malignant_013.png")
    assert conversation.ctx.view().study.pixel_spacing_mm(0) is None
    image = viewer_image(conversation)
    finding_id, _ = mark(conversation, image, point=(image.width / 2, image.height / 2))
    lines = [(100.0, 100.0, 160.0, 100.0), (130.0, 80.0, 130.0, 120.0)]
    assert caliper_lengths(conversation, 0, lines) == ([60.0, 40.0], "px")
    assert set_size_by_caliper(conversation, finding_id, *lines) == f"{finding_id} is now 60 × 40 px (clinician)."
    finding = conversation.ctx.findings[finding_id]
    assert (finding.size_px, finding.size_mm, finding.size_method) == ((60.0, 40.0), None, "clinician")
