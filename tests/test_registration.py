"""The 2-D similarity registration of a prior to the current image (``tools.compare.registration``):
known transforms recovered on each kind of image despite another exposure and noise, and two
images that do not show the same region refused in one sentence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.evaluation.longitudinal import exposed, moved
from tools.compare.registration import Similarity, register_images
from tools.errors import RegistrationError
from tools.study import open_study

SAMPLE = Path(__file__).resolve().parent.parent / "agent" / "sample_data" / "lidc-idri-0003"
TRANSFORMS = (Similarity(1.0, 0.0, 12.0, -7.0), Similarity(1.06, 4.0, -20.0, 15.0), Similarity(0.93, -6.0, 30.0, 10.0))


def prior_of(current: np.ndarray, transform: Similarity, *, gamma: float = 0.7, noise: float = 0.016,
             seed: int = 0) -> np.ndarray:
    """The image as a prior would show it: the anatomy at ``transform``'s place, another exposure
    and noise."""
    return exposed(moved(current, transform), gamma, noise, np.random.default_rng(seed))


def ct_slice() -> np.ndarray:
    with open_study(SAMPLE) as study:
        return study.physical(5)


def raster(eval_dir: Path, pattern: str) -> np.ndarray:
    found = sorted(eval_dir.glob(pattern))
    if not found:
        pytest.skip(f"no {pattern} in the shared evaluation data")
    return np.asarray(Image.open(found[0]).convert("L"))


@pytest.fixture(params=["CT", "MR", "DX", "US"])
def image(request, eval_dir) -> np.ndarray:
    if request.param == "CT":
        return ct_slice()
    return raster(eval_dir, {"MR": "figshare_brain_mri/*.jpg", "DX": "nih_cxr14/*.png",
                             "US": "busi/*.png"}[request.param])


@pytest.mark.parametrize("transform", TRANSFORMS, ids=["shift", "zoom-in-tilt", "zoom-out-tilt"])
def test_a_known_transform_is_recovered_despite_exposure_and_noise(image, transform):
    found = register_images(image, prior_of(image, transform))
    rows, cols = image.shape
    diagonal = math.hypot(rows, cols)
    points = [(cols * 0.25, rows * 0.25), (cols * 0.75, rows * 0.5), (cols * 0.5, rows * 0.75)]
    error = max(math.dist(transform.apply(*p), found.transform.apply(*p)) for p in points)
    assert error <= 0.005 * diagonal  # half a percent of the diagonal
    assert found.transform.rotation_deg == pytest.approx(transform.rotation_deg, abs=0.3)
    assert found.transform.scale == pytest.approx(transform.scale, rel=0.01)
    assert 0 <= found.residual < 0.5 and found.overlap > 0.75
    assert set(found.as_json()) == {"method", "transform", "residual", "overlap"}


def test_the_same_image_registers_to_the_identity():
    image = ct_slice()
    found = register_images(image, image)
    assert found.transform.apply(100.0, 200.0) == pytest.approx((100.0, 200.0), abs=0.5)
    assert found.residual < 0.01


def test_images_of_another_region_are_refused_in_one_sentence(eval_dir):
    head = raster(eval_dir, "figshare_brain_mri/*.jpg")
    for other in (raster(eval_dir, "nih_cxr14/*.png"), raster(eval_dir, "busi/*.png"), ct_slice()):
        with pytest.raises(RegistrationError) as refused:
            register_images(head, other)
        message = refused.value.message
        assert "\n" not in message and message.endswith("cannot be compared.")


def test_a_blank_image_is_refused():
    with pytest.raises(RegistrationError, match="blank"):
        register_images(ct_slice(), np.zeros((64, 64)))


def test_a_similarity_and_its_inverse_undo_each_other():
    transform = Similarity(1.1, 7.5, -12.0, 30.0)
    x, y = transform.inverse().apply(*transform.apply(40.0, 70.0))
    assert (x, y) == pytest.approx((40.0, 70.0))
    assert np.allclose(Similarity.from_matrix(transform.matrix).matrix, transform.matrix)
