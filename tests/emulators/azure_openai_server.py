"""An Azure OpenAI chat-completions emulator, scriptable per test.

It follows Azure's documented wire format, as the official SDK
(``openai.AzureOpenAI``) reads it:

* ``POST /openai/deployments/{deployment}/chat/completions?api-version=...``;
  without ``api-version`` Azure answers 404 ``Resource not found``, an unknown
  deployment is 404 ``DeploymentNotFound``; the deployment picks the model and
  the body's ``model`` is ignored;
* auth is an ``api-key`` header or an Entra ID ``Authorization: Bearer`` token;
  anything else is 401 with Azure's ``{"error": {"code": "401", ...}}`` body;
* unknown request fields are 400 ``Unrecognized request argument supplied``
  (the known ones are the openai SDK's own request type);
* answers carry ``prompt_filter_results`` and per-choice
  ``content_filter_results``; a stream opens with a chunk holding only
  ``prompt_filter_results`` (``choices: []``) and ends with ``data: [DONE]``;
* a blocked prompt is 400 ``content_filter`` with
  ``innererror.content_filter_result``; a blocked answer ends with
  ``finish_reason: "content_filter"``.

By default it answers ``"Echo: <last user message>"``. Tests script it with
:class:`AzureBehaviour` (see :mod:`tests.emulators.scripting` for the
fields every emulator has), e.g.:

    {"content": "Hi", "chunks": ["H", "i"]}          a specific answer
    {"tool_calls": [{"id": ..., "type": "function", "function": {...}}]}
    {"status": 429, "error": "slow down", "headers": {"retry-after": "7"}}
    {"content_filter": "prompt"}                     400 content_filter (violence, medium)
    {"content_filter": "completion", "filter_after": 1}   answer cut with finish_reason content_filter
    {"annotations": true}                            add a filter-only chunk without a delta
    {"cut_after": 2}                                 break the stream after 2 chunks
    {"malformed": true}                              a body that is not JSON
    {"delay_s": 0.5, "chunk_delay_s": 0.1}

Run alone: ``python -m tests.emulators.azure_openai_server --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.emulators import scripting
from tests.emulators.scripting import Behaviour, control_routes, cut_at_stop

__all__ = ["TEST_API_KEY", "TEST_DEPLOYMENT", "TEST_TOKEN", "AzureBehaviour", "AzureEmulatorState", "create_app"]

TEST_API_KEY = "azure-test-key-0123456789abcdef"
TEST_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.emulator-entra-token"
TEST_DEPLOYMENT = "gpt-4o-prod"
KNOWN_FIELDS = frozenset(CompletionCreateParamsBase.__annotations__) | {"stream", "data_sources"}

_SAFE = {"filtered": False, "severity": "safe"}
_SAFE_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_PROMPT_RESULTS = {**_SAFE_RESULTS, "jailbreak": {"filtered": False, "detected": False}}
_BLOCKED_RESULTS = {**_SAFE_RESULTS, "violence": {"filtered": True, "severity": "medium"}}


@dataclass(frozen=True, kw_only=True)
class AzureBehaviour(Behaviour):
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str = "stop"
    code: str | None = None
    """The error body's ``code``; the status when None."""
    content_filter: Literal["prompt", "completion"] | None = None
    """Block the prompt (a 400 ``content_filter``), or cut the answer with ``finish_reason: content_filter``."""
    filter_after: int = 1
    """Pieces of the answer sent before a completion filter stops it."""
    annotations: bool = False
    """Add a filter-only chunk without a ``delta``."""


