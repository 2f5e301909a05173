"""A current finding carried to the prior (``tools.compare_with_prior.carry``), on pairs made from
the bundled CT's nodule with a known change: found and measured where it was, absent where it
was not."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from agent.evaluation.longitudinal import Lesion, make_pair
from tools.compare.registration import Similarity
from tools.compare_with_prior.carry import carry_to_prior, lesion_contrast
from tools.coordinates import BoxPx
from tools.detection.working import prepare
from tools.measure.segmentation import measure_lesion, settings_for
from tools.study import open_study

SAMPLE = Path(__file__).resolve().parent.parent / "agent" / "sample_data" / "lidc-idri-0003"
#: The nodule on slice 6 of the sample (the detector's box for it).
NODULE = BoxPx(x0=354.4, y0=338.3, x1=378.9, y1=362.7)
TRANSFORM = Similarity(1.05, 3.0, 10.0, -6.0)


@pytest.fixture(scope="module")
def slice_hu() -> np.ndarray:
    with open_study(SAMPLE) as study:
        return np.asarray(study.physical(5), dtype=np.float64)


def lesion() -> Lesion:
    x, y = NODULE.center
    return Lesion(x, y, (NODULE.width + NODULE.height) / 4)


def mean_px(size) -> float:
    return (size.long + size.short) / 2


def carried(slice_hu: np.ndarray, status: str, factor: float = 1.0):
    pair = make_pair(slice_hu, lesion(), status, TRANSFORM, factor=factor)
    work = prepare(pair.current.astype(np.float32), "CT")
    current = measure_lesion(work, NODULE.center, None, settings_for("CT"))
    here = lesion_contrast(work, NODULE.center, lesion().radius)
    return carry_to_prior(prepare(pair.prior.astype(np.float32), "CT"), NODULE, TRANSFORM, None,
                          contrast_here=here), current


def test_a_stable_nodule_is_found_where_the_transform_puts_it_and_measured_alike(slice_hu):
    found, current = carried(slice_hu, "stable")
    assert found.present and found.verification.status != "rejected"
    assert math.dist(found.center_px, TRANSFORM.apply(*NODULE.center)) < 3.0
    assert mean_px(found.size) == pytest.approx(mean_px(current) * TRANSFORM.scale, rel=0.15)


@pytest.mark.parametrize("factor", [1.5, 0.7])
def test_a_grown_or_shrunk_nodule_measures_by_its_factor_in_the_prior(slice_hu, factor):
    found, current = carried(slice_hu, "grown" if factor > 1 else "shrunk", factor)
    assert found.present
    ratio = mean_px(current) * TRANSFORM.scale / mean_px(found.size)
    assert ratio == pytest.approx(factor, rel=0.2)


def test_a_new_nodule_is_absent_from_the_prior(slice_hu):
    found, _ = carried(slice_hu, "new")
    assert not found.present and found.size is None


def test_a_lesions_contrast_keeps_its_sign_and_vanishes_when_removed(slice_hu):
    work = prepare(slice_hu.astype(np.float32), "CT")
    nodule = lesion_contrast(work, NODULE.center, lesion().radius)
    assert nodule > 2.0  # a dense nodule in aerated lung
    removed = make_pair(slice_hu, lesion(), "resolved", Similarity(1.0, 0.0, 0.0, 0.0)).current
    assert lesion_contrast(prepare(removed.astype(np.float32), "CT"), NODULE.center, lesion().radius) < 0.5 * nodule
    assert lesion_contrast(work, (-50.0, -50.0), 10.0) == 0.0  # off the image
