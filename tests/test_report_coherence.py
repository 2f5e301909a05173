"""A report stays coherent when the reader changes it: an Impression follows the findings while it
is the template's, a revision that changes nothing adds no version, a second read's disagreement
reaches the report, a signed report says who signed it; technique values as the header has them;
on a series each finding's slice and table position."""

from __future__ import annotations

import pytest

from agent.samples import sample_path
from agent.settings import LoupeSettings
from agent.toolbox import new_context, run_tool
from tests.conftest import pydicom_file
from tools.draft_report import study_summary
from tools.report.document import AI_LIMITATION, IMPRESSION_PENDING, AddFinding, RemoveFinding, SetSection
from tools.report.markdown import report_markdown
from tools.revise_report import revise
from tools.study import StudyLimits, open_study


@pytest.fixture
def ctx():
    context = new_context(LoupeSettings())
    yield context
    context.close()


def _empty_draft(ctx, path, modality=None) -> list[str]:
    """A draft that lists no finding, on a study whose findings were detected; their ids."""
    run_tool(ctx, "load_study", {"path": str(path), "modality": modality})
    found = [f.id for f in run_tool(ctx, "detect_anomalies", {}).output.findings]
    run_tool(ctx, "draft_report", {"finding_ids": [], "use_model_wording": False})
    return found


def _history(ctx):
    return ctx.reports[ctx.current_study_id]


def test_adding_a_finding_to_a_draft_with_none_rewrites_the_impression(ctx, eval_dir):
    found = _empty_draft(ctx, eval_dir / "busi" / "benign_030.png", "US")
    assert _history(ctx).current.impression == IMPRESSION_PENDING
    revise(ctx, [_add(found[0])], author="clinician", reason="I see it")
    report = _history(ctx).current
    assert report.impression != IMPRESSION_PENDING and found[0] in report.impression
    assert not any("does not exclude a lesion" in r for r in report.recommendations)
    # Removing it again: the template's Impression goes back to the reader.
    revise(ctx, [_remove(found[0])], author="clinician", reason="not it")
    assert _history(ctx).current.impression == IMPRESSION_PENDING


def test_an_impression_the_reader_wrote_stays_when_a_finding_is_added(ctx, eval_dir):
    found = _empty_draft(ctx, eval_dir / "busi" / "benign_030.png", "US")
    revise(ctx, [_set("impression", "Oval hypoechoic mass, BI-RADS 3.")], author="clinician", reason="mine")
    revise(ctx, [_add(found[0])], author="clinician", reason="and this")
    assert _history(ctx).current.impression == "Oval hypoechoic mass, BI-RADS 3."


def test_a_revision_that_changes_nothing_adds_no_version(ctx, eval_dir):
    _empty_draft(ctx, eval_dir / "busi" / "benign_030.png", "US")
    before = _history(ctx).current
    output = revise(ctx, [_set("impression", before.impression)], author="clinician", reason="same")
    assert not output.changed and output.version == before.version and len(_history(ctx).versions) == 1
    assert output.notes and output.notes[0].startswith("Nothing changed")


def test_a_signed_report_says_who_signed_and_when(ctx, eval_dir):
    _empty_draft(ctx, eval_dir / "busi" / "benign_030.png", "US")
    revise(ctx, [_set("impression", "Benign-appearing mass.")], author="clinician", reason="read")
    history = _history(ctx)
    signed = history.sign(history.current.version, "Dr Ada")
    assert AI_LIMITATION in signed.limitations  # stored as drafted ...
    markdown = report_markdown(signed)
    assert f"Signed by Dr Ada on {signed.created_at:%Y-%m-%d %H:%M} UTC; drafted with AI assistance (Loupe)." in markdown
    assert "requires review and sign-off" not in markdown  # ... shown as signed
    assert "requires review and sign-off" in report_markdown(history.version(1))


def test_a_disagreement_naming_a_finding_puts_it_in_the_report_with_the_note(ctx, eval_dir):
    found = _empty_draft(ctx, eval_dir / "busi" / "benign_030.png", "US")
    run_tool(ctx, "start_second_read", {})
    run_tool(ctx, "record_assessment", {"assessment": "disagree", "note": f"{found[0]} is a real nodule"})
    run_tool(ctx, "second_read_summary", {"append_to_report": True, "author_name": "Dr Ada"})
    report = _history(ctx).current
    listed = {f.finding_id: f for f in report.findings}
    assert found[0] in listed and f"{found[0]} is a real nodule" in listed[found[0]].characteristics
    assert any(f"{found[0]} is a real nodule" in item for item in report.limitations)  # the addendum quotes it
    assert report.impression != IMPRESSION_PENDING and found[0] in report.impression


def test_technique_values_are_written_as_the_header_has_them():
    with open_study(pydicom_file("CT_small.dcm"), limits=StudyLimits()) as study:
        study.safe = study.safe.model_copy(update={"slice_thickness_mm": 1.25})
        technique = study_summary(study).technique
    assert "slice thickness 1.25 mm" in technique and "pixel spacing 0.661468 × 0.661468 mm" not in technique
    assert "pixel spacing 0.6615 × 0.6615 mm" in technique


def test_a_series_report_lists_slice_and_table_position(ctx):
    run_tool(ctx, "load_study", {"path": str(sample_path("ct-chest-nodule"))})
    run_tool(ctx, "detect_anomalies", {"all_frames": True})
    markdown = run_tool(ctx, "draft_report", {"use_model_wording": False}).output.markdown
    assert "| id | slice | table position | location | size | measured by |" in markdown
    assert "| F1 | 6 of 10 | -191.5 mm | patient's left posterior region" in markdown
    assert "| Loupe (segmentation) |" in markdown


def _add(finding_id: str) -> AddFinding:
    return AddFinding(finding_id=finding_id)


def _remove(finding_id: str) -> RemoveFinding:
    return RemoveFinding(finding_id=finding_id)


def _set(section: str, text: str) -> SetSection:
    return SetSection(section=section, text=text)
