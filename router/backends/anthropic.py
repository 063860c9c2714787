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
  content_filter; a refusal before any output raises :class:`ContentFiltered`.
* Errors: HTTP errors and ``event: error`` stream events map onto our tree by
  status (or error ``type``); ``overloaded_error`` (529) is :class:`BackendBusy`,
  with the upstream's ``Retry-After`` kept. Streams carry no ``[DONE]``: one
  that ends before ``message_stop`` raises :class:`UpstreamProtocolError`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.backends.base import Readiness, capabilities_for
from router.backends.http import (
    HttpUpstream,
    UpstreamStream,
    error_for_status,
    iter_sse,
    parse_retry_after,
    scrub,
    upstream_message,
)
from router.chat import (
    ChatChunk,
    ChatRequest,
    ChatResult,
    ChunkMaker,
    FinishReason,
    Message,
    Usage,
    make_completion,
    new_completion_id,
)
from router.config import AnthropicTargetConfig
from router.errors import (
    BackendBusy,
    ContentFiltered,
    HybridRouterError,
    InvalidRequest,
    UpstreamProtocolError,
)

__all__ = ["AnthropicBackend", "anthropic_error", "messages_payload"]

MESSAGES_PATH = "/v1/messages"
# The first API version without temperature, top_p and top_k.
SAMPLING_REMOVED_IN = "2026-10-21"
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.DOTALL)

_FINISH: Mapping[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic's error types and the status each is documented with.
_ERROR_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def anthropic_error(
    target: str, status: int, body: bytes, headers: Mapping[str, str], secrets: Iterable[str]
) -> HybridRouterError:
    """Our error for an Anthropic error body, from an HTTP answer or an ``error`` stream event."""
    message, code = upstream_message(body)
    message = scrub(message, secrets)
    if status == 529 or code == "overloaded_error":
        retry_after = parse_retry_after(headers)
        return BackendBusy(
            f"target {target}: upstream returned {status}: {message}",
            retry_after=retry_after if retry_after is not None else 1.0,
        )
    return error_for_status(target, status, message, headers=headers, code=code)


class _AnthropicUpstream(HttpUpstream):
    """The pooled client, with Anthropic's overloaded (529) status understood."""

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> HybridRouterError:
        return anthropic_error(self.target, status, body, headers, self._secrets())


# --- request: OpenAI -> Anthropic -------------------------------------------------------------


def messages_payload(
    request: ChatRequest, *, target: str, model: str, default_max_tokens: int, version: str
) -> dict[str, Any]:
    """The Messages API body for ``request`` (without ``stream``)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.effective_max_tokens or default_max_tokens,
        "messages": _turns(request.messages, target),
    }
    system = "\n\n".join(m.text() for m in request.messages if m.role in ("system", "developer"))
    if system:
        body["system"] = system
    if request.stop_sequences:
        body["stop_sequences"] = request.stop_sequences
    if version < SAMPLING_REMOVED_IN:
        body.update(_sampling(request))
    if request.tools:
        body["tools"] = [_tool(tool, target) for tool in request.tools]
        body["tool_choice"] = _tool_choice(request.tool_choice, (request.model_extra or {}).get("parallel_tool_calls"))
    if request.wants_json:
        body["output_config"] = {"format": _output_format(request.response_format or {}, target)}
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


def _turns(messages: list[Message], target: str) -> list[dict[str, Any]]:
    """User and assistant turns, adjacent turns of one role merged."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        turn = _turn(message, target)
        if turn is None:
            continue
        if turns and turns[-1]["role"] == turn["role"]:
            turns[-1]["content"] = _blocks(turns[-1]["content"]) + _blocks(turn["content"])
        else:
            turns.append(turn)
    return turns


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _turn(message: Message, target: str) -> dict[str, Any] | None:
    if message.role in ("system", "developer"):
        return None
    if message.role == "user":
        return {"role": "user", "content": _user_content(message.content, target)}
    if message.role == "assistant":
        # An assistant turn with neither text nor tool calls is a 400 (empty content): leave it out.
        blocks = _assistant_blocks(message, target)
        return {"role": "assistant", "content": blocks} if blocks else None
    if message.role == "tool":
        if not message.tool_call_id:
            raise InvalidRequest(f"target {target}: a tool message needs its tool_call_id", param="messages")
        result = {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.text()}
        return {"role": "user", "content": [result]}
    raise InvalidRequest(
        f"target {target}: role {message.role!r} is not supported; send tool results as role 'tool'",
        param="messages",
    )


def _user_content(content: str | list[dict[str, Any]] | None, target: str) -> str | list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return content or ""
    return [_user_block(part, target) for part in content]


def _user_block(part: dict[str, Any], target: str) -> dict[str, Any]:
    kind = part["type"]
    if kind in ("text", "input_text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return {"type": "image", "source": _image_source(str(url or ""), target)}
    raise InvalidRequest(f"target {target}: content parts of type {kind!r} are not supported", param="messages")


def _image_source(url: str, target: str) -> dict[str, Any]:
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    match = _DATA_URL.fullmatch(url)
    if match is None or match["mime"] not in _IMAGE_TYPES:
        raise InvalidRequest(
            f"target {target}: images must be http(s) URLs or base64 data: URLs of JPEG, PNG, GIF or WebP",
            param="messages",
        )
    return {"type": "base64", "media_type": match["mime"], "data": match["data"]}


def _assistant_blocks(message: Message, target: str) -> list[dict[str, Any]]:
    text = message.text()
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for call in message.tool_calls or []:
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id", "")),
                "name": str(function.get("name", "")),
                "input": _arguments(function.get("arguments"), target),
            }
        )
    return blocks


