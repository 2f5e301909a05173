"""fit_gaussian: the 2-D fit on synthetic lesions, its degenerate cases, positional uncertainty,
the probability map, and the tool end to end on the shared MR liver lesion and on PNG studies."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from tests.conftest import EVAL_DIR
from tools.context import ToolContext
from tools.coordinates import BoxPx
from tools.detection.working import expected_polarity
from tools.errors import InvalidCoordinatesError, NoStudyOpenError
from tools.findings import Finding, GaussianFit
from tools.fit_gaussian import FitGaussianInput, FitGaussianOutput, fit_gaussian
from tools.gaussian.fit import FLAT_NOTE, fit_gaussian_2d
from tools.gaussian.measurement import FWHM_PER_SIGMA
from tools.gaussian.uncertainty import PositionalUncertainty, positional_uncertainty, probability_map
from tools.load_study import LoadStudyInput, load_study
from tools.registry import Tool


def gaussian_image(shape: tuple[int, int], cx: float, cy: float, sx: float, sy: float, angle_deg: float,
                   amplitude: float = 100.0, background: float = 50.0, noise: float = 0.0,
                   seed: int = 0) -> np.ndarray:
    """A rotated Gaussian (sx along angle_deg from +x) on a constant background, plus noise."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    theta = math.radians(angle_deg)
    u = (x - cx) * math.cos(theta) + (y - cy) * math.sin(theta)
    v = -(x - cx) * math.sin(theta) + (y - cy) * math.cos(theta)
    image = background + amplitude * np.exp(-0.5 * (u * u / sx**2 + v * v / sy**2))
    if noise:
        image = image + np.random.default_rng(seed).normal(0.0, noise, shape)
    return image.astype(np.float32)


def angle_difference(a: float, b: float) -> float:
    """Difference between two axis angles (mod 180), in degrees."""
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


def assert_finite(fit: GaussianFit) -> None:
    numbers = [*fit.center_px, fit.sigma_major_px, fit.sigma_minor_px, fit.angle_deg, fit.fwhm_major_px,
               fit.fwhm_minor_px, fit.amplitude, fit.background, fit.r_squared]
    numbers += [v for v in (fit.fwhm_major_mm, fit.fwhm_minor_mm) if v is not None]
    assert all(math.isfinite(v) for v in numbers), fit
    assert fit.sigma_major_px >= fit.sigma_minor_px >= 0.5 - 1e-9
    assert -90.0 < fit.angle_deg <= 90.0
    assert 0.0 <= fit.r_squared <= 1.0
    assert fit.amplitude >= 0.0


# -- recovery of known parameters ----------------------------------------------------------------
RECOVERY_CASES = [
    # shape, centre, sigma major/minor, angle, background, noise, box side
    ((512, 512), (200.3, 150.7), (8.0, 4.0), 30.0, 50.0, 2.0, 40),
    ((512, 512), (300.6, 250.2), (3.0, 2.0), -60.0, 50.0, 2.0, 16),
    ((512, 512), (120.25, 380.8), (15.0, 5.0), 80.0, -1000.0, 5.0, 70),
    ((256, 384), (190.4, 100.1), (6.0, 6.0 * 0.6), -15.0, 400.0, 3.0, 36),
    ((2048, 2048), (1000.3, 900.7), (60.0, 30.0), -50.0, 50.0, 5.0, 300),
]


@pytest.mark.parametrize(("shape", "centre", "sigmas", "angle", "background", "noise", "side"), RECOVERY_CASES)
def test_recovers_a_rotated_anisotropic_gaussian(shape, centre, sigmas, angle, background, noise, side):
    image = gaussian_image(shape, *centre, *sigmas, angle, background=background, noise=noise, seed=side)
    box = BoxPx.around(round(centre[0]) + 1, round(centre[1]) - 1, side, side)  # a slightly off box
    fit = fit_gaussian_2d(image, box)
    assert fit.converged and fit.note is None
    assert math.dist(fit.center_px, centre) < 0.2
    assert fit.sigma_major_px == pytest.approx(sigmas[0], rel=0.05)
    assert fit.sigma_minor_px == pytest.approx(sigmas[1], rel=0.05)
    assert angle_difference(fit.angle_deg, angle) < 3.0
    assert fit.fwhm_major_px == pytest.approx(FWHM_PER_SIGMA * fit.sigma_major_px)
    assert fit.amplitude == pytest.approx(100.0, rel=0.05)
    assert fit.background == pytest.approx(background, abs=3 * noise)
    assert fit.r_squared > 0.8
    assert fit.fwhm_major_mm is None and fit.fwhm_minor_mm is None


