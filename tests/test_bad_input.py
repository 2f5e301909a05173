"""Bad input gets one typed error with a plain sentence, and nothing crashes or is left behind."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import UID

from tests.conftest import pydicom_file
from tools.errors import (
    LoupeError,
    MissingCodecError,
    NotAnImageError,
    StudyTooLargeError,
    UnreadableStudyError,
    UnsupportedStudyError,
)
from tools.study import StudyLimits, open_study


def _refused(source, error, **kwargs) -> str:
    with pytest.raises(LoupeError) as caught:
        open_study(source, **kwargs)
    assert type(caught.value) is error, caught.value
    message = caught.value.message
    assert message and "\n" not in message and "Traceback" not in message
    return message


def test_zero_byte_file(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    assert "empty" in _refused(empty, UnreadableStudyError)


def test_random_bytes(tmp_path):
    noise = tmp_path / "noise.dcm"
    noise.write_bytes(np.random.default_rng(0).bytes(50_000))
    assert "not a DICOM, PNG or JPEG" in _refused(noise, UnreadableStudyError)


def test_random_bytes_after_a_dicom_preamble(tmp_path):
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(1).bytes(5000))
    _refused(fake, UnreadableStudyError)


def test_truncated_dicom():
    assert "incomplete or damaged" in _refused(pydicom_file("MR_truncated.dcm"), UnreadableStudyError)


def test_truncated_file_cut_in_the_header(tmp_path):
    data = pydicom_file("CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:700])
    with pytest.raises((UnreadableStudyError, NotAnImageError)):
        open_study(cut)


def test_truncated_file_cut_in_pixel_data(tmp_path):
    data = pydicom_file("CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 5000])
    _refused(cut, UnreadableStudyError)


def test_corrupt_jpeg_stream_in_12_bit_file_names_the_plugin():
    message = _refused(pydicom_file("JPEG-lossy.dcm"), MissingCodecError)
    assert "pylibjpeg-libjpeg" in message


def test_corrupt_jpeg_baseline_stream(tmp_path):
    ds = pydicom.dcmread(pydicom_file("SC_rgb_dcmtk_+eb+cy+np.dcm"))
    frame = bytearray(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1).__next__())
    frame[len(frame) // 2:] = b"\x00" * (len(frame) - len(frame) // 2)  # zero the second half
    del frame[-2:]  # and drop the end-of-image marker
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    path = tmp_path / "broken.dcm"
    ds.save_as(path)
    # Some decoders fill a short scan with grey rather than failing; either outcome is fine as
    # long as there is no crash and a failure is typed.
    try:
        with open_study(path) as study:
            assert study.display(0).shape == (100, 100, 3)
    except LoupeError as error:
        assert isinstance(error, UnreadableStudyError)


def test_damaged_jpeg2000_codestream():
    message = _refused(pydicom_file("JPEG2000-embedded-sequence-delimiter.dcm"), UnreadableStudyError)
    assert "JPEG 2000" in message


def test_structured_report_has_no_pixels():
    message = _refused(pydicom_file("test-SR.dcm"), NotAnImageError)
    assert "Comprehensive SR" in message and "no image" in message


def test_unsupported_transfer_syntax_says_which_plugin():
    message = _refused(pydicom_file("JPGExtended.dcm"), MissingCodecError)
    assert "12-bit JPEG Extended" in message and "pylibjpeg-libjpeg" in message


def test_unknown_transfer_syntax(tmp_path):
    data = pydicom_file("693_J2KI.dcm").read_bytes()
    # Same length as the JPEG 2000 UID it replaces, so the file meta stays well formed.
    patched = data.replace(b"1.2.840.10008.1.2.4.91", b"1.2.840.10008.1.2.4.99", 1)
    assert patched != data
    path = tmp_path / "unknown.dcm"
    path.write_bytes(patched)
    message = _refused(path, MissingCodecError)
    assert "1.2.840.10008.1.2.4.99" in message and "no decoder" in message


def test_video_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(pydicom_file("693_J2KI.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.102")
    path = tmp_path / "video.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert "video" in _refused(path, MissingCodecError)


def test_missing_codec_when_plugins_unavailable(monkeypatch):
    import tools.study.codecs as codecs

    class Unavailable:
        is_available = False
        available_plugins = ()

    monkeypatch.setattr(codecs, "get_decoder", lambda uid: Unavailable())
    message = _refused(pydicom_file("693_J2KI.dcm"), MissingCodecError)
    assert "pylibjpeg-openjpeg" in message


def test_absurd_dicom_dimensions(tmp_path):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.Rows, ds.Columns = 65535, 65535
    path = tmp_path / "huge.dcm"
    ds.save_as(path)
    assert "larger than the limit" in _refused(path, StudyTooLargeError)


def test_pixel_limit_is_configurable():
    limits = StudyLimits(max_frame_pixels=128 * 128 - 1)
    _refused(pydicom_file("CT_small.dcm"), StudyTooLargeError, limits=limits)
    with open_study(pydicom_file("CT_small.dcm"), limits=StudyLimits(max_frame_pixels=128 * 128)):
        pass


def test_total_pixel_limit_counts_frames():
    limits = StudyLimits(max_total_pixels=480 * 640 * 100)
    _refused(pydicom_file("color3d_jpeg_baseline.dcm"), StudyTooLargeError, limits=limits)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_png_decompression_bomb(tmp_path):
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b""))
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    _refused(path, StudyTooLargeError)


def test_png_over_configured_limit(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(path)
    _refused(path, StudyTooLargeError, limits=StudyLimits(max_frame_pixels=300 * 300 - 1))


def test_truncated_png(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(buffer, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[:3000])
    assert "truncated or damaged" in _refused(path, UnreadableStudyError)


def test_corrupt_jpeg_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[:600])
    _refused(path, UnreadableStudyError)


@pytest.mark.parametrize("content", [b"hello, this is a report\n", b'{"a": 1}', b"%PDF-1.4\n" + b"x" * 100])
def test_non_image_files(tmp_path, content):
    path = tmp_path / "document.dcm"
    path.write_bytes(content)
    _refused(path, UnreadableStudyError)


def test_other_image_formats_are_refused_clearly(tmp_path):
    path = tmp_path / "scan.png"  # a GIF renamed to .png: content decides
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(path, format="GIF")
    _refused(path, UnreadableStudyError)


def test_directory_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    _refused(tmp_path, UnreadableStudyError)


def test_missing_path(tmp_path):
    assert "does not exist" in _refused(tmp_path / "nope.dcm", UnreadableStudyError)


def test_dicomdir_alone():
    _refused(pydicom_file("dicomdirtests/DICOMDIR"), NotAnImageError)


def test_mixed_dicom_and_png_refused(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    _refused([pydicom_file("CT_small.dcm"), png], UnsupportedStudyError)


def test_frame_out_of_range_is_typed():
    from tools.errors import FrameOutOfRangeError

    with open_study(pydicom_file("CT_small.dcm")) as study:
        with pytest.raises(FrameOutOfRangeError):
            study.display(1)
        with pytest.raises(FrameOutOfRangeError):
            study.physical(-1)


def test_refusals_leave_no_temporary_files(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    import zipfile

    archive = tmp_path / "sr.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(pydicom_file("test-SR.dcm"), "report.dcm")
    _refused(archive, NotAnImageError)
    assert os.listdir(scratch) == []