def _arguments(raw: object, target: str) -> dict[str, Any]:
    """A tool call's ``arguments`` JSON string as the object Anthropic wants."""
    if raw is None or raw == "":
        return {}
    try:
        value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(f"target {target}: tool call arguments must be a JSON object", param="messages")
    return value


def _tool(tool: dict[str, Any], target: str) -> dict[str, Any]:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        raise InvalidRequest(f"target {target}: only function tools are supported", param="tools")
    out: dict[str, Any] = {
        "name": function.get("name", ""),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("strict") is not None:
        out["strict"] = bool(function["strict"])
    return out


def _tool_choice(choice: str | dict[str, Any] | None, parallel: object) -> dict[str, Any]:
    out: dict[str, Any]
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict):
        out = {"type": "tool", "name": str((choice.get("function") or {}).get("name", ""))}
    else:
        out = {"type": "auto"}
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def _output_format(response_format: dict[str, Any], target: str) -> dict[str, Any]:
    schema = (response_format.get("json_schema") or {}).get("schema")
    if response_format.get("type") != "json_schema" or not isinstance(schema, dict):
        raise InvalidRequest(
            f"target {target}: Anthropic has no JSON-object mode; send response_format json_schema with a schema",
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
    arguments = orjson.dumps(block.get("input") or {}).decode()
    return {"id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": arguments}}


def _finish(stop_reason: object, target: str, *, produced: bool) -> FinishReason:
    finish = _FINISH.get(str(stop_reason), "stop")
    if finish == "content_filter" and not produced:
        raise ContentFiltered(f"target {target}: the upstream refused to answer (stop_reason refusal)")
    return finish


