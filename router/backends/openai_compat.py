"""A backend for any OpenAI-compatible chat-completions endpoint.

OpenAI, vLLM, Ollama, LM Studio and llama.cpp's server all speak this API,
so answers need no translation: bodies pass through, streams are relayed
chunk by chunk as they arrive, under the common output rules
(:mod:`router.backends._output`). The adapter only picks the fields the
upstream accepts, adds the key from the configured env var, asks for usage
on every stream (for token accounting) and checks what comes back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from router.backends._output import StreamOutput, checked_finish, estimate_tokens
from router.backends._relay import SseEvent, decode_event
from router.backends.base import capabilities_for
from router.backends.http import ErrorReader
from router.backends.http_backend import Exchange, SseBackend
from router.chat import ChatChunk, ChatRequest, ChatResult, Usage
from router.config import OpenAITargetConfig
from router.errors import UpstreamProtocolError

__all__ = ["OPENAI_REQUEST_FIELDS", "OpenAIBackend", "OpenAIStream", "openai_payload", "read_completion"]

PATH = "/chat/completions"
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
_FILTER_STOP = "finish_reason content_filter"

Annotations = Callable[[dict[str, Any]], str]
"""Strips a provider's annotations from an answer or chunk, in place; returns why a filter stopped it."""


class OpenAIBackend(SseBackend):
    """Sends requests to an OpenAI-compatible ``/chat/completions`` endpoint.

    >>> config = OpenAITargetConfig(type="openai", base_url="https://api.openai.com/v1", model="gpt-4o-mini",
    ...                             api_key_env="OPENAI_API_KEY")
    >>> OpenAIBackend("cloud", config, environ={}).readiness().reason
    'no API key: OPENAI_API_KEY is not set'
    """

    def __init__(self, name: str, config: OpenAITargetConfig, *, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.config = config
        self._key = env.get(config.api_key_env, "") if config.api_key_env else ""
        super().__init__(
            name,
            config,
            model=config.model,
            base_url=str(config.base_url),
            capabilities=capabilities_for(config.supports, context_window=config.context_window),
            headers={**config.headers, **({"authorization": f"Bearer {self._key}"} if self._key else {})},
        )

    def problem(self) -> str | None:
        if self.config.api_key_env and not self._key:
            return f"no API key: {self.config.api_key_env} is not set"
        return None

    def secrets(self) -> Iterable[str]:
        return (self._key,)

    def payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The body sent upstream for ``request``."""
        return openai_payload(
            request, model=self.model, stream=stream, forward_unknown_fields=self.config.forward_unknown_fields
        )

    async def exchange(self, request: ChatRequest, *, stream: bool) -> Exchange:
        return Exchange(PATH, orjson.dumps(self.payload(request, stream=stream)))

    def read_answer(self, body: Any, request: ChatRequest) -> ChatResult:
        return read_completion(body, request)

    def translator(self, request: ChatRequest) -> OpenAIStream:
        return OpenAIStream(self.model, request.prompt_text, self.read_error)


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


def _no_annotations(body: dict[str, Any]) -> str:
    return _FILTER_STOP


def _choices(body: dict[str, Any]) -> list[dict[str, Any]]:
    choices = body.get("choices")
    if not isinstance(choices, list):
        raise UpstreamProtocolError("the upstream sent malformed choices")
    for choice in choices:
        if not isinstance(choice, dict):
            raise UpstreamProtocolError("the upstream sent malformed choices")
    return choices


def read_completion(body: Any, request: ChatRequest, annotations: Annotations = _no_annotations) -> ChatResult:
    """Check an OpenAI-shaped answer and take its usage (estimated when the upstream sent none)."""
    if not isinstance(body, dict) or not body.get("choices"):
        raise UpstreamProtocolError("the upstream answer has no choices")
    choices = _choices(body)
    why = annotations(body)
    message = choices[0].get("message") or {}
    produced = bool(isinstance(message, dict) and (message.get("content") or message.get("tool_calls")))
    if choices[0].get("finish_reason") == "content_filter":
        checked_finish("content_filter", produced=produced, why=why)
    usage = Usage.from_openai(body.get("usage")) or Usage(estimate_tokens(request.prompt_text), 0)
    return ChatResult(body, usage)


class OpenAIStream:
    """Relays an OpenAI-shaped stream: chunks pass on as they came, usage is read off, ``[DONE]`` ends it."""

    def __init__(
        self, model: str, prompt_text: str, read_error: ErrorReader, annotations: Annotations = _no_annotations
    ) -> None:
        self._out = StreamOutput(model, prompt_text=prompt_text)
        self._read_error = read_error
        self._annotations = annotations
        self._done = False

    def feed(self, event: SseEvent) -> list[ChatChunk]:
        if self._done:
            return []
        if event.data == "[DONE]":
            self._done = True
            return []
        chunk = decode_event(event.data)
        if "error" in chunk:
            raise self._read_error(502, {}, event.data.encode())
        if (usage := chunk.pop("usage", None)) is not None:
            self._out.usage(Usage.from_openai(usage))
        if not chunk.get("choices"):
            return []
        choices = _choices(chunk)
        why = self._annotations(chunk)
        # A request asks for one choice (n <= 1); Azure sends filter annotations without a delta.
        if "delta" not in choices[0]:
            return []
        return self._out.relay(chunk, why=why)

    def close(self) -> list[ChatChunk]:
        if not self._done:
            raise UpstreamProtocolError("the upstream closed the stream before [DONE]")
        return self._out.close()
