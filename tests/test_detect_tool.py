"""The detect_anomalies tool: findings on real studies, stable ids, replacement of automatic
findings, the vision-model protocol (with a fake proposer), and multi-frame studies."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from agent.settings import LoupeSettings
from agent.toolbox import ToolCallError, new_context, run_tool
from tests.conftest import EVAL_DIR, pydicom_file
from tests.test_detection import _write_ct_series
from tools.context import VisionProposal
from tools.coordinates import BoxPx
from tools.detection.detector import REFINED_DETECTIONS, frame_analysis, recentred
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.findings import Finding

BENIGN_030 = EVAL_DIR / "busi" / "benign_030.png"
BENIGN_030_BOX = BoxPx(x0=179, y0=50, x1=244, y1=117)  # from the manifest


@pytest.fixture
def ctx():
    context = new_context(LoupeSettings())
    yield context
    context.close()


def _load(ctx, path, modality=None):
    return run_tool(ctx, "load_study", {"path": str(path), "modality": modality}).output


def _check_output(ctx, out, *, frames=(0,)):
    assert out.study_id == ctx.current_study_id
    assert out.threshold == ANOMALY_THRESHOLD
    assert 1 <= len(out.findings) <= 5
    confidences = [f.confidence for f in out.findings]
    assert all(0.0 <= c <= 1.0 for c in confidences)
    assert confidences == sorted(confidences, reverse=True)
    assert out.anomaly_found == any(c >= ANOMALY_THRESHOLD for c in confidences)
    for finding in out.findings:
        assert finding.id.startswith("F") and int(finding.id[1:]) >= 1
        assert finding.study_id == out.study_id
        assert finding.frame in frames
        assert finding.verification is not None and finding.verification.status in ("confirmed", "unverified")
        assert finding.verification.reasons
        # Verified at the threshold: confirmed iff confident enough.
        assert (finding.verification.status == "confirmed") == (finding.confidence >= ANOMALY_THRESHOLD)
        assert finding.bbox_px.contains(*finding.center_px)
        assert ctx.findings[finding.id] == finding
    assert len({f.id for f in out.findings}) == len(out.findings)
    if out.anomaly_found:
        assert out.summary.startswith(f"{sum(c >= ANOMALY_THRESHOLD for c in confidences)} possible anomal")
        assert out.findings[0].id in out.summary
    elif out.outside_competence is not None:
        assert out.summary.startswith("Outside what the offline detector judges") and out.outside_competence in out.summary
        assert all(f.label == "region for review" and f.confidence < ANOMALY_THRESHOLD for f in out.findings)
    else:
        assert out.assessment in ("inconclusive", "no_anomaly_found") and out.summary.startswith(out.assessment_reason)


def test_ct_small(ctx):
    _load(ctx, pydicom_file("CT_small.dcm"))
    out = run_tool(ctx, "detect_anomalies", {}).output
    _check_output(ctx, out)
    assert out.frames_searched == [0] and out.vision_model is None
    assert [f.id for f in sorted(out.findings, key=lambda f: int(f.id[1:]))] == [f"F{i}" for i in range(1, len(out.findings) + 1)]
    assert all(f.source == "classical" for f in out.findings)
    assert all(0 <= f.center_px[0] <= 127 and 0 <= f.center_px[1] <= 127 for f in out.findings)
    assert out.outside_competence == "a CT without lung fields"  # a small abdominal slice


def test_the_abdominal_mr_sample_gets_no_anomaly_and_is_told_why(ctx):
    _load(ctx, pydicom_file("examples_overlay.dcm"))
    out = run_tool(ctx, "detect_anomalies", {}).output
    _check_output(ctx, out)
    assert out.outside_competence == "an MR of the abdomen" and not out.anomaly_found
    assert all("not for an MR of the abdomen" in f.verification.reasons[-1] for f in out.findings)


def test_busi_benign_030(ctx, eval_dir):
    _load(ctx, BENIGN_030, "US")
    out = run_tool(ctx, "detect_anomalies", {"max_findings": 3}).output
    _check_output(ctx, out)
    assert len(out.findings) == 3
    assert out.findings[0].label == "hypoechoic mass"
    # The marked lesion is among the findings (the detector's own quality is scored elsewhere).
    assert any(BENIGN_030_BOX.contains(*f.center_px) for f in out.findings)


def test_max_findings_bounds(ctx):
    _load(ctx, pydicom_file("CT_small.dcm"))
    assert len(run_tool(ctx, "detect_anomalies", {"max_findings": 1}).output.findings) == 1
    with pytest.raises(ToolCallError):
        run_tool(ctx, "detect_anomalies", {"max_findings": 0})
    with pytest.raises(ToolCallError):
        run_tool(ctx, "detect_anomalies", {"max_findings": 21})


def _clinician_finding(ctx, study_id: str, frame: int = 0) -> Finding:
    finding = Finding(id=ctx.next_finding_id(), study_id=study_id, label="clinician's mark", frame=frame,
                      center_px=(20.0, 20.0), bbox_px=BoxPx(x0=15, y0=15, x1=25, y1=25), confidence=1.0,
                      source="clinician")
    ctx.findings[finding.id] = finding
    return finding


def test_rerun_keeps_the_ids_of_findings_found_again_and_the_clinicians(ctx):
    study_id = _load(ctx, pydicom_file("CT_small.dcm")).study_id
    first = run_tool(ctx, "detect_anomalies", {}).output
    mine = _clinician_finding(ctx, study_id)
    second = run_tool(ctx, "detect_anomalies", {}).output
    # Same image, same detector: the same places keep their ids; nothing new is issued.
    assert [(f.id, f.center_px) for f in first.findings] == [(f.id, f.center_px) for f in second.findings]
    assert ctx.findings_issued == int(mine.id[1:])
    assert set(ctx.findings) == {f.id for f in second.findings} | {mine.id}
    assert ctx.findings[mine.id] == mine


def test_rerun_on_another_frame_keeps_the_first_frames_findings(ctx):
    _load(ctx, pydicom_file("examples_ybr_color.dcm"))
    on_0 = run_tool(ctx, "detect_anomalies", {"frame": 0}).output
    on_5 = run_tool(ctx, "detect_anomalies", {"frame": 5}).output
    assert {f.frame for f in on_5.findings} == {5}
    assert set(ctx.findings) == {f.id for f in on_0.findings} | {f.id for f in on_5.findings}


def test_all_frames_rerun_replaces_stale_findings_on_every_searched_frame(ctx, tmp_path):
    _write_ct_series(tmp_path / "series")  # 6 slices, the nodule largest on slice 3
    _load(ctx, tmp_path / "series")
    single = run_tool(ctx, "detect_anomalies", {"frame": 0}).output
    volume = run_tool(ctx, "detect_anomalies", {"all_frames": True, "max_findings": 1}).output
    assert 0 in volume.frames_searched and [f.frame for f in volume.findings] == [3]
    assert not {f.id for f in single.findings} & set(ctx.findings)
    assert set(ctx.findings) == {f.id for f in volume.findings}


def test_findings_of_other_studies_are_kept(ctx, eval_dir):
    _load(ctx, pydicom_file("CT_small.dcm"))
    ct_ids = {f.id for f in run_tool(ctx, "detect_anomalies", {}).output.findings}
    _load(ctx, BENIGN_030, "US")
    us_ids = {f.id for f in run_tool(ctx, "detect_anomalies", {}).output.findings}
    assert set(ctx.findings) == ct_ids | us_ids


# -- vision proposer ------------------------------------------------------------------------------------
class FakeVision:
    """A test double of the vision-model protocol: records what it is shown, answers from a function."""

    name = "fake-vlm"

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[dict] = []

    def propose(self, image_png: bytes, *, modality: str | None, samples: int) -> list[VisionProposal]:
        image = Image.open(io.BytesIO(image_png))
        image.load()
        assert image.format == "PNG"
        pixels = np.asarray(image)
        self.calls.append({"size": image.size, "modality": modality, "samples": samples, "pixels": pixels})
        return self.answer(pixels)


LESION = (410.0, 190.0)  # x, y in native px
LESION_RADIUS = 36.0
SHAPE = (600, 800)  # rows, columns


@pytest.fixture
def lesion_png(tmp_path):
    """A clean ultrasound-like PNG (grey tissue, mild noise) with one dark round lesion."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    image = np.full(SHAPE, 130.0) + rng.normal(0, 8, SHAPE)
    image[np.hypot(xx - LESION[0], yy - LESION[1]) <= LESION_RADIUS] = 30.0
    path = tmp_path / "lesion.png"
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)
    return path


