"""verify_coordinates: verify_location on synthetic lesions, the tool's three input forms, and
the simulation of vision-model proposals on the evaluation set."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from agent.evaluation.manifest import read_manifest
from agent.evaluation.simulation import score_simulation, simulate_proposals
from agent.settings import LoupeSettings
from agent.toolbox import ToolCallError, new_context, run_tool
from tests.conftest import pydicom_file
from tests.test_detection import (
    CT_NODULE,
    CT_NODULE_RADIUS,
    US_LESION,
    US_LESION_RADIUS,
    US_SHAPE,
    ct_slice,
    us_image,
)
from tools import verify_coordinates
from tools.coordinates import BoxPx
from tools.detection.detector import analyse_frame, detect_on_work
from tools.detection.evidence import ScaleSpace
from tools.detection.working import prepare, prepare_study_frame
from tools.errors import FrameOutOfRangeError, InvalidCoordinatesError, NoStudyOpenError
from tools.study import StudyLimits, open_study
from tools.verify_coordinates import verify_location

SPACING = (0.5, 0.8)  # row, column (mm): anisotropic so that the axes cannot be swapped unnoticed


@pytest.fixture(scope="module")
def ct():
    work = prepare(ct_slice(), "CT")
    space = ScaleSpace(work)
    return work, space, detect_on_work(work, limit=30, space=space)


@pytest.fixture(scope="module")
def us():
    work = prepare(us_image(), "US")
    space = ScaleSpace(work)
    return work, space, detect_on_work(work, limit=30, space=space)


def _verify(setup, box: BoxPx, spacing=SPACING, **kwargs):
    work, space, candidates = setup
    return verify_location(work, box, spacing_mm=spacing, candidates=candidates, space=space, **kwargs)


# -- verify_location --------------------------------------------------------------------------------
@pytest.mark.parametrize("which, centre, radius", [("ct", CT_NODULE, CT_NODULE_RADIUS), ("us", US_LESION, US_LESION_RADIUS)])
def test_proposal_centred_on_lesion_is_confirmed(request, which, centre, radius):
    setup = request.getfixturevalue(which)
    box = BoxPx.around(*centre, 2 * radius + 2, 2 * radius + 2)
    result = _verify(setup, box)
    v = result.verification
    assert v.status == "confirmed", v.reasons
    assert v.shift_px == 0 and v.shift_mm == 0
    assert result.center == pytest.approx(centre) and result.box == box
    assert v.reasons[0].startswith("lesion-like contrast at the proposed location")
    assert any("agrees with the classical detector" in r for r in v.reasons)
    assert v.contrast_to_noise > 1 and 0.5 <= v.evidence <= 1


@pytest.mark.parametrize("which, centre, radius", [("ct", CT_NODULE, CT_NODULE_RADIUS), ("us", US_LESION, US_LESION_RADIUS)])
@pytest.mark.parametrize("direction", [(1, 0), (0, 1), (-0.7071, 0.7071)])
def test_offset_proposal_is_adjusted_towards_the_lesion(request, which, centre, radius, direction):
    """About 1.3 box sizes off a strong lesion: the centre moves onto the lesion."""
    setup = request.getfixturevalue(which)
    size = 2 * radius + 2
    offset = 1.3 * size
    proposed = (centre[0] + direction[0] * offset, centre[1] + direction[1] * offset)
    result = _verify(setup, BoxPx.around(*proposed, size, size))
    v = result.verification
    assert v.status == "adjusted", v.reasons
    assert math.dist(result.center, centre) <= 1.5
    assert math.dist(result.center, centre) < math.dist(proposed, centre)
    dx, dy = result.center[0] - proposed[0], result.center[1] - proposed[1]
    assert v.shift_px == pytest.approx(math.hypot(dx, dy), abs=0.01) and v.shift_px > 0
    # shift_mm uses the column spacing for x and the row spacing for y.
    assert v.shift_mm == pytest.approx(math.hypot(dx * SPACING[1], dy * SPACING[0]), abs=0.01)
    assert result.box.center == pytest.approx(result.center) and result.box.width == pytest.approx(size)
    assert v.reasons[0].startswith("moved ")


@pytest.mark.parametrize("fraction, status", [(0.2, "adjusted"), (0.1, "confirmed")])
def test_proposal_off_the_middle_of_a_lesion_moves_to_it_unless_the_offset_is_jitter(us, fraction, status):
    """A generous box (1.5 times the lesion) on the lesion but a fifth of its side off the
    middle is re-centred on the lesion; a tenth of its side off is taken as the proposal itself
    (below ``MIN_MOVE_FRACTION``)."""
    size = 1.5 * (2 * US_LESION_RADIUS + 2)
    proposed = (US_LESION[0] + fraction * size, US_LESION[1])
    result = _verify(us, BoxPx.around(*proposed, size, size))
    assert result.verification.status == status, result.verification.reasons
    expected = US_LESION if status == "adjusted" else proposed
    assert math.dist(result.center, expected) <= 1.5


def test_adjustment_without_spacing_has_no_mm(ct):
    size = 2 * CT_NODULE_RADIUS + 2
    result = _verify(ct, BoxPx.around(CT_NODULE[0] + size, CT_NODULE[1], size, size), spacing=None)
    assert result.verification.status == "adjusted" and result.verification.shift_mm is None


def test_offset_proposal_without_candidates_finds_a_blob_of_the_box_size(ct):
    """The detector's list is not needed: blobs of the proposal's size in the window count too."""
    work, space, _ = ct
    size = 2 * CT_NODULE_RADIUS + 2
    box = BoxPx.around(CT_NODULE[0] + 1.3 * size, CT_NODULE[1], size, size)
    result = verify_location(work, box, spacing_mm=SPACING, candidates=(), space=space)
    assert result.verification.status == "adjusted", result.verification.reasons
    assert math.dist(result.center, CT_NODULE) <= 1.5


@pytest.mark.parametrize("which, centre, radius", [("ct", CT_NODULE, CT_NODULE_RADIUS), ("us", US_LESION, US_LESION_RADIUS)])
def test_far_offset_within_the_model_error_is_adjusted(request, which, centre, radius):
    """1.6 box sizes off — outside a search tied to the box size (2 half-diagonals ≈ 1.4 box
    sizes), within the vision model's expected error (a fraction of the diagonal): the centre
    still moves onto the lesion."""
    setup = request.getfixturevalue(which)
    size = 2 * radius + 2
    proposed = (centre[0] - 1.1 * size, centre[1] + 1.1 * size)
    result = _verify(setup, BoxPx.around(*proposed, size, size))
    assert result.verification.status == "adjusted", result.verification.reasons
    assert math.dist(result.center, centre) <= 1.5


def test_prior_width_follows_the_samples_agreement():
    box = BoxPx.around(200, 200, 20, 20)
    default = verify_coordinates.MODEL_ERROR_FRACTION * 1000
    assert verify_coordinates._prior_sigma(box, 1000, ()) == pytest.approx(default)
    agreeing = verify_coordinates._prior_sigma(box, 1000, [(199, 201), (201, 199), (200, 200)])
    assert agreeing == pytest.approx(verify_coordinates.MIN_ERROR_SCALE * default)  # narrowed, but only so far
    spread = verify_coordinates._prior_sigma(box, 1000, [(100, 200), (300, 200), (200, 400)])
    assert spread == pytest.approx(default)  # disagreeing samples never widen beyond the known error


def test_distance_prior_prefers_the_nearer_of_two_equal_lesions():
    """Two identical nodules, one in each lung: a proposal between them, nearer the left one."""
    hu = ct_slice()
    yy, xx = np.mgrid[0:512, 0:512]
    hu[np.hypot(xx - 342, yy - 250) <= CT_NODULE_RADIUS] = 30.0
    work = prepare(hu, "CT")
    space = ScaleSpace(work)
    setup = (work, space, detect_on_work(work, limit=30, space=space))
    size = 2 * CT_NODULE_RADIUS + 2
    result = _verify(setup, BoxPx.around(CT_NODULE[0] + 40, CT_NODULE[1] + 20, size, size))
    assert result.verification.status == "adjusted" and math.dist(result.center, CT_NODULE) <= 1.5


@pytest.mark.parametrize("which, centre, words", [
    ("ct", (30.0, 30.0), "outside the body"),  # the air outside the body
    ("ct", (370.0, 300.0), "flat"),  # the nodule-free lung, beyond reach of the nodule
    ("us", (160.0, 380.0), "flat"),  # plain speckle far from the lesion
])
def test_proposal_contradicted_by_the_pixels_is_rejected(request, which, centre, words):
    setup = request.getfixturevalue(which)
    result = _verify(setup, BoxPx.around(*centre, 14, 14))
    v = result.verification
    assert v.status == "rejected", v.reasons
    assert words in v.reasons[0]
    assert v.shift_px == 0 and result.center == pytest.approx(centre)


def test_anechoic_lesion_at_the_edge_of_the_ultrasound_field_is_not_background():
    """A black cyst against the left edge of the imaged field merges with the black margin, so
    the sector mask leaves it out; the field it lies in is convex, so it is not 'outside'. A
    box in the margin itself still is."""
    image = us_image(lesion=None, seed=3)
    yy, xx = np.mgrid[0:US_SHAPE[0], 0:US_SHAPE[1]]
    image[np.hypot(xx - 60, yy - 240) <= 45] = 0.0  # anechoic, and open to the left margin
    work = prepare(image, "US")
    cyst = BoxPx.around(55, 240, 80, 80)
    assert not work.body[round(240 * work.scale), round(55 * work.scale)]  # the sector mask's gap
    on_cyst = verify_location(work, cyst, candidates=(), space=ScaleSpace(work)).verification
    assert on_cyst.status != "rejected", on_cyst.reasons
    in_margin = verify_location(work, BoxPx.around(12, 240, 16, 16), candidates=(), space=ScaleSpace(work)).verification
    assert in_margin.status == "rejected" and "outside the imaged sector" in in_margin.reasons[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_box_larger_than_every_blob_scale_is_not_called_flat(seed):
    """A faintly hypoechoic mass filling much of the field (380 x 220 px): its blob responses are
    flat at every scale the detector has, but none of them is the box's size, so the pixels do
    not contradict it; kept with weak evidence, not rejected."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:US_SHAPE[0], 0:US_SHAPE[1]]
    echo = np.where(((xx - 280) / 190) ** 2 + ((yy - 260) / 110) ** 2 <= 1, 105.0, 120.0)
    image = echo * rng.rayleigh(1.0, US_SHAPE) / 1.25
    image[:, :30], image[:, -30:], image[:20] = 0, 0, 0
    work = prepare(image.astype(np.float32), "US")
    v = verify_location(work, BoxPx.around(280, 260, 380, 220), candidates=(), space=ScaleSpace(work)).verification
    assert v.status == "confirmed" and "weak" in v.reasons[0], v.reasons
    assert any("larger than any lesion size" in reason for reason in v.reasons)


