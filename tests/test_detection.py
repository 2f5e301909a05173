"""The offline classical detector (tools.detection): synthetic images per modality, masks,
series, hostile inputs, and the real evaluation set against the centre-guess baseline.

The synthetic-image helpers here are reused by tests/test_verify.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from scipy import ndimage as ndi

from agent.evaluation.benchmark import run_eval
from tests.conftest import pydicom_file
from tools.detection import masks
from tools.detection.detector import Detection, detect_frame, detect_on_work, detect_volume
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.detection.working import WORKING_SIDE, HeadExtent, prepare, prepare_study_frame
from tools.study import StudyLimits, open_study

# -- synthetic images -------------------------------------------------------------------------------
CT_SIZE = 512
CT_BODY = (256, 256, 220)  # centre x, y, radius of the body disk
CT_LUNGS = ((170, 250, 70, 120), (342, 250, 70, 120))  # centre x, y, semi-axes a, b
CT_NODULE = (170, 250)  # inside the right (image-left) lung
CT_NODULE_RADIUS = 6  # a 12-px round nodule


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:shape[0], 0:shape[1]]


def ct_slice(size: int = CT_SIZE, nodule: tuple[float, float] | None = CT_NODULE, radius: float = CT_NODULE_RADIUS,
             noise_hu: float = 10.0, seed: int = 0) -> np.ndarray:
    """An axial chest CT in HU: air -1000, body disk 40 HU, two lungs -850 HU, a +30 HU nodule.

    Geometry is given for 512 px and scaled to ``size``.
    """
    f = size / CT_SIZE
    yy, xx = _grid((size, size))
    hu = np.full((size, size), -1000.0)
    bx, by, br = (v * f for v in CT_BODY)
    hu[(xx - bx) ** 2 + (yy - by) ** 2 <= br**2] = 40.0
    for cx, cy, a, b in CT_LUNGS:
        hu[((xx - cx * f) / (a * f)) ** 2 + ((yy - cy * f) / (b * f)) ** 2 <= 1] = -850.0
    if nodule is not None and radius > 0:
        hu[(xx - nodule[0] * f) ** 2 + (yy - nodule[1] * f) ** 2 <= (radius * f) ** 2] = 30.0
    rng = np.random.default_rng(seed)
    return (hu + rng.normal(0.0, noise_hu, hu.shape)).astype(np.float32)


def ct_masks(size: int = CT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth (body, lungs) masks of ``ct_slice``."""
    f = size / CT_SIZE
    yy, xx = _grid((size, size))
    bx, by, br = (v * f for v in CT_BODY)
    body = (xx - bx) ** 2 + (yy - by) ** 2 <= br**2
    lungs = np.zeros_like(body)
    for cx, cy, a, b in CT_LUNGS:
        lungs |= ((xx - cx * f) / (a * f)) ** 2 + ((yy - cy * f) / (b * f)) ** 2 <= 1
    return body, lungs


US_SHAPE = (480, 560)
US_LESION = (330, 210)  # x, y
US_LESION_RADIUS = 30  # a 60-px round hypoechoic lesion


def us_image(lesion: tuple[float, float] | None = US_LESION, radius: float = US_LESION_RADIUS, seed: int = 0,
             shape: tuple[int, int] = US_SHAPE) -> np.ndarray:
    """An ultrasound-like image: Rayleigh speckle on grey tissue, black margins, a dark round lesion."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(shape)
    echo = np.full(shape, 120.0)
    if lesion is not None:
        echo[(xx - lesion[0]) ** 2 + (yy - lesion[1]) ** 2 <= radius**2] = 25.0
    image = echo * rng.rayleigh(1.0, shape) / 1.25
    image[:, :30] = 0  # black margins where scanners put text
    image[:, -30:] = 0
    image[:20, :] = 0
    return np.clip(image, 0, 255).astype(np.float32)


def mr_head(lesion: tuple[float, float] | None = (300, 220), radius: float = 14, seed: int = 0) -> np.ndarray:
    """A post-contrast T1-like axial head: skull ring, grey brain, a bright enhancing lesion."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid((512, 512))
    r = np.hypot((xx - 256) / 190.0, (yy - 256) / 230.0)
    image = np.zeros((512, 512))
    image[r <= 1.0] = 180.0  # scalp / skull
    image[r <= 0.92] = 90.0  # brain
    if lesion is not None:
        image[(xx - lesion[0]) ** 2 + (yy - lesion[1]) ** 2 <= radius**2] = 200.0
    return (image + rng.normal(0.0, 6.0, image.shape)).clip(0).astype(np.float32)


