"""A size the clinician gives in words ("F1 is 20 × 12 mm") becomes the finding's size with
source clinician, and the report's table says who measured it; an answer about a size says how
it was measured."""

from __future__ import annotations

import pytest

from agent import reports
from agent.conversation import Conversation
from agent.models.planner import clinician_size
from agent.samples import sample_path
from tests.test_planner import offline_settings, tools_run, turn


@pytest.fixture
def chest_ct() -> Conversation:
    conversation = Conversation.start(offline_settings(), sample_path("ct-chest-nodule"))
    turn(conversation, "Analyse this scan")
    return conversation


@pytest.mark.parametrize(("message", "expected"), [
    ("F26 is 20 × 12 mm", ("F26", 20.0, 12.0)),
    ("f3 measures 14,5 x 9 mm", ("F3", 14.5, 9.0)),
    ("F2 = 8 by 6 mm", ("F2", 8.0, 6.0)),
    ("F1 is 20 mm", ("F1", 20.0, None)),
    ("How big is F1?", None),
    ("F1 is 3 cm from the pleura", None),
])
def test_a_size_in_words_is_read(message, expected):
    assert clinician_size(message) == expected


def test_the_clinicians_size_becomes_the_findings_and_the_reports(chest_ct):
    answer, _ = turn(chest_ct, "How big is F1?")
    assert "longest diameter and the short axis across it, on the segmented lesion" in answer
    turn(chest_ct, "Draft a report")
    answer, events = turn(chest_ct, "F1 is 20 x 12 mm")
    assert tools_run(events) == ["set_finding_size"]
    finding = chest_ct.ctx.findings["F1"]
    assert finding.size_mm == pytest.approx((20.0, 12.0)) and finding.size_method == "clinician"
    assert "F1 measures 20.0 × 12.0 mm, as the clinician measured it" in answer
    markdown = reports.markdown(reports.history(chest_ct).current)
    assert "20.0 × 12.0 mm | clinician |" in markdown
    answer, _ = turn(chest_ct, "How big is F1?")
    assert "20.0 × 12.0 mm (measured by the clinician)" in answer


def test_one_axis_or_an_unknown_finding_is_said_plainly(chest_ct):
    answer, events = turn(chest_ct, "F1 is 20 mm")
    assert tools_run(events) == [] and "say both, e.g. \"F1 is 20 × 8 mm\"" in answer
    answer, _ = turn(chest_ct, "F99 is 3 x 2 mm")
    assert "There is no finding F99 in this session" in answer
    assert chest_ct.ctx.findings["F1"].size_method != "clinician"
