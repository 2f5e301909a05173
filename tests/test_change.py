"""A finding's change between the prior and the current study (``tools.compare.change``): each
status, the growth threshold (a clinical minimum and the measurements' own uncertainty), and the
volume doubling time."""

from __future__ import annotations

import math

import pytest

from tools.compare.change import (CLINICAL_MIN_MM, LesionSize, change, doubling_time_days, growth_threshold_mm,
                                  status)


def test_each_status():
    prior = LesionSize(10.0, 8.0)
    assert status(None, prior) == "new"
    assert status(prior, None) == "resolved"
    assert status(prior, LesionSize(12.0, 9.5)) == "grown"  # mean 9 → 10.75 mm: +1.75 ≥ 1.5
    assert status(prior, LesionSize(8.0, 7.0)) == "shrunk"  # 9 → 7.5: −1.5
    assert status(prior, LesionSize(11.0, 9.0)) == "stable"  # +1.0 < 1.5
    with pytest.raises(ValueError):
        status(None, None)


def test_the_threshold_is_the_clinical_minimum_or_what_the_measurements_tell_apart():
    assert growth_threshold_mm(LesionSize(10, 8, 0.2), LesionSize(12, 9, 0.2)) == CLINICAL_MIN_MM
    uncertain = growth_threshold_mm(LesionSize(10, 8, 1.5), LesionSize(12, 9, 2.0))
    assert uncertain == pytest.approx(2 * math.hypot(1.5, 2.0))  # 5 mm
    assert status(LesionSize(10, 8, 1.5), LesionSize(14, 12, 2.0)) == "stable"  # +4 mm, within what they can tell


def test_the_doubling_time_follows_schwartz():
    assert doubling_time_days(100.0, 200.0, 90) == pytest.approx(90.0)
    assert doubling_time_days(100.0, 400.0, 90) == pytest.approx(45.0)
    assert doubling_time_days(100.0, 100.0, 90) is None  # no growth
    assert doubling_time_days(100.0, 80.0, 90) is None
    assert doubling_time_days(100.0, 200.0, 0) is None
    # A nodule whose diameters grew by 2^(1/3) has doubled its volume.
    factor = 2 ** (1 / 3)
    grown = change(LesionSize(9.0, 9.0), LesionSize(9.0 * factor, 9.0 * factor), 120)
    assert grown.doubling_time_days == pytest.approx(120.0)
    assert grown.volume_pct == pytest.approx(100.0)
    assert grown.mean_diameter_mm == pytest.approx(9.0 * (factor - 1))


def test_a_stable_or_shrinking_finding_has_no_doubling_time_and_signed_changes():
    shrunk = change(LesionSize(10.0, 10.0), LesionSize(8.0, 8.0), 60)
    assert shrunk.doubling_time_days is None
    assert shrunk.mean_diameter_mm == pytest.approx(-2.0) and shrunk.mean_diameter_pct == pytest.approx(-20.0)
    assert shrunk.area_pct == pytest.approx(-36.0) and shrunk.volume_pct == pytest.approx(-48.8)
    small = change(LesionSize(10.0, 10.0), LesionSize(10.4, 10.4), 60)  # grew, within the threshold
    assert small.doubling_time_days is None and small.threshold_mm == CLINICAL_MIN_MM
