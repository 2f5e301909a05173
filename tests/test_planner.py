"""The offline planner on real images: follow-up questions, a report request, a second read,
and the ``loupe ask`` / ``loupe chat`` commands that drive it."""

from __future__ import annotations

import json
import re

import pytest

from agent.conversation import Conversation
from agent.events import AssistantText, ToolFinished, ToolStarted
from agent.models.planner import OfflinePlanner, classify
from agent.settings import LoupeSettings
from tests.conftest import pydicom_file, run_cli
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.normal_wording import normal_study_phrases


def offline_settings() -> LoupeSettings:
    return LoupeSettings(_env_file=None)


def turn(conversation: Conversation, message: str) -> tuple[str, list]:
    events = list(conversation.ask(message, OfflinePlanner()))
    answer = "\n".join(e.text for e in events if isinstance(e, AssistantText))
    return answer, events


def tools_run(events) -> list[str]:
    return [e.name for e in events if isinstance(e, ToolStarted)]


@pytest.mark.parametrize(("message", "intents"), [
    ("Analyse this scan", ["analyse"]),
    ("Where is the lesion and how big?", ["where", "size"]),
    ("Draft a report", ["report"]),
    ("Remove F2 from the report", ["revise"]),
    ("Start a second read", ["second_read"]),
    ("Show the lung window", ["window"]),
    ("What else could this be?", ["differential"]),
    ("Is the nodule still there?", ["analyse"]),
    ("Good morning", []),
])
def test_messages_map_to_intents(message, intents):
    assert classify(message) == intents


@pytest.fixture
def ultrasound(eval_dir):
    return Conversation.start(offline_settings(), eval_dir / "busi" / "benign_030.png", modality="US")


def test_follow_up_questions_cite_findings_with_measurements(ultrasound):
    answer, events = turn(ultrasound, "Analyse this scan")
    assert tools_run(events) == ["detect_anomalies", "fit_gaussian", "render_overlay"]
    overlay = next(e for e in events if isinstance(e, ToolFinished) and e.name == "render_overlay")
    assert overlay.artifacts and overlay.artifacts[0].data.startswith(b"\x89PNG")
    findings = sorted(ultrasound.ctx.findings.values(), key=lambda f: -f.confidence)
    assert findings[0].id in answer
    # The follow-up reuses the findings (no second detection) and answers where and how big.
    answer, events = turn(ultrasound, "Where is the lesion and how big?")
    assert "detect_anomalies" not in tools_run(events)
    top = findings[0]
    assert f"{top.id} is in the" in answer and f"({top.center_px[0]:.0f}, {top.center_px[1]:.0f}) px" in answer
    assert re.search(rf"{top.id}: \d+ × \d+ px \(no pixel spacing\)", answer)  # a PNG has no spacing: px, never mm


def test_sizes_are_in_mm_when_the_study_has_spacing(eval_dir):
    conversation = Conversation.start(offline_settings(), eval_dir / "lidc_ct" / "LIDC-IDRI-0002" / "z-0089.50.dcm")
    answer, _ = turn(conversation, "How big is it?")
    assert re.search(r"F1: \d+\.\d × \d+\.\d mm", answer)


def test_report_request_gives_a_readable_draft_and_a_short_answer(ultrasound):
    """The report panel is the one full copy: the chat says which version it is, what it lists
    and its impression, not the whole document again."""
    from agent.reports import markdown

    answer, events = turn(ultrasound, "Draft a report")
    assert "draft_report" in tools_run(events)
    report = ultrasound.ctx.reports[ultrasound.ctx.current_study_id].current
    assert report.version == 1
    assert answer.startswith("Drafted report version 1 (draft)") and "report panel" in answer
    assert "## Technique" not in answer and len(answer) < 600
    document = markdown(report)
    assert document.startswith("# US report — DRAFT — not signed")
    for section in ("## Technique", "## Findings", "## Impression", "## Recommendations", "## Limitations"):
        assert section in document
    assert "requires review and sign-off by the reading physician" in document
    called = [f for f in ultrasound.ctx.findings.values() if f.confidence >= ANOMALY_THRESHOLD]
    for finding in called:
        assert f"| {finding.id} |" in document and finding.id in answer
    if not called:
        assert "To be completed by the reading physician" in document and not normal_study_phrases(document)


def test_offline_report_revision_removes_findings_and_says_what_needs_a_model(ultrasound):
    turn(ultrasound, "Draft a report")
    report = ultrasound.ctx.reports[ultrasound.ctx.current_study_id]
    listed = [f.finding_id for f in report.current.findings]
    answer, _ = turn(ultrasound, f"Remove {listed[0]} from the report" if listed else "Remove F1 from the report")
    if listed:
        assert f"Report version 2 (draft): removed {listed[0]}" in answer
        assert listed[0] not in [f.finding_id for f in report.current.findings]
        answer, _ = turn(ultrasound, f"Add {listed[0]} to the report")  # and back, as a clinician's mark would be
        assert f"Report version 3 (draft): added {listed[0]}" in answer
        assert listed[0] in [f.finding_id for f in report.current.findings]
        answer, events = turn(ultrasound, f"Remove {listed[0]} and add F99 to the report")
        assert "one kind of report change per message" in answer and tools_run(events) == []
        assert report.current.version == 3
    answer, events = turn(ultrasound, "Make the impression more concise")
    assert "needs the Gemini backend" in answer and tools_run(events) == []