def inside(detection: Detection, centre: tuple[float, float], radius: float, slack: float = 1.0) -> bool:
    return math.hypot(detection.x - centre[0], detection.y - centre[1]) <= radius + slack


def _check_sane(detections: list[Detection], shape: tuple[int, int]) -> None:
    rows, cols = shape
    for d in detections:
        assert math.isfinite(d.confidence) and 0.0 <= d.confidence <= 1.0
        assert math.isfinite(d.score) and d.score >= 0.0
        assert math.isfinite(d.x) and math.isfinite(d.y) and d.radius_px > 0
        assert -0.5 <= d.x <= cols - 0.5 and -0.5 <= d.y <= rows - 0.5
        assert 0 <= d.box.x0 <= d.box.x1 <= cols - 1 and 0 <= d.box.y0 <= d.box.y1 <= rows - 1
    assert [d.score for d in detections] == sorted((d.score for d in detections), reverse=True)


# -- per modality ---------------------------------------------------------------------------------
def test_ct_nodule_is_the_top_detection():
    work = prepare(ct_slice(), "CT")
    assert (work.organ, work.polarity, work.scale) == ("lungs", "bright", 1.0)
    detections = detect_on_work(work)
    _check_sane(detections, (CT_SIZE, CT_SIZE))
    top = detections[0]
    assert inside(top, CT_NODULE, CT_NODULE_RADIUS), top
    # CT contrast-to-noise is capped (scoring.CT_CNR_CAP), so a 12-px nodule (sigma ~4.5) gets
    # the calibrated confidence of a blob that size on the dev set (~0.4), not certainty.
    assert top.confidence >= 0.3
    assert 3 <= top.radius_px <= 12  # the size of a 12-px nodule, roughly
    assert top.box.contains(*CT_NODULE)
    assert top.label == "focal nodular opacity in the lung field"


def test_ct_juxtapleural_ground_glass_nodule_outranks_vessel_cross_sections():
    # A -550 HU nodule pressed against the lateral chest wall of the left lung (centred on the
    # pleura, so half of it sits on the wall), and small +30 HU vessel dots in the parenchyma.
    hu = ct_slice(nodule=None)
    yy, xx = _grid(hu.shape)
    wall_x, wall_y = CT_LUNGS[1][0] + CT_LUNGS[1][2], CT_LUNGS[1][1]
    nodule = (xx - wall_x) ** 2 + (yy - wall_y) ** 2 <= 12**2
    lung = ((xx - CT_LUNGS[1][0]) / CT_LUNGS[1][2]) ** 2 + ((yy - CT_LUNGS[1][1]) / CT_LUNGS[1][3]) ** 2 <= 1
    hu[nodule & lung] = -550.0
    for vx, vy in ((150, 200), (190, 300), (320, 190), (350, 320), (330, 250)):
        hu[(xx - vx) ** 2 + (yy - vy) ** 2 <= 2.5**2] = 30.0
    work = prepare(hu, "CT")
    assert work.search[wall_y, wall_x - 4]  # the lung mask rolls over the nodule
    top = detect_on_work(work)[0]
    assert math.hypot(top.x - (wall_x - 6), top.y - wall_y) <= 10, top


def test_ct_without_nodule_is_not_an_anomaly():
    detections = detect_on_work(prepare(ct_slice(nodule=None), "CT"))
    assert max((d.confidence for d in detections), default=0.0) < ANOMALY_THRESHOLD


def test_ct_nodule_found_after_downscaling():
    """A 1024² slice is searched at 512 px; the detection comes back in native pixels."""
    work = prepare(ct_slice(size=1024), "CT")
    assert work.scale == pytest.approx(WORKING_SIDE / 1024) and work.image.shape == (512, 512)
    top = detect_on_work(work)[0]
    assert inside(top, (CT_NODULE[0] * 2, CT_NODULE[1] * 2), CT_NODULE_RADIUS * 2, slack=2.0), top


