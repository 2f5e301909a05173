"""Honest negatives in reports: a draft from a search that found nothing never reads as a normal
study — in Markdown, PDF, the narrative SR or the files of ``loupe report`` — it says what the
search is worth, leaves the Impression to the reading physician, and cannot be signed until they
write it. A model's normal-study wording is refused; the clinician's own words are theirs.

Real files: a chest radiograph of the shared dev set that the offline detector misses, and LIDC
CT slices (one with nothing at the threshold, one with a nodule that reaches it).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pypdf
import pytest

from agent import reports
from agent.conversation import Conversation
from agent.settings import LoupeSettings
from agent.toolbox import run_tool
from prompts import load_table
from tests.conftest import run_cli
from tools.detect_anomalies import study_assessment
from tools.detection.performance import shipped_table
from tools.normal_wording import normal_study_phrases
from tools.report.document import (IMPRESSION_PENDING, NO_FINDINGS_TEXT, ClinicalReport, ReportError,
                                   ReportHistory, ReportNarrative)
from tools.report.markdown import report_markdown

PENDING = "To be completed by the reading physician"


class Writer:
    """A report writer (``tools.context.ReportWriter``) that words what it is told to."""

    name = "test writer"

    def __init__(self, impression: str, recommendations: tuple[str, ...] = (), **characteristics: str) -> None:
        self.narrative = ReportNarrative(impression=impression, recommendations=list(recommendations),
                                         characteristics=characteristics)

    def write(self, report: ClinicalReport, instruction: str) -> ReportNarrative:
        return self.narrative


@pytest.fixture
def radiograph(eval_dir) -> Path:
    return eval_dir / "nih_cxr14" / "00001075_024.png"


def searched(path: Path, modality: str | None = None) -> Conversation:
    """A session on ``path`` after the offline detector's search."""
    conversation = Conversation.start(LoupeSettings(_env_file=None), path, modality=modality)
    run_tool(conversation.ctx, "detect_anomalies", {"use_vision_model": False})
    return conversation


def drafted(path: Path, modality: str | None = None) -> Conversation:
    conversation = searched(path, modality)
    run_tool(conversation.ctx, "draft_report", {})
    return conversation


def flat(text: str) -> str:
    """Whitespace normalised, and words the PDF wrapped at a hyphen joined again."""
    return " ".join(text.split()).replace("- ", "-")


def pdf_text(data: bytes) -> str:
    return flat(" ".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages))


def sr_strings(dataset: pydicom.Dataset) -> list[str]:
    """Every text value and code meaning of an SR's content tree."""
    found = []
    for item in dataset.get("ContentSequence", []):
        found += [code.CodeMeaning for key in ("ConceptNameCodeSequence", "ConceptCodeSequence")
                  for code in item.get(key, [])]
        if item.ValueType == "TEXT":
            found.append(item.TextValue)
        found += sr_strings(item)
    return found


# -- the draft and its exports -------------------------------------------------------------------


def test_a_missed_radiograph_is_drafted_as_a_search_not_a_normal_study(radiograph):
    conversation = drafted(radiograph, "DX")
    ctx = conversation.ctx
    report = reports.history(conversation).current
    assessment = study_assessment(ctx, ctx.view().study, ctx.view().frame)
    assert assessment.result == "inconclusive" and "chest radiographs" in assessment.sensitivity
    assert report.findings == [] and report.impression == IMPRESSION_PENDING
    assert report.search_statement == assessment.reason
    assert any(assessment.sensitivity in item for item in report.limitations)
    markdown = report_markdown(report)
    files, notes = reports.export(conversation, ["md", "pdf", "json"])
    assert len(files) == 3 and not notes
    exported = {file.name.rsplit(".", 1)[-1]: file.data for file in files}
    texts = {"markdown": markdown, "md": exported["md"].decode(), "pdf": pdf_text(exported["pdf"]),
             "json": exported["json"].decode()}
    for kind, text in texts.items():
        assert normal_study_phrases(text) == [], kind
        assert PENDING in text, kind
    for kind in ("md", "pdf"):
        assert flat(assessment.reason) in flat(texts[kind]), kind  # in Findings
        assert flat(assessment.sensitivity) in flat(texts[kind]), kind
    findings_section = markdown.split("## Findings", 1)[1].split("## Impression", 1)[0]
    assert findings_section.strip() == assessment.reason


def test_a_ct_slice_with_nothing_at_the_threshold_gives_only_the_narrative_sr(eval_dir):
    conversation = drafted(eval_dir / "lidc_ct" / "LIDC-IDRI-0002" / "z-0092.00.dcm")
    ctx = conversation.ctx
    report = reports.history(conversation).current
    assessment = study_assessment(ctx, ctx.view().study, ctx.view().frame)
    assert assessment.result == "inconclusive"
    assert report.findings == [] and report.search_statement == assessment.reason
    files, notes = reports.export(conversation, ["sr"])
    assert [file.name for file in files] == ["report-v1-draft-narrative-sr.dcm"] and not notes  # nothing to measure
    option_kinds = [option.kind for option in reports.export_options(conversation, 1)[0]]
    assert "sr-measurements" not in option_kinds and "sr-narrative" in option_kinds
    narrative = pydicom.dcmread(io.BytesIO(files[0].data))
    strings = sr_strings(narrative)
    assert report.search_statement in strings and IMPRESSION_PENDING in strings
    assert any("chest CT slices" in text for text in strings)  # the sensitivity, among the limitations
    assert all(normal_study_phrases(text) == [] for text in strings)


