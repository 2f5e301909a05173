"""The report's Comparison section (issue 27): the prior named with its date for the clinician,
each finding's change, in the Markdown, the PDF, the narrative SR and the Encapsulated PDF; the
measurement SR referencing the prior's images used; "Comparison: None." without a prior; old
stored reports loading; and the prior's date never reaching a model.

The data: one (current, prior) DICOM CT pair of ``tests/prior_studies.py`` per module — the
nodule 1.5 times larger now, the prior 181 days earlier (2023-12-03) — opened in a conversation,
searched, compared and drafted once. ``dciodvfy`` must report no errors (skipped without it
locally, as in ``tests/test_report_sr.py``).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pypdf
import pytest

from agent import reports
from agent.conversation import Conversation
from agent.models.gemini import GeminiReportWriter
from agent.privacy.boundary import PrivacyBoundary
from agent.settings import LoupeSettings
from agent.toolbox import run_tool
from tests.conftest import _MODEL_ENV, pydicom_file
from tests.prior_studies import write_prior_pair
from tests.test_report_sr import _dciodvfy_errors
from tools.draft_report import ReportOutput
from tools.normal_wording import normal_study_phrases
from tools.report.document import (AddFinding, ClinicalReport, ComparedLine, RemoveFinding, ReportComparison,
                                   ReportError, comparison_sentences, guard_numbers)
from tools.report.encapsulated_pdf import encapsulated_pdf
from tools.report.markdown import report_markdown
from tools.report.pdf import report_pdf
from tools.report.sr import report_sr
from tools.revise_report import revise
from tools.study import Study

PRIOR_DATE = "2023-12-03"
DATES = (PRIOR_DATE, "20231203")
PRIOR_SENTENCE = f"CT of {PRIOR_DATE} (181 days earlier)."
GROWN = re.compile(r"F1 grew from \d+\.\d × \d+\.\d mm to \d+\.\d × \d+\.\d mm \(mean diameter \+\d+\.\d mm, "
                   r"\+\d+ %; volume doubling time \d+ days\)\.")
PREVIOUS_FINDINGS = "18834-2"  # LOINC "Radiology Comparison study": CID 7001's "Previous Findings"


@dataclass(frozen=True)
class Compared:
    conversation: Conversation
    report: ClinicalReport  # version 1, as drafted
    output: ReportOutput
    prior: Study
    prior_uids: frozenset[str]  # the SOP Instance UIDs of the prior's slices the comparison used

    @property
    def current(self) -> Study:
        return self.conversation.ctx.view(self.report.study_id).study


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Compared:
    """The pair opened as a clinician would (the prior first, then the current study), the current
    one searched, compared with the prior by its id, and drafted."""
    pair = write_prior_pair(tmp_path_factory.mktemp("pair"))
    with pytest.MonkeyPatch.context() as patch:  # offline, as every test is (tests/conftest.py)
        for name in _MODEL_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("LOUPE_DATA_DIR", str(tmp_path_factory.mktemp("loupe-data")))
        conversation = Conversation.start(LoupeSettings(_env_file=None), pair.prior)
        prior_id = conversation.ctx.current_study_id
        conversation.open_study(pair.current)
        ctx = conversation.ctx
        run_tool(ctx, "detect_anomalies", {"all_frames": True})
        run_tool(ctx, "compare_with_prior", {"prior": prior_id})
        output = run_tool(ctx, "draft_report", {}).output
    report = ctx.reports[ctx.current_study_id].version(1)
    prior = ctx.views[prior_id].study
    used = ctx.comparisons[report.study_id].prior_frames
    uids = frozenset(str(prior.locate(frame)[0].header.SOPInstanceUID) for frame in used)
    return Compared(conversation, report, output, prior, uids)


def _texts(dataset: pydicom.Dataset, section: str | None = None) -> list[tuple[str, str]]:
    """(concept meaning, text) of the TEXT items, anywhere or in the section coded ``section``."""
    found = []
    for item in dataset.get("ContentSequence", []):
        code = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None
        if item.ValueType == "TEXT" and section is None:
            found.append((item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue))
        found += _texts(item, None if code == section else section)
    return found


def _pdf_text(pdf: bytes) -> str:
    return " ".join(" ".join(page.extract_text().split()) for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)


def _evidence_uids(sr: pydicom.Dataset, sequence: str) -> set[str]:
    return {str(sop.ReferencedSOPInstanceUID) for study in sr.get(sequence, [])
            for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}


def _saved(dataset: pydicom.Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


# -- the section's words --------------------------------------------------------------------------


def test_the_draft_carries_the_comparison_of_the_findings_it_lists(compared):
    comparison = compared.report.comparison
    assert comparison is not None
    assert (comparison.prior_date, comparison.prior_modality, comparison.interval_days) == (PRIOR_DATE, "CT", 181)
    assert comparison.prior_study_id == compared.prior.id
    listed = {f.finding_id for f in compared.report.findings}
    assert {line.finding_id for line in comparison.lines} <= listed | {f"P{n}" for n in range(1, 10)}
    [grown] = [line for line in comparison.lines if line.finding_id == "F1"]
    assert grown.status == "grown" and grown.doubling_time_days is not None


def test_the_impression_says_each_findings_change_and_the_advice_is_not_to_compare_again(compared):
    report = compared.report
    assert "F1 " in report.impression and "(grown since the prior)" in report.impression
    assert not any("Compare with prior imaging" in r for r in report.recommendations)
    assert any("interval change" in r for r in report.recommendations)
    assert any("change status was right on" in limitation for limitation in report.limitations)
    assert normal_study_phrases(report.impression) == []


def test_markdown_names_the_prior_between_technique_and_findings(compared):
    markdown = report_markdown(compared.report)
    sections = re.findall(r"^## (.+)$", markdown, flags=re.MULTILINE)
    assert sections[:3] == ["Technique", "Comparison", "Findings"]
    section = markdown.split("## Comparison", 1)[1].split("## Findings", 1)[0].strip()
    assert section.startswith(PRIOR_SENTENCE)
    assert GROWN.search(section), section
    assert normal_study_phrases(markdown) == []


def test_the_comparison_states_the_sizes_of_the_findings_table(compared):
    """Now-sizes are the findings' own measurements, never a re-rounding that differs by 0.1 mm."""
    section = " ".join(compared.report.comparison_sentences)
    sizes = {f.finding_id: f.size.text() for f in compared.report.findings if f.size is not None}
    checked = [line.finding_id for line in compared.report.comparison.lines if line.size_now is not None]
    assert checked
    for finding_id in checked:
        sentence = next(s for s in compared.report.comparison_sentences if s.startswith(finding_id + " "))
        assert f"to {sizes[finding_id]}" in sentence or f"{sizes[finding_id]} now" in sentence, (sentence, section)


