"""The report's PDF as a DICOM Encapsulated PDF instance, for PACS.

It joins the source images' study (same StudyInstanceUID and patient/study attributes) in a new
series of its own (modality DOC: a series holds one modality, so not the SRs' series), and lists
the source images it reports on in the Source Instance Sequence. A draft says so in its title
and in the document itself (the PDF prints the status on every page).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import highdicom as hd
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from tools.findings import Finding
from tools.report.document import ClinicalReport
from tools.report.sr import LOUPE, UTF8, loupe_version, source_images
from tools.study import Study

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
PDF_SERIES_NUMBER = 901  # beside the SRs' 900, after the acquired series
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                  "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def document_title(report: ClinicalReport) -> str:
    state = "signed" if report.status == "signed" else "DRAFT, not signed"
    return f"Loupe report v{report.version} ({state})"


def encapsulated_pdf(pdf: bytes, report: ClinicalReport, study: Study, findings: Mapping[str, Finding], *,
                     series_instance_uid: str | None = None, series_number: int = PDF_SERIES_NUMBER) -> Dataset:
    """``pdf`` (the report's PDF export) as an Encapsulated PDF instance of the source study.

    Raises ``ReportError`` for PNG/JPEG studies and for source headers that cannot be referenced
    (as the SR export does)."""
    frames = {findings[item.finding_id].frame for item in report.findings if item.finding_id in findings} or {0}
    images = source_images(study, frames)
    source = images[min(images)].dataset
    now = datetime.now(UTC)
    dataset = Dataset()
    for keyword in _PATIENT_STUDY:
        setattr(dataset, keyword, source.get(keyword, ""))
    dataset.SpecificCharacterSet = UTF8
    dataset.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    dataset.SOPInstanceUID = hd.UID()
    dataset.Modality = "DOC"
    dataset.SeriesInstanceUID = series_instance_uid or hd.UID()
    dataset.SeriesNumber = series_number
    dataset.SeriesDescription = "Loupe AI-assisted report (PDF)"
    dataset.Manufacturer = LOUPE
    dataset.ManufacturerModelName = LOUPE
    dataset.SoftwareVersions = loupe_version()
    dataset.ConversionType = "WSD"  # workstation: made by software, not scanned
    dataset.InstanceNumber = 1
    dataset.ContentDate = now.strftime("%Y%m%d")
    dataset.ContentTime = now.strftime("%H%M%S")
    dataset.AcquisitionDateTime = report.created_at.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    dataset.BurnedInAnnotation = _burned_in(source)
    dataset.DocumentTitle = document_title(report)
    dataset.ConceptNameCodeSequence = []
    dataset.SourceInstanceSequence = [_reference(image.dataset) for image in images.values()]
    dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
    dataset.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    dataset.EncapsulatedDocumentLength = len(pdf)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dataset


#: Modalities whose images often carry burned-in patient details (as the privacy boundary holds).
_AT_RISK = frozenset({"US", "SC", "OT", "XA", "ES"})


def _burned_in(source: Dataset) -> str:
    """The PDF holds a key image of the source: "NO" only when the source states it has no
    burned-in text and is not of a modality that often has; unknown counts as "YES", so a
    de-identification pipeline downstream does not trust it blindly."""
    stated = str(source.get("BurnedInAnnotation", "")).upper()
    return "NO" if stated == "NO" and str(source.get("Modality", "")).upper() not in _AT_RISK else "YES"


def _reference(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return item