def test_integer_images_and_a_gradient_background():
    image = gaussian_image((200, 200), 90.4, 110.6, 7.0, 5.0, 20.0, background=300.0, noise=1.5)
    image += np.linspace(0, 60, 200, dtype=np.float32)[None, :]  # tissue brightening to the right
    fit = fit_gaussian_2d(np.round(image).astype(np.int16), BoxPx.around(90, 110, 36, 36))
    assert fit.converged
    assert math.dist(fit.center_px, (90.4, 110.6)) < 0.3
    assert fit.sigma_major_px == pytest.approx(7.0, rel=0.05)


def test_dark_polarity_fits_a_dip_and_reports_its_depth():
    image = gaussian_image((300, 300), 140.6, 160.3, 9.0, 5.0, -35.0, amplitude=-80.0, background=200.0,
                           noise=2.0)
    box = BoxPx.around(141, 160, 40, 40)
    fit = fit_gaussian_2d(image, box, polarity="dark")
    assert fit.converged
    assert math.dist(fit.center_px, (140.6, 160.3)) < 0.2
    assert fit.sigma_major_px == pytest.approx(9.0, rel=0.05)
    assert fit.sigma_minor_px == pytest.approx(5.0, rel=0.05)
    assert angle_difference(fit.angle_deg, -35.0) < 3.0
    assert fit.amplitude == pytest.approx(80.0, rel=0.05)  # the depth, positive
    assert fit.background == pytest.approx(200.0, abs=5.0)
    wrong = fit_gaussian_2d(image, box, polarity="bright")  # no bright peak in a dip
    assert_finite(wrong)
    assert not (wrong.converged and wrong.note is None and wrong.amplitude > 40)


@pytest.mark.parametrize(("angle", "major_mm_per_px", "minor_mm_per_px"), [
    (0.0, 2.0, 0.5),    # major along x: column spacing
    (90.0, 0.5, 2.0),   # major along y: row spacing
    (45.0, math.hypot(2.0, 0.5) / math.sqrt(2), math.hypot(2.0, 0.5) / math.sqrt(2)),
    (30.0, math.hypot(2.0 * math.cos(math.radians(30)), 0.5 * math.sin(math.radians(30))),
     math.hypot(2.0 * math.sin(math.radians(30)), 0.5 * math.cos(math.radians(30)))),
])
def test_mm_sizes_with_anisotropic_spacing(angle, major_mm_per_px, minor_mm_per_px):
    image = gaussian_image((200, 200), 100.2, 99.6, 8.0, 4.0, angle, noise=1.0)
    fit = fit_gaussian_2d(image, BoxPx.around(100, 100, 40, 40), spacing_mm=(0.5, 2.0))  # (row, column)
    assert fit.converged
    assert fit.fwhm_major_mm == pytest.approx(fit.fwhm_major_px * major_mm_per_px, rel=0.03)
    assert fit.fwhm_minor_mm == pytest.approx(fit.fwhm_minor_px * minor_mm_per_px, rel=0.03)
    assert fit.fwhm_major_px == pytest.approx(FWHM_PER_SIGMA * 8.0, rel=0.05)


# -- degenerate cases ----------------------------------------------------------------------------
def test_flat_region_is_not_converged_and_says_why():
    fit = fit_gaussian_2d(np.full((64, 64), 37.0, np.float32), BoxPx(x0=20, y0=20, x1=30, y1=34))
    assert not fit.converged and fit.note == FLAT_NOTE
    assert fit.center_px == (25.0, 27.0)
    assert fit.amplitude == 0.0 and fit.background == 37.0
    assert_finite(fit)


