"""The comparison's figures (``tools.compare_with_prior.figures``), on a synthetic pair whose truth
is known: a textured 256² image with bright Gaussian blobs, the prior a moved, rotated and zoomed
copy in which one blob is smaller, one absent and one only there. Checked: one PNG per finding
plus the whole-slice panel, the registered prior crop lying on the current one, the difference's
sign, and findings missing on one side drawn without a lesion there."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from tools.compare.record import ComparedFinding, FindingChange, LesionThere
from tools.compare.registration import (
    Registration,
    Similarity,
    register_images,
    resampled,
)
from tools.compare.slices import SliceMatch
from tools.compare_with_prior.compare import FramePair
from tools.compare_with_prior.figures import (
    DIFFERENCE_LIMIT,
    MAX_FINDINGS,
    caption,
    comparison_figures,
    display_window,
    finding_crop,
    places,
)
from tools.study import Study, Window, open_study, parse_window

SAMPLE = Path(__file__).resolve().parent.parent / "agent" / "sample_data" / "lidc-idri-0003"
SIDE = 256
#: Current → prior: zoomed 6 %, turned 5°, shifted, about the image's centre.
TRANSFORM = Similarity.about(((SIDE - 1) / 2, (SIDE - 1) / 2), 1.06, 5.0, 9.0, -6.0)
FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))
#: Blobs in current coordinates: (x, y, σ now, σ in the prior); σ 0 where the blob is not there.
GROWN = (150.0, 110.0, 7.0, 4.5)
NEW = (80.0, 180.0, 5.0, 0.0)
RESOLVED = (185.0, 190.0, 0.0, 5.0)


def anatomy(sigma_index: int) -> np.ndarray:
    """The textured background with each blob at its σ for one study (2: now, 3: the prior)."""
    rng = np.random.default_rng(7)
    texture = ndi.gaussian_filter(rng.normal(0.0, 1.0, (SIDE, SIDE)), 3.0)
    image = 60.0 + 15.0 * texture / texture.std()
    rows, cols = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    for blob in (GROWN, NEW, RESOLVED):
        sigma = blob[sigma_index]
        if sigma > 0:
            image += 120.0 * np.exp(-((cols - blob[0]) ** 2 + (rows - blob[1]) ** 2) / (2 * sigma**2))
    return image


def saved(image: np.ndarray, path: Path) -> Study:
    Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)).save(path)
    return open_study(path, modality="CT")


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> tuple[Study, Study]:
    folder = tmp_path_factory.mktemp("pair")
    current = saved(anatomy(2), folder / "current.png")
    # The anatomy at current point p shows in the prior at TRANSFORM(p).
    prior_pixels, _ = resampled(anatomy(3), np.linalg.inv(TRANSFORM.matrix), (SIDE, SIDE))
    prior = saved(prior_pixels, folder / "prior.png")
    yield current, prior
    current.close()
    prior.close()


@pytest.fixture(scope="module")
def pair(studies) -> FramePair:
    current, prior = studies
    return FramePair(0, 0, register_images(current.physical(0), prior.physical(0)), None)


def there(blob: tuple[float, float, float, float], index: int, transform: Similarity | None = None) -> LesionThere:
    x, y = blob[:2] if transform is None else transform.apply(*blob[:2])
    diameter = round(blob[index] * FWHM_PER_SIGMA, 2)
    return LesionThere(center_px=(x, y), frame=0, size_px=(diameter, diameter))


def compared() -> list[ComparedFinding]:
    change = FindingChange(unit="px", long_axis=6.0, short_axis=6.0, mean_diameter_mm=None, mean_diameter_pct=55.6,
                           area_pct=142.0, threshold=1.0)
    return [
        ComparedFinding(id="F1", status="grown", current=there(GROWN, 2), prior=there(GROWN, 3, TRANSFORM),
                        change=change),
        ComparedFinding(id="F2", status="new", current=there(NEW, 2), prior=None),
        ComparedFinding(id="P1", status="resolved", current=None, prior=there(RESOLVED, 3, TRANSFORM)),
    ]


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def peak(image: np.ndarray) -> tuple[float, float]:
    """(x, y) of the blob's top: the centroid of what stands above half its height over the
    background (sub-pixel, and not moved by a texture speck as an argmax would be)."""
    background = float(np.median(image))
    top = np.clip(image - (background + float(image.max())) / 2, 0.0, None)
    row, col = ndi.center_of_mass(top)
    return float(col), float(row)


def test_one_png_per_finding_and_the_whole_slice_difference(studies, pair):
    current, prior = studies
    artifacts = comparison_figures(current, prior, [pair], compared(), window=None)
    assert [a.name for a in artifacts] == ["comparison-F1.png", "comparison-F2.png", "comparison-P1.png",
                                           "comparison-difference.png"]
    for artifact in artifacts:
        image = decoded(artifact.data)
        assert image.format == "PNG" and image.mode == "RGB" and image.width <= 1600
        assert artifact.caption and not artifact.for_model
    assert artifacts[0].caption == "F1 grown: 10.6 → 16.5 px mean diameter (+56 %)"


def test_at_most_six_findings_get_a_figure(studies, pair):
    current, prior = studies
    many = [item.model_copy(update={"id": f"F{i}"}) for i, item in enumerate([compared()[0]] * 8, 1)]
    names = [a.name for a in comparison_figures(current, prior, [pair], many, window=None)]
    assert names == [f"comparison-F{i}.png" for i in range(1, MAX_FINDINGS + 1)] + ["comparison-difference.png"]


def test_the_registered_prior_crop_lies_on_the_current_one(studies, pair):
    current, prior = studies
    grown = compared()[0]
    crop = finding_crop(current, prior, pair, grown, window=display_window(current, 0, None))
    assert crop.current.shape == crop.prior.shape and crop.covered.all()
    x0, y0 = crop.bounds[:2]
    assert math.dist(peak(crop.current), (GROWN[0] - x0, GROWN[1] - y0)) <= 1.0
    assert math.dist(peak(crop.prior), peak(crop.current)) <= 1.0


def test_a_grown_lesion_is_brighter_now_at_its_rim_and_alike_at_its_centre(studies, pair):
    current, prior = studies
    crop = finding_crop(current, prior, pair, compared()[0], window=display_window(current, 0, None))
    x0, y0, x1, y1 = crop.bounds
    rows, cols = np.mgrid[y0:y1, x0:x1]
    r = np.hypot(cols - GROWN[0], rows - GROWN[1])
    rim = (r >= 6.0) & (r <= 9.0)  # between the prior's half maximum (5.3 px) and the current one's (8.2 px)
    difference = crop.difference
    assert difference[rim].mean() > 0.1
    assert abs(difference[r <= 1.5].mean()) < 0.05
    assert difference.max() <= 1.0 and DIFFERENCE_LIMIT > 0


def test_a_new_finding_renders_without_a_prior_lesion(studies, pair):
    current, prior = studies
    new = compared()[1]
    before, now = places(new, pair, None)
    assert before is None and now is not None and (now.x, now.y) == NEW[:2]
    crop = finding_crop(current, prior, pair, new, window=display_window(current, 0, None))
    x0, y0 = crop.bounds[:2]
    centre = (int(NEW[1] - y0), int(NEW[0] - x0))
    assert crop.current[centre] - crop.prior[centre] > 0.3  # the blob now, the texture before
    artifact = comparison_figures(current, prior, [pair], [new], window=None)[0]
    assert artifact.caption == "F2 new: 11.8 px mean diameter now; nothing at its place in the prior"
    assert decoded(artifact.data).width <= 1600


def test_a_resolved_finding_is_brought_back_to_its_current_place(studies, pair):
    resolved = compared()[2]
    before, now = places(resolved, pair, None)
    assert now is None and math.dist((before.x, before.y), RESOLVED[:2]) <= 1.0
    assert caption(resolved) == "P1 resolved: 11.8 px mean diameter in the prior; nothing at its place now"


def test_the_known_transform_and_the_found_one_give_the_same_crop(studies, pair):
    current, prior = studies
    known = FramePair(0, 0, Registration(TRANSFORM, 0.0, 1.0), None)
    window = display_window(current, 0, None)
    found = finding_crop(current, prior, pair, compared()[0], window=window)
    truth = finding_crop(current, prior, known, compared()[0], window=window)
    assert found.bounds == truth.bounds
    assert np.abs(found.prior - truth.prior).mean() < 0.02


def test_both_studies_are_shown_in_the_current_view_window(studies, pair):
    current, prior = studies
    # A PNG shows its own grey levels: the window that reproduces them.
    assert display_window(current, 0, None).center == 127.5 and display_window(current, 0, None).width == 255
    narrow = Window(center=100.0, width=40.0)
    assert display_window(current, 0, narrow) == narrow
    crop = finding_crop(current, prior, pair, compared()[0], window=narrow)
    # The texture (about 60) is below the narrow window in both: black in both panels alike.
    assert np.median(crop.current) == 0.0 and np.median(crop.prior) == 0.0


def test_a_prior_at_another_exposure_is_put_on_the_current_scale(studies, pair, tmp_path):
    current, prior = studies
    # Two PNGs' grey levels mean nothing alike: the prior saved darker and flatter.
    darker = saved(0.6 * np.asarray(prior.physical(0)) + 10.0, tmp_path / "darker.png")
    with darker:
        crop = finding_crop(current, darker, pair, compared()[0], window=display_window(current, 0, None))
    assert abs(float(np.median(crop.prior)) - float(np.median(crop.current))) < 0.03
    assert abs(float(np.median(crop.difference))) < 0.03


def test_a_ct_series_is_shown_in_hounsfield_units_in_one_window():
    # The bundled CT against itself: calibrated alike, so the values are compared as they are.
    with open_study(SAMPLE) as current, open_study(SAMPLE) as prior:
        pair = FramePair(5, 5, Registration(Similarity(1.0, 0.0, 0.0, 0.0), 0.0, 1.0), SliceMatch(5, 0.0, 0.0))
        nodule = LesionThere(center_px=(366.6, 350.5), frame=5, size_mm=(6.0, 5.0))
        item = ComparedFinding(id="F1", status="present", current=nodule, prior=nodule)
        lung = parse_window("lung", "CT")
        crop = finding_crop(current, prior, pair, item, window=lung)
        assert np.abs(crop.difference).max() < 1e-6 and 0.2 < float(crop.current.mean()) < 0.9
        artifacts = comparison_figures(current, prior, [pair], [item], window=lung)
    assert [a.name for a in artifacts] == ["comparison-F1.png", "comparison-difference.png"]
    assert decoded(artifacts[1].data).width <= 1600


def test_sizes_in_mm_read_as_a_clinician_expects():
    item = ComparedFinding(
        id="F1", status="grown", current=LesionThere(center_px=(10, 10), frame=0, size_mm=(12.0, 10.6)),
        prior=LesionThere(center_px=(11, 9), frame=0, size_mm=(8.6, 7.6)),
        change=FindingChange(unit="mm", long_axis=3.4, short_axis=3.0, mean_diameter_mm=3.2, mean_diameter_pct=39.5,
                             area_pct=94.0, threshold=1.5))
    assert caption(item) == "F1 grown: 8.1 → 11.3 mm mean diameter (+40 %)"
    present = item.model_copy(update={"status": "present", "change": None,
                                      "prior": LesionThere(center_px=(11, 9), frame=0)})
    assert caption(present) == "F1 present (not measurable in one of the two studies)"
