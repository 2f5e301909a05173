"""Honest negatives in answers: a model's silence is not a normal study, whichever backend speaks.

A chest radiograph from the dev set that the offline detector misses (it flagged 1 of 30 chest
lesions in its cross-validated evaluation) is opened; the fake model searches, proposes no box,
then calls the study normal. What the physician is shown, what is stored and audited, and what
the model is told next go through the real SDKs against the loopback fakes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import answer_check
from agent.conversation import Conversation
from agent.events import AssistantText, AssistantTextDelta, ToolFinished
from agent.models.gemini import GeminiBackend
from agent.models.openai_compatible import OpenAIBackend
from agent.settings import LoupeSettings
from agent.store.audit import export_jsonl
from agent.store.database import Store
from prompts import load_table
from tests.conftest import run_cli
from tests.fake_gemini import call_reply as gemini_call
from tests.fake_gemini import text_reply as gemini_text
from tests.fake_openai import FakeOpenAI
from tests.fake_openai import call_reply as openai_call
from tests.fake_openai import text_reply as openai_text
from tools.errors import LoupeError
from tools.normal_wording import normal_study_phrases

MISSED_CXR = "00001075_024.png"  # a chest lesion the offline detector does not flag
NORMAL_ANSWER = "The scan looks normal. No further imaging is needed."
REMOVED = ["looks normal", "No further imaging"]
HONEST_ANSWER = ("Nothing reached the anomaly threshold (0.50), and this is not a normal read: on chest "
                 "radiographs the offline detector flagged 1 of 30 lesions in its evaluation.")


@pytest.fixture
def cxr(eval_dir) -> Path:
    return eval_dir / "nih_cxr14" / MISSED_CXR


def gemini_settings(**overrides) -> LoupeSettings:
    return LoupeSettings(_env_file=None, gemini_api_key="test-key-not-real", backend="gemini",
                         retry_initial_s=0.01, retry_max_s=0.05, **overrides)


def openai_settings(server: FakeOpenAI, **overrides) -> LoupeSettings:
    return LoupeSettings(_env_file=None, backend="openai", openai_base_url=server.url, openai_model="medgemma-test",
                         retry_initial_s=0.01, retry_max_s=0.05, **overrides)


def started(settings: LoupeSettings, study: Path, store: Store | None = None) -> Conversation:
    conversation = Conversation.start(settings, study, modality="DX", store=store, owner="dr-a")
    conversation.confirm_no_burned_in_text()
    return conversation


def answers(events) -> list[AssistantText]:
    return [e for e in events if isinstance(e, AssistantText)]


def assert_corrected(answer: AssistantText) -> None:
    """The answer shown: no normal-study wording, Loupe's statement of what the search is worth."""
    assert answer.corrected == REMOVED
    assert normal_study_phrases(answer.text) == []
    assert answer.text.startswith(load_table("answer_check.toml")["shown"])
    assert "Inconclusive" in answer.text and "not a normal read" in answer.text
    assert "1 of 30" in answer.text and "chest radiographs" in answer.text


def test_gemini_proposing_nothing_then_calling_it_normal_is_corrected(fake, cxr, tmp_path):
    store = Store.for_data_dir(tmp_path / "data")
    settings = gemini_settings()
    conversation = started(settings, cxr, store)
    fake.script(gemini_call(("detect_anomalies", {"use_vision_model": True, "samples": 1})),
                gemini_text("[]"),  # the vision model proposes nothing
                gemini_text(NORMAL_ANSWER),
                gemini_text("Understood."))
    events = list(conversation.ask("Is there anything on this film?", GeminiBackend(settings)))

    detected = next(e for e in events if isinstance(e, ToolFinished))
    assert detected.output["assessment"] == "inconclusive" and not detected.output["anomaly_found"]
    assert "".join(e.text for e in events if isinstance(e, AssistantTextDelta)) == NORMAL_ANSWER  # the preview
    [answer] = answers(events)
    assert_corrected(answer)
    stored = [e for e in store.events(conversation.session_id) if e["kind"] == "assistant_text"]
    assert [(e["text"], e["corrected"]) for e in stored] == [(answer.text, REMOVED)]
    trail = [json.loads(line) for line in export_jsonl(store, conversation.session_id).splitlines()]
    assert [e["detail"] for e in trail if e["action"] == "answer_corrected"] == [
        {"backend": "gemini", "phrases": REMOVED}]

    # The model's own words stay verbatim in its history; the next content it is sent says what
    # Loupe removed, so it does not build on it (after a restart too).
    resumed = Conversation.resume(settings, store, conversation.session_id, "dr-a")
    list(resumed.ask("Thanks", GeminiBackend(settings)))
    sent = fake.calls()[-1].contents
    assert sent[-2]["parts"] == [{"text": NORMAL_ANSWER}]
    note = sent[-1]["parts"][-1]["text"]
    assert note.startswith("(Loupe's note") and '"looks normal", "No further imaging"' in note
    assert sent[-1]["parts"][0] == {"text": "Thanks"} and resumed.untold_corrections == []
    for request in fake.calls():  # the file name (the dataset's patient number) never leaves
        assert MISSED_CXR.split("_")[0] not in request.text()
    store.close()