def test_flat_region_in_a_dark_fit_keeps_its_background_sign():
    fit = fit_gaussian_2d(np.full((32, 32), -5.0), BoxPx(x0=10, y0=10, x1=14, y1=14), polarity="dark")
    assert fit.note == FLAT_NOTE and fit.background == -5.0


def test_box_at_the_image_edge_is_clipped_and_still_fitted():
    image = gaussian_image((128, 160), 4.3, 5.6, 4.0, 3.0, 10.0, noise=1.0)
    fit = fit_gaussian_2d(image, BoxPx(x0=-10, y0=-8, x1=14, y1=16))
    assert fit.converged
    assert math.dist(fit.center_px, (4.3, 5.6)) < 0.3
    assert fit.sigma_major_px == pytest.approx(4.0, rel=0.1)
    right = gaussian_image((128, 160), 157.5, 125.2, 3.0, 3.0, 0.0, noise=1.0)
    fit = fit_gaussian_2d(right, BoxPx(x0=150, y0=118, x1=170, y1=140))
    assert fit.converged and math.dist(fit.center_px, (157.5, 125.2)) < 0.3


@pytest.mark.parametrize(("side", "sigma"), [(1, 0.6), (2, 0.8), (3, 1.0)])
def test_tiny_lesions(side, sigma):
    image = gaussian_image((64, 64), 30.2, 31.7, sigma, sigma, 0.0, noise=1.0)
    box = BoxPx.around(30.0, 31.5, side, side)
    fit = fit_gaussian_2d(image, box)
    assert_finite(fit)
    assert fit.converged
    assert math.dist(fit.center_px, (30.2, 31.7)) < 0.3
    assert fit.sigma_major_px == pytest.approx(sigma, rel=0.2)


@pytest.mark.parametrize("box", [
    BoxPx(x0=100, y0=10, x1=110, y1=20),
    BoxPx(x0=-20, y0=-20, x1=-1, y1=-1),
    BoxPx(x0=10, y0=64, x1=20, y1=70),
])
def test_a_box_outside_the_image_raises(box):
    with pytest.raises(InvalidCoordinatesError, match="entirely outside the 64 x 64 pixel image"):
        fit_gaussian_2d(np.zeros((64, 64)), box)


def test_non_finite_box_raises():
    with pytest.raises(InvalidCoordinatesError, match="not a finite number"):
        fit_gaussian_2d(np.zeros((64, 64)), BoxPx(x0=-math.inf, y0=0, x1=10, y1=10))


def test_not_a_2d_array_raises():
    with pytest.raises(ValueError, match="2-D"):
        fit_gaussian_2d(np.zeros((8, 8, 3)), BoxPx(x0=1, y0=1, x1=3, y1=3))


def test_non_finite_pixels_are_ignored():
    image = gaussian_image((200, 200), 100.4, 99.3, 6.0, 4.0, 50.0, noise=1.0).astype(np.float64)
    holes = np.random.default_rng(3).random(image.shape) < 0.1
    image[holes] = np.nan
    image[101, 100] = np.inf
    image[95, 104] = -np.inf
    fit = fit_gaussian_2d(image, BoxPx.around(100, 99, 30, 30))
    assert fit.converged
    assert math.dist(fit.center_px, (100.4, 99.3)) < 0.2
    assert fit.sigma_major_px == pytest.approx(6.0, rel=0.05)


def test_all_nan_region_fails_cleanly():
    image = np.ones((50, 50))
    image[10:40, 10:40] = np.nan
    fit = fit_gaussian_2d(image, BoxPx(x0=20, y0=20, x1=28, y1=28))
    assert not fit.converged and "finite" in fit.note
    assert_finite(fit)


def test_pure_noise_does_not_report_a_confident_lesion():
    noise = np.random.default_rng(7).normal(100.0, 5.0, (128, 128)).astype(np.float32)
    fit = fit_gaussian_2d(noise, BoxPx.around(64, 64, 30, 30))
    assert_finite(fit)
    assert not fit.converged or fit.note is not None or fit.amplitude < 30


