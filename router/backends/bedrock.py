"""AWS Bedrock Runtime: Converse and ConverseStream over plain aiohttp, signed by botocore.

Requests go out in Converse's shape (``system`` blocks, content blocks,
``toolUse`` / ``toolResult``, ``inferenceConfig``, ``toolConfig``) and come
back as OpenAI answers and chunks. botocore is used for exactly two things,
both of which must match AWS to the byte: SigV4 signing (``SigV4Auth`` with
the standard credential chain) and event-stream decoding. No boto3 client
sits in the request path.

Protocol details the code depends on (checked against botocore's service
model and the official SDK):

* the SigV4 service name is ``bedrock``, not the host's ``bedrock-runtime``;
* the model id is percent-encoded once in the path (``:`` is ``%3A``) and
  SigV4's canonical path encodes it again (``%253A``); the path must be sent
  exactly as signed, hence ``HttpUpstream(encoded_paths=True)``;
* errors carry ``x-amzn-ErrorType`` and a ``{"message"}`` body; streams carry
  modelled exceptions as event-stream messages of type ``exception``.

What Converse cannot do, and how the adapter says so:

* JSON mode: Converse has no ``response_format``. The target never
  advertises ``json_schema`` (the ``capability`` policy routes such requests
  elsewhere) and a JSON-mode request that reaches it anyway is refused.
* Temperature: Converse takes 0..1, OpenAI 0..2; higher values are clamped to 1.
* ``tool_choice: "none"``: Converse has no such choice; the tools are left out
  unless the conversation already holds tool calls (Converse then requires
  them), in which case the model may still call one.
* Guardrail and content-filter stops (``guardrail_intervened``,
  ``content_filtered``) follow the common output rules: an error before any
  output, ``finish_reason: content_filter`` after some.
* Images: only ``data:`` URLs (the gateway never fetches URLs); models differ,
  so image support is off unless the target sets ``supports.images: true``.

>>> from router.config import BedrockTargetConfig
>>> cfg = BedrockTargetConfig(type="bedrock", region="us-east-1", model_id="meta.llama3-70b-instruct-v1:0")
>>> converse_path(cfg.model_id, stream=True)
'/model/meta.llama3-70b-instruct-v1%3A0/converse-stream'
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import orjson

from router.backends._eventstream import EVENT_STREAM, Event, iter_events
from router.backends._openai_input import (
    FunctionTool,
    Image,
    Text,
    conversation,
    data_url,
    function_tools,
    merge_turns,
    parts,
    system_texts,
    tool_calls,
    tool_choice,
    tool_result,
)
from router.backends._output import StreamOutput, answer, tool_call
from router.backends._relay import decode_event
from router.backends._sigv4 import CredentialSource, SigV4Signer
from router.backends.base import capabilities_for
from router.backends.http import UpstreamStream, error_for_status, parse_retry_after, upstream_message
from router.backends.http_backend import Exchange, HttpBackend
from router.chat import ChatChunk, ChatRequest, ChatResult, FinishReason, Message, Usage
from router.config import BedrockTargetConfig
from router.errors import (
    BackendError,
    ContextLengthExceeded,
    HybridRouterError,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
)

__all__ = [
    "BedrockBackend",
    "BedrockStream",
    "CredentialSource",
    "bedrock_error",
    "completion_from_converse",
    "converse_body",
    "converse_path",
]

SIGNING_NAME = "bedrock"

_FINISH: Mapping[str, FinishReason] = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "guardrail_intervened": "content_filter", "content_filtered": "content_filter",
}  # fmt: skip
_MALFORMED = frozenset({"malformed_model_output", "malformed_tool_use"})

# Error types, lower-cased: the HTTP header says "ThrottlingException", the stream "throttlingException".
_AUTH_ERRORS = frozenset(
    {
        "accessdeniedexception", "unrecognizedclientexception", "expiredtokenexception", "expiredtoken",
        "invalidsignatureexception", "missingauthenticationtokenexception", "incompletesignatureexception",
    }
)  # fmt: skip
_THROTTLING_ERRORS = frozenset({"throttlingexception", "modelnotreadyexception", "servicequotaexceededexception"})
_SERVER_ERRORS = frozenset(
    {"internalserverexception", "serviceunavailableexception", "modelerrorexception", "modelstreamerrorexception"}
)

_IMAGE_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "gif": "gif", "webp": "webp"}


def converse_path(model_id: str, *, stream: bool) -> str:
    """The request path, percent-encoded once (``:`` and ``/`` of ARNs included)."""
    return f"/model/{quote(model_id, safe='')}/{'converse-stream' if stream else 'converse'}"


class BedrockBackend(HttpBackend[Event]):
    """Sends requests to Bedrock Runtime's Converse API.

    ``session`` supplies credentials; by default a ``botocore.session.Session``
    for ``config.profile``, i.e. botocore's standard chain.
    """

    def __init__(self, name: str, config: BedrockTargetConfig, *, session: CredentialSource | None = None) -> None:
        self.config = config
        self._signer = SigV4Signer(SIGNING_NAME, config.region, session=session, profile=config.profile)
        # Converse has no JSON mode: never advertised, whatever the config says.
        capabilities = capabilities_for(config.supports, images=False, context_window=config.context_window)
        super().__init__(
            name,
            config,
            model=config.model_id,
            base_url=str(config.endpoint_url or f"https://bedrock-runtime.{config.region}.amazonaws.com"),
            capabilities=replace(capabilities, json_schema=False),
            encoded_paths=True,
        )

    async def start(self) -> None:
        await super().start()
        await self._signer.load()

    def problem(self) -> str | None:
        return self._signer.problem

    def secrets(self) -> tuple[str, ...]:
        return self._signer.secrets()

    def payload(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        """The body sent upstream for ``request``, the same streaming or not."""
        return converse_body(request)

    async def exchange(self, request: ChatRequest, *, stream: bool) -> Exchange:
        body = orjson.dumps(self.payload(request))
        path = converse_path(self.model, stream=stream)
        accept = EVENT_STREAM if stream else "application/json"
        return Exchange(path, body, await self._signer.headers(self._http.base_url + path, body, accept=accept))

    def read_answer(self, body: Any, request: ChatRequest) -> ChatResult:
        return completion_from_converse(body, model=self.model, prompt_text=request.prompt_text)

    def events(self, response: UpstreamStream) -> AsyncIterator[Event]:
        return iter_events(response.chunks())

    def translator(self, request: ChatRequest) -> BedrockStream:
        return BedrockStream(self.model, request.prompt_text)

    def read_error(self, status: int, headers: Mapping[str, str], body: bytes) -> HybridRouterError:
        """Error statuses are read with the ``x-amzn-ErrorType`` header."""
        error_type = headers.get("x-amzn-errortype", "").split(":")[0]
        message, code = upstream_message(body)
        if not error_type and code:
            error_type = code.rpartition("#")[2]
        return bedrock_error(error_type, message, status=status, headers=headers)


def bedrock_error(
    error_type: str, message: str, *, status: int | None = None, headers: Mapping[str, str] | None = None
) -> HybridRouterError:
    """Our error for a Bedrock error type, from an HTTP answer (``status``) or a stream (no status)."""
    kind = error_type.lower()
    headers = headers or {}
    where = (
        f"upstream returned {status} {error_type}" if status else f"upstream stream failed with {error_type}"
    ).rstrip()
    if kind in _AUTH_ERRORS:
        return UpstreamAuthError(f"{where}: the upstream rejected the gateway's credentials")
    if kind in _THROTTLING_ERRORS:
        retry_after = parse_retry_after(headers)
        return UpstreamRateLimited(f"{where}: {message}", retry_after=1.0 if retry_after is None else retry_after)
    if kind == "modeltimeoutexception":
        return UpstreamTimeout(f"{where}: {message}")
    if kind in _SERVER_ERRORS:
        return BackendError(f"{where}: {message}", retry_after=parse_retry_after(headers))
    if kind == "validationexception":
        lowered = message.lower()
        if any(phrase in lowered for phrase in ("too long", "context limit", "context window")):
            return ContextLengthExceeded(f"{where}: {message}", param="messages")
        return UpstreamBadRequest(f"{where}: {message}")
    if kind == "resourcenotfoundexception":
        return UpstreamBadRequest(f"{where}: {message}")
    text = f"{error_type}: {message}" if error_type else message
    return error_for_status(status or 502, text, headers=headers, code=error_type or None)


# --- OpenAI request -> Converse request ------------------------------------------------------------


def converse_body(request: ChatRequest) -> dict[str, Any]:
    """The Converse (and ConverseStream) JSON body for ``request``; ``modelId`` travels in the path."""
    if request.wants_json:
        kind = (request.response_format or {}).get("type")
        raise InvalidRequest(
            f"Bedrock Converse has no JSON mode (response_format {kind}); "
            "route JSON requests to a target that supports them",
            param="response_format",
        )
    messages = _turns(request.messages)
    body: dict[str, Any] = {"messages": messages}
    if system := system_texts(request.messages):
        body["system"] = [{"text": text} for text in system]
    if inference := _inference_config(request):
        body["inferenceConfig"] = inference
    if tool_config := _tool_config(request, messages):
        body["toolConfig"] = tool_config
    return body


def _turns(messages: list[Message]) -> list[dict[str, Any]]:
    """Turns that alternate as Converse requires (same-role neighbours merged, empty ones left out)."""
    turns = (_turn(index, message) for index, message in conversation(messages))
    return [{"role": role, "content": content} for role, content in merge_turns(turns)]


def _turn(index: int, message: Message) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "tool":
        text = message.text()
        result = {"toolUseId": tool_result(message, index), "content": [{"text": text}] if text else []}
        return "user", [{"toolResult": result}]
    # Converse rejects blank text blocks.
    blocks = [_block(part, index) for part in parts(message, index) if not isinstance(part, Text) or part.text]
    if message.role == "assistant":
        blocks += [
            {"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.arguments}}
            for call in tool_calls(message, index)
        ]
    return message.role, blocks


def _block(part: Text | Image, index: int) -> dict[str, Any]:
    if isinstance(part, Text):
        return {"text": part.text}
    image = data_url(part.url)
    image_format = _IMAGE_FORMATS.get(image.mime.removeprefix("image/")) if image else None
    if image is None or not image.mime.startswith("image/") or image_format is None:
        raise InvalidRequest(
            "Bedrock takes images as base64 data: URLs of PNG, JPEG, GIF or WebP (the gateway does not fetch URLs)",
            param=f"messages.{index}.content",
        )
    # REST-JSON blobs travel base64-encoded: the data URL's payload is already that.
    return {"image": {"format": image_format, "source": {"bytes": image.data}}}


def _inference_config(request: ChatRequest) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if (max_tokens := request.effective_max_tokens) is not None:
        config["maxTokens"] = max_tokens
    if request.temperature is not None:
        config["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None:
        config["topP"] = request.top_p
    if stops := request.stop_sequences:
        config["stopSequences"] = stops
    return config


def _tool_config(request: ChatRequest, turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    history = any("toolUse" in block or "toolResult" in block for turn in turns for block in turn["content"])
    if not request.tools:
        if history:
            raise InvalidRequest(
                "Bedrock Converse needs the tool definitions (tools) when the conversation holds tool calls",
                param="tools",
            )
        return None
    tools = function_tools(request.tools)
    choice = tool_choice(request.tool_choice)
    if choice is not None and choice.mode == "none":
        # Converse has no "none": the tools stay out unless the history needs them (then the model may call one).
        return {"tools": [_tool_spec(tool) for tool in tools]} if history else None
    config: dict[str, Any] = {"tools": [_tool_spec(tool) for tool in tools]}
    if choice is not None:
        modes: dict[str, dict[str, Any]] = {"auto": {"auto": {}}, "required": {"any": {}}}
        config["toolChoice"] = modes.get(choice.mode) or {"tool": {"name": choice.name}}
    return config


def _tool_spec(tool: FunctionTool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": tool.name,
        "inputSchema": {"json": tool.parameters or {"type": "object", "properties": {}}},
    }
    if tool.description:
        spec["description"] = tool.description
    return {"toolSpec": spec}


# --- Converse answer -> OpenAI answer --------------------------------------------------------------


def completion_from_converse(body: Any, *, model: str, prompt_text: str) -> ChatResult:
    """The OpenAI ``chat.completion`` for a Converse answer."""
    try:
        content = body["output"]["message"]["content"]
        texts = [block["text"] for block in content if "text" in block]
        uses = [block["toolUse"] for block in content if "toolUse" in block]
        calls = [tool_call(use["toolUseId"], use["name"], use.get("input", {})) for use in uses]
        reason = body["stopReason"]
    except (KeyError, TypeError) as exc:
        raise UpstreamProtocolError("the upstream answer is not a Converse answer") from exc
    return answer(
        model=model,
        text="".join(texts),
        tool_calls=calls,
        finish=_finish(reason),
        why=f"stopReason {reason}",
        usage=_usage(body.get("usage")),
        prompt_text=prompt_text,
    )


def _finish(stop_reason: object) -> FinishReason:
    """OpenAI's finish reason for a Converse ``stopReason``; malformed answers raise."""
    if stop_reason in _MALFORMED:
        raise BackendError(f"the model produced malformed output (stopReason {stop_reason})")
    return _FINISH.get(str(stop_reason), "stop")


