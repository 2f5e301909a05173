"""The trained-detector seam: an ONNX model (built here, no weights downloaded) run through
ONNX Runtime, with its loading, preprocessing (letterbox) and box decoding checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import pydicom_file, run_cli
from tools.detection.onnx_detector import Letterbox, OnnxDetector, decode, letterboxed
from tools.detection.working import frame_as_shown
from tools.errors import ModelUnavailableError
from tools.study import open_study

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

SIDE = 64
HALF = 4  # the model's box: the brightest input pixel ± 4 px (9 px wide, in pixel edges)


def brightest_pixel_model(path, channels: int = 1, side: int = SIDE) -> None:
    """A real ONNX graph that "detects" the brightest pixel: [1, C, side, side] -> [1, 5] box."""
    const = lambda name, values, kind=TensorProto.INT64: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name, kind, [len(values)], values))
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["grey"], axes=[1], keepdims=0),
        const("flat_shape", [1, -1]),
        helper.make_node("Reshape", ["grey", "flat_shape"], ["flat"]),
        helper.make_node("ArgMax", ["flat"], ["index"], axis=1, keepdims=1),
        helper.make_node("ReduceMax", ["flat"], ["score"], axes=[1], keepdims=1),
        const("width", [side]),
        helper.make_node("Div", ["index", "width"], ["row"]),
        helper.make_node("Mod", ["index", "width"], ["column"]),
        helper.make_node("Cast", ["row"], ["y"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["column"], ["x"], to=TensorProto.FLOAT),
        const("before", [float(HALF)], TensorProto.FLOAT),
        const("after", [float(HALF + 1)], TensorProto.FLOAT),
        helper.make_node("Sub", ["x", "before"], ["x0"]),
        helper.make_node("Sub", ["y", "before"], ["y0"]),
        helper.make_node("Add", ["x", "after"], ["x1"]),
        helper.make_node("Add", ["y", "after"], ["y1"]),
        helper.make_node("Concat", ["x0", "y0", "x1", "y1", "score"], ["boxes"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "brightest-pixel",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, channels, side, side])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture
def spot_png(tmp_path):
    """A 200 × 300 (rows × columns) picture, dim noise with one bright spot centred at x=210, y=60."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(20, 60, (200, 300)).astype(np.uint8)
    yy, xx = np.mgrid[0:200, 0:300]
    pixels[(xx - 210) ** 2 + (yy - 60) ** 2 <= 36] = 250
    path = tmp_path / "spot.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("channels", [1, 3])
def test_the_model_finds_the_spot_in_native_pixels(tmp_path, spot_png, channels):
    model = tmp_path / "model.onnx"
    brightest_pixel_model(model, channels)
    detector = OnnxDetector(model)
    assert detector.input_shape() == (channels, SIDE, SIDE)
    with open_study(spot_png, modality="US") as study:
        [top] = detector.detect(study, 0, limit=5)
    # One model px is 300/64 = 4.7 native px: the box lands on the spot to within a model pixel.
    assert abs(top.x - 210) <= 5 and abs(top.y - 60) <= 5
    assert top.box.contains(210, 60) and top.confidence > 0.9  # the spot, resampled: nearly white
    assert 9 * 4 <= top.box.width <= 9 * 5 + 1  # 9 model px
    assert top.label == "hypoechoic mass"


def test_letterbox_keeps_the_aspect_and_pads_right_and_bottom():
    values = np.arange(200 * 300, dtype=np.float32).reshape(200, 300)
    image, box = letterboxed(values, 64, 64)
    assert image.shape == (64, 64) and box.scale == pytest.approx(64 / 300)
    assert image[:, :].max() <= 1.0 and image[43:, :].max() == 0.0  # 200 * 64/300 = 42.7 rows of image


@pytest.mark.parametrize(("edges", "native"), [
    ((0.0, 0.0, 64.0, 64.0), (0.0, 0.0, 299.0, 299.0)),  # the whole input: the whole (clipped) frame
    ((32.0, 16.0, 33.0, 17.0), (150.0, 75.0, 153.6875, 78.6875)),  # one input pixel
])
def test_letterbox_maps_boxes_back_to_native_pixels(edges, native):
    box = Letterbox(scale=64 / 300, native_rows=300, native_columns=300).to_native(*edges)
    assert box.as_list() == pytest.approx(list(native))


