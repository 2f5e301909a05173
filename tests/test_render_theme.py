"""Figures follow the page's theme: dark figures on a dark page, light ones (as before) on a light
page and in every export (the PDF is printed on white).

The study's pixels are the same in both themes; what surrounds them (background, titles, legends,
axes, ticks, the colour bar's frame and labels) takes the theme's palette.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pypdf
import pytest
from PIL import Image

from agent import reports
from agent.conversation import Conversation
from agent.settings import LoupeSettings
from agent.toolbox import run_tool
from tests.conftest import pydicom_file
from tools.context import ToolContext
from tools.render.style import (
    DARK,
    LIGHT,
    figure_text,
    figure_theme,
    fit_px,
    new_figure,
    palette,
    suptitle,
)
from tools.render_overlay import (
    render_annotated,
    render_comparison,
    render_crop,
    render_heatmap,
    render_statistics,
)

LAYERS = ["annotated", "heatmap", "comparison", "crops", "statistics"]


def _rgb(hex_colour: str) -> np.ndarray:
    if hex_colour == "white":
        return np.array([255, 255, 255])
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def _corners(pixels: np.ndarray) -> list[np.ndarray]:
    return [pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]]


def _near(pixels: np.ndarray, colour: np.ndarray, tolerance: int = 40) -> int:
    return int((np.abs(pixels - colour).max(axis=-1) <= tolerance).sum())


@pytest.fixture(scope="module")
def ct() -> ToolContext:
    """CT_small with the classical detector's findings, each with its Gaussian fit."""
    context = ToolContext()
    run_tool(context, "load_study", {"path": str(pydicom_file("CT_small.dcm"))})
    assert run_tool(context, "detect_anomalies", {"use_vision_model": False}).output.findings
    run_tool(context, "fit_gaussian", {})
    yield context
    context.close()


def _render(ctx: ToolContext, layer: str, theme: str) -> list[bytes]:
    ctx.figure_theme = theme
    try:
        result = run_tool(ctx, "render_overlay", {"layers": [layer]})
    finally:
        ctx.figure_theme = "light"
    assert result.artifacts, layer
    return [artifact.data for artifact in result.artifacts]


# -- every layer in both themes ----------------------------------------------------------------------
@pytest.mark.parametrize("layer", LAYERS)
def test_dark_figures_have_a_dark_background_and_light_text(ct, layer):
    for data in _render(ct, layer, "dark"):
        pixels = _decode(data)
        for corner in _corners(pixels):
            assert (corner == _rgb(DARK.background)).all(), corner
        title_band = pixels[:30]  # every layer has a title at the top, outside the image
        assert np.median(title_band.reshape(-1, 3), axis=0).tolist() == _rgb(DARK.background).tolist()
        assert _near(title_band, _rgb(DARK.foreground)) > 50  # the title is drawn in light ink
        assert _near(pixels, np.array([255, 255, 255]), tolerance=0) < pixels.shape[0] * pixels.shape[1] / 4


@pytest.mark.parametrize("layer", LAYERS)
def test_light_figures_are_white_with_dark_text(ct, layer):
    for data in _render(ct, layer, "light"):
        pixels = _decode(data)
        for corner in _corners(pixels):
            assert (corner == 255).all(), corner
        assert _near(pixels[:30], np.zeros(3)) > 50


@pytest.mark.parametrize("layer", LAYERS)
def test_light_is_what_the_layers_drew_before_themes_and_stays_so_after_a_dark_render(ct, layer):
    """The light theme is the library's default: the layers' own functions, called outside any
    theme, give the very bytes the tool gives in light; a dark render in between (and its text
    cache entries) changes nothing; and each theme is deterministic."""
    light = _render(ct, layer, "light")
    dark = _render(ct, layer, "dark")
    assert _render(ct, layer, "light") == light
    assert _render(ct, layer, "dark") == dark
    assert all(a != b for a, b in zip(light, dark))
    view = ct.view()
    study = view.study
    rendered = study.render(view.frame, view.window)
    display, window = rendered.pixels, rendered.window
    findings = sorted(ct.study_findings(study.id), key=lambda f: int(f.id[1:]))
    spacing, orientation = study.pixel_spacing_mm(0), study.geometry(0).orientation
    title = "CT · frame 1 of 1" + (f" · window {window.center:g}/{window.width:g}" if window else "")
    direct = {
        "annotated": lambda: [render_annotated(display, findings, spacing_mm=spacing, orientation=orientation,
                                               title=title)],
        "comparison": lambda: [render_comparison(display, findings, spacing_mm=spacing, orientation=orientation,
                                                 title=title)],
        "crops": lambda: [render_crop(display, f, findings, spacing_mm=spacing, orientation=orientation)
                          for f in findings],
        "statistics": lambda: [render_statistics(study.physical(0), f, spacing_mm=spacing, unit="HU")
                               for f in findings],
    }
    if layer in direct:
        assert direct[layer]() == light
    else:
        from tools.render_overlay import probability_map

        probability = probability_map(display.shape[:2], findings)
        assert [render_heatmap(display, probability, findings, title=title)] == light


