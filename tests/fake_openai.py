"""A fake OpenAI-compatible Chat Completions server on 127.0.0.1 that the real ``openai`` SDK
talks to over HTTP (the protocol vLLM, Ollama and LM Studio serve).

It speaks ``POST /v1/chat/completions`` (a ``chat.completion`` object, or server-sent
``chat.completion.chunk`` events when the request asks for ``"stream": true``) and
``GET /v1/models``, serves scripted replies in order, can delay a reply or answer with an HTTP
error (fault injection), and records every request for assertions (what was sent, when, in which
order). ``url`` includes ``/v1``: it is what ``openai.OpenAI(base_url=...)`` takes.

A reply script item is either a ``chat.completion`` body (served with 200; build one with
``text_reply`` / ``call_reply`` / ``raw_call_reply``), or an error from ``error_reply`` /
``tools_unsupported_reply`` (``{"status": 429, "error": {...}, "retry_after": ...}``), or
``{"delay_s": 2.0, "body": {...}}`` (a top-level ``"delay_s"`` on any reply dict works too), or a
callable taking the request record and returning one of those. Errors apply to streamed and
non-streamed requests alike: the status comes before any body.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

Reply = dict[str, Any] | Callable[["Request"], dict[str, Any]]

USAGE = {"prompt_tokens": 1000, "completion_tokens": 20, "total_tokens": 1020}

# What vLLM answers (400) when a request carries tools but the server was started without
# --enable-auto-tool-choice / --tool-call-parser.
VLLM_TOOLS_UNSUPPORTED = "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set"

_ERROR_TYPES = {400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
                403: ("permission_error", None), 404: ("invalid_request_error", "not_found"),
                408: ("timeout", None), 409: ("conflict", None), 422: ("invalid_request_error", None),
                429: ("requests", "rate_limit_exceeded"), 500: ("server_error", None),
                502: ("server_error", None), 503: ("server_error", "overloaded"), 504: ("server_error", None)}

_ids = itertools.count(1)


@dataclass
class Request:
    """One request as the fake server received it."""

    method: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)

    @property
    def model(self) -> str | None:
        return self.body.get("model")

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages") or []

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        return self.body.get("tools")

    def parts(self) -> list[dict[str, Any]]:
        """Every content part (``{"type": "text"|"image_url", ...}``) of every message."""
        return [part for message in self.messages if isinstance(message.get("content"), list)
                for part in message["content"] if isinstance(part, dict)]

    def text(self) -> str:
        """Every text the messages carry (string contents, text parts, tool results, tool call
        arguments), one per line, for PHI checks; image bytes are left out (base64 would match
        short strings by chance)."""
        texts: list[str] = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(part["text"] for part in content
                             if isinstance(part, dict) and isinstance(part.get("text"), str))
            for call in message.get("tool_calls") or []:
                arguments = (call.get("function") or {}).get("arguments")
                if isinstance(arguments, str):
                    texts.append(arguments)
        return "\n".join(texts)

    def body_text(self, *, tools: bool = True) -> str:
        """The whole request body as JSON (every field, not only the texts ``text`` collects),
        with each ``data:`` URL's bytes left out, for PHI checks; ``tools=False`` also leaves out
        the tool declarations (Loupe's own words, not the session's)."""
        body = self.body if tools else {k: v for k, v in self.body.items() if k != "tools"}
        return json.dumps(_without_image_data(body), ensure_ascii=False)

    def images(self) -> list[bytes]:
        """The decoded bytes of every ``image_url`` part sent as a ``data:image/...;base64,`` URL."""
        found = []
        for part in self.parts():
            if part.get("type") != "image_url":
                continue
            image_url = part.get("image_url")
            url = image_url.get("url", "") if isinstance(image_url, dict) else str(image_url or "")
            head, _, data = url.partition(",")
            if head.startswith("data:image/") and head.endswith(";base64"):
                found.append(base64.b64decode(data + "=" * (-len(data) % 4)))
        return found


def _without_image_data(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<image bytes>" if k == "url" and isinstance(v, str) and v.startswith("data:")
                    else _without_image_data(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_image_data(v) for v in value]
    return value


def error_reply(status: int, message: str = "scripted failure", *, retry_after: float | None = None) -> dict[str, Any]:
    """An HTTP error with OpenAI's body shape; ``retry_after`` (seconds) adds a ``retry-after`` header."""
    kind, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"status": status, "retry_after": retry_after,
            "error": {"message": message, "type": kind, "param": None, "code": code}}


def tools_unsupported_reply(message: str = VLLM_TOOLS_UNSUPPORTED) -> dict[str, Any]:
    """The 400 of a server without tool calling (vLLM's message by default)."""
    return error_reply(400, message)


def text_reply(text: str, *, finish: str = "stop") -> dict[str, Any]:
    return _completion({"role": "assistant", "content": text}, finish)


def call_reply(*calls: tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], str], text: str | None = None) -> dict[str, Any]:
    """An assistant turn with one tool call per ``(name, args)`` or ``(name, args, call_id)``."""
    return _calls([(call[0], json.dumps(call[1]), call[2] if len(call) > 2 else None) for call in calls], text)


