"""VOI windowing against pydicom's reference implementation, and window parsing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing

from tools.errors import InvalidWindowError
from tools.study.windowing import Window, apply_window, parse_window, percentile_window, to_uint8


def _pydicom_unit(values: np.ndarray, window: Window) -> np.ndarray:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = 16
    ds.PixelRepresentation = 1
    ds.WindowCenter = window.center
    ds.WindowWidth = window.width
    ds.VOILUTFunction = window.function
    with np.errstate(over="ignore"):  # pydicom's sigmoid overflows harmlessly to 0
        out = apply_windowing(values.astype(np.float64), ds)
    return (out - (-(2**15))) / (2**16 - 1)  # pydicom maps to the stored range of the data


@settings(max_examples=200, deadline=None)
@given(
    center=st.floats(-2000, 3000, allow_nan=False),
    width=st.floats(1, 4000, allow_nan=False),
    function=st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID"]),
)
def test_apply_window_matches_pydicom(center, width, function):
    values = np.linspace(-3000, 4000, 257)
    window = Window(center=center, width=width, function=function)
    # apply_window works in float32 (a frame's memory): values near 4000 are held to 2.4e-4, which
    # a narrow window magnifies by 1 / (width - 1); hypothesis found width 2 at centre 2278.
    float32_slack = 4 * np.finfo(np.float32).eps * 4000 / max(width - 1, 1)
    np.testing.assert_allclose(apply_window(values, window), _pydicom_unit(values, window),
                               atol=1e-4 + float32_slack)


def test_apply_window_is_in_unit_range():
    unit = apply_window(np.array([-5000, 40, 5000.0]), Window(center=40, width=400))
    assert unit.tolist() == [0.0, pytest.approx(0.5, abs=0.01), 1.0]
    assert to_uint8(unit).tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    ("text", "modality", "expected"),
    [
        ("lung", "CT", (-600, 1500)),
        ("LUNG", "CT", (-600, 1500)),
        ("soft_tissue", "CT", (40, 400)),
        ("soft-tissue", "CT", (40, 400)),
        ("brain", "CT", (40, 80)),
        ("bone", "CT", (400, 1800)),
        ("-600,1500", "CT", (-600, 1500)),
        ("300, 600", "MR", (300, 600)),
    ],
)
def test_parse_window(text, modality, expected):
    window = parse_window(text, modality)
    assert (window.center, window.width) == expected


@pytest.mark.parametrize(("text", "modality"), [("lung", "MR"), ("liver", "CT"), ("40", "CT"), ("40,0", "CT"),
                                                 ("40,-5", "CT"), ("a,b", "CT"), ("1,2,3", "CT"), ("nan,4", "CT")])
def test_parse_window_rejects(text, modality):
    with pytest.raises(InvalidWindowError):
        parse_window(text, modality)


def test_percentile_window_is_robust_to_outliers():
    values = np.concatenate([np.linspace(0, 100, 10_000), [1e6]])
    window = percentile_window(values)
    assert 95 < window.center + window.width / 2 < 101


def test_percentile_window_of_constant_image():
    window = percentile_window(np.full((4, 4), 7.0))
    assert window.width > 0 and np.isfinite(apply_window(np.full((4, 4), 7.0), window)).all()


def test_window_rejects_non_positive_width():
    with pytest.raises(ValueError):
        Window(center=0, width=0)
