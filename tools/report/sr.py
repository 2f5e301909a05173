"""A clinical report as DICOM Structured Reports, for PACS.

Two documents, both in the source images' study (same StudyInstanceUID, one new series), as
PACS expect of results about a study:

- a **measurement SR** (Comprehensive 3D SR, TID 1500 Measurement Report): one planar ROI
  group per reported finding — an ELLIPSE from the Gaussian fit (major-axis ends, then
  minor-axis ends; the FWHM contour) or a POINT at the centre — with its long/short axis in mm
  (or in pixels where the study has no spacing), finding type and site codes, Loupe's
  algorithm identification, the finding id as tracking identifier, and a reference to the
  source image (and frame);
- a **narrative SR** (Enhanced SR, TID 2000 layout): technique, comparison, findings,
  impression, recommendations and limitations as text, because TID 1500 takes only coded
  evaluations.

A report compared with a prior names the prior's images it used: both documents list them as
Pertinent Other Evidence (they belong to another study), and the measurement SR's image library
(TID 1600) lists them beside the current images, so a viewer can open the prior slices.

Drafts are PARTIAL / UNVERIFIED / PRELIMINARY; a signed version is COMPLETE / VERIFIED / FINAL
with the signer as verifying observer. PNG/JPEG studies have no source DICOM to reference and
export Markdown/PDF only.

Coordinates: Loupe's pixel coordinates put (0, 0) at the centre of the top-left pixel; DICOM
SCOORD puts it at that pixel's outer corner, so every point moves by +0.5 in x and y.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import Code, codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DT

from tools.findings import Finding, GaussianFit
from tools.report.document import ClinicalReport, Measurement, ReportError, ReportFinding
from tools.study import DicomStudy, Study

LOUPE = "Loupe"
RASTER_STUDY_MESSAGE = ("This study is a PNG/JPEG image: there is no source DICOM to reference, so only "
                        "Markdown and PDF can be exported.")
SERIES_DESCRIPTION = "Loupe AI-assisted report"
DEFAULT_SERIES_NUMBER = 900  # high, so the SR series sorts after the acquired series in a viewer
DEFAULT_VERIFYING_ORGANIZATION = "Loupe user"
# The narrative holds "×", "—" and whatever the clinician typed: write every SR as UTF-8.
UTF8 = "ISO_IR 192"

# A fixed UID for "Loupe, the device", so every SR names the same device observer.
DEVICE_OBSERVER_UID = generate_uid(entropy_srcs=["Loupe device observer"])

UCUM_MILLIMETRE = codes.UCUM.Millimeter
# UCUM annotation for a count of pixels; DICOM uses it for image sizes (TID 1602).
UCUM_PIXELS = hd.sr.CodedConcept(value="{pixels}", scheme_designator="UCUM", meaning="Pixels")

# Finding type from words of the finding's label; the first match wins, "Lesion" otherwise.
_FINDING_TYPES = (
    (re.compile(r"\bnodul", re.IGNORECASE), codes.SCT.Nodule),
    (re.compile(r"\bmass(es)?\b", re.IGNORECASE), codes.SCT.Mass),
    (re.compile(r"\bcyst", re.IGNORECASE), codes.SCT.Cyst),
)
DEFAULT_FINDING_TYPE = codes.SCT.Lesion

# BodyPartExamined defined terms (PS3.16 CID 4031) Loupe can code as a finding site.
_BODY_PART_SITES = {
    "CHEST": codes.SCT.Chest, "THORAX": codes.SCT.Chest, "LUNG": codes.SCT.Lung,
    "BRAIN": codes.SCT.Brain, "HEAD": codes.SCT.Head, "SKULL": codes.SCT.Skull, "NECK": codes.SCT.Neck,
    "BREAST": codes.SCT.Breast, "HEART": codes.SCT.Heart, "ABDOMEN": codes.SCT.Abdomen,
    "LIVER": codes.SCT.Liver, "KIDNEY": codes.SCT.Kidney, "PANCREAS": codes.SCT.Pancreas,
    "SPLEEN": codes.SCT.Spleen, "COLON": codes.SCT.Colon, "PELVIS": codes.SCT.Pelvis,
    "PROSTATE": codes.SCT.Prostate, "THYROID": codes.SCT.Thyroid, "SPINE": codes.SCT.Spine,
    "KNEE": codes.SCT.Knee, "HAND": codes.SCT.Hand,
}
# Modalities that imply the site on their own.
_MODALITY_SITES = {"MG": codes.SCT.Breast}

_PROCEDURES = {
    "CT": codes.LN.CTUnspecifiedBodyRegion, "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion, "CR": codes.LN.XRUnspecifiedBodyRegion,
    "DX": codes.LN.XRUnspecifiedBodyRegion,
}
DEFAULT_PROCEDURE = codes.SCT.Imaging

# Type 2 patient/study attributes highdicom copies from the first evidence data set.
_INHERITED_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "StudyID", "StudyDate", "StudyTime")
_REFERENCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")
_PN_COMPONENT_GROUP_MAX = 64


def loupe_version() -> str:
    try:
        return version("loupe")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


# -- source images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceImage:
    """The DICOM instance a study frame comes from; ``frame_number`` (1-based) for multi-frame files."""

    dataset: Dataset
    frame_number: int | None

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)


def source_images(study: Study, frames: set[int]) -> dict[int, SourceImage]:
    """The source instance (and frame number) of each study frame in ``frames``.

    Raises ``ReportError`` for PNG/JPEG studies and for headers an SR cannot reference.
    """
    if not isinstance(study, DicomStudy):
        raise ReportError(RASTER_STUDY_MESSAGE)
    found = {}
    for frame in sorted(frames):
        # The study's own frame -> (file, index) rule: one multi-frame file, or one file per slice.
        file, index = study.locate(frame)
        found[frame] = SourceImage(dataset=_referenceable(file.header),
                                   frame_number=index + 1 if file.frame_count > 1 else None)
    return found


def source_datasets(study: Study, frames: set[int]) -> dict[int, Dataset]:
    """The source image data set (header, no pixels) of each study frame in ``frames``."""
    return {frame: image.dataset for frame, image in source_images(study, frames).items()}


def _referenceable(header: Dataset) -> Dataset:
    """``header`` as SR evidence: the UIDs it must have, empty type 2 patient/study attributes
    where missing (a copy then: the study's header is shared and stays untouched)."""
    missing_uids = [keyword for keyword in _REFERENCE_UIDS if not header.get(keyword)]
    if missing_uids:
        raise ReportError(f"The source DICOM has no {', '.join(missing_uids)}, so a DICOM SR cannot refer to it; "
                          "export Markdown or PDF instead.")
    absent = [keyword for keyword in _INHERITED_TYPE2 if keyword not in header]
    if not absent:
        return header
    completed = deepcopy(header)
    for keyword in absent:
        setattr(completed, keyword, "")
    return completed


def _evidence(images: Mapping[int, SourceImage]) -> list[Dataset]:
    """Each referenced instance once, in frame order."""
    unique = {}
    for image in images.values():
        unique.setdefault(image.sop_instance_uid, image.dataset)
    return list(unique.values())


# -- geometry ------------------------------------------------------------------------------------


def to_scoord(point_px: tuple[float, float]) -> tuple[float, float]:
    """Loupe (x, y), origin at the top-left pixel's centre -> SCOORD (column, row), origin at its corner."""
    x, y = point_px
    return x + 0.5, y + 0.5


def ellipse_scoord(fit: GaussianFit) -> np.ndarray:
    """The FWHM ellipse of a fit as SCOORD ELLIPSE data: major-axis ends, then minor-axis ends.

    The angle runs from +x towards +y (rows grow downwards), in the same pixel axes as SCOORD.
    """
    cx, cy = to_scoord(fit.center_px)
    theta = math.radians(fit.angle_deg)
    major = (math.cos(theta), math.sin(theta))
    minor = (-math.sin(theta), math.cos(theta))
    a, b = fit.fwhm_major_px / 2, fit.fwhm_minor_px / 2
    return np.array([
        [cx - a * major[0], cy - a * major[1]], [cx + a * major[0], cy + a * major[1]],
        [cx - b * minor[0], cy - b * minor[1]], [cx + b * minor[0], cy + b * minor[1]],
    ], dtype=float)


def _has_ellipse(finding: Finding) -> bool:
    fit = finding.gaussian
    return fit is not None and fit.converged and fit.fwhm_major_px > 0 and fit.fwhm_minor_px > 0


def _image_region(finding: Finding, image: SourceImage) -> hd.sr.ImageRegion:
    source = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=str(image.dataset.SOPClassUID),
        referenced_sop_instance_uid=image.sop_instance_uid,
        referenced_frame_numbers=[image.frame_number] if image.frame_number else None,
    )
    # Multi-frame coordinates are relative to the referenced frame, not a tiled total matrix.
    origin = hd.sr.PixelOriginInterpretationValues.FRAME if image.frame_number else None
    if _has_ellipse(finding):
        return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.ELLIPSE,
                                 graphic_data=ellipse_scoord(finding.gaussian), source_image=source,
                                 pixel_origin_interpretation=origin)
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT,
                             graphic_data=np.array([to_scoord(finding.center_px)], dtype=float),
                             source_image=source, pixel_origin_interpretation=origin)


