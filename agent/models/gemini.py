"""The Gemini backend: the only module that imports google-genai.

``GeminiBackend.run_turn`` is a manual function-calling loop: the model's content is appended to
the history verbatim (thought signatures survive), every function call of a step is executed and
answered in one user turn together with any figure the model should see, and the loop stops at
the model's text answer or at the step limit. ``GeminiVisionProposer`` is the detection source
``detect_anomalies`` consults: a separate structured-output call, several samples.

Every model call goes through ``GeminiCaller``: tenacity retries on 408/429/5xx, timeouts and
connection errors (never on 400), and failures become ``ModelUnavailableError`` with a sentence
for the clinician.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from typing import Any

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from agent.conversation import Conversation, Turn, model_unavailable, step_limit, truncated
from agent.events import AssistantText, AssistantTextDelta, Event, ToolStarted, TurnError, Usage
from agent.models.inputs import ImageForModel, artifact_image, unseen_view
from agent.models.proposals import parse_proposals
from agent.privacy.boundary import PrivacyBoundary
from agent.settings import LoupeSettings
from agent.tool_calls import execute
from prompts import Prompt, load_prompt, load_table
from tools.context import VisionProposal
from tools.errors import ModelUnavailableError, PrivacyError
from tools.registry import model_declarations
from tools.report.document import ClinicalReport, ReportNarrative

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_BLOCKED = {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY"}


def make_client(settings: LoupeSettings) -> genai.Client:
    """A client for the Developer API (key) or Vertex AI, honouring GOOGLE_GEMINI_BASE_URL."""
    http_options = types.HttpOptions(api_version=settings.gemini_api_version, base_url=settings.gemini_base_url,
                                     timeout=int(settings.request_timeout_s * 1000))
    if settings.use_vertexai:
        return genai.Client(vertexai=True, project=settings.google_cloud_project,
                            location=settings.google_cloud_location, http_options=http_options)
    if settings.gemini_api_key is None:
        raise ModelUnavailableError("No Gemini API key is configured (GEMINI_API_KEY); the offline planner can answer.")
    return genai.Client(api_key=settings.gemini_api_key.get_secret_value(), http_options=http_options)


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, genai_errors.APIError):
        return error.code in TRANSIENT_STATUS
    return isinstance(error, httpx2.TransportError)  # timeouts, refused or dropped connections


def _unavailable(error: BaseException) -> ModelUnavailableError:
    if isinstance(error, genai_errors.APIError):
        if error.code == 429:
            return ModelUnavailableError("Gemini is rate-limiting Loupe (429) and did not recover after retries.")
        if error.code in TRANSIENT_STATUS:
            return ModelUnavailableError(f"Gemini is unavailable ({error.code} {error.status or ''}) after retries.".replace(" )", ")"))
        return ModelUnavailableError(f"Gemini refused the request ({error.code}: {error.message or error.status}).")
    if isinstance(error, httpx2.TimeoutException):
        return ModelUnavailableError("Gemini did not answer in time, even after retries.")
    return ModelUnavailableError("Gemini cannot be reached from this machine (connection failed).")


class GeminiCaller:
    """``generate_content`` with retries, usage accounting and clinician-readable failures."""

    def __init__(self, settings: LoupeSettings, client: genai.Client | None = None):
        self.settings = settings
        self.client = client or make_client(settings)

    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception(_is_transient),
            # initial, 2×initial, 4×initial ... plus up to one initial of jitter, so clients that
            # failed together do not retry in lockstep.
            wait=wait_exponential_jitter(initial=self.settings.retry_initial_s, max=self.settings.retry_max_s,
                                         jitter=self.settings.retry_initial_s),
            stop=stop_after_attempt(self.settings.retry_attempts),
            reraise=True,
        )

    def _prepared(self, contents: list[dict[str, Any]], boundary: PrivacyBoundary, purpose: str,
                  prompt: Prompt) -> tuple[list[dict[str, Any]], list[types.Content], dict[str, Any]]:
        outgoing = boundary.outgoing(contents)
        facts = {"model": self.settings.model, "purpose": purpose, "prompt": prompt.name,
                 "prompt_version": prompt.version}
        return outgoing, [types.Content.model_validate(item) for item in outgoing], facts

    def generate(self, contents: list[dict[str, Any]], config: types.GenerateContentConfig, usage: Usage,
                 boundary: PrivacyBoundary, *, purpose: str, prompt: Prompt) -> types.GenerateContentResponse:
        """Send ``contents`` (history dicts) through the privacy boundary, then to Gemini; the
        boundary also writes the request's audit entry, whatever the outcome."""
        outgoing, request, facts = self._prepared(contents, boundary, purpose, prompt)
        try:
            response = self._retrying()(self.client.models.generate_content, model=self.settings.model,
                                        contents=request, config=config)
        except (genai_errors.APIError, httpx2.TransportError) as error:
            raise self._failed(error, boundary, outgoing, facts) from error
        return self._answered(response, usage, boundary, outgoing, facts)

    def stream(self, contents: list[dict[str, Any]], config: types.GenerateContentConfig, usage: Usage,
               boundary: PrivacyBoundary, *, purpose: str, prompt: Prompt
               ) -> Generator[str, None, types.GenerateContentResponse]:
        """Like ``generate``, but yields the answer's text as it arrives and returns the whole
        response (chunks merged, signatures kept). A failure after text was shown is not retried:
        the clinician would see the answer twice."""
        outgoing, request, facts = self._prepared(contents, boundary, purpose, prompt)
        try:
            for attempt in self._retrying():
                with attempt:
                    merged = _MergedResponse()
                    try:
                        for chunk in self.client.models.generate_content_stream(
                                model=self.settings.model, contents=request, config=config):
                            yield from merged.add(chunk)
                    except (genai_errors.APIError, httpx2.TransportError) as error:
                        if merged.shown_text:
                            raise _BrokenStream(error) from error
                        raise
        except _BrokenStream as broken:
            raise self._failed(broken.error, boundary, outgoing, facts) from broken.error
        except (genai_errors.APIError, httpx2.TransportError) as error:
            raise self._failed(error, boundary, outgoing, facts) from error
        return self._answered(merged.response(), usage, boundary, outgoing, facts)

    @staticmethod
    def _failed(error: BaseException, boundary: PrivacyBoundary, outgoing: list[dict[str, Any]],
                facts: dict[str, Any]) -> ModelUnavailableError:
        log.info("Gemini call failed after retries: %s", error)
        unavailable = _unavailable(error)
        boundary.record(outgoing, **facts, outcome="failed", error=unavailable.message)
        return unavailable

    @staticmethod
    def _answered(response: types.GenerateContentResponse, usage: Usage, boundary: PrivacyBoundary,
                  outgoing: list[dict[str, Any]], facts: dict[str, Any]) -> types.GenerateContentResponse:
        call_usage = usage_of(response)
        usage.add(call_usage)
        boundary.record(outgoing, **facts, outcome="answered", usage=call_usage.model_dump())
        return response


