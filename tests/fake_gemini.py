"""A fake Gemini API on 127.0.0.1 that the real google-genai SDK talks to over HTTP.

It speaks the REST protocol the SDK uses (``generateContent``, ``streamGenerateContent`` as
server-sent events, ``countTokens``), serves scripted replies in order, can delay a reply or
answer with an HTTP error (fault injection), and records every request for assertions (what
was sent, when, in which order). Replies are dicts shaped like the documented API; JSON
fixtures for them live in ``tests/fixtures/gemini/``.

A reply script item is either a response body (served with 200), or
``{"status": 503, "error": {...}}`` / ``{"delay_s": 2.0, "body": {...}}``, or a callable taking the
request record and returning one of those.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"

Reply = dict[str, Any] | Callable[["Request"], dict[str, Any]]

_STATUS_NAMES = {400: "INVALID_ARGUMENT", 408: "DEADLINE_EXCEEDED", 429: "RESOURCE_EXHAUSTED",
                 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


@dataclass
class Request:
    """One request as the fake server received it."""

    path: str
    model: str
    method: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)

    @property
    def contents(self) -> list[dict[str, Any]]:
        return self.body.get("contents", [])

    def parts(self) -> list[dict[str, Any]]:
        return [part for content in self.contents for part in content.get("parts", [])]

    def images(self) -> list[dict[str, Any]]:
        return [p.get("inlineData") or p.get("inline_data") for p in self.parts() if "inlineData" in p or "inline_data" in p]

    def text(self, *, tools: bool = True) -> str:
        """Everything the request carries except image bytes (contents, system instruction,
        tools, config), for PHI checks; base64 image data would match short strings by chance.
        ``tools=False`` leaves the tool declarations out (Loupe's own words, not the session's)."""
        body = self.body if tools else {k: v for k, v in self.body.items() if k != "tools"}
        return json.dumps(_without_image_data(body), ensure_ascii=False)


def _without_image_data(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<image bytes>" if k == "data" and ("mimeType" in value or "mime_type" in value)
                    else _without_image_data(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_image_data(v) for v in value]
    return value


def image_bytes(inline: dict[str, Any]) -> bytes:
    """The bytes of an ``inlineData`` part (the SDK sends URL-safe base64, maybe unpadded)."""
    data = inline["data"]
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def error_reply(status: int, message: str = "scripted failure") -> dict[str, Any]:
    return {"status": status, "error": {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN")}}


def text_reply(text: str, *, finish: str = "STOP", signature: str | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"text": text}
    if signature:
        part["thoughtSignature"] = signature
    return _response([part], finish)


def call_reply(*calls: tuple[str, dict[str, Any]], signature: str | None = None, text: str | None = None) -> dict[str, Any]:
    """A model turn with one function call per ``(name, args)``; the first carries ``signature``."""
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    for index, (name, args) in enumerate(calls):
        part: dict[str, Any] = {"functionCall": {"id": f"fc-{name}-{index}-{time.monotonic_ns()}", "name": name, "args": args}}
        if signature and index == 0:
            part["thoughtSignature"] = signature
        parts.append(part)
    return _response(parts, "STOP")


def _response(parts: list[dict[str, Any]], finish: str) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 20, "thoughtsTokenCount": 5,
                          "totalTokenCount": 1025,
                          "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 742},
                                                  {"modality": "IMAGE", "tokenCount": 258}]},
        "modelVersion": "gemini-2.5-flash",
        "responseId": f"fake-{time.monotonic_ns()}",
    }


class FakeGemini:
    """The server; use as a context manager or ``start()`` / ``stop()``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeGemini:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    @property
    def remaining(self) -> int:
        return len(self._script)

    def calls(self, method: str | None = None) -> list[Request]:
        """Model calls received (streamed or not), or only those of ``method``."""
        methods = (method,) if method else ("generateContent", "streamGenerateContent")
        return [r for r in self.requests if r.method in methods]

    def _next(self, request: Request) -> dict[str, Any]:
        with self._lock:
            self.requests.append(request)
            if request.method == "countTokens":
                return {"totalTokens": max(1, len(request.text()) // 4)}
            reply = self._script.popleft() if self._script else error_reply(500, "the fake server has no scripted reply left")
        return reply(request) if callable(reply) else reply

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                path = self.path.split("?")[0]
                model, _, method = path.rsplit("/", 1)[-1].partition(":")
                request = Request(path=self.path, model=model, method=method, body=body,
                                  headers={k.lower(): v for k, v in self.headers.items()})
                reply = fake._next(request)
                time.sleep(reply.get("delay_s", 0))
                try:
                    self._send(reply, stream=method == "streamGenerateContent")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test); nothing to answer

            def _send(self, reply: dict[str, Any], *, stream: bool) -> None:
                if "error" in reply:
                    self._write(reply.get("status", 500), "application/json", json.dumps({"error": reply["error"]}).encode())
                    return
                body = reply.get("body", reply)
                if not stream:
                    self._write(200, "application/json", json.dumps(body).encode())
                    return
                events = b"".join(f"data: {json.dumps(chunk)}\r\n\r\n".encode() for chunk in _chunks(body))
                self._write(200, "text/event-stream", events)

            def _write(self, status: int, content_type: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A response split as the API streams it: one part per chunk, usage on the last."""
    candidates = body.get("candidates") or []
    if not candidates:
        return [body]
    parts = candidates[0].get("content", {}).get("parts", [])
    chunks = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        candidate = {"content": {"role": "model", "parts": [part]}, "index": 0}
        if last:
            candidate["finishReason"] = candidates[0].get("finishReason", "STOP")
        chunk: dict[str, Any] = {"candidates": [candidate], "modelVersion": body.get("modelVersion")}
        if last:
            chunk["usageMetadata"] = body.get("usageMetadata")
        chunks.append(chunk)
    return chunks or [body]