# -- codes ---------------------------------------------------------------------------------------


def finding_type(label: str) -> hd.sr.CodedConcept:
    for pattern, code in _FINDING_TYPES:
        if pattern.search(label):
            return hd.sr.CodedConcept.from_code(code)
    return hd.sr.CodedConcept.from_code(DEFAULT_FINDING_TYPE)


def finding_sites(modality: str | None, body_part: str | None) -> list[hd.sr.FindingSite]:
    """The anatomic site the header states (BodyPartExamined, or a modality such as MG); none
    when unknown — Loupe does not guess anatomy for the SR."""
    code = _BODY_PART_SITES.get((body_part or "").strip().upper()) or _MODALITY_SITES.get(modality or "")
    return [hd.sr.FindingSite(anatomic_location=code)] if code else []


def procedure_reported(modality: str | None) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept.from_code(_PROCEDURES.get(modality or "", DEFAULT_PROCEDURE))


def algorithm_identification(finding: Finding,
                             size: Measurement | None = None) -> hd.sr.AlgorithmIdentification | None:
    """Loupe as the algorithm, with which of its detectors proposed the finding and how it was
    measured; none for findings the clinician placed."""
    if finding.source == "clinician":
        return None
    parameters = [f"finding source: {finding.source}"]
    if size is not None and size.source == "tool" and size.method is not None:
        parameters.append(f"size: {size.measured_by}")
    return hd.sr.AlgorithmIdentification(name=LOUPE, version=loupe_version(), parameters=parameters)


