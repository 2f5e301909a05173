"""render_overlay: layered PNG figures of the shown frame and its findings.

Synthetic frames check geometry, colours and determinism; CT_small (axial CT) and a colour
ultrasound from pydicom's test data check the tool end to end.
"""

from __future__ import annotations

import io
import math
import time

import numpy as np
import pytest
from matplotlib.text import Text
from PIL import Image

from tests.conftest import pydicom_file
from tools.context import ToolContext
from tools.coordinates import BoxPx
from tools.errors import InvalidCoordinatesError
from tools.findings import Finding, GaussianFit, Verification
from tools.load_study import LoadStudyInput, load_study
from tools.render.png import encode_png
from tools.render_overlay import (
    SOURCE_COLOURS,
    RenderOverlayInput,
    annotated_figure,
    clear_text_cache,
    crop_bounds,
    direction_letters,
    figure_png,
    lesion_masks,
    line_profile,
    orientation_labels,
    probability_map,
    render_annotated,
    render_comparison,
    render_crop,
    render_heatmap,
    render_image,
    render_overlay,
    render_statistics,
    scale_bar_mm,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ALL_LAYERS = ["image", "annotated", "heatmap", "comparison", "crops", "statistics"]


# -- helpers -------------------------------------------------------------------------------------
def _fit(x: float, y: float, fwhm_major: float, fwhm_minor: float, angle: float = 0.0,
         amplitude: float = 200.0, background: float = 40.0) -> GaussianFit:
    k = 2.0 * math.sqrt(2.0 * math.log(2.0))
    return GaussianFit(center_px=(x, y), sigma_major_px=fwhm_major / k, sigma_minor_px=fwhm_minor / k,
                       angle_deg=angle, fwhm_major_px=fwhm_major, fwhm_minor_px=fwhm_minor,
                       amplitude=amplitude, background=background, r_squared=0.95, converged=True)


def _finding(fid: str = "F1", *, x: float = 60.0, y: float = 50.0, w: float = 16.0, h: float = 10.0,
             status: str | None = "confirmed", fit: GaussianFit | None = None, study_id: str = "st-test",
             frame: int = 0, size_px: tuple[float, float] | None = None,
             size_mm: tuple[float, float] | None = None, confidence: float = 0.8, source: str = "vlm") -> Finding:
    return Finding(id=fid, study_id=study_id, label="nodule", frame=frame, center_px=(x, y),
                   bbox_px=BoxPx.around(x, y, w, h), confidence=confidence, source=source,
                   verification=Verification(status=status) if status else None, gaussian=fit,
                   size_px=size_px, size_mm=size_mm)


def _gaussian_frame(n: int, x: float, y: float, fwhm_major: float, fwhm_minor: float,
                    angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A physical frame (float) with one rotated Gaussian on background 40, and its display."""
    k = 2.0 * math.sqrt(2.0 * math.log(2.0))
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u, v = (xx - x) * c + (yy - y) * s, -(xx - x) * s + (yy - y) * c
    physical = 40.0 + 200.0 * np.exp(-0.5 * ((u / (fwhm_major / k)) ** 2 + (v / (fwhm_minor / k)) ** 2))
    display = np.clip(physical / 260.0 * 255.0, 0, 255).astype(np.uint8)
    return physical.astype(np.float32), display


def _decode(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def _near(pixels: np.ndarray, hex_colour: str, tolerance: int = 40) -> int:
    """How many pixels are within ``tolerance`` (per channel) of a colour."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - rgb).max(axis=2) <= tolerance).sum())


def _by_gid(figure, gid: str) -> list:
    """Every artist of the figure with this gid (however the figure nests them)."""
    return figure.findobj(lambda artist: artist.get_gid() == gid, include_self=False)


def _text(figure, gid: str):
    found = [t for t in _by_gid(figure, gid) if isinstance(t, Text)]
    assert len(found) == 1, gid
    return found[0]


def _image_box(figure):
    """Where the figure shows the image (display coordinates, y upwards)."""
    (image,) = _by_gid(figure, "image")
    return image.get_window_extent()


@pytest.fixture
def ctx():
    context = ToolContext()
    yield context
    context.close()


@pytest.fixture
def ct(ctx):
    load_study(ctx, LoadStudyInput(path=str(pydicom_file("CT_small.dcm"))))
    return ctx


# -- orientation, scale bar, probability map -----------------------------------------------------
@pytest.mark.parametrize(("orientation", "expected"), [
    (AXIAL, {"left": "R", "right": "L", "top": "A", "bottom": "P"}),
    ((1, 0, 0, 0, 0, -1), {"left": "R", "right": "L", "top": "H", "bottom": "F"}),  # coronal
    ((0, 1, 0, 0, 0, -1), {"left": "A", "right": "P", "top": "H", "bottom": "F"}),  # sagittal
    ((-1, 0, 0, 0, 1, 0), {"left": "L", "right": "R", "top": "A", "bottom": "P"}),  # flipped axial
    ((math.cos(math.pi / 6), math.sin(math.pi / 6), 0, -math.sin(math.pi / 6), math.cos(math.pi / 6), 0),
     {"left": "RA", "right": "LP", "top": "AL", "bottom": "PR"}),  # axial rotated 30 degrees
])
def test_orientation_labels(orientation, expected):
    assert orientation_labels(orientation) == expected


def test_orientation_unknown_or_degenerate():
    assert orientation_labels(None) is None
    assert orientation_labels((0, 0, 0, 0, 1, 0)) is None
    assert direction_letters((0.96, 0.28, 0.0)) == "L"  # secondary below 0.3: one letter
    assert direction_letters((0.2, -0.1, -0.97)) == "F"


@pytest.mark.parametrize("width_px", [64, 128, 256, 512, 1024, 3000])
@pytest.mark.parametrize("spacing", [0.1, 0.3, 0.661468, 0.7, 1.0, 2.5])
def test_scale_bar_is_a_round_fifth_of_the_width(width_px, spacing):
    mm = scale_bar_mm(width_px, spacing)
    assert round(mm / 10 ** math.floor(math.log10(mm) + 1e-9), 6) in (1, 2, 3, 5)
    assert 0.14 <= mm / (width_px * spacing) <= 0.29


def test_probability_map_combines_findings():
    fitted = _finding("F1", x=20, y=20, fit=_fit(20, 20, 8, 5, 30), confidence=0.8)
    boxed = _finding("F2", x=60, y=40, w=10, h=6, confidence=0.5)
    twin = _finding("F3", x=60, y=40, w=10, h=6, confidence=0.5)
    single = probability_map((64, 96), [fitted, boxed])
    assert single.shape == (64, 96) and single.dtype == np.float32
    assert single[20, 20] == pytest.approx(0.8, abs=1e-6)
    assert single[40, 60] == pytest.approx(0.5, abs=1e-6)
    assert single[5, 90] == 0.0 and 0.0 <= single.min() and single.max() <= 1.0
    assert probability_map((64, 96), [boxed, twin])[40, 60] == pytest.approx(0.75, abs=1e-6)
    assert not probability_map((64, 96), []).any()


# -- pure renderers on synthetic frames ----------------------------------------------------------
@pytest.fixture
def synthetic():
    physical, display = _gaussian_frame(256, 90, 110, 20, 12, angle=25)
    finding = _finding("F1", x=90, y=110, w=26, h=20, fit=_fit(90, 110, 20, 12, 25), size_px=(20, 12),
                       size_mm=(14.0, 8.4))
    return physical, display, finding


def test_layers_decode_with_readable_sizes(synthetic):
    physical, display, finding = synthetic
    kwargs = {"spacing_mm": (0.7, 0.7), "orientation": AXIAL}
    outputs = {
        "annotated": render_annotated(display, [finding], title="CT · frame 1 of 1", **kwargs),
        "heatmap": render_heatmap(display, probability_map(display.shape, [finding]), [finding], title="t"),
        "comparison": render_comparison(display, [finding], title="t", **kwargs),
        "crop": render_crop(display, finding, [finding], **kwargs),
        "statistics": render_statistics(physical, finding, spacing_mm=(0.7, 0.7), unit="HU"),
    }
    for name, data in outputs.items():
        pixels = _decode(data)
        height, width = pixels.shape[:2]
        assert 700 <= width <= 900, name
        assert 300 <= height <= 950, name
        assert pixels.std() > 10, name  # not blank
    assert _decode(render_image(display)).shape == (256, 256, 3)


def test_greyscale_keeps_its_levels_and_orientation():
    display = np.full((100, 200), 30, dtype=np.uint8)
    display[:, 100:] = 220  # right half bright
    display[80:, :100] = 120  # bottom-left grey
    pixels = _decode(render_annotated(display, [], spacing_mm=None, orientation=None))
    height, width = pixels.shape[:2]
    assert tuple(pixels[height // 4, width // 4]) == (30, 30, 30)  # gray colormap, vmin 0, vmax 255
    assert tuple(pixels[height // 2, 3 * width // 4]) == (220, 220, 220)
    assert tuple(pixels[height - 20, width // 4]) == (120, 120, 120)  # row 0 stays at the top


def test_colour_display_stays_in_colour():
    display = np.zeros((120, 160, 3), dtype=np.uint8)
    display[..., 0] = 200
    display[:, 80:, 2] = 180
    pixels = _decode(render_annotated(display, [], spacing_mm=None, orientation=None))
    height, width = pixels.shape[:2]
    assert tuple(pixels[height // 2, width // 4]) == (200, 0, 0)
    assert tuple(pixels[height // 2, 3 * width // 4]) == (200, 0, 180)


def test_same_input_gives_identical_bytes(synthetic):
    physical, display, finding = synthetic
    kwargs = {"spacing_mm": (0.7, 0.7), "orientation": AXIAL}
    probability = probability_map(display.shape, [finding])
    renders = [
        lambda: render_annotated(display, [finding], title="t", **kwargs),
        lambda: render_heatmap(display, probability, [finding]),
        lambda: render_comparison(display, [finding], **kwargs),
        lambda: render_crop(display, finding, [finding], **kwargs),
        lambda: render_statistics(physical, finding, spacing_mm=(0.7, 0.7), unit="HU"),
    ]
    for render in renders:
        assert render() == render()


def test_remembered_text_draws_the_same_pixels(synthetic):
    # Rasterised strings are kept across figures: a first and a repeated render must match.
    physical, _, finding = synthetic
    clear_text_cache()
    first = render_statistics(physical, finding, spacing_mm=(0.7, 0.7), unit="HU")
    assert render_statistics(physical, finding, spacing_mm=(0.7, 0.7), unit="HU") == first
    clear_text_cache()
    assert render_statistics(physical, finding, spacing_mm=(0.7, 0.7), unit="HU") == first


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (7, 5, 3), (64, 48, 3)])
def test_png_encoder_is_lossless_and_reads_strided_views(shape):
    # tools.render.png filters and deflates by itself: Pillow must decode exactly the input pixels.
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(pixels))))
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, pixels)
    rgba = np.dstack([pixels.reshape(*shape[:2], -1)[..., :1]] * 4)  # RGB as a strided view of RGBA
    assert encode_png(rgba[..., :3]) == encode_png(np.ascontiguousarray(rgba[..., :3]))
    with pytest.raises(ValueError):
        encode_png(pixels.astype(np.float32))


def test_each_source_has_its_own_colour_and_each_check_its_own_line(synthetic):
    """One outline scheme (tools/render/style.py, also the viewer's): colour by source, line by check."""
    _, display, _ = synthetic
    dark = np.zeros_like(display)

    def drawn(source: str, status: str | None) -> np.ndarray:
        finding = _finding("F1", x=128, y=128, w=60, h=40, status=status, source=source)
        return _decode(render_annotated(dark, [finding], spacing_mm=None, orientation=None))

    by_source = {source: drawn(source, "confirmed") for source in SOURCE_COLOURS}
    for source, pixels in by_source.items():
        assert _near(pixels, SOURCE_COLOURS[source]) > 100, source
        for other in SOURCE_COLOURS:
            if other != source:
                assert _near(pixels, SOURCE_COLOURS[other], tolerance=20) < 20, (source, other)
    by_status = {status: drawn("classical", status) for status in ("confirmed", "adjusted", "rejected", "unverified")}
    assert np.array_equal(by_status["confirmed"], by_status["adjusted"])  # both borne out: solid
    lines = [_near(by_status[s], SOURCE_COLOURS["classical"]) for s in ("confirmed", "rejected", "unverified")]
    assert lines[0] > lines[1] > lines[2] > 0, lines  # solid, dashed, dotted: less ink each
    assert np.array_equal(drawn("classical", None), by_status["unverified"])  # never checked = unverified


def test_the_legend_names_the_sources_and_the_checks_drawn():
    display = np.zeros((200, 200), dtype=np.uint8)
    findings = [_finding("F1", x=50, y=50, source="classical"), _finding("F2", x=150, y=150, source="clinician",
                                                                      status="rejected")]
    figure = annotated_figure(display, findings, spacing_mm=None, orientation=None)
    names = {t.get_text() for t in figure.texts if (t.get_gid() or "").startswith("legend-")}
    assert names == {"detector", "clinician", "rejected"}


def test_shapes_follow_the_fit_or_the_box():
    display = np.zeros((200, 200), dtype=np.uint8)
    fitted = _finding("F1", x=60, y=60, fit=_fit(60, 60, 30, 12, 40), status="rejected", size_px=(30, 12))
    boxed = _finding("F2", x=140, y=140, w=20, h=30, status=None)
    figure = annotated_figure(display, [fitted, boxed], spacing_mm=None, orientation=None)
    (ellipse,), (rectangle,) = _by_gid(figure, "outline-F1"), _by_gid(figure, "outline-F2")
    assert (ellipse.width, ellipse.height, ellipse.angle) == (30, 12, 40)
    assert ellipse.get_linestyle() in ("--", "dashed")  # rejected is dashed
    assert rectangle.get_bbox().bounds == (130, 125, 20, 30)  # pixel edges of the inclusive box
    assert len(_by_gid(figure, "calipers-F1")) == 2  # calipers: underlay + line
    assert not _by_gid(figure, "calipers-F2")  # only for the sized finding
    assert _text(figure, "label-F1").get_text() == "F1  30 × 12 px"
    assert _text(figure, "label-F2").get_text() == "F2"


def test_ellipse_angle_runs_down_and_right_for_positive_angles():
    """+angle turns from +x towards +y (down the rows), as in GaussianFit and on screen."""
    display = np.zeros((256, 256), dtype=np.uint8)
    finding = _finding("F1", x=128, y=128, fit=_fit(128, 128, 160, 6, 30), status="confirmed")
    figure = annotated_figure(display, [finding], spacing_mm=None, orientation=None)
    for artist in figure.findobj(lambda a: isinstance(a, Text) or (a.get_gid() or "").startswith("legend-"),
                                 include_self=False):
        artist.remove()  # keep only the outline and calipers
    pixels = _decode(figure_png(figure))
    cyan = np.abs(pixels.astype(int) - [0x00, 0xE5, 0xFF]).max(axis=2) < 40  # a vision model's finding
    rows, cols = np.nonzero(cyan)
    cov = np.cov(np.vstack([cols, rows]))
    major = np.linalg.eigh(cov)[1][:, -1]
    angle = math.degrees(math.atan2(major[1], major[0])) % 180
    assert angle == pytest.approx(30, abs=3)


def test_sizes_use_mm_when_spacing_is_known():
    display = np.zeros((100, 100), dtype=np.uint8)
    finding = _finding("F1", x=50, y=50, w=20, h=10, size_px=(20, 10))
    in_mm = annotated_figure(display, [finding], spacing_mm=(0.5, 0.5), orientation=None)
    assert _text(in_mm, "label-F1").get_text() == "F1  10.0 × 5.0 mm"
    given = _finding("F1", x=50, y=50, w=20, h=10, size_mm=(12.5, 6.0))
    assert _text(annotated_figure(display, [given], spacing_mm=None, orientation=None),
                 "label-F1").get_text() == "F1  12.5 × 6.0 mm"


def test_scale_bar_and_orientation_only_when_known():
    display = np.zeros((128, 128), dtype=np.uint8)
    bare = annotated_figure(display, [], spacing_mm=None, orientation=None)
    assert not [t for t in bare.texts if t.get_gid()]
    full = annotated_figure(display, [], spacing_mm=(0.661468, 0.661468), orientation=AXIAL)
    assert _text(full, "scale-label").get_text() == "2 cm"
    edges = ("left", "right", "top", "bottom")
    assert [_text(full, f"orientation-{edge}").get_text() for edge in edges] == ["R", "L", "A", "P"]


@pytest.mark.parametrize(("x", "y"), [(2, 2), (253, 2), (2, 253), (253, 253), (128, 1), (1, 128)])
def test_labels_stay_inside_the_image_near_edges(x, y):
    display = np.zeros((256, 256), dtype=np.uint8)
    finding = _finding("F1", x=x, y=y, w=5, h=5, size_mm=(123.4, 56.7))  # a long label
    figure = annotated_figure(display, [finding], spacing_mm=(0.7, 0.7), orientation=AXIAL)
    figure.canvas.draw()
    ax_box = _image_box(figure)
    label_box = _text(figure, "label-F1").get_bbox_patch().get_window_extent()
    assert ax_box.x0 - 1 <= label_box.x0 and label_box.x1 <= ax_box.x1 + 1
    assert ax_box.y0 - 1 <= label_box.y0 and label_box.y1 <= ax_box.y1 + 1


def test_heatmap_checks_its_map():
    display = np.full((50, 60), 90, dtype=np.uint8)
    with pytest.raises(ValueError, match="probability map"):
        render_heatmap(display, np.zeros((60, 50), dtype=np.float32))
    messy = np.zeros((50, 60), dtype=np.float64)
    messy[10:20, 10:20], messy[30:40, 30:40] = np.nan, 3.0  # NaN counts as 0, 3 as 1
    pixels = _decode(render_heatmap(display, messy))
    assert 700 <= pixels.shape[1] <= 900


def test_public_surface():
    import tools.render_overlay as module

    assert all(hasattr(module, name) for name in module.__all__)
    assert {"render_overlay", "RenderOverlayInput", "RenderOverlayOutput", "render_image", "render_annotated",
            "render_heatmap", "render_comparison", "render_crop", "render_statistics"} <= set(module.__all__)


def test_crop_bounds_grow_the_box_and_stay_inside():
    small = _finding("F1", x=100, y=100, w=6, h=6)
    assert crop_bounds((300, 300), small) == (76, 76, 124, 124)  # at least 48 px
    large = _finding("F1", x=100, y=100, w=60, h=30)
    x0, y0, x1, y1 = crop_bounds((300, 300), large)
    assert x1 - x0 == 120 and y1 - y0 == 120
    corner = crop_bounds((300, 400, 3), _finding("F1", x=2, y=297, w=10, h=10))
    assert corner == (0, 252, 48, 300)


def test_lesion_and_ring_masks():
    fitted = _finding("F1", x=50, y=50, fit=_fit(50, 50, 20, 10, 30))
    window, lesion, ring = lesion_masks((100, 100), fitted)
    assert lesion.sum() == pytest.approx(math.pi * 10 * 5, rel=0.1)
    assert not (lesion & ring).any() and ring.sum() > lesion.sum()
    tiny = _finding("F2", x=0, y=0, fit=_fit(0.2, 0.2, 0.5, 0.5))
    assert lesion_masks((100, 100), tiny)[1].sum() == 1  # a sub-pixel fit keeps its centre pixel


def test_profile_along_the_fitted_axis_matches_the_fit():
    physical, _ = _gaussian_frame(128, 60, 70, 24, 10, angle=-35)
    finding = _finding("F1", x=60, y=70, fit=_fit(60, 70, 24, 10, -35))
    profile = line_profile(physical, finding, (0.5, 0.5))
    residual = np.nanmax(np.abs(profile.values - profile.fitted))
    assert residual < 2.0  # in the image's units, peak 200
    assert profile.unit == "mm" and profile.distance[-1] == pytest.approx(-profile.distance[0])


def test_large_frame_renders_every_layer():
    physical, display = _gaussian_frame(2048, 700, 900, 60, 30, angle=10)
    finding = _finding("F1", x=700, y=900, w=80, h=50, fit=_fit(700, 900, 60, 30, 10), size_px=(60, 30))
    kwargs = {"spacing_mm": (0.2, 0.2), "orientation": AXIAL}
    started = time.perf_counter()
    outputs = [
        render_image(display),
        render_annotated(display, [finding], **kwargs),
        render_heatmap(display, probability_map(display.shape, [finding]), [finding]),
        render_comparison(display, [finding], **kwargs),
        render_crop(display, finding, [finding], **kwargs),
        render_statistics(physical, finding, spacing_mm=(0.2, 0.2), unit="HU"),
    ]
    elapsed = time.perf_counter() - started
    assert _decode(outputs[0]).shape == (2048, 2048, 3)
    assert all(700 <= _decode(data).shape[1] <= 900 for data in outputs[1:])
    assert elapsed < 10.0  # ~0.7 s on two cores; the bound only catches gross regressions


# -- the tool ------------------------------------------------------------------------------------
def test_input_model_describes_every_argument():
    properties = RenderOverlayInput.model_json_schema()["properties"]
    assert set(properties) == {"layers", "finding_ids", "study_id"}
    assert all(prop.get("description") for prop in properties.values())
    assert RenderOverlayInput().layers == ["annotated"]
    assert render_overlay.__doc__.split("\n\n")[0].startswith("Draw the shown frame")


def test_axial_ct_letters_are_on_the_expected_edges(ct):
    view = ct.view()
    orientation = view.study.geometry(view.frame).orientation
    assert orientation_labels(orientation) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    display = view.study.render(view.frame, view.window).pixels
    figure = annotated_figure(display, [], spacing_mm=view.study.pixel_spacing_mm(0), orientation=orientation)
    figure.canvas.draw()
    box = _image_box(figure)
    where = {edge: _text(figure, f"orientation-{edge}").get_window_extent()
             for edge in ("left", "right", "top", "bottom")}  # display coordinates: y grows upwards
    assert where["left"].x1 < box.x0 + box.width * 0.2 and where["right"].x0 > box.x0 + box.width * 0.8
    assert where["top"].y0 > box.y0 + box.height * 0.8 and where["bottom"].y1 < box.y0 + box.height * 0.2


def _add_ct_findings(ctx: ToolContext) -> None:
    study_id = ctx.current_study_id
    ctx.findings["F1"] = _finding("F1", x=60, y=70, w=14, h=10, fit=_fit(60, 70, 9.4, 5.9, 30),
                                  size_mm=(6.2, 3.9), size_px=(9.4, 5.9), study_id=study_id)
    ctx.findings["F2"] = _finding("F2", x=124, y=3, w=8, h=6, status=None, study_id=study_id)
    ctx.findings["F3"] = _finding("F3", x=30, y=30, status="adjusted", study_id=study_id, frame=4)
    ctx.findings["F4"] = _finding("F4", x=30, y=30, study_id="st-another")


def test_tool_renders_every_layer_on_ct(ct):
    _add_ct_findings(ct)
    result = render_overlay(ct, RenderOverlayInput(layers=ALL_LAYERS))
    output = result.output
    assert output.finding_ids == ["F1", "F2"]  # F3 is on another frame, F4 on another study
    assert output.layers == ALL_LAYERS
    assert output.artifacts == [
        "overlay-image.png", "overlay-annotated.png", "overlay-heatmap.png", "overlay-comparison.png",
        "overlay-crop-F1.png", "overlay-crop-F2.png", "overlay-stats-F1.png", "overlay-stats-F2.png",
    ]
    assert [a.name for a in result.artifacts if a.for_model] == ["overlay-annotated.png"]
    for artifact in result.artifacts:
        assert artifact.mime_type == "image/png" and artifact.caption
        assert _decode(artifact.data).std() > 5
    annotated = next(a for a in result.artifacts if a.name == "overlay-annotated.png")
    assert "F1 (confirmed, 6.2 × 3.9 mm)" in annotated.caption and "F2 (unverified)" in annotated.caption
    assert "HU" in result.artifacts[-1].caption
    assert render_overlay(ct, RenderOverlayInput()).artifacts[0].data == annotated.data


def test_tool_selects_findings_by_id(ct):
    _add_ct_findings(ct)
    layers = ["crops", "annotated", "crops"]
    result = render_overlay(ct, RenderOverlayInput(layers=layers, finding_ids=["F2"]))
    assert result.output.finding_ids == ["F2"]
    assert result.output.layers == ["crops", "annotated"]  # repeated layers render once
    assert result.output.artifacts == ["overlay-crop-F2.png", "overlay-annotated.png"]


@pytest.mark.parametrize(("ids", "message"), [
    (["F9"], "There is no finding F9 in this session"),
    (["F4"], "F4 is not a finding of this study: it is on"),  # named as another study's, never substituted
    (["F1", "F3"], "F3 is on frame index 4"),
])
def test_tool_refuses_unknown_or_off_frame_ids(ct, ids, message):
    _add_ct_findings(ct)
    with pytest.raises(InvalidCoordinatesError, match=message):
        render_overlay(ct, RenderOverlayInput(finding_ids=ids))


def test_tool_without_findings_still_renders(ct):
    result = render_overlay(ct, RenderOverlayInput(layers=["annotated", "crops", "statistics"]))
    assert result.output.layers == ["annotated"] and result.output.finding_ids == []
    (artifact,) = result.artifacts
    assert artifact.name == "overlay-annotated.png" and artifact.for_model
    assert "Nothing is marked" in artifact.caption
    assert "Nothing is marked" in result.output.summary
    assert 700 <= _decode(artifact.data).shape[1] <= 900


def test_tool_on_colour_ultrasound(ctx):
    load_study(ctx, LoadStudyInput(path=str(pydicom_file("examples_ybr_color.dcm"))))
    ctx.findings["F1"] = _finding("F1", x=160, y=120, w=30, h=20, fit=_fit(160, 120, 20, 12, 15),
                                  size_px=(20, 12), study_id=ctx.current_study_id)
    result = render_overlay(ctx, RenderOverlayInput(layers=ALL_LAYERS))
    images = {a.name: Image.open(io.BytesIO(a.data)) for a in result.artifacts}
    assert images["overlay-image.png"].mode == "RGB" and images["overlay-image.png"].size == (320, 240)
    assert len(images) == 6
    assert "intensity" in result.artifacts[-1].caption
    annotated = _decode(result.artifacts[1].data)
    saturation = annotated.max(axis=2).astype(int) - annotated.min(axis=2)
    assert (saturation > 60).sum() > 1000  # the ultrasound's colour survives


def test_labels_never_overlap_when_findings_crowd_one_quadrant():
    display = np.full((256, 256), 40, dtype=np.uint8)
    crowd = [_finding(f"F{i + 1}", x=30 + 9 * i, y=34 + 7 * (i % 2), w=8, h=8, size_mm=(12.3, 4.5))
             for i in range(5)]
    figure = annotated_figure(display, crowd, spacing_mm=(0.7, 0.7), orientation=AXIAL)
    figure.canvas.draw()
    boxes = [_text(figure, f"label-{f.id}").get_bbox_patch().get_window_extent() for f in crowd]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    image = _image_box(figure)
    assert all(image.x0 - 1 <= b.x0 and b.x1 <= image.x1 + 1 and image.y0 - 1 <= b.y0 and b.y1 <= image.y1 + 1
               for b in boxes)