def test_wrong_polarity_is_rejected_in_words():
    """A bright spot on ultrasound, where lesions are dark (hypoechoic)."""
    image = us_image(lesion=None)
    yy, xx = np.mgrid[0:US_SHAPE[0], 0:US_SHAPE[1]]
    image[np.hypot(xx - 280, yy - 240) <= 20] = 250.0
    work = prepare(image, "US")
    space = ScaleSpace(work)
    result = verify_location(work, BoxPx.around(280, 240, 42, 42), candidates=(), space=space)
    v = result.verification
    assert v.status == "rejected", v.reasons
    assert "brighter than its surroundings" in v.reasons[0] and "darker" in v.reasons[0]


def test_faint_lesion_is_kept_not_rejected():
    """A ground-glass-like nodule barely above the noise: weak evidence is not a contradiction."""
    hu = ct_slice(nodule=None)
    yy, xx = np.mgrid[0:512, 0:512]
    hu[np.hypot(xx - CT_NODULE[0], yy - CT_NODULE[1]) <= 8] += 12.0  # about one noise σ
    work = prepare(hu, "CT")
    space = ScaleSpace(work)
    setup = (work, space, detect_on_work(work, limit=30, space=space))
    result = _verify(setup, BoxPx.around(*CT_NODULE, 18, 18))
    assert result.verification.status != "rejected", result.verification.reasons
    assert math.dist(result.center, CT_NODULE) <= 3.0


