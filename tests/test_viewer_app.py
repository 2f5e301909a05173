"""The viewer beside the chat (ui/viewer.py) through Streamlit's AppTest, on a real CT series.

The picture is checked as the browser gets it: the PNG inside the image component's arguments.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.conversation import Conversation
from agent.settings import LoupeSettings
from agent.store.database import Store
from tests.test_app import assert_healthy, data_dir, media, new_app, open_sections  # noqa: F401

NODULE = (346, 361)  # native px, on the slice of z-0094.50.dcm (LIDC-IDRI-0002's annotated nodule)
CLINICIAN = (255, 64, 255)  # tools/render/style.py SOURCE_COLOURS["clinician"], as the viewer draws it


@pytest.fixture
def lidc(data_dir, eval_dir, tmp_path):  # noqa: F811
    """A stored session on LIDC-IDRI-0002's eight CT slices: (session id, nodule frame index, study id)."""
    series = tmp_path / "LIDC-IDRI-0002"
    series.mkdir()
    # Only the images: the folder's annotation XML would be stored with them and refused on resume.
    for file in sorted((eval_dir / "lidc_ct" / "LIDC-IDRI-0002").glob("*.dcm")):
        shutil.copy(file, series / file.name)
    store = Store.for_data_dir(data_dir)
    conversation = Conversation.start(LoupeSettings(_env_file=None), series, store=store, owner="dr-test",
                                      title="LIDC")
    study = conversation.ctx.view().study
    nodule_frame = [f.path.name for f in study.files].index("z-0094.50.dcm")
    yield conversation.session_id, nodule_frame, study.id
    store.close()


def caption(at) -> str:
    return next(c.value for c in at.main.caption if c.value.startswith("frame "))


def position(text: str) -> float:
    return float(text.split("slice position ")[1].split(" mm")[0])


def shown_image(at) -> Image.Image:
    (component,) = at.get("component_instance")
    src = json.loads(component.proto.json_args)["src"]
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")


def stored(data_dir: Path, session_id: str):  # noqa: F811
    """The tools' context as the store has it (what a reload, another tab or the model would get)."""
    store = Store.for_data_dir(data_dir)
    try:
        return Conversation.resume(LoupeSettings(_env_file=None), store, session_id, "dr-test").ctx
    finally:
        store.close()


def stored_view(data_dir: Path, session_id: str):  # noqa: F811
    return stored(data_dir, session_id).view()


def has_colour(image: Image.Image, colour: tuple[int, int, int]) -> bool:
    return bool((np.asarray(image) == colour).all(axis=-1).any())


def test_the_viewer_shows_the_series_and_moves_through_it(lidc, data_dir, media):  # noqa: F811
    session_id, _, study_id = lidc
    at = new_app(chat=session_id)
    assert caption(at).startswith("frame 1 of 8 · slice position ") and " mm · window " in caption(at)
    first_position = position(caption(at))
    assert shown_image(at).size == (512, 512)  # native size, no thumbnail
    assert not [s for s in at.sidebar.slider], "the slice and window controls moved to the viewer"

    at.button(key=f"next-{study_id}").click().run()
    assert_healthy(at)
    assert caption(at).startswith("frame 2 of 8")
    assert at.slider(key=f"frame-{study_id}").value == 2
    assert stored_view(data_dir, session_id).frame == 1

    at.slider(key=f"frame-{study_id}").set_value(6).run()
    assert caption(at).startswith("frame 6 of 8")
    at.button(key=f"prev-{study_id}").click().run()
    assert caption(at).startswith("frame 5 of 8")
    assert stored_view(data_dir, session_id).frame == 4
    assert abs(position(caption(at)) - first_position) > 4  # 1.25 mm apart, 4 slices on

    # A slice chosen by a tool in the chat is the viewer's slice too (the slider follows the view).
    at.chat_input[0].set_value("Go to slice 7").run()
    assert_healthy(at)
    assert caption(at).startswith("frame 7 of 8") and at.slider(key=f"frame-{study_id}").value == 7
    assert stored_view(data_dir, session_id).frame == 6