def _dark_box_2d(pixels: np.ndarray) -> list[float]:
    """Find the dark lesion in the image as sent and describe it in box_2d (edges, 0–1000)."""
    grey = pixels if pixels.ndim == 2 else pixels[..., 0]
    rows, cols = np.nonzero(grey < 80)
    h, w = grey.shape
    return [rows.min() / h * 1000, cols.min() / w * 1000, (rows.max() + 1) / h * 1000, (cols.max() + 1) / w * 1000]


@pytest.mark.parametrize("max_side", [1024, 256])
def test_vision_proposal_lands_on_the_native_lesion(ctx, lesion_png, max_side):
    ctx.model_image_max_side = max_side
    ctx.vision = FakeVision(lambda pixels: [VisionProposal(box_2d=_dark_box_2d(pixels), label="dark mass", sample=s)
                                            for s in range(3)])
    _load(ctx, lesion_png, "US")
    out = run_tool(ctx, "detect_anomalies", {"samples": 3}).output
    call = ctx.vision.calls[0]
    assert len(ctx.vision.calls) == 1 and call["samples"] == 3 and call["modality"] == "US"
    assert max(call["size"]) <= max_side
    scale = min(1.0, max_side / max(SHAPE))
    assert call["size"] == (round(SHAPE[1] * scale), round(SHAPE[0] * scale))
    assert out.vision_model == "fake-vlm"
    vlm = [f for f in out.findings if f.source == "vlm"]
    assert len(vlm) == 1, "three samples of one lesion make one finding"
    finding = vlm[0]
    assert finding.label == "dark mass"
    assert finding.verification.status in ("confirmed", "adjusted")
    assert finding.confidence >= ANOMALY_THRESHOLD and out.anomaly_found
    # One sent pixel is 1/scale native pixels: that is all the conversion may lose.
    tolerance = 1.0 / scale + 0.5
    assert math.dist(finding.center_px, LESION) <= tolerance
    # The box, converted back from the (possibly downscaled) image, matches the lesion's pixels.
    truth = [LESION[0] - LESION_RADIUS, LESION[1] - LESION_RADIUS, LESION[0] + LESION_RADIUS, LESION[1] + LESION_RADIUS]
    assert finding.bbox_px.as_list() == pytest.approx(truth, abs=tolerance)
    # The detector's candidate on the same lesion is merged into the vlm finding, not repeated.
    assert not [f for f in out.findings if f.source == "classical" and finding.bbox_px.contains(*f.center_px)]
    assert out.findings[0] is finding or out.findings[0].confidence >= finding.confidence