def test_decode_ranks_and_drops_what_is_not_a_box():
    letterbox = Letterbox(scale=1.0, native_rows=100, native_columns=100)
    rows = np.array([[10, 10, 20, 20, 0.3], [50, 50, 60, 60, 0.9], [5, 5, 4, 9, 0.8],  # x1 < x0
                     [1, 1, 2, 2, 0.01], [np.nan, 0, 1, 1, 0.7], [30, 30, 40, 40, 0.6]], np.float32)
    found = decode(rows[None], letterbox, frame=2, label="focal opacity", limit=2)
    assert [round(d.confidence, 2) for d in found] == [0.9, 0.6] and {d.frame for d in found} == {2}
    assert found[0].box.as_list() == [50.0, 50.0, 59.0, 59.0]


def test_a_missing_or_broken_model_is_one_clear_sentence(tmp_path):
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        OnnxDetector(tmp_path / "absent.onnx").input_shape()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model at all")
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        OnnxDetector(broken).input_shape()


def test_monochrome1_frames_are_fed_as_shown():
    with open_study(pydicom_file("RG1_UNCI.dcm")) as study:
        shown, display = frame_as_shown(study, 0), study.display(0).astype(np.float32)
    step = (slice(None, None, 16), slice(None, None, 16))
    assert np.corrcoef(shown[step].ravel(), display[step].ravel())[0, 1] > 0.9


def test_loupe_eval_scores_a_configured_model(tmp_path, spot_png, capsys, isolated_cli, monkeypatch):
    model = tmp_path / "model.onnx"
    brightest_pixel_model(model)
    (tmp_path / "manifest.csv").write_text(
        "dataset,image_path,modality,width,height,lesion_id,label,bbox_x0,bbox_y0,bbox_x1,bbox_y1,center_x,center_y,"
        "n_readers,license\n"
        f"spots,{spot_png},US,300,200,0,spot,200,50,220,70,210,60,1,test\n")
    monkeypatch.setenv("LOUPE_DETECTOR_MODEL", str(model))
    code, out, err = run_cli(capsys, "eval", tmp_path / "manifest.csv")
    assert code == 0, err
    assert "Detector onnx (top-ranked finding)" in out
    assert "| spots | 1 | 1.00 | 1.00 |" in out


def test_a_configured_model_proposes_findings_that_are_verified(tmp_path, spot_png, capsys, isolated_cli,
                                                                 monkeypatch):
    """Through the real pipeline (``loupe analyze``): the model's box becomes a finding whose
    source is "model", checked against the pixels like any proposal."""
    model = tmp_path / "model.onnx"
    brightest_pixel_model(model)
    monkeypatch.setenv("LOUPE_DETECTOR_MODEL", str(model))
    code, out, err = run_cli(capsys, "analyze", spot_png, "--modality", "OT", "--out", tmp_path / "out", "--json")
    assert code == 0, err
    findings = json.loads(out)["findings"]
    model_findings = [f for f in findings if f["source"] == "model"]
    assert len(model_findings) == 1
    [found] = model_findings
    assert abs(found["center_px"][0] - 210) <= 3 and abs(found["center_px"][1] - 60) <= 3  # verified: re-centred
    assert found["verification"]["status"] in ("confirmed", "adjusted")


def test_an_unusable_model_leaves_the_classical_detector_answering(tmp_path, spot_png, capsys, isolated_cli,
                                                                    monkeypatch):
    monkeypatch.setenv("LOUPE_DETECTOR_MODEL", str(tmp_path / "absent.onnx"))
    code, out, err = run_cli(capsys, "analyze", spot_png, "--modality", "OT", "--out", tmp_path / "out", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert "The detector model was not used" in result["summary"] and "does not exist" in result["summary"]
    assert result["findings"] and all(f["source"] == "classical" for f in result["findings"])