def raw_call_reply(name: str, arguments_text: str, *, call_id: str | None = None) -> dict[str, Any]:
    """A tool call whose ``arguments`` are sent verbatim (e.g. not valid JSON)."""
    return _calls([(name, arguments_text, call_id)], None)


def _calls(calls: list[tuple[str, str, str | None]], text: str | None) -> dict[str, Any]:
    tool_calls = [{"id": call_id or f"call_{next(_ids)}", "type": "function",
                   "function": {"name": name, "arguments": arguments}} for name, arguments, call_id in calls]
    return _completion({"role": "assistant", "content": text, "tool_calls": tool_calls}, "tool_calls")


def _completion(message: dict[str, Any], finish: str) -> dict[str, Any]:
    """A ``chat.completion``; ``model`` is filled in from the request when served."""
    return {
        "id": f"chatcmpl-fake-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": dict(USAGE),
    }


class FakeOpenAI:
    """The server; use as a context manager or ``start()`` / ``stop()``.

    ``require_key``: requests without ``Authorization: Bearer <key>`` get 401.
    ``tool_support=False``: requests carrying ``tools`` get ``tools_unsupported_reply()`` without
    consuming the script. ``model``: the one model ``GET /v1/models`` lists.
    """

    def __init__(self, *, require_key: str | None = None, tool_support: bool = True, model: str = "fake-model") -> None:
        self.require_key = require_key
        self.tool_support = tool_support
        self.model = model
        self.requests: list[Request] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # a short poll interval so that stop() (which waits for the serving loop to notice) is quick
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    @property
    def remaining(self) -> int:
        return len(self._script)

    def calls(self) -> list[Request]:
        """Chat completion requests received (streamed or not), in order."""
        return [r for r in self.requests if r.path.split("?")[0] == "/v1/chat/completions"]

    def _next(self, request: Request) -> dict[str, Any]:
        with self._lock:
            self.requests.append(request)
            if self.require_key is not None and request.headers.get("authorization") != f"Bearer {self.require_key}":
                return error_reply(401, "Incorrect API key provided.")
            route = (request.method, request.path.split("?")[0])
            if route == ("GET", "/v1/models"):
                return {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}]}
            if route != ("POST", "/v1/chat/completions"):
                return error_reply(404, f"Not found: {request.method} {request.path}")
            if not self.tool_support and request.tools:
                return tools_unsupported_reply()
            reply = self._script.popleft() if self._script else error_reply(500, "the fake server has no scripted reply left")
        return reply(request) if callable(reply) else reply

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            do_PUT = do_DELETE = do_PATCH = do_POST

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                request = Request(method=self.command, path=self.path, body=body if isinstance(body, dict) else {"_json": body},
                                  headers={k.lower(): v for k, v in self.headers.items()})
                reply = fake._next(request)
                time.sleep(reply.get("delay_s") or 0)
                try:
                    self._send(reply, request)
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                    pass  # the client gave up (a timeout test); nothing to answer

            def _send(self, reply: dict[str, Any], request: Request) -> None:
                if "error" in reply:
                    headers = {} if reply.get("retry_after") is None else {"Retry-After": str(reply["retry_after"])}
                    self._write(reply.get("status", 500), json.dumps({"error": reply["error"]}).encode(), headers)
                    return
                body = {k: v for k, v in reply.get("body", reply).items() if k != "delay_s"}
                if body.get("object") == "chat.completion":
                    body.setdefault("model", request.model or fake.model)
                if not (request.stream and body.get("object") == "chat.completion"):
                    self._write(200, json.dumps(body).encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("x-request-id", f"req_fake_{next(_ids)}")
                self.end_headers()
                usage = bool((request.body.get("stream_options") or {}).get("include_usage"))
                for chunk in _chunks(body, usage=usage):
                    self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _write(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-request-id", f"req_fake_{next(_ids)}")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _pieces(text: str, count: int = 3) -> list[str]:
    """``text`` cut into at most ``count`` non-empty pieces (a single "" stays one piece)."""
    size = max(1, -(-len(text) // count))
    return [text[i:i + size] for i in range(0, len(text), size)] or [text]


def _chunks(body: dict[str, Any], *, usage: bool) -> list[dict[str, Any]]:
    """A ``chat.completion`` as OpenAI streams it: a role chunk, the text in a few
    ``delta.content`` pieces, each tool call as a header chunk (index, id, type, name) plus its
    arguments over two chunks, a ``finish_reason`` chunk, and the usage chunk if asked for."""
    choice = body["choices"][0]
    message = choice.get("message") or {}
    base = {"id": body.get("id"), "object": "chat.completion.chunk", "created": body.get("created"),
            "model": body.get("model")}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage:
            out["usage"] = None
        return out

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if message.get("content"):
        chunks += [chunk({"content": piece}) for piece in _pieces(message["content"])]
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        chunks.append(chunk({"tool_calls": [{"index": index, "id": call.get("id"), "type": call.get("type", "function"),
                                             "function": {"name": function.get("name"), "arguments": ""}}]}))
        arguments = function.get("arguments") or ""
        half = len(arguments) // 2
        chunks += [chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                   for piece in (arguments[:half], arguments[half:])]
    chunks.append(chunk({}, choice.get("finish_reason") or "stop"))
    if usage:
        chunks.append({**base, "choices": [], "usage": body.get("usage")})
    return chunks