@pytest.mark.parametrize("line, sentence", [
    (ComparedLine(finding_id="F2", status="new", size_now=(6.0, 5.0)), "F2 is new since the prior."),
    (ComparedLine(finding_id="P1", status="resolved", size_then=(9.04, 7.0)),
     "P1, seen on the prior (9.0 × 7.0 mm), is no longer seen."),
    (ComparedLine(finding_id="P2", status="resolved"), "P2, seen on the prior, is no longer seen."),
    (ComparedLine(finding_id="F3", status="shrunk", size_then=(12.0, 10.0), size_now=(8.0, 7.0),
                  mean_diameter_change=-3.5, mean_diameter_pct=-31.8),
     "F3 shrank from 12.0 × 10.0 mm to 8.0 × 7.0 mm (mean diameter -3.5 mm, -32 %)."),
    (ComparedLine(finding_id="F4", status="stable", size_then=(8.0, 6.0), size_now=(8.0, 6.0),
                  mean_diameter_change=-0.02, mean_diameter_pct=-0.3),
     "F4 is stable: 8.0 × 6.0 mm on the prior, 8.0 × 6.0 mm now (mean diameter +0.0 mm, +0 %)."),
    (ComparedLine(finding_id="F5", status="present", size_now=(8.0, 6.0)),
     "F5 was present on the prior too; its change is not given (not measurable on the prior)."),
    (ComparedLine(finding_id="F6", status="grown", size_then=(20.0, 16.0), size_now=(30.0, 24.0), unit="px",
                  mean_diameter_change=9.0, mean_diameter_pct=50.0),
     "F6 grew from 20 × 16 px to 30 × 24 px (mean diameter +9 px, +50 %)."),
])
def test_each_status_is_worded_and_none_reads_as_a_normal_study(line, sentence):
    opening, worded = comparison_sentences(ReportComparison(prior_study_id="st-1", prior_modality="CT",
                                                            interval_days=1, lines=[line]))
    assert opening == "Prior CT (1 day earlier)."  # no date known: named by modality only
    assert worded == sentence
    assert normal_study_phrases(f"{opening} {worded}") == []