@st.composite
def images_and_boxes(draw):
    rows, columns = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["drawn", "noise", "blob", "steps"]))
    if kind == "drawn":
        elements = st.one_of(st.floats(-1e12, 1e12), st.sampled_from([math.nan, math.inf, -math.inf]))
        values = draw(hnp.arrays(np.float64, (rows, columns), elements=elements))
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        values = rng.normal(0.0, draw(st.floats(0.0, 1e4)), (rows, columns))
        if kind == "blob":
            values += gaussian_image((rows, columns), rng.uniform(0, columns), rng.uniform(0, rows),
                                     rng.uniform(0.3, 20), rng.uniform(0.3, 20), rng.uniform(-90, 90))
        elif kind == "steps":
            values = np.round(values / 1000.0) * 1000.0
        values[rng.random(values.shape) < draw(st.floats(0.0, 1.0))] = np.nan
    x0 = draw(st.floats(-60, columns + 60, allow_nan=False))
    y0 = draw(st.floats(-60, rows + 60, allow_nan=False))
    box = BoxPx(x0=x0, y0=y0, x1=x0 + draw(st.floats(0, 80)), y1=y0 + draw(st.floats(0, 80)))
    return values, box, draw(st.sampled_from(["bright", "dark"])), draw(st.sampled_from([None, (0.3, 1.7)]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images_and_boxes())
def test_outputs_are_always_finite(case):
    values, box, polarity, spacing = case
    rows, columns = values.shape
    outside = box.x1 < -0.5 or box.y1 < -0.5 or box.x0 > columns - 0.5 or box.y0 > rows - 0.5
    if outside:
        with pytest.raises(InvalidCoordinatesError):
            fit_gaussian_2d(values, box, polarity=polarity, spacing_mm=spacing)
        return
    fit = fit_gaussian_2d(values, box, polarity=polarity, spacing_mm=spacing)
    assert_finite(fit)
    assert (fit.fwhm_major_mm is None) == (spacing is None)
    assert fit.converged or fit.note


# -- positional uncertainty ----------------------------------------------------------------------
def test_positional_uncertainty_needs_two_centres():
    assert positional_uncertainty([]) is None
    assert positional_uncertainty([(3.0, 4.0)]) is None
    assert positional_uncertainty([(3.0, 4.0), (math.nan, 1.0)]) is None


def test_two_centres_give_a_finite_line_shaped_gaussian():
    result = positional_uncertainty([(10.0, 10.0), (14.0, 13.0)])
    assert isinstance(result, PositionalUncertainty)
    assert result.center_px == (12.0, 11.5) and result.n_samples == 2
    assert result.sigma_major_px == pytest.approx(math.sqrt(25.0 / 2))  # sample variance along the line
    assert result.sigma_minor_px == pytest.approx(math.sqrt(0.5))  # the floor across it
    assert angle_difference(result.angle_deg, math.degrees(math.atan2(3, 4))) < 1e-6
    assert np.linalg.det(np.array(result.covariance_px2)) > 0


def test_collinear_and_identical_centres_stay_finite():
    collinear = positional_uncertainty([(0.0, 5.0), (1.0, 5.0), (2.0, 5.0), (3.0, 5.0)])
    assert collinear.angle_deg == pytest.approx(0.0, abs=1e-9)
    assert collinear.sigma_minor_px == pytest.approx(math.sqrt(0.5))
    same = positional_uncertainty([(7.0, 8.0)] * 3)
    np.testing.assert_allclose(same.covariance_px2, [[0.5, 0.0], [0.0, 0.5]], atol=1e-12)
    for result in (collinear, same):
        assert np.all(np.isfinite(result.covariance_px2))


def test_many_centres_recover_their_covariance_and_spread_in_mm():
    covariance = np.array([[9.0, 3.0], [3.0, 4.0]])
    points = np.random.default_rng(11).multivariate_normal([100.0, 50.0], covariance, size=4000)
    result = positional_uncertainty([tuple(p) for p in points], spacing_mm=(0.5, 0.5))
    np.testing.assert_allclose(result.covariance_px2, covariance, rtol=0.08, atol=0.2)
    np.testing.assert_allclose(result.center_px, (100.0, 50.0), atol=0.2)
    eigvals, eigvecs = np.linalg.eigh(covariance)
    assert result.sigma_major_px == pytest.approx(math.sqrt(eigvals[1]), rel=0.05)
    assert angle_difference(result.angle_deg, math.degrees(math.atan2(eigvecs[1, 1], eigvecs[0, 1]))) < 3
    assert result.sigma_major_mm == pytest.approx(result.sigma_major_px * 0.5)
    assert result.sigma_minor_mm == pytest.approx(result.sigma_minor_px * 0.5)


# -- probability map -----------------------------------------------------------------------------
def make_fit(cx: float, cy: float, major: float, minor: float, angle: float) -> GaussianFit:
    return GaussianFit(center_px=(cx, cy), sigma_major_px=major, sigma_minor_px=minor, angle_deg=angle,
                       fwhm_major_px=major * FWHM_PER_SIGMA, fwhm_minor_px=minor * FWHM_PER_SIGMA,
                       amplitude=1.0, background=0.0, r_squared=1.0, converged=True)


def test_probability_map_peaks_at_the_weight():
    fit = make_fit(40.0, 30.0, 6.0, 3.0, 30.0)
    prob = probability_map((64, 96), [fit], [0.7])
    assert prob.dtype == np.float32 and prob.shape == (64, 96)
    assert prob[30, 40] == pytest.approx(0.7, abs=1e-6)
    assert prob.max() == pytest.approx(0.7, abs=1e-6)
    assert prob[0, 95] == 0.0
    # Along the major axis the map falls to half the weight at half the FWHM.
    half = 0.5 * fit.fwhm_major_px
    dx, dy = half * math.cos(math.radians(30)), half * math.sin(math.radians(30))
    ref = probability_map((200, 200), [make_fit(100.0, 100.0, 6.0, 3.0, 30.0)], [1.0])
    y, x = np.mgrid[:200, :200]
    near = np.hypot(x - (100 + dx), y - (100 + dy)) < 0.75
    assert ref[near].mean() == pytest.approx(0.5, abs=0.08)


def test_overlapping_findings_stay_within_one():
    fits = [make_fit(50.0, 50.0, 10.0, 8.0, 0.0), make_fit(52.0, 51.0, 9.0, 9.0, 45.0),
            make_fit(49.0, 48.0, 12.0, 4.0, -60.0)]
    prob = probability_map((100, 100), fits, [0.9, 0.8, 1.0])
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert prob[50, 50] > 0.99
    single = probability_map((100, 100), fits[:1], [0.9])
    assert np.all(prob >= single - 1e-6)


def test_probability_map_ignores_zero_weights_and_checks_lengths():
    fit = make_fit(5.0, 5.0, 2.0, 2.0, 0.0)
    assert probability_map((10, 10), [fit], [0.0]).max() == 0.0
    assert probability_map((10, 10), [], []).max() == 0.0
    with pytest.raises(ValueError, match="weights"):
        probability_map((10, 10), [fit], [])


def test_probability_map_on_a_2048_square_image():
    fits = [make_fit(1024.0, 1024.0, 80.0, 40.0, 20.0), make_fit(10.0, 2040.0, 5.0, 3.0, -45.0),
            make_fit(1500.0, 300.0, 200.0, 150.0, 70.0), make_fit(3000.0, 3000.0, 5.0, 5.0, 0.0)]
    prob = probability_map((2048, 2048), fits, [0.9, 0.5, 0.3, 1.0])
    assert prob.shape == (2048, 2048) and prob.dtype == np.float32
    assert prob[1024, 1024] == pytest.approx(0.9, abs=1e-4)
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert prob[2047, 2047] == 0.0  # beyond every fit's 4 sigma
    assert prob[2040, 10] == pytest.approx(0.5, abs=1e-4)


# -- the tool ------------------------------------------------------------------------------------
def test_expected_polarity():
    assert expected_polarity("US") == "dark" and expected_polarity("us") == "dark"
    assert [expected_polarity(m) for m in ("CT", "MR", "CR", "DX", None)] == ["bright"] * 5


def test_the_declaration_builds_from_the_input_model():
    tool = Tool("fit_gaussian", FitGaussianInput, FitGaussianOutput, fit_gaussian)
    declaration = tool.declaration()
    assert declaration["description"].startswith("Measure findings as a reader would: the long axis")
    properties = declaration["parameters"]["properties"]
    assert set(properties) == {"finding_ids", "study_id"}
    assert all(prop.get("description") for prop in properties.values())


@pytest.fixture
def ctx():
    context = ToolContext()
    yield context
    context.close()


def eval_lesion(eval_dir: Path) -> dict[str, str]:
    with (eval_dir / "manifest.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["dataset"] == "pydicom_overlay"]
    assert rows, "the manifest has no pydicom_overlay lesion"
    return rows[0]


def add_finding(ctx: ToolContext, study_id: str, box: BoxPx, *, finding_id: str = "F1", frame: int = 0,
                center: tuple[float, float] | None = None) -> None:
    ctx.findings[finding_id] = Finding(id=finding_id, study_id=study_id, label="lesion", frame=frame,
                                       center_px=center or box.center, bbox_px=box, confidence=0.9,
                                       source="clinician")


def test_tool_on_the_mr_liver_lesion(ctx, eval_dir):
    assert eval_dir == EVAL_DIR
    lesion = eval_lesion(eval_dir)
    opened = load_study(ctx, LoadStudyInput(path=str(eval_dir / lesion["image_path"]))).output
    box = BoxPx(x0=float(lesion["bbox_x0"]), y0=float(lesion["bbox_y0"]),
                x1=float(lesion["bbox_x1"]), y1=float(lesion["bbox_y1"]))
    manifest_centre = (float(lesion["center_x"]), float(lesion["center_y"]))
    add_finding(ctx, opened.study_id, box, center=manifest_centre)
    output = fit_gaussian(ctx, FitGaussianInput()).output
    assert isinstance(output, FitGaussianOutput) and output.study_id == opened.study_id
    [result] = output.results
    fit = result.gaussian
    assert result.finding_id == "F1" and fit.converged
    assert math.dist(fit.center_px, manifest_centre) < 6.0
    assert fit.amplitude > 0 and fit.r_squared > 0.5
    # The fit models the bright target inside the drawn contour: about 13 x 7 mm FWHM.
    assert result.size_mm is not None and 8.0 <= result.size_mm[0] <= 40.0
    assert 4.0 <= result.size_mm[1] <= result.size_mm[0]
    # An abdominal MR is not a kind of image the segmentation was validated on: the Gaussian's
    # widths are the size there, and say so.
    assert result.size_method == "gaussian fwhm"
    assert result.size_px == pytest.approx((fit.fwhm_major_px, fit.fwhm_minor_px))
    assert result.uncertainty is None
    stored = ctx.findings["F1"]
    assert stored.gaussian == fit and stored.size_mm == result.size_mm and stored.size_px == result.size_px
    assert stored.bbox_px == box and stored.confidence == 0.9  # the rest of the finding is kept
    assert "F1" in output.message and "mm" in output.message


@pytest.fixture
def blob_png(tmp_path) -> Path:
    image = gaussian_image((120, 160), 70.3, 60.6, 7.0, 4.0, 25.0, amplitude=120.0, background=60.0, noise=2.0)
    path = tmp_path / "blob.png"
    Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)).save(path)
    return path


