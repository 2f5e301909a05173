"""The Streamlit viewer (ui/app.py) through Streamlit's AppTest, offline.

The images the app hands to the browser are captured from Streamlit's in-memory media storage,
so the tests check what a clinician would actually see (size, mode, format), not only captions.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

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
    for key in ("LOUPE_GEMINI_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env from the caller's working directory
    # The app caches its settings with st.cache_resource, which lives for the whole process:
    # without this, the data dir of the first test would leak into every later one.
    st.cache_resource.clear()
    yield folder
    st.cache_resource.clear()


@pytest.fixture
def app(data_dir, media) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert_healthy(at)
    return at


# -- helpers -----------------------------------------------------------------------------------


def assert_healthy(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def facts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def sample_box(at: AppTest):
    boxes = [box for box in at.sidebar.selectbox if box.label.endswith("sample study")]
    assert len(boxes) == 1
    return boxes[0]


def window_boxes(at: AppTest) -> list:
    return [box for box in at.selectbox if box.key == "window"]


def caption(at: AppTest) -> str:
    assert len(at.image) == 1
    return at.image[0].captions[0]


def shown_image(at: AppTest, media: dict[str, tuple[bytes, str]]) -> tuple[np.ndarray, str, bytes]:
    """(pixels, mimetype, bytes) of the one image the app shows."""
    assert len(at.image) == 1
    urls = at.image[0].value
    assert len(urls) == 1
    file_id = urls[0].rsplit("/", 1)[-1].split(".")[0]
    data, mimetype = media[file_id]
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image), mimetype, data


def choose_sample(at: AppTest, name: str) -> AppTest:
    sample_box(at).set_value(name).run()
    assert_healthy(at)
    return at


# -- tests -------------------------------------------------------------------------------------


def test_first_run_shows_default_sample(app, media):
    assert sample_box(app).value == "mr-liver"
    text = facts(app)
    assert "MR" in text
    assert "484 × 300" in text
    assert "1 frame(s)" in text
    assert caption(app).startswith("MR, frame 1 of 1")
    pixels, _, _ = shown_image(app, media)
    assert pixels.shape == (300, 484)
    assert pixels.min() < pixels.max()
    assert not app.slider  # a single frame: no frame slider
    assert not window_boxes(app)  # MR: no presets
    assert "offline" in "\n".join(c.value for c in app.sidebar.caption)
    assert len(app.sidebar.file_uploader) == 1


def test_ct_head_window_presets(app, media):
    choose_sample(app, "ct-head")
    text = facts(app)
    assert "CT" in text
    assert "512 × 512" in text
    boxes = window_boxes(app)
    assert len(boxes) == 1
    assert boxes[0].label == "Window"
    assert boxes[0].value == "default"
    assert {"bone", "brain", "lung", "soft_tissue"} <= set(boxes[0].options)
    default, _, _ = shown_image(app, media)
    assert default.shape == (512, 512)

    boxes[0].set_value("lung").run()
    assert_healthy(app)
    assert window_boxes(app)[0].value == "lung"
    assert "window -600/1500" in caption(app)
    lung, _, _ = shown_image(app, media)
    assert lung.shape == (512, 512)
    assert not np.array_equal(lung, default)

    app.selectbox(key="window").set_value("default").run()
    assert_healthy(app)
    assert "-600/1500" not in caption(app)


def test_window_choice_follows_to_next_ct(app, media):
    choose_sample(app, "ct-head")
    app.selectbox(key="window").set_value("bone").run()
    assert_healthy(app)
    choose_sample(app, "ct-small")
    assert "128 × 128" in facts(app)
    # Whatever the widget shows must be what the image was rendered with.
    chosen = app.selectbox(key="window").value
    expected = {"default": "window 40/400", "bone": "window 400/1800"}[chosen]
    assert expected in caption(app)
    assert shown_image(app, media)[0].shape == (128, 128)


def test_us_cine_frame_slider(app, media):
    choose_sample(app, "us-cine")
    text = facts(app)
    assert "US" in text
    assert "30 frame(s)" in text
    assert len(app.slider) == 1
    slider = app.slider[0]
    assert slider.label == "Frame"
    assert (slider.min, slider.max, slider.value) == (0, 29, 0)
    assert caption(app).startswith("US, frame 1 of 30")
    first, _, _ = shown_image(app, media)
    assert first.shape[:2] == (240, 320)
    assert first.ndim == 3  # colour

    slider.set_value(12).run()
    assert_healthy(app)
    assert app.slider[0].value == 12
    assert caption(app).startswith("US, frame 13 of 30")
    later, _, _ = shown_image(app, media)
    assert later.shape == first.shape
    assert not np.array_equal(later, first)


def test_broken_upload_shows_one_error(app, data_dir):
    noise = random.Random(7).randbytes(3000)
    app.sidebar.file_uploader[0].upload("broken.dcm", noise).run()
    assert not app.exception, [e.value for e in app.exception]
    assert len(app.error) == 1
    message = app.error[0].value
    assert "broken.dcm" in message
    assert "not a DICOM, PNG or JPEG" in message
    assert "Traceback" not in message and "\n" not in message.strip()
    saved = list((data_dir / "uploads").rglob("broken.dcm"))
    assert len(saved) == 1
    assert saved[0].read_bytes() == noise

    app.run()  # a rerun does not retry the failing file or pile up errors
    assert not app.exception
    assert len(app.error) == 1


def test_png_upload_then_clear_returns_to_sample(app, media, data_dir):
    pixels = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    app.sidebar.file_uploader[0].upload("gradient.png", buffer.getvalue(), "image/png").run()
    assert_healthy(app)
    text = facts(app)
    assert "unknown" in text  # a PNG has no modality
    assert "64 × 48" in text
    assert "unknown (px only)" in text  # no spacing, no guess
    assert shown_image(app, media)[0].shape == (48, 64)
    assert len(list((data_dir / "uploads").rglob("gradient.png"))) == 1

    app.sidebar.file_uploader[0].clear().run()
    assert_healthy(app)
    assert "484 × 300" in facts(app)


def test_display_image_reaches_browser_losslessly(app, media):
    choose_sample(app, "ct-small")
    shown, mimetype, _ = shown_image(app, media)
    artifact = app.session_state["result"].artifacts[0].data
    with Image.open(io.BytesIO(artifact)) as image:
        rendered = np.asarray(image)
    assert mimetype == "image/png"
    assert np.array_equal(shown, rendered)


def test_analyse_button_shows_findings_and_overlay(app, media):
    choose_sample(app, "ct-small")
    app.button[0].click().run()
    assert_healthy(app)
    summary = [m.value for m in app.markdown if m.value.startswith("**") and "anomal" in m.value]
    assert summary, "the analysis summary is shown"
    table = app.dataframe[0].value
    assert list(table["id"])[0] == "F1" and {"finding", "size", "confidence", "status"} <= set(table.columns)
    assert len(app.image) >= 2  # the study and the annotated overlay
    choose_sample(app, "mr-liver")
    assert not app.dataframe, "a different study clears the old findings"