def test_vision_proposal_is_adjusted_onto_the_lesion(ctx, lesion_png):
    """A proposal beside the lesion (as a vision model might make) is moved onto it by verification."""
    def beside(pixels):
        ymin, xmin, ymax, xmax = _dark_box_2d(pixels)
        shift = 0.9 * (xmax - xmin)
        return [VisionProposal(box_2d=[ymin, xmin + shift, ymax, xmax + shift])]

    ctx.vision = FakeVision(beside)
    _load(ctx, lesion_png, "US")
    finding = next(f for f in run_tool(ctx, "detect_anomalies", {}).output.findings if f.source == "vlm")
    assert finding.verification.status == "adjusted"
    assert math.dist(finding.center_px, LESION) <= 3.0
    assert finding.verification.shift_px > 50 and finding.verification.shift_mm is None


def test_malformed_and_rejected_proposals_are_ignored(ctx, lesion_png):
    def answer(pixels):
        return [
            VisionProposal(box_2d=[100, 200, 1300, 400]),  # > 1000
            VisionProposal(box_2d=[500, 200, 100, 400]),  # ymin > ymax
            VisionProposal(box_2d=[100, 600, 300, 400]),  # xmin > xmax
            VisionProposal(box_2d=[-10, 200, 300, 400]),  # negative
            VisionProposal.model_construct(box_2d=[100, 200, 300], label="", sample=0),  # wrong length
            VisionProposal.model_construct(box_2d=[100, "x", 300, 400], label="", sample=0),  # not a number
            VisionProposal(box_2d=[850, 80, 900, 130], label="nothing there"),  # plain tissue: rejected
            VisionProposal(box_2d=_dark_box_2d(pixels), label="dark mass"),
        ]

    ctx.vision = FakeVision(answer)
    _load(ctx, lesion_png, "US")
    out = run_tool(ctx, "detect_anomalies", {}).output
    vlm = [f for f in out.findings if f.source == "vlm"]
    assert [f.label for f in vlm] == ["dark mass"]
    assert math.dist(vlm[0].center_px, LESION) <= 2.0