def _usage(usage: object) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("inputTokens"), usage.get("outputTokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    # Prompt-cache reads and writes are prompt tokens too, counted apart by Bedrock.
    cached = [usage.get(key) for key in ("cacheReadInputTokens", "cacheWriteInputTokens")]
    return Usage(prompt + sum(count for count in cached if isinstance(count, int)), completion)


class BedrockStream:
    """Turns ConverseStream events into OpenAI chunks."""

    def __init__(self, model: str, prompt_text: str) -> None:
        self._out = StreamOutput(model, prompt_text=prompt_text)
        # contentBlockIndex -> the tool call's index in OpenAI's tool_calls deltas.
        self._tools: dict[int, int] = {}

    def feed(self, event: Event) -> list[ChatChunk]:
        if event.message_type != "event":
            raise bedrock_error(event.name, event.error_message or upstream_message(event.payload)[0])
        payload = decode_event(event.payload)
        try:
            return self._translate(event.name, payload)
        except (KeyError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(f"the upstream sent an invalid {event.name} event") from exc

    def close(self) -> list[ChatChunk]:
        if not self._out.finished:
            raise UpstreamProtocolError("the upstream closed the stream before messageStop")
        return self._out.close()

    def _translate(self, name: str, payload: dict[str, Any]) -> list[ChatChunk]:
        if name == "contentBlockStart" and (tool := payload["start"].get("toolUse")):
            index = self._tools[payload["contentBlockIndex"]] = len(self._tools)
            call = {"index": index, "id": tool["toolUseId"], "type": "function"}
            return self._out.delta({"tool_calls": [{**call, "function": {"name": tool["name"], "arguments": ""}}]})
        if name == "contentBlockDelta":
            delta = payload["delta"]
            if delta.get("text"):
                return self._out.delta({"content": delta["text"]})
            if "toolUse" in delta:
                index = self._tools[payload["contentBlockIndex"]]
                return self._out.delta(
                    {"tool_calls": [{"index": index, "function": {"arguments": delta["toolUse"]["input"]}}]}
                )
        if name == "messageStop" and not self._out.finished:
            reason = payload["stopReason"]
            return self._out.finish(_finish(reason), why=f"stopReason {reason}")
        if name == "metadata":
            self._out.usage(_usage(payload.get("usage")))
        return []
