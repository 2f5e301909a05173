"""Compare with prior in the app (ui/compare_panel.py, the viewer's prior beside the current study)
through Streamlit's AppTest, on the (current, prior) CT pair of tests/prior_studies.py: the prior
uploaded in the sidebar (no PACS), or picked from the patient's earlier studies on a real Orthanc.

Checked as the clinician sees it: both slices' captions (frame, table position, window), the
prior's picture as the browser gets it, the compared findings' table, the chat's record.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.conversation import Conversation
from agent.settings import LoupeSettings
from agent.store.database import Store
from agent.workspace import backend_for
from tests.conftest import pydicom_file
from tests.prior_studies import PriorPair, write_prior_pair
from tests.test_app import assert_healthy, data_dir, media, new_app, open_sections  # noqa: F401 (fixtures)
from tests.test_viewer_app import has_colour, position

#: The pair's current series: 10 slices 2.5 mm apart (LIDC-IDRI-0003), its nodule F1 on frame 6 (1-based).
SLICE_SPACING_MM = 2.5
CLASSICAL = (255, 200, 0)  # tools/render/style.py SOURCE_COLOURS["classical"], as the viewer draws it


def analysed_session(data_dir: Path, pair: PriorPair) -> tuple[str, str]:  # noqa: F811
    """A stored session on the pair's current series, analysed as "Analyse this scan" does in the
    chat: (session id, study id)."""
    settings = LoupeSettings(_env_file=None)
    store = Store.for_data_dir(data_dir)
    try:
        conversation = Conversation.start(settings, pair.current, store=store, owner="dr-test", title="Chest CT")
        for _ in conversation.ask("Analyse this scan", backend_for(settings, "offline")):
            pass
        return conversation.session_id, conversation.ctx.current_study_id
    finally:
        store.close()


def captions(at) -> tuple[str, str]:
    """(the prior's caption, the current one's) under the two images."""
    prior = next(c.value for c in at.main.caption if c.value.startswith("prior frame "))
    current = next(c.value for c in at.main.caption if c.value.startswith("frame "))
    return prior, current


def window(text: str) -> str:
    return text.split(" · window ")[1].split(" · ")[0]


def frame(text: str) -> int:
    return int(text.split("frame ")[1].split(" of")[0])


def findings_table(at) -> dict[str, dict[str, str]]:
    (table,) = at.main.table
    return {row["Finding"]: row for row in table.value.to_dict("records")}


def viewer_images(at) -> list:
    """The pictures in the main area drawn by st.image without a caption: the prior's slice (the
    chat's figures have theirs; the current slice is the image component)."""
    return [image for image in at.main.image if image.captions == [""]]


def prior_image(media, at) -> Image.Image:
    """The prior's slice as the browser gets it."""
    (image,) = viewer_images(at)
    data, _ = next(value for key, value in media.items() if key in image.value[0])
    return Image.open(io.BytesIO(data)).convert("RGB")


def uploads(folder: Path) -> list[tuple[str, bytes, str]]:
    return [(path.name, path.read_bytes(), "application/dicom") for path in sorted(folder.glob("*.dcm"))]


def assert_slices_in_step(at) -> None:
    """Both slices at the same table position (within the series' spacing), in one window."""
    prior, current = captions(at)
    assert abs(position(prior) - position(current)) <= SLICE_SPACING_MM, (prior, current)
    assert window(prior) == window(current), (prior, current)


@pytest.fixture
def pair(tmp_path) -> PriorPair:
    return write_prior_pair(tmp_path / "pair")