def test_no_proposals_or_vision_switched_off(ctx, lesion_png):
    ctx.vision = FakeVision(lambda pixels: [])
    _load(ctx, lesion_png, "US")
    out = run_tool(ctx, "detect_anomalies", {}).output
    assert out.vision_model == "fake-vlm" and all(f.source == "classical" for f in out.findings)
    off = run_tool(ctx, "detect_anomalies", {"use_vision_model": False}).output
    assert off.vision_model is None and len(ctx.vision.calls) == 1
    # Without the model, the detector alone still finds this lesion first.
    assert math.dist(off.findings[0].center_px, LESION) <= LESION_RADIUS


def test_vision_sees_the_current_window_and_frame(ctx):
    """On a CT the model is shown the display image (the view's window), at native size here."""
    ctx.vision = FakeVision(lambda pixels: [])
    _load(ctx, pydicom_file("CT_small.dcm"))
    run_tool(ctx, "load_study", {"window": "lung"})
    run_tool(ctx, "detect_anomalies", {})
    lung = ctx.vision.calls[-1]["pixels"]
    run_tool(ctx, "load_study", {"window": "bone"})
    run_tool(ctx, "detect_anomalies", {})
    bone = ctx.vision.calls[-1]["pixels"]
    assert lung.shape == bone.shape == (128, 128) and not np.array_equal(lung, bone)


# -- multi-frame -----------------------------------------------------------------------------------------
@pytest.mark.slow  # ~3 s: 30 frames (emri_small below is the fast multi-frame check)
def test_all_frames_on_multiframe_ultrasound(ctx):
    loaded = _load(ctx, pydicom_file("examples_ybr_color.dcm"))
    assert loaded.summary.frames == 30
    out = run_tool(ctx, "detect_anomalies", {"all_frames": True, "max_findings": 4}).output
    assert out.frames_searched == list(range(30))
    _check_output(ctx, out, frames=range(30))
    assert len(out.findings) == 4
    # One finding per lesion: none repeats another within 3 slices at the same place.
    for a in out.findings:
        for b in out.findings:
            if a is not b and abs(a.frame - b.frame) <= 3:
                assert math.dist(a.center_px, b.center_px) > 1.0


def test_single_frame_of_multiframe_uses_the_shown_frame(ctx):
    _load(ctx, pydicom_file("examples_ybr_color.dcm"))
    run_tool(ctx, "load_study", {"frame": 7})
    out = run_tool(ctx, "detect_anomalies", {}).output
    assert out.frames_searched == [7] and {f.frame for f in out.findings} == {7}


