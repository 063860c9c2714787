"""Anthropic's Messages API (``POST {base_url}/v1/messages``) behind the backend contract.

Requests are translated from OpenAI's shape, answers and streams back into it:

* ``system`` / ``developer`` messages become the top-level ``system`` field
  (a ``role: system`` message is a 400 on anthropic-version 2023-06-01);
  adjacent turns of one role are merged, so the ``tool_result`` blocks of one
  assistant turn travel together in the next user turn, as Anthropic requires.
* Tools: OpenAI function tools become ``tools[].input_schema``; assistant
  ``tool_calls`` become ``tool_use`` blocks and ``role: tool`` messages
  ``tool_result`` blocks. ``tool_choice`` auto / none / required /
  ``{"function": {"name"}}`` maps to auto / none / any / tool, and
  ``parallel_tool_calls: false`` to ``disable_parallel_tool_use``.
* JSON: Anthropic has no schema-less JSON mode. A ``json_schema`` response
  format is sent as ``output_config.format`` (structured outputs, newer models
  only), so ``supports.json_schema`` is off unless the operator turns it on and
  the capability policy sends JSON requests elsewhere; ``json_object`` is refused.
* Images: ``data:`` URLs become base64 image blocks, http(s) URLs URL sources.
* Sampling: ``temperature`` / ``top_p`` / ``top_k`` are sent on
  anthropic-version 2023-06-01; version 2026-10-21 removed them (a 400 even at
  their defaults), so they are dropped there. Claude 4.5 and later refuse
  ``temperature`` and ``top_p`` together, so ``top_p`` is sent only alone.
* Finish reasons: end_turn / stop_sequence / pause_turn -> stop, max_tokens /
  model_context_window_exceeded -> length, tool_use -> tool_calls, refusal ->
  content_filter (under the common output rules: an error before any output).
* Errors: HTTP errors and ``event: error`` stream events map onto our tree by
  status (or error ``type``); ``overloaded_error`` (529) is :class:`BackendBusy`,
  with the upstream's ``Retry-After`` kept. Streams carry no ``[DONE]``: one
  that ends before ``message_stop`` raises :class:`UpstreamProtocolError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson

from router.backends._openai_input import (
    FunctionTool,
    Image,
    Text,
    ToolChoice,
    conversation,
    data_url,
    function_tools,
    json_schema,
    merge_turns,
    parts,
    system_texts,
    tool_calls,
    tool_choice,
    tool_result,
)
from router.backends._output import StreamOutput, answer, tool_call
from router.backends._relay import SseEvent, decode_event
from router.backends.base import capabilities_for
from router.backends.http import ErrorReader, error_for_status, parse_retry_after, upstream_message
from router.backends.http_backend import Exchange, SseBackend
from router.chat import ChatChunk, ChatRequest, ChatResult, FinishReason, Message, Usage
from router.config import AnthropicTargetConfig
from router.errors import BackendBusy, HybridRouterError, InvalidRequest, UpstreamProtocolError

__all__ = ["AnthropicBackend", "AnthropicStream", "anthropic_error", "completion_from_message", "messages_payload"]

MESSAGES_PATH = "/v1/messages"
# The first API version without temperature, top_p and top_k.
SAMPLING_REMOVED_IN = "2026-10-21"
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_FINISH: Mapping[str, FinishReason] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}  # fmt: skip
# Anthropic's error types and the status each is documented with.
_ERROR_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "timeout_error": 504, "overloaded_error": 529,
}  # fmt: skip


def anthropic_error(status: int, headers: Mapping[str, str], body: bytes) -> HybridRouterError:
    """Our error for an Anthropic error body, from an HTTP answer or an ``error`` stream event."""
    message, code = upstream_message(body)
    if status == 529 or code == "overloaded_error":
        retry_after = parse_retry_after(headers)
        return BackendBusy(
            f"upstream returned {status}: {message}", retry_after=retry_after if retry_after is not None else 1.0
        )
    return error_for_status(status, message, headers=headers, code=code)


class AnthropicBackend(SseBackend):
    """Sends requests to Anthropic's Messages API with the key from ``api_key_env``.

    >>> config = AnthropicTargetConfig(type="anthropic", model="claude-sonnet-4-6")
    >>> AnthropicBackend("claude", config, environ={}).readiness().reason
    'no API key: ANTHROPIC_API_KEY is not set'
    """

    def __init__(self, name: str, config: AnthropicTargetConfig, *, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.config = config
        self._key = env.get(config.api_key_env, "")
        super().__init__(
            name,
            config,
            model=config.model,
            base_url=str(config.base_url),
            capabilities=capabilities_for(config.supports, json_schema=False, context_window=config.context_window),
            headers={"anthropic-version": config.anthropic_version, **({"x-api-key": self._key} if self._key else {})},
        )

    def problem(self) -> str | None:
        return None if self._key else f"no API key: {self.config.api_key_env} is not set"

    def secrets(self) -> tuple[str, ...]:
        return (self._key,)

    def payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The body sent upstream for ``request``."""
        body = messages_payload(
            request,
            model=self.model,
            default_max_tokens=self.config.default_max_tokens,
            version=self.config.anthropic_version,
        )
        if stream:
            body["stream"] = True
        return body

    async def exchange(self, request: ChatRequest, *, stream: bool) -> Exchange:
        return Exchange(MESSAGES_PATH, orjson.dumps(self.payload(request, stream=stream)))

    def read_answer(self, body: Any, request: ChatRequest) -> ChatResult:
        return completion_from_message(body, model=self.model, prompt_text=request.prompt_text)

    def translator(self, request: ChatRequest) -> AnthropicStream:
        return AnthropicStream(self.model, request.prompt_text, self.read_error)

    def read_error(self, status: int, headers: Mapping[str, str], body: bytes) -> HybridRouterError:
        return anthropic_error(status, headers, body)


