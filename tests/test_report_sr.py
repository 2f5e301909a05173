"""DICOM SR export: TID 1500 measurement report + narrative Enhanced SR, read back and validated.

Coordinates are checked against hand-computed SCOORD values: Loupe's (x, y) has its origin at
the top-left pixel's centre, SCOORD at that pixel's corner, so every point moves by +0.5.
``dciodvfy`` (Debian dicom3tools) must report no errors; without it the check is skipped
locally and fails in CI.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.sr.codedict import codes
from pydicom.valuerep import DT

from tests.conftest import EVAL_DIR, pydicom_file
from tools.coordinates import BoxPx
from tools.findings import Finding, GaussianFit
from tools.report.document import (
    NO_FINDINGS_TEXT,
    ClinicalReport,
    Measurement,
    ReportError,
    ReportFinding,
    ReportHistory,
    StudySummary,
    measured_size,
)
from tools.report.sr import RASTER_STUDY_MESSAGE, report_sr, source_datasets
from tools.study import open_study

DCIODVFY = Path("/usr/bin/dciodvfy")
LIDC_SERIES = EVAL_DIR / "lidc_ct" / "LIDC-IDRI-0002"
LIDC_SLICE = "z-0092.00.dcm"
SIGNER = "Jane Smith"


# -- building findings and reports ---------------------------------------------------------------


def _fit(center, fwhm_major, fwhm_minor, angle_deg, mm_per_px=None, converged=True) -> GaussianFit:
    sigma = 2 * math.sqrt(2 * math.log(2))
    return GaussianFit(
        center_px=center, sigma_major_px=fwhm_major / sigma, sigma_minor_px=fwhm_minor / sigma, angle_deg=angle_deg,
        fwhm_major_px=fwhm_major, fwhm_minor_px=fwhm_minor,
        fwhm_major_mm=fwhm_major * mm_per_px if mm_per_px else None,
        fwhm_minor_mm=fwhm_minor * mm_per_px if mm_per_px else None,
        amplitude=100.0, background=0.0, r_squared=0.9 if converged else 0.1, converged=converged)


def _finding(study, finding_id, *, center, label="focal abnormality", frame=0, fit=None, mm_per_px=None,
             source="vlm") -> Finding:
    x, y = center
    size_px = (fit.fwhm_major_px, fit.fwhm_minor_px) if fit and fit.converged else None
    size_mm = (fit.fwhm_major_mm, fit.fwhm_minor_mm) if size_px and mm_per_px else None
    return Finding(id=finding_id, study_id=study.id, label=label, frame=frame, center_px=center,
                   bbox_px=BoxPx(x0=x - 5, y0=y - 5, x1=x + 5, y1=y + 5), confidence=0.8, source=source,
                   gaussian=fit, size_px=size_px, size_mm=size_mm)


def _history(study, findings: dict[str, Finding], *, recommendations=("Follow-up CT in 3 months.",)) -> ReportHistory:
    report = ClinicalReport(
        study_id=study.id,
        study=StudySummary(modality=study.modality, body_part=study.safe.body_part, technique="Test technique."),
        findings=[ReportFinding(finding_id=f.id, location=f"location of {f.id}", size=measured_size(f), frame=f.frame)
                  for f in findings.values()],
        impression="Solitary nodule — recommend follow-up.",
        recommendations=list(recommendations),
    )
    history = ReportHistory()
    history.add(report, author="loupe", reason="drafted")
    return history


def _signed(history: ReportHistory) -> ClinicalReport:
    return history.sign(history.current.version, SIGNER)


def _write(tmp_path: Path, name: str, measurement_sr, narrative_sr) -> tuple[Path, Path]:
    paths = tmp_path / f"{name}-measurements.dcm", tmp_path / f"{name}-narrative.dcm"
    measurement_sr.save_as(paths[0], enforce_file_format=True)
    narrative_sr.save_as(paths[1], enforce_file_format=True)
    return paths


def _groups(path: Path) -> dict[str, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    return {group.tracking_identifier: group for group in sr.content.get_planar_roi_measurement_groups()}


def _referenced(group) -> pydicom.Dataset:
    return group.roi.ContentSequence[0].ReferencedSOPSequence[0]


def _group_text(group, name) -> list[str]:
    """TEXT values of the group's own items (the algorithm identification sits there)."""
    return [item.TextValue for item in group[0].ContentSequence
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == name.value]


def _measured(group) -> dict[str, tuple[float, str]]:
    return {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}


