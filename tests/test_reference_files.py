"""The loader against every file of pydicom's test data and pydicom-data (reference table)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom.data
import pytest

from tests.reference_files import REFERENCE, Loads, Refused
from tools.errors import LoupeError
from tools.study import open_study


def _all_files() -> dict[str, Path]:
    files = {}
    for found in pydicom.data.get_testdata_files("**/*"):
        path = Path(found)
        if not path.is_file():
            continue
        text = path.as_posix()
        marker = "pydicom/data/test_files/"
        key = text.split(marker, 1)[1] if marker in text else f"pydicom-data:{path.name}"
        files[key] = path
    return files


FILES = _all_files()


def test_table_covers_every_installed_test_file():
    assert len(FILES) >= 240, "pydicom-data seems missing: install the test extras"
    assert sorted(set(FILES) - set(REFERENCE)) == [], "new test files need a row in the table"
    assert sorted(set(REFERENCE) - set(FILES)) == [], "table rows without a file"


@pytest.mark.parametrize("key", sorted(k for k, v in REFERENCE.items() if isinstance(v, Loads)))
def test_file_loads_as_expected(key):
    expected: Loads = REFERENCE[key]
    with open_study(FILES[key]) as study:
        safe = study.safe
        assert (safe.modality, safe.rows, safe.columns, safe.frames) == expected[:4]
        for frame in sorted({0, study.frame_count - 1}):
            pixels = study.display(frame)
            assert pixels.dtype == np.uint8
            shape = (expected.rows, expected.columns) + ((3,) if expected.samples == 3 else ())
            assert pixels.shape == shape
            physical = study.physical(frame)
            assert physical.dtype == np.float32 and physical.shape == (expected.rows, expected.columns)
            assert np.isfinite(physical).all()


@pytest.mark.parametrize("key", sorted(k for k, v in REFERENCE.items() if isinstance(v, Refused)))
def test_file_is_refused_with_a_typed_error(key):
    expected: Refused = REFERENCE[key]
    with pytest.raises(LoupeError) as caught:
        open_study(FILES[key])
    assert type(caught.value) is expected.error
    message = caught.value.message
    assert message and "\n" not in message and len(message) < 300
    assert "Traceback" not in message
