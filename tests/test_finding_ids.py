"""A finding keeps its name: found again at the same place it keeps its id, ids are never reused,
and a question naming an id that is not on the current study says where it was instead of
answering with another finding."""

from __future__ import annotations

import pytest

from agent.conversation import Conversation
from agent.events import AssistantText, ToolStarted
from agent.models.planner import OfflinePlanner
from agent.settings import LoupeSettings
from agent.store.sessions import tool_state
from agent.toolbox import new_context, run_tool
from tests.conftest import pydicom_file
from tools.coordinates import BoxPx
from tools.errors import LoupeError


@pytest.fixture
def ctx():
    context = new_context(LoupeSettings())
    yield context
    context.close()


def _load(ctx, path, modality=None) -> str:
    return run_tool(ctx, "load_study", {"path": str(path), "modality": modality}).output.study_id


def test_a_finding_found_again_keeps_its_id_and_takes_the_new_measurements(ctx):
    _load(ctx, pydicom_file("CT_small.dcm"))
    first = run_tool(ctx, "detect_anomalies", {}).output.findings[0]
    run_tool(ctx, "fit_gaussian", {"finding_ids": [first.id]})
    # As if measured before on a slightly different centre: still inside its box, so the same finding.
    x, y = first.center_px
    ctx.findings[first.id] = ctx.findings[first.id].model_copy(update={"center_px": (x + 1.0, y - 1.0), "confidence": 0.01})
    again = run_tool(ctx, "detect_anomalies", {}).output.findings[0]
    assert again.id == first.id
    assert again.center_px == first.center_px and again.confidence == first.confidence  # the new measurements
    assert again.gaussian is None  # the old fit belonged to the old measurement


def test_a_finding_not_found_again_is_retired_and_its_id_is_never_reused(ctx):
    study_id = _load(ctx, pydicom_file("CT_small.dcm"))
    first = run_tool(ctx, "detect_anomalies", {}).output.findings
    issued = ctx.findings_issued
    # F1 moved far from anything the detector finds now: it is not the same finding any more.
    moved = first[0].model_copy(update={"center_px": (2.0, 2.0), "bbox_px": BoxPx(x0=0, y0=0, x1=4, y1=4)})
    ctx.findings[moved.id] = moved
    second = run_tool(ctx, "detect_anomalies", {}).output.findings
    ids = {f.id for f in second}
    assert moved.id not in ids and moved.id not in ctx.findings
    assert ctx.retired_findings == {moved.id: study_id}
    assert {f.id for f in first[1:]} <= ids  # the others keep theirs
    new = ids - {f.id for f in first}
    assert new and all(int(i[1:]) > issued for i in new)
    sentence = ctx.finding_not_here(moved.id)
    assert "no longer a finding" in sentence and "this study" in sentence
    assert tool_state(ctx)["retired_findings"] == {moved.id: study_id}  # stored with the session


def test_ids_of_another_study_are_refused_by_the_report(ctx, eval_dir):
    _load(ctx, pydicom_file("CT_small.dcm"))
    ct_id = run_tool(ctx, "detect_anomalies", {}).output.findings[0].id
    _load(ctx, eval_dir / "busi" / "benign_030.png", "US")
    run_tool(ctx, "detect_anomalies", {})
    run_tool(ctx, "draft_report", {"use_model_wording": False})
    with pytest.raises(LoupeError) as refused:
        run_tool(ctx, "revise_report", {"edits": [{"op": "add_finding", "finding_id": ct_id}], "reason": "add it"})
    assert f"{ct_id} is not a finding of this study" in str(refused.value)
    assert "CT image (128×128 px) opened 1st in this session" in str(refused.value)


def _turn(conversation: Conversation, message: str) -> tuple[str, list[str]]:
    events = list(conversation.ask(message, OfflinePlanner()))
    return ("\n".join(e.text for e in events if isinstance(e, AssistantText)),
            [e.name for e in events if isinstance(e, ToolStarted)])


def test_asking_about_a_finding_of_the_previous_study_names_that_study(eval_dir):
    conversation = Conversation.start(LoupeSettings(_env_file=None), pydicom_file("CT_small.dcm"))
    _turn(conversation, "Analyse this scan")
    ct_ids = set(conversation.ctx.findings)
    conversation.open_study(eval_dir / "busi" / "benign_030.png", modality="US")
    _turn(conversation, "Analyse this scan")
    asked = sorted(ct_ids, key=lambda i: int(i[1:]))[0]
    answer, tools = _turn(conversation, f"How big is {asked}?")
    assert f"{asked} is not a finding of this study: it is on the CT image" in answer
    assert "fit_gaussian" not in tools and "mm" not in answer and " px " not in answer  # never another finding's size
    answer, _ = _turn(conversation, "Where is F999?")
    assert "There is no finding F999 in this session" in answer


def test_analysing_twice_keeps_the_names(eval_dir):
    conversation = Conversation.start(LoupeSettings(_env_file=None), eval_dir / "busi" / "benign_030.png", modality="US")
    _turn(conversation, "Analyse this scan")
    first = dict(conversation.ctx.findings)
    _turn(conversation, "Is there a nodule?")
    assert set(conversation.ctx.findings) == set(first)
    assert conversation.ctx.findings_issued == len(first)