def test_window_presets_and_a_free_window(lidc, data_dir, media):  # noqa: F811
    session_id, _, study_id = lidc
    at = new_app(chat=session_id)
    assert caption(at).endswith("window 40/350")  # the series' own window
    before = shown_image(at)
    at.button(key=f"preset-lung-{study_id}").click().run()
    assert_healthy(at)
    assert caption(at).endswith("window -600/1500")
    assert at.selectbox(key=f"window-{study_id}").value == "lung"
    assert shown_image(at).tobytes() != before.tobytes()

    at.selectbox(key=f"window-{study_id}").set_value("bone").run()
    assert caption(at).endswith("window 400/1800")
    assert (at.number_input(key=f"window-center-{study_id}").value,
            at.number_input(key=f"window-width-{study_id}").value) == (400, 1800)  # the free pair follows

    at.number_input(key=f"window-center-{study_id}").set_value(-600)
    at.number_input(key=f"window-width-{study_id}").set_value(1500)
    at.button(key=f"apply-window-{study_id}").click().run()
    assert_healthy(at)
    assert caption(at).endswith("window -600/1500")
    assert at.selectbox(key=f"window-{study_id}").value is None  # a free window, not a preset
    window = stored_view(data_dir, session_id).window
    assert (window.center, window.width) == (-600, 1500)

    at.button(key=f"preset-default-{study_id}").click().run()
    assert caption(at).endswith("window 40/350")

    at.chat_input[0].set_value("Show the lung window").run()  # a window a tool chose shows here too
    assert_healthy(at)
    assert caption(at).endswith("window -600/1500") and at.selectbox(key=f"window-{study_id}").value == "lung"


def test_a_clinician_mark_becomes_a_finding_the_chat_can_name(lidc, data_dir, media):  # noqa: F811
    session_id, nodule_frame, study_id = lidc
    at = new_app(chat=session_id)
    at.slider(key=f"frame-{study_id}").set_value(nodule_frame + 1).run()
    at.session_state["viewer-mark-label"] = "nodule"  # as typed in the label popover
    open_sections(at, f"mark-coordinates-open-{study_id}")
    at.number_input(key=f"mark-x-{study_id}").set_value(NODULE[0])
    at.number_input(key=f"mark-y-{study_id}").set_value(NODULE[1])
    at.button(key=f"mark-point-{study_id}").click().run()
    assert_healthy(at)
    (sentence,) = [s.value for s in at.success]
    finding_id = sentence.split(" ")[0]
    assert sentence.startswith(f"{finding_id} (nodule) at ({NODULE[0]}, {NODULE[1]}) px on frame {nodule_frame + 1}")
    assert "confirmed" in sentence
    finding = stored(data_dir, session_id).findings[finding_id]
    assert (finding.source, finding.frame, finding.verification.status) == ("clinician", nodule_frame, "confirmed")

    # Outlined in the clinician's colour where it was marked ...
    around = (NODULE[0] - 20, NODULE[1] - 20, NODULE[0] + 21, NODULE[1] + 21)
    assert has_colour(shown_image(at).crop(around), CLINICIAN)
    at.toggle(key=f"outlines-{study_id}").set_value(False).run()
    assert not has_colour(shown_image(at), CLINICIAN)  # ... and gone with the outlines off
    at.toggle(key=f"outlines-{study_id}").set_value(True).run()

    # ... zoomed to on request, and back to the whole image.
    at.button(key=f"zoom-{finding_id}-{study_id}").click().run()
    assert_healthy(at)
    assert caption(at).endswith(f"zoomed to {finding_id}")
    at.button(key=f"whole-{study_id}").click().run()
    assert "zoomed" not in caption(at)

    # The chat knows it by its id.
    at.chat_input[0].set_value(f"Where is {finding_id}?").run()
    assert_healthy(at)
    answer = at.chat_message[-1].markdown[-1].value
    assert f"{finding_id} is in the" in answer and f"({NODULE[0]}, {NODULE[1]}) px" in answer


def test_a_mark_outside_the_image_is_one_sentence(lidc, data_dir, media):  # noqa: F811
    session_id, _, study_id = lidc
    at = new_app(chat=session_id)
    open_sections(at, f"mark-coordinates-open-{study_id}")
    at.number_input(key=f"mark-x-{study_id}").set_value(5000)
    at.number_input(key=f"mark-y-{study_id}").set_value(10)
    at.button(key=f"mark-point-{study_id}").click().run()
    assert_healthy(at)
    assert not at.success
    (warning,) = [w.value for w in at.warning]
    assert warning.endswith(".") and "Traceback" not in warning
