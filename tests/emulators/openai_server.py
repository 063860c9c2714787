"""An OpenAI chat-completions emulator, scriptable per test.

It follows OpenAI's documented wire format: ``POST /v1/chat/completions``
with ``Authorization: Bearer``, JSON bodies, SSE streams of
``chat.completion.chunk`` ending in ``data: [DONE]``, a usage chunk when
``stream_options.include_usage`` is set, and ``{"error": {...}}`` bodies.

By default it answers ``"Echo: <last user message>"``. Tests queue
behaviours with ``POST /_emulator/script`` (one per upcoming request):

    {"content": "Hi", "chunks": ["H", "i"]}          a specific answer
    {"tool_calls": [{"id": ..., "type": "function", "function": {...}}]}
    {"status": 429, "error": "slow down", "headers": {"retry-after": "7"}}
    {"cut_after": 2}                                 break the stream after 2 chunks
    {"malformed": true}                              a body that is not JSON
    {"delay_s": 0.5}                                 wait before answering

``GET /_emulator/requests`` returns what it received; ``POST /_emulator/reset``
clears both. Run it alone with ``python -m tests.emulators.openai_server --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["EmulatorState", "create_app"]


class EmulatorState:
    def __init__(self, api_key: str | None = None, model: str = "gpt-4o-mini") -> None:
        self.api_key = api_key
        self.model = model
        self.script: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []

    def next_behaviour(self) -> dict[str, Any]:
        return self.script.pop(0) if self.script else {}


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
        behaviour = state.next_behaviour()
        if behaviour.get("delay_s"):
            await asyncio.sleep(behaviour["delay_s"])
        if "status" in behaviour:
            return _error(
                behaviour["status"],
                behaviour.get("error", "emulated failure"),
                behaviour.get("type", "server_error"),
                behaviour.get("code"),
                behaviour.get("headers"),
            )
        if behaviour.get("malformed"):
            return Response(b"<html>502 Bad Gateway</html>", media_type="application/json")
        content = behaviour.get("content", f"Echo: {_last_user_text(body)}")
        chunks = behaviour.get("chunks") or [word + " " for word in content.split(" ")[:-1]] + [content.split(" ")[-1]]
        tool_calls = behaviour.get("tool_calls")
        usage = {"prompt_tokens": 11, "completion_tokens": len(chunks), "total_tokens": 11 + len(chunks)}
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        finish = "tool_calls" if tool_calls else behaviour.get("finish_reason", "stop")
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else content}
            if tool_calls:
                message["tool_calls"] = tool_calls
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": state.model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                    "usage": usage,
                    "system_fingerprint": "fp_emulator",
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            _stream(completion_id, created, state.model, chunks, tool_calls, finish, usage, include_usage, behaviour),
            media_type="text/event-stream",
        )

    async def script(request: Request) -> Response:
        items = await request.json()
        state.script.extend(items if isinstance(items, list) else [items])
        return JSONResponse({"queued": len(state.script)})

    async def requests(request: Request) -> Response:
        return JSONResponse(state.requests)

    async def reset(request: Request) -> Response:
        state.script.clear()
        state.requests.clear()
        return JSONResponse({"ok": True})

    async def models(request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": state.model, "object": "model", "owned_by": "emulator"}]}
        )

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            Route("/_emulator/script", script, methods=["POST"]),
            Route("/_emulator/requests", requests),
            Route("/_emulator/reset", reset, methods=["POST"]),
        ]
    )
    app.state.emulator = state
    return app


async def _stream(
    completion_id: str,
    created: int,
    model: str,
    chunks: list[str],
    tool_calls: list[dict[str, Any]] | None,
    finish: str,
    usage: dict[str, int],
    include_usage: bool,
    behaviour: dict[str, Any],
) -> AsyncIterator[bytes]:
    def event(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_emulator",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            **extra,
        }
        if include_usage:
            chunk["usage"] = None
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    cut_after = behaviour.get("cut_after")
    yield event({"role": "assistant", "content": "", "refusal": None})
    for index, piece in enumerate(chunks if not tool_calls else []):
        if cut_after is not None and index >= cut_after:
            # Dropping the connection without the closing chunk is what a crashed upstream looks like.
            # The pause lets the client read what was sent first: a reset that overtakes unread
            # data makes the receiving kernel discard it.
            await asyncio.sleep(0.2)
            raise ConnectionResetError("emulated upstream crash")
        if behaviour.get("chunk_delay_s"):
            await asyncio.sleep(behaviour["chunk_delay_s"])
        yield event({"content": piece})
    if tool_calls:
        for index, call in enumerate(tool_calls):
            yield event({"tool_calls": [{"index": index, **call}]})
    yield event({}, finish)
    if include_usage:
        final = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_emulator",
            "choices": [],
            "usage": usage,
        }
        yield b"data: " + json.dumps(final).encode() + b"\n\n"
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