class _BrokenStream(Exception):
    """A stream that failed after some of its text was shown (never retried)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _MergedResponse:
    """Streamed chunks put back together as one response, as the history needs it.

    Each chunk is a full response object with some parts; text parts of the same kind are
    joined, parts carrying a thought signature keep it, function calls arrive whole.
    """

    def __init__(self) -> None:
        self.parts: list[types.Part] = []
        self.finish_reason = None
        self.usage_metadata = None
        self.prompt_feedback = None
        self.shown_text = False

    def add(self, chunk: types.GenerateContentResponse) -> Iterator[str]:
        self.usage_metadata = chunk.usage_metadata or self.usage_metadata
        self.prompt_feedback = self.prompt_feedback or chunk.prompt_feedback
        candidate = chunk.candidates[0] if chunk.candidates else None
        if candidate is None:
            return
        self.finish_reason = candidate.finish_reason or self.finish_reason
        for part in (candidate.content.parts or []) if candidate.content else []:
            self._merge(part)
            if part.text and not part.thought:
                self.shown_text = True
                yield part.text

    def _merge(self, part: types.Part) -> None:
        last = self.parts[-1] if self.parts else None
        joinable = (last is not None and last.text is not None and part.text is not None
                    and last.function_call is None and part.function_call is None
                    and bool(last.thought) == bool(part.thought) and last.thought_signature is None)
        if joinable:
            last.text += part.text
            last.thought_signature = part.thought_signature
        else:
            self.parts.append(part.model_copy())

    def response(self) -> types.GenerateContentResponse:
        candidates = []
        if self.parts or self.finish_reason is not None:
            content = types.Content(role="model", parts=self.parts) if self.parts else None
            candidates = [types.Candidate(content=content, finish_reason=self.finish_reason, index=0)]
        return types.GenerateContentResponse(candidates=candidates, usage_metadata=self.usage_metadata,
                                             prompt_feedback=self.prompt_feedback)


def usage_of(response: types.GenerateContentResponse) -> Usage:
    meta = response.usage_metadata
    if meta is None:
        return Usage(model_calls=1)
    image_tokens = sum(d.token_count or 0 for d in meta.prompt_tokens_details or ()
                       if d.modality == types.MediaModality.IMAGE)
    return Usage(prompt_tokens=meta.prompt_token_count or 0, output_tokens=meta.candidates_token_count or 0,
                 thinking_tokens=meta.thoughts_token_count or 0, image_tokens=image_tokens, model_calls=1)


def tool_declarations() -> list[types.Tool]:
    """The registry's tools as the model sees them (schemas from the pydantic input models)."""
    declarations = [types.FunctionDeclaration(name=d["name"], description=d["description"],
                                              parameters_json_schema=d["parameters"]) for d in model_declarations()]
    return [types.Tool(function_declarations=declarations)]