def test_the_image_itself_is_the_same_in_both_themes(ct):
    """Only what surrounds the image changes: inside the annotated panel, away from the drawings,
    the study's pixels are identical."""
    light, dark = _decode(_render(ct, "annotated", "light")[0]), _decode(_render(ct, "annotated", "dark")[0])
    assert light.shape == dark.shape
    differs = np.abs(light - dark).max(axis=2) > 0
    assert differs.mean() < 0.5  # the image (most of the figure) is untouched
    band = differs[:30]  # the background and the title did change
    assert band.mean() > 0.9


def test_heatmap_colour_bar_frame_ticks_and_labels_show_on_dark(ct):
    pixels = _decode(_render(ct, "heatmap", "dark")[0])
    h, w = ct.view().study.render(0, None).pixels.shape[:2]
    bar_right = 10 + fit_px(h / w, 720, 800)[0] + 20 + 25  # as heatmap.render_heatmap lays it out
    right = pixels[:, bar_right:]  # the frame's right edge, the ticks, their labels, 'probability'
    assert _near(right, _rgb(DARK.foreground), tolerance=60) > 100
    darker = (right.sum(axis=2) < _rgb(DARK.background).sum() - 6).sum()
    assert darker == 0  # no black frame or tick on the dark page


def test_statistics_axes_and_the_image_profile_show_on_dark(ct):
    pixels = _decode(_render(ct, "statistics", "dark")[0])
    below_title = pixels[40:]
    assert _near(below_title, _rgb(DARK.foreground), tolerance=60) > 1000  # spines, ticks, labels, profile
    assert _near(below_title, np.zeros(3), tolerance=10) == 0


def test_the_tool_leaves_the_theme_as_it_found_it(ct):
    ct.figure_theme = "dark"
    try:
        run_tool(ct, "render_overlay", {"layers": ["annotated"]})
    finally:
        ct.figure_theme = "light"
    assert palette() is LIGHT


# -- the palette -------------------------------------------------------------------------------------
def test_figure_theme_is_scoped_to_its_block_and_its_context():
    assert palette() is LIGHT
    seen = []
    with figure_theme("dark") as chosen:
        assert chosen is DARK and palette() is DARK
        worker = threading.Thread(target=lambda: seen.append(palette()))  # another session's thread
        worker.start()
        worker.join()
        with figure_theme("light"):
            assert palette() is LIGHT
        assert palette() is DARK
    assert palette() is LIGHT and seen == [LIGHT]
    with pytest.raises(ValueError, match="unknown figure theme"), figure_theme("sepia"):
        pass
    assert palette() is LIGHT


def test_text_defaults_to_the_palette_but_keeps_a_colour_it_is_given():
    with figure_theme("dark"):
        figure = new_figure(200, 100)
        assert figure.get_facecolor()[:3] == pytest.approx(tuple(_rgb(DARK.background) / 255))
        assert figure_text(figure, 10, 10, "ink").get_color() == DARK.foreground
        assert figure_text(figure, 10, 30, "red", color="tab:red").get_color() == "tab:red"
        assert suptitle(figure, "title").get_color() == DARK.foreground
    figure = new_figure(200, 100)
    assert figure.get_facecolor() == (1.0, 1.0, 1.0, 1.0)
    assert figure_text(figure, 10, 10, "ink").get_color() == "black"


# -- exports are light ---------------------------------------------------------------------------------
@pytest.fixture
def drafted_dark() -> Conversation:
    conversation = Conversation.start(LoupeSettings(_env_file=None), pydicom_file("CT_small.dcm"))
    ids = [f.id for f in run_tool(conversation.ctx, "detect_anomalies", {"use_vision_model": False}).output.findings]
    run_tool(conversation.ctx, "draft_report", {"finding_ids": ids[:2]})
    conversation.ctx.figure_theme = "dark"
    return conversation


def test_key_image_is_light_even_on_a_dark_page(drafted_dark):
    ctx = drafted_dark.ctx
    report = reports.history(drafted_dark).current
    image, caption = reports._key_image(drafted_dark, report)
    assert image is not None and caption
    for corner in _corners(_decode(image)):
        assert (corner == 255).all(), corner
    assert ctx.figure_theme == "dark"  # the page's theme is restored
    on_page = run_tool(ctx, "render_overlay", {"layers": ["annotated"]}).artifacts[0].data
    assert (_corners(_decode(on_page))[0] == _rgb(DARK.background)).all()  # the chat's figure is dark


def test_exported_pdf_embeds_a_light_key_image(drafted_dark):
    files, notes = reports.export(drafted_dark, ["pdf"])
    assert not notes
    (pdf,) = files
    reader = pypdf.PdfReader(io.BytesIO(pdf.data))
    embedded = np.asarray(reader.pages[0].images[0].image.convert("RGB")).astype(int)
    for corner in _corners(embedded):
        assert (corner >= 250).all(), corner
    assert drafted_dark.ctx.figure_theme == "dark"