def test_tool_with_three_samples_reports_positional_uncertainty(ctx, blob_png):
    study_id = load_study(ctx, LoadStudyInput(path=str(blob_png))).output.study_id
    add_finding(ctx, study_id, BoxPx.around(70, 61, 30, 30))
    samples = {"F1": [(69.0, 60.0), (72.0, 61.5), (70.5, 62.0)]}
    output = fit_gaussian(ctx, FitGaussianInput(finding_ids=["f1"]), samples=samples).output
    [result] = output.results
    assert result.gaussian.converged
    assert math.dist(result.gaussian.center_px, (70.3, 60.6)) < 0.3
    assert result.size_mm is None  # a PNG has no pixel spacing: sizes in px only
    assert result.size_px[0] == pytest.approx(7.0 * FWHM_PER_SIGMA, rel=0.05)
    uncertainty = result.uncertainty
    assert uncertainty is not None and uncertainty.n_samples == 3
    assert uncertainty.center_px == pytest.approx((70.5, 61.1667), abs=1e-3)
    assert uncertainty.sigma_major_mm is None
    assert ctx.findings["F1"].size_mm is None and ctx.findings["F1"].size_px == result.size_px
    assert "px" in output.message


def test_tool_fits_dark_lesions_on_ultrasound(ctx, tmp_path):
    image = gaussian_image((100, 100), 48.6, 52.2, 6.0, 6.0, 0.0, amplitude=-90.0, background=140.0, noise=2.0)
    path = tmp_path / "cyst.png"
    Image.fromarray(np.round(image).astype(np.uint8)).save(path)
    study_id = load_study(ctx, LoadStudyInput(path=str(path), modality="US")).output.study_id
    add_finding(ctx, study_id, BoxPx.around(49, 52, 26, 26))
    [result] = fit_gaussian(ctx, FitGaussianInput()).output.results
    assert result.gaussian.converged
    assert math.dist(result.gaussian.center_px, (48.6, 52.2)) < 0.3
    assert result.gaussian.amplitude == pytest.approx(90.0, rel=0.05)