def test_listed_findings_carry_what_a_confidence_means(eval_dir):
    conversation = drafted(eval_dir / "lidc_ct" / "LIDC-IDRI-0003" / "z-0184.00.dcm")
    ctx = conversation.ctx
    report = reports.history(conversation).current
    assessment = study_assessment(ctx, ctx.view().study, ctx.view().frame, anomaly=True)
    assert report.findings and report.search_statement is None and report.impression != IMPRESSION_PENDING
    assert any(assessment.confidence_meaning in item for item in report.limitations)
    assert any(assessment.sensitivity in item for item in report.limitations)
    assert normal_study_phrases(report_markdown(report)) == []


def test_a_report_stored_before_the_search_statement_loads_and_says_nothing_normal():
    stored = {"study_id": "s", "study": {"modality": "CT", "technique": "CT."}, "impression": "Old impression.",
              "limitations": ["AI-assisted draft: requires review and sign-off by the reading physician."]}
    report = ClinicalReport.model_validate_json(json.dumps(stored))
    assert report.search_statement is None and NO_FINDINGS_TEXT in report_markdown(report)
    assert normal_study_phrases(NO_FINDINGS_TEXT) == []


# -- a model's wording -----------------------------------------------------------------------------


def test_a_models_normal_wording_is_refused_and_the_template_kept(radiograph):
    conversation = searched(radiograph, "DX")
    conversation.ctx.report_writer = Writer("The study is normal.", ("No further imaging is needed.",))
    output = run_tool(conversation.ctx, "draft_report", {}).output
    report = reports.history(conversation).current
    assert report.author == "model" and report.impression == IMPRESSION_PENDING
    assert report.recommendations == load_table("report_templates.toml")["recommendations"]["none"]
    assert any("read as a normal study" in note and "recommendation" in note for note in output.notes)
    assert normal_study_phrases(output.markdown) == []
    # With no finding listed, even a clean impression of the model's is not used.
    conversation.ctx.report_writer = Writer("Possible subtle opacity at the left base.")
    run_tool(conversation.ctx, "draft_report", {})
    assert reports.history(conversation).current.impression == IMPRESSION_PENDING


def test_with_a_finding_the_model_words_the_impression_but_never_as_normal(eval_dir):
    conversation = searched(eval_dir / "lidc_ct" / "LIDC-IDRI-0003" / "z-0184.00.dcm")
    ctx = conversation.ctx
    ctx.report_writer = Writer("Nodule F1; the lungs are otherwise normal.")
    output = run_tool(ctx, "draft_report", {}).output
    assert normal_study_phrases(reports.history(conversation).current.impression) == []
    assert any("impression read as a normal study" in note for note in output.notes)
    ctx.report_writer = Writer("Nodule F1 in the left lung; compare with prior CT.")
    run_tool(ctx, "draft_report", {})
    assert reports.history(conversation).current.impression == "Nodule F1 in the left lung; compare with prior CT."


def test_a_models_edits_may_not_word_a_normal_study_but_the_clinicians_may(radiograph):
    conversation = drafted(radiograph, "DX")
    ctx = conversation.ctx
    refused = {
        "reads as a normal study": [{"op": "add_recommendation", "text": "No further imaging is needed."}],
        "reading physician's to write": [{"op": "set_section", "section": "impression", "text": "Subtle opacity."}],
    }
    for why, edits in refused.items():
        with pytest.raises(ReportError, match=why):
            run_tool(ctx, "revise_report", {"edits": edits, "reason": "asked"})
    ctx.report_writer = Writer("Unremarkable chest radiograph.")
    with pytest.raises(ReportError, match="reads as a normal study"):
        run_tool(ctx, "revise_report", {"edits": [{"op": "restyle", "style": "concise"}], "reason": "concise"})
    assert len(reports.history(conversation).versions) == 1
    reports.clinician_edit(conversation, [{"op": "set_section", "section": "impression",
                                           "text": "Normal chest radiograph."}], name="Dr A", reason="read")
    assert reports.history(conversation).current.impression == "Normal chest radiograph."


# -- signing -----------------------------------------------------------------------------------------


def test_signing_waits_for_the_physicians_impression(radiograph):
    conversation = drafted(radiograph, "DX")
    with pytest.raises(ReportError, match="write the Impression first"):
        reports.sign(conversation, 1, name="Dr A")
    reports.clinician_edit(conversation, [{"op": "set_section", "section": "impression",
                                           "text": "Right apical opacity; CT advised."}], name="Dr A", reason="read")
    signed = reports.sign(conversation, 2, name="Dr A")
    assert signed.status == "signed" and signed.impression == "Right apical opacity; CT advised."
    blank = ReportHistory()
    blank.add(signed.model_copy(update={"impression": " ", "status": "draft", "signed_by": None}),
              author="clinician", reason="cleared")
    with pytest.raises(ReportError, match="write the Impression first"):
        blank.sign(1, "Dr A")


# -- the command line --------------------------------------------------------------------------------


def test_loupe_report_on_the_radiograph_writes_nothing_normal(isolated_cli, capsys, radiograph, tmp_path):
    code, out, err = run_cli(capsys, "report", radiograph, "--modality", "DX", "--out", tmp_path / "out")
    assert code == 0, err
    written = {path.suffix: path for path in (tmp_path / "out").iterdir()}
    assert sorted(written) == [".json", ".md", ".pdf"]  # a PNG has no source DICOM for an SR
    texts = [written[".md"].read_text(), written[".json"].read_text(), pdf_text(written[".pdf"].read_bytes())]
    sensitivity = f"(sensitivity {shipped_table().kinds['DX chest'].sensitivity:.2f})"
    for text in texts:
        assert normal_study_phrases(text) == [] and PENDING in text
        assert "chest radiographs" in text and sensitivity in text