class GeminiBackend:
    """Conversation turns answered by Gemini with Loupe's tools."""

    name = "gemini"

    def __init__(self, settings: LoupeSettings, client: genai.Client | None = None):
        self.settings = settings
        self.caller = GeminiCaller(settings, client)
        self.system = load_prompt("system.md")
        self.config = types.GenerateContentConfig(
            system_instruction=self.system.text,
            tools=tool_declarations(),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="AUTO")),
            thinking_config=types.ThinkingConfig(thinking_budget=settings.thinking_budget),
        )
        self.proposer = GeminiVisionProposer(self.caller)
        self.writer = GeminiReportWriter(self.caller)

    @property
    def model(self) -> str:
        return self.settings.model

    def attach(self, conversation: Conversation, usage: Usage) -> None:
        """Let the conversation's tools use Gemini for proposals and report wording, behind its
        privacy boundary, counting their calls in ``usage``. Pixels go to the cloud: the hold for
        possible burned-in text applies (an on-premises backend may have lifted it for its turns)."""
        conversation.attach_model(self.proposer, self.writer, usage, on_premises=False)

    def run_turn(self, conversation: Conversation, turn: Turn) -> Iterator[Event]:
        self.attach(conversation, turn.usage)
        yield from _TurnLoop(self, conversation, turn).run()


