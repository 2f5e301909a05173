"""The one list of wording that reads as a normal study (prompts/negatives.toml), in both
directions: every such phrase is caught, and nothing Loupe itself says is."""

from __future__ import annotations

import pytest

from prompts import load_table
from tools.detection.performance import KINDS, Measured, assess, shipped_table
from tools.normal_wording import normal_study_phrases, without_normal_wording

NORMAL_STUDY = [
    "The scan looks normal.",
    "Normal study.",
    "This is a normal chest radiograph.",
    "The brain appears normal.",
    "Findings are within normal limits.",
    "Unremarkable examination.",
    "No focal abnormality is reported.",
    "No significant focal abnormality detected by Loupe's analysis of the displayed image.",
    "No significant anomaly: no candidate reached the confidence threshold.",
    "No acute findings.",
    "There are no nodules.",
    "No evidence of malignancy.",
    "Nothing abnormal is seen.",
    "Negative study.",
    "No further imaging is suggested on the basis of this study alone; correlate clinically.",
    "No follow-up imaging is required.",
    "The lungs are clear.",
    "All clear.",
]

HONEST = [
    "This is not a normal read.",
    "Nothing reached the anomaly threshold, which does not mean the scan looks normal.",
    "No candidate reached the anomaly threshold (0.50).",
    "F1 is a 12 mm nodule in the right upper lobe.",
    "Impression: to be completed by the reading physician.",
    "Correlate with the clinical picture and prior imaging.",
]


@pytest.mark.parametrize("text", NORMAL_STUDY)
def test_every_normal_study_phrase_is_caught(text):
    assert normal_study_phrases(text), text
    assert not normal_study_phrases(without_normal_wording(text)[0])


@pytest.mark.parametrize("text", HONEST)
def test_honest_wording_is_left_alone(text):
    assert normal_study_phrases(text) == []
    assert without_normal_wording(text) == (text, [])


def test_only_the_offending_sentences_are_removed():
    text = "F1 is 4 mm. The scan looks normal otherwise. Review the hila."
    kept, phrases = without_normal_wording(text)
    assert kept == "F1 is 4 mm. Review the hila." and phrases == ["looks normal"]


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


@pytest.mark.parametrize("table, section", [("negatives.toml", "templates"), ("planner.toml", "templates"),
                                            ("report_templates.toml", None)])
def test_loupes_own_templates_never_read_as_a_normal_study(table, section):
    data = load_table(table)
    texts = _strings(data[section] if section else data)
    assert texts
    assert {text: normal_study_phrases(text) for text in texts if normal_study_phrases(text)} == {}


@pytest.mark.parametrize("anomaly", [False, True])
def test_every_assessment_of_the_shipped_table_is_honest(anomaly):
    table = shipped_table()
    for kind in [*KINDS.values(), None]:
        result = assess(anomaly, kind, [Measured("the offline detector", table.for_kind(kind))])
        for text in (result.reason, result.confidence_meaning, result.sensitivity):
            assert not normal_study_phrases(text or ""), text
