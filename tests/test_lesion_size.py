"""Sizes as a reader measures them: diameters from a mask, the watershed segmentation on synthetic
and real lesions (the LIDC nodule of issue 25), fit_gaussian's sizes and their fallback, the
clinician's own size (set_finding_size) and who measured it in the report, and the size table of
``loupe eval``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from skimage.draw import disk, ellipse

from agent.evaluation.benchmark import run_eval
from agent.evaluation.manifest import read_manifest
from tests.conftest import small_manifest
from agent.evaluation.sizes import (SETTINGS_GRID, cross_validate_sizes, format_sizes, measure_sizes, shipped_scores)
from tools.context import ToolContext
from tools.coordinates import BoxPx
from tools.detection.working import WorkingImage
from tools.draft_report import DraftReportInput, draft_report
from tools.errors import InvalidCoordinatesError
from tools.findings import Finding
from tools.fit_gaussian import FitGaussianInput, fit_gaussian
from tools.load_study import LoadStudyInput, load_study
from tools.measure.diameters import lesion_diameters
from tools.measure.segmentation import (MAX_MARGIN_PX, SHIPPED, SegmentationSettings, measure_lesion, region_diameters,
                                        segment_lesion)
from tools.registry import TOOLS, model_declarations
from tools.report.document import Measurement, measured_size
from tools.set_finding_size import SetFindingSizeInput, set_finding_size
from tools.study import StudyLimits

#: The LIDC nodule of the issue: the readers' box on this slice is 35 × 19 px, 23.9 × 13.0 mm.
ISSUE_SLICE = Path("lidc_ct") / "LIDC-IDRI-0002" / "z-0094.50.dcm"


# -- diameters -----------------------------------------------------------------------------------
def test_an_ellipse_measures_its_axes_along_their_directions():
    mask = np.zeros((160, 160), bool)
    rows, columns = ellipse(80, 80, 12, 30, rotation=-math.radians(30))  # long axis 30° below +x
    mask[rows, columns] = True
    measured = lesion_diameters(mask)
    assert measured.unit == "px"
    assert measured.long == pytest.approx(61, abs=2) and measured.short == pytest.approx(25, abs=2)
    (x0, y0), (x1, y1) = measured.long_axis
    angle = math.degrees(math.atan2(y1 - y0, x1 - x0)) % 180
    assert angle == pytest.approx(30, abs=4)
    (a0, b0), (a1, b1) = measured.short_axis
    assert abs((x1 - x0) * (a1 - a0) + (y1 - y0) * (b1 - b0)) < 1e-6 * measured.long * measured.short + 1e-6


def test_diameters_use_the_pixel_spacing_and_map_a_working_window_to_native_pixels():
    mask = np.zeros((40, 80), bool)
    mask[10:30, 10:70] = True  # 60 columns x 20 rows
    measured = lesion_diameters(mask, spacing_mm=(0.5, 1.0))
    assert measured.unit == "mm"
    assert measured.long == pytest.approx(math.hypot(60, 10), rel=0.03)  # the rectangle's diagonal, in mm
    assert measured.short < measured.long
    window = np.zeros((30, 30), bool)
    rows, columns = disk((15, 15), 10)
    window[rows, columns] = True
    native = lesion_diameters(window, scale=0.5, offset=(100, 200))
    assert native.long_px == pytest.approx(42, abs=2)  # 21 working px at half resolution
    centre = np.mean(native.long_axis, axis=0)
    assert centre == pytest.approx(((115 + 0.5) / 0.5 - 0.5, (215 + 0.5) / 0.5 - 0.5), abs=1.5)
    assert lesion_diameters(np.zeros((5, 5), bool)) is None


# -- segmentation on synthetic images ------------------------------------------------------------
def working(image: np.ndarray, modality: str = "CT", polarity: str = "bright", outside: str | None = None
            ) -> WorkingImage:
    everywhere = np.ones(image.shape, bool)
    return WorkingImage(image=image.astype(np.float32), scale=1.0, modality=modality, polarity=polarity,
                        body=everywhere, search=everywhere, organ="lungs", native_shape=image.shape, outside=outside)


def noisy(shape: tuple[int, int], level: float, seed: int = 0) -> np.ndarray:
    return level + np.random.default_rng(seed).normal(0.0, 0.02, shape)


def test_a_bright_disk_measures_its_diameter_not_a_gaussian_width():
    image = noisy((200, 200), 0.2)
    rows, columns = disk((90, 110), 15)
    image[rows, columns] = 0.7
    measured = measure_lesion(working(image), (110, 90), (0.7, 0.7))
    assert measured.unit == "mm"
    assert measured.long_px == pytest.approx(31, rel=0.1) and measured.short_px == pytest.approx(31, rel=0.1)
    assert measured.long == pytest.approx(0.7 * measured.long_px, rel=1e-6)


def test_a_dark_lesion_on_ultrasound_and_the_centre_off_the_middle():
    image = noisy((240, 240), 0.6, seed=1)
    rows, columns = ellipse(120, 100, 14, 35)
    image[rows, columns] = 0.1
    measured = measure_lesion(working(image, "US", "dark"), (112, 122), None)
    assert measured.long_px == pytest.approx(71, rel=0.12) and measured.short_px == pytest.approx(29, rel=0.15)


def test_the_opening_cuts_a_vessel_off_the_lesion():
    image = noisy((220, 220), 0.2, seed=2)
    rows, columns = disk((110, 80), 14)
    image[rows, columns] = 0.7
    image[108:112, 94:150] = 0.7  # a thin vessel into a larger bright structure
    rows, columns = disk((110, 170), 25)
    image[rows, columns] = 0.7
    bridged = measure_lesion(working(image), (80, 110), None, SegmentationSettings(opening=0.0))
    cut = measure_lesion(working(image), (80, 110), None, SegmentationSettings(opening=0.3))
    assert cut.long_px == pytest.approx(29, rel=0.1)
    assert bridged.long_px > cut.long_px + 2  # without the opening, the vessel's stub counts


def test_the_margin_moves_the_outline_to_the_edges_outer_foot():
    image = noisy((200, 200), 0.2, seed=3)
    rows, columns = disk((100, 100), 15)
    image[rows, columns] = 0.7
    crest = measure_lesion(working(image), (100, 100), None, SegmentationSettings(margin_px=0.0))
    foot = measure_lesion(working(image), (100, 100), None, SegmentationSettings(margin_px=2.0))
    assert foot.long_px == pytest.approx(crest.long_px + 4, abs=1)  # two px on either side
    region = segment_lesion(working(image), (100, 100))
    assert region_diameters(region.grown(2.0), None) == foot  # as loupe eval measures each margin
    with pytest.raises(ValueError, match="margin_px"):
        SegmentationSettings(margin_px=MAX_MARGIN_PX + 1)


def test_no_segmentation_on_a_flat_region_off_the_image_or_outside_competence():
    flat = working(np.full((64, 64), 0.5))
    assert segment_lesion(flat, (32, 32)) is None
    image = noisy((100, 100), 0.2)
    rows, columns = disk((50, 50), 10)
    image[rows, columns] = 0.8
    assert segment_lesion(working(image), (500, 50)) is None
    assert segment_lesion(working(image, outside="an MR of the abdomen"), (50, 50)) is None
    assert segment_lesion(working(image), (50, 50)) is not None


# -- the tool on real images ---------------------------------------------------------------------
@pytest.fixture
def ctx():
    context = ToolContext()
    yield context
    context.close()


def manifest_rows(eval_dir: Path, image: Path) -> list[dict]:
    with (eval_dir / "manifest.csv").open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["image_path"] == image.as_posix()]


def add_click(ctx: ToolContext, study_id: str, x: float, y: float, finding_id: str = "F1") -> None:
    """A finding as the viewer makes one from a click: a 24 px box around the point."""
    ctx.findings[finding_id] = Finding(id=finding_id, study_id=study_id, label="nodule", frame=0, center_px=(x, y),
                                       bbox_px=BoxPx.around(x, y, 24, 24), confidence=1.0, source="clinician")


def test_the_lidc_nodule_of_the_issue_measures_as_its_readers_did(ctx, eval_dir):
    [row] = [r for r in manifest_rows(eval_dir, ISSUE_SLICE) if r["label"] == "nodule"]
    study_id = load_study(ctx, LoadStudyInput(path=str(eval_dir / ISSUE_SLICE))).output.study_id
    spacing = ctx.view().study.pixel_spacing_mm(0)
    readers_long = (int(row["bbox_x1"]) - int(row["bbox_x0"]) + 1) * spacing[1]
    readers_short = (int(row["bbox_y1"]) - int(row["bbox_y0"]) + 1) * spacing[0]
    assert readers_long == pytest.approx(23.9, abs=0.1) and readers_short == pytest.approx(13.0, abs=0.1)
    add_click(ctx, study_id, float(row["center_x"]), float(row["center_y"]))
    [result] = fit_gaussian(ctx, FitGaussianInput()).output.results
    # Before: the Gaussian's FWHM, 7.6 x 3.8 mm, a third of the readers' box. It is kept for the centre.
    assert result.gaussian.fwhm_major_mm == pytest.approx(7.6, abs=0.5)
    assert result.size_method == "segmentation"
    long, short = result.size_mm
    assert 0.75 * readers_long <= long <= 1.25 * readers_long
    assert 0.5 * readers_short <= short <= 1.25 * readers_short and short <= long
    stored = ctx.findings["F1"]
    assert stored.size_mm == result.size_mm and stored.size_method == "segmentation"
    (x0, y0), (x1, y1) = stored.size_axes.long_axis
    assert math.hypot(x1 - x0, y1 - y0) * spacing[1] == pytest.approx(long, rel=0.02)
    assert measured_size(stored).measured_by == "Loupe (segmentation)"


@pytest.mark.parametrize("image", ["busi/benign_104.png", "figshare_brain_mri/meningioma_61.jpg"])
def test_ultrasound_and_mr_lesions_measure_near_their_readers_box(ctx, eval_dir, image):
    [row] = manifest_rows(eval_dir, Path(image))
    modality = row["modality"]
    study_id = load_study(ctx, LoadStudyInput(path=str(eval_dir / image), modality=modality)).output.study_id
    add_click(ctx, study_id, float(row["center_x"]), float(row["center_y"]))
    [result] = fit_gaussian(ctx, FitGaussianInput()).output.results
    box_long = max(int(row["bbox_x1"]) - int(row["bbox_x0"]), int(row["bbox_y1"]) - int(row["bbox_y0"])) + 1
    assert result.size_method == "segmentation" and result.size_mm is None  # a PNG or JPEG has no spacing
    assert 0.75 * box_long <= result.size_px[0] <= 1.25 * box_long


def test_the_gaussian_is_the_size_only_when_nothing_is_segmented(ctx, eval_dir, monkeypatch):
    [row] = [r for r in manifest_rows(eval_dir, ISSUE_SLICE) if r["label"] == "nodule"]
    study_id = load_study(ctx, LoadStudyInput(path=str(eval_dir / ISSUE_SLICE))).output.study_id
    add_click(ctx, study_id, float(row["center_x"]), float(row["center_y"]))
    monkeypatch.setattr("tools.fit_gaussian.measure_lesion", lambda *args: None)
    output = fit_gaussian(ctx, FitGaussianInput()).output
    [result] = output.results
    fit = result.gaussian
    assert result.size_method == "gaussian fwhm"
    assert result.size_mm == pytest.approx((fit.fwhm_major_mm, fit.fwhm_minor_mm))
    assert ctx.findings["F1"].size_axes is None
    assert measured_size(ctx.findings["F1"]).measured_by == "Loupe (Gaussian)"
    assert "Gaussian FWHM; the lesion could not be segmented" in output.message


# -- the clinician's size ------------------------------------------------------------------------
def test_the_clinician_types_a_size_and_the_report_states_it(ctx, eval_dir):
    [row] = [r for r in manifest_rows(eval_dir, ISSUE_SLICE) if r["label"] == "nodule"]
    study_id = load_study(ctx, LoadStudyInput(path=str(eval_dir / ISSUE_SLICE))).output.study_id
    add_click(ctx, study_id, float(row["center_x"]), float(row["center_y"]))
    drafted = draft_report(ctx, DraftReportInput(finding_ids=["F1"], use_model_wording=False)).output
    assert ctx.reports[study_id].current.findings[0].size.measured_by == "Loupe (segmentation)"
    output = set_finding_size(ctx, SetFindingSizeInput(finding_id="f1", long_axis_mm=12.0,
                                                       short_axis_mm=20.0)).output
    assert output.size_mm == (20.0, 12.0) and output.size_px is None  # the longer one is the long axis
    assert output.report_version == drafted.version + 1 and "report version" in output.message
    finding = ctx.findings["F1"]
    assert finding.size_method == "clinician" and finding.size_mm == (20.0, 12.0)
    assert finding.gaussian is not None  # the centre's fit stays
    stated = ctx.reports[study_id].current.findings[0].size
    assert (stated.major, stated.minor, stated.unit) == (20.0, 12.0, "mm") and stated.measured_by == "clinician"
    [refit] = fit_gaussian(ctx, FitGaussianInput()).output.results  # a later fit keeps the clinician's size
    assert refit.size_method == "clinician" and ctx.findings["F1"].size_mm == (20.0, 12.0)


def test_the_clinician_draws_calipers_measured_with_the_spacing(ctx, eval_dir):
    study_id = load_study(ctx, LoadStudyInput(path=str(eval_dir / ISSUE_SLICE))).output.study_id
    add_click(ctx, study_id, 346.0, 361.0)
    row_mm, column_mm = ctx.view().study.pixel_spacing_mm(0)
    output = set_finding_size(ctx, SetFindingSizeInput(
        finding_id="F1", long_axis_line=[331.0, 361.0, 365.0, 361.0],
        short_axis_line=[346.0, 353.0, 346.0, 369.0])).output
    assert output.size_px == pytest.approx((34.0, 16.0))
    assert output.size_mm == pytest.approx((34.0 * column_mm, 16.0 * row_mm))
    assert output.report_version is None  # no report yet
    assert ctx.findings["F1"].size_axes.long_axis == ((331.0, 361.0), (365.0, 361.0))
    with pytest.raises(InvalidCoordinatesError, match="outside the 512 x 512 pixel image"):
        set_finding_size(ctx, SetFindingSizeInput(finding_id="F1", long_axis_line=[0.0, 0.0, 600.0, 0.0],
                                                  short_axis_line=[1.0, 1.0, 1.0, 5.0]))
    with pytest.raises(InvalidCoordinatesError, match="There is no finding F9"):
        set_finding_size(ctx, SetFindingSizeInput(finding_id="F9", long_axis_mm=3.0, short_axis_mm=2.0))


def test_without_pixel_spacing_drawn_calipers_are_in_px(ctx, tmp_path):
    path = tmp_path / "plain.png"
    Image.fromarray(np.full((80, 90), 100, np.uint8)).save(path)
    study_id = load_study(ctx, LoadStudyInput(path=str(path))).output.study_id
    add_click(ctx, study_id, 40.0, 40.0)
    output = set_finding_size(ctx, SetFindingSizeInput(finding_id="F1", long_axis_line=[30.0, 40.0, 30.0, 46.0],
                                                       short_axis_line=[20.0, 40.0, 50.0, 40.0])).output
    assert output.size_mm is None and output.size_px == pytest.approx((30.0, 6.0))
    assert measured_size(ctx.findings["F1"]) == Measurement(major=30.0, minor=6.0, unit="px", source="clinician")


@pytest.mark.parametrize("arguments", [
    {"finding_id": "F1", "long_axis_mm": 20.0},
    {"finding_id": "F1", "long_axis_line": [0, 0, 5, 5]},
    {"finding_id": "F1", "long_axis_line": [0, 0, 5], "short_axis_line": [0, 0, 5, 5]},
    {"finding_id": "F1", "long_axis_mm": 20.0, "short_axis_mm": 10.0, "long_axis_line": [0, 0, 5, 5]},
    {"finding_id": "F1", "long_axis_mm": -2.0, "short_axis_mm": 1.0},
    {"finding_id": "F1", "long_axis_mm": 5000.0, "short_axis_mm": 1.0},
])
def test_incomplete_or_mixed_sizes_are_refused(arguments):
    with pytest.raises(ValidationError):
        SetFindingSizeInput.model_validate(arguments)


def test_set_finding_size_is_a_registered_tool():
    tool = TOOLS["set_finding_size"]
    assert tool.description.startswith("Set a finding's size to the clinician's own measurement")
    assert set(tool.declaration()["parameters"]["properties"]) == {
        "finding_id", "long_axis_mm", "short_axis_mm", "long_axis_line", "short_axis_line", "study_id"}
    declared = next(d for d in model_declarations() if d["name"] == "set_finding_size")
    assert "prefixItems" not in json.dumps(declared)  # plain lists, as every model API takes them


def test_a_measurement_says_who_measured_it():
    base = Finding(id="F1", study_id="s", label="x", frame=0, center_px=(1, 1), bbox_px=BoxPx(x0=0, y0=0, x1=2, y1=2),
                   confidence=0.5, source="classical", size_mm=(10.0, 5.0), size_px=(14.0, 7.0))
    assert measured_size(base).measured_by == "Loupe"  # a size of unknown method (a session saved before)
    for method, who in (("segmentation", "Loupe (segmentation)"), ("gaussian fwhm", "Loupe (Gaussian)"),
                        ("clinician", "clinician")):
        size = measured_size(base.model_copy(update={"size_method": method}))
        assert size.measured_by == who and size.unit == "mm" and (size.major, size.minor) == (10.0, 5.0)
    assert Measurement(major=3, unit="mm", source="clinician", method="segmentation").measured_by == "clinician"


# -- loupe eval's size table ---------------------------------------------------------------------
SIZE_PICK = {"busi/benign_104.png", "busi/malignant_188.png", "figshare_brain_mri/meningioma_61.jpg",
             "figshare_brain_mri/pituitary_1418.jpg", "lidc_ct/LIDC-IDRI-0002/z-0094.50.dcm"}


@pytest.fixture
def picked_manifest(eval_dir, tmp_path) -> Path:
    return small_manifest(eval_dir, tmp_path, SIZE_PICK)


def test_sizes_are_scored_in_sample_and_cross_validated(picked_manifest):
    images = read_manifest(picked_manifest)
    cases, problems = measure_sizes(images, StudyLimits(), SETTINGS_GRID)
    assert problems == []
    assert len(cases) == 5  # the LIDC slice's <3 mm marks are left out
    assert all(set(case.segmented) == set(SETTINGS_GRID) for case in cases)
    scores = {s.group: s for s in shipped_scores(cases)}
    assert scores["all"].n == 5 and scores["lidc_ct"].modality == "CT"
    # The Gaussian's FWHM is not a diameter; the segmentation's long axis is close to the readers'.
    assert scores["all"].gaussian_median_ratio < 0.8 and 0.8 <= scores["all"].median_ratio <= 1.2
    result = cross_validate_sizes(cases, images, 2)
    assert [s.group for s in result.cross_validated][-1] == "all"
    assert set(result.choices) == {"CT", "MR", "US"}
    assert any("shipped" in line for line in result.choices["US"])
    table = format_sizes("Sizes", result.cross_validated)
    assert "| group | modality | lesions | Gaussian FWHM: median ratio |" in table


def test_loupe_eval_prints_and_saves_the_size_table(picked_manifest):
    report = run_eval(picked_manifest, limits=StudyLimits())
    assert "Lesion sizes: Loupe's long axis over the reader box's long side" in report.text
    sizes = report.data["sizes"]
    assert sizes["seed"] == "reader's centre"
    assert {row["group"] for row in sizes["in_sample"]} == {"busi", "figshare_brain_mri", "lidc_ct", "all"}


def test_the_shipped_settings_are_among_those_cross_validated():
    assert set(SHIPPED.values()) <= set(SETTINGS_GRID)
