"""An OpenAI chat-completions emulator, scriptable per test.

It follows OpenAI's documented wire format: ``POST /v1/chat/completions``
with ``Authorization: Bearer``, JSON bodies, SSE streams of
``chat.completion.chunk`` ending in ``data: [DONE]``, a usage chunk when
``stream_options.include_usage`` is set, and ``{"error": {...}}`` bodies.

By default it answers ``"Echo: <last user message>"``. Tests script it with
:class:`OpenAIBehaviour` (see :mod:`tests.emulators.scripting` for the
fields every emulator has), e.g.:

    {"content": "Hi", "chunks": ["H", "i"]}          a specific answer
    {"tool_calls": [{"id": ..., "type": "function", "function": {...}}]}
    {"finish_reason": "content_filter", "content": ""}   a filtered answer
    {"status": 429, "error": "slow down", "headers": {"retry-after": "7"}}
    {"cut_after": 2}                                 break the stream after 2 chunks
    {"malformed": true}                              a body that is not JSON
    {"delay_s": 0.5, "chunk_delay_s": 0.1}           wait before answering / between chunks

Run it alone with ``python -m tests.emulators.openai_server --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.emulators import scripting
from tests.emulators.scripting import Behaviour, control_routes, crash

__all__ = ["EmulatorState", "OpenAIBehaviour", "create_app"]


@dataclass(frozen=True, kw_only=True)
class OpenAIBehaviour(Behaviour):
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str = "stop"
    error_type: str = "server_error"
    """The error body's ``type``."""
    code: str | None = None
    """The error body's ``code``."""


class EmulatorState(scripting.EmulatorState[OpenAIBehaviour]):
    def __init__(self, api_key: str | None = None, model: str = "gpt-4o-mini") -> None:
        super().__init__(OpenAIBehaviour)
        self.api_key = api_key
        self.model = model


def _error(status: int, message: str, type_: str, code: str | None, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            return str(content)
    return ""


def create_app(state: EmulatorState | None = None) -> Starlette:
    state = state or EmulatorState()

    async def chat(request: Request) -> Response:
        raw = await request.body()
        headers = dict(request.headers)
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
        state.requests.append({"body": body, "headers": headers})
        if state.api_key is not None and headers.get("authorization") != f"Bearer {state.api_key}":
            return _error(
                401,
                f"Incorrect API key provided: {headers.get('authorization', '')[7:]}.",
                "invalid_request_error",
                "invalid_api_key",
            )
        behaviour = state.script.next()
        if (early := await behaviour.before_answering()) is not None:
            return early
        if behaviour.status is not None:
            return _error(behaviour.status, behaviour.error, behaviour.error_type, behaviour.code, behaviour.headers)
        if behaviour.malformed:
            return Response(b"<html>502 Bad Gateway</html>", media_type="application/json")
        answer = _Answer(body, behaviour, state.model)
        if not body.get("stream"):
            return JSONResponse(answer.completion())
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = state.tracked(answer.events(include_usage, behaviour))
        return StreamingResponse(events, media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": state.model, "object": "model", "owned_by": "emulator"}]}
        )

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            *control_routes(state),
        ]
    )
    app.state.emulator = state
    return app


class _Answer:
    """One answer: its pieces, tool calls, finish reason and usage, and its two wire forms."""

    def __init__(self, body: dict[str, Any], behaviour: OpenAIBehaviour, model: str) -> None:
        self.model = model
        self.pieces = behaviour.pieces(f"Echo: {_last_user_text(body)}")
        self.tool_calls = behaviour.tool_calls
        self.finish = "tool_calls" if self.tool_calls else behaviour.finish_reason
        self.usage = {"prompt_tokens": 11, "completion_tokens": len(self.pieces),
                      "total_tokens": 11 + len(self.pieces)}  # fmt: skip
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None if self.tool_calls else "".join(self.pieces)}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish, "logprobs": None}],
            "usage": self.usage,
            "system_fingerprint": "fp_emulator",
        }

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "system_fingerprint": "fp_emulator", "choices": choices, **extra}  # fmt: skip
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def _delta(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        return self._event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra)

    async def events(self, include_usage: bool, behaviour: OpenAIBehaviour) -> AsyncIterator[bytes]:
        extra = {"usage": None} if include_usage else {}
        yield self._delta({"role": "assistant", "content": "", "refusal": None}, **extra)
        for index, piece in enumerate(self.pieces if not self.tool_calls else []):
            if behaviour.cut_after is not None and index >= behaviour.cut_after:
                await crash()
            if behaviour.chunk_delay_s:
                await asyncio.sleep(behaviour.chunk_delay_s)
            yield self._delta({"content": piece}, **extra)
        for index, call in enumerate(self.tool_calls or []):
            yield self._delta({"tool_calls": [{"index": index, **call}]}, **extra)
        yield self._delta({}, self.finish, **extra)
        if include_usage:
            yield self._event([], usage=self.usage)
        yield b"data: [DONE]\n\n"


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key")
    args = parser.parse_args()
    uvicorn.run(create_app(EmulatorState(api_key=args.api_key)), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