def test_ultrasound_dark_lesion_is_the_top_detection():
    work = prepare(us_image(), "US")
    assert (work.organ, work.polarity) == ("sector", "dark")
    detections = detect_on_work(work)
    _check_sane(detections, US_SHAPE)
    top = detections[0]
    assert inside(top, US_LESION, US_LESION_RADIUS, slack=0.0), top
    assert top.label == "hypoechoic mass"
    # The lesion stands out from the speckle maxima by a wide margin.
    assert top.confidence > 10 * detections[1].confidence


def test_ultrasound_lesion_is_more_confident_than_speckle_alone():
    with_lesion = detect_on_work(prepare(us_image(), "US"))[0].confidence
    speckle = max((d.confidence for d in detect_on_work(prepare(us_image(lesion=None), "US"))), default=0.0)
    assert speckle < ANOMALY_THRESHOLD
    assert with_lesion > speckle + 0.2


@pytest.mark.parametrize("seed", [0, 1])
def test_elongated_lesion_is_centred_by_the_gaussian_fit_not_the_blob_peak(seed):
    """A 150 x 60 px hypoechoic lesion: the scale-space peak sits ~24 px along its long axis (a
    round blob of one of a few sizes fits best off-centre); the reported centre is the fit's."""
    centre = (300, 230)
    image = us_image(lesion=None, seed=seed)
    yy, xx = _grid(US_SHAPE)
    lesion = ((xx - centre[0]) / 75) ** 2 + ((yy - centre[1]) / 30) ** 2 <= 1
    image[lesion] = (25 * np.random.default_rng(seed + 10).rayleigh(1.0, US_SHAPE) / 1.25)[lesion]
    work = prepare(image, "US")
    peak, fitted = detect_on_work(work, refine=0)[0], detect_on_work(work)[0]
    assert math.hypot(peak.x - centre[0], peak.y - centre[1]) > 15  # what the fit corrects
    assert inside(fitted, centre, 8), fitted
    assert (fitted.score, fitted.radius_px) == (peak.score, peak.radius_px)
    assert fitted.box.center == pytest.approx((fitted.x, fitted.y), abs=1.0)


def test_ultrasound_dark_band_at_the_skin_line_ranks_below_a_lesion_beneath_it():
    """A dark blob reaching up to the top of the imaged field (skin, subcutaneous fat,
    reverberation) is less lesion-like than an equal one beneath the skin line."""
    image = us_image(lesion=(380, 300), radius=22, seed=7)
    yy, xx = _grid(image.shape)
    # As dark and a little larger (without the damping it ranks first), but at the top.
    image[(np.hypot(xx - 180, yy - 50) <= 28) & (yy >= 20)] *= 25.0 / 120.0
    work = prepare(image, "US")
    top = detect_on_work(work)[0]
    assert inside(top, (380, 300), 22), top
    assert work.sector_rows is not None and work.sector_rows[0] <= 50


def test_mr_enhancing_lesion_is_the_top_detection():
    work = prepare(mr_head(), "MR")
    assert work.organ == "brain"
    top = detect_on_work(work)[0]
    assert inside(top, (300, 220), 14), top


def test_large_textured_lesion_is_found_at_its_own_scale():
    """Bright speckle inside a large lesion must not hide the lesion: candidates are scale-space
    maxima per level, so the whole lesion is a candidate and outranks the bumps of its texture."""
    centre, radius = (260, 240), 45
    image = mr_head(lesion=None, seed=1)
    yy, xx = _grid(image.shape)
    lesion = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    texture = np.random.default_rng(2).random(image.shape) < 0.08  # dense bright dots
    image[lesion] = 120.0
    image[lesion & ndi.binary_dilation(texture, iterations=1)] = 255.0
    top = detect_on_work(prepare(image, "MR"))[0]
    assert inside(top, centre, radius * 0.5), top
    assert top.radius_px >= 0.5 * radius


