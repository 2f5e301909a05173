"""The ``loupe`` command-line contract (agent/cli/).

Most cases call ``agent.cli.main.main([...])`` in-process (fast); a handful go through a real
subprocess to prove the installed entry point behaves the same. Everything is offline: the
DICOM files come from pydicom's test data (and pydicom-data) with ``download=False``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import pydicom_file, run_cli

ROOT = Path(__file__).resolve().parent.parent

JSON_KEYS = {"modality", "rows", "columns", "frames", "photometric", "pixel_spacing_mm", "window", "body_part"}


# -- helpers and fixtures ----------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("isolated_cli")


def _command() -> list[str]:
    script = Path(sys.executable).with_name("loupe")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "agent.cli"]


def run_subprocess(*args) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LOUPE_DEBUG"}
    return subprocess.run(
        [*_command(), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def info_json(capsys, *args) -> dict:
    code, out, err = run_cli(capsys, "info", *args, "--json")
    assert code == 0, err
    assert err == ""
    summary = json.loads(out)
    assert JSON_KEYS <= summary.keys()
    return summary


def view_pixels(capsys, out: Path, *args) -> np.ndarray:
    code, stdout, err = run_cli(capsys, "view", *args, "--out", out)
    assert code == 0, err
    assert err == ""
    with Image.open(out) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def assert_one_line_error(code: int, out: str, err: str) -> None:
    assert code == 2
    assert out == ""
    assert err.startswith("error: ")
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0
    assert len(err.strip()) > len("error: ") + 5
    # A typed error with a sentence, not the catch-all for bugs in Loupe itself.
    assert "unexpected internal error" not in err


@pytest.fixture
def grey_png(tmp_path) -> tuple[Path, np.ndarray]:
    pixels = (np.arange(30 * 40).reshape(30, 40) * 7 % 256).astype(np.uint8)
    path = tmp_path / "gradient.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


# -- info --json -------------------------------------------------------------------------------


def test_info_json_ct_small(capsys):
    summary = info_json(capsys, pydicom_file("CT_small.dcm"))
    assert summary["modality"] == "CT"
    assert (summary["rows"], summary["columns"], summary["frames"]) == (128, 128, 1)
    assert summary["photometric"] == "MONOCHROME2"
    assert summary["pixel_spacing_mm"] == pytest.approx([0.661468, 0.661468])
    assert summary["window"] is None  # the header has no window
    assert summary["body_part"] is None
    display = summary["display_window"]
    assert (display["center"], display["width"]) == (40, 400)
    assert display["source"] == "soft_tissue"
    assert set(summary["window_presets"]) == {"bone", "brain", "lung", "soft_tissue"}


def test_info_json_cr_monochrome1_without_spacing(capsys):
    summary = info_json(capsys, pydicom_file("RG1_UNCI.dcm"))
    assert summary["modality"] == "CR"
    assert (summary["rows"], summary["columns"], summary["frames"]) == (1955, 1841, 1)
    assert summary["photometric"] == "MONOCHROME1"
    # PixelSpacing is [0, 0]: no spacing, and no guess either.
    assert summary["pixel_spacing_mm"] is None
    assert summary["window"] == {"center": 15000, "width": 30000}
    assert summary["body_part"] == "CHEST"


def test_info_json_ultrasound_multiframe_region_spacing(capsys):
    summary = info_json(capsys, pydicom_file("color3d_jpeg_baseline.dcm"))
    assert summary["modality"] == "US"
    assert (summary["rows"], summary["columns"], summary["frames"]) == (480, 640, 120)
    assert summary["pixel_spacing_mm"] == pytest.approx([0.5105, 0.5105], abs=1e-4)
    assert summary["window"] is None
    assert summary["display_window"] is None  # colour: no window


def test_info_json_enhanced_ct(capsys):
    summary = info_json(capsys, pydicom_file("eCT_Supplemental.dcm"))
    assert summary["modality"] == "CT"
    assert summary["frames"] == 2
    assert (summary["rows"], summary["columns"]) == (512, 512)
    assert summary["window"] == {"center": 49, "width": 102}
    assert summary["pixel_spacing_mm"] == pytest.approx([0.388672, 0.388672])


def test_info_json_png(capsys, grey_png):
    path, _ = grey_png
    summary = info_json(capsys, path)
    assert summary["kind"] == "raster"
    assert summary["modality"] is None
    assert (summary["rows"], summary["columns"], summary["frames"]) == (30, 40, 1)
    assert summary["pixel_spacing_mm"] is None
    assert summary["window"] is None

    assert info_json(capsys, path, "--modality", "MR")["modality"] == "MR"


def test_info_text(capsys):
    code, out, err = run_cli(capsys, "info", pydicom_file("CT_small.dcm"))
    assert code == 0, err
    assert err == ""
    assert "CT" in out
    assert "128 x 128" in out
    assert "0.6615" in out  # spacing
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


# -- view --------------------------------------------------------------------------------------


def test_view_ct_native_resolution_and_windows(capsys, tmp_path):
    ct = pydicom_file("CT_small.dcm")
    default = view_pixels(capsys, tmp_path / "default.png", ct)
    assert default.shape == (128, 128)
    assert default.dtype == np.uint8
    assert default.min() < default.max()  # an image, not a flat field

    lung = view_pixels(capsys, tmp_path / "lung.png", ct, "--window", "lung")
    custom = view_pixels(capsys, tmp_path / "custom.png", ct, "--window", "-600,1500")
    assert lung.shape == (128, 128)
    assert not np.array_equal(lung, default)
    assert np.array_equal(lung, custom)

    # The default display window is soft tissue 40/400 (as info reports).
    soft = view_pixels(capsys, tmp_path / "soft.png", ct, "--window", "40,400")
    assert np.array_equal(soft, default)


def test_view_ultrasound_frame(capsys, tmp_path):
    us = pydicom_file("color3d_jpeg_baseline.dcm")
    frame77 = view_pixels(capsys, tmp_path / "f77.png", us, "--frame", "77")
    assert frame77.shape == (480, 640, 3)
    frame0 = view_pixels(capsys, tmp_path / "f0.png", us)
    assert frame0.shape == (480, 640, 3)
    assert not np.array_equal(frame0, frame77)


def test_view_png_round_trip(capsys, tmp_path, grey_png):
    path, pixels = grey_png
    shown = view_pixels(capsys, tmp_path / "out.png", path)
    assert np.array_equal(shown, pixels)


@pytest.mark.parametrize("frame", ["1", "-1"])
def test_view_frame_out_of_range(capsys, tmp_path, frame):
    out = tmp_path / "out.png"
    code, stdout, err = run_cli(capsys, "view", pydicom_file("CT_small.dcm"), "--out", out, "--frame", frame)
    assert_one_line_error(code, stdout, err)
    assert "frame" in err.lower()
    assert not out.exists()


def test_view_missing_output_directory_leaves_nothing(capsys, tmp_path):
    out = tmp_path / "missing" / "out.png"
    code, stdout, err = run_cli(capsys, "view", pydicom_file("CT_small.dcm"), "--out", out)
    assert_one_line_error(code, stdout, err)
    assert not out.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_view_unwritable_target_leaves_no_partial_file(capsys, tmp_path):
    out = tmp_path / "taken.png"
    out.mkdir()  # a directory where the PNG should go: the final rename fails
    code, stdout, err = run_cli(capsys, "view", pydicom_file("CT_small.dcm"), "--out", out)
    assert_one_line_error(code, stdout, err)
    assert out.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]


# -- the error contract ------------------------------------------------------------------------


def _error_case(name: str, tmp_path: Path) -> tuple[list, str]:
    """(arguments, a word the message must contain) for error case ``name``."""
    ct = pydicom_file("CT_small.dcm")
    out = tmp_path / "out.png"
    if name == "nonexistent":
        return ["info", tmp_path / "nope.dcm"], "exist"
    if name == "zero-byte":
        path = tmp_path / "empty.dcm"
        path.write_bytes(b"")
        return ["info", path], "empty"
    if name == "random-bytes":
        path = tmp_path / "noise.bin"
        path.write_bytes(random.Random(1234).randbytes(4096))
        return ["info", path], "not a dicom"
    if name == "truncated":
        return ["info", pydicom_file("MR_truncated.dcm")], "damaged"
    if name == "jpeg-12-bit":
        return ["info", pydicom_file("JPEG-lossy.dcm")], "pylibjpeg-libjpeg"
    if name == "structured-report":
        return ["info", pydicom_file("test-SR.dcm")], "no image"
    if name == "view-random-bytes":
        path = tmp_path / "noise.dcm"
        path.write_bytes(random.Random(99).randbytes(2048))
        return ["view", path, "--out", out], "not a dicom"
    if name == "unknown-window":
        return ["view", ct, "--out", out, "--window", "nope"], "nope"
    if name == "zero-width-window":
        return ["view", ct, "--out", out, "--window", "-600,0"], "width"
    if name == "colour-window-preset":
        return ["view", pydicom_file("color3d_jpeg_baseline.dcm"), "--out", out, "--window", "lung"], "colour"
    if name == "colour-window-custom":
        return ["view", pydicom_file("color3d_jpeg_baseline.dcm"), "--out", out, "--window", "100,200"], "colour"
    if name == "not-png":
        return ["view", ct, "--out", tmp_path / "out.jpg"], ".png"
    if name == "unknown-subcommand":
        return ["frobnicate", ct], "invalid choice"
    if name == "no-arguments":
        return [], "required"
    if name == "info-without-path":
        return ["info"], "required"
    if name == "view-without-out":
        return ["view", ct], "--out"
    if name == "bad-frame-number":
        return ["view", ct, "--out", out, "--frame", "two"], "frame"
    raise AssertionError(name)


ERROR_CASES = [
    "nonexistent", "zero-byte", "random-bytes", "truncated", "jpeg-12-bit", "structured-report",
    "view-random-bytes", "unknown-window", "zero-width-window", "colour-window-preset", "colour-window-custom", "not-png",
    "unknown-subcommand", "no-arguments", "info-without-path", "view-without-out", "bad-frame-number",
]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_contract(capsys, tmp_path, case):
    args, word = _error_case(case, tmp_path)
    code, out, err = run_cli(capsys, *args)
    assert_one_line_error(code, out, err)
    assert word.lower() in err.lower()
    assert not (tmp_path / "out.png").exists()
    assert not list(tmp_path.glob("*.part"))


def test_json_flag_does_not_change_error_contract(capsys, tmp_path):
    code, out, err = run_cli(capsys, "info", pydicom_file("test-SR.dcm"), "--json")
    assert_one_line_error(code, out, err)


# -- the real entry point ----------------------------------------------------------------------


def test_subprocess_info_json():
    result = run_subprocess("info", pydicom_file("CT_small.dcm"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["modality"] == "CT"
    assert (summary["rows"], summary["columns"]) == (128, 128)


def test_subprocess_view_negative_window(tmp_path):
    out = tmp_path / "lung.png"
    result = run_subprocess("view", pydicom_file("CT_small.dcm"), "--window", "-600,1500", "--out", out)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (128, 128)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["info", "/nonexistent/loupe-test/none.dcm"], id="nonexistent"),
        pytest.param(["frobnicate"], id="unknown-subcommand"),
        pytest.param([], id="no-arguments"),
    ],
)
def test_subprocess_errors(args):
    result = run_subprocess(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_subprocess_truncated_file():
    result = run_subprocess("info", pydicom_file("MR_truncated.dcm"), "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
