"""Shared fixtures: pydicom's offline test files and the shared evaluation data."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom.data
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LOUPE_SHARED_DIR", REPO.parent / "shared"))
EVAL_DIR = SHARED / "data" / "eval"

# pydicom warns about the deliberately odd test files; the tests assert on outcomes instead.
warnings.filterwarnings("ignore", module="pydicom")


def pydicom_file(name: str) -> Path:
    """A file of pydicom's test data or pydicom-data, never downloaded."""
    found = pydicom.data.get_testdata_file(name, download=False)
    if found is None:
        raise FileNotFoundError(f"pydicom test file {name} is not installed")
    return Path(found)


@pytest.fixture
def eval_dir() -> Path:
    if not (EVAL_DIR / "manifest.csv").exists():
        if os.environ.get("CI"):
            pytest.fail(f"the shared evaluation data is missing at {EVAL_DIR}")
        pytest.skip(f"shared evaluation data not found at {EVAL_DIR}")
    return EVAL_DIR