def test_mr_blob_among_air_and_bone_ranks_below_one_in_brain():
    """Two equal enhancing blobs: the one whose surroundings are dark (a sinus, the skull base)
    is less lesion-like than the one surrounded by brain tissue, although it is more central
    and its dark surroundings give it more raw contrast (without the dark-ring term it wins)."""
    image = mr_head(lesion=(185, 256), radius=12, seed=4)
    yy, xx = _grid(image.shape)
    sinus = (300, 256)
    image[(np.hypot(xx - sinus[0], yy - sinus[1]) > 18) & (np.hypot(xx - sinus[0], yy - sinus[1]) <= 30)] = 5.0
    image[np.hypot(xx - sinus[0], yy - sinus[1]) <= 12] = 200.0
    detections = detect_on_work(prepare(image, "MR"))
    assert inside(detections[0], (185, 256), 12), detections[0]
    in_sinus = [d for d in detections if inside(d, sinus, 12)]
    assert in_sinus and in_sinus[0].score < detections[0].score


def mr_head_and_neck(blobs: list[tuple[float, float]], radius: float = 12, seed: int = 5) -> np.ndarray:
    """A sagittal/coronal-like T1 view: the head in the upper part, the neck down to the image's
    bottom edge, and equal bright blobs at ``blobs``."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid((512, 512))
    image = np.zeros((512, 512))
    image[np.hypot((xx - 256) / 200.0, (yy - 230) / 210.0) <= 1.0] = 90.0
    image[(yy >= 230) & (np.abs(xx - 256) <= 110)] = 90.0  # the neck
    for x, y in blobs:
        image[np.hypot(xx - x, yy - y) <= radius] = 200.0
    return (image + rng.normal(0.0, 6.0, image.shape)).clip(0).astype(np.float32)


def test_head_extent_sees_the_neck_only_when_the_body_reaches_the_bottom_edge():
    with_neck = prepare(mr_head_and_neck([]), "MR").head_extent
    axial = prepare(mr_head(lesion=None), "MR").head_extent
    assert with_neck is not None and with_neck.includes_neck
    assert axial is not None and not axial.includes_neck
    assert with_neck.depth(with_neck.top) == 0.0 and with_neck.depth(with_neck.bottom) == 1.0
    assert HeadExtent.of(np.zeros((64, 64), dtype=bool)) is None
    assert prepare(ct_slice(), "CT").head_extent is None  # only head MR has one


def test_mr_blob_below_the_skull_base_ranks_below_one_in_the_brain():
    """Face and neck are bright on post-contrast T1: in a view that includes the neck, an equal
    blob low in the image (below the skull base) ranks below one in the cranium, although it is
    nearer the image centre."""
    brain_blob, low_blob = (180, 140), (256, 400)
    detections = detect_on_work(prepare(mr_head_and_neck([brain_blob, low_blob]), "MR"))
    assert inside(detections[0], brain_blob, 12), detections[0]
    low = [d for d in detections if inside(d, low_blob, 12)]
    assert low and low[0].score < 0.5 * detections[0].score


@pytest.mark.parametrize(("body_part", "organ"), [(None, "brain"), ("HEAD", "brain"), ("brain", "brain"),
                                                   ("BRAIN W/WO", "brain"), ("HEAD_NECK", "brain"), ("  ", "brain"),
                                                   ("ABDOMEN", "body"), ("KNEE", "body"), ("NECK", "body")])
def test_mr_is_searched_inside_a_brain_mask_only_for_a_head(body_part, organ):
    work = prepare(mr_head(), "MR", body_part)
    assert work.organ == organ
    assert (work.head_extent is not None) == (organ == "brain")


@pytest.mark.parametrize(("modality", "body_part", "organ", "label"), [
    ("DX", None, "lungs", "focal opacity in the lung field"),
    ("DX", "CHEST", "lungs", "focal opacity in the lung field"),
    ("CR", "Thorax", "lungs", "focal opacity in the lung field"),
    ("DX", "CHEST PA", "lungs", "focal opacity in the lung field"),  # scanners write it freely
    ("DX", "Port Chest", "lungs", "focal opacity in the lung field"),
    ("DX", "HAND", "body", "region for review"),  # not what the detector is built for
    ("CR", "KNEE", "body", "region for review"),
    ("DX", "THORACIC SPINE", "body", "region for review"),
])
def test_radiographs_are_searched_for_lung_fields_only_when_they_show_a_chest(eval_dir, modality, body_part,
                                                                              organ, label):
    """A radiograph coded as a hand or knee is searched over the body, and its findings do not
    claim a lung field; an uncoded one is taken as a chest, the commonest."""
    with open_study(eval_dir / "nih_cxr14" / "00012592_005.png", limits=StudyLimits(), modality="DX") as study:
        values = np.asarray(study.physical(0), dtype=np.float32)
    work = prepare(values, modality, body_part)
    assert work.organ == organ
    assert {d.label for d in detect_on_work(work, refine=0)} == {label}


def test_body_mr_from_its_dicom_header_is_not_searched_as_a_brain(eval_dir):
    with open_study(eval_dir / "pydicom_overlay" / "examples_overlay.dcm", limits=StudyLimits()) as study:
        assert study.safe.body_part == "ABDOMEN"
        assert prepare_study_frame(study, 0).organ == "body"


@pytest.mark.parametrize(("name", "nodule", "device"), [
    # A pacemaker generator over the left lung: denser than any tissue in the lung fields.
    ("00012592_005.png", (771, 527, 858, 593), (764, 316)),
    # An ECG electrode seen en face, a bright ring with a dark centre: its rim's edge is sharp.
    ("00010959_010.png", (212, 490, 291, 551), (728, 384)),
])
def test_metal_is_not_the_top_finding_on_a_chest_radiograph(eval_dir, name, nodule, device):
    """NIH ChestX-ray14 images where a device was the strongest blob in the lung fields; the
    marked nodule (the manifest's box) is found first instead, and the device not in the top 5."""
    with open_study(eval_dir / "nih_cxr14" / name, limits=StudyLimits(), modality="DX") as study:
        detections = detect_on_work(prepare_study_frame(study, 0))
    top = detections[0]
    assert nodule[0] <= top.x <= nodule[2] and nodule[1] <= top.y <= nodule[3], top
    assert all(math.hypot(d.x - device[0], d.y - device[1]) > 60 for d in detections[:5])


def _paired_blobs(image: np.ndarray, offset: float = 70, row: float = 300, radius: float = 15) -> np.ndarray:
    """Two equal bright blobs mirrored across the head's midline (column 256): paired anatomy."""
    yy, xx = _grid(image.shape)
    for cx in (256 - offset, 256 + offset):
        blob = (xx - cx) ** 2 + (yy - row) ** 2 <= radius**2
        image[blob] = 200.0 + np.random.default_rng(1).normal(0.0, 6.0, image.shape)[blob]
    return image


def test_mr_blobs_mirrored_across_the_midline_rank_below_a_single_lesion():
    """Larger than the lesion, the pair would outrank it; each is the other's mirror image, so
    they are taken for symmetric anatomy and the one-sided lesion comes first."""
    work = prepare(_paired_blobs(mr_head(lesion=(290, 200), radius=12, seed=3)), "MR")
    assert work.midline_x == pytest.approx(256, abs=2)
    detections = detect_on_work(work)
    assert inside(detections[0], (290, 200), 12), detections[0]
    assert {(round(d.x / 10), round(d.y / 10)) for d in detections[1:3]} == {(19, 30), (33, 30)}
    # A blob on the midline is its own mirror image, not a twin: it keeps its score and comes first.
    lone = _paired_blobs(mr_head(lesion=(290, 200), radius=12, seed=3), offset=0)
    assert inside(detect_on_work(prepare(lone, "MR"))[0], (256, 300), 15)


def test_midline_is_known_only_for_a_head_outline_that_matches_its_mirror_image():
    assert prepare(mr_head(), "MR").midline_x == pytest.approx(256, abs=2)
    profile = mr_head(lesion=None)
    profile[:, :180] = 0  # a lopsided outline, as a sagittal view with the face on one side
    profile[100:300, 180:230] = 180.0
    assert prepare(profile, "MR").midline_x is None
    assert prepare(us_image(), "US").midline_x is None


def test_mr_skull_base_damping_leaves_axial_views_alone():
    """Without a neck in view the lower part of the image is brain (occipital lobes)."""
    image = mr_head(lesion=(256, 400), radius=14, seed=6)
    top = detect_on_work(prepare(image, "MR"))[0]
    assert inside(top, (256, 400), 14), top


@pytest.mark.parametrize("modality", ["CT", "MR", "US", "DX", None])
@pytest.mark.parametrize("kind", ["uniform", "noise"])
def test_uniform_or_noise_only_is_not_an_anomaly(modality, kind):
    rng = np.random.default_rng(3)
    base = -700.0 if modality == "CT" else 100.0
    image = np.full((300, 340), base) if kind == "uniform" else rng.normal(base, 10.0, (300, 340))
    detections = detect_on_work(prepare(image.astype(np.float32), modality))
    _check_sane(detections, (300, 340))
    assert max((d.confidence for d in detections), default=0.0) < ANOMALY_THRESHOLD


# -- masks -----------------------------------------------------------------------------------------
def test_ct_lung_mask_covers_lungs_and_excludes_outside_air():
    body, lungs = ct_masks()
    work = prepare(ct_slice(), "CT")
    search = work.search
    covered = (search & lungs).sum() / lungs.sum()
    assert covered >= 0.95
    assert not (search & ~body).any(), "the lung mask must not include the air around the body"
    # Mostly the lungs: little of the soft tissue between them.
    assert (search & ~lungs).sum() <= 0.05 * lungs.sum()
    # The nodule (bright, excluded by the air threshold) is filled into the lung mask.
    assert search[CT_NODULE[1], CT_NODULE[0]]
    # The body mask is the body disk.
    assert (work.body & body).sum() / body.sum() >= 0.98
    assert (work.body & ~body).sum() <= 0.02 * body.sum()


def test_ct_lung_mask_on_hu_directly():
    body, lungs = ct_masks()
    mask = masks.ct_lung_mask(ct_slice(nodule=None))
    assert (mask & lungs).sum() / lungs.sum() >= 0.95 and not (mask & ~body).any()
    assert ndi.label(mask)[1] == 2  # two separate lungs


def test_ct_lung_mask_of_airless_slice_is_empty_and_search_falls_back_to_body():
    hu = np.full((256, 256), -1000.0, np.float32)
    hu[40:216, 40:216] = 40.0  # abdomen-like: no lungs
    assert not masks.ct_lung_mask(hu).any()
    work = prepare(hu, "CT")
    assert work.organ == "body" and work.search.any()
    # Not "lung field", and not an anomaly: a CT without lungs is not what the detector is built for.
    assert work.outside == "a CT without lung fields"
    assert {d.label for d in detect_on_work(work, refine=0)} == {"region for review"}


def test_lung_joined_to_the_outside_by_a_thin_gap_is_in_the_thorax_mask():
    """A dark field inside a body outline: filled when the outline is whole or broken by a gap
    a few px wide, but not when it opens widely (the outside of the body is not a lung)."""
    yy, xx = _grid((512, 512))
    outline = (np.hypot(xx - 256, yy - 256) <= 200) & ~(np.hypot(xx - 256, yy - 256) <= 150)
    for gap, filled in ((0, True), (4, True), (60, False)):
        body = outline & ~((np.abs(xx - 256) <= gap / 2) & (yy < 256)) if gap else outline
        thorax = masks.thorax_mask(body)
        assert thorax[256, 256] == filled, gap
        assert not thorax[5, 5] and (thorax | ~body).all()


def test_convex_hull_fills_notches_and_keeps_degenerate_masks():
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:50, 5:70] = True
    notched = mask.copy()
    notched[20:40, 5:30] = False  # a notch open to the left edge of the rectangle
    assert (masks.convex_hull(notched) == mask).all()
    empty, line = np.zeros((9, 9), dtype=bool), np.eye(9, dtype=bool)
    assert not masks.convex_hull(empty).any() and (masks.convex_hull(line) == line).all()


