"""Spot checks of the DICOM display pipeline, physical values, spacing and lazy frames."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from tests.conftest import pydicom_file
from tools.study import open_study
from tools.study.windowing import apply_window


def test_ct_small_hu_equal_pydicom_modality_lut():
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    with open_study(path) as study:
        assert study.safe.physical_unit == "HU"
        np.testing.assert_array_equal(study.physical(0), expected)
        assert (study.physical(0).min(), study.physical(0).max()) == (expected.min(), expected.max())


def test_ct_without_header_window_uses_soft_tissue_preset():
    with open_study(pydicom_file("CT_small.dcm")) as study:
        assert study.safe.window is None
        rendered = study.render(0)
        assert rendered.window.name == "soft_tissue"
        assert (rendered.window.center, rendered.window.width) == (40, 400)


def test_ct_presets_selectable_after_loading():
    with open_study(pydicom_file("693_J2KI.dcm")) as study:
        assert set(study.window_presets()) == {"lung", "soft_tissue", "brain", "bone"}
        lung, bone = study.display(0, "lung"), study.display(0, "bone")
        assert not np.array_equal(lung, bone)
        hu = study.physical(0)
        # Lung window: air (-1000 HU) well below -1350 is black, bone above 150 HU is white.
        assert lung[hu <= -1350].max(initial=0) == 0
        assert lung[hu >= 160].min(initial=255) == 255
        np.testing.assert_array_equal(study.display(0, "-600,1500"), lung)


def test_monochrome1_displays_inverted():
    path = pydicom_file("RG1_UNCI.dcm")
    with open_study(path) as study:
        assert study.safe.photometric == "MONOCHROME1"
        physical = study.physical(0)
        shown = study.display(0)
        window = study.render(0).window
        not_inverted = np.clip(np.rint(apply_window(physical, window) * 255), 0, 255)
        np.testing.assert_array_equal(shown.astype(int), 255 - not_inverted.astype(int))
        # In MONOCHROME1 high values mean dark: the brightest stored pixels show darkest.
        high = shown[physical >= np.percentile(physical, 99.9)].mean()
        low = shown[physical <= np.percentile(physical, 0.1)].mean()
        assert high + 100 < low


def test_palette_colour_ultrasound_displays_in_colour():
    with open_study(pydicom_file("examples_palette.dcm")) as study:
        shown = study.display(0)
        assert shown.shape == (350, 800, 3)
        channels_differ = (shown[..., 0] != shown[..., 1]) | (shown[..., 1] != shown[..., 2])
        assert channels_differ.sum() > 100
        assert study.window_presets() == {}


def test_ybr_jpeg_ultrasound_is_rgb():
    with open_study(pydicom_file("examples_ybr_color.dcm")) as study:
        assert study.frame_count == 30
        shown = study.display(12)
        assert shown.shape == (240, 320, 3)
        ds = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))
        reference = ds.pixel_array[12]  # pydicom converts YBR_FULL_422 to RGB
        assert np.abs(shown.astype(int) - reference.astype(int)).max() <= 1


def test_enhanced_ct_functional_groups_give_hu():
    with open_study(pydicom_file("eCT_Supplemental.dcm")) as study:
        hu = study.physical(0)
        assert (hu.min(), hu.max()) == (-1024, 172)
        assert study.safe.window.center == 49 and study.safe.window.width == 102
        assert study.safe.spacing_source == "PixelMeasuresSequence"
        assert study.pixel_spacing_mm(1) == pytest.approx((0.388672, 0.388672))
        assert study.geometry(0).position_mm != study.geometry(1).position_mm


def test_enhanced_ct_matches_highdicom():
    highdicom = pytest.importorskip("highdicom")
    path = pydicom_file("eCT_Supplemental.dcm")
    image = highdicom.imread(str(path))
    with open_study(path) as study:
        for frame in range(study.frame_count):
            expected = image.get_frame(frame + 1, apply_real_world_transform=False,
                                       apply_modality_transform=True, apply_voi_transform=False)
            np.testing.assert_allclose(study.physical(frame), expected)


def test_enhanced_mr_multiframe():
    with open_study(pydicom_file("emri_small.dcm")) as study:
        assert study.frame_count == 10
        frames = [study.physical(i) for i in range(10)]
        assert not all(np.array_equal(frames[0], f) for f in frames[1:])


def test_voi_lut_sequence_is_applied():
    path = pydicom_file("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    with open_study(path) as study:
        rendered = study.render(0)
        assert rendered.window is None  # a LUT, not a centre/width
        lut = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=True).astype(float)
        data = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=float)
        expected = np.rint((lut - data.min()) / (data.max() - data.min()) * 255)
        np.testing.assert_array_equal(rendered.pixels, expected.astype(np.uint8))


def test_modality_lut_sequence_is_applied():
    path = pydicom_file("mlut_18.dcm")
    ds = pydicom.dcmread(path)
    with open_study(path) as study:
        np.testing.assert_array_equal(study.physical(0), apply_modality_lut(ds.pixel_array, ds).astype(np.float32))


def test_header_window_first_value_of_multivalued():
    path = pydicom_file("MR2_J2KI.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    with open_study(path) as study:
        center = ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter
        assert study.safe.window.center == float(center)


@pytest.mark.parametrize(
    ("name", "spacing", "source"),
    [
        ("CT_small.dcm", (0.661468, 0.661468), "PixelSpacing"),
        ("RG1_UNCI.dcm", None, None),  # PixelSpacing [0, 0]: unknown, not zero
        ("RG3_UNCI.dcm", None, None),  # no spacing at all
        ("dicomdirtests/77654033/CR1/6154", (0.1, 0.1), "ImagerPixelSpacing"),
        ("color3d_jpeg_baseline.dcm", (0.5104970559477806, 0.5104970559477806), "UltrasoundRegion"),
        ("examples_palette.dcm", (0.2622878766196998, 0.2622878766196998), "UltrasoundRegion"),
        ("US1_UNCI.dcm", None, None),
    ],
)
def test_pixel_spacing_sources(name, spacing, source):
    with open_study(pydicom_file(name)) as study:
        assert study.safe.spacing_source == source
        if spacing is None:
            assert study.safe.pixel_spacing_mm is None
        else:
            assert study.safe.pixel_spacing_mm == pytest.approx(spacing)


def test_imager_spacing_divided_by_magnification(tmp_path):
    ds = pydicom.dcmread(pydicom_file("dicomdirtests/77654033/CR1/6154"))
    ds.EstimatedRadiographicMagnificationFactor = 1.25
    path = tmp_path / "cr.dcm"
    ds.save_as(path)
    with open_study(path) as study:
        assert study.safe.pixel_spacing_mm == pytest.approx((0.08, 0.08))
        assert study.safe.spacing_source == "ImagerPixelSpacing/magnification"


def test_one_frame_of_long_multiframe_is_decoded_lazily(monkeypatch):
    import tools.study.dicom as dicom_module

    calls = []
    real = dicom_module.pixel_array

    def spy(src, **kwargs):
        calls.append(kwargs.get("index"))
        return real(src, **kwargs)

    monkeypatch.setattr(dicom_module, "pixel_array", spy)
    path = pydicom_file("color3d_jpeg_baseline.dcm")
    tracemalloc.start()
    with open_study(path) as study:
        assert study.frame_count == 120
        frame = study.display(77)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert frame.shape == (480, 640, 3)
    assert calls == [0, 77]  # the first frame at open (to prove readability), then frame 77 only
    all_frames_bytes = 120 * 480 * 640 * 3
    assert peak < all_frames_bytes / 4


def test_safe_metadata_holds_no_phi():
    path = pydicom_file("MR_small.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    with open_study(path) as study:
        dumped = study.safe.model_dump_json()
        assert str(ds.PatientName) and str(ds.PatientName) not in dumped
        assert ds.PatientID not in dumped
        assert str(ds.StudyInstanceUID) not in dumped
        assert study.identifying.patient_name == str(ds.PatientName)
        assert study.identifying.patient_id == ds.PatientID


def test_study_id_is_content_hash():
    with open_study(pydicom_file("CT_small.dcm")) as a, open_study(pydicom_file("CT_small.dcm")) as b:
        assert a.id == b.id and a.id.startswith("st-")
    with open_study(pydicom_file("MR_small.dcm")) as c:
        assert c.id != a.id


def test_frame_cache_returns_read_only_arrays():
    with open_study(pydicom_file("CT_small.dcm")) as study:
        values = study.physical(0)
        with pytest.raises(ValueError):
            values[0, 0] = 0