# -- measurements --------------------------------------------------------------------------------


def _measurements(size: Measurement | None, algorithm: hd.sr.AlgorithmIdentification | None
                  ) -> list[hd.sr.Measurement]:
    """Long and short axis (or one diameter) in mm, or in pixels when the study has no spacing."""
    if size is None:
        return []
    unit = UCUM_MILLIMETRE if size.unit == "mm" else UCUM_PIXELS
    # A clinician's typed size is not the algorithm's measurement.
    algorithm = algorithm if size.source == "tool" else None
    if size.minor is None:
        return [hd.sr.Measurement(name=codes.SCT.Diameter, value=size.major, unit=unit, algorithm_id=algorithm)]
    return [hd.sr.Measurement(name=codes.SCT.LongAxis, value=size.major, unit=unit, algorithm_id=algorithm),
            hd.sr.Measurement(name=codes.SCT.ShortAxis, value=size.minor, unit=unit, algorithm_id=algorithm)]


def _roi_group(listed: ReportFinding, finding: Finding, image: SourceImage,
               report: ClinicalReport) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    algorithm = algorithm_identification(finding, listed.size)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=finding.id),
        referenced_region=_image_region(finding, image),
        finding_type=finding_type(finding.label),
        algorithm_id=algorithm,
        finding_sites=finding_sites(report.study.modality, report.study.body_part) or None,
        # The size the report states (what is signed, maybe the clinician's), not a newer tool run.
        measurements=_measurements(listed.size, algorithm) or None,
    )


# -- observers and document flags ----------------------------------------------------------------


def _person_name(name: str) -> str:
    """The signer's name as a DICOM PN without guessing which part is the family name: as typed,
    in the family-name component (trailing caret), unless it is already in PN form."""
    name = name.strip()
    if len(name) > _PN_COMPONENT_GROUP_MAX or "\\" in name:
        raise ReportError("The signer's name cannot be written to a DICOM SR (at most 64 characters, no "
                          "backslash); export Markdown or PDF, or shorten the name.")
    return name if "^" in name else f"{name}^"


def _observation_context(report: ClinicalReport, organisation: str) -> hd.sr.ObservationContext:
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_OBSERVER_UID, name=LOUPE, manufacturer_name=LOUPE, model_name=LOUPE),
    )
    person = None
    if report.status == "signed":
        # The signing physician adopts the observations; Loupe stays named as the device.
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=_person_name(report.signed_by), organization_name=organisation),
        )
    return hd.sr.ObservationContext(observer_person_context=person, observer_device_context=device)