def _texts(dataset: pydicom.Dataset) -> list[tuple[str, str]]:
    found = []
    for item in dataset.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            found.append((item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue))
        found += _texts(item)
    return found


# -- the studies ---------------------------------------------------------------------------------


@pytest.fixture
def ct_small():
    with open_study(pydicom_file("CT_small.dcm")) as study:
        yield study


@pytest.fixture
def emri_small():
    with open_study(pydicom_file("emri_small.dcm")) as study:
        yield study


@pytest.fixture
def lidc_series():
    if not LIDC_SERIES.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the shared LIDC series is missing at {LIDC_SERIES}")
        pytest.skip(f"shared LIDC series not found at {LIDC_SERIES}")
    with open_study(LIDC_SERIES) as study:
        yield study


def _ct_small_findings(study) -> dict[str, Finding]:
    mm = study.pixel_spacing_mm(0)[0]
    return {
        # Major axis 30° below +x (y grows downwards), FWHM 12 × 6 px.
        "F1": _finding(study, "F1", center=(40.0, 50.0), label="focal hyperdense nodule",
                       fit=_fit((40.25, 50.75), 12.0, 6.0, 30.0, mm_per_px=mm), mm_per_px=mm),
        "F2": _finding(study, "F2", center=(10.0, 20.0), source="classical"),
        "F3": _finding(study, "F3", center=(90.0, 100.0), label="mass", fit=_fit((91.0, 99.0), 8.0, 4.0, 0.0,
                                                                             converged=False)),
    }


# -- round trip ----------------------------------------------------------------------------------


def test_ct_small_rois_round_trip_in_scoord(ct_small, tmp_path):
    findings = _ct_small_findings(ct_small)
    measurement_sr, narrative_sr = report_sr(_history(ct_small, findings).current, ct_small, findings)
    paths = _write(tmp_path, "ct", measurement_sr, narrative_sr)
    groups = _groups(paths[0])
    assert sorted(groups) == ["F1", "F2", "F3"]

    ellipse = groups["F1"].roi
    assert ellipse.GraphicType == "ELLIPSE"
    # Centre (40.25, 50.75) + 0.5 = (40.75, 51.25); half axes 6 and 3 px at 30°.
    c, s = math.sqrt(3) / 2, 0.5
    expected = [[40.75 - 6 * c, 51.25 - 6 * s], [40.75 + 6 * c, 51.25 + 6 * s],
                [40.75 + 3 * s, 51.25 - 3 * c], [40.75 - 3 * s, 51.25 + 3 * c]]
    np.testing.assert_allclose(np.reshape(ellipse.GraphicData, (4, 2)), expected, atol=1e-4)

    point = groups["F2"].roi
    assert point.GraphicType == "POINT"
    np.testing.assert_allclose(point.GraphicData, [10.5, 20.5])
    # A fit that did not converge gives no ellipse: the point at the finding's centre instead.
    assert groups["F3"].roi.GraphicType == "POINT"
    np.testing.assert_allclose(groups["F3"].roi.GraphicData, [90.5, 100.5])


def test_ct_small_measurements_codes_and_references(ct_small, tmp_path):
    findings = _ct_small_findings(ct_small)
    source = pydicom.dcmread(pydicom_file("CT_small.dcm"), stop_before_pixels=True)
    measurement_sr, narrative_sr = report_sr(_history(ct_small, findings).current, ct_small, findings)
    groups = _groups(_write(tmp_path, "ct", measurement_sr, narrative_sr)[0])

    f1 = findings["F1"]
    measured = _measured(groups["F1"])
    assert measured["Long axis"][1] == "mm" and measured["Short axis"][1] == "mm"
    assert measured["Long axis"][0] == pytest.approx(f1.size_mm[0], rel=1e-6)
    assert measured["Short axis"][0] == pytest.approx(f1.size_mm[1], rel=1e-6)
    assert _measured(groups["F2"]) == {}  # no size measured: none stated

    assert groups["F1"].finding_type.value == codes.SCT.Nodule.value
    assert groups["F2"].finding_type.value == codes.SCT.Lesion.value
    assert groups["F3"].finding_type.value == codes.SCT.Mass.value
    assert _group_text(groups["F1"], codes.DCM.AlgorithmName) == ["Loupe"]
    assert _group_text(groups["F2"], codes.DCM.AlgorithmParameters) == ["finding source: classical"]
    assert groups["F1"].tracking_uid != groups["F2"].tracking_uid

    for group in groups.values():
        reference = _referenced(group)
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == source.SOPClassUID
        assert "ReferencedFrameNumber" not in reference
    for sr in (measurement_sr, narrative_sr):
        assert sr.Modality == "SR"
        assert sr.StudyInstanceUID == source.StudyInstanceUID
        assert sr.SeriesInstanceUID != source.SeriesInstanceUID
        assert sr.PatientID == source.PatientID
    assert measurement_sr.SeriesInstanceUID == narrative_sr.SeriesInstanceUID
    assert narrative_sr.InstanceNumber == measurement_sr.InstanceNumber + 1


