"""The fake OpenAI-compatible server speaks the protocol the real ``openai`` SDK expects."""

from __future__ import annotations

import base64
import json
import time

import openai
import pytest

from tests.fake_openai import (
    FakeOpenAI,
    call_reply,
    error_reply,
    raw_call_reply,
    text_reply,
    tools_unsupported_reply,
)

TOOLS = [{"type": "function", "function": {"name": "measure", "description": "Measure a finding.",
                                           "parameters": {"type": "object", "properties": {"x": {"type": "number"}}}}}]
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def client(fake: FakeOpenAI, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url, api_key="x", **{"max_retries": 0, **kwargs})


def ask(fake: FakeOpenAI, **kwargs):
    return client(fake).chat.completions.create(
        model="local-model", messages=[{"role": "user", "content": "hello"}], **kwargs)


def test_text_reply_and_usage(fake):
    fake.script(text_reply("A 6 mm nodule."))
    response = ask(fake)
    assert response.choices[0].message.content == "A 6 mm nodule."
    assert response.choices[0].finish_reason == "stop"
    assert response.model == "local-model"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (1000, 20, 1020)
    [request] = fake.calls()
    assert request.path == "/v1/chat/completions" and request.model == "local-model" and not request.stream
    assert request.headers["authorization"] == "Bearer x"
    assert request.text() == "hello"
    assert fake.remaining == 0


def test_streamed_text_with_usage(fake):
    fake.script(text_reply("A six millimetre nodule in the right upper lobe."))
    chunks = list(ask(fake, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "A six millimetre nodule in the right upper lobe."
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 1020
    assert fake.calls()[0].stream


def test_streamed_text_without_usage_chunk(fake):
    fake.script(text_reply("ok"))
    chunks = list(ask(fake, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "ok"


def test_tool_call_reply(fake):
    fake.script(call_reply(("measure", {"x": 1.5}), ("measure", {"x": 2}, "call_mine"), text="Measuring."))
    message = ask(fake, tools=TOOLS).choices[0].message
    assert message.content == "Measuring."
    first, second = message.tool_calls
    assert first.function.name == "measure" and json.loads(first.function.arguments) == {"x": 1.5}
    assert first.id.startswith("call_") and second.id == "call_mine" and first.id != second.id
    assert fake.calls()[0].tools == TOOLS


def test_tool_call_reply_streamed(fake):
    fake.script(call_reply(("measure", {"x": 1.5, "label": "nodule"}), ("measure", {"x": 2})))
    calls: dict[int, dict] = {}
    finish = None
    for chunk in ask(fake, tools=TOOLS, stream=True):
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            call["id"] = delta.id or call["id"]
            if delta.function:
                call["name"] = delta.function.name or call["name"]
                call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert [c["name"] for c in calls.values()] == ["measure", "measure"]
    assert [json.loads(c["arguments"]) for c in calls.values()] == [{"x": 1.5, "label": "nodule"}, {"x": 2}]
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_malformed_arguments_reach_the_client_verbatim(fake):
    fake.script(raw_call_reply("measure", '{"x": 1.5'))
    call = ask(fake, tools=TOOLS).choices[0].message.tool_calls[0]
    assert call.function.arguments == '{"x": 1.5'


def test_image_data_url_is_recorded_and_decoded(fake):
    fake.script(text_reply("seen"))
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    client(fake).chat.completions.create(model="m", messages=[
        {"role": "system", "content": "You read CT."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": data_url}}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "measure", "arguments": '{"x": 3}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3 mm"},
    ])
    [request] = fake.calls()
    assert request.images() == [PNG]
    assert request.text() == "You read CT.\nWhat is this?\n{\"x\": 3}\n3 mm"
    assert "base64" not in request.text()


def test_rate_limit_and_server_errors(fake):
    fake.script(error_reply(429, "slow down"), error_reply(503, "overloaded"))
    with pytest.raises(openai.RateLimitError) as rate:
        ask(fake)
    assert rate.value.status_code == 429 and rate.value.body["message"] == "slow down"
    assert rate.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError) as server:
        ask(fake, stream=True)
    assert server.value.status_code == 503 and "overloaded" in str(server.value)


def test_the_sdk_retries_by_itself_and_honours_retry_after(fake):
    fake.script(error_reply(429, retry_after=0.05), error_reply(500, retry_after=0.05), text_reply("finally"))
    response = client(fake, max_retries=2).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert response.choices[0].message.content == "finally"
    first, second, third = fake.calls()
    assert 0.04 < second.at - first.at < 0.4 and 0.04 < third.at - second.at < 0.4
    assert third.headers["x-stainless-retry-count"] == "2"


def test_no_reply_left_is_a_500(fake):
    with pytest.raises(openai.InternalServerError, match="no scripted reply left"):
        ask(fake)


def test_tools_unsupported(fake):
    fake.script(tools_unsupported_reply())
    with pytest.raises(openai.BadRequestError) as error:
        ask(fake, tools=TOOLS)
    assert "tool" in error.value.message and "tool" in error.value.body["message"]


def test_tool_support_off_rejects_only_requests_with_tools():
    with FakeOpenAI(tool_support=False) as fake:
        fake.script(text_reply("plain"))
        with pytest.raises(openai.BadRequestError, match="tool-call-parser"):
            ask(fake, tools=TOOLS)
        assert fake.remaining == 1
        with pytest.raises(openai.BadRequestError, match="tool"):
            ask(fake, tools=TOOLS, stream=True)
        assert ask(fake).choices[0].message.content == "plain"
        assert len(fake.calls()) == 3


def test_delayed_reply_times_out(fake):
    fake.script(text_reply("late") | {"delay_s": 1.0})
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client(fake, timeout=0.2).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 0.9


def test_delayed_reply_in_time(fake):
    fake.script({"delay_s": 0.1, "body": text_reply("late but fine")}, lambda request: text_reply(f"echo {request.text()}"))
    assert ask(fake).choices[0].message.content == "late but fine"
    assert "".join(c.choices[0].delta.content or "" for c in ask(fake, stream=True)) == "echo hello"
    assert fake.remaining == 0


def test_callable_reply_sees_the_request(fake):
    fake.script(lambda request: text_reply(f"you said {request.text()}"))
    assert ask(fake).choices[0].message.content == "you said hello"


def test_require_key_models_and_unknown_paths():
    with FakeOpenAI(require_key="secret", model="qwen2.5-vl") as fake:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=fake.url, api_key="wrong", max_retries=0).models.list()
        models = openai.OpenAI(base_url=fake.url, api_key="secret", max_retries=0).models.list()
        assert [m.id for m in models] == ["qwen2.5-vl"]
        with pytest.raises(openai.NotFoundError):
            openai.OpenAI(base_url=fake.url.removesuffix("/v1"), api_key="secret", max_retries=0).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}])
        assert fake.calls() == []