def test_tool_default_is_the_current_frame_and_nothing_to_fit_is_said(ctx, blob_png):
    study_id = load_study(ctx, LoadStudyInput(path=str(blob_png))).output.study_id
    empty = fit_gaussian(ctx, FitGaussianInput()).output
    assert empty.results == [] and "nothing to fit" in empty.message
    add_finding(ctx, study_id, BoxPx.around(70, 61, 30, 30), finding_id="F2", frame=3)
    assert fit_gaussian(ctx, FitGaussianInput()).output.results == []
    none_asked = fit_gaussian(ctx, FitGaussianInput(finding_ids=[])).output
    assert none_asked.results == [] and "no finding ids were given" in none_asked.message


def test_tool_keeps_sizes_when_the_fit_does_not_converge(ctx, tmp_path):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((50, 50), 90, np.uint8)).save(path)
    study_id = load_study(ctx, LoadStudyInput(path=str(path))).output.study_id
    add_finding(ctx, study_id, BoxPx.around(25, 25, 10, 10))
    ctx.findings["F1"] = ctx.findings["F1"].model_copy(update={"size_px": (4.0, 3.0)})
    [result] = fit_gaussian(ctx, FitGaussianInput()).output.results
    assert not result.gaussian.converged and result.gaussian.note == FLAT_NOTE
    assert result.size_px is None and result.size_mm is None
    assert ctx.findings["F1"].gaussian == result.gaussian and ctx.findings["F1"].size_px == (4.0, 3.0)