class _TurnLoop:
    """One turn of the manual function-calling loop."""

    def __init__(self, backend: GeminiBackend, conversation: Conversation, turn: Turn):
        self.backend = backend
        self.conversation = conversation
        self.turn = turn
        self.settings = backend.settings

    def run(self) -> Iterator[Event]:
        self._commit(types.Content(role="user", parts=[*self._view_parts(), types.Part(text=self.turn.message)]))
        malformed_retried = False
        for _ in range(self.settings.max_steps):
            try:
                response = yield from self._call_model()
            except ModelUnavailableError as error:
                yield self.conversation.end_turn(model_unavailable(error))
                return
            except PrivacyError as error:
                yield self.conversation.end_turn(TurnError(message=str(error), reason="other", offline_available=True))
                return
            candidate = response.candidates[0] if response.candidates else None
            finish = _finish_reason(candidate)
            if finish == "MALFORMED_FUNCTION_CALL" and not malformed_retried:
                malformed_retried = True  # a sampling slip; asking again usually gives a well-formed call
                continue
            problem = _problem(response, candidate, finish)
            if problem is not None:
                yield self.conversation.end_turn(problem)
                return
            content = candidate.content
            text = "".join(p.text for p in content.parts if p.text and not p.thought)
            if text:
                yield AssistantText(text=text)  # the whole text of the step (the deltas were a preview)
            calls = [p.function_call for p in content.parts if p.function_call]
            if calls:
                # The model's calls and their responses are committed together, never apart.
                responses = yield from self._answer_calls(calls)
                self._commit(content, responses)
                continue
            self._commit(content)
            if finish == "MAX_TOKENS":
                yield self.conversation.end_turn(truncated())
            return
        yield self.conversation.end_turn(step_limit(self.settings.max_steps))

    def _call_model(self) -> Generator[Event, None, types.GenerateContentResponse]:
        caller, arguments = self.backend.caller, (self.conversation.history, self.backend.config, self.turn.usage,
                                                  self.conversation.boundary)
        options = {"purpose": "conversation", "prompt": self.backend.system}
        if not self.settings.stream:
            return caller.generate(*arguments, **options)
        stream = caller.stream(*arguments, **options)
        while True:
            try:
                yield AssistantTextDelta(text=next(stream))
            except StopIteration as done:
                return done.value

    def _answer_calls(self, calls: list[types.FunctionCall]) -> Generator[Event, None, types.Content]:
        """Run every call of the step; answer all of them (and attach figures) in one user turn."""
        parts, figures = [], []
        for index, call in enumerate(calls):
            call_id = call.id or f"call-{self.turn.id}-{index}"
            args = dict(call.args or {})
            yield ToolStarted(call_id=call_id, name=call.name or "", args=args)
            outcome = execute(self.conversation.ctx, call.name or "", args)
            yield outcome.event(call_id)
            parts.append(types.Part(function_response=types.FunctionResponse(
                id=call.id, name=call.name, response=outcome.response())))
            if outcome.ok and outcome.name != "load_study":  # load_study's image is the view, sent below
                figures += [a for a in outcome.artifacts if a.for_model]
        parts += self._view_parts()
        for artifact in figures:
            figure = artifact_image(self.conversation.ctx, self.conversation.boundary, artifact,
                                    self.settings.model_image_max_side)
            parts += _image_parts(figure) if figure else []
        return types.Content(role="user", parts=parts)

    def _view_parts(self) -> list[types.Part]:
        """The current display image, when the model has not seen this study/frame/window yet."""
        view = unseen_view(self.conversation, self.settings.model_image_max_side)
        if view is None:
            return []
        return [types.Part(text=view)] if isinstance(view, str) else _image_parts(view)

    def _commit(self, *contents: types.Content) -> None:
        self.conversation.extend_history([c.model_dump(mode="json", exclude_none=True) for c in contents])



def _image_parts(image: ImageForModel) -> list[types.Part]:
    return [types.Part.from_bytes(data=image.png, mime_type="image/png"), types.Part(text=image.caption)]


def _finish_reason(candidate: types.Candidate | None) -> str | None:
    if candidate is None or candidate.finish_reason is None:
        return None
    reason = candidate.finish_reason
    return reason.value if isinstance(reason, types.FinishReason) else str(reason)


def _problem(response: types.GenerateContentResponse, candidate: types.Candidate | None,
             finish: str | None) -> TurnError | None:
    """Why this response cannot be used, or None when it can."""
    feedback = response.prompt_feedback
    if candidate is None and feedback is not None and feedback.block_reason is not None:
        return TurnError(message="Gemini declined this request (its safety filter blocked the prompt); "
                                 "rephrase it, or use the offline planner.", reason="blocked", offline_available=True)
    if finish in _BLOCKED:
        return TurnError(message=f"Gemini stopped its answer ({finish.lower()} filter); rephrase the question, "
                                 "or use the offline planner.", reason="blocked", offline_available=True)
    if finish == "MALFORMED_FUNCTION_CALL":
        return TurnError(message="Gemini produced a malformed tool call twice; ask again, perhaps more specifically.",
                         reason="malformed")
    if candidate is None or candidate.content is None or not candidate.content.parts:
        if finish == "MAX_TOKENS":
            return TurnError(message="The answer hit the length limit before any text; ask for a shorter answer.",
                             reason="truncated")
        return TurnError(message="Gemini returned an empty answer; ask again.", reason="other", offline_available=True)
    return None