def completion_from_message(body: Any, *, target: str, model: str, prompt_text: str) -> ChatResult:
    """A ``chat.completion`` for an Anthropic ``message`` body."""
    if not isinstance(body, dict) or body.get("type") != "message" or not isinstance(body.get("content"), list):
        raise UpstreamProtocolError(f"target {target}: the upstream answer is not a message")
    blocks = [block for block in body["content"] if isinstance(block, dict)]
    text = "".join(str(block.get("text", "")) for block in blocks if block.get("type") == "text")
    tool_calls = [_tool_call(block) for block in blocks if block.get("type") == "tool_use"]
    finish = _finish(body.get("stop_reason"), target, produced=bool(text or tool_calls))
    usage = _usage(body.get("usage")) or Usage(_estimate(prompt_text), 0)
    completion = make_completion(
        model=str(body.get("model") or model),
        content=text if text or not tool_calls else None,
        finish_reason=finish,
        usage=usage,
        tool_calls=tool_calls or None,
        completion_id=f"chatcmpl-{body['id']}" if body.get("id") else None,
    )
    return ChatResult(completion, usage)


@dataclass
class _StreamTranslator:
    """Turns Anthropic's named stream events into OpenAI chunks, one event at a time."""

    target: str
    model: str
    maker: ChunkMaker | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stop_reason: object = None
    produced: bool = False
    announced: bool = False
    finished: bool = False
    # Anthropic content-block index -> OpenAI tool_calls index.
    tools: dict[int, int] = field(default_factory=dict)

    def feed(self, data: dict[str, Any]) -> list[ChatChunk]:
        """The chunks for one event; the first opens with the ``role`` chunk, as OpenAI's streams do.

        Nothing goes out before there is output, so a refusal before any output
        still reaches the caller as an error status rather than a broken stream.
        """
        chunks = self._translate(data)
        if chunks and not self.announced and self.maker is not None:
            self.announced = True
            chunks.insert(0, self.maker.delta({"role": "assistant", "content": ""}))
        return chunks

    def _translate(self, data: dict[str, Any]) -> list[ChatChunk]:
        kind = data.get("type")
        if kind == "message_start":
            return self._start(data.get("message"))
        maker = self.maker
        if maker is None:
            if kind in ("ping", "error"):
                return []
            raise UpstreamProtocolError(f"target {self.target}: the stream did not begin with message_start")
        if kind == "content_block_start":
            return self._block_start(maker, data)
        if kind == "content_block_delta":
            return self._block_delta(maker, data)
        if kind == "message_delta":
            self._message_delta(data)
        elif kind == "message_stop":
            return self._stop(maker)
        return []

    def _start(self, message: object) -> list[ChatChunk]:
        if not isinstance(message, dict):
            raise UpstreamProtocolError(f"target {self.target}: message_start carries no message")
        usage = _mapping(message.get("usage"))
        self.prompt_tokens = _prompt_tokens(usage)
        self.completion_tokens = int(usage.get("output_tokens") or 0)
        completion_id = f"chatcmpl-{message['id']}" if message.get("id") else new_completion_id()
        self.maker = ChunkMaker(completion_id, str(message.get("model") or self.model), int(time.time()))
        return []

    def _block_start(self, maker: ChunkMaker, data: dict[str, Any]) -> list[ChatChunk]:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return []
        if block.get("type") == "text" and block.get("text"):
            self.produced = True
            return [maker.delta({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []
        self.produced = True
        index = self.tools[int(data.get("index", 0))] = len(self.tools)
        call = _tool_call(block)
        if not block.get("input"):
            call["function"]["arguments"] = ""
        return [maker.delta({"tool_calls": [{"index": index, **call}]})]

    def _block_delta(self, maker: ChunkMaker, data: dict[str, Any]) -> list[ChatChunk]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        if delta.get("type") == "text_delta" and delta.get("text"):
            self.produced = True
            return [maker.delta({"content": delta["text"]})]
        index = self.tools.get(int(data.get("index", -1)))
        if delta.get("type") == "input_json_delta" and delta.get("partial_json") and index is not None:
            return [maker.delta({"tool_calls": [{"index": index, "function": {"arguments": delta["partial_json"]}}]})]
        return []

    def _message_delta(self, data: dict[str, Any]) -> None:
        delta = data.get("delta")
        if isinstance(delta, dict) and delta.get("stop_reason"):
            self.stop_reason = delta["stop_reason"]
        usage = data.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("output_tokens"), int):
                self.completion_tokens = usage["output_tokens"]
            if isinstance(usage.get("input_tokens"), int):
                self.prompt_tokens = _prompt_tokens(usage)

    def _stop(self, maker: ChunkMaker) -> list[ChatChunk]:
        finish = _finish(self.stop_reason, self.target, produced=self.produced)
        self.finished = True
        usage = Usage(self.prompt_tokens, self.completion_tokens)
        return [maker.delta({}, finish), maker.usage(usage)]


class AnthropicBackend:
    """Sends requests to Anthropic's Messages API with the key from ``api_key_env``.

    >>> config = AnthropicTargetConfig(type="anthropic", model="claude-sonnet-4-6")
    >>> AnthropicBackend("claude", config, environ={}).readiness().reason
    'no API key: ANTHROPIC_API_KEY is not set'
    """

    def __init__(
        self,
        name: str,
        config: AnthropicTargetConfig,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.model = config.model
        self.capabilities = capabilities_for(config.supports, json_schema=False, context_window=config.context_window)
        env = os.environ if environ is None else environ
        self._key = env.get(config.api_key_env, "")
        self._inflight = 0
        headers = {"content-type": "application/json", "anthropic-version": config.anthropic_version}
        if self._key:
            headers["x-api-key"] = self._key
        self._http = _AnthropicUpstream(
            name,
            str(config.base_url),
            timeouts=config.timeouts,
            max_connections=config.max_connections,
            headers=headers,
            secrets=lambda: (self._key,),
        )

    async def start(self) -> None:
        self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    def readiness(self) -> Readiness:
        if not self._key:
            return Readiness(ready=False, reason=f"no API key: {self.config.api_key_env} is not set")
        if not self._http.started:
            return Readiness(ready=False, reason="not started")
        return Readiness(ready=True)

    def stats(self) -> Mapping[str, float]:
        return {"inflight": float(self._inflight)}

    def payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The body sent upstream for ``request``."""
        body = messages_payload(
            request,
            target=self.name,
            model=self.model,
            default_max_tokens=self.config.default_max_tokens,
            version=self.config.anthropic_version,
        )
        if stream:
            body["stream"] = True
        return body

    async def complete(self, request: ChatRequest) -> ChatResult:
        payload = orjson.dumps(self.payload(request, stream=False))
        self._inflight += 1
        try:
            body = await self._http.post_json(MESSAGES_PATH, payload, headers={})
        finally:
            self._inflight -= 1
        return completion_from_message(body, target=self.name, model=self.model, prompt_text=request.prompt_text)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        payload = orjson.dumps(self.payload(request, stream=True))
        self._inflight += 1
        try:
            async with self._http.open_stream(MESSAGES_PATH, payload, headers={}) as response:
                async for chunk in self._relay(response):
                    yield chunk
        finally:
            self._inflight -= 1

    async def _relay(self, response: UpstreamStream) -> AsyncIterator[ChatChunk]:
        translator = _StreamTranslator(self.name, self.model)
        async for event, data in iter_sse(response.lines()):
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise UpstreamProtocolError(f"target {self.name}: the upstream sent an invalid stream event")
            if event == "error" or parsed.get("type") == "error":
                raise self._stream_error(parsed, data)
            for chunk in translator.feed(parsed):
                yield chunk
            if translator.finished:
                return
        raise UpstreamProtocolError(f"target {self.name}: the upstream closed the stream before message_stop")

    def _stream_error(self, parsed: dict[str, Any], data: str) -> HybridRouterError:
        error = _mapping(parsed.get("error"))
        status = _ERROR_STATUS.get(str(error.get("type")), 502)
        return anthropic_error(self.name, status, data.encode(), {}, (self._key,))


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _estimate(text: str) -> int:
    return max(1, len(text) // 4)
