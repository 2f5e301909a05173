"""Guided second reads: the checklists as data, the four tools on a real image of each modality,
pause and resume, clinician findings, the report addendum, and ``loupe second-read``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.cli.guided_read import run_second_read
from agent.settings import LoupeSettings
from agent.toolbox import new_context, run_tool
from tools.checklists.catalogue import (
    ORGAN_MASK,
    Checklist,
    ChecklistError,
    checklist_files,
    checklist_for,
    load_checklist_file,
    load_checklists,
)
from tools.checklists.record import restore_second_reads, second_reads_json
from tools.detection.scoring import ANOMALY_THRESHOLD
from tools.errors import LoupeError
from tools.findings import Finding
from tools.registry import TOOLS
from tools.second_read.concordance import ADDENDUM_PREFIX
from tools.study.windowing import presets_for

ANSWERS = ("agree", "disagree", "uncertain")

#: One real evaluation image per modality, and the checklist it should get.
STUDIES = [
    ("busi/benign_030.png", "US", "breast_us"),
    ("figshare_brain_mri/glioma_2294.jpg", "MR", "brain_mr"),
    ("nih_cxr14/00012592_005.png", "DX", "chest_xray"),
    ("lidc_ct/LIDC-IDRI-0002/z-0089.50.dcm", None, "ct_chest"),
]


def settings() -> LoupeSettings:
    return LoupeSettings(_env_file=None)


def opened(eval_dir, path: str, modality: str | None):
    ctx = new_context(settings())
    run_tool(ctx, "load_study", {"path": str(eval_dir / path), "modality": modality})
    return ctx


def manifest_box(eval_dir, path: str) -> list[float]:
    """The reference lesion box [x0, y0, x1, y1] of an evaluation image."""
    with (eval_dir / "manifest.csv").open(newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["image_path"] == path)
    return [float(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")]


def called_ids(ctx) -> set[str]:
    """Loupe's findings a report would state: at the threshold, not rejected, not the clinician's."""
    return {f.id for f in ctx.findings.values() if f.source != "clinician" and f.confidence >= ANOMALY_THRESHOLD
            and (f.verification is None or f.verification.status != "rejected")}


def home_steps(ctx, total: int) -> dict[str, int]:
    """Each called finding's deciding step (1-based), read from the steps' own observations."""
    homes = {}
    for number in range(1, total + 1):
        step = run_tool(ctx, "second_read_step", {"action": "jump", "step": number}).output.step
        homes |= {o.finding_id: number for o in step.observations if o.decided_here}
    run_tool(ctx, "second_read_step", {"action": "jump", "step": 1})
    return {fid: homes[fid] for fid in called_ids(ctx) if fid in homes}


def expected_counts(ctx, homes: dict[str, int], answers: list[str], total: int) -> dict[str, int]:
    answered = dict(enumerate(answers, start=1))
    both = sum(answered.get(home) == "agree" for home in homes.values())
    return {"both": both, "ai_only": len(called_ids(ctx)) - both, "clinician_only": 0,
            "disagreements": answers.count("disagree"), "checked_steps": len(answers),
            "unchecked_steps": total - len(answers), "total_steps": total}


# -- checklists ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", checklist_files())
def test_every_checklist_loads_and_validates(name):
    checklist = load_checklist_file(name)
    assert checklist.steps and checklist.version
    for modality in checklist.modalities or [""]:
        windows = {"default", *presets_for(modality)}
        masks = {"body", ORGAN_MASK.get(modality, "body")}
        for step in checklist.steps:
            assert step.window in windows, (name, step.id)
            assert step.region.mask is None or step.region.mask in masks, (name, step.id)
            if step.region.box is not None:
                ymin, xmin, ymax, xmax = step.region.box
                assert 0 <= ymin < ymax <= 1000 and 0 <= xmin < xmax <= 1000, (name, step.id)
            assert step.look_for, (name, step.id)


def test_each_modality_gets_its_checklist():
    assert {c.id for c in load_checklists().values()} >= {"chest_xray", "ct_chest", "brain_mr", "breast_us", "generic"}
    assert [checklist_for(m).id for m in ("DX", "CR", "CT", "MR", "US", "XA", None)] == [
        "chest_xray", "chest_xray", "ct_chest", "brain_mr", "breast_us", "generic", "generic"]
    assert any(step.lexicon.get("margin") for step in checklist_for("US").steps)  # BI-RADS terms
    assert {step.window for step in checklist_for("CT").steps} >= {"lung", "soft_tissue", "bone"}


def _checklist(modalities: list[str], **step) -> dict:
    base = {"id": "s", "title": "a step", "region": {"box": [0, 0, 500, 500]}, "window": "default", "look_for": ["x"]}
    return {"id": "bad", "title": "bad", "modalities": modalities, "steps": [{**base, **step}]}


@pytest.mark.parametrize(("data", "message"), [
    (_checklist(["DX"], region={"box": [0, 0, 1200, 500]}), "leaves the frame"),
    (_checklist(["DX"], region={"box": [600, 0, 500, 500]}), "out of order"),
    (_checklist(["DX"], region={}), "needs a box, a mask"),
    (_checklist(["US"], window="lung"), "window 'lung' does not exist for US"),
    (_checklist(["CT"], window="abdomen"), "window 'abdomen' does not exist for CT"),
    (_checklist(["DX"], region={"mask": "brain"}), "no 'brain' mask for DX"),
    ({**_checklist(["DX"]), "steps": _checklist(["DX"])["steps"] * 2}, "repeated: s"),
])
def test_invalid_checklists_are_refused_with_the_reason(data, message):
    with pytest.raises(ValidationError, match=message):
        Checklist.model_validate(data)


def test_unknown_checklist_or_step_is_a_clear_error():
    with pytest.raises(ChecklistError, match="available: brain_mr"):
        checklist_for("CT", "knee_mr")
    with pytest.raises(ChecklistError, match="steps 1 to"):
        checklist_for("CT").step(99)


def test_the_four_tools_are_registered():
    for name in ("start_second_read", "second_read_step", "record_assessment", "second_read_summary"):
        declaration = TOOLS[name].declaration()
        assert declaration["description"] and declaration["parameters"]["type"] == "object"


# -- a scripted second read on each modality -------------------------------------------------------
@pytest.mark.parametrize(("path", "modality", "checklist_id"), STUDIES)
def test_scripted_second_read_reaches_the_right_concordance(eval_dir, path, modality, checklist_id):
    ctx = opened(eval_dir, path, modality)
    started = run_tool(ctx, "start_second_read", {})
    assert started.output.checklist_id == checklist_id and not started.output.resumed
    assert started.artifacts[0].data.startswith(b"\x89PNG")
    total = len(started.output.steps)
    homes = home_steps(ctx, total)
    answers = [ANSWERS[i % 3] for i in range(total - 2)]  # the last two steps stay unchecked
    for answer in answers:
        recorded = run_tool(ctx, "record_assessment", {"assessment": answer, "note": f"{answer} here"})
        assert recorded.output.assessment == answer
    result = run_tool(ctx, "second_read_summary", {})
    summary = result.output.summary
    assert summary.counts.model_dump() == expected_counts(ctx, homes, answers, total)
    assert {b.ai_finding_id for b in summary.both} | {a.finding_id for a in summary.ai_only} == called_ids(ctx)
    assert summary.unchecked == [step.id for step in checklist_for(None, checklist_id).steps[-2:]]
    assert [d.step_number for d in summary.disagreements] == [i + 1 for i, a in enumerate(answers) if a == "disagree"]
    crops = {a.name: a for a in result.artifacts}
    assert all(crops[d.crop].data.startswith(b"\x89PNG") for d in summary.disagreements)
    assert len(summary.steps) == total and all(s.seconds >= 0 for s in summary.steps)


def test_steps_show_the_window_and_the_findings_in_their_region(eval_dir):
    ctx = opened(eval_dir, "lidc_ct/LIDC-IDRI-0002/z-0089.50.dcm", None)
    first = run_tool(ctx, "start_second_read", {}).output.current.step
    assert first.window == "lung"
    bone = run_tool(ctx, "second_read_step", {"action": "jump", "step": "bones"}).output.step
    assert bone.window == "bone" and "does not assess" in bone.observation
    mediastinum = run_tool(ctx, "second_read_step", {"action": "jump", "step": "mediastinum"}).output.step
    x0, y0, x1, y1 = mediastinum.region_px
    for observation in mediastinum.observations:
        x, y = ctx.findings[observation.finding_id].center_px
        assert x0 - 1 <= x <= x1 + 1 and y0 - 1 <= y <= y1 + 1
        if not observation.called:
            assert "below the threshold" in mediastinum.observation
    back = run_tool(ctx, "second_read_step", {"action": "previous"}).output.step
    assert back.number == mediastinum.number - 1


def test_an_agreed_finding_is_seen_by_both_and_a_disagreed_one_is_ai_only(eval_dir):
    for path, modality, answer, bucket in [("busi/benign_030.png", "US", "agree", "both"),
                                           ("nih_cxr14/00018623_001.png", "DX", "disagree", "ai_only")]:
        ctx = opened(eval_dir, path, modality)
        total = len(run_tool(ctx, "start_second_read", {}).output.steps)
        homes = home_steps(ctx, total)
        assert homes, "this image has a finding at the anomaly threshold"
        finding_id, home = next(iter(homes.items()))
        run_tool(ctx, "record_assessment", {"assessment": answer, "step": home, "note": "checked", "advance": False})
        summary = run_tool(ctx, "second_read_summary", {}).output.summary
        if bucket == "both":
            assert [b.ai_finding_id for b in summary.both] == [finding_id]
        else:
            assert [(a.finding_id, a.reason) for a in summary.ai_only] == [(finding_id, "the clinician disagreed")]
            assert summary.disagreements[0].ai_finding_ids == [finding_id]


# -- clinician findings ----------------------------------------------------------------------------
def test_clinician_findings_are_verified_and_appear_as_clinician_only(eval_dir):
    # An image on which the detector flags nothing (the clinician's marks are then theirs alone).
    path = "figshare_brain_mri/glioma_2656.jpg"
    ctx = opened(eval_dir, path, "MR")
    box = manifest_box(eval_dir, path)
    started = run_tool(ctx, "start_second_read", {"pre_read_text": "enhancing lesion right parietal",
                                                  "pre_read_findings": [{"point": [500, 500], "label": "midline"}]})
    pre_read = started.output.pre_read_findings[0]
    assert ctx.findings[pre_read.finding_id].source == "clinician"
    recorded = run_tool(ctx, "record_assessment", {"assessment": "disagree", "note": "glioma missed",
                                                   "finding": {"box_px": box, "label": "glioma"}}).output
    mine = ctx.findings[recorded.clinician_finding.finding_id]
    # The same verification as verify_coordinates on the same box.
    verified = run_tool(ctx, "verify_coordinates", {"box_px": box}).output
    assert mine.verification.status == verified.status and mine.verification.status in recorded.clinician_finding.verification
    assert mine.center_px == pytest.approx(verified.center_px, abs=0.01)
    assert mine.source == "clinician" and mine.label == "glioma"
    summary = run_tool(ctx, "second_read_summary", {}).output.summary
    assert not called_ids(ctx)  # no Loupe finding at the threshold could match these marks
    assert [(c.finding_id, c.step_id) for c in summary.clinician_only] == [
        (pre_read.finding_id, None), (mine.id, checklist_for("MR").steps[0].id)]
    assert summary.pre_read_note == "enhancing lesion right parietal"
    assert summary.counts.clinician_only == 2 and summary.counts.disagreements == 1


def test_a_clinician_mark_on_an_ai_finding_counts_for_both(eval_dir):
    ctx = opened(eval_dir, "busi/benign_030.png", "US")
    run_tool(ctx, "start_second_read", {})
    (finding_id,) = called_ids(ctx)
    x, y = ctx.findings[finding_id].center_px
    columns, rows = ctx.view().study.safe.columns, ctx.view().study.safe.rows
    run_tool(ctx, "record_assessment", {"assessment": "uncertain",
                                        "finding": {"point": [1000 * y / rows, 1000 * x / columns]}})
    summary = run_tool(ctx, "second_read_summary", {}).output.summary
    assert [(b.ai_finding_id, b.basis) for b in summary.both] == [(finding_id, "clinician marked it")]
    assert summary.counts.clinician_only == 0


# -- pause and resume ------------------------------------------------------------------------------
def test_a_paused_second_read_resumes_in_a_fresh_context(eval_dir):
    path = "busi/benign_030.png"
    ctx = opened(eval_dir, path, "US")
    total = len(run_tool(ctx, "start_second_read", {}).output.steps)
    for answer in ("agree", "disagree", "uncertain"):
        run_tool(ctx, "record_assessment", {"assessment": answer, "note": answer})
    stored = json.dumps({"second_reads": second_reads_json(ctx), "counter": ctx.findings_issued,
                         "findings": [f.model_dump(mode="json") for f in ctx.findings.values()]})

    data = json.loads(stored)  # as the session store would bring it back after a reload
    fresh = opened(eval_dir, path, "US")
    fresh.findings = {f["id"]: Finding.model_validate(f) for f in data["findings"]}
    fresh.findings_issued = data["counter"]
    restore_second_reads(fresh, data["second_reads"])
    resumed = run_tool(fresh, "start_second_read", {}).output
    assert resumed.resumed and resumed.current.step.number == 4 and resumed.current.checked == 3
    for _ in range(total - 3):
        run_tool(fresh, "record_assessment", {"assessment": "agree"})
    summary = run_tool(fresh, "second_read_summary", {}).output.summary
    assert [s.assessment for s in summary.steps[:3]] == ["agree", "disagree", "uncertain"]
    assert [s.note for s in summary.steps[:3]] == ["agree", "disagree", "uncertain"]
    assert summary.counts.checked_steps == total and summary.unchecked == []
    restarted = run_tool(fresh, "start_second_read", {"restart": True}).output
    assert not restarted.resumed and restarted.current.checked == 0


def test_second_read_tools_need_a_started_read(eval_dir):
    ctx = opened(eval_dir, "busi/benign_030.png", "US")
    with pytest.raises(LoupeError, match="No second read"):
        run_tool(ctx, "second_read_step", {})
    with pytest.raises(LoupeError, match="invalid"):
        run_tool(ctx, "record_assessment", {"assessment": "maybe"})


# -- the report addendum ---------------------------------------------------------------------------
def test_the_summary_is_appended_to_the_report_as_a_new_version(eval_dir):
    ctx = opened(eval_dir, "busi/benign_030.png", "US")
    run_tool(ctx, "draft_report", {"use_model_wording": False})
    run_tool(ctx, "start_second_read", {})
    run_tool(ctx, "record_assessment", {"assessment": "disagree", "note": "skin\nthickened",
                                        "finding": {"point": [900, 100], "label": "deep nodule"}})
    output = run_tool(ctx, "second_read_summary", {"append_to_report": True, "author_name": "Dr Ada"}).output
    history = ctx.reports[ctx.current_study_id]
    assert output.report_version == 2 and len(history.versions) == 2
    report = history.current
    assert report.author == "clinician" and report.author_name == "Dr Ada" and report.reason == "second-read addendum"
    addendum = [item for item in report.limitations if item.startswith(ADDENDUM_PREFIX)]
    assert addendum and "skin thickened" in " ".join(addendum)
    clinician_only = [c.finding_id for c in output.summary.clinician_only]
    assert clinician_only and set(clinician_only) <= {f.finding_id for f in report.findings}
    assert history.version(1).limitations == [i for i in report.limitations if not i.startswith(ADDENDUM_PREFIX)]
    again = run_tool(ctx, "second_read_summary", {"append_to_report": True}).output
    # The same summary again changes nothing: no new version, and the output says so.
    assert again.report_version == 2 and again.report_unchanged and len(history.versions) == 2
    run_tool(ctx, "second_read_step", {"action": "jump", "step": 2})
    run_tool(ctx, "record_assessment", {"assessment": "uncertain", "note": "recheck"})
    changed = run_tool(ctx, "second_read_summary", {"append_to_report": True}).output
    assert changed.report_version == 3 and not changed.report_unchanged
    assert sum(i.startswith(ADDENDUM_PREFIX) for i in history.current.limitations) == len(addendum)  # replaced


def test_without_a_report_one_is_drafted_before_the_addendum(eval_dir):
    ctx = opened(eval_dir, "nih_cxr14/00012592_005.png", "DX")
    run_tool(ctx, "start_second_read", {})
    output = run_tool(ctx, "second_read_summary", {"append_to_report": True}).output
    history = ctx.reports[ctx.current_study_id]
    assert output.report_version == 2 and history.version(1).reason == "drafted"


# -- loupe second-read -----------------------------------------------------------------------------
def test_the_command_runs_a_scripted_read_and_prints_json(eval_dir, capsys, tmp_path):
    total = len(checklist_for("DX").steps)
    responses = [{"assessment": "agree"}, {"assessment": "agree", "note": "central"},
                 {"assessment": "disagree", "note": "pacemaker"}]
    code = run_second_read(settings(), eval_dir / "nih_cxr14/00012592_005.png", responses, True, "DX",
                           image_dir=tmp_path / "img")
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    counts = result["summary"]["counts"]
    assert counts["checked_steps"] == 3 and counts["unchecked_steps"] == total - 3 and counts["disagreements"] == 1
    assert result["summary"]["steps"][2]["note"] == "pacemaker"
    assert result["checklist_id"] == "chest_xray" and result["session_id"]
    assert result["images"] and all(Path(image).is_file() for image in result["images"])
    # Extra entries are ignored; every step answered.
    code = run_second_read(settings(), eval_dir / "busi/benign_030.png",
                           [{"assessment": "uncertain"}] * 20, True, "US", image_dir=tmp_path / "img")
    counts = json.loads(capsys.readouterr().out)["summary"]["counts"]
    assert counts["checked_steps"] == counts["total_steps"] and counts["unchecked_steps"] == 0


def test_the_command_reads_answers_interactively_and_refuses_bad_responses(eval_dir, capsys, tmp_path):
    code = run_second_read(settings(), eval_dir / "busi/benign_030.png", None, False, "US", image_dir=tmp_path,
                           lines=["a\n", "d skin thickened\n", "n\n", "p\n", "u\n", "s\n"])
    captured = capsys.readouterr()
    assert code == 0 and "crop: " in captured.err and "Step 3 of 10" in captured.err
    assert "3 of 10 steps checked" in captured.out and 'skin thickened' in captured.out
    with pytest.raises(LoupeError, match="Response 2 is invalid"):
        run_second_read(settings(), eval_dir / "busi/benign_030.png", [{"assessment": "agree"}, {"assessment": "yes"}],
                        True, "US", image_dir=tmp_path)


def test_the_checklist_follows_the_body_part_when_the_study_codes_one():
    from tools.checklists.catalogue import checklist_for

    assert checklist_for("MR").id == "brain_mr"  # a PNG/JPEG MR has no body part: brain, as the eval data
    assert checklist_for("MR", body_part="BRAIN").id == "brain_mr"
    assert checklist_for("MR", body_part="ABDOMEN").id == "generic"
    assert checklist_for("CT", body_part="CHEST").id == "ct_chest"