def _document_flags(report: ClinicalReport, organisation: str) -> dict:
    """Completion/verification/preliminary flags: a draft stays open until it is signed."""
    if report.status != "signed":
        return {"is_complete": False, "is_final": False, "is_verified": False}
    return {"is_complete": True, "is_final": True, "is_verified": True,
            "verifying_observer_name": _person_name(report.signed_by), "verifying_organization": organisation}


# -- narrative -----------------------------------------------------------------------------------


def finding_sentence(listed: ReportFinding, frames: int = 1) -> str:
    """One finding as the narrative states it; on a series (``frames`` > 1) with its slice and
    table position."""
    parts = [listed.location]
    if frames > 1:
        position = "" if listed.table_position_mm is None else f", table position {listed.table_position_mm:.1f} mm"
        parts.insert(0, f"slice {listed.frame + 1} of {frames}{position}")
    if listed.size is not None:
        parts.append(f"size {listed.size.text()}, measured by {listed.size.measured_by}")
    if listed.characteristics:
        parts.append(listed.characteristics)
    if listed.confidence is not None:
        parts.append(f"confidence {listed.confidence:.2f}")
    parts.append(f"verification: {listed.verification}")
    return f"{listed.finding_id}: " + "; ".join(p for p in parts if p) + "."


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _section(heading: Code, items: Sequence[hd.sr.TextContentItem]) -> hd.sr.ContainerContentItem:
    section = hd.sr.ContainerContentItem(name=heading, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    section.ContentSequence = hd.sr.ContentSequence(list(items))
    return section


def narrative_content(report: ClinicalReport, observation: hd.sr.ObservationContext) -> hd.sr.ContainerContentItem:
    """TID 2000 (Basic Diagnostic Imaging Report) layout: sections of text items."""
    findings = [finding_sentence(f, report.study.frames) for f in report.findings] or [report.findings_statement]
    technique = _text(codes.DCM.ProcedureDescription, report.study.technique)
    sections = [
        _section(codes.LN.CurrentProcedureDescriptions, [technique]),
        _comparison_section(report),
        _section(codes.LN.Findings, [_text(codes.DCM.Finding, text) for text in findings]),
        # Limitations have no heading of their own in CID 7001; they qualify the impression.
        _section(codes.LN.Impressions, [_text(codes.DCM.Impression, report.impression),
                                        *(_text(codes.DCM.Comment, text) for text in report.shown_limitations)]),
    ]
    if report.recommendations:
        sections.append(_section(codes.LN.Recommendations,
                                 [_text(codes.DCM.Recommendation, text) for text in report.recommendations]))
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id="2000")
    root.ContentSequence = hd.sr.ContentSequence([*observation, *sections])
    return root


def _comparison_section(report: ClinicalReport) -> hd.sr.ContainerContentItem:
    """The Comparison section: LOINC 18834-2 (LOINC's "Radiology Comparison study", "Previous
    Findings" in CID 7001), the prior named in a Procedure Description item ("Comparison: None."
    without one), each finding's change in a Previous Finding item (CID 7002)."""
    opening, *changes = report.comparison_sentences
    return _section(codes.LN.PreviousFindings, [_text(codes.DCM.ProcedureDescription, f"Comparison: {opening}"),
                                                *(_text(codes.DCM.PreviousFinding, text) for text in changes)])


# -- documents -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Placement:
    """Where the documents go: one new series of the source study, and the verifier's organisation."""

    series_instance_uid: str
    series_number: int
    instance_number: int
    organisation: str


