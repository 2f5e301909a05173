"""PNG/JPEG loading in every common mode, and every image of the shared evaluation set."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from tools.study import open_study


@pytest.fixture
def gradient() -> np.ndarray:
    return np.tile(np.arange(0, 200, dtype=np.uint8), (60, 1))


def test_png_8bit_greyscale(tmp_path, gradient):
    path = tmp_path / "grey.png"
    Image.fromarray(gradient).save(path)
    with open_study(path) as study:
        assert (study.safe.kind, study.safe.modality, study.safe.photometric) == ("raster", None, "MONOCHROME2")
        np.testing.assert_array_equal(study.display(0), gradient)  # already a display image
        assert study.pixel_spacing_mm(0) is None
        assert study.window_presets() == {}


def test_png_16bit_greyscale_is_windowed_by_percentiles(tmp_path):
    values = np.tile(np.linspace(1000, 40000, 300).astype(np.uint16), (50, 1))
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with open_study(path) as study:
        assert study.safe.bits_stored == 16
        assert study.physical(0).max() == 40000
        shown = study.render(0)
        assert shown.window.name == "auto"
        assert shown.pixels[:, 0].max() == 0 and shown.pixels[:, -1].min() == 255


def test_png_rgb(tmp_path):
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[10:20, 10:20, 2] = 255
    path = tmp_path / "colour.png"
    Image.fromarray(rgb).save(path)
    with open_study(path, modality="us") as study:
        assert study.safe.modality == "US" and study.safe.photometric == "RGB"
        np.testing.assert_array_equal(study.display(0), rgb)


def test_rgb_with_equal_channels_is_greyscale(tmp_path, gradient):
    path = tmp_path / "grey_as_rgb.png"
    Image.fromarray(np.stack([gradient] * 3, axis=-1)).save(path)
    with open_study(path) as study:
        assert study.safe.photometric == "MONOCHROME2"
        np.testing.assert_array_equal(study.display(0), gradient)


def test_png_rgba_composited_on_black(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    rgba[:5, :, 1] = 40
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    with open_study(path) as study:
        shown = study.display(0)
        assert shown.shape == (10, 10, 3)
        assert shown[9, 9].tolist() == [128, 0, 0]


def test_png_palette(tmp_path):
    image = Image.new("P", (30, 20))
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    image.paste(1, (0, 0, 15, 20))
    image.paste(2, (15, 0, 30, 20))
    path = tmp_path / "palette.png"
    image.save(path)
    with open_study(path) as study:
        shown = study.display(0)
        assert shown[0, 0].tolist() == [255, 0, 0] and shown[0, 29].tolist() == [0, 255, 0]


def test_jpeg_greyscale_with_window_override(tmp_path, gradient):
    path = tmp_path / "scan.jpg"
    Image.fromarray(gradient).save(path, quality=95)
    with open_study(path, modality="MR") as study:
        assert study.safe.image_format == "JPEG"
        narrow = study.display(0, "100,50")
        assert narrow[:, :60].max() == 0 and narrow[:, 140:].min() == 255


def test_extension_does_not_matter(tmp_path, gradient):
    path = tmp_path / "IM0001"
    Image.fromarray(gradient).save(path, format="PNG")
    with open_study(path) as study:
        assert study.safe.image_format == "PNG"


def _manifest_images(eval_dir):
    with open(eval_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = {}
    for row in rows:
        images[row["image_path"]] = row
    return images


def test_every_eval_image_loads_with_manifest_size(eval_dir):
    images = _manifest_images(eval_dir)
    assert len(images) >= 100
    for relative, row in images.items():
        with open_study(eval_dir / relative, modality=row["modality"]) as study:
            assert (study.safe.columns, study.safe.rows) == (int(row["width"]), int(row["height"])), relative
            assert study.modality == row["modality"] or study.safe.kind == "dicom", relative
            shown = study.display(0)
            assert shown.shape[:2] == (int(row["height"]), int(row["width"]))
            if row["modality"] == "CT":
                assert study.safe.physical_unit == "HU" and study.safe.pixel_spacing_mm is not None
                assert -1100 < np.median(study.physical(0)[200:300, 200:300]) < 1000  # body, in HU


def test_eval_ct_nodules_are_denser_than_lung(eval_dir):
    """Each LIDC nodule box holds tissue much denser than aerated lung: HU and x/y are right."""
    with open(eval_dir / "manifest.csv", newline="") as handle:
        nodules = [r for r in csv.DictReader(handle) if r["dataset"] == "lidc_ct" and r["label"] == "nodule"]
    assert nodules
    for row in nodules:
        with open_study(eval_dir / row["image_path"]) as study:
            hu = study.physical(0)
            x0, y0, x1, y1 = (int(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
            assert hu[y0:y1 + 1, x0:x1 + 1].max() > -300, row["image_path"]