@pytest.mark.parametrize("all_frames", [True, False])
def test_multiframe_mr_emri_small(ctx, all_frames):
    """A 64x64, 10-frame MR: small enough that the finest blob scale is under a pixel."""
    _load(ctx, pydicom_file("emri_small.dcm"))
    out = run_tool(ctx, "detect_anomalies", {"all_frames": all_frames}).output
    assert out.frames_searched == (list(range(10)) if all_frames else [0])
    _check_output(ctx, out, frames=range(10) if all_frames else (0,))
    for finding in out.findings:
        box = finding.bbox_px
        assert 0 <= box.x0 <= box.x1 <= 63 and 0 <= box.y0 <= box.y1 <= 63


def test_internal_validation_error_is_not_blamed_on_the_arguments(ctx, monkeypatch):
    """A pydantic error raised inside a tool is a bug, not the caller's fault: run_tool must not
    turn it into 'The arguments for ... are invalid'."""
    from tools import registry

    def broken(context, args):
        BoxPx(x0=1, y0=0, x1=0, y1=0)  # an internal bug raising pydantic.ValidationError

    tool = registry.TOOLS["detect_anomalies"]
    monkeypatch.setitem(registry.TOOLS, "detect_anomalies",
                        registry.Tool(tool.name, tool.input_model, tool.output_model, broken))
    _load(ctx, pydicom_file("CT_small.dcm"))
    with pytest.raises(Exception) as caught:
        run_tool(ctx, "detect_anomalies", {})
    assert not isinstance(caught.value, ToolCallError)
    assert "arguments" not in str(caught.value)


def test_vision_samples_give_positional_uncertainty(ctx, lesion_png):
    """Three samples of one lesion: the finding remembers them and fit_gaussian models their spread."""
    _load(ctx, lesion_png, "US")
    # The lesion at (410, 190) of 800 x 600 is at x 512.5, y 316.7 in 0-1000 units.
    ctx.vision = FakeVision(lambda pixels: [VisionProposal(box_2d=[260, 465, 380, 560], sample=0),
                                            VisionProposal(box_2d=[255, 470, 375, 565], sample=1),
                                            VisionProposal(box_2d=[265, 460, 385, 555], sample=2)])
    findings = run_tool(ctx, "detect_anomalies", {"samples": 3}).output.findings
    vlm = [f for f in findings if f.source == "vlm"]
    assert len(vlm) == 1 and len(ctx.finding_samples[vlm[0].id]) == 3
    fitted = run_tool(ctx, "fit_gaussian", {"finding_ids": [vlm[0].id]}).output.results[0]
    assert fitted.uncertainty is not None and fitted.uncertainty.n_samples == 3
    # A new detection drops the old findings and their samples.
    run_tool(ctx, "detect_anomalies", {"use_vision_model": False})
    assert vlm[0].id not in ctx.finding_samples


def test_findings_beyond_the_fifth_are_centred_by_their_gaussian_fit(ctx, eval_dir):
    """The shared frame analysis fits only the first five detections; asking for more findings
    must not list the rest at their scale-space peaks."""
    _load(ctx, BENIGN_030, "US")
    findings = run_tool(ctx, "detect_anomalies", {"max_findings": 8}).output.findings
    view = ctx.view(None)
    analysis = frame_analysis(ctx, view.study, view.frame)
    expected = [recentred(d, analysis.work) if rank >= REFINED_DETECTIONS else d
                for rank, d in enumerate(analysis.detections[:8])]
    listed = [coordinate for f in findings for coordinate in f.center_px]
    assert listed == pytest.approx([coordinate for d in expected for coordinate in (d.x, d.y)], abs=0.01)
    moved = [rank for rank, d in enumerate(analysis.detections[:8]) if (d.x, d.y) != (expected[rank].x, expected[rank].y)]
    assert moved and min(moved) >= REFINED_DETECTIONS
