"""The Gemini backend, end to end through the real google-genai SDK against a loopback fake.

Each test scripts the fake server's replies, runs a conversation turn, and checks both what the
clinician would see (events) and what went over the wire (the fake's request log).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from agent.conversation import Conversation
from agent.events import AssistantText, ToolFailed, ToolFinished, TurnError, TurnFinished
from agent.models.gemini import GeminiBackend
from agent.settings import LoupeSettings
from agent.toolbox import run_tool
from tests.conftest import pydicom_file, run_cli
from tests.fake_gemini import call_reply, error_reply, fixture, image_bytes, text_reply

CT_WITH_PHI = "CT_small.dcm"  # PatientName CompressedSamples^CT1, institution JFK IMAGING CENTER
PHI_STRINGS = ("CompressedSamples", "CT1", "JFK IMAGING", "20040119", "1CT1")


def settings(**overrides) -> LoupeSettings:
    values = dict(gemini_api_key="test-key-not-real", backend="gemini", retry_initial_s=0.01, retry_max_s=0.05,
                  request_timeout_s=5.0, thinking_budget=512)
    values.update(overrides)
    return LoupeSettings(_env_file=None, **values)


def start(study: Path, modality: str | None = None, *, confirm: bool = True,
          **overrides) -> tuple[Conversation, GeminiBackend]:
    """A conversation on ``study``; ``confirm``: the clinician has confirmed that the image shows
    no burned-in identifying text (the privacy boundary holds it until then)."""
    config = settings(**overrides)
    conversation = Conversation.start(config, study, modality=modality)
    if confirm:
        conversation.confirm_no_burned_in_text()
    return conversation, GeminiBackend(config)


def events_of(conversation: Conversation, backend: GeminiBackend, message: str) -> list:
    return list(conversation.ask(message, backend))


def kinds(events) -> list[str]:
    return [e.kind for e in events]


def decode_image(inline: dict) -> Image.Image:
    return Image.open(io.BytesIO(image_bytes(inline)))


def test_two_step_tool_round_trip(fake):
    fake.script(fixture("detect_call.json"), fixture("answer_text.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events = events_of(conversation, backend, "Analyse this scan")
    assert kinds(events) == ["turn_started", "tool_started", "tool_finished", "assistant_delta", "assistant_text",
                             "turn_finished"]
    assert events[2].name == "detect_anomalies" and events[2].output["findings"]
    assert events[3].text == events[4].text and "F1" in events[4].text  # streamed, then whole
    first, second = fake.calls()
    assert first.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert first.headers["x-goog-api-key"] == "test-key-not-real"
    declared = {d["name"] for d in first.body["tools"][0]["functionDeclarations"]}
    assert {"load_study", "detect_anomalies", "verify_coordinates", "fit_gaussian", "render_overlay"} <= declared
    response = second.contents[-1]["parts"][0]["functionResponse"]
    assert response["id"] == "call-detect-1" and response["name"] == "detect_anomalies"
    assert response["response"]["output"]["findings"][0]["id"] == "F1"
    finished = events[-1]
    assert finished.ok and finished.usage.model_calls == 2
    assert finished.usage.image_tokens == 516 and finished.usage.thinking_tokens == 101
    assert conversation.usage.model_calls == 2


def test_declarations_come_from_the_input_models(fake):
    fake.script(text_reply("Hello."))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events_of(conversation, backend, "hi")
    tools = {d["name"]: d for d in fake.calls()[0].body["tools"][0]["functionDeclarations"]}
    schema = tools["verify_coordinates"].get("parametersJsonSchema") or tools["verify_coordinates"]["parameters_json_schema"]
    assert "0–1000" in schema["properties"]["box_2d"]["anyOf"][0].get("description", "") or \
        "0–1000" in schema["properties"]["box_2d"].get("description", "")
    assert "study_id" not in schema.get("required", [])
    config = fake.calls()[0].body["generationConfig"]
    thinking = config.get("thinkingConfig") or config.get("thinking_config")
    assert (thinking.get("thinkingBudget") or thinking.get("thinking_budget")) == 512


def test_parallel_calls_are_all_answered_in_one_user_turn(fake):
    fake.script(fixture("detect_call.json"), fixture("parallel_calls.json"), fixture("answer_text.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events = events_of(conversation, backend, "Analyse and measure")
    finished_tools = [e.name for e in events if isinstance(e, ToolFinished)]
    assert finished_tools == ["detect_anomalies", "fit_gaussian", "render_overlay"]
    last_user = fake.calls()[2].contents[-1]
    responses = [p["functionResponse"] for p in last_user["parts"] if "functionResponse" in p]
    assert [r["id"] for r in responses] == ["call-fit-1", "call-render-1"]
    # The overlay the model asked for comes back as an image in the same user turn.
    assert any("inlineData" in p for p in last_user["parts"])


def test_thought_signatures_are_echoed_back_unchanged(fake):
    fake.script(fixture("detect_call.json"), fixture("answer_text.json"), text_reply("Sure."))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events_of(conversation, backend, "Analyse this scan")
    events_of(conversation, backend, "Thanks")
    call_signature = fixture("detect_call.json")["candidates"][0]["content"]["parts"][1]["thoughtSignature"]
    text_signature = fixture("answer_text.json")["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    history = fake.calls()[2].contents
    model_parts = [p for c in history if c["role"] == "model" for p in c["parts"]]
    signed = {p.get("thoughtSignature") or p.get("thought_signature") for p in model_parts} - {None}
    assert {call_signature, text_signature} <= signed
    call_part = next(p for p in model_parts if "functionCall" in p or "function_call" in p)
    assert (call_part.get("thoughtSignature") or call_part.get("thought_signature")) == call_signature


@pytest.fixture
def chest_xray(eval_dir) -> Path:
    return eval_dir / "nih_cxr14" / "00010277_000.png"


def test_image_is_sent_once_downscaled_and_coordinates_use_the_sent_size(fake, chest_xray):
    # The model asks to verify the middle of the image it was shown, in box_2d.
    fake.script(call_reply(("verify_coordinates", {"box_2d": [250, 250, 750, 750]})), text_reply("Checked."),
                text_reply("Again."))
    config = settings(model_image_max_side=512)
    conversation = Conversation.start(config, chest_xray, modality="DX")
    conversation.confirm_no_burned_in_text()
    backend = GeminiBackend(config)
    events = events_of(conversation, backend, "Is there something in the middle?")
    first = fake.calls()[0]
    images = first.images()
    assert len(images) == 1
    sent = decode_image(images[0])
    assert sent.size == (512, 512)  # 1024² native, long side capped at 512
    assert "512×512" in json.dumps(first.contents, ensure_ascii=False)  # the caption tells the model what it saw
    verified = next(e for e in events if isinstance(e, ToolFinished))
    # box_2d [250, 250, 750, 750] of the 512² image sent is native pixels 256..767 of 1024²: the
    # same verdict as asking with that native box directly.
    direct = run_tool(conversation.ctx, "verify_coordinates", {"box_px": [256, 256, 767, 767]}).output
    assert verified.output == direct.model_dump(mode="json")
    # Same study, same frame and window: the next turn does not resend the image.
    events_of(conversation, backend, "And now?")
    assert fake.calls()[2].images() == images


def test_window_change_resends_the_image(fake):
    fake.script(call_reply(("load_study", {"window": "bone"})), text_reply("Bone window."))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events = events_of(conversation, backend, "Show the bone window")
    bone = next(e for e in events if isinstance(e, ToolFinished)).output["window"]
    second = fake.calls()[1]
    first_view, bone_view = second.images()  # the first view, then the bone-window view after the tool ran
    assert first_view != bone_view
    caption = json.dumps(second.contents[-1], ensure_ascii=False)
    assert f"window {bone['center']:g}/{bone['width']:g}" in caption


def test_503_then_success(fake):
    fake.script(error_reply(503), fixture("answer_text.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events = events_of(conversation, backend, "Anything?")
    assert "assistant_text" in kinds(events) and events[-1].ok
    assert len(fake.calls()) == 2


def test_429_backs_off_exponentially(fake):
    fake.script(error_reply(429), error_reply(429), fixture("answer_text.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI), retry_initial_s=0.2, retry_max_s=2.0)
    events = events_of(conversation, backend, "Anything?")
    assert events[-1].ok
    first, second, third = (r.at for r in fake.calls())
    assert second - first >= 0.2
    assert third - second >= 0.4  # doubled


def test_rate_limit_that_persists_gives_one_sentence_and_offers_offline(fake):
    fake.script(*[error_reply(429)] * 3)
    conversation, backend = start(pydicom_file(CT_WITH_PHI), retry_attempts=3)
    events = events_of(conversation, backend, "Anything?")
    error = next(e for e in events if isinstance(e, TurnError))
    assert error.reason == "model_unavailable" and error.offline_available
    assert "429" in error.message and "offline" in error.message
    assert isinstance(events[-1], TurnFinished) and not events[-1].ok
    assert conversation.history[-1]["role"] == "model"  # the history still alternates


def test_400_is_not_retried(fake):
    fake.script(error_reply(400, "Request contains an invalid argument."), fixture("answer_text.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events = events_of(conversation, backend, "Anything?")
    error = next(e for e in events if isinstance(e, TurnError))
    assert "400" in error.message and len(fake.calls()) == 1


def test_timeout_is_retried(fake):
    fake.script({"delay_s": 1.5, "body": fixture("answer_text.json")}, fixture("answer_text.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI), request_timeout_s=0.4)
    events = events_of(conversation, backend, "Anything?")
    assert events[-1].ok and len(fake.calls()) == 2


def test_timeout_that_persists_says_so(fake):
    fake.script(*[{"delay_s": 1.0, "body": fixture("answer_text.json")}] * 2)
    conversation, backend = start(pydicom_file(CT_WITH_PHI), request_timeout_s=0.3, retry_attempts=2)
    error = next(e for e in events_of(conversation, backend, "Anything?") if isinstance(e, TurnError))
    assert "in time" in error.message and error.offline_available


def test_malformed_function_call_is_retried_once(fake):
    fake.script(fixture("malformed_call.json"), fixture("answer_text.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events = events_of(conversation, backend, "Analyse")
    assert events[-1].ok and "assistant_text" in kinds(events)


def test_malformed_twice_gives_a_clear_message_and_the_conversation_goes_on(fake):
    fake.script(fixture("malformed_call.json"), fixture("malformed_call.json"), fixture("answer_text.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    error = next(e for e in events_of(conversation, backend, "Analyse") if isinstance(e, TurnError))
    assert error.reason == "malformed" and "malformed" in error.message
    events = events_of(conversation, backend, "Try again")
    assert events[-1].ok
    roles = [c["role"] for c in fake.calls()[-1].contents]
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False))


def test_unknown_tool_goes_back_to_the_model_as_an_error(fake):
    fake.script(call_reply(("delete_all_studies", {})), text_reply("That tool does not exist; sorry."))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events = events_of(conversation, backend, "Clean up")
    failed = next(e for e in events if isinstance(e, ToolFailed))
    assert "no tool called 'delete_all_studies'" in failed.message
    error = fake.calls()[1].contents[-1]["parts"][0]["functionResponse"]["response"]["error"]
    assert "detect_anomalies" in error  # the model is told what exists
    assert events[-1].ok


def test_invalid_arguments_are_corrected_on_the_next_step(fake):
    fake.script(call_reply(("verify_coordinates", {"box_2d": [100, 200, 300]})),
                call_reply(("verify_coordinates", {"box_2d": [100, 200, 300, 400]})),
                text_reply("Verified."))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events = events_of(conversation, backend, "Check this box")
    tool_events = [e for e in events if isinstance(e, ToolFinished | ToolFailed)]
    assert [type(e).__name__ for e in tool_events] == ["ToolFailed", "ToolFinished"]
    assert "box_2d" in tool_events[0].message and "4 numbers" in tool_events[0].message
    assert events[-1].ok


def test_safety_block_is_explained_and_the_conversation_goes_on(fake):
    fake.script(fixture("safety_blocked.json"), fixture("prompt_blocked.json"), fixture("answer_text.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    first = next(e for e in events_of(conversation, backend, "Something") if isinstance(e, TurnError))
    second = next(e for e in events_of(conversation, backend, "Something else") if isinstance(e, TurnError))
    assert first.reason == second.reason == "blocked"
    assert "safety" in first.message and "safety" in second.message
    assert events_of(conversation, backend, "A fine question")[-1].ok


def test_max_tokens_keeps_the_partial_answer_and_says_it_was_cut(fake):
    fake.script(fixture("max_tokens.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events = events_of(conversation, backend, "Describe F1")
    assert next(e for e in events if isinstance(e, AssistantText)).text.startswith("F1 is")
    assert next(e for e in events if isinstance(e, TurnError)).reason == "truncated"


def test_empty_candidates_are_handled(fake):
    fake.script({"candidates": [], "usageMetadata": {"promptTokenCount": 10}}, fixture("answer_text.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    error = next(e for e in events_of(conversation, backend, "Hm?") if isinstance(e, TurnError))
    assert "empty" in error.message
    assert events_of(conversation, backend, "Again")[-1].ok


def test_step_limit_ends_a_runaway_loop(fake):
    fake.script(*[call_reply(("load_study", {}))] * 3)
    conversation, backend = start(pydicom_file(CT_WITH_PHI), max_steps=3)
    events = events_of(conversation, backend, "Loop forever")
    error = next(e for e in events if isinstance(e, TurnError))
    assert error.reason == "step_limit" and "3 model steps" in error.message
    assert len(fake.calls()) == 3 and fake.remaining == 0
    assert conversation.history[-1]["role"] == "model"


def _proposal_reply(boxes: list) -> dict:
    return text_reply(json.dumps(boxes))


def test_detection_proposals_are_validated_and_verified(fake, eval_dir):
    image = eval_dir / "busi" / "benign_030.png"  # lesion box x 179–244, y 50–117 of 557×462
    lesion = [round(50 / 462 * 1000), round(179 / 557 * 1000), round(117 / 462 * 1000), round(244 / 557 * 1000)]
    wrong_order = [lesion[1], lesion[0], lesion[3], lesion[2]][::-1]  # corners swapped: max before min
    out_of_bounds = [900, 900, 1200, 1100]
    fake.script(
        call_reply(("detect_anomalies", {"use_vision_model": True, "samples": 3})),
        _proposal_reply([{"box_2d": lesion, "label": "hypoechoic lesion", "confidence": 0.8},
                         {"box_2d": wrong_order, "label": "swapped"}]),
        text_reply("```json\n" + json.dumps([{"box_2d": lesion, "label": "hypoechoic lesion"},
                                            {"box_2d": out_of_bounds, "label": "outside"}]) + "\n```"),
        _proposal_reply([{"box_2d": [lesion[0] + 10, lesion[1] + 5, lesion[2] + 10, lesion[3] + 5], "label": "lesion"}]),
        text_reply("F1 is a hypoechoic lesion."),
    )
    conversation, backend = start(image, modality="US")
    events = events_of(conversation, backend, "Find the lesion")
    detected = next(e for e in events if isinstance(e, ToolFinished) and e.name == "detect_anomalies")
    assert detected.output["vision_model"] == "gemini-2.5-flash"
    vlm = [f for f in detected.output["findings"] if f["source"] == "vlm"]
    assert len(vlm) == 1
    x, y = vlm[0]["center_px"]
    assert 179 - 20 <= x <= 244 + 20 and 50 - 20 <= y <= 117 + 20
    assert backend.proposer.rejected == ["item 2: box_2d corners out of order (expected [ymin, xmin, ymax, xmax])",
                                         "item 2: box_2d outside 0–1000"]
    detection_requests = fake.calls()[1:4]
    for request in detection_requests:
        config = request.body["generationConfig"]
        assert config.get("responseMimeType") == "application/json"
        thinking = config.get("thinkingConfig") or config.get("thinking_config")
        assert (thinking.get("thinkingBudget", thinking.get("thinking_budget"))) == 0
        assert config.get("temperature") == 0.5
        assert "ultrasound" in json.dumps(request.body.get("systemInstruction"))
        assert len(request.images()) == 1
    assert events[-1].usage.model_calls == 5


def test_no_phi_reaches_the_model(fake):
    fake.script(fixture("detect_call.json"), call_reply(("render_overlay", {"layers": ["annotated"]})),
                fixture("answer_text.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events_of(conversation, backend, "Analyse this scan")
    assert len(fake.calls()) == 3
    for request in fake.requests:
        text = request.text()
        for phi in PHI_STRINGS:
            assert phi not in text, f"{phi!r} was sent to the model"


@pytest.fixture
def gemini_env(fake, monkeypatch, isolated_cli):
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-real")
    monkeypatch.setenv("LOUPE_RETRY_INITIAL_S", "0.01")
    monkeypatch.setenv("LOUPE_RETRY_ATTEMPTS", "2")
    return fake


def test_loupe_ask_uses_gemini_when_a_key_is_set(gemini_env, capsys):
    gemini_env.script(fixture("detect_call.json"), fixture("answer_text.json"))
    code, out, err = run_cli(capsys, "ask", pydicom_file(CT_WITH_PHI), "Analyse this scan", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["backend"] == "gemini" and result["answer"].startswith("F1")
    assert result["tool_calls"][0]["name"] == "detect_anomalies" and result["tool_calls"][0]["ok"]
    assert result["usage"]["model_calls"] == 2 and result["usage"]["prompt_tokens"] == 1534 + 2210


def test_loupe_ask_offers_and_uses_the_offline_planner_when_gemini_is_down(gemini_env, capsys):
    gemini_env.script(*[error_reply(503)] * 2)
    code, out, err = run_cli(capsys, "ask", pydicom_file(CT_WITH_PHI), "How big is it?")
    assert code == 2
    assert "error: Gemini is unavailable (503 UNAVAILABLE) after retries." in err and "--offline-fallback" in err
    gemini_env.script(*[error_reply(503)] * 2)
    code, out, err = run_cli(capsys, "ask", pydicom_file(CT_WITH_PHI), "How big is it?", "--offline-fallback")
    assert code == 0 and "mm" in out


def test_gemini_backend_without_a_key_is_one_clear_error(isolated_cli, capsys):
    code, out, err = run_cli(capsys, "ask", pydicom_file(CT_WITH_PHI), "Hi", "--backend", "gemini")
    assert code == 2 and "No Gemini API key" in err and err.count("\n") == 1


def test_settings_choose_the_backend(monkeypatch):
    assert LoupeSettings(_env_file=None).backend_name == "offline"
    monkeypatch.setenv("GOOGLE_API_KEY", "a")
    monkeypatch.setenv("GEMINI_API_KEY", "b")
    chosen = LoupeSettings(_env_file=None)
    assert chosen.backend_name == "gemini" and chosen.gemini_api_key.get_secret_value() == "a"  # as the SDK does
    monkeypatch.setenv("LOUPE_BACKEND", "offline")
    assert LoupeSettings(_env_file=None).backend_name == "offline"
    assert LoupeSettings(_env_file=None).model == "gemini-2.5-flash"


def test_loupe_chat_against_gemini_falls_back_when_asked(gemini_env, capsys, monkeypatch, tmp_path):
    import io

    gemini_env.script(fixture("detect_call.json"), fixture("answer_text.json"), *[error_reply(503)] * 2)
    monkeypatch.setattr("sys.stdin", io.StringIO("Analyse this scan\nHow big is it?\ny\n/quit\n"))
    code, out, err = run_cli(capsys, "chat", pydicom_file(CT_WITH_PHI), "--images", tmp_path / "img")
    assert code == 0
    assert "F1 is the strongest candidate" in out  # Gemini's answer
    assert "Gemini is unavailable" in err and "offline planner instead? [y/N]" in err
    assert "mm (full width at half maximum" in out  # the offline planner answered the second question
    assert "'model_calls': 2" in err  # calls that were answered; the failed attempts used no tokens


def test_loupe_analyze_uses_gemini_proposals(gemini_env, capsys, eval_dir, tmp_path):
    image = eval_dir / "busi" / "benign_030.png"  # lesion box x 179–244, y 50–117 of 557×462
    box = [round(50 / 462 * 1000), round(179 / 557 * 1000), round(117 / 462 * 1000), round(244 / 557 * 1000)]
    gemini_env.script(*[text_reply(json.dumps([{"box_2d": box, "label": "hypoechoic lesion"}]))] * 3)
    code, out, err = run_cli(capsys, "analyze", image, "--modality", "US", "--out", tmp_path / "out", "--json",
                             "--backend", "gemini", "--confirm-no-burned-in-text")
    assert code == 0, err
    findings = json.loads(out)["findings"]
    vlm = [f for f in findings if f["source"] == "vlm"]
    assert len(vlm) == 1 and len(gemini_env.calls()) == 3
    x, y = vlm[0]["center_px"]
    assert 150 <= x <= 270 and 30 <= y <= 140
    # Without the confirmation the ultrasound image is held: no request, classical findings only.
    code, out, err = run_cli(capsys, "analyze", image, "--modality", "US", "--out", tmp_path / "out2", "--json",
                             "--backend", "gemini")
    assert code == 0 and len(gemini_env.calls()) == 3
    assert all(f["source"] == "classical" for f in json.loads(out)["findings"])


def test_answers_stream_in_pieces_and_are_stored_whole(fake):
    reply = text_reply("F1 is ")
    reply["candidates"][0]["content"]["parts"] += [{"text": "a small nodule "}, {"text": "(verified).",
                                                                                  "thoughtSignature": "c2lnLXRleHQ="}]
    fake.script(reply)
    conversation, backend = start(pydicom_file(CT_WITH_PHI))
    events = events_of(conversation, backend, "What is F1?")
    deltas = [e.text for e in events if e.kind == "assistant_delta"]
    assert deltas == ["F1 is ", "a small nodule ", "(verified)."]
    assert [e.text for e in events if e.kind == "assistant_text"] == ["F1 is a small nodule (verified)."]
    model_turn = conversation.history[-1]
    assert model_turn["parts"] == [{"text": "F1 is a small nodule (verified).", "thought_signature": "c2lnLXRleHQ="}]


def test_without_streaming_the_same_turn_works(fake):
    fake.script(fixture("detect_call.json"), fixture("answer_text.json"))
    conversation, backend = start(pydicom_file(CT_WITH_PHI), stream=False)
    events = events_of(conversation, backend, "Analyse this scan")
    assert "assistant_delta" not in kinds(events) and events[-1].ok
    assert fake.calls()[0].path.endswith(":generateContent")
