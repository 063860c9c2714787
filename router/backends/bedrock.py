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
* Images: only ``data:`` URLs (the gateway never fetches URLs); models differ,
  so image support is off unless the target sets ``supports.images: true``.

>>> from router.config import BedrockTargetConfig
>>> cfg = BedrockTargetConfig(type="bedrock", region="us-east-1", model_id="meta.llama3-70b-instruct-v1:0")
>>> converse_path(cfg.model_id, stream=True)
'/model/meta.llama3-70b-instruct-v1%3A0/converse-stream'
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import replace
from typing import Any, Protocol, cast
from urllib.parse import quote

import orjson

from router.backends._eventstream import EVENT_STREAM, Event, iter_events, require_botocore
from router.backends.base import Readiness, capabilities_for
from router.backends.http import HttpUpstream, error_for_status, parse_retry_after, scrub, upstream_message
from router.chat import ChatChunk, ChatRequest, ChatResult, ChunkMaker, FinishReason, Message, Usage, make_completion
from router.config import BedrockTargetConfig
from router.errors import (
    BackendError,
    ContentFiltered,
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
    "CredentialSource",
    "bedrock_error",
    "completion_from_converse",
    "converse_body",
    "converse_path",
]

SIGNING_NAME = "bedrock"

_FINISH: Mapping[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
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


class CredentialSource(Protocol):
    """Where AWS credentials come from; ``botocore.session.Session`` is one.

    ``get_credentials`` returns botocore ``Credentials`` (possibly refreshable)
    or None when the chain finds nothing. It may block (files, SSO, instance
    metadata), so it is only ever called off the event loop.
    """

    def get_credentials(self) -> Any: ...


def converse_path(model_id: str, *, stream: bool) -> str:
    """The request path, percent-encoded once (``:`` and ``/`` of ARNs included)."""
    return f"/model/{quote(model_id, safe='')}/{'converse-stream' if stream else 'converse'}"


class _BedrockUpstream(HttpUpstream):
    """HttpUpstream whose error statuses are read with the ``x-amzn-ErrorType`` header."""

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> HybridRouterError:
        error_type = headers.get("x-amzn-errortype", "").split(":")[0]
        message, code = upstream_message(body)
        if not error_type and code:
            error_type = code.rpartition("#")[2]
        return bedrock_error(self.target, error_type, scrub(message, self._secrets()), status=status, headers=headers)


def bedrock_error(
    target: str,
    error_type: str,
    message: str,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> HybridRouterError:
    """Our error for a Bedrock error type, from an HTTP answer (``status``) or a stream (no status)."""
    kind = error_type.lower()
    headers = headers or {}
    source = f"upstream returned {status} {error_type}" if status else f"upstream stream failed with {error_type}"
    where = f"target {target}: {source.rstrip()}"
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
    return error_for_status(target, status or 502, text, headers=headers, code=error_type or None)


class BedrockBackend:
    """Sends requests to Bedrock Runtime's Converse API.

    ``session`` supplies credentials; by default a ``botocore.session.Session``
    for ``config.profile``, i.e. botocore's standard chain.
    """

    def __init__(self, name: str, config: BedrockTargetConfig, *, session: CredentialSource | None = None) -> None:
        self.name = name
        self.config = config
        self.model = config.model_id
        # Converse has no JSON mode: never advertised, whatever the config says.
        self.capabilities = replace(
            capabilities_for(config.supports, images=False, context_window=config.context_window), json_schema=False
        )
        auth = require_botocore("botocore.auth")
        self._signer_class: Any = auth.SigV4Auth
        self._request_class: Any = require_botocore("botocore.awsrequest").AWSRequest
        if session is None:
            session = cast(CredentialSource, require_botocore("botocore.session").Session(profile=config.profile))
        self._session = session
        self._credentials: Any = None
        self._frozen: Any = None
        self._problem: str | None = "not started"
        self._inflight = 0
        base_url = str(config.endpoint_url or f"https://bedrock-runtime.{config.region}.amazonaws.com")
        self._http = _BedrockUpstream(
            name,
            base_url,
            timeouts=config.timeouts,
            max_connections=config.max_connections,
            secrets=self._secrets,
            encoded_paths=True,
        )

    def _secrets(self) -> tuple[str, ...]:
        # The last frozen copy: reading a refreshable credential's attributes could refresh it, on the loop.
        frozen = self._frozen
        return tuple(s for s in (getattr(frozen, "secret_key", ""), getattr(frozen, "token", "")) if s)

    async def start(self) -> None:
        self._http.start()
        try:
            self._credentials = await asyncio.to_thread(self._session.get_credentials)
        except Exception as exc:  # noqa: BLE001 - botocore's chain raises many types (ProfileNotFound, parse errors, ...)
            self._problem = f"no AWS credentials: {type(exc).__name__} while reading the credential chain"
            return
        self._problem = (
            None
            if self._credentials is not None
            else "no AWS credentials: botocore's chain found none (env, shared files, profile, SSO, roles)"
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def readiness(self) -> Readiness:
        if self._problem is not None:
            return Readiness(ready=False, reason=self._problem)
        if not self._http.started:
            return Readiness(ready=False, reason="not started")
        return Readiness(ready=True)

    def stats(self) -> Mapping[str, float]:
        return {"inflight": float(self._inflight)}

    async def complete(self, request: ChatRequest) -> ChatResult:
        body = orjson.dumps(converse_body(request, target=self.name))
        path = converse_path(self.model, stream=False)
        self._inflight += 1
        try:
            headers = await self._signed_headers(path, body, accept="application/json")
            answer = await self._http.post_json(path, body, headers=headers)
        finally:
            self._inflight -= 1
        return completion_from_converse(self.name, answer, self.model, request)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        body = orjson.dumps(converse_body(request, target=self.name))
        path = converse_path(self.model, stream=True)
        self._inflight += 1
        try:
            headers = await self._signed_headers(path, body, accept=EVENT_STREAM)
            async with self._http.open_stream(path, body, headers=headers) as response:
                translator = _StreamTranslator(self.name, self.model, request, self._secrets())
                async for event in iter_events(response.chunks(), target=self.name):
                    for chunk in translator.feed(event):
                        yield chunk
                yield translator.close()
        finally:
            self._inflight -= 1

    async def _signed_headers(self, path: str, body: bytes, *, accept: str) -> dict[str, str]:
        """SigV4 headers for POSTing ``body`` to ``path``, signed over the exact URL that is sent."""
        credentials = await self._frozen_credentials()
        request = self._request_class(
            method="POST",
            url=self._http.base_url + path,
            data=body,
            headers={"content-type": "application/json", "accept": accept},
        )
        self._signer_class(credentials, SIGNING_NAME, self.config.region).add_auth(request)
        return dict(request.headers.items())

    async def _frozen_credentials(self) -> Any:
        """This request's credentials; a due refresh (STS, SSO) runs off the event loop."""
        credentials = self._credentials
        if credentials is None:
            raise UpstreamAuthError(f"target {self.name}: {self._problem or 'no AWS credentials'}")
        refresh_needed = getattr(credentials, "refresh_needed", None)
        try:
            if callable(refresh_needed) and refresh_needed():
                self._frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
            else:
                self._frozen = credentials.get_frozen_credentials()
        except Exception as exc:  # refresh errors come from botocore, STS or SSO
            raise UpstreamAuthError(
                f"target {self.name}: could not refresh the AWS credentials ({type(exc).__name__})"
            ) from exc
        return self._frozen


# --- OpenAI request -> Converse request ------------------------------------------------------------


def converse_body(request: ChatRequest, *, target: str) -> dict[str, Any]:
    """The Converse (and ConverseStream) JSON body for ``request``; ``modelId`` travels in the path."""
    _refuse_json_mode(request, target)
    system, messages = _conversation(request.messages)
    body: dict[str, Any] = {"messages": messages}
    if system:
        body["system"] = system
    if inference := _inference_config(request):
        body["inferenceConfig"] = inference
    if tool_config := _tool_config(request, messages):
        body["toolConfig"] = tool_config
    return body


def _refuse_json_mode(request: ChatRequest, target: str) -> None:
    if request.wants_json:
        kind = (request.response_format or {}).get("type")
        raise InvalidRequest(
            f"target {target}: Bedrock Converse has no JSON mode (response_format {kind}); "
            "route JSON requests to a target that supports them",
            param="response_format",
        )


def _conversation(messages: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System blocks, and turns that alternate as Converse requires (same-role neighbours merged)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if message.role in ("system", "developer"):
            if text := message.text():
                system.append({"text": text})
            continue
        role, blocks = _turn(message, index)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _turn(message: Message, index: int) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "user":
        return "user", _content_blocks(message.content, index)
    if message.role == "assistant":
        return "assistant", _content_blocks(message.content, index) + _tool_uses(message, index)
    if message.role == "tool":
        if not message.tool_call_id:
            raise InvalidRequest("a tool message needs tool_call_id", param=f"messages.{index}.tool_call_id")
        text = message.text()
        result = {"toolUseId": message.tool_call_id, "content": [{"text": text}] if text else []}
        return "user", [{"toolResult": result}]
    raise InvalidRequest(
        f"role {message.role} is not supported by Bedrock Converse; use tools", param=f"messages.{index}.role"
    )


def _content_blocks(content: str | list[dict[str, Any]] | None, index: int) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        # Converse rejects blank text blocks.
        return [{"text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part["type"]
        if kind in ("text", "input_text"):
            if text := str(part.get("text", "")):
                blocks.append({"text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), index))
        else:
            raise InvalidRequest(
                f"content part type {kind} is not supported by Bedrock Converse", param=f"messages.{index}.content"
            )
    return blocks


def _image_block(image: object, index: int) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    header, _, data = str(url or "").partition(",")
    media, _, encoding = header.removeprefix("data:").partition(";")
    image_format = _IMAGE_FORMATS.get(media.removeprefix("image/"))
    if not header.startswith("data:image/") or encoding != "base64" or image_format is None or not data:
        raise InvalidRequest(
            "Bedrock takes images as base64 data: URLs of PNG, JPEG, GIF or WebP (the gateway does not fetch URLs)",
            param=f"messages.{index}.content",
        )
    # REST-JSON blobs travel base64-encoded: the data URL's payload is already that.
    return {"image": {"format": image_format, "source": {"bytes": data}}}


def _tool_uses(message: Message, index: int) -> list[dict[str, Any]]:
    blocks = []
    for call in message.tool_calls or []:
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(
                "tool call arguments must be a JSON object", param=f"messages.{index}.tool_calls"
            ) from exc
        if not isinstance(arguments, dict) or not call.get("id") or not function.get("name"):
            raise InvalidRequest(
                "a tool call needs an id, a function name and JSON-object arguments",
                param=f"messages.{index}.tool_calls",
            )
        blocks.append({"toolUse": {"toolUseId": call["id"], "name": function["name"], "input": arguments}})
    return blocks


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
    if request.tool_choice == "none" and not history:
        return None
    config: dict[str, Any] = {"tools": [_tool_spec(tool, index) for index, tool in enumerate(request.tools)]}
    if choice := _tool_choice(request.tool_choice):
        config["toolChoice"] = choice
    return config


def _tool_spec(tool: dict[str, Any], index: int) -> dict[str, Any]:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
        raise InvalidRequest("only function tools with a name are supported", param=f"tools.{index}")
    spec: dict[str, Any] = {
        "name": function["name"],
        "inputSchema": {"json": function.get("parameters") or {"type": "object", "properties": {}}},
    }
    if function.get("description"):
        spec["description"] = function["description"]
    return {"toolSpec": spec}


def _tool_choice(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if choice is None or choice == "none":
        return None
    if choice == "auto":
        return {"auto": {}}
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, dict) and isinstance(name := (choice.get("function") or {}).get("name"), str):
        return {"tool": {"name": name}}
    raise InvalidRequest("tool_choice must be none, auto, required or a function", param="tool_choice")


# --- Converse answer -> OpenAI answer --------------------------------------------------------------


def completion_from_converse(target: str, body: Any, model: str, request: ChatRequest) -> ChatResult:
    """The OpenAI ``chat.completion`` for a Converse answer."""
    try:
        content = body["output"]["message"]["content"]
        texts = [block["text"] for block in content if "text" in block]
        tool_calls = [_tool_call(block["toolUse"]) for block in content if "toolUse" in block]
        finish = _finish_reason(target, body["stopReason"])
    except (KeyError, TypeError) as exc:
        raise UpstreamProtocolError(f"target {target}: the upstream answer is not a Converse answer") from exc
    usage = _usage(body.get("usage")) or Usage(_estimate(request.prompt_text), 0)
    text = "".join(texts) if texts or not tool_calls else None
    completion = make_completion(
        model=model, content=text, finish_reason=finish, usage=usage, tool_calls=tool_calls or None
    )
    return ChatResult(completion, usage)


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    arguments = orjson.dumps(block.get("input", {})).decode()
    return {"id": block["toolUseId"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}


def _finish_reason(target: str, stop_reason: object) -> FinishReason:
    """OpenAI's finish reason for a Converse ``stopReason``; filtered and malformed answers raise."""
    reason = str(stop_reason)
    finish = _FINISH.get(reason, "stop")
    if finish == "content_filter":
        raise ContentFiltered(
            f"target {target}: a Bedrock guardrail or content filter blocked the answer (stopReason {reason})"
        )
    if reason in _MALFORMED:
        raise BackendError(f"target {target}: the model produced malformed output (stopReason {reason})")
    return finish


def _usage(usage: object) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("inputTokens"), usage.get("outputTokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    # Prompt-cache reads and writes are prompt tokens too, counted apart by Bedrock.
    cached = [usage.get(key) for key in ("cacheReadInputTokens", "cacheWriteInputTokens")]
    return Usage(prompt + sum(count for count in cached if isinstance(count, int)), completion)


def _estimate(text: str) -> int:
    return max(1, len(text) // 4)


class _StreamTranslator:
    """Turns ConverseStream events into OpenAI chunks, keeping the state the chunks need."""

    def __init__(self, target: str, model: str, request: ChatRequest, secrets: tuple[str, ...]) -> None:
        self._target = target
        self._request = request
        self._secrets = secrets
        self._maker = ChunkMaker.start(model)
        # contentBlockIndex -> the tool call's index in OpenAI's tool_calls deltas.
        self._tools: dict[int, int] = {}
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._pieces = 0

    def feed(self, event: Event) -> Iterator[ChatChunk]:
        if event.message_type != "event":
            raise self._stream_error(event)
        try:
            payload = orjson.loads(event.payload)
            yield from self._translate(event.name, payload)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(
                f"target {self._target}: the upstream sent an invalid {event.name} event"
            ) from exc

    def _translate(self, name: str, payload: dict[str, Any]) -> Iterator[ChatChunk]:
        if name == "messageStart":
            yield self._maker.delta({"role": "assistant", "content": ""})
        elif name == "contentBlockStart":
            if tool := payload["start"].get("toolUse"):
                index = self._tools[payload["contentBlockIndex"]] = len(self._tools)
                call = {"index": index, "id": tool["toolUseId"], "type": "function"}
                yield self._piece({"tool_calls": [{**call, "function": {"name": tool["name"], "arguments": ""}}]})
        elif name == "contentBlockDelta":
            delta = payload["delta"]
            if "text" in delta:
                yield self._piece({"content": delta["text"]})
            elif "toolUse" in delta:
                index = self._tools[payload["contentBlockIndex"]]
                yield self._piece(
                    {"tool_calls": [{"index": index, "function": {"arguments": delta["toolUse"]["input"]}}]}
                )
        elif name == "messageStop":
            self._finish = _finish_reason(self._target, payload["stopReason"])
            yield self._maker.delta({}, self._finish)
        elif name == "metadata":
            self._usage = _usage(payload.get("usage"))

    def _piece(self, delta: dict[str, Any]) -> ChatChunk:
        self._pieces += 1
        return self._maker.delta(delta)

    def _stream_error(self, event: Event) -> HybridRouterError:
        message = event.error_message or upstream_message(event.payload)[0]
        return bedrock_error(self._target, event.name, scrub(message, self._secrets))

    def close(self) -> ChatChunk:
        """The closing usage chunk; a stream without ``messageStop`` was cut short."""
        if self._finish is None:
            raise UpstreamProtocolError(f"target {self._target}: the upstream closed the stream before messageStop")
        return self._maker.usage(self._usage or Usage(_estimate(self._request.prompt_text), self._pieces))