def report_sr(report: ClinicalReport, study: Study, findings: Mapping[str, Finding], *, prior: Study | None = None,
              series_number: int = DEFAULT_SERIES_NUMBER, instance_number: int = 1,
              series_instance_uid: str | None = None,
              verifying_organization: str = DEFAULT_VERIFYING_ORGANIZATION) -> tuple[Dataset | None, Dataset]:
    """The report as (measurement SR, narrative SR), both in a new series of the source study.

    The measurement SR (Comprehensive 3D SR, TID 1500) is ``None`` when the report lists no
    findings: TID 1500 as highdicom builds it needs at least one measurement group. The
    narrative SR (Enhanced SR) takes ``instance_number + 1``. Pass ``series_instance_uid`` to
    add a later version to an earlier export's series. ``prior`` is the study the report's
    comparison names (``report.comparison.prior_study_id``): both documents then reference the
    prior's images it used; without it (or for a PNG/JPEG prior) they reference the current
    study's only, and the narrative still names the prior.

    Raises ``ReportError`` for PNG/JPEG studies, for findings the session does not have, and for
    source headers an SR cannot reference.
    """
    report.check_findings_exist(findings)
    listed = [(item, findings[item.finding_id]) for item in report.findings]
    _check_same_study(report, study, [finding for _, finding in listed])
    images = source_images(study, {finding.frame for _, finding in listed} or {0})
    prior_images = _prior_images(report, prior)
    placement = _Placement(series_instance_uid or hd.UID(), series_number, instance_number, verifying_organization)
    measurements = _measurement_sr(report, listed, images, prior_images, placement) if listed else None
    narrative = _narrative_sr(report, images, prior_images, replace(placement, instance_number=instance_number + 1))
    return measurements, narrative


def _prior_images(report: ClinicalReport, prior: Study | None) -> list[Dataset]:
    """The prior's instances the comparison used; none without a comparison, or for a prior that
    has no DICOM to reference (a PNG/JPEG, a header without UIDs): the SR is still made."""
    comparison = report.comparison
    if prior is None or comparison is None:
        return []
    if prior.id != comparison.prior_study_id:
        raise ReportError("The prior given is not the study this report was compared with; open that prior to "
                          "export the DICOM SR.")
    try:
        return _evidence(source_images(prior, set(comparison.prior_frames) or {0}))
    except ReportError:
        return []


def _check_same_study(report: ClinicalReport, study: Study, findings: Sequence[Finding]) -> None:
    """The SR points at this study's images: a report or finding of another study would be misplaced."""
    if report.study_id != study.id:
        raise ReportError("This report belongs to another study than the one open; open that study to export "
                          "its DICOM SR.")
    strangers = [f.id for f in findings if f.study_id != study.id]
    if strangers:
        raise ReportError(f"{', '.join(strangers)} belong to another study than the one open, so the DICOM SR "
                          "cannot point at their images.")


def _measurement_sr(report: ClinicalReport, listed: Sequence[tuple[ReportFinding, Finding]],
                    images: Mapping[int, SourceImage], prior_images: Sequence[Dataset],
                    placement: _Placement) -> hd.sr.Comprehensive3DSR:
    """TID 1500: one planar ROI group per (report finding, session finding) pair; with a prior,
    an image library of the current and prior images compared."""
    evidence = _evidence(images) + list(prior_images)  # the current study first: the SR joins it
    content = hd.sr.MeasurementReport(
        observation_context=_observation_context(report, placement.organisation),
        procedure_reported=procedure_reported(report.study.modality),
        imaging_measurements=[_roi_group(item, finding, images[finding.frame], report) for item, finding in listed],
        referenced_images=evidence if prior_images else None,
    )
    return _signed_at(report, hd.sr.Comprehensive3DSR(evidence=evidence, content=content[0],
                                                      **_document(report, placement)))


def _narrative_sr(report: ClinicalReport, images: Mapping[int, SourceImage], prior_images: Sequence[Dataset],
                  placement: _Placement) -> hd.sr.EnhancedSR:
    content = narrative_content(report, _observation_context(report, placement.organisation))
    return _signed_at(report, hd.sr.EnhancedSR(evidence=_evidence(images) + list(prior_images), content=content,
                                               **_document(report, placement)))


def _document(report: ClinicalReport, placement: _Placement) -> dict:
    """Constructor arguments shared by both SRs."""
    return {"series_instance_uid": placement.series_instance_uid, "series_number": placement.series_number,
            "sop_instance_uid": hd.UID(), "instance_number": placement.instance_number,
            "manufacturer": LOUPE, "manufacturer_model_name": LOUPE, "software_versions": loupe_version(),
            "series_description": SERIES_DESCRIPTION, "specific_character_set": UTF8,
            **_document_flags(report, placement.organisation)}


def _signed_at(report: ClinicalReport, sr: Dataset) -> Dataset:
    """highdicom stamps the verification with the export time; the signature's own time is the one that counts."""
    if "VerifyingObserverSequence" in sr:
        sr.VerifyingObserverSequence[0].VerificationDateTime = DT(report.created_at)
    return sr