def test_verify_is_fast_once_the_frame_is_analysed(ct):
    box = BoxPx.around(CT_NODULE[0] + 40, CT_NODULE[1] - 30, 14, 14)
    _verify(ct, box)  # warm the caches shared with the detector
    started = time.perf_counter()
    for _ in range(5):
        _verify(ct, box)
    assert (time.perf_counter() - started) / 5 < 0.1


@pytest.mark.parametrize("box", [
    BoxPx(x0=600, y0=10, x1=650, y1=40),
    BoxPx(x0=10, y0=-80, x1=40, y1=-1),
    BoxPx(x0=-100, y0=-100, x1=-0.6, y1=-0.6),
    BoxPx(x0=512, y0=512, x1=520, y1=520),
])
def test_proposal_entirely_outside_raises(ct, box):
    with pytest.raises(InvalidCoordinatesError):
        _verify(ct, box)


def test_box_partly_outside_is_clipped_with_a_reason(ct):
    result = _verify(ct, BoxPx(x0=490, y0=-20, x1=530, y1=30))
    v = result.verification
    assert any("clipped" in r for r in v.reasons)
    assert 0 <= result.box.x0 <= result.box.x1 <= 511 and 0 <= result.box.y0 <= result.box.y1 <= 511
    # Inside the image and next to a lesion: clipped, then confirmed on the lesion.
    near = _verify(ct, BoxPx(x0=CT_NODULE[0] - 8, y0=CT_NODULE[1] - 8, x1=CT_NODULE[0] + 8, y1=CT_NODULE[1] + 8))
    assert not any("clipped" in r for r in near.verification.reasons)