def test_multiframe_finding_references_its_frame_in_pixels(emri_small, tmp_path):
    assert emri_small.pixel_spacing_mm(3) is None  # so sizes are stated in pixels
    finding = _finding(emri_small, "F1", center=(31.0, 22.0), frame=3, fit=_fit((31.0, 22.0), 6.0, 4.0, 90.0))
    findings = {"F1": finding}
    measurement_sr, narrative_sr = report_sr(_history(emri_small, findings).current, emri_small, findings)
    group = _groups(_write(tmp_path, "emri", measurement_sr, narrative_sr)[0])["F1"]

    source = pydicom.dcmread(pydicom_file("emri_small.dcm"), stop_before_pixels=True)
    reference = _referenced(group)
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedFrameNumber == 4  # study frame 3 = the file's 4th frame (1-based)
    # 90°: the major axis runs down the rows, the minor axis along the columns.
    np.testing.assert_allclose(np.reshape(group.roi.GraphicData, (4, 2)),
                               [[31.5, 19.5], [31.5, 25.5], [33.5, 22.5], [29.5, 22.5]], atol=1e-5)
    assert _measured(group) == {"Long axis": (6.0, "{pixels}"), "Short axis": (4.0, "{pixels}")}
    assert [site.value.meaning for site in group.finding_sites] == ["Head"]  # BodyPartExamined HEAD


def test_series_slice_is_referenced(lidc_series, tmp_path):
    frame = [f.path.name for f in lidc_series.files].index(LIDC_SLICE)
    mm = lidc_series.pixel_spacing_mm(frame)[0]
    fit = _fit((345.0, 360.0), 20.0, 16.0, -45.0, mm_per_px=mm)
    findings = {"F1": _finding(lidc_series, "F1", center=(345.0, 360.0), label="nodule", frame=frame, fit=fit,
                               mm_per_px=mm)}
    measurement_sr, narrative_sr = report_sr(_history(lidc_series, findings).current, lidc_series, findings)
    group = _groups(_write(tmp_path, "lidc", measurement_sr, narrative_sr)[0])["F1"]

    source = pydicom.dcmread(LIDC_SERIES / LIDC_SLICE, stop_before_pixels=True)
    assert _referenced(group).ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert measurement_sr.StudyInstanceUID == source.StudyInstanceUID
    assert _measured(group)["Long axis"] == (pytest.approx(20.0 * mm), "mm")
    assert [site.value.meaning for site in group.finding_sites] == ["Chest"]
    assert source_datasets(lidc_series, {frame})[frame].SOPInstanceUID == source.SOPInstanceUID


def test_the_size_is_the_one_the_report_states(ct_small, tmp_path):
    """A clinician's typed size is what the SR states, as one diameter, without Loupe as its algorithm."""
    findings = _ct_small_findings(ct_small)
    history = _history(ct_small, findings)
    typed = Measurement(major=9.9, unit="mm", source="clinician")
    report = history.current.model_copy(update={"findings": [
        f.model_copy(update={"size": typed}) if f.finding_id == "F1" else f for f in history.current.findings]})
    group = _groups(_write(tmp_path, "typed", *report_sr(report, ct_small, findings))[0])["F1"]
    assert _measured(group) == {"Diameter": (pytest.approx(9.9), "mm")}
    measurement_items = [item for item in group[0].ContentSequence if item.ValueType == "NUM"]
    assert all("ContentSequence" not in item for item in measurement_items)
    assert _group_text(group, codes.DCM.AlgorithmName) == ["Loupe"]  # the ROI itself is still Loupe's


# -- document flags and narrative ----------------------------------------------------------------


