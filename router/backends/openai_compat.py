"""A backend for any OpenAI-compatible chat-completions endpoint.

OpenAI, vLLM, Ollama, LM Studio and llama.cpp's server all speak this API,
so answers need no translation: bodies pass through, streams are relayed
event by event as they arrive. The adapter only picks the fields the
upstream accepts, adds the key from the configured env var, asks for usage
on every stream (for token accounting) and checks what comes back.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from typing import Any

import orjson

from router.backends.base import Readiness, capabilities_for
from router.backends.http import HttpUpstream, UpstreamStream, error_for_status, iter_sse, scrub, upstream_message
from router.chat import ChatChunk, ChatRequest, ChatResult, ChunkMaker, Usage
from router.config import OpenAITargetConfig
from router.errors import UpstreamProtocolError

__all__ = ["OPENAI_REQUEST_FIELDS", "OpenAIBackend", "openai_payload", "read_completion", "relay_sse"]

# Request fields OpenAI documents for chat completions; others are dropped
# unless the target sets forward_unknown_fields (OpenAI rejects unknown ones).
OPENAI_REQUEST_FIELDS = frozenset(
    {
        "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias",
        "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities", "n",
        "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
        "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier",
        "stop", "store", "temperature", "tool_choice", "tools", "top_logprobs", "top_p",
        "user", "verbosity", "web_search_options",
    }
)  # fmt: skip


class OpenAIBackend:
    """Sends requests to an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(
        self,
        name: str,
        config: OpenAITargetConfig,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.model = config.model
        self.capabilities = capabilities_for(config.supports, context_window=config.context_window)
        env = os.environ if environ is None else environ
        self._key = env.get(config.api_key_env, "") if config.api_key_env else ""
        self._inflight = 0
        self._http = HttpUpstream(
            name,
            str(config.base_url),
            timeouts=config.timeouts,
            max_connections=config.max_connections,
            headers={"content-type": "application/json", **config.headers, **self._auth()},
            secrets=lambda: (self._key,),
        )

    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._key}"} if self._key else {}

    async def start(self) -> None:
        self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    def readiness(self) -> Readiness:
        if self.config.api_key_env and not self._key:
            return Readiness(ready=False, reason=f"no API key: {self.config.api_key_env} is not set")
        if not self._http.started:
            return Readiness(ready=False, reason="not started")
        return Readiness(ready=True)

    def stats(self) -> Mapping[str, float]:
        return {"inflight": float(self._inflight)}

    def payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The body sent upstream for ``request``."""
        return openai_payload(
            request, model=self.model, stream=stream, forward_unknown_fields=self.config.forward_unknown_fields
        )

    async def complete(self, request: ChatRequest) -> ChatResult:
        self._inflight += 1
        try:
            body = await self._http.post_json(
                "/chat/completions", orjson.dumps(self.payload(request, stream=False)), headers={}
            )
        finally:
            self._inflight -= 1
        return read_completion(self.name, body, request)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        self._inflight += 1
        try:
            payload = orjson.dumps(self.payload(request, stream=True))
            async with self._http.open_stream("/chat/completions", payload, headers={}) as response:
                async for chunk in self._relay(response, request):
                    yield chunk
        finally:
            self._inflight -= 1

    def _relay(self, response: UpstreamStream, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return relay_sse(self.name, response, request, model=self.model, secrets=(self._key,))


def openai_payload(
    request: ChatRequest, *, model: str, stream: bool, forward_unknown_fields: bool = False
) -> dict[str, Any]:
    """``request`` as an OpenAI chat-completions body for ``model``; streams always ask for usage."""
    raw = request.model_dump(exclude_none=True, exclude={"model", "stream", "stream_options"})
    if not forward_unknown_fields:
        raw = {key: value for key, value in raw.items() if key in OPENAI_REQUEST_FIELDS}
    raw["model"] = model
    if stream:
        raw["stream"] = True
        raw["stream_options"] = {"include_usage": True}
    return raw


def read_completion(target: str, body: Any, request: ChatRequest) -> ChatResult:
    """Check an OpenAI-shaped answer and take its usage (estimated when the upstream sent none)."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
        raise UpstreamProtocolError(f"target {target}: the upstream answer has no choices")
    usage = Usage.from_openai(body.get("usage")) or Usage(_estimate(request.prompt_text), 0)
    return ChatResult(body, usage)


async def relay_sse(
    target: str, response: UpstreamStream, request: ChatRequest, *, model: str, secrets: Iterable[str]
) -> AsyncIterator[ChatChunk]:
    """Relay an OpenAI SSE stream: chunks with choices as they arrive, then one usage chunk.

    Chunks without choices (usage-only, or Azure's leading ``prompt_filter_results``)
    are not relayed; a stream that ends before ``[DONE]`` is a protocol error.
    """
    usage: Usage | None = None
    pieces = 0
    last: ChatChunk | None = None
    async for _event, data in iter_sse(response.lines()):
        if data == "[DONE]":
            break
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(f"target {target}: the upstream sent an invalid stream event") from exc
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError(f"target {target}: the upstream sent an invalid stream event")
        if "error" in chunk:
            message, code = upstream_message(data.encode())
            raise error_for_status(target, 502, scrub(message, secrets), code=code)
        usage = Usage.from_openai(chunk.pop("usage", None)) or usage
        if chunk.get("choices"):
            pieces += 1
            last = chunk
            yield chunk
    else:
        raise UpstreamProtocolError(f"target {target}: the upstream closed the stream before [DONE]")
    if usage is None:
        # Servers that ignore stream_options: one content event is about one token.
        usage = Usage(_estimate(request.prompt_text), pieces)
    ids = last or {}
    maker = ChunkMaker(str(ids.get("id", "")), str(ids.get("model", model)), int(ids.get("created", 0)))
    yield maker.usage(usage)


def _estimate(text: str) -> int:
    return max(1, len(text) // 4)