def test_shape_notes_for_huge_and_elongated_boxes(ct):
    huge = _verify(ct, BoxPx(x0=0, y0=0, x1=511, y1=511)).verification.reasons
    assert any("more than half the image" in r for r in huge)
    thin = _verify(ct, BoxPx(x0=100, y0=250, x1=240, y1=255)).verification.reasons
    assert any("elongated" in r for r in thin)


def test_repeated_samples_agreement_is_reported(ct):
    box = BoxPx.around(*CT_NODULE, 14, 14)
    agree = _verify(ct, box, sample_centres=[(170, 250), (171, 249), (169, 251)]).verification.reasons
    assert "the model's repeated samples agree" in agree
    spread = _verify(ct, box, sample_centres=[(170, 250), (300, 100), (40, 400)]).verification.reasons
    assert any(r.startswith("the model's repeated samples disagree") for r in spread)


# -- the tool ---------------------------------------------------------------------------------------
def _write_ct_dicom(path: Path, spacing=(0.7, 0.7)) -> Path:
    """The synthetic 512² CT slice as a DICOM file (CT_small as template), with pixel spacing."""
    template = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds = template.copy()
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 512
    ds.PixelSpacing = [str(spacing[0]), str(spacing[1])]
    ds.PixelData = np.round(ct_slice() - float(template.RescaleIntercept)).astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ct_study(tmp_path):
    ctx = new_context(LoupeSettings())
    run_tool(ctx, "load_study", {"path": str(_write_ct_dicom(tmp_path / "ct.dcm"))})
    yield ctx
    ctx.close()


@pytest.fixture
def us_study(tmp_path):
    path = tmp_path / "us.png"
    Image.fromarray(us_image().astype(np.uint8)).save(path)
    ctx = new_context(LoupeSettings())
    run_tool(ctx, "load_study", {"path": str(path), "modality": "US"})
    yield ctx
    ctx.close()


def _box_2d(x0, y0, x1, y1, width, height):
    """An inclusive native box as Gemini's box_2d on an image sent at native size."""
    return [y0 / height * 1000, x0 / width * 1000, (y1 + 1) / height * 1000, (x1 + 1) / width * 1000]