def test_draft_is_partial_unverified_and_signed_is_verified(ct_small):
    findings = _ct_small_findings(ct_small)
    history = _history(ct_small, findings)
    for sr in report_sr(history.current, ct_small, findings):
        assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("PARTIAL", "UNVERIFIED", "PRELIMINARY")
        assert "VerifyingObserverSequence" not in sr
    for sr in report_sr(_signed(history), ct_small, findings):
        assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "VERIFIED", "FINAL")
        observer = sr.VerifyingObserverSequence[0]
        assert str(observer.VerifyingObserverName) == f"{SIGNER}^"
        assert observer.VerifyingOrganization == "Loupe user"
        assert observer.VerificationDateTime == DT(history.current.created_at)  # when it was signed


def test_narrative_enhanced_sr_holds_the_report_text(ct_small, tmp_path):
    findings = _ct_small_findings(ct_small)
    report = _history(ct_small, findings).current
    paths = _write(tmp_path, "ct", *report_sr(report, ct_small, findings))
    narrative = hd.sr.srread(paths[1])
    assert isinstance(narrative, hd.sr.EnhancedSR)
    texts = _texts(narrative)
    assert ("Impression", report.impression) in texts
    assert ("Procedure Description", report.study.technique) in texts
    assert ("Recommendation", "Follow-up CT in 3 months.") in texts
    assert any(name == "Comment" and "AI-assisted" in text for name, text in texts)
    assert [text.split(":")[0] for name, text in texts if name == "Finding"] == ["F1", "F2", "F3"]


def test_report_without_findings_has_only_the_narrative(ct_small):
    report = _history(ct_small, {}).current
    measurement_sr, narrative_sr = report_sr(report, ct_small, {})
    assert measurement_sr is None
    assert ("Finding", NO_FINDINGS_TEXT) in _texts(narrative_sr)


# -- refusals ------------------------------------------------------------------------------------


def test_png_study_exports_markdown_and_pdf_only(tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(path)
    with open_study(path) as study:
        finding = _finding(study, "F1", center=(16.0, 16.0))
        report = _history(study, {"F1": finding}).current
        with pytest.raises(ReportError) as refused:
            report_sr(report, study, {"F1": finding})
        assert str(refused.value) == RASTER_STUDY_MESSAGE
        assert "only Markdown and PDF can be exported" in RASTER_STUDY_MESSAGE
        with pytest.raises(ReportError):
            source_datasets(study, {0})


def test_finding_missing_from_session_is_refused(ct_small):
    findings = _ct_small_findings(ct_small)
    report = _history(ct_small, findings).current
    with pytest.raises(ReportError, match="F3"):
        report_sr(report, ct_small, {k: v for k, v in findings.items() if k != "F3"})


def test_report_of_another_study_is_refused(ct_small, emri_small):
    findings = _ct_small_findings(ct_small)
    report = _history(ct_small, findings).current
    with pytest.raises(ReportError, match="another study"):
        report_sr(report, emri_small, findings)


# -- dciodvfy ------------------------------------------------------------------------------------


def _dciodvfy_errors(path: Path) -> list[str]:
    if not DCIODVFY.exists():
        if os.environ.get("CI"):
            pytest.fail("dciodvfy is missing: CI must install Debian's dicom3tools")
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Abort"))]


def _case(name: str, request, tmp_path: Path) -> tuple[Path, Path]:
    if name == "lidc":
        study = request.getfixturevalue("lidc_series")
        frame = [f.path.name for f in study.files].index(LIDC_SLICE)
        findings = {"F1": _finding(study, "F1", center=(345.0, 360.0), frame=frame,
                                   fit=_fit((345.0, 360.0), 20.0, 16.0, -45.0, mm_per_px=0.68), mm_per_px=0.68)}
        report = _history(study, findings).current
    elif name == "emri":
        study = request.getfixturevalue("emri_small")
        findings = {"F1": _finding(study, "F1", center=(31.0, 22.0), frame=3, fit=_fit((31.0, 22.0), 6.0, 4.0, 90.0))}
        report = _history(study, findings).current
    else:
        study = request.getfixturevalue("ct_small")
        findings = _ct_small_findings(study)
        history = _history(study, findings)
        report = _signed(history) if name == "ct-signed" else history.current
    return _write(tmp_path, name, *report_sr(report, study, findings))


@pytest.mark.parametrize("name", ["ct-draft", "ct-signed", "emri", "lidc"])
def test_dciodvfy_reports_no_errors(name, request, tmp_path):
    for path in _case(name, request, tmp_path):
        assert _dciodvfy_errors(path) == [], path.name
