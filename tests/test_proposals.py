"""Parsing a vision model's detection answer: tolerant of wrapping, strict about boxes."""

from __future__ import annotations

import json

import pytest

from agent.models.proposals import MAX_PROPOSALS, parse_proposals


def test_plain_array():
    parsed = parse_proposals('[{"box_2d": [100, 200, 300, 400], "label": "nodule", "confidence": 0.7}]', sample=2)
    assert [(p.box_2d, p.label, p.sample) for p in parsed.proposals] == [([100, 200, 300, 400], "nodule", 2)]
    assert parsed.rejected == []


@pytest.mark.parametrize("wrapped", [
    '```json\n[{"box_2d": [1, 2, 3, 4]}]\n```',
    'Here are the boxes:\n[{"box_2d": [1, 2, 3, 4]}]\nHope this helps.',
    '```\n[{"box_2d": [1, 2, 3, 4]}]\n```',
    '{"box_2d": [1, 2, 3, 4]}',
])
def test_fences_and_stray_text_are_tolerated(wrapped):
    assert [p.box_2d for p in parse_proposals(wrapped).proposals] == [[1, 2, 3, 4]]


@pytest.mark.parametrize(("item", "reason"), [
    ({"box_2d": [300, 400, 100, 200]}, "out of order"),
    ({"box_2d": [100, 400, 300, 200]}, "out of order"),
    ({"box_2d": [100, 200, 1300, 400]}, "outside 0–1000"),
    ({"box_2d": [-5, 200, 300, 400]}, "outside 0–1000"),
    ({"box_2d": [100, 200, 300]}, "four numbers"),
    ({"box_2d": ["a", 200, 300, 400]}, "numbers only"),
    ({"box_2d": [True, 200, 300, 400]}, "numbers only"),
    ({"point": [100, 200]}, "no box_2d"),
    ("a string", "no box_2d"),
])
def test_invalid_boxes_are_rejected_with_a_reason(item, reason):
    parsed = parse_proposals(json.dumps([item, {"box_2d": [10, 20, 30, 40]}]))
    assert [p.box_2d for p in parsed.proposals] == [[10, 20, 30, 40]]
    assert len(parsed.rejected) == 1 and reason in parsed.rejected[0]


def test_no_json_at_all():
    parsed = parse_proposals("I cannot see any abnormality.")
    assert parsed.proposals == [] and "no JSON array" in parsed.rejected[0]
    assert parse_proposals(None).proposals == []


def test_empty_array_is_a_valid_no_finding_answer():
    parsed = parse_proposals("[]")
    assert parsed.proposals == [] and parsed.rejected == []


def test_count_is_capped():
    items = [{"box_2d": [i, i, i + 10, i + 10]} for i in range(40)]
    parsed = parse_proposals(json.dumps(items))
    assert len(parsed.proposals) == MAX_PROPOSALS
    assert "more than" in parsed.rejected[-1]


def test_long_labels_are_cut():
    parsed = parse_proposals(json.dumps([{"box_2d": [1, 2, 3, 4], "label": "x" * 500}]))
    assert len(parsed.proposals[0].label) == 80