def test_tool_box_2d_on_lesion_is_confirmed(ct_study):
    x, y = CT_NODULE
    out = run_tool(ct_study, "verify_coordinates", {"box_2d": _box_2d(x - 7, y - 7, x + 7, y + 7, 512, 512)}).output
    assert out.status == "confirmed", out.reasons
    assert out.center_px == pytest.approx(CT_NODULE, abs=0.01)
    assert out.bbox_px == pytest.approx([x - 7, y - 7, x + 7, y + 7], abs=0.01)
    assert out.shift_px == 0 and out.shift_mm == 0


def test_tool_point_and_box_px_forms(ct_study):
    x, y = CT_NODULE
    point = run_tool(ct_study, "verify_coordinates", {"point": [(y + 0.5) / 512 * 1000, (x + 0.5) / 512 * 1000],
                                                      "size_px": 14}).output
    assert point.status == "confirmed" and point.center_px == pytest.approx(CT_NODULE, abs=0.01)
    assert point.bbox_px == pytest.approx([x - 6.5, y - 6.5, x + 6.5, y + 6.5], abs=0.01)
    boxed = run_tool(ct_study, "verify_coordinates", {"box_px": [x - 7, y - 7, x + 7, y + 7]}).output
    assert boxed.status == "confirmed" and boxed.center_px == pytest.approx(CT_NODULE, abs=0.01)


def test_tool_adjusts_with_shift_in_mm(ct_study):
    x, y = CT_NODULE
    out = run_tool(ct_study, "verify_coordinates", {"box_px": [x + 12, y - 7, x + 26, y + 7]}).output
    assert out.status == "adjusted", out.reasons
    assert math.dist(out.center_px, CT_NODULE) <= 1.5
    assert out.shift_px == pytest.approx(19, abs=1.5)
    assert out.shift_mm == pytest.approx(out.shift_px * 0.7, abs=0.02)


def test_tool_on_png_has_no_mm(us_study):
    x, y = US_LESION
    r = US_LESION_RADIUS
    out = run_tool(us_study, "verify_coordinates",
                   {"box_2d": _box_2d(x - r, y - r, x + r, y + r, US_SHAPE[1], US_SHAPE[0])}).output
    assert out.status == "confirmed", out.reasons
    assert out.center_px == pytest.approx(US_LESION, abs=0.01)
    assert out.shift_mm is None  # a PNG has no spacing: never invent mm
    far = run_tool(us_study, "verify_coordinates", {"box_px": [150, 370, 170, 390]}).output
    assert far.status == "rejected" and far.reasons


def test_tool_box_2d_is_relative_to_the_downscaled_image(ct_study):
    """With a 256-px model image, box_2d numbers still describe the same place (they are fractions)."""
    ct_study.model_image_max_side = 256
    x, y = CT_NODULE
    out = run_tool(ct_study, "verify_coordinates", {"box_2d": _box_2d(x - 7, y - 7, x + 7, y + 7, 512, 512)}).output
    assert out.center_px == pytest.approx(CT_NODULE, abs=0.01) and out.status == "confirmed"


@pytest.mark.parametrize("arguments", [
    {},
    {"size_px": 10},
    {"box_2d": [1, 2, 3, 4], "point": [5, 5]},
    {"box_2d": [1, 2, 3, 4], "box_px": [1, 2, 3, 4]},
    {"point": [5, 5], "box_px": [1, 2, 3, 4]},
    {"box_2d": [1, 2, 3, 4], "point": [5, 5], "box_px": [1, 2, 3, 4]},
    {"box_2d": "100,200,300,400"},
    {"point": [5, 5], "size_px": 0},
    {"point": [5, 5], "frame": -1},
])
def test_tool_invalid_arguments(ct_study, arguments):
    with pytest.raises(ToolCallError) as caught:
        run_tool(ct_study, "verify_coordinates", arguments)
    assert "verify_coordinates" in caught.value.message and "invalid" in caught.value.message


def test_tool_says_exactly_one(ct_study):
    with pytest.raises(ToolCallError, match="exactly one of box_2d, point or box_px"):
        run_tool(ct_study, "verify_coordinates", {"point": [5, 5], "box_px": [1, 2, 3, 4]})


