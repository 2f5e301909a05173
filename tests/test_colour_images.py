"""Colour images everywhere the loader accepts them: luma for the tools, strongly coloured
pixels (Doppler flow, calipers, annotations) left out of the search and named in the reasons,
colour kept in every overlay, and ``loupe eval`` that never stops on one image."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from agent.evaluation.benchmark import run_eval
from tests.conftest import pydicom_file, run_cli
from tools.detection.detector import ClassicalDetector, detect_on_work
from tools.detection.working import prepare
from tools.study import StudyLimits, open_study
from tools.study.colour import LUMA_WEIGHTS

#: A breast ultrasound of the dev set and its lesion's box (x0, y0, x1, y1) from the manifest.
BUSI_IMAGE, BUSI_LESION = "busi/benign_030.png", (179, 50, 244, 117)
DOPPLER_BOX = (150, 30, 280, 150)
FLOW = [((175, 60), (220, 30, 20)), ((250, 110), (30, 60, 230)), ((200, 125), (220, 30, 20)), ((260, 55), (30, 60, 230))]
COLOUR_DICOM = ["SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm", "US1_J2KR.dcm", "SC_ybr_full_uncompressed.dcm",
                "OT-PAL-8-face.dcm", "SC_rgb_2frame.dcm"]


def _disk(shape, cx, cy, radius):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius * radius


@pytest.fixture
def doppler_png(eval_dir, tmp_path):
    """The dev ultrasound with a colour-Doppler box drawn around its lesion: a yellow frame,
    red and blue flow at the lesion's rim, and a green caliper mark elsewhere."""
    rgb = np.asarray(Image.open(eval_dir / BUSI_IMAGE).convert("RGB")).copy()
    x0, y0, x1, y1 = DOPPLER_BOX
    yellow = (230, 220, 40)
    rgb[y0:y0 + 2, x0:x1] = rgb[y1 - 2:y1, x0:x1] = yellow
    rgb[y0:y1, x0:x0 + 2] = rgb[y0:y1, x1 - 2:x1] = yellow
    for (cx, cy), colour in FLOW:
        rgb[_disk(rgb.shape, cx, cy, 6)] = colour
    rgb[300:303, 400:420] = (0, 255, 0)
    path = tmp_path / "doppler.png"
    Image.fromarray(rgb).save(path)
    return path