class GeminiVisionProposer:
    """Detection proposals from Gemini: box_2d JSON, several samples, thinking off."""

    def __init__(self, caller: GeminiCaller):
        self.caller = caller
        self.name = caller.settings.model
        self.usage = Usage()
        self.boundary = PrivacyBoundary()
        #: Why items of the last answers were rejected (for logs and tests).
        self.rejected: list[str] = []

    def config(self, modality: str | None) -> types.GenerateContentConfig:
        settings = self.caller.settings
        return types.GenerateContentConfig(
            system_instruction=detection_prompt(modality),
            temperature=settings.detection_temperature,
            response_mime_type="application/json",
            response_json_schema=PROPOSALS_SCHEMA,
            thinking_config=types.ThinkingConfig(thinking_budget=0),
        )

    def propose(self, image_png: bytes, *, modality: str | None, samples: int) -> list[VisionProposal]:
        # The image was prepared under the conversation's image policy (tools.render.model_image).
        self.boundary.approve(image_png)
        contents = [types.Content(role="user", parts=[
            types.Part.from_bytes(data=image_png, mime_type="image/png"),
            types.Part(text="Localise the abnormalities in this image."),
        ]).model_dump(mode="json", exclude_none=True)]
        config = self.config(modality)
        proposals: list[VisionProposal] = []
        self.rejected = []
        for sample in range(samples):
            response = self.caller.generate(contents, config, self.usage, self.boundary, purpose="detection",
                                            prompt=load_prompt("detection.md"))
            parsed = parse_proposals(response.text, sample=sample)
            proposals += parsed.proposals
            self.rejected += parsed.rejected
        return proposals


class GeminiReportWriter:
    """The report's narrative worded by Gemini: a separate structured-output call, thinking off."""

    def __init__(self, caller: GeminiCaller):
        self.caller = caller
        self.name = caller.settings.model
        self.usage = Usage()
        self.boundary = PrivacyBoundary()

    def write(self, report: ClinicalReport, instruction: str) -> ReportNarrative:
        prompt = load_prompt("report.md")
        config = types.GenerateContentConfig(
            system_instruction=prompt.text, temperature=0.3, response_mime_type="application/json",
            response_json_schema=ReportNarrative.model_json_schema(),
            thinking_config=types.ThinkingConfig(thinking_budget=0))
        facts = report.model_dump_json(include={"study", "findings", "impression", "recommendations"})
        contents = [types.Content(role="user", parts=[types.Part(text=f"Instruction: {instruction}\n\nReport: {facts}")])
                    .model_dump(mode="json", exclude_none=True)]
        response = self.caller.generate(contents, config, self.usage, self.boundary, purpose="report", prompt=prompt)
        try:
            return ReportNarrative.model_validate_json(_strip_fences(response.text or ""))
        except ValueError as error:
            raise ModelUnavailableError("Gemini's wording of the report could not be read; the template is used.") from error


def _strip_fences(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[-1].rsplit("```", 1)[0]
    return stripped


PROPOSALS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "maxItems": 25,
    "items": {
        "type": "object",
        "properties": {
            "box_2d": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4},
            "label": {"type": "string"},
            "confidence": {"type": "number"},
        },
        "required": ["box_2d", "label"],
    },
}


def detection_prompt(modality: str | None) -> str:
    hints = load_table("detection_hints.toml")
    hint = hints.get((modality or "").upper(), hints["default"])
    return load_prompt("detection.md").text.format(modality_name=hint["name"], modality_hint=hint["hint"],
                                                   max_boxes=PROPOSALS_SCHEMA["maxItems"])