# --- request: OpenAI -> Anthropic -------------------------------------------------------------


def messages_payload(request: ChatRequest, *, model: str, default_max_tokens: int, version: str) -> dict[str, Any]:
    """The Messages API body for ``request`` (without ``stream``)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.effective_max_tokens or default_max_tokens,
        "messages": _turns(request.messages),
    }
    if system := "\n\n".join(system_texts(request.messages)):
        body["system"] = system
    if request.stop_sequences:
        body["stop_sequences"] = request.stop_sequences
    if version < SAMPLING_REMOVED_IN:
        body.update(_sampling(request))
    if request.tools:
        body["tools"] = [_tool(tool) for tool in function_tools(request.tools)]
        parallel = (request.model_extra or {}).get("parallel_tool_calls")
        body["tool_choice"] = _tool_choice(tool_choice(request.tool_choice), parallel)
    if request.wants_json:
        body["output_config"] = {"format": _output_format(request.response_format)}
    if request.user:
        body["metadata"] = {"user_id": request.user}
    return body


def _sampling(request: ChatRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if request.temperature is not None:
        out["temperature"] = request.temperature
    elif request.top_p is not None:
        out["top_p"] = request.top_p
    if request.top_k:
        out["top_k"] = request.top_k
    return out


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _turns(messages: list[Message]) -> list[dict[str, Any]]:
    """User and assistant turns; a string stays a string unless merged with a neighbour."""
    turns = (_turn(index, message) for index, message in conversation(messages))
    return [{"role": role, "content": content} for role, content in merge_turns(turns, _text_block)]


def _turn(index: int, message: Message) -> tuple[str, str | list[dict[str, Any]]]:
    if message.role == "user":
        if message.content is None or isinstance(message.content, str):
            return "user", message.content or ""
        return "user", [_user_block(part, index) for part in parts(message, index)]
    if message.role == "assistant":
        # Neither text nor tool calls is a 400 (empty content): such a turn comes out empty and is left out.
        text = message.text()
        blocks = [_text_block(text)] if text else []
        for call in tool_calls(message, index):
            blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments})
        return "assistant", blocks
    result = {"type": "tool_result", "tool_use_id": tool_result(message, index), "content": message.text()}
    return "user", [result]


def _user_block(part: Text | Image, index: int) -> dict[str, Any]:
    if isinstance(part, Text):
        return _text_block(part.text)
    if part.url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    image = data_url(part.url)
    if image is None or image.mime not in _IMAGE_TYPES:
        raise InvalidRequest(
            "images must be http(s) URLs or base64 data: URLs of JPEG, PNG, GIF or WebP",
            param=f"messages.{index}.content",
        )
    return {"type": "image", "source": {"type": "base64", "media_type": image.mime, "data": image.data}}


def _tool(tool: FunctionTool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name, "input_schema": tool.parameters or {"type": "object", "properties": {}}}
    if tool.description:
        out["description"] = tool.description
    if tool.strict is not None:
        out["strict"] = tool.strict
    return out


def _tool_choice(choice: ToolChoice | None, parallel: object) -> dict[str, Any]:
    if choice is not None and choice.mode == "none":
        return {"type": "none"}
    out: dict[str, Any] = {"type": "auto"}
    if choice is not None and choice.mode == "required":
        out = {"type": "any"}
    elif choice is not None and choice.mode == "function":
        out = {"type": "tool", "name": choice.name}
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def _output_format(response_format: dict[str, Any] | None) -> dict[str, Any]:
    schema = json_schema(response_format)
    if schema is None:
        raise InvalidRequest(
            "Anthropic has no JSON-object mode; send response_format json_schema with a schema",
            param="response_format",
        )
    return {"type": "json_schema", "schema": schema}


# --- answer: Anthropic -> OpenAI --------------------------------------------------------------


def _prompt_tokens(usage: Mapping[str, Any]) -> int:
    """Input tokens; cached ones count too, as OpenAI counts them."""
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return sum(value for key in keys if isinstance(value := usage.get(key), int))


def _usage(usage: object) -> Usage | None:
    if not isinstance(usage, dict) or not isinstance(usage.get("output_tokens"), int):
        return None
    return Usage(_prompt_tokens(usage), usage["output_tokens"])


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    return tool_call(str(block.get("id")), str(block.get("name")), block.get("input") or {})


def completion_from_message(body: Any, *, model: str, prompt_text: str) -> ChatResult:
    """A ``chat.completion`` for an Anthropic ``message`` body."""
    if not isinstance(body, dict) or body.get("type") != "message" or not isinstance(body.get("content"), list):
        raise UpstreamProtocolError("the upstream answer is not a message")
    blocks = [block for block in body["content"] if isinstance(block, dict)]
    stop = body.get("stop_reason")
    return answer(
        model=str(body.get("model") or model),
        text="".join(str(block.get("text", "")) for block in blocks if block.get("type") == "text"),
        tool_calls=[_tool_call(block) for block in blocks if block.get("type") == "tool_use"],
        finish=_FINISH.get(str(stop), "stop"),
        why=f"stop_reason {stop}",
        usage=_usage(body.get("usage")),
        prompt_text=prompt_text,
        completion_id=f"chatcmpl-{body['id']}" if body.get("id") else None,
    )


class AnthropicStream:
    """Turns Anthropic's named stream events into OpenAI chunks, one event at a time."""

    def __init__(self, model: str, prompt_text: str, read_error: ErrorReader) -> None:
        self._out = StreamOutput(model, prompt_text=prompt_text)
        self._read_error = read_error
        self._started = False
        self._stop_reason: object = None
        self._prompt_tokens = 0
        self._completion_tokens = 0
        # Anthropic content-block index -> OpenAI tool_calls index.
        self._tools: dict[int, int] = {}

    def feed(self, event: SseEvent) -> list[ChatChunk]:
        data = decode_event(event.data)
        kind = data.get("type")
        if event.name == "error" or kind == "error":
            error = _mapping(data.get("error"))
            raise self._read_error(_ERROR_STATUS.get(str(error.get("type")), 502), {}, event.data.encode())
        if kind == "message_start":
            self._start(data.get("message"))
            return []
        if not self._started:
            if kind == "ping":
                return []
            raise UpstreamProtocolError("the stream did not begin with message_start")
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "message_delta":
            self._message_delta(data)
        elif kind == "message_stop" and not self._out.finished:
            reason = self._stop_reason
            return self._out.finish(_FINISH.get(str(reason), "stop"), why=f"stop_reason {reason}")
        return []

    def close(self) -> list[ChatChunk]:
        if not self._out.finished:
            raise UpstreamProtocolError("the upstream closed the stream before message_stop")
        self._out.usage(Usage(self._prompt_tokens, self._completion_tokens))
        return self._out.close()

    def _start(self, message: object) -> None:
        if not isinstance(message, dict):
            raise UpstreamProtocolError("message_start carries no message")
        usage = _mapping(message.get("usage"))
        self._prompt_tokens = _prompt_tokens(usage)
        self._completion_tokens = int(usage.get("output_tokens") or 0)
        completion_id = f"chatcmpl-{message['id']}" if message.get("id") else None
        self._out.begin(completion_id, str(message.get("model") or ""))
        self._started = True

    def _block_start(self, data: dict[str, Any]) -> list[ChatChunk]:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return []
        if block.get("type") == "text" and block.get("text"):
            return self._out.delta({"content": block["text"]})
        if block.get("type") != "tool_use":
            return []
        index = self._tools[int(data.get("index", 0))] = len(self._tools)
        call = _tool_call(block)
        if not block.get("input"):
            call["function"]["arguments"] = ""
        return self._out.delta({"tool_calls": [{"index": index, **call}]})

    def _block_delta(self, data: dict[str, Any]) -> list[ChatChunk]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        if delta.get("type") == "text_delta" and delta.get("text"):
            return self._out.delta({"content": delta["text"]})
        index = self._tools.get(int(data.get("index", -1)))
        if delta.get("type") == "input_json_delta" and delta.get("partial_json") and index is not None:
            return self._out.delta({"tool_calls": [{"index": index, "function": {"arguments": delta["partial_json"]}}]})
        return []

    def _message_delta(self, data: dict[str, Any]) -> None:
        delta = data.get("delta")
        if isinstance(delta, dict) and delta.get("stop_reason"):
            self._stop_reason = delta["stop_reason"]
        usage = data.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("output_tokens"), int):
                self._completion_tokens = usage["output_tokens"]
            if isinstance(usage.get("input_tokens"), int):
                self._prompt_tokens = _prompt_tokens(usage)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}