def test_radiograph_lung_reaching_the_outline_through_a_gap_is_searched(eval_dir):
    """NIH 00001075_024: the right lung field joins the outside through a thin dark gap above it,
    so the body threshold and hole filling left the whole lung, and the hilar mass in it, out of
    the search; the mass is now among the first three findings."""
    mass = (290, 326, 444, 524)
    with open_study(eval_dir / "nih_cxr14" / "00001075_024.png", limits=StudyLimits(), modality="DX") as study:
        work = prepare_study_frame(study, 0)
    x, y = work.to_working((mass[0] + mass[2]) / 2, (mass[1] + mass[3]) / 2)
    assert work.body[round(y), round(x)] and work.search[round(y), round(x)]
    detections = detect_on_work(work)
    assert any(mass[0] <= d.x <= mass[2] and mass[1] <= d.y <= mass[3] for d in detections[:3])


def test_ultrasound_mask_excludes_black_margins_and_borders():
    work = prepare(us_image(), "US")
    # Coarse by design (smoothing and closing may bleed a few px into the black bands), but the
    # bands themselves and the image border stay out.
    # (The mask is at working resolution: 512 px wide here.)
    assert work.scale == pytest.approx(512 / US_SHAPE[1])
    rows, cols = work.search.shape
    band, top, bleed = round(30 * work.scale), round(20 * work.scale), 8
    assert not work.search[:, :band - bleed].any() and not work.search[:, cols - band + bleed:].any()
    assert not work.search[:top - bleed].any() and not work.search[rows - rows // 20:].any()
    middle = work.search[rows // 4: 3 * rows // 4, cols // 4: 3 * cols // 4]
    assert middle.all()


def test_brain_mask_is_inside_the_head():
    work = prepare(mr_head(lesion=None), "MR")
    yy, xx = _grid((512, 512))
    head = np.hypot((xx - 256) / 190.0, (yy - 256) / 230.0) <= 1.0
    assert not (work.search & ~head).any()
    assert work.search[256, 256] and not work.search[256, 256 + 189]  # the skull edge is dropped
    assert work.search.sum() >= 0.6 * head.sum()


def test_foreground_mask_of_blank_image_does_not_fail():
    for image in (np.zeros((64, 64), np.float32), np.ones((64, 64), np.float32)):
        mask = masks.foreground_mask(image)
        assert mask.shape == image.shape and mask.dtype == bool


# -- series ----------------------------------------------------------------------------------------
NODULE_RADII = [0, 3, 5, 8, 5, 2]  # per slice, superior to inferior; largest on slice 3


def _write_ct_series(folder: Path, size: int = 256) -> None:
    """CT_small as template: 256² slices along z, shuffled instance numbers and file names."""
    template = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    series_uid = generate_uid()
    z0 = float(template.ImagePositionPatient[2])
    folder.mkdir(parents=True)
    order = [4, 0, 5, 2, 1, 3]
    for file_index, i in enumerate(order):
        ds = template.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = len(NODULE_RADII) - i  # reversed: ordering must follow geometry
        ds.ImagePositionPatient = [template.ImagePositionPatient[0], template.ImagePositionPatient[1], z0 + 2.5 * i]
        ds.Rows = ds.Columns = size
        # Nodule radius in 512-px units: size/512 scales it back to this slice's pixels.
        radius = NODULE_RADII[i] * CT_SIZE / size
        hu = ct_slice(size=size, radius=radius, seed=i)
        stored = np.round(hu - float(template.RescaleIntercept)).astype(np.int16)
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"IM{file_index:04d}", enforce_file_format=True)


def test_detect_volume_reports_the_slice_where_the_nodule_is_largest(tmp_path):
    _write_ct_series(tmp_path / "series")
    with open_study(tmp_path / "series") as study:
        assert study.frame_count == len(NODULE_RADII) and study.modality == "CT"
        # Which frame holds the largest nodule, measured on the loaded pixels (not assumed).
        cx, cy = CT_NODULE[0] / 2, CT_NODULE[1] / 2
        window = (slice(int(cy) - 12, int(cy) + 13), slice(int(cx) - 12, int(cx) + 13))
        areas = [int((study.physical(f)[window] > -400).sum()) for f in range(study.frame_count)]
        largest = int(np.argmax(areas))
        assert areas[largest] > areas[(largest + 1) % len(areas)]
        detections = detect_volume(study)
        top = detections[0]
        assert top.frame == largest, (top, areas)
        assert inside(top, (cx, cy), 4, slack=1.5), top
        assert top.confidence >= ANOMALY_THRESHOLD
        # The same nodule on neighbouring slices is merged into the one detection.
        near = [d for d in detections if math.hypot(d.x - cx, d.y - cy) <= 4 and abs(d.frame - largest) <= 3]
        assert near == [top]
        # The nodule-free slice alone is not called anomalous.
        empty = areas.index(min(areas))
        assert max((d.confidence for d in detect_frame(study, empty)), default=0.0) < ANOMALY_THRESHOLD


# -- hostile inputs ---------------------------------------------------------------------------------
def _spike() -> np.ndarray:
    image = np.zeros((200, 200), np.float32)
    image[100, 100] = 1e9
    image[10, 190] = -1e9
    return image


HOSTILE = {
    "all-zero": lambda: np.zeros((128, 128), np.float32),
    "constant": lambda: np.full((100, 140), 7.0, np.float32),
    "constant-negative": lambda: np.full((64, 64), -3000.0, np.float32),
    "tiny-8x8": lambda: np.random.default_rng(0).normal(0, 50, (8, 8)).astype(np.float32),
    "tiny-constant-8x8": lambda: np.ones((8, 8), np.float32),
    "one-pixel": lambda: np.ones((1, 1), np.float32),
    "thin-strip": lambda: np.random.default_rng(1).normal(0, 1, (3, 600)).astype(np.float32),
    "contrast-spike": _spike,
    "huge-values": lambda: np.full((64, 64), 1e30, np.float32),
}

@pytest.mark.parametrize("modality", ["CT", "MR", "US", "DX", None])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_inputs_do_not_raise(name, modality):
    image = HOSTILE[name]()
    work = prepare(image, modality)
    assert np.isfinite(work.image).all() and work.image.min() >= 0 and work.image.max() <= 1
    assert work.search.shape == work.image.shape
    detections = detect_on_work(work)
    _check_sane(detections, image.shape)


def test_small_images_never_crash():
    """Below ~120 px (CT), ~72 px (MR/DX), ~36 px (US) the finest blob scale is under a pixel
    across; the detector's boxes must still be valid (at least one pixel)."""
    for modality in ("CT", "MR", "US", "DX"):
        for size in (8, 24, 48, 64, 119):
            for seed in range(2):
                image = np.random.default_rng(seed).normal(0, 50, (size, size)).astype(np.float32)
                _check_sane(detect_on_work(prepare(image, modality)), image.shape)


# -- real data -------------------------------------------------------------------------------------
def _overall(rows: list[dict]) -> dict:
    return next(r for r in rows if r["group"] == "all")


@pytest.mark.slow
def test_detector_beats_centre_guess_on_eval_set(eval_dir):
    report = run_eval(eval_dir / "manifest.csv", limits=StudyLimits())
    detector, baseline = _overall(report.data["detector"]), _overall(report.data["baseline"])
    assert report.data["unreadable"] == []
    assert detector["n"] == baseline["n"] >= 100
    assert detector["hit_at_1"] >= baseline["hit_at_1"] + 0.15, report.text
    assert detector["hit_at_3"] >= detector["hit_at_1"]
    assert detector["median_dev_pct"] < baseline["median_dev_pct"], report.text
    # The detector's confidences are honest on normal ultrasound: few flagged.
    assert detector["false_positive_rate"] is not None and detector["false_positive_rate"] <= 0.5
    # The baseline numbers of evaluation.md: centre guess hit@1 .16–.18 overall.
    assert 0.1 <= baseline["hit_at_1"] <= 0.25
    per_group = {r["group"]: r for r in report.data["detector"]}
    assert per_group["busi"]["hit_at_1"] >= 0.5 and per_group["figshare_brain_mri"]["hit_at_1"] >= 0.55


def test_monochrome1_radiographs_are_searched_as_shown():
    """Computed radiography stores dense tissue as low values (MONOCHROME1): the detector must
    see the film as the screen shows it (bright bone and opacities, dark lungs), not inverted."""
    from scipy import ndimage as ndi

    with open_study(pydicom_file("RG1_UNCI.dcm")) as study:
        assert study.safe.photometric == "MONOCHROME1"
        work = prepare_study_frame(study, 0)
        shown = study.display(0).astype(np.float32)
    shown = ndi.zoom(shown, (work.image.shape[0] / shown.shape[0], work.image.shape[1] / shown.shape[1]), order=1)
    assert np.corrcoef(work.image.ravel(), shown.ravel())[0, 1] > 0.9
    assert work.image[work.search].mean() < np.median(work.image[work.body])  # the lungs are the darker part
