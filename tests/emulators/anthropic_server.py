"""An Anthropic Messages API emulator, scriptable per test.

It follows Anthropic's documented wire format, as the official ``anthropic``
SDK reads it:

* ``POST /v1/messages``; the key in ``x-api-key`` or ``Authorization: Bearer``
  (SDK 2.x sends the latter); ``anthropic-version`` is required.
* Validation like the API's: ``model``, ``max_tokens`` and ``messages`` are
  required, unknown top-level fields are refused, a ``role: system`` message is
  a 400 on version 2023-06-01, ``temperature`` / ``top_p`` / ``top_k`` are a 400
  on 2026-10-21, and every ``tool_use`` must be answered by a ``tool_result`` in
  the next user turn.
* Errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}``
  with a ``request-id`` header; 529 is ``overloaded_error``.
* Streams are named SSE events: ``message_start``, ``content_block_start``,
  ``ping``, ``content_block_delta``, ``content_block_stop``, ``message_delta``,
  ``message_stop``; no ``[DONE]``. Input tokens come in ``message_start``,
  output tokens in ``message_delta``.
* Stop sequences cut the text and report ``stop_reason: stop_sequence``;
  ``max_tokens`` (one word is one token) cuts it with ``max_tokens``.

By default it answers ``"Echo: <last user text>"``. Tests script it with
:class:`AnthropicBehaviour` (see :mod:`tests.emulators.scripting` for the
fields every emulator has), e.g.:

    {"content": "Hi there", "chunks": ["Hi", " there"]}   a specific answer
    {"tool_calls": [{"name": "f", "input": {"x": 1}}]}     tool_use blocks
    {"stop_reason": "refusal", "content": ""}             a refusal
    {"status": 429, "error_type": "rate_limit_error", "error": "slow down", "headers": {"retry-after": "7"}}
    {"error_event_after": 1, "error_type": "overloaded_error"}   an SSE error event after 1 delta
    {"cut_after": 2}                                      drop the connection after 2 deltas
    {"malformed": true}                                   a body that is not the documented JSON
    {"delay_s": 0.5, "chunk_delay_s": 0.1}                wait before answering / between deltas

Run it alone with ``python -m tests.emulators.anthropic_server --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.emulators import scripting
from tests.emulators.scripting import Behaviour, control_routes, crash, cut_at_stop

__all__ = ["AnthropicBehaviour", "EmulatorState", "create_app"]

# Top-level Messages API fields (2023-06-01 plus later optional additions).
KNOWN_FIELDS = frozenset(
    {"model", "max_tokens", "messages", "system", "stop_sequences", "stream", "temperature", "top_p", "top_k",
     "tools", "tool_choice", "metadata", "output_config", "thinking", "service_tier", "container", "cache_control",
     "inference_geo", "speed", "diagnostics"}
)  # fmt: skip
SAMPLING_FIELDS = ("temperature", "top_p", "top_k")
NEW_VERSION = "2026-10-21"
ERROR_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403, "not_found_error": 404,
    "request_too_large": 413, "rate_limit_error": 429, "api_error": 500, "overloaded_error": 529,
}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class AnthropicBehaviour(Behaviour):
    tool_calls: list[dict[str, Any]] | None = None
    """``{"name", "input", "id"?}`` each, answered as ``tool_use`` blocks."""
    stop_reason: str | None = None
    """Overrides the stop reason (``refusal``)."""
    error_type: str | None = None
    """The error's ``type``: ``api_error`` for a status, ``overloaded_error`` for an error event by default."""
    error_event_after: int | None = None
    """Send an ``event: error`` after this many text deltas, then end the stream."""


class EmulatorState(scripting.EmulatorState[AnthropicBehaviour]):
    def __init__(self, api_key: str | None = None) -> None:
        super().__init__(AnthropicBehaviour)
        self.api_key = api_key