def test_tool_errors_are_clear(ctx, blob_png, tmp_path):
    with pytest.raises(NoStudyOpenError):
        fit_gaussian(ctx, FitGaussianInput())
    study_id = load_study(ctx, LoadStudyInput(path=str(blob_png))).output.study_id
    with pytest.raises(InvalidCoordinatesError, match="There is no finding F9: no finding has been made in this session yet"):
        fit_gaussian(ctx, FitGaussianInput(finding_ids=["F9"]))
    add_finding(ctx, study_id, BoxPx.around(70, 61, 30, 30))
    with pytest.raises(InvalidCoordinatesError, match="There is no finding F9 in this session; its ids run from F1 to F1"):
        fit_gaussian(ctx, FitGaussianInput(finding_ids=["F1", "F9"]))
    add_finding(ctx, study_id, BoxPx(x0=500, y0=500, x1=520, y1=520), finding_id="F2")
    with pytest.raises(InvalidCoordinatesError, match="Finding F2: The box .* entirely outside"):
        fit_gaussian(ctx, FitGaussianInput(finding_ids=["F2"]))
    other = tmp_path / "other.png"
    Image.fromarray(np.zeros((20, 20), np.uint8) + 7).save(other)
    load_study(ctx, LoadStudyInput(path=str(other)))  # now the current study
    with pytest.raises(InvalidCoordinatesError, match="F1 is not a finding of this study: it is on"):
        fit_gaussian(ctx, FitGaussianInput(finding_ids=["F1"]))
    ok = fit_gaussian(ctx, FitGaussianInput(finding_ids=["F1"], study_id=study_id)).output
    assert [r.finding_id for r in ok.results] == ["F1"]