def test_a_claim_beside_a_tool_call_is_noted_in_the_same_steps_results(fake, cxr):
    settings = gemini_settings(stream=False)
    conversation = started(settings, cxr)
    fake.script(gemini_call(("detect_anomalies", {"use_vision_model": False}), text="Lungs are clear."),
                gemini_text(HONEST_ANSWER))
    events = list(conversation.ask("Anything there?", GeminiBackend(settings)))
    first, second = answers(events)
    assert first.corrected == ["Lungs are clear"] and first.text.startswith("Loupe removed")
    results = fake.calls()[1].contents[-1]["parts"]
    assert "functionResponse" in results[0] and '"Lungs are clear"' in results[-1]["text"]
    assert second.corrected == [] and second.text == HONEST_ANSWER


@pytest.mark.parametrize("honest", [HONEST_ANSWER, "Inconclusive: this is not a normal read, and no "
                                    "further imaging decision can rest on it.", "F1 is unverified."])
def test_an_honest_answer_is_left_as_it_is(fake, cxr, tmp_path, honest):
    store = Store.for_data_dir(tmp_path / "data")
    settings = gemini_settings()
    conversation = started(settings, cxr, store)
    fake.script(gemini_text(honest), gemini_text("Sure."))
    [answer] = answers(conversation.ask("Anything?", GeminiBackend(settings)))
    assert answer == AssistantText(text=honest)
    list(conversation.ask("Thanks", GeminiBackend(settings)))
    assert "Loupe's note" not in fake.calls()[-1].text()
    assert "answer_corrected" not in export_jsonl(store, conversation.session_id)
    store.close()


def test_an_on_premises_model_with_tools_is_corrected_alike(openai_fake, cxr):
    settings = openai_settings(openai_fake)
    conversation = started(settings, cxr)
    openai_fake.script(openai_call(("detect_anomalies", {"use_vision_model": True, "samples": 1})),
                       openai_text(json.dumps({"findings": []})),
                       openai_text(NORMAL_ANSWER),
                       openai_text("Understood."))
    events = list(conversation.ask("Is there anything on this film?", OpenAIBackend(settings)))
    detected = next(e for e in events if isinstance(e, ToolFinished))
    assert detected.output["assessment"] == "inconclusive" and detected.output["vision_model"] == "medgemma-test"
    [answer] = answers(events)
    assert_corrected(answer)
    list(conversation.ask("Thanks", OpenAIBackend(settings)))
    messages = openai_fake.calls()[-1].messages
    assert messages[-2] == {"role": "assistant", "content": NORMAL_ANSWER}
    assert messages[-1]["content"].startswith("Thanks\n(Loupe's note")


def test_an_on_premises_model_that_only_words_the_answer_is_corrected_alike(cxr):
    with FakeOpenAI(tool_support=False) as server:
        settings = openai_settings(server)
        conversation = started(settings, cxr)
        server.script(openai_text(NORMAL_ANSWER))
        events = list(conversation.ask("Analyse this scan", OpenAIBackend(settings)))
        assert any(isinstance(e, ToolFinished) and e.name == "detect_anomalies" for e in events)
        [answer] = answers(events)
        assert_corrected(answer)
        assert "not a normal read" in server.calls()[-1].text()  # the facts it worded from said so


def test_without_a_study_or_an_assessment_the_general_statement_stands(cxr, monkeypatch):
    conversation = Conversation.start(LoupeSettings(_env_file=None))
    unmeasured = load_table("answer_check.toml")["unmeasured"]
    assert answer_check.checked(AssistantText(text="Unremarkable."), conversation.ctx).text.endswith(unmeasured)

    def fails(*args, **kwargs):
        raise LoupeError("This frame cannot be analysed.")

    conversation.open_study(cxr, modality="DX")
    monkeypatch.setattr(answer_check, "study_assessment", fails)
    assert answer_check.honest_statement(conversation.ctx) == unmeasured


def test_what_loupe_shows_never_reads_as_normal():
    wording = load_table("answer_check.toml")
    assert normal_study_phrases(f"{wording['shown']} {wording['unmeasured']}") == []


@pytest.fixture
def gemini_env(fake, monkeypatch, isolated_cli):
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-real")
    monkeypatch.setenv("LOUPE_RETRY_INITIAL_S", "0.01")
    return fake


def test_loupe_ask_shows_the_corrected_answer(gemini_env, capsys, cxr):
    gemini_env.script(gemini_call(("detect_anomalies", {"use_vision_model": False})), gemini_text(NORMAL_ANSWER))
    code, out, err = run_cli(capsys, "ask", cxr, "Anything?", "--modality", "DX", "--json",
                             "--confirm-no-burned-in-text")
    assert code == 0, err
    answer = json.loads(out)["answer"]
    assert normal_study_phrases(answer) == [] and "1 of 30" in answer

    # In the terminal the stream is printed as it comes, then the answer that stands.
    gemini_env.script(gemini_call(("detect_anomalies", {"use_vision_model": False})), gemini_text(NORMAL_ANSWER))
    code, out, err = run_cli(capsys, "ask", cxr, "Anything?", "--modality", "DX", "--confirm-no-burned-in-text")
    assert code == 0, err
    streamed, corrected = out.split("Loupe corrected this answer:\n")
    assert streamed.strip() == NORMAL_ANSWER and corrected.strip() == answer