class _Refusal(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
    request_id = f"req_{uuid.uuid4().hex[:24]}"
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers={"request-id": request_id, **(headers or {})})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(
        str(block.get("text", "")) for block in content or [] if isinstance(block, dict) and block.get("type") == "text"
    )


def _check_auth(state: EmulatorState, headers: dict[str, str]) -> None:
    if state.api_key is None:
        return
    given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    if not given:
        raise _Refusal(401, "authentication_error", "x-api-key header is required")
    if given != state.api_key:
        raise _Refusal(401, "authentication_error", "invalid x-api-key")


def _tool_use_ids(message: dict[str, Any]) -> set[str]:
    content = message.get("content")
    blocks = content if isinstance(content, list) else []
    return {str(b.get("id")) for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"}


def _tool_result_ids(message: dict[str, Any]) -> set[str]:
    content = message.get("content")
    blocks = content if isinstance(content, list) else []
    return {str(b.get("tool_use_id")) for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"}


def _validate(body: Any, version: str) -> None:
    if not isinstance(body, dict):
        raise _Refusal(400, "invalid_request_error", "The request body is not valid JSON.")
    for name in body:
        if name not in KNOWN_FIELDS:
            raise _Refusal(400, "invalid_request_error", f"{name}: Extra inputs are not permitted")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise _Refusal(400, "invalid_request_error", f"{name}: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise _Refusal(400, "invalid_request_error", "max_tokens: Input should be a valid integer")
    if version >= NEW_VERSION:
        for name in SAMPLING_FIELDS:
            if name in body:
                raise _Refusal(400, "invalid_request_error", f"`{name}` is deprecated for this model.")
    _validate_messages(body["messages"], version)


def _validate_messages(messages: Any, version: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise _Refusal(400, "invalid_request_error", "messages: at least one message is required")
    roles = ("user", "assistant", "system") if version >= NEW_VERSION else ("user", "assistant")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in roles:
            role = message.get("role") if isinstance(message, dict) else None
            raise _Refusal(
                400,
                "invalid_request_error",
                f"messages.{index}.role: Input should be 'user' or 'assistant' (got {role!r}); "
                "use the top-level system parameter for a system prompt",
            )
        if "content" not in message:
            raise _Refusal(400, "invalid_request_error", f"messages.{index}.content: Field required")
        wanted = _tool_use_ids(message)
        following = messages[index + 1] if index + 1 < len(messages) else None
        if wanted and (following is None or not wanted <= _tool_result_ids(following)):
            raise _Refusal(
                400,
                "invalid_request_error",
                f"messages.{index + 1}: `tool_use` ids were found without `tool_result` blocks immediately after",
            )


def _input_tokens(body: dict[str, Any]) -> int:
    words = len(_text_of(body.get("system") or "").split())
    words += sum(len(_text_of(m.get("content")).split()) for m in body["messages"])
    return max(1, words)


def _answer(body: dict[str, Any], behaviour: AnthropicBehaviour) -> tuple[list[str], str, str | None]:
    """The text pieces, the stop reason and the matched stop sequence."""
    last_user = next((m for m in reversed(body["messages"]) if m.get("role") == "user"), {})
    pieces, stop = cut_at_stop(
        behaviour.pieces(f"Echo: {_text_of(last_user.get('content'))}"), body.get("stop_sequences") or []
    )
    if stop is not None:
        return pieces, "stop_sequence", stop
    if len(pieces) > body["max_tokens"]:
        return pieces[: body["max_tokens"]], "max_tokens", None
    default = "tool_use" if behaviour.tool_calls else "end_turn"
    return pieces, behaviour.stop_reason or default, None


def _tool_blocks(behaviour: AnthropicBehaviour) -> list[dict[str, Any]]:
    return [
        {
            "type": "tool_use",
            "id": call.get("id", f"toolu_{uuid.uuid4().hex[:24]}"),
            "name": call["name"],
            "input": call.get("input", {}),
        }
        for call in behaviour.tool_calls or []
    ]


def create_app(state: EmulatorState | None = None) -> Starlette:
    state = state or EmulatorState()

    async def messages(request: Request) -> Response:
        raw = await request.body()
        headers = dict(request.headers)
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = None
        state.requests.append({"path": request.url.path, "headers": headers, "body": body})
        try:
            _check_auth(state, headers)
            version = headers.get("anthropic-version")
            if not version:
                raise _Refusal(400, "invalid_request_error", "anthropic-version: header is required")
            _validate(body, version)
        except _Refusal as refusal:
            return _error(refusal.status, refusal.kind, refusal.message)
        behaviour = state.script.next()
        if (early := await behaviour.before_answering()) is not None:
            return early
        if behaviour.status is not None:
            kind = behaviour.error_type or "api_error"
            return _error(behaviour.status, kind, behaviour.error, behaviour.headers)
        if body.get("stream"):
            events = state.tracked(_stream(body, behaviour))
            return StreamingResponse(events, media_type="text/event-stream", headers={"request-id": "req_stream"})
        if behaviour.malformed:
            return Response(b"<html>502 Bad Gateway</html>", media_type="application/json")
        return JSONResponse(_message(body, behaviour))

    async def models(request: Request) -> Response:
        model = {
            "type": "model",
            "id": "claude-sonnet-4-6",
            "display_name": "Claude",
            "created_at": "2025-09-29T00:00:00Z",
        }
        return JSONResponse({"data": [model], "has_more": False, "first_id": model["id"], "last_id": model["id"]})

    app = Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/models", models),
            *control_routes(state),
        ]
    )
    app.state.emulator = state
    return app


def _message(body: dict[str, Any], behaviour: AnthropicBehaviour) -> dict[str, Any]:
    pieces, stop_reason, stop_sequence = _answer(body, behaviour)
    text = "".join(pieces)
    tools = _tool_blocks(behaviour)
    content = ([{"type": "text", "text": text}] if text else []) + tools
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": _input_tokens(body), "output_tokens": max(1, len(pieces) + len(tools))},
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def _stream(body: dict[str, Any], behaviour: AnthropicBehaviour) -> AsyncIterator[bytes]:
    pieces, stop_reason, stop_sequence = _answer(body, behaviour)
    start = {**_message(body, behaviour), "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {"input_tokens": start["usage"]["input_tokens"], "output_tokens": 1}
    yield _event("message_start", {"type": "message_start", "message": start})
    if behaviour.malformed:
        yield b"event: content_block_delta\ndata: <html>502 Bad Gateway</html>\n\n"
        return
    index = 0
    if pieces:
        yield _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        yield _event("ping", {"type": "ping"})
        for sent, piece in enumerate(pieces):
            if behaviour.cut_after is not None and sent >= behaviour.cut_after:
                await crash()
            if behaviour.error_event_after is not None and sent >= behaviour.error_event_after:
                error = {"type": behaviour.error_type or "overloaded_error", "message": behaviour.error}
                yield _event("error", {"type": "error", "error": error})
                return
            if behaviour.chunk_delay_s:
                await asyncio.sleep(behaviour.chunk_delay_s)
            delta = {"type": "text_delta", "text": piece}
            yield _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        index = 1
    tools = _tool_blocks(behaviour)
    for offset, block in enumerate(tools):
        at = index + offset
        yield _event(
            "content_block_start", {"type": "content_block_start", "index": at, "content_block": {**block, "input": {}}}
        )
        arguments = json.dumps(block["input"])
        for part in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
            delta = {"type": "input_json_delta", "partial_json": part}
            yield _event("content_block_delta", {"type": "content_block_delta", "index": at, "delta": delta})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": at})
    output_tokens = max(1, len(pieces) + len(tools))
    delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
    yield _event("message_delta", {"type": "message_delta", "delta": delta, "usage": {"output_tokens": output_tokens}})
    yield _event("message_stop", {"type": "message_stop"})


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
