"""The (prior, current) pairs with a known truth (``agent.evaluation.longitudinal``): the lesion
grown, shrunk, removed or kept as asked, and the known transform where the truth says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.evaluation.longitudinal import Lesion, make_pair, moved, radially_scaled, random_transform, removed
from tools.compare.registration import Similarity


def disc_image(radius: float = 10.0, size: int = 128) -> tuple[np.ndarray, Lesion]:
    rows, cols = np.mgrid[0:size, 0:size]
    image = 40.0 + 0.2 * cols  # a gentle gradient: something to fill from
    image[np.hypot(cols - 64.0, rows - 60.0) <= radius] += 100.0
    return image, Lesion(64.0, 60.0, radius)


def radius_of(image: np.ndarray, lesion: Lesion) -> float:
    """The equivalent radius of what stands out near the lesion's place."""
    rows, cols = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    near = np.hypot(cols - lesion.x, rows - lesion.y) <= 3.5 * lesion.radius
    background = 40.0 + 0.2 * cols
    return math.sqrt(float(((image - background > 50) & near).sum()) / math.pi)


@pytest.mark.parametrize("factor", [0.6, 0.8, 1.25, 1.5])
def test_the_radial_warp_scales_the_lesion_by_its_factor(factor):
    image, lesion = disc_image()
    assert radius_of(radially_scaled(image, lesion, factor), lesion) == pytest.approx(10.0 * factor, rel=0.06)


def test_the_warp_leaves_the_image_beyond_three_radii_alone():
    image, lesion = disc_image()
    scaled = radially_scaled(image, lesion, 1.5)
    rows, cols = np.mgrid[0:128, 0:128]
    far = np.hypot(cols - lesion.x, rows - lesion.y) > 3 * lesion.radius + 1
    assert np.allclose(scaled[far], image[far])


def test_a_removed_lesion_leaves_its_surroundings():
    image, lesion = disc_image()
    filled = removed(image, lesion)
    assert radius_of(filled, lesion) < 1.0
    rows, cols = np.mgrid[0:128, 0:128]
    disc = np.hypot(cols - lesion.x, rows - lesion.y) <= lesion.radius
    assert np.abs(filled[disc] - (40.0 + 0.2 * cols[disc])).max() < 5.0


def test_moved_puts_a_point_where_the_transform_says():
    image = np.zeros((100, 120))
    image[30, 40] = 1000.0
    transform = Similarity(1.05, 5.0, 6.0, -4.0)
    after = ndi_peak(moved(image, transform))
    assert math.dist(after, transform.apply(40.0, 30.0)) < 1.0


def ndi_peak(image: np.ndarray) -> tuple[float, float]:
    row, col = np.unravel_index(int(np.argmax(image)), image.shape)
    return float(col), float(row)


def test_each_status_makes_the_prior_it_says():
    image, lesion = disc_image()
    identity = Similarity(1.0, 0.0, 0.0, 0.0)
    grown = make_pair(image, lesion, "grown", identity, factor=1.5)
    assert radius_of(grown.prior, lesion) == pytest.approx(10 / 1.5, rel=0.08) and grown.factor == 1.5
    shrunk = make_pair(image, lesion, "shrunk", identity, factor=0.7)
    assert radius_of(shrunk.prior, lesion) == pytest.approx(10 / 0.7, rel=0.06)
    new = make_pair(image, lesion, "new", identity)
    assert radius_of(new.prior, lesion) < 1.0 and radius_of(new.current, lesion) > 9 and new.factor is None
    resolved = make_pair(image, lesion, "resolved", identity)
    assert radius_of(resolved.current, lesion) < 1.0 and radius_of(resolved.prior, lesion) > 9
    stable = make_pair(image, lesion, "stable", identity)
    assert np.allclose(stable.prior, stable.current) and stable.factor == 1.0
    with pytest.raises(ValueError):
        make_pair(image, lesion, "grown", identity, factor=0.8)


def test_random_transforms_stay_plausible():
    rng = np.random.default_rng(7)
    for _ in range(50):
        transform = random_transform(rng, (512, 512))
        assert 0.9 <= transform.scale <= 1.1 and abs(transform.rotation_deg) <= 8
        x, y = transform.apply(255.5, 255.5)  # the centre moves by the shift alone
        assert abs(x - 255.5) <= 0.05 * 512 + 1e-6 and abs(y - 255.5) <= 0.05 * 512 + 1e-6