def test_second_read_walks_the_checklist_by_chat(eval_dir):
    conversation = Conversation.start(offline_settings(), eval_dir / "nih_cxr14" / "00012592_005.png", modality="DX")
    answer, events = turn(conversation, "Start a second read")
    assert tools_run(events) == ["start_second_read"]
    crop = next(e for e in events if isinstance(e, ToolFinished))
    assert crop.artifacts[0].data.startswith(b"\x89PNG")
    assert "Chest radiograph" in answer and "Step 1 of 12 — Lines and tubes" in answer
    answer, events = turn(conversation, "agree")
    assert tools_run(events) == ["record_assessment"] and "Recorded step 1: agree." in answer
    assert "Step 2 of 12 — Airway" in answer
    answer, _ = turn(conversation, "I disagree: the trachea is deviated [300, 480]")
    assert 'Recorded step 2: disagree — "the trachea is deviated"' in answer and "Your finding F" in answer
    answer, events = turn(conversation, "previous")
    assert tools_run(events) == ["second_read_step"] and "Step 2 of 12" in answer and "answered this step before" in answer
    answer, _ = turn(conversation, "go to step 12")
    assert "Step 12 of 12 — Below the diaphragm" in answer
    answer, _ = turn(conversation, "uncertain")
    assert "All 12 steps have been shown; steps not checked: 3, 4" in answer
    answer, events = turn(conversation, "Summary, and append it to the report")
    assert tools_run(events) == ["second_read_summary"]
    assert "3 of 12 steps checked" in answer and "Disagreements: step 2 Airway" in answer
    assert "added to the report as version 2" in answer
    # Once summarised, the words are ordinary messages again ("uncertain" asks for the heatmap).
    _, events = turn(conversation, "Show me how uncertain you are")
    assert "render_overlay" in tools_run(events) and "record_assessment" not in tools_run(events)


def test_window_and_slice_requests_change_the_view():
    conversation = Conversation.start(offline_settings(), pydicom_file("CT_small.dcm"))
    answer, events = turn(conversation, "Show the lung window")
    assert "lung window (centre -600, width 1500)" in answer
    assert conversation.ctx.view().window.center == -600
    multi = Conversation.start(offline_settings(), pydicom_file("emri_small.dcm"))
    answer, _ = turn(multi, "Go to slice 3")
    assert "frame 3 of 10" in answer and multi.ctx.view().frame == 2


def test_what_it_cannot_do_is_said_plainly(ultrasound):
    answer, events = turn(ultrasound, "What else could this be? Is it malignant?")
    assert "cannot" in answer and "Gemini" in answer and tools_run(events) == []
    help_text, _ = turn(ultrasound, "Good morning")
    assert "Analyse this scan" in help_text


def test_offline_turns_enter_the_model_history(ultrasound):
    answer, _ = turn(ultrasound, "Draft a report")
    assert ultrasound.history[-2] == {"role": "user", "parts": [{"text": "Draft a report"}]}
    assert ultrasound.history[-1]["parts"][0]["text"] == answer


def test_planner_never_consults_a_vision_model(ultrasound):
    class Refusing:
        name = "refusing"

        def propose(self, *args, **kwargs):
            raise AssertionError("the offline planner must not call a vision model")

    ultrasound.ctx.vision = Refusing()
    answer, _ = turn(ultrasound, "Analyse this scan")
    assert "offline classical detector" in answer


def test_loupe_ask_json_contract(isolated_cli, capsys, eval_dir, tmp_path):
    code, out, err = run_cli(capsys, "ask", eval_dir / "busi" / "benign_030.png", "Analyse this scan",
                             "--modality", "US", "--json", "--images", tmp_path / "images")
    assert code == 0, err
    result = json.loads(out)
    assert {"answer", "tool_calls", "findings", "usage"} <= set(result)
    assert [c["name"] for c in result["tool_calls"]] == ["detect_anomalies", "fit_gaussian", "render_overlay"]
    assert all({"name", "args", "ok", "duration_ms"} <= set(c) for c in result["tool_calls"])
    assert result["findings"][0]["id"] == "F1" and result["usage"]["model_calls"] == 0
    assert result["backend"] == "offline" and result["error"] is None
    assert all((tmp_path / "images").joinpath(p).exists() for p in result["images"])


def test_loupe_ask_text_and_bad_study(isolated_cli, capsys, tmp_path):
    code, out, err = run_cli(capsys, "ask", pydicom_file("CT_small.dcm"), "How big is it?")
    assert code == 0 and "mm" in out and "fit_gaussian" in err
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM" * 10)
    code, out, err = run_cli(capsys, "ask", broken, "Analyse")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_loupe_chat_runs_a_conversation(isolated_cli, capsys, monkeypatch, tmp_path):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("Analyse this scan\nShow the heatmap\n/quit\n"))
    code, out, err = run_cli(capsys, "chat", pydicom_file("CT_small.dcm"), "--images", tmp_path / "img")
    assert code == 0
    assert "offline classical detector" in out
    saved = sorted(p.name for p in (tmp_path / "img").iterdir())
    assert any("annotated" in name for name in saved) and any("heatmap" in name for name in saved)
    assert "image: " in err


def test_outside_its_competence_the_offline_answer_says_why():
    """The default sample's abdominal MR: no anomaly, and a plain sentence on why."""
    conversation = Conversation.start(offline_settings(), pydicom_file("examples_overlay.dcm"))
    answer, events = turn(conversation, "Analyse this scan")
    assert "not built for an MR of the abdomen" in answer
    assert "brain MR" in answer and "anomaly" in answer
    assert not any(f.confidence >= ANOMALY_THRESHOLD for f in conversation.ctx.findings.values())
    assert all(f.label == "region for review" for f in conversation.ctx.findings.values())