def test_colour_png_physical_values_are_its_luma(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with open_study(tmp_path / "colour.png") as study:
        assert study.physical(0).shape == (30, 40)
        np.testing.assert_allclose(study.physical(0), rgb.astype(np.float32) @ LUMA_WEIGHTS, rtol=1e-6)


def test_only_strongly_coloured_pixels_are_marked(tmp_path):
    grey = np.full((40, 50, 3), 120, np.uint8)
    grey[..., 2] += 8  # a JPEG-like tint stays on the grey axis
    Image.fromarray(grey).save(tmp_path / "tinted.png")
    coloured = grey.copy()
    coloured[10:20, 5:15] = (200, 30, 30)
    Image.fromarray(coloured).save(tmp_path / "flow.png")
    with open_study(tmp_path / "tinted.png") as study:
        assert study.coloured(0) is None
    with open_study(tmp_path / "flow.png") as study:
        mask = study.coloured(0)
        assert mask is not None and mask.sum() == 100 and mask[10:20, 5:15].all()
    with open_study(pydicom_file("CT_small.dcm")) as study:
        assert study.coloured(0) is None


def test_dark_colour_flow_is_not_a_hypoechoic_lesion(eval_dir, tmp_path):
    """A dark blue flow blob in bright tissue looks hypoechoic on the luma: without the colour
    rule it is a candidate, with it it is not, and the lesion keeps its rank."""
    rgb = np.asarray(Image.open(eval_dir / BUSI_IMAGE).convert("RGB")).copy()
    rgb[_disk(rgb.shape, 420, 150, 16)] = (20, 30, 140)
    Image.fromarray(rgb).save(tmp_path / "flow.png")
    with open_study(tmp_path / "flow.png", modality="US") as study:
        values, coloured = study.physical(0), study.coloured(0)
    near_flow = lambda detections: [d for d in detections if np.hypot(d.x - 420, d.y - 150) < 16]  # noqa: E731
    blind = detect_on_work(prepare(values, "US"), limit=5)
    aware_work = prepare(values, "US", coloured=coloured)
    aware = detect_on_work(aware_work, limit=5)
    assert near_flow(blind) and not near_flow(aware)
    x0, y0, x1, y1 = BUSI_LESION
    assert x0 <= aware[0].x <= x1 and y0 <= aware[0].y <= y1
    assert "strongly coloured" in aware_work.notes[0]


def test_analyze_a_doppler_image(doppler_png, tmp_path, capsys, isolated_cli):
    code, out, err = run_cli(capsys, "analyze", doppler_png, "--modality", "US", "--out", tmp_path / "out", "--json")
    assert code == 0, err
    findings = json.loads(out)["findings"]
    x0, y0, x1, y1 = BUSI_LESION
    top = findings[0]
    assert x0 <= top["center_px"][0] <= x1 and y0 <= top["center_px"][1] <= y1
    assert any("strongly coloured" in reason for reason in top["verification"]["reasons"])
    for finding in findings:  # nothing is centred on the flow, the frame or the caliper
        x, y = finding["center_px"]
        assert not any(np.hypot(x - cx, y - cy) <= 6 for (cx, cy), _ in FLOW)
    overlay = np.asarray(Image.open(tmp_path / "out" / "overlay.png").convert("RGB")).astype(int)
    red = (overlay[..., 0] > 180) & (overlay[..., 1] < 80) & (overlay[..., 2] < 80)
    assert red.sum() > 50  # the flow is still shown in colour


@pytest.mark.parametrize("name", COLOUR_DICOM)
def test_colour_dicom_is_analysed_and_discussed(name, tmp_path, capsys, isolated_cli):
    code, out, err = run_cli(capsys, "analyze", pydicom_file(name), "--out", tmp_path / "out", "--json")
    assert code == 0, err
    assert (tmp_path / "out" / "overlay.png").exists()
    code, out, err = run_cli(capsys, "ask", pydicom_file(name), "Analyse this scan and show the statistics",
                             "--backend", "offline", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["error"] is None, err
    assert "internal error" not in answer["answer"]
    assert all(call["ok"] for call in answer["tool_calls"]), answer["tool_calls"]


def _manifest(path, rows):
    fields = ["dataset", "image_path", "modality", "width", "height", "lesion_id", "label", "bbox_x0", "bbox_y0",
              "bbox_x1", "bbox_y1", "center_x", "center_y", "n_readers", "license"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({name: row.get(name, "") for name in fields})


def test_eval_goes_on_past_any_failing_image(doppler_png, eval_dir, tmp_path):
    """A colour image is scored; an unreadable file and an image whose analysis raises an
    unexpected error are misses listed with a sentence; the run finishes."""
    (tmp_path / "truncated.png").write_bytes((eval_dir / BUSI_IMAGE).read_bytes()[:200])
    (tmp_path / "boom.png").write_bytes(doppler_png.read_bytes())
    lesion = dict(zip(("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"), BUSI_LESION), lesion_id="0", label="benign",
                  center_x=211, center_y=83)
    rows = [dict(dataset="busi", image_path=name, modality="US", width=557, height=462, **lesion)
            for name in ("doppler.png", "truncated.png", "boom.png")]
    _manifest(tmp_path / "manifest.csv", rows)
    class Buggy(ClassicalDetector):
        """The second image that opens (boom.png) meets a bug."""

        def detect(self, study, frame, limit=10):
            calls.append(study.id)
            if len(calls) == 2:
                raise RuntimeError("a bug in the detector")
            return super().detect(study, frame, limit)

    calls: list[str] = []
    report = run_eval(tmp_path / "manifest.csv", limits=StudyLimits(), detector=Buggy())
    problems = report.data["unreadable"]
    assert [p.split(":")[0] for p in problems] == ["truncated.png", "boom.png"]
    assert "internal error (RuntimeError: a bug in the detector)" in problems[1]
    overall = next(s for s in report.data["detector"] if s["group"] == "all")
    assert overall["n"] == 3 and overall["hit_at_1"] == pytest.approx(1 / 3)
    assert "could not be analysed" in report.text