# -- the exports -----------------------------------------------------------------------------------


def test_pdf_shows_the_comparison_before_the_findings(compared):
    text = _pdf_text(report_pdf(compared.report))
    assert f"Comparison {PRIOR_SENTENCE}" in text
    assert GROWN.search(text), text
    assert text.index("Comparison") < text.index("Findings") < text.index("Study and technique")


def test_narrative_sr_carries_the_comparison_section(compared, tmp_path):
    _, narrative = report_sr(compared.report, compared.current, compared.conversation.ctx.findings,
                             prior=compared.prior)
    section = _texts(pydicom.dcmread(_saved(narrative, tmp_path / "narrative.dcm")), PREVIOUS_FINDINGS)
    assert section[0] == ("Procedure Description", f"Comparison: {PRIOR_SENTENCE}")
    assert any(name == "Previous Finding" and GROWN.fullmatch(text) for name, text in section), section


def test_measurement_sr_references_the_priors_instances_used(compared, tmp_path):
    measurements, narrative = report_sr(compared.report, compared.current, compared.conversation.ctx.findings,
                                        prior=compared.prior)
    current_uid = str(compared.current.locate(0)[0].header.StudyInstanceUID)
    for sr in (measurements, narrative):
        read = pydicom.dcmread(_saved(sr, tmp_path / "sr.dcm"))
        assert read.StudyInstanceUID == current_uid  # the SR joins the current study, not the prior
        assert _evidence_uids(read, "PertinentOtherEvidenceSequence") == compared.prior_uids
        assert not _evidence_uids(read, "CurrentRequestedProcedureEvidenceSequence") & compared.prior_uids
    library = [item for item in measurements.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "111028"]
    assert library, "the measurement SR lists its images in an image library (TID 1600)"
    listed = {str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
              for group in library[0].ContentSequence for image in group.ContentSequence if image.ValueType == "IMAGE"}
    assert compared.prior_uids <= listed


def test_srs_and_encapsulated_pdf_with_a_comparison_are_dciodvfy_clean(compared, tmp_path):
    ctx = compared.conversation.ctx
    measurements, narrative = report_sr(compared.report, compared.current, ctx.findings, prior=compared.prior)
    pdf = encapsulated_pdf(report_pdf(compared.report), compared.report, compared.current, ctx.findings)
    for name, dataset in (("measurements", measurements), ("narrative", narrative), ("pdf", pdf)):
        path = _saved(dataset, tmp_path / f"{name}.dcm")
        assert _dciodvfy_errors(path) == [], name


def test_the_export_passes_the_prior_to_the_sr(compared):
    files, notes = reports.export(compared.conversation, ["sr"], version=1)
    assert notes == []
    [measurement_file] = [f for f in files if f.name.endswith("-measurements-sr.dcm")]
    read = pydicom.dcmread(io.BytesIO(measurement_file.data))
    assert _evidence_uids(read, "PertinentOtherEvidenceSequence") == compared.prior_uids


def test_a_prior_no_longer_open_is_named_but_not_referenced(compared):
    ctx = compared.conversation.ctx
    view = ctx.views.pop(compared.prior.id)
    try:
        files, notes = reports.export(compared.conversation, ["sr"], version=1)
    finally:
        ctx.views[compared.prior.id] = view
    assert any("no longer open" in note for note in notes)
    for file in files:
        assert not _evidence_uids(pydicom.dcmread(io.BytesIO(file.data)), "PertinentOtherEvidenceSequence")


# -- without a prior, and old reports --------------------------------------------------------------