def test_compare_with_an_uploaded_prior_shows_it_beside_in_step(pair, data_dir, media):  # noqa: F811
    session_id, study_id = analysed_session(data_dir, pair)
    at = new_app(chat=session_id)
    assert not viewer_images(at), "no prior before a comparison"
    open_sections(at, "compare_prior_open")
    assert not [s for s in at.sidebar.selectbox if s.key == "compare_prior_choice"], "no PACS: an upload"
    at.file_uploader(key="compare_prior_upload").set_value(uploads(pair.prior)).run()
    at.button(key="compare_prior_files").click().run()
    assert_healthy(at)
    assert not at.error
    (note,) = [s.value for s in at.sidebar.success]
    assert note.startswith("Compared with the prior over 181 days: F1 grown")
    assert "2023" not in note  # the answer the model is told names no date

    # The prior beside the current study, labelled, at the current slice's table position.
    labels = [m.value for m in at.main.markdown]
    assert "**Prior (2023-12-03)**" in labels and "**Current**" in labels
    prior, current = captions(at)
    assert frame(current) == 6 and frame(prior) == 6
    assert_slices_in_step(at)
    assert has_colour(prior_image(media, at), CLASSICAL), "F1's place in the prior is outlined"
    rows = findings_table(at)
    assert rows["F1"]["Status"] == "grown" and rows["F1"]["Change"].startswith("+")
    assert rows["F1"]["Prior"].endswith(" mm") and rows["F1"]["Current"].endswith(" mm")

    # The slice moves both; the prior's follows by table position.
    at.slider(key=f"frame-{study_id}").set_value(3).run()
    assert_healthy(at)
    prior, current = captions(at)
    assert frame(current) == 3 and frame(prior) == 3
    assert_slices_in_step(at)
    at.button(key=f"next-{study_id}").click().run()
    assert frame(captions(at)[1]) == 4 and frame(captions(at)[0]) == 4

    # One window for both.
    before = prior_image(media, at)
    at.button(key=f"preset-bone-{study_id}").click().run()
    assert_healthy(at)
    assert window(captions(at)[1]) == "400/1800"
    assert_slices_in_step(at)
    assert not np.array_equal(np.asarray(prior_image(media, at)), np.asarray(before))

    # The comparison is in the chat (its tool call and answer) and kept with the session.
    assert any(e.label.startswith("compare_with_prior") and "F1 grown" in e.label for e in at.expander)
    assert any("F1 grown" in m.value for m in at.chat_message[-1].markdown)
    store = Store.for_data_dir(data_dir)
    try:
        ctx = Conversation.resume(LoupeSettings(_env_file=None), store, session_id, "dr-test").ctx
        assert ctx.comparisons[study_id].prior_date == "2023-12-03"
        assert ctx.current_study_id == study_id and len(ctx.views) == 2
    finally:
        store.close()

    # A reload shows it again; the switch hides the prior.
    at = new_app(chat=session_id)
    assert frame(captions(at)[0]) == 4
    at.toggle(key=f"prior-beside-{study_id}").set_value(False).run()
    assert not viewer_images(at) and not [c for c in at.main.caption if c.value.startswith("prior frame")]
    assert findings_table(at)["F1"]["Status"] == "grown"


def test_a_prior_that_cannot_be_compared_is_one_sentence(pair, data_dir, media):  # noqa: F811
    session_id, _ = analysed_session(data_dir, pair)
    at = new_app(chat=session_id)
    open_sections(at, "compare_prior_open")
    other = pydicom_file("MR_small.dcm")  # one MR slice of a head: not a chest CT series
    at.file_uploader(key="compare_prior_upload").set_value(("IM0001", other.read_bytes(), "application/dicom")).run()
    at.button(key="compare_prior_files").click().run()
    assert_healthy(at)
    (error,) = [e.value for e in at.sidebar.error]
    assert error.startswith("The comparison with the prior could not be made: ") and error.endswith(".")
    assert "Traceback" not in error
    assert not viewer_images(at) and not at.main.table  # nothing beside the current study


def test_compare_with_a_prior_listed_from_the_pacs(own_pacs, pair, data_dir, media):  # noqa: F811
    own_pacs.seed(sorted(pair.current.glob("*.dcm")) + sorted(pair.prior.glob("*.dcm")))
    session_id, study_id = analysed_session(data_dir, pair)
    at = new_app(chat=session_id)
    open_sections(at, "compare_prior_open")
    choice = at.selectbox(key="compare_prior_choice")
    assert choice.options == ["2023-12-03 · CT · Chest CT · 181 days earlier"]
    assert choice.value == f"pacs:{pair.prior_uid}"
    assert not [u for u in at.sidebar.get("file_uploader") if u.key == "compare_prior_upload"]
    at.button(key="compare_prior_pacs").click().run()
    assert_healthy(at)
    assert not at.error
    (note,) = [s.value for s in at.sidebar.success]
    assert "F1 grown" in note
    assert_slices_in_step(at)
    at.slider(key=f"frame-{study_id}").set_value(8).run()
    assert frame(captions(at)[0]) == 8
    assert_slices_in_step(at)
    assert findings_table(at)["F1"]["Status"] == "grown"
    assert any(e.label.startswith("compare_with_prior") for e in at.expander)
