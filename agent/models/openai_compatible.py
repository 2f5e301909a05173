"""A model served inside the hospital behind an OpenAI-compatible API (vLLM, Ollama, LM Studio,
TGI serving MedGemma, Qwen-VL, Llama vision models): the only module that imports ``openai``.

``OpenAIBackend.run_turn`` is the same manual function-calling loop as Gemini's, over Chat
Completions: tool declarations from the registry, tool results as ``tool`` messages (every call
of a step answered together), images as data URLs, the step limit, streamed text. The
conversation's history stays in Loupe's one form (google-genai's shape, see conversation.py)
and is translated into messages for each call *after* it has passed the privacy boundary, so a
session can move between backends and the boundary stays the single exit.

A server without function calling (``LOUPE_OPENAI_TOOLS=false``, or a 400 that names tools)
gets Loupe's planner choosing and running the tools, and the model writes only the answer from
their results. ``OpenAIVisionProposer`` and ``OpenAIReportWriter`` are the detection source
and the report wording for ``detect_anomalies`` and the report tools, with JSON-schema output
where the server takes it and tolerant parsing where it does not.

Every call goes through ``OpenAICaller``: tenacity retries on 408/429/5xx, timeouts and
connection errors (the SDK's own retries are off, so there is one policy), never on 400.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import openai
from PIL import Image
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from agent.conversation import Conversation, Turn, model_unavailable, step_limit, truncated
from agent.events import AssistantText, AssistantTextDelta, Event, ToolStarted, TurnError, Usage
from agent.models.inputs import ImageForModel, artifact_image, unseen_view
from agent.models.planner import planned_answer
from agent.models.proposals import parse_proposals
from agent.privacy.boundary import PrivacyBoundary
from agent.settings import LoupeSettings
from agent.tool_calls import ToolOutcome, execute
from prompts import Prompt, load_prompt, load_table
from tools.context import VisionProposal
from tools.coordinates import BOX_FORMATS
from tools.errors import ModelUnavailableError, PrivacyError
from tools.registry import model_declarations
from tools.report.document import ClinicalReport, ReportNarrative

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_PROPOSALS = 25
_BOX_EXAMPLES = {"yxyx-1000": "[ymin, xmin, ymax, xmax]", "xyxy-1": "[xmin, ymin, xmax, ymax]",
                 "xyxy-px": "[xmin, ymin, xmax, ymax]"}


#: How servers say they cannot call tools (vLLM without its tool flags, Ollama with a model whose
#: template has none, LM Studio, TGI); a 400 that merely mentions a tool message is not one.
_NO_TOOLS = ("does not support tools", "tool choice", "tool_choice", "tool-call-parser", "tool calling",
             "tools are not supported", "tools is not supported", "function calling")


class ToolsUnsupported(Exception):
    """The server refused function calling (a 400 naming tools)."""


class _FormatUnsupported(Exception):
    """The server refused a JSON-schema ``response_format``."""


@dataclass
class Reply:
    text: str = ""
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)  # (id, name, arguments as sent)
    finish: str | None = None


def server_address(settings: LoupeSettings) -> str:
    parts = urlsplit(settings.openai_base_url or "")
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def make_client(settings: LoupeSettings) -> openai.OpenAI:
    if not settings.openai_base_url:
        raise ModelUnavailableError("No OpenAI-compatible model server is configured (LOUPE_OPENAI_BASE_URL); "
                                    "the offline planner can answer.")
    if not settings.openai_model:
        raise ModelUnavailableError("LOUPE_OPENAI_MODEL is not set: name the model the server at "
                                    f"{server_address(settings)} serves.")
    # Local servers often need no key; the SDK insists on one, and any text is accepted there.
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "no-key"
    return openai.OpenAI(base_url=settings.openai_base_url, api_key=key, timeout=settings.request_timeout_s,
                         max_retries=0)


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, openai.APIStatusError):
        return error.status_code in TRANSIENT_STATUS
    return isinstance(error, openai.APIConnectionError)  # timeouts too (APITimeoutError)


class OpenAICaller:
    """Chat Completions through the privacy boundary, with retries, usage and audit."""

    def __init__(self, settings: LoupeSettings, client: openai.OpenAI | None = None):
        self.settings = settings
        self.client = client or make_client(settings)
        self.server = server_address(settings)

    def _retrying(self) -> Retrying:
        return Retrying(retry=retry_if_exception(_is_transient),
                        wait=wait_exponential_jitter(initial=self.settings.retry_initial_s,
                                                     max=self.settings.retry_max_s,
                                                     jitter=self.settings.retry_initial_s),
                        stop=stop_after_attempt(self.settings.retry_attempts), reraise=True)

    def call(self, contents: list[dict[str, Any]], usage: Usage, boundary: PrivacyBoundary, *, system: str,
             purpose: str, prompt: Prompt, tools: list[dict[str, Any]] | None = None,
             response_format: dict[str, Any] | None = None, temperature: float | None = None,
             stream: bool = False) -> Generator[str, None, Reply]:
        """Send ``contents`` (Loupe's history form) through ``boundary`` and return the reply,
        yielding its text as it arrives when ``stream``. A stream that fails after text was
        shown is not retried (the clinician would see the answer twice)."""
        outgoing = boundary.outgoing(contents)
        request: dict[str, Any] = {"model": self.settings.openai_model, "messages": chat_messages(system, outgoing)}
        if tools:
            request |= {"tools": tools, "tool_choice": "auto"}
        if response_format:
            request["response_format"] = response_format
        if temperature is not None:
            request["temperature"] = temperature
        facts = {"model": self.settings.openai_model, "backend": "openai", "purpose": purpose, "prompt": prompt.name,
                 "prompt_version": prompt.version}
        call_usage = Usage(model_calls=1)
        try:
            for attempt in self._retrying():
                with attempt:
                    reply = (yield from self._streamed(request, call_usage)) if stream else self._whole(
                        request, call_usage)
        except _BrokenStream as broken:
            raise self._failed(broken.error, boundary, outgoing, facts) from broken.error
        except openai.BadRequestError as error:
            boundary.record(outgoing, **facts, outcome="failed", error="400")
            raise _refusal(error, request) from error
        except openai.OpenAIError as error:
            raise self._failed(error, boundary, outgoing, facts) from error
        usage.add(call_usage)
        boundary.record(outgoing, **facts, outcome="answered", usage=call_usage.model_dump())
        return reply

    def _whole(self, request: dict[str, Any], usage: Usage) -> Reply:
        response = self.client.chat.completions.create(**request)
        _count(usage, response.usage)
        if not response.choices:
            return Reply(finish="empty")
        choice = response.choices[0]
        message = choice.message
        calls = [(c.id or f"call_{index}", c.function.name, c.function.arguments or "")
                 for index, c in enumerate(message.tool_calls or []) if getattr(c, "function", None) is not None]
        return Reply(text=message.content or "", tool_calls=calls, finish=choice.finish_reason)

    def _streamed(self, request: dict[str, Any], usage: Usage) -> Generator[str, None, Reply]:
        reply, calls, shown = Reply(), {}, False
        try:
            for chunk in self.client.chat.completions.create(**request, stream=True,
                                                             stream_options={"include_usage": True}):
                _count(usage, chunk.usage)
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        reply.text += delta.content
                        shown = True
                        yield delta.content
                    for piece in delta.tool_calls or ():
                        slot = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                        slot["id"] = piece.id or slot["id"]
                        if piece.function is not None:
                            slot["name"] += piece.function.name or ""
                            slot["arguments"] += piece.function.arguments or ""
                    reply.finish = choice.finish_reason or reply.finish
        except openai.OpenAIError as error:
            if shown:
                raise _BrokenStream(error) from error
            raise
        reply.tool_calls = [(s["id"] or f"call_{i}", s["name"], s["arguments"]) for i, s in sorted(calls.items())]
        return reply

    def _failed(self, error: BaseException, boundary: PrivacyBoundary, outgoing: list[dict[str, Any]],
                facts: dict[str, Any]) -> ModelUnavailableError:
        log.info("model server call failed after retries: %s", type(error).__name__)
        unavailable = self._unavailable(error)
        boundary.record(outgoing, **facts, outcome="failed", error=unavailable.message)
        return unavailable

    def _unavailable(self, error: BaseException) -> ModelUnavailableError:
        where = f"The model server at {self.server}"
        if isinstance(error, openai.APITimeoutError):
            return ModelUnavailableError(f"{where} did not answer in time, even after retries.")
        if isinstance(error, openai.APIConnectionError):
            return ModelUnavailableError(f"{where} cannot be reached (connection failed).")
        if isinstance(error, openai.APIStatusError):
            if error.status_code == 429:
                return ModelUnavailableError(f"{where} is rate-limiting Loupe (429) and did not recover after retries.")
            if error.status_code in TRANSIENT_STATUS:
                return ModelUnavailableError(f"{where} is unavailable ({error.status_code}) after retries.")
            if error.status_code in (401, 403):
                return ModelUnavailableError(f"{where} refused Loupe's API key ({error.status_code}); check "
                                             "LOUPE_OPENAI_API_KEY.")
            return ModelUnavailableError(f"{where} refused the request ({error.status_code}: {_message(error)}).")
        return ModelUnavailableError(f"{where} failed ({type(error).__name__}).")


class _BrokenStream(Exception):
    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _refusal(error: openai.BadRequestError, request: dict[str, Any]) -> Exception:
    """A 400 that says what the server cannot do, or the request refused in one sentence."""
    text = _message(error).lower()
    if "tools" in request and any(phrase in text for phrase in _NO_TOOLS):
        return ToolsUnsupported(_message(error))
    if "response_format" in request and any(word in text for word in ("response_format", "json_schema", "schema",
                                                                         "guided", "format")):
        return _FormatUnsupported(_message(error))
    return ModelUnavailableError(f"The model server refused the request (400: {_message(error)}).")


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(error.message)[:300]


def _count(usage: Usage, reported: Any) -> None:
    if reported is not None:
        usage.prompt_tokens += reported.prompt_tokens or 0
        usage.output_tokens += reported.completion_tokens or 0


def _drained(generator: Generator[str, None, Reply]) -> Reply:
    while True:
        try:
            next(generator)
        except StopIteration as done:
            return done.value


def _previewed(generator: Generator[str, None, Reply]) -> Generator[Event, None, Reply]:
    """The reply's text pieces as ``AssistantTextDelta`` previews, then the reply."""
    while True:
        try:
            yield AssistantTextDelta(text=next(generator))
        except StopIteration as done:
            return done.value


# -- Loupe's history -> Chat Completions messages ---------------------------------------------------


def chat_messages(system: str, contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Loupe's history (google-genai's shape) as Chat Completions messages.

    Model contents become assistant messages (text, ``tool_calls``); a user content's function
    responses become ``tool`` messages right after them, its text and images one user message.
    Calls stored without an id (Gemini's often have none) get one by position, and their
    responses are matched to them in order."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    unanswered: deque[str] = deque()
    for index, content in enumerate(contents):
        parts = content.get("parts", [])
        if content.get("role") == "model":
            messages += _assistant(index, parts, unanswered)
            continue
        for part in parts:
            response = part.get("function_response")
            if response is not None:
                call_id = response.get("id") or (unanswered.popleft() if unanswered else f"call_{index}")
                messages.append({"role": "tool", "tool_call_id": call_id,
                                 "content": json.dumps(response.get("response", {}), ensure_ascii=False)})
        user = _user_content(parts)
        if user:
            messages.append({"role": "user", "content": user})
    return messages


def _assistant(index: int, parts: list[dict[str, Any]], unanswered: deque[str]) -> list[dict[str, Any]]:
    text = "".join(p["text"] for p in parts if p.get("text") and not p.get("thought"))
    calls = []
    for number, part in enumerate(p for p in parts if p.get("function_call")):
        call = part["function_call"]
        call_id = call.get("id") or f"call_{index}_{number}"
        if not call.get("id"):
            unanswered.append(call_id)
        calls.append({"id": call_id, "type": "function",
                      "function": {"name": call.get("name", ""),
                                   "arguments": json.dumps(call.get("args") or {}, ensure_ascii=False)}})
    if not text and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _user_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Plain text when there is no image (what every server takes), else typed parts."""
    items: list[dict[str, Any]] = []
    for part in parts:
        inline = part.get("inline_data") or part.get("inlineData")
        if inline is not None:
            mime = inline.get("mime_type") or inline.get("mimeType") or "image/png"
            items.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{_standard_b64(inline['data'])}"}})
        elif part.get("text") and not part.get("thought"):
            items.append({"type": "text", "text": part["text"]})
    if all(item["type"] == "text" for item in items):
        return "\n".join(item["text"] for item in items)
    return items


def _standard_b64(data: bytes | str) -> str:
    raw = data if isinstance(data, bytes) else base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return base64.b64encode(raw).decode()


def image_parts(image: ImageForModel) -> list[dict[str, Any]]:
    """An image and its caption in Loupe's history form."""
    return [png_part(image.png), {"text": image.caption}]


def png_part(png: bytes) -> dict[str, Any]:
    """A PNG in Loupe's history form (URL-safe base64, as google-genai writes it)."""
    return {"inline_data": {"mime_type": "image/png", "data": base64.urlsafe_b64encode(png).decode()}}


def tool_declarations() -> list[dict[str, Any]]:
    return [{"type": "function", "function": declaration} for declaration in model_declarations()]


# -- the backend ------------------------------------------------------------------------------------


class OpenAIBackend:
    """Conversation turns answered by a model on an OpenAI-compatible server with Loupe's tools."""

    name = "openai"

    def __init__(self, settings: LoupeSettings, client: openai.OpenAI | None = None):
        self.settings = settings
        self.caller = OpenAICaller(settings, client)
        self.system = load_prompt("system.md")
        self.tools = tool_declarations()  # built once: the schemas take milliseconds per step otherwise
        #: False once the server refused function calling (or the settings say it cannot).
        self.tools_supported = settings.openai_tools
        self.proposer = OpenAIVisionProposer(self.caller)
        self.writer = OpenAIReportWriter(self.caller)

    @property
    def model(self) -> str:
        return self.settings.openai_model or ""

    @property
    def mode(self) -> str:
        """What the app says is active."""
        return ("the model calls Loupe's tools" if self.tools_supported
                else "Loupe's planner runs the tools; the model writes the answer (the server has no tool calling)")

    def attach(self, conversation: Conversation, usage: Usage) -> None:
        """Proposals and report wording through this server, behind the conversation's boundary;
        on-premises, images are not held for possible burned-in text (they stay on site)."""
        conversation.attach_model(self.proposer, self.writer, usage,
                                  on_premises=self.settings.model_site == "on-premises")

    def run_turn(self, conversation: Conversation, turn: Turn) -> Iterator[Event]:
        self.attach(conversation, turn.usage)
        yield from _TurnLoop(self, conversation, turn).run()


class _TurnLoop:
    def __init__(self, backend: OpenAIBackend, conversation: Conversation, turn: Turn):
        self.backend, self.conversation, self.turn = backend, conversation, turn
        self.settings = backend.settings

    def run(self) -> Iterator[Event]:
        if not self.backend.tools_supported:
            yield from self._planned(asked=False)
            return
        self._commit({"role": "user", "parts": [*self._view_parts(), {"text": self.turn.message}]})
        for _ in range(self.settings.max_steps):
            try:
                reply = yield from self._call_model()
            except ToolsUnsupported:
                self.backend.tools_supported = False  # for the rest of this backend's life, not just this turn
                yield from self._planned(asked=True)
                return
            except ModelUnavailableError as error:
                yield self.conversation.end_turn(model_unavailable(error))
                return
            except PrivacyError as error:
                yield self.conversation.end_turn(TurnError(message=str(error), reason="other", offline_available=True))
                return
            if reply.text:
                yield AssistantText(text=reply.text)
            if reply.tool_calls:
                responses = yield from self._answer_calls(reply.tool_calls)
                self._commit(_model_content(reply), responses)
                continue
            if not reply.text:
                yield self.conversation.end_turn(TurnError(
                    message="The model returned an empty answer; ask again.", reason="other", offline_available=True))
                return
            self._commit(_model_content(reply))
            if reply.finish == "length":
                yield self.conversation.end_turn(truncated())
            return
        yield self.conversation.end_turn(step_limit(self.settings.max_steps))

    def _call_model(self) -> Generator[Event, None, Reply]:
        return (yield from _previewed(self.backend.caller.call(
            self.conversation.history, self.turn.usage, self.conversation.boundary, system=self.backend.system.text,
            purpose="conversation", prompt=self.backend.system, tools=self.backend.tools,
            stream=self.settings.stream)))

    def _answer_calls(self, calls: list[tuple[str, str, str]]) -> Generator[Event, None, dict[str, Any]]:
        """Run every call of the step and answer them together, with any figure for the model."""
        parts, figures = [], []
        for call_id, name, arguments in calls:
            args, problem = _arguments(arguments)
            yield ToolStarted(call_id=call_id, name=name, args=args)
            outcome = (execute(self.conversation.ctx, name, args) if problem is None
                       else ToolOutcome(name, args, ok=False, duration_ms=0.0, error=problem))
            yield outcome.event(call_id)
            parts.append({"function_response": {"id": call_id, "name": name, "response": outcome.response()}})
            if outcome.ok and outcome.name != "load_study":  # load_study's image is the view, sent below
                figures += [a for a in outcome.artifacts if a.for_model]
        parts += self._view_parts()
        for artifact in figures:
            figure = artifact_image(self.conversation.ctx, self.conversation.boundary, artifact,
                                    self.settings.model_image_max_side)
            parts += image_parts(figure) if figure else []
        return {"role": "user", "parts": parts}

    def _view_parts(self) -> list[dict[str, Any]]:
        view = unseen_view(self.conversation, self.settings.model_image_max_side)
        if view is None:
            return []
        return [{"text": view}] if isinstance(view, str) else image_parts(view)

    def _planned(self, *, asked: bool) -> Iterator[Event]:
        """No function calling on this server: the planner chooses and runs the tools, the model
        writes the answer from their results (the planner's own answer if the model fails)."""
        facts = yield from planned_answer(self.conversation, self.turn)
        prompt = load_prompt("answer_from_tools.md")
        contents = [{"role": "user", "parts": [
            {"text": f"Question: {self.turn.message}\n\nWhat Loupe's tools found:\n{facts}"}]}]
        try:
            reply = yield from self._text_only(contents, prompt)
            answer = reply.text.strip() or facts
        except (ModelUnavailableError, PrivacyError, ToolsUnsupported, _FormatUnsupported) as error:
            answer = f"{facts}\n\n(The model could not word this answer: {error})"
        if asked:  # the clinician's message is already in the history
            self.conversation.extend_history([{"role": "model", "parts": [{"text": answer}]}])
        else:
            self.conversation.note_exchange(self.turn.message, answer)
        yield AssistantText(text=answer)

    def _text_only(self, contents: list[dict[str, Any]], prompt: Prompt) -> Generator[Event, None, Reply]:
        return (yield from _previewed(self.backend.caller.call(
            contents, self.turn.usage, self.conversation.boundary, system=prompt.text,
            purpose="answer from tool results", prompt=prompt, stream=self.settings.stream)))

    def _commit(self, *contents: dict[str, Any]) -> None:
        self.conversation.extend_history(list(contents))



def _model_content(reply: Reply) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": reply.text}] if reply.text else []
    for call_id, name, arguments in reply.tool_calls:
        args, _ = _arguments(arguments)
        parts.append({"function_call": {"id": call_id, "name": name, "args": args}})
    return {"role": "model", "parts": parts}


def _arguments(text: str) -> tuple[dict[str, Any], str | None]:
    """The call's arguments, or ``{}`` and why they cannot be used (never evaluated, only parsed)."""
    if not text.strip():
        return {}, None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}, "The arguments of this call were not valid JSON; call the tool again with a JSON object."
    if not isinstance(value, dict):
        return {}, "The arguments of this call must be a JSON object of named parameters."
    return value, None


# -- proposals and report wording ---------------------------------------------------------------------


class _JsonAsker:
    """A separate call for JSON (proposals, report wording): a JSON schema where the server
    takes ``response_format``, plain text and tolerant parsing once it has refused one."""

    def __init__(self, caller: OpenAICaller):
        self.caller = caller
        self.name = caller.settings.openai_model or "openai"
        self.usage = Usage()
        self.boundary = PrivacyBoundary()
        self.structured = caller.settings.openai_structured_output

    def _ask(self, contents: list[dict[str, Any]], schema_name: str, schema: dict[str, Any],
             **options: Any) -> Reply:
        if self.structured:
            try:
                return _drained(self.caller.call(contents, self.usage, self.boundary, **options,
                                                 response_format=_schema_format(schema_name, schema)))
            except _FormatUnsupported:
                self.structured = False  # this server decodes freely; the parsing is tolerant
        return _drained(self.caller.call(contents, self.usage, self.boundary, **options))


class OpenAIVisionProposer(_JsonAsker):
    """Detection proposals from the served model, in ``LOUPE_OPENAI_BOX_FORMAT``, converted to
    box_2d and validated like Gemini's."""

    def __init__(self, caller: OpenAICaller):
        super().__init__(caller)
        #: Why items of the last answers were rejected (for logs, tests and the clinician).
        self.rejected: list[str] = []

    def propose(self, image_png: bytes, *, modality: str | None, samples: int) -> list[VisionProposal]:
        # Prepared under the conversation's image policy; on the premises, for this server only.
        self.boundary.approve(image_png, onsite_only=self.boundary.on_premises)
        with Image.open(io.BytesIO(image_png)) as image:
            sent_size = image.size
        box_format = self.caller.settings.openai_box_format
        contents = [{"role": "user", "parts": [png_part(image_png),
                                               {"text": "Localise the abnormalities in this image."}]}]
        options = {"system": detection_system(modality, box_format), "purpose": "detection",
                   "prompt": load_prompt("detection_boxes.md"), "temperature": self.caller.settings.detection_temperature}
        proposals: list[VisionProposal] = []
        self.rejected = []
        for sample in range(samples):
            reply = self._ask(contents, "proposals", PROPOSALS_SCHEMA, **options)
            parsed = parse_proposals(reply.text, sample=sample, box_format=box_format, sent_size=sent_size)
            proposals += parsed.proposals
            self.rejected += parsed.rejected
        return proposals


class OpenAIReportWriter(_JsonAsker):
    """The report's narrative worded by the served model."""

    def write(self, report: ClinicalReport, instruction: str) -> ReportNarrative:
        prompt = load_prompt("report.md")
        facts = report.model_dump_json(include={"study", "findings", "impression", "recommendations"})
        contents = [{"role": "user", "parts": [{"text": f"Instruction: {instruction}\n\nReport: {facts}"}]}]
        reply = self._ask(contents, "report", ReportNarrative.model_json_schema(), system=prompt.text,
                          purpose="report", prompt=prompt, temperature=0.3)
        try:
            return ReportNarrative.model_validate_json(_json_object(reply.text))
        except ValueError as error:
            raise ModelUnavailableError("The model's wording of the report could not be read; the template is "
                                        "used.") from error


def _json_object(text: str) -> str:
    """The JSON object in a reply that may wrap it in fences or words."""
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if 0 <= start < end else text


def _schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


PROPOSALS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"findings": {"type": "array", "maxItems": MAX_PROPOSALS, "items": {
        "type": "object",
        "properties": {"box_2d": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                       "label": {"type": "string"}, "confidence": {"type": "number"}},
        "required": ["box_2d", "label"]}}},
    "required": ["findings"],
}


def detection_system(modality: str | None, box_format: str) -> str:
    hints = load_table("detection_hints.toml")
    hint = hints.get((modality or "").upper(), hints["default"])
    return load_prompt("detection_boxes.md").text.format(
        modality_name=hint["name"], modality_hint=hint["hint"], max_boxes=MAX_PROPOSALS,
        box_example=_BOX_EXAMPLES[box_format], box_format=BOX_FORMATS[box_format])