def test_without_a_prior_the_section_says_none(compared, tmp_path):
    plain = compared.report.model_copy(update={"comparison": None})
    assert "## Comparison\n\nNone.\n" in report_markdown(plain)
    assert "Comparison None." in _pdf_text(report_pdf(plain))
    _, narrative = report_sr(plain, compared.current, compared.conversation.ctx.findings)
    path = _saved(narrative, tmp_path / "narrative.dcm")
    assert _texts(pydicom.dcmread(path), PREVIOUS_FINDINGS) == [("Procedure Description", "Comparison: None.")]
    assert _dciodvfy_errors(path) == []


def test_a_draft_without_a_comparison_has_none():
    conversation = Conversation.start(LoupeSettings(_env_file=None), pydicom_file("CT_small.dcm"))
    output = run_tool(conversation.ctx, "draft_report", {}).output
    assert conversation.ctx.reports[output.study_id].current.comparison is None
    assert "## Comparison\n\nNone." in output.markdown


def test_an_old_report_without_the_field_loads(compared):
    stored = compared.report.model_dump(mode="json")
    del stored["comparison"]
    old = ClinicalReport.model_validate(stored)
    assert old.comparison is None and "## Comparison\n\nNone." in report_markdown(old)


# -- revisions --------------------------------------------------------------------------------------


def test_a_revision_keeps_the_comparison_and_its_lines_follow_the_findings(compared):
    ctx = compared.conversation.ctx
    dropped = next(line.finding_id for line in compared.report.comparison.lines if line.finding_id != "F1"
                   and line.status != "resolved")
    removed = revise(ctx, [RemoveFinding(finding_id=dropped)], author="clinician",
                     reason="a vessel", study_id=compared.report.study_id)
    history = ctx.reports[compared.report.study_id]
    after = history.version(removed.version)
    assert after.comparison.prior_date == PRIOR_DATE
    assert dropped not in {line.finding_id for line in after.comparison.lines}
    assert "F1" in {line.finding_id for line in after.comparison.lines}
    restored = revise(ctx, [AddFinding(finding_id=dropped)], author="clinician",
                      reason="not a vessel", study_id=compared.report.study_id)
    assert dropped in {line.finding_id for line in history.version(restored.version).comparison.lines}


def test_a_model_may_quote_the_comparisons_sizes_but_not_invent_one(compared):
    grown = next(line for line in compared.report.comparison.lines if line.finding_id == "F1")
    guard_numbers(f"F1 measured {grown.size_then[0]:.1f} mm on the prior.", compared.report, {})
    with pytest.raises(ReportError, match="no tool measured"):
        guard_numbers(f"F1 measured {grown.size_then[0] + 3:.1f} mm on the prior.", compared.report, {})


# -- privacy ----------------------------------------------------------------------------------------


def test_the_priors_date_is_redacted_from_the_tool_output_sent_to_the_model(compared):
    assert PRIOR_DATE in compared.output.markdown  # the clinician's copy names it
    boundary = PrivacyBoundary()
    boundary.watch(compared.prior)
    response = {"function_response": {"name": "draft_report", "response": compared.output.model_dump(mode="json")}}
    sent = str(boundary.outgoing([{"role": "user", "parts": [response]}]))
    assert "181 days earlier" in sent  # the interval may cross
    for date in DATES:
        assert date not in sent


def test_the_conversations_own_boundary_watches_the_prior(compared):
    contents = [{"role": "user", "parts": [{"text": compared.output.markdown}]}]
    sent = str(compared.conversation.boundary.outgoing(contents))
    for date in DATES:
        assert date not in sent


def test_a_report_writer_is_not_sent_the_comparison(compared):
    """The writer words the narrative only: it gets neither the prior's date nor the section."""

    class Caller:
        settings = SimpleNamespace(model="fake")

        def __init__(self) -> None:
            self.sent: list = []

        def generate(self, contents, *args, **kwargs):
            self.sent.extend(contents)
            return SimpleNamespace(text='{"impression": "F1 grew.", "recommendations": []}')

    caller = Caller()
    GeminiReportWriter(caller).write(compared.report, "draft")
    sent = str(caller.sent)
    assert caller.sent and "comparison" not in sent and "prior_study_id" not in sent
    for date in DATES:
        assert date not in sent