@pytest.mark.parametrize("arguments", [
    {"box_2d": [100, 200, 1300, 400]},
    {"box_2d": [300, 200, 100, 400]},
    {"box_2d": [100, 200, 300]},
    {"point": [1001, 5]},
    {"box_px": [600, 600, 700, 700]},
    {"box_px": [10, 10, 5, 20]},
    {"box_px": [1, 2, 3]},
])
def test_tool_bad_coordinates(ct_study, arguments):
    with pytest.raises(InvalidCoordinatesError):
        run_tool(ct_study, "verify_coordinates", arguments)


def test_tool_needs_a_study_and_a_valid_frame(ct_study):
    with pytest.raises(NoStudyOpenError):
        run_tool(new_context(LoupeSettings()), "verify_coordinates", {"box_px": [1, 1, 5, 5]})
    with pytest.raises(FrameOutOfRangeError):
        run_tool(ct_study, "verify_coordinates", {"box_px": [1, 1, 5, 5], "frame": 3})


# -- simulation on the evaluation set ---------------------------------------------------------------
def test_simulated_proposals_are_deterministic_and_inside(eval_dir):
    images = read_manifest(eval_dir / "manifest.csv")
    first, again = simulate_proposals(images, 2.0), simulate_proposals(images, 2.0)
    assert [p.box for p in first] == [p.box for p in again]
    assert len(first) == sum(1 for i in images if i.lesions)
    for proposal in first:
        box = proposal.box
        assert 0 <= box.x0 <= box.x1 <= proposal.image.width - 1 and 0 <= box.y0 <= box.y1 <= proposal.image.height - 1
    assert [p.box for p in simulate_proposals(images, 2.0, seed=1)] != [p.box for p in first]


@pytest.mark.slow
@pytest.mark.parametrize("sigma_pct, min_gain", [(2.0, -0.05), (8.0, 0.15)])
def test_verification_rarely_makes_good_proposals_worse(eval_dir, sigma_pct, min_gain):
    """Near-perfect proposals (σ = 2 %) must survive verification; at the vision model's typical
    error (σ = 8 %) verification must also move many onto the lesion, and reject few good ones."""
    images = read_manifest(eval_dir / "manifest.csv")
    results = []
    for proposal in simulate_proposals(images, sigma_pct):
        with open_study(proposal.image.path, limits=StudyLimits(), modality=proposal.image.modality) as study:
            work = prepare_study_frame(study, 0)
            space = ScaleSpace(work)
            verified = verify_location(work, proposal.box, spacing_mm=study.pixel_spacing_mm(0),
                                       candidates=detect_on_work(work, 0, limit=30, space=space), space=space)
        results.append((proposal, verified.center, verified.verification.status == "rejected"))
    overall = next(s for s in score_simulation(results) if s.group == "all")
    assert overall.n >= 100
    assert overall.made_worse <= 0.06, overall
    assert overall.hit_after >= overall.hit_before + min_gain, overall
    assert overall.median_dev_after_pct <= overall.median_dev_before_pct + 0.5, overall
    assert overall.good_rejected <= 0.10, overall


def test_outside_its_competence_the_verifier_keeps_a_proposal_where_it_was_put(eval_dir):
    """The abdominal MR's dark liver mass: on a study the detector is not built for, its idea of a
    more lesion-like blob (a kidney, here) is no ground for moving the proposal."""
    with open_study(eval_dir / "pydicom_overlay" / "examples_overlay.dcm", limits=StudyLimits()) as study:
        analysis = analyse_frame(study, 0)
        mass = BoxPx(x0=110, y0=105, x1=169, y1=164)
        result = verify_location(analysis.work, mass, spacing_mm=study.pixel_spacing_mm(0),
                                 candidates=analysis.detections, space=analysis.space)
    assert analysis.work.outside == "an MR of the abdomen"
    assert result.verification.status == "confirmed" and result.verification.shift_px == 0
    assert any("not for an MR of the abdomen" in reason for reason in result.verification.reasons)
