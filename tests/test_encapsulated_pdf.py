"""The report's PDF as a DICOM Encapsulated PDF instance of the source study (for the PACS):
valid by dciodvfy, in the source study and patient, pointing at the source images, and saying
whether it is a draft."""

from __future__ import annotations

import io

import pydicom
import pytest

from tests.test_report_sr import _ct_small_findings, _dciodvfy_errors, _history, _signed, ct_small  # noqa: F401
from tools.report.document import ReportError
from tools.report.encapsulated_pdf import ENCAPSULATED_PDF_STORAGE, encapsulated_pdf
from tools.report.pdf import report_pdf
from tools.study import open_study


@pytest.mark.parametrize("signed", [False, True])
def test_an_encapsulated_pdf_of_the_source_study(ct_small, signed, tmp_path):  # noqa: F811
    findings = _ct_small_findings(ct_small)
    history = _history(ct_small, findings)
    report = _signed(history) if signed else history.current
    pdf = report_pdf(report)
    dataset = encapsulated_pdf(pdf, report, ct_small, findings)
    path = tmp_path / "report-pdf.dcm"
    dataset.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []
    read = pydicom.dcmread(path)
    source = ct_small.files[0].header
    assert read.SOPClassUID == ENCAPSULATED_PDF_STORAGE and read.Modality == "DOC"
    assert (read.StudyInstanceUID, read.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert read.SeriesInstanceUID != source.SeriesInstanceUID  # a new series of the study
    assert read.SourceInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert read.EncapsulatedDocumentLength == len(pdf) and bytes(read.EncapsulatedDocument)[:len(pdf)] == pdf
    assert len(read.EncapsulatedDocument) % 2 == 0
    assert ("DRAFT" in read.DocumentTitle) != signed


def test_a_png_has_no_source_to_encapsulate_into(tmp_path):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("L", (64, 64), 128).save(image)
    with open_study(image, modality="US") as study:
        history = _history(study, {})
        with pytest.raises(ReportError, match="no source DICOM"):
            encapsulated_pdf(report_pdf(history.current), history.current, study, {})


def test_an_odd_length_pdf_is_padded_and_its_length_kept(ct_small):  # noqa: F811
    findings = _ct_small_findings(ct_small)
    report = _history(ct_small, findings).current
    buffer = io.BytesIO()
    encapsulated_pdf(b"%PDF-1.4 odd!", report, ct_small, findings).save_as(buffer, enforce_file_format=True)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert (read.EncapsulatedDocumentLength, bytes(read.EncapsulatedDocument)) == (13, b"%PDF-1.4 odd!\0")


@pytest.mark.parametrize(("stated", "modality", "expected"), [
    ("NO", "CT", "NO"), (None, "CT", "YES"), ("YES", "CT", "YES"), ("NO", "US", "YES"), ("NO", "SC", "YES")])
def test_the_burned_in_flag_is_no_only_when_the_source_says_so_safely(stated, modality, expected):
    from tools.report.encapsulated_pdf import _burned_in

    source = pydicom.Dataset()
    source.Modality = modality
    if stated is not None:
        source.BurnedInAnnotation = stated
    assert _burned_in(source) == expected
