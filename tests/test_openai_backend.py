"""The OpenAI-compatible backend (a model served in the hospital by vLLM, Ollama, LM Studio),
end to end through the real ``openai`` SDK against a loopback fake (tests/fake_openai.py).

Each test scripts the fake's replies, runs a turn, and checks what the clinician would see (the
events) and what went over the wire (the request log)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from agent import reports
from agent.conversation import Conversation
from agent.events import AssistantText, AssistantTextDelta, ToolFailed, ToolFinished, TurnError
from agent.models.openai_compatible import OpenAIBackend, chat_messages
from agent.settings import LoupeSettings
from tests.conftest import pydicom_file, run_cli
from tests.fake_openai import FakeOpenAI, call_reply, error_reply, raw_call_reply, text_reply
from tools.registry import TOOLS

CT_WITH_PHI = "CT_small.dcm"  # PatientName CompressedSamples^CT1, institution JFK IMAGING CENTER
PHI_STRINGS = ("CompressedSamples", "CT1", "JFK IMAGING", "20040119", "1CT1")
# BUSI benign_030.png: the lesion's box is x 179–244, y 50–117 of a 557×462 image.
LESION_PX = (179, 50, 244, 117)
BUSI_SIZE = (557, 462)


def settings(server: FakeOpenAI, **overrides) -> LoupeSettings:
    values = dict(backend="openai", openai_base_url=server.url, openai_model="medgemma-test", retry_initial_s=0.01,
                  retry_max_s=0.05, retry_attempts=3, request_timeout_s=5.0)
    values.update(overrides)
    return LoupeSettings(_env_file=None, **values)


def start(server: FakeOpenAI, study: Path, modality: str | None = None, *, confirm: bool = True,
          **overrides) -> tuple[Conversation, OpenAIBackend]:
    config = settings(server, **overrides)
    conversation = Conversation.start(config, study, modality=modality)
    if confirm:
        conversation.confirm_no_burned_in_text()
    return conversation, OpenAIBackend(config)


def turn(conversation: Conversation, backend: OpenAIBackend, message: str) -> list:
    return list(conversation.ask(message, backend))


def answer(events) -> str:
    return "\n".join(e.text for e in events if isinstance(e, AssistantText))


# -- the tool loop ----------------------------------------------------------------------------------


def test_two_step_tool_round_trip(openai_fake):
    openai_fake.script(call_reply(("detect_anomalies", {"use_vision_model": False})),
                       text_reply("F1 is the strongest finding."))
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI))
    events = turn(conversation, backend, "Find anything abnormal")
    assert answer(events) == "F1 is the strongest finding."
    assert any(isinstance(e, ToolFinished) and e.name == "detect_anomalies" for e in events)
    first, second = openai_fake.calls()
    assert {t["function"]["name"] for t in first.tools} == set(TOOLS)  # the registry's declarations
    assert first.body["tool_choice"] == "auto" and first.model == "medgemma-test"
    assert len(first.images()) == 1  # the study as the clinician sees it, as a data URL
    assistant, tool = second.messages[-2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "detect_anomalies"
    assert tool["role"] == "tool" and tool["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert "findings" in json.loads(tool["content"])["output"]
    for request in openai_fake.requests:
        for phi in PHI_STRINGS:
            assert phi not in request.text(), f"{phi!r} was sent to the model"


def test_parallel_calls_are_answered_together(openai_fake):
    openai_fake.script(call_reply(("detect_anomalies", {"use_vision_model": False})),
                       call_reply(("fit_gaussian", {"finding_ids": ["F1"]}, "a"),
                                  ("render_overlay", {"layers": ["annotated"]}, "b")),
                       text_reply("Measured and drawn."))
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI))
    turn(conversation, backend, "Measure F1 and draw it")
    last = openai_fake.calls()[2].messages
    roles = [m["role"] for m in last]
    both = len(roles) - 1 - roles[::-1].index("assistant")  # the step that made both calls
    assert [m["tool_call_id"] for m in last[both + 1:both + 3]] == ["a", "b"] and roles[both + 1:both + 3] == [
        "tool", "tool"]
    assert last[-1]["role"] == "user" and any(p["type"] == "image_url" for p in last[-1]["content"])  # the overlay


def test_answers_stream_in_pieces_and_are_stored_whole(openai_fake):
    openai_fake.script(text_reply("The study is a CT slice of the chest, nothing more to add."))
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI))
    events = turn(conversation, backend, "What is this?")
    assert len([e for e in events if isinstance(e, AssistantTextDelta)]) > 1
    assert openai_fake.calls()[0].stream
    assert conversation.history[-1] == {"role": "model",
                                        "parts": [{"text": "The study is a CT slice of the chest, nothing more to add."}]}
    assert events[-1].usage.prompt_tokens == 1000 and events[-1].usage.model_calls == 1


def test_without_streaming_the_same_turn_works(openai_fake):
    openai_fake.script(text_reply("A CT slice."))
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI), stream=False)
    events = turn(conversation, backend, "What is this?")
    assert answer(events) == "A CT slice." and not openai_fake.calls()[0].stream
    assert not any(isinstance(e, AssistantTextDelta) for e in events)


# -- failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503, 408])
def test_transient_errors_are_retried(openai_fake, status):
    openai_fake.script(error_reply(status), text_reply("Back."))
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI))
    assert answer(turn(conversation, backend, "Hello")) == "Back."
    assert len(openai_fake.calls()) == 2


def test_a_server_that_stays_down_gives_one_sentence_and_offers_offline(openai_fake):
    openai_fake.script(*[error_reply(503)] * 3)
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI))
    error = next(e for e in turn(conversation, backend, "Hello") if isinstance(e, TurnError))
    assert error.offline_available and "is unavailable (503) after retries" in error.message
    assert f"127.0.0.1:{openai_fake.url.split(':')[2].split('/')[0]}" in error.message
    assert len(openai_fake.calls()) == 3
    assert conversation.history[-1]["role"] == "model"  # the turn is closed; the session goes on


def test_400_is_not_retried(openai_fake):
    openai_fake.script(error_reply(400, "messages: bad image"))
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI))
    error = next(e for e in turn(conversation, backend, "Hello") if isinstance(e, TurnError))
    assert "refused the request (400: messages: bad image)" in error.message and len(openai_fake.calls()) == 1


def test_a_timeout_is_retried_then_said(openai_fake):
    openai_fake.script(text_reply("late") | {"delay_s": 1.0}, text_reply("On time."))
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI), request_timeout_s=0.3)
    assert answer(turn(conversation, backend, "Hello")) == "On time."
    openai_fake.script(*[text_reply("late") | {"delay_s": 1.0}] * 3)
    error = next(e for e in turn(conversation, backend, "Again") if isinstance(e, TurnError))
    assert "did not answer in time" in error.message


def test_malformed_arguments_go_back_to_the_model(openai_fake):
    openai_fake.script(raw_call_reply("detect_anomalies", '{"use_vision_model": fals'),
                       call_reply(("detect_anomalies", {"use_vision_model": False})), text_reply("Done."))
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI))
    events = turn(conversation, backend, "Analyse")
    failed = next(e for e in events if isinstance(e, ToolFailed))
    assert "not valid JSON" in failed.message
    assert any(isinstance(e, ToolFinished) and e.name == "detect_anomalies" for e in events)
    second = openai_fake.calls()[1].messages
    assert "not valid JSON" in json.loads(second[-2]["content"] if second[-1]["role"] == "user"
                                          else second[-1]["content"])["error"]


def test_an_unknown_tool_goes_back_to_the_model_as_an_error(openai_fake):
    openai_fake.script(call_reply(("segment_everything", {})), text_reply("I will use the tools I have."))
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI))
    events = turn(conversation, backend, "Segment it")
    assert "segment_everything" in next(e for e in events if isinstance(e, ToolFailed)).message
    assert answer(events) == "I will use the tools I have."


def test_the_step_limit_ends_a_runaway_loop(openai_fake):
    openai_fake.script(*[call_reply(("load_study", {"frame": 0}))] * 3)
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI), max_steps=3)
    error = next(e for e in turn(conversation, backend, "Loop") if isinstance(e, TurnError))
    assert error.reason == "step_limit"


# -- servers without function calling ---------------------------------------------------------------


def test_a_server_without_tools_gets_the_planner_and_words_the_answer(eval_dir):
    with FakeOpenAI(tool_support=False) as server:
        server.script(text_reply("Loupe found F1, verified."), text_reply("Still F1."))
        conversation, backend = start(server, eval_dir / "lidc_ct" / "LIDC-IDRI-0002" / "z-0089.50.dcm")
        events = turn(conversation, backend, "Find anything abnormal and measure it")
        assert any(isinstance(e, ToolFinished) and e.name == "detect_anomalies" for e in events)
        assert answer(events) == "Loupe found F1, verified." and not backend.tools_supported
        refused, worded = server.requests[0], server.calls()[1]
        assert refused.tools and not worded.tools  # the 400, then a plain request
        assert "F1" in worded.text() and "Find anything abnormal" in worded.text()
        assert "planner" in backend.mode
        events = turn(conversation, backend, "How big is F1?")  # straight to the planner from now on
        assert answer(events) == "Still F1." and len(server.requests) == 3
        roles = [c["role"] for c in conversation.history]
        assert roles == ["user", "model", "user", "model"]


def test_tools_off_by_setting(openai_fake):
    openai_fake.script(text_reply("A CT image."))
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI), openai_tools=False)
    turn(conversation, backend, "What is this?")
    assert [r.tools for r in openai_fake.calls()] == [None]


def test_when_the_model_cannot_word_it_the_planner_answer_stands(eval_dir):
    with FakeOpenAI(tool_support=False) as server:
        server.script(*[error_reply(503)] * 3)
        conversation, backend = start(server, pydicom_file(CT_WITH_PHI))
        events = turn(conversation, backend, "Find anything abnormal")
        text = answer(events)
        assert "could not word this answer" in text and "F1" in text


# -- detection proposals in each box format ------------------------------------------------------


def _lesion_in(box_format: str, sent_width: int, sent_height: int) -> list[float]:
    x0, y0, x1, y1 = LESION_PX
    w, h = BUSI_SIZE
    fx0, fy0, fx1, fy1 = x0 / w, y0 / h, x1 / w, y1 / h
    if box_format == "yxyx-1000":
        return [round(fy0 * 1000), round(fx0 * 1000), round(fy1 * 1000), round(fx1 * 1000)]
    if box_format == "xyxy-1":
        return [round(v, 4) for v in (fx0, fy0, fx1, fy1)]
    return [round(fx0 * sent_width), round(fy0 * sent_height), round(fx1 * sent_width), round(fy1 * sent_height)]


@pytest.mark.parametrize("box_format", ["yxyx-1000", "xyxy-1", "xyxy-px"])
def test_proposals_in_each_box_format_land_on_the_lesion(openai_fake, eval_dir, box_format):
    image = eval_dir / "busi" / "benign_030.png"
    box = _lesion_in(box_format, *BUSI_SIZE)  # 557×462 is sent as it is (under 1024 px)
    openai_fake.script(call_reply(("detect_anomalies", {"use_vision_model": True, "samples": 1})),
                       text_reply(json.dumps({"findings": [{"box_2d": box, "label": "hypoechoic lesion"}]})),
                       text_reply("F1 is a hypoechoic lesion."))
    conversation, backend = start(openai_fake, image, modality="US", openai_box_format=box_format)
    events = turn(conversation, backend, "Find the lesion")
    detected = next(e for e in events if isinstance(e, ToolFinished) and e.name == "detect_anomalies")
    assert detected.output["vision_model"] == "medgemma-test"
    [vlm] = [f for f in detected.output["findings"] if f["source"] == "vlm"]
    x, y = vlm["center_px"]
    assert LESION_PX[0] - 20 <= x <= LESION_PX[2] + 20 and LESION_PX[1] - 20 <= y <= LESION_PX[3] + 20
    request = openai_fake.calls()[1]
    assert request.body["response_format"]["type"] == "json_schema"
    sent = Image.open(io.BytesIO(request.images()[0]))
    assert sent.size == BUSI_SIZE
    system = request.messages[0]["content"]
    assert "ultrasound" in system and ("xmin, ymin" in system) == (box_format != "yxyx-1000")


def test_a_server_without_structured_output_is_parsed_tolerantly(openai_fake, eval_dir):
    image = eval_dir / "busi" / "benign_030.png"
    box = _lesion_in("yxyx-1000", *BUSI_SIZE)
    openai_fake.script(call_reply(("detect_anomalies", {"use_vision_model": True, "samples": 2})),
                       error_reply(400, "response_format json_schema is not supported by this server"),
                       text_reply("Here you go:\n```json\n" + json.dumps([{"box_2d": box, "label": "lesion"}]) + "\n```"),
                       text_reply("I see nothing else."),
                       text_reply("F1 is the lesion."))
    conversation, backend = start(openai_fake, image, modality="US")
    events = turn(conversation, backend, "Find the lesion")
    detected = next(e for e in events if isinstance(e, ToolFinished) and e.name == "detect_anomalies")
    assert [f["source"] for f in detected.output["findings"]].count("vlm") == 1
    assert "response_format" in openai_fake.calls()[1].body
    assert "response_format" not in openai_fake.calls()[2].body and "response_format" not in openai_fake.calls()[3].body
    assert backend.proposer.rejected == ["the answer contained no JSON array"]  # "I see nothing else."


def test_a_reply_without_a_usable_box_is_said(openai_fake, eval_dir):
    openai_fake.script(call_reply(("detect_anomalies", {"use_vision_model": True, "samples": 1})),
                       text_reply(json.dumps({"findings": [{"box_2d": [10, 10], "label": "half a box"}]})),
                       text_reply("Nothing from the model."))
    conversation, backend = start(openai_fake, eval_dir / "busi" / "benign_030.png", modality="US")
    events = turn(conversation, backend, "Find the lesion")
    detected = next(e for e in events if isinstance(e, ToolFinished) and e.name == "detect_anomalies")
    assert not [f for f in detected.output["findings"] if f["source"] == "vlm"]
    assert backend.proposer.rejected == ["item 1: box_2d must be four numbers [ymin, xmin, ymax, xmax]"]


# -- report wording --------------------------------------------------------------------------------


def test_report_wording_through_the_server_keeps_the_no_invented_numbers_rule(openai_fake, eval_dir):
    ct_slice = eval_dir / "lidc_ct" / "LIDC-IDRI-0002" / "z-0089.50.dcm"
    openai_fake.script(
        call_reply(("detect_anomalies", {"use_vision_model": False})),
        call_reply(("draft_report", {"finding_ids": ["F1"]})),
        text_reply(json.dumps({"impression": "A small pulmonary nodule, F1.", "recommendations": ["Compare."],
                               "characteristics": {"F1": "solid nodule measuring 14 mm"}})),
        text_reply("Drafted."))
    conversation, backend = start(openai_fake, ct_slice)
    turn(conversation, backend, "Draft a report")
    report = reports.history(conversation).current
    assert report.author == "model" and report.impression == "A small pulmonary nodule, F1."
    assert "14 mm" not in report.findings[0].characteristics  # a size no tool measured is refused
    writer = openai_fake.calls()[2]
    assert writer.body["response_format"]["json_schema"]["name"] == "report"


# -- privacy ---------------------------------------------------------------------------------------


def test_burned_in_text_hold_is_lifted_only_on_premises(openai_fake, eval_dir):
    image = eval_dir / "busi" / "benign_030.png"  # ultrasound: held until confirmed, in the cloud
    openai_fake.script(text_reply("An ultrasound."), text_reply("An ultrasound."))
    conversation, backend = start(openai_fake, image, modality="US", confirm=False)
    turn(conversation, backend, "What is this?")
    assert openai_fake.calls()[0].images() == [] and "not sent" in openai_fake.calls()[0].text()
    conversation, backend = start(openai_fake, image, modality="US", confirm=False, model_site="on-premises")
    turn(conversation, backend, "What is this?")
    assert len(openai_fake.calls()[1].images()) == 1
    assert conversation.boundary.on_premises


def test_history_written_by_gemini_translates_with_matched_call_ids():
    history = [
        {"role": "user", "parts": [{"text": "Find it"}]},
        {"role": "model", "parts": [{"text": "thinking", "thought": True},
                                    {"function_call": {"name": "detect_anomalies", "args": {"samples": 2}}},
                                    {"function_call": {"name": "fit_gaussian", "args": {}}}]},
        {"role": "user", "parts": [{"function_response": {"name": "detect_anomalies", "response": {"output": {}}}},
                                   {"function_response": {"name": "fit_gaussian", "response": {"error": "x"}}},
                                   {"inline_data": {"mime_type": "image/png", "data": "iVBORw0KGgo_-w"}},
                                   {"text": "caption"}]},
        {"role": "model", "parts": [{"text": "F1."}]},
    ]
    messages = chat_messages("system", history)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "user", "assistant"]
    ids = [c["id"] for c in messages[2]["tool_calls"]]
    assert [messages[3]["tool_call_id"], messages[4]["tool_call_id"]] == ids and len(set(ids)) == 2
    assert messages[2]["content"] is None  # the thought is not replayed
    assert messages[5]["content"][0]["image_url"]["url"] == "data:image/png;base64,iVBORw0KGgo/+w=="


# -- the command line and the app --------------------------------------------------------------------


@pytest.fixture
def openai_env(openai_fake, monkeypatch, isolated_cli):
    monkeypatch.setenv("LOUPE_OPENAI_BASE_URL", openai_fake.url)
    monkeypatch.setenv("LOUPE_OPENAI_MODEL", "medgemma-test")
    monkeypatch.setenv("LOUPE_RETRY_INITIAL_S", "0.01")
    return openai_fake


def test_loupe_ask_with_the_openai_backend_keeps_the_json_contract(openai_env, capsys):
    openai_env.script(call_reply(("detect_anomalies", {"use_vision_model": False})), text_reply("F1 it is."))
    code, out, err = run_cli(capsys, "ask", pydicom_file(CT_WITH_PHI), "Analyse this scan", "--backend", "openai",
                             "--json", "--confirm-no-burned-in-text")
    assert code == 0, err
    result = json.loads(out)
    assert {"answer", "tool_calls", "findings", "usage", "backend"} <= set(result)
    assert result["backend"] == "openai" and result["answer"] == "F1 it is."
    assert result["tool_calls"][0]["name"] == "detect_anomalies" and result["findings"]
    assert result["usage"]["model_calls"] == 2 and result["usage"]["prompt_tokens"] == 2000


def test_auto_chooses_the_configured_server(openai_env, capsys):
    openai_env.script(text_reply("Hello."))
    code, out, err = run_cli(capsys, "ask", pydicom_file(CT_WITH_PHI), "Hi", "--json")
    assert code == 0 and json.loads(out)["backend"] == "openai"


def test_no_model_name_is_one_sentence(openai_env, capsys, monkeypatch):
    monkeypatch.delenv("LOUPE_OPENAI_MODEL")
    code, out, err = run_cli(capsys, "ask", pydicom_file(CT_WITH_PHI), "Hi", "--backend", "openai")
    assert code == 2 and "LOUPE_OPENAI_MODEL is not set" in err and err.count("\n") == 1


def test_the_app_answers_through_the_server_and_says_which_mode(openai_env, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.test_app import APP

    monkeypatch.setenv("LOUPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOUPE_OPENAI_TOOLS", "false")
    openai_env.script(text_reply("Worded by the served model."))
    at = AppTest.from_file(str(APP), default_timeout=90).run()
    assert any("OpenAI-compatible" in c.value for c in at.sidebar.caption)
    assert any("planner runs the tools" in c.value for c in at.sidebar.caption)
    at.chat_input[0].set_value("What is this?").run()
    assert not at.exception
    assert any("Worded by the served model." in m.markdown[0].value for m in at.chat_message if m.markdown)


def test_loupe_analyze_uses_the_servers_proposals(openai_env, capsys, eval_dir, tmp_path, monkeypatch):
    """An ultrasound is held in the cloud until the clinician confirms it; on the premises it is not."""
    monkeypatch.setenv("LOUPE_OPENAI_BOX_FORMAT", "xyxy-1")
    box = _lesion_in("xyxy-1", *BUSI_SIZE)
    image = eval_dir / "busi" / "benign_030.png"
    for run, (options, site) in enumerate(((["--confirm-no-burned-in-text"], "cloud"), ([], "on-premises"))):
        monkeypatch.setenv("LOUPE_MODEL_SITE", site)
        openai_env.script(*[text_reply(json.dumps({"findings": [{"box_2d": box, "label": "hypoechoic lesion"}]}))] * 3)
        code, out, err = run_cli(capsys, "analyze", image, "--modality", "US", "--out", tmp_path / f"out{run}",
                                 "--json", "--backend", "openai", *options)
        assert code == 0, err
        [vlm] = [f for f in json.loads(out)["findings"] if f["source"] == "vlm"]
        x, y = vlm["center_px"]
        assert LESION_PX[0] - 20 <= x <= LESION_PX[2] + 20 and LESION_PX[1] - 20 <= y <= LESION_PX[3] + 20
    monkeypatch.setenv("LOUPE_MODEL_SITE", "cloud")
    code, out, err = run_cli(capsys, "analyze", image, "--modality", "US", "--out", tmp_path / "held", "--json",
                             "--backend", "openai")
    assert code == 0 and len(openai_env.calls()) == 6  # held: no request
    assert all(f["source"] == "classical" for f in json.loads(out)["findings"])


def test_an_image_only_the_on_premises_model_saw_never_reaches_a_cloud_model(openai_fake, fake, eval_dir, tmp_path):
    """An ultrasound released to the hospital's own model (held for the cloud) is in the history;
    when the session moves to Gemini — in the same process or after a restart — Gemini gets a
    note in its place, never the pixels."""
    from agent.models.gemini import GeminiBackend
    from agent.store.database import Store
    from tests.fake_gemini import text_reply as gemini_text

    store = Store.for_data_dir(tmp_path / "data")
    config = settings(openai_fake, model_site="on-premises", gemini_api_key="k")
    conversation = Conversation.start(config, eval_dir / "busi" / "benign_030.png", modality="US", store=store,
                                      owner="dr-a")
    openai_fake.script(text_reply("An ultrasound."))
    turn(conversation, OpenAIBackend(config), "What is this?")
    assert len(openai_fake.calls()[0].images()) == 1  # on site: sent
    fake.script(gemini_text("Seen."), gemini_text("Seen again."))
    turn(conversation, GeminiBackend(config), "And now?")
    resumed = Conversation.resume(config, store, conversation.session_id, "dr-a")
    turn(resumed, GeminiBackend(config), "After a restart?")
    for request in fake.calls():
        assert request.images() == [] and "hospital's own model" in request.text()
    store.close()


def test_a_400_about_a_tool_message_is_not_taken_for_a_server_without_tools(openai_fake):
    openai_fake.script(error_reply(400, "messages[3]: tool message has an unknown tool_call_id"))
    conversation, backend = start(openai_fake, pydicom_file(CT_WITH_PHI))
    error = next(e for e in turn(conversation, backend, "Hello") if isinstance(e, TurnError))
    assert backend.tools_supported and "refused the request (400" in error.message
