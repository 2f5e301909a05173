"""Reports: drafting from real findings, a refinement conversation through the fake Gemini,
versions with diff and restore, sign-off locking, exports from a stored session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import reports
from agent.conversation import Conversation
from agent.events import ToolFailed, ToolFinished
from agent.models.gemini import GeminiBackend
from agent.settings import LoupeSettings
from agent.store.database import Store
from agent.toolbox import run_tool
from tests.conftest import pydicom_file, run_cli
from tests.fake_gemini import call_reply, text_reply
from tools.report.document import AI_LIMITATION, IMPRESSION_PENDING, NO_FINDINGS_TEXT, ReportError


@pytest.fixture
def ct_slice(eval_dir) -> Path:
    return eval_dir / "lidc_ct" / "LIDC-IDRI-0002" / "z-0089.50.dcm"


def analysed(path: Path, settings: LoupeSettings | None = None, store: Store | None = None) -> Conversation:
    conversation = Conversation.start(settings or LoupeSettings(_env_file=None), path, store=store, owner="dr-a")
    run_tool(conversation.ctx, "detect_anomalies", {"use_vision_model": False})
    return conversation


def test_offline_draft_from_real_findings(ct_slice):
    conversation = analysed(ct_slice)
    output = run_tool(conversation.ctx, "draft_report", {"finding_ids": ["F1", "F2"]}).output
    report = reports.history(conversation).current
    assert output.version == 1 and report.author == "loupe" and report.status == "draft"
    assert [f.finding_id for f in report.findings] == ["F1", "F2"]
    for finding in report.findings:
        assert finding.size is not None and finding.size.unit == "mm"  # measured on demand, with spacing
        measured = conversation.ctx.findings[finding.finding_id].size_mm
        assert finding.size.major == pytest.approx(measured[0])
    assert AI_LIMITATION in report.limitations
    assert "CT, 512×512 px, 1 frame, pixel spacing" in report.study.technique
    assert "| F1 |" in output.markdown and "DRAFT — not signed" in output.markdown
    with pytest.raises(ReportError, match="no finding F99"):
        run_tool(conversation.ctx, "draft_report", {"finding_ids": ["F99"]})


def test_draft_without_findings_says_so():
    conversation = Conversation.start(LoupeSettings(_env_file=None), pydicom_file("CT_small.dcm"))
    output = run_tool(conversation.ctx, "draft_report", {"finding_ids": []}).output
    report = reports.history(conversation).current
    assert report.findings == [] and report.impression == IMPRESSION_PENDING
    # Nothing was searched, so the draft does not claim a search found nothing.
    assert report.search_statement is None and NO_FINDINGS_TEXT in output.markdown


def gemini_settings(tmp_path) -> LoupeSettings:
    return LoupeSettings(_env_file=None, gemini_api_key="k", retry_initial_s=0.01, data_dir=tmp_path)


def narrative(impression: str, f1: str = "solid nodule", recommendation: str = "Compare with prior CT.") -> dict:
    return text_reply(json.dumps({"impression": impression, "recommendations": [recommendation],
                                  "characteristics": {"F1": f1, "F2": "small nodular opacity"}}))


def test_refinement_conversation_through_gemini(fake, ct_slice, tmp_path):
    store = Store.for_data_dir(tmp_path)
    settings = gemini_settings(tmp_path)
    conversation = analysed(ct_slice, settings, store)
    backend = GeminiBackend(settings)

    def turn(message: str, *replies: dict) -> list:
        fake.script(*replies)
        return list(conversation.ask(message, backend))

    # 1. Draft: the model calls draft_report; the writer's structured call words it; one number
    #    in the wording was invented, so that field keeps the template's wording.
    turn("Draft a report",
         call_reply(("draft_report", {"finding_ids": ["F1", "F2"]})),
         narrative("Two small pulmonary nodules, F1 and F2.",
                   f1="solid nodule measuring 14 mm"),
         text_reply("Drafted version 1."))
    first = reports.history(conversation).current
    f1 = conversation.ctx.findings["F1"]  # measured by the draft
    assert first.author == "model" and first.impression.startswith("Two small pulmonary nodules")
    assert "14 mm" not in first.findings[0].characteristics  # invented size refused
    writer_request = fake.calls()[1]
    assert writer_request.body["generationConfig"].get("responseMimeType") == "application/json"

    edits = [
        ("Shorten the impression", [{"op": "set_section", "section": "impression", "text": "Two small nodules (F1, F2)."}]),
        ("Drop F2, it is a vessel", [{"op": "remove_finding", "finding_id": "F2"}]),
        ("Add a follow-up recommendation", [{"op": "add_recommendation", "text": "Follow-up CT per Fleischner guidance."}]),
        ("Describe F1 as spiculated", [{"op": "edit_finding", "finding_id": "F1", "characteristics": "spiculated solid nodule"}]),
    ]
    for message, ops in edits:
        events = turn(message, call_reply(("revise_report", {"edits": ops, "reason": message})), text_reply("Done."))
        assert any(isinstance(e, ToolFinished) and e.name == "revise_report" for e in events)
    # 6. The model tries to change a measurement: rejected, no new version.
    versions_before = len(reports.history(conversation).versions)
    events = turn("Make F1 12 mm", call_reply(("revise_report", {
        "edits": [{"op": "edit_finding", "finding_id": "F1", "size": {"major": 12.0, "minor": 9.0, "unit": "mm"}}],
        "reason": "Make F1 12 mm"})), text_reply("I cannot change measurements."))
    failed = next((e for e in events if isinstance(e, ToolFailed)), None)
    assert failed is not None, [e.model_dump(exclude={"artifacts", "output"}) for e in events]
    assert "sizes come from the measuring tools" in failed.message
    assert len(reports.history(conversation).versions) == versions_before
    # ... and a setting of impression text with an invented number is refused the same way.
    events = turn("Say it is 3 cm", call_reply(("revise_report", {
        "edits": [{"op": "set_section", "section": "impression", "text": "A 3 cm mass."}], "reason": "x"})),
        text_reply("Refused."))
    assert "3 cm" in next(e for e in events if isinstance(e, ToolFailed)).message
    # 7. Restyle through the writer; the tool-measured size may be repeated.
    size = f"{f1.size_mm[0]:.1f} mm"
    turn("Make it concise", call_reply(("revise_report", {"edits": [{"op": "restyle", "style": "concise"}],
                                                          "reason": "concise"})),
         narrative(f"Spiculated nodule F1 ({size}).", f1="spiculated nodule"), text_reply("Shorter now."))

    history = reports.history(conversation)
    assert [v.reason for v in history.versions] == ["drafted", "Shorten the impression", "Drop F2, it is a vessel",
                                                    "Add a follow-up recommendation", "Describe F1 as spiculated",
                                                    "concise"]
    current = history.current
    assert [f.finding_id for f in current.findings] == ["F1"] and current.impression.startswith("Spiculated nodule F1")
    assert current.findings[0].size.major == pytest.approx(f1.size_mm[0])
    assert current.recommendations == ["Compare with prior CT."]  # the restyled wording

    # Diff and restore: restoring is itself a new version.
    difference = reports.diff(conversation, 1, 3)
    assert any(line.startswith("-| F2 |") for line in difference.splitlines())
    restored = reports.restore(conversation, 1, name="Dr A")
    assert restored.version == 7 and [f.finding_id for f in restored.findings] == ["F1", "F2"]
    assert restored.impression == first.impression

    # Sign-off locks: the signed version stays; a later model edit starts a new draft.
    signed = reports.sign(conversation, 7, name="Dr A")
    assert signed.status == "signed" and signed.version == 8
    with pytest.raises(ReportError, match="already signed"):
        reports.sign(conversation, 8, name="Dr A")
    turn("Add a recommendation", call_reply(("revise_report", {
        "edits": [{"op": "add_recommendation", "text": "Discuss at the tumour board."}], "reason": "addendum"})),
        text_reply("Added as a new draft."))
    history = reports.history(conversation)
    assert history.version(8).status == "signed" and history.current.status == "draft" and history.current.version == 9

    # Everything is stored and audited.
    resumed = Conversation.resume(settings, store, conversation.session_id, "dr-a")
    assert [v.version for v in reports.history(resumed).versions] == list(range(1, 10))
    actions = [row.action for row in store.audit_rows(conversation.session_id)]
    assert actions.count("report_change") == 8 and actions.count("report_signed") == 1
    store.close()


def test_clinician_may_set_a_size_and_it_is_marked_theirs(ct_slice):
    conversation = analysed(ct_slice)
    run_tool(conversation.ctx, "draft_report", {"finding_ids": ["F1"]})
    output = reports.clinician_edit(conversation, [{"op": "edit_finding", "finding_id": "F1",
                                                    "size": {"major": 6.5, "minor": 5.0, "unit": "mm"}}],
                                    name="Dr B", reason="calliper measurement")
    current = reports.history(conversation).current
    assert current.findings[0].size.source == "clinician" and current.author_name == "Dr B"
    assert "| 6.5 × 5.0 mm | clinician |" in output.markdown  # the table says who measured it


def test_signing_an_old_version_is_refused(ct_slice):
    conversation = analysed(ct_slice)
    run_tool(conversation.ctx, "draft_report", {"finding_ids": ["F1"]})
    reports.clinician_edit(conversation, [{"op": "add_recommendation", "text": "Follow up."}], name="Dr B", reason="r")
    with pytest.raises(ReportError, match="Only the current version"):
        reports.sign(conversation, 1, name="Dr B")


def test_cli_report_from_study_and_from_session(isolated_cli, capsys, ct_slice, tmp_path):
    code, out, err = run_cli(capsys, "report", ct_slice, "--out", tmp_path / "out", "--format", "md,json")
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["report-v1-draft.json", "report-v1-draft.md"]
    session_id = err.strip().rsplit("session: ", 1)[-1]
    sign = ("report", "--session", session_id, "--out", tmp_path / "signed", "--format", "md", "--sign", "Dr C. Mensah")
    # Nothing on this slice reached the threshold: the Impression is the physician's to write first.
    code, out, err = run_cli(capsys, *sign)
    assert code == 2 and "write the Impression first" in err
    code, out, err = run_cli(capsys, *sign, "--impression", "Read in full by Dr Mensah.")
    assert code == 0, err
    text = (tmp_path / "signed" / "report-v3-signed.md").read_text()
    assert text.startswith("# CT report — SIGNED by Dr C. Mensah") and "Read in full by Dr Mensah." in text
    code, out, err = run_cli(capsys, "report", "--out", tmp_path / "x")
    assert code == 2 and "Give a study" in err


def test_png_study_exports_markdown_but_says_why_there_is_no_sr(isolated_cli, capsys, eval_dir, tmp_path):
    code, out, err = run_cli(capsys, "report", eval_dir / "busi" / "benign_030.png", "--modality", "US",
                             "--out", tmp_path / "out", "--format", "md,sr")
    assert code == 0
    assert [p.suffix for p in (tmp_path / "out").iterdir()] == [".md"]
    assert "only Markdown and PDF can be exported" in err