class AzureEmulatorState(scripting.EmulatorState[AzureBehaviour]):
    def __init__(
        self,
        api_key: str | None = TEST_API_KEY,
        *,
        token: str | None = TEST_TOKEN,
        deployments: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(AzureBehaviour)
        self.api_key = api_key
        self.token = token
        self.deployments = dict(deployments or {TEST_DEPLOYMENT: "gpt-4o-2024-08-06"})

    def authorised(self, headers: Mapping[str, str]) -> bool:
        if self.api_key is not None and headers.get("api-key") == self.api_key:
            return True
        return self.token is not None and headers.get("authorization") == f"Bearer {self.token}"


def _error(
    http_status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return JSONResponse(body, status_code=http_status, headers=headers)


def _filter_error() -> Response:
    return _error(
        400,
        "content_filter",
        "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
        "Please modify your prompt and retry.",
        type=None,
        param="prompt",
        status=400,
        innererror={"code": "ResponsibleAIPolicyViolation", "content_filter_result": _BLOCKED_RESULTS},
    )


def _last_user_text(body: Mapping[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            return str(content)
    return ""


class _Answer:
    """The chunks, tool calls and finish reason of one answer, stops and max_tokens applied."""

    def __init__(self, body: Mapping[str, Any], behaviour: AzureBehaviour, model: str) -> None:
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.tool_calls: list[dict[str, Any]] = behaviour.tool_calls or []
        self.finish = "tool_calls" if self.tool_calls else behaviour.finish_reason
        stops = body.get("stop") or []
        chunks, _ = cut_at_stop(
            behaviour.pieces(f"Echo: {_last_user_text(body)}"), [stops] if isinstance(stops, str) else stops
        )
        if (limit := body.get("max_completion_tokens") or body.get("max_tokens")) and len(chunks) > limit:
            chunks, self.finish = chunks[:limit], "length"
        if behaviour.content_filter == "completion":
            chunks, self.finish = chunks[: behaviour.filter_after], "content_filter"
        self.chunks = [] if self.tool_calls else chunks
        self.filter_results = _BLOCKED_RESULTS if self.finish == "content_filter" else _SAFE_RESULTS
        completion = len(self.chunks) + 5 * len(self.tool_calls)
        self.usage = {"prompt_tokens": 11, "completion_tokens": completion, "total_tokens": 11 + completion}

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None if self.tool_calls else "".join(self.chunks)}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _PROMPT_RESULTS}],
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish,
                    "logprobs": None,
                    "content_filter_results": self.filter_results,
                }
            ],
            "usage": self.usage,
            "system_fingerprint": "fp_azure_emulator",
        }

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if delta is not None:
            choice["delta"] = delta
        choice.update(extra)
        event = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_azure_emulator",
            "choices": [choice],
        }
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    def events(self, include_usage: bool, behaviour: AzureBehaviour) -> list[bytes]:
        prompt = {"id": "", "object": "", "created": 0, "model": "", "choices": []}
        prompt["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _PROMPT_RESULTS}]
        events = [b"data: " + json.dumps(prompt).encode() + b"\n\n"]
        events.append(self.chunk({"role": "assistant", "content": "", "refusal": None}, content_filter_results={}))
        events += [self.chunk({"content": c}, content_filter_results=_SAFE_RESULTS) for c in self.chunks]
        if behaviour.annotations:
            offsets = {"check_offset": 0, "start_offset": 0, "end_offset": 10}
            events.append(self.chunk(None, content_filter_results=_SAFE_RESULTS, content_filter_offsets=offsets))
        for index, call in enumerate(self.tool_calls):
            head = {"index": index, "id": call["id"], "type": "function"}
            arguments = call["function"]["arguments"]
            events.append(
                self.chunk({"tool_calls": [{**head, "function": {"name": call["function"]["name"], "arguments": ""}}]})
            )
            events.append(self.chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}))
        events.append(self.chunk({}, self.finish, content_filter_results=self.filter_results))
        if include_usage:
            final = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                     "choices": [], "usage": self.usage}  # fmt: skip
            events.append(b"data: " + json.dumps(final).encode() + b"\n\n")
        return [*events, b"data: [DONE]\n\n"]


async def _write(events: list[bytes], behaviour: AzureBehaviour) -> AsyncIterator[bytes]:
    cut_after = behaviour.cut_after
    for index, event in enumerate(events):
        # events[0] is the prompt-filter chunk, events[1] the role chunk: count content chunks after them.
        if cut_after is not None and index >= cut_after + 2:
            # A pause first, so the client has read what was sent (aiohttp drops unread data on a reset).
            await asyncio.sleep(0.1)
            raise ConnectionResetError("emulated upstream crash")
        if behaviour.chunk_delay_s:
            await asyncio.sleep(behaviour.chunk_delay_s)
        yield event


def create_app(state: AzureEmulatorState | None = None) -> Starlette:
    state = state or AzureEmulatorState()

    async def chat(request: Request) -> Response:
        deployment = request.path_params["deployment"]
        headers = {key.lower(): value for key, value in request.headers.items()}
        record: dict[str, Any] = {"deployment": deployment, "query": dict(request.query_params), "headers": headers}
        state.requests.append(record)
        if "api-version" not in request.query_params:
            return _error(404, "404", "Resource not found")
        if not state.authorised(headers):
            return _error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
                "key for an active subscription and use a correct regional API endpoint for your resource.",
            )
        if deployment not in state.deployments:
            return _error(404, "DeploymentNotFound", "The API deployment for this resource does not exist.")
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError:
            return _error(400, "BadRequest", "We could not parse the JSON body of your request.")
        record["body"] = body
        if unknown := sorted(set(body) - KNOWN_FIELDS):
            return _error(400, "BadRequest", f"Unrecognized request argument supplied: {unknown[0]}")
        return await _respond(state, state.script.next(), body, state.deployments[deployment])

    app = Starlette(
        routes=[
            Route("/openai/deployments/{deployment}/chat/completions", chat, methods=["POST"]),
            *control_routes(state),
        ]
    )
    app.state.emulator = state
    return app


async def _respond(
    state: AzureEmulatorState, behaviour: AzureBehaviour, body: Mapping[str, Any], model: str
) -> Response:
    if (early := await behaviour.before_answering()) is not None:
        return early
    if behaviour.status is not None:
        code = behaviour.code if behaviour.code is not None else str(behaviour.status)
        return _error(behaviour.status, code, behaviour.error, behaviour.headers)
    if behaviour.content_filter == "prompt":
        return _filter_error()
    if behaviour.malformed:
        return Response(b"<html>502 Bad Gateway</html>", media_type="application/json")
    answer = _Answer(body, behaviour, model)
    if not body.get("stream"):
        return JSONResponse(answer.completion())
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    events = state.tracked(_write(answer.events(include_usage, behaviour), behaviour))
    return StreamingResponse(events, media_type="text/event-stream")


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=TEST_API_KEY)
    parser.add_argument("--deployment", default=TEST_DEPLOYMENT)
    args = parser.parse_args()
    state = AzureEmulatorState(args.api_key, deployments={args.deployment: "gpt-4o-2024-08-06"})
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
