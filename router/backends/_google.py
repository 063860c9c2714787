"""What the Gemini API and Vertex AI share: the ``generateContent`` JSON, both ways.

Both speak ``{model}:generateContent`` and ``{model}:streamGenerateContent?alt=sse``
with the same bodies; only the URL and the credentials differ, so
:class:`GoogleBackend` does everything but those two, which
:mod:`router.backends.gemini` and :mod:`router.backends.vertex` supply.

Requests (OpenAI -> Google):

* ``system`` / ``developer`` messages become ``systemInstruction``, ``assistant``
  becomes ``model`` (the only roles are ``user`` and ``model``) and a ``tool``
  message a ``functionResponse`` part in a user turn, named after the call it
  answers. Adjacent turns of one role are merged: Google wants the answers to
  one turn's function calls together in the next turn.
* Tool results that are JSON objects are passed as the ``response`` object;
  any other text is wrapped as ``{"result": text}`` (``response`` must be an object).
* Tools become ``functionDeclarations`` with ``parametersJsonSchema``, and a
  ``json_schema`` response format ``responseJsonSchema``: both take JSON Schema
  as OpenAI clients write it, where ``parameters`` / ``responseSchema`` take an
  OpenAPI subset that rejects ``additionalProperties``, type arrays and ``$ref``.
  Any JSON response format sets ``responseMimeType: application/json``.
* ``tool_choice`` auto / none / required / ``{"function": {"name"}}`` maps to
  ``functionCallingConfig.mode`` AUTO / NONE / ANY / ANY with
  ``allowedFunctionNames``; Google has no switch for parallel calls.
* Images: ``data:`` URLs become ``inlineData``; other URLs are refused.
* Gemini 3 signs its function calls (``thoughtSignature``) and wants the
  signature back with the call in the next request. It travels on the OpenAI
  tool call as ``extra_content.google.thought_signature``, as on Google's own
  OpenAI-compatible endpoint.

Answers (Google -> OpenAI):

* ``finishReason`` STOP -> stop (tool_calls when the model called functions; a
  stop sequence also reports STOP), MAX_TOKENS -> length, the safety family
  (SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII, IMAGE_*) ->
  content_filter, anything else -> stop.
* A blocked prompt (``promptFeedback.blockReason``), or a safety stop before any
  output, raises :class:`ContentFiltered`: there is no answer to return. After
  some output a stream ends with ``finish_reason: content_filter`` instead.
* Usage: ``promptTokenCount``; ``candidatesTokenCount`` plus
  ``thoughtsTokenCount`` (thinking is billed as output).
* Errors are ``google.rpc.Status`` bodies: ``API_KEY_INVALID`` (a 400) is an auth
  failure, and ``RetryInfo.retryDelay`` stands in for a missing ``Retry-After``.
"""

from __future__ import annotations

import abc
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
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
from router.config import GeminiTargetConfig, VertexTargetConfig
from router.errors import (
    ContentFiltered,
    HybridRouterError,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamProtocolError,
)

__all__ = ["GoogleBackend", "completion_from_response", "generate_content_body", "google_error"]

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.DOTALL)
_SAFETY_STOPS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
     "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"}
)  # fmt: skip
_AUTH_REASONS = frozenset(
    {"API_KEY_INVALID", "API_KEY_EXPIRED", "ACCESS_TOKEN_EXPIRED", "ACCESS_TOKEN_TYPE_UNSUPPORTED"}
)
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


# --- errors -----------------------------------------------------------------------------------


def _status_body(body: bytes) -> Mapping[str, Any]:
    """The ``error`` object of a google.rpc.Status body (also inside a stream's JSON array)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _retry_delay(details: Iterable[object]) -> str | None:
    """Seconds from a ``RetryInfo`` detail such as ``{"retryDelay": "37s"}``."""
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO:
            delay = str(detail.get("retryDelay", "")).removesuffix("s")
            try:
                return str(max(0.0, float(delay)))
            except ValueError:
                return None
    return None


def google_error(
    target: str, status: int, body: bytes, headers: Mapping[str, str], secrets: Iterable[str]
) -> HybridRouterError:
    """Our error for a Google error answer (HTTP status and google.rpc.Status body)."""
    error = _status_body(body)
    details = error.get("details")
    details = details if isinstance(details, list) else []
    if any(isinstance(d, dict) and d.get("reason") in _AUTH_REASONS for d in details):
        return UpstreamAuthError(
            f"target {target}: upstream returned {status}: the upstream rejected the gateway's credentials"
        )
    if parse_retry_after(headers) is None and (delay := _retry_delay(details)) is not None:
        headers = {"retry-after": delay}
    message, code = upstream_message(body)
    code = str(error.get("status") or code or "") or None
    return error_for_status(target, status, scrub(message, secrets), headers=headers, code=code)


class GoogleUpstream(HttpUpstream):
    """The pooled client, with Google's error bodies understood."""

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> HybridRouterError:
        return google_error(self.target, status, body, headers, self._secrets())


# --- request: OpenAI -> Google ----------------------------------------------------------------


def generate_content_body(request: ChatRequest, *, target: str) -> dict[str, Any]:
    """The ``generateContent`` body for ``request`` (the model is in the URL)."""
    body: dict[str, Any] = {"contents": _contents(request.messages, target)}
    system = "\n\n".join(m.text() for m in request.messages if m.role in ("system", "developer"))
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if request.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(tool, target) for tool in request.tools]}]
        if request.tool_choice is not None:
            body["toolConfig"] = {"functionCallingConfig": _calling_config(request.tool_choice, target)}
    config = _generation_config(request)
    if config:
        body["generationConfig"] = config
    return body


def _contents(messages: list[Message], target: str) -> list[dict[str, Any]]:
    names = {
        str(call.get("id")): str((call.get("function") or {}).get("name", ""))
        for message in messages
        for call in message.tool_calls or []
    }
    contents: list[dict[str, Any]] = []
    for message in messages:
        content = _content(message, names, target)
        if content is None:
            continue
        if contents and contents[-1]["role"] == content["role"]:
            contents[-1]["parts"].extend(content["parts"])
        else:
            contents.append(content)
    return contents


def _content(message: Message, names: Mapping[str, str], target: str) -> dict[str, Any] | None:
    if message.role in ("system", "developer"):
        return None
    if message.role == "user":
        return {"role": "user", "parts": _user_parts(message.content, target)}
    if message.role == "assistant":
        parts = _model_parts(message, target)
        return {"role": "model", "parts": parts} if parts else None
    if message.role == "tool":
        name = names.get(str(message.tool_call_id))
        if name is None:
            raise InvalidRequest(
                f"target {target}: tool message {message.tool_call_id!r} answers no earlier tool call",
                param="messages",
            )
        response = {"name": name, "response": _tool_response(message.text())}
        return {"role": "user", "parts": [{"functionResponse": response}]}
    raise InvalidRequest(
        f"target {target}: role {message.role!r} is not supported; send tool results as role 'tool'",
        param="messages",
    )


def _user_parts(content: str | list[dict[str, Any]] | None, target: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"text": content or ""}]
    return [_user_part(part, target) for part in content]


def _user_part(part: dict[str, Any], target: str) -> dict[str, Any]:
    kind = part["type"]
    if kind in ("text", "input_text"):
        return {"text": str(part.get("text", ""))}
    if kind == "image_url":
        image = part.get("image_url")
        url = str((image.get("url") if isinstance(image, dict) else image) or "")
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise InvalidRequest(f"target {target}: images must be base64 data: URLs", param="messages")
        return {"inlineData": {"mimeType": match["mime"], "data": match["data"]}}
    raise InvalidRequest(f"target {target}: content parts of type {kind!r} are not supported", param="messages")


def _model_parts(message: Message, target: str) -> list[dict[str, Any]]:
    text = message.text()
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    for call in message.tool_calls or []:
        function = call.get("function") or {}
        part: dict[str, Any] = {
            "functionCall": {
                "name": str(function.get("name", "")),
                "args": _arguments(function.get("arguments"), target),
            }
        }
        signature = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _arguments(raw: object, target: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    try:
        value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(f"target {target}: tool call arguments must be a JSON object", param="messages")
    return value


def _tool_response(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {"result": text}


def _declaration(tool: dict[str, Any], target: str) -> dict[str, Any]:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        raise InvalidRequest(f"target {target}: only function tools are supported", param="tools")
    out: dict[str, Any] = {"name": function.get("name", "")}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("parameters"):
        out["parametersJsonSchema"] = function["parameters"]
    return out


def _calling_config(choice: str | dict[str, Any], target: str) -> dict[str, Any]:
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return {"mode": "ANY", "allowedFunctionNames": [str(name)]}
    if choice not in _TOOL_MODES:
        raise InvalidRequest(f"target {target}: tool_choice {choice!r} is not supported", param="tool_choice")
    return {"mode": _TOOL_MODES[choice]}


def _number(value: object) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _generation_config(request: ChatRequest) -> dict[str, Any]:
    extra = request.model_extra or {}
    values: dict[str, Any] = {
        "temperature": request.temperature,
        "topP": request.top_p,
        "topK": request.top_k or None,
        "maxOutputTokens": request.effective_max_tokens,
        "seed": request.seed,
        "presencePenalty": _number(extra.get("presence_penalty")),
        "frequencyPenalty": _number(extra.get("frequency_penalty")),
        "stopSequences": request.stop_sequences or None,
    }
    config = {key: value for key, value in values.items() if value is not None}
    if request.wants_json:
        config["responseMimeType"] = "application/json"
        schema = ((request.response_format or {}).get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            config["responseJsonSchema"] = schema
    return config


# --- answer: Google -> OpenAI -----------------------------------------------------------------


def _check_prompt(body: Mapping[str, Any], target: str) -> None:
    feedback = body.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        raise ContentFiltered(f"target {target}: the upstream blocked the prompt ({feedback['blockReason']})")


def _usage(meta: object) -> Usage | None:
    if not isinstance(meta, dict) or not isinstance(meta.get("promptTokenCount"), int):
        return None
    output = sum(v for k in ("candidatesTokenCount", "thoughtsTokenCount") if isinstance(v := meta.get(k), int))
    return Usage(meta["promptTokenCount"], output)


def _tool_call(part: Mapping[str, Any]) -> dict[str, Any]:
    call = part["functionCall"]
    out: dict[str, Any] = {
        "id": str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}"),
        "type": "function",
        "function": {"name": str(call.get("name", "")), "arguments": orjson.dumps(call.get("args") or {}).decode()},
    }
    if part.get("thoughtSignature"):
        out["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return out


def _read_parts(candidate: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The answer text (thought summaries left out) and its function calls."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict) or part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            text.append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            calls.append(_tool_call(part))
    return "".join(text), calls


def _finish(reason: object, target: str, *, calls: bool, produced: bool) -> FinishReason:
    if reason in _SAFETY_STOPS:
        if not produced:
            raise ContentFiltered(f"target {target}: the upstream's safety filter withheld the answer ({reason})")
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if calls else "stop"


def _first_candidate(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    candidates = body.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    return None


def completion_from_response(body: Any, *, target: str, model: str, prompt_text: str) -> ChatResult:
    """A ``chat.completion`` for a ``GenerateContentResponse`` body."""
    if not isinstance(body, dict):
        raise UpstreamProtocolError(f"target {target}: the upstream answer is not a JSON object")
    _check_prompt(body, target)
    candidate = _first_candidate(body)
    if candidate is None:
        raise UpstreamProtocolError(f"target {target}: the upstream answer has no candidates")
    text, calls = _read_parts(candidate)
    finish = _finish(candidate.get("finishReason"), target, calls=bool(calls), produced=bool(text or calls))
    usage = _usage(body.get("usageMetadata")) or Usage(_estimate(prompt_text), 0)
    completion = make_completion(
        model=str(body.get("modelVersion") or model),
        content=text if text or not calls else None,
        finish_reason=finish,
        usage=usage,
        tool_calls=calls or None,
        completion_id=f"chatcmpl-{body['responseId']}" if body.get("responseId") else None,
    )
    return ChatResult(completion, usage)


@dataclass
class _StreamTranslator:
    """Turns ``GenerateContentResponse`` stream events into OpenAI chunks."""

    target: str
    model: str
    prompt_text: str
    maker: ChunkMaker | None = None
    usage: Usage | None = None
    finish_reason: object = None
    calls: int = 0
    produced: bool = False

    def _maker(self, body: Mapping[str, Any]) -> ChunkMaker:
        if self.maker is None:
            completion_id = f"chatcmpl-{body['responseId']}" if body.get("responseId") else new_completion_id()
            self.maker = ChunkMaker(completion_id, str(body.get("modelVersion") or self.model), int(time.time()))
        return self.maker

    def feed(self, body: Mapping[str, Any]) -> list[ChatChunk]:
        _check_prompt(body, self.target)
        self.usage = _usage(body.get("usageMetadata")) or self.usage
        candidate = _first_candidate(body)
        if candidate is None:
            return []
        text, calls = _read_parts(candidate)
        if candidate.get("finishReason"):
            self.finish_reason = candidate["finishReason"]
            # A safety stop before any output raises here, before a chunk goes out.
            _finish(self.finish_reason, self.target, calls=False, produced=self.produced or bool(text or calls))
        maker = self._maker(body)
        deltas: list[dict[str, Any]] = [{"content": text}] if text else []
        for call in calls:
            deltas.append({"tool_calls": [{"index": self.calls, **call}]})
            self.calls += 1
        chunks = [maker.delta(delta) for delta in deltas]
        if chunks and not self.produced:
            chunks.insert(0, maker.delta({"role": "assistant", "content": ""}))
        self.produced = self.produced or bool(chunks)
        return chunks

    def close(self) -> list[ChatChunk]:
        """The closing chunks, once the upstream has ended its stream."""
        if self.finish_reason is None or self.maker is None:
            raise UpstreamProtocolError(f"target {self.target}: the upstream closed the stream before its last event")
        finish = _finish(self.finish_reason, self.target, calls=bool(self.calls), produced=self.produced)
        usage = self.usage or Usage(_estimate(self.prompt_text), 0)
        return [self.maker.delta({}, finish), self.maker.usage(usage)]


def _estimate(text: str) -> int:
    return max(1, len(text) // 4)


# --- the backend ------------------------------------------------------------------------------


class GoogleBackend(abc.ABC):
    """``generateContent`` over our pooled HTTP client; subclasses say where and with what credentials."""

    def __init__(self, name: str, config: GeminiTargetConfig | VertexTargetConfig, base_url: str) -> None:
        self.name = name
        self.config = config
        self.model = config.model
        self.capabilities = capabilities_for(config.supports, context_window=config.context_window)
        self._inflight = 0
        self._http = GoogleUpstream(
            name,
            base_url,
            timeouts=config.timeouts,
            max_connections=config.max_connections,
            headers={"content-type": "application/json"},
            secrets=self._secrets,
        )

    @property
    @abc.abstractmethod
    def model_path(self) -> str:
        """The model's URL path, e.g. ``/v1beta/models/gemini-2.5-flash``; methods follow a ``:``."""

    @abc.abstractmethod
    async def auth_headers(self) -> Mapping[str, str]:
        """The credentials for one request."""

    @abc.abstractmethod
    def _secrets(self) -> Iterable[str]:
        """What must never appear in an error message."""

    async def start(self) -> None:
        self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    def readiness(self) -> Readiness:
        if not self._http.started:
            return Readiness(ready=False, reason="not started")
        return Readiness(ready=True)

    def stats(self) -> Mapping[str, float]:
        return {"inflight": float(self._inflight)}

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        """The body sent upstream for ``request``, streaming or not."""
        return generate_content_body(request, target=self.name)

    async def complete(self, request: ChatRequest) -> ChatResult:
        payload = orjson.dumps(self.payload(request))
        self._inflight += 1
        try:
            headers = await self.auth_headers()
            body = await self._http.post_json(f"{self.model_path}:generateContent", payload, headers=headers)
        finally:
            self._inflight -= 1
        return completion_from_response(body, target=self.name, model=self.model, prompt_text=request.prompt_text)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        payload = orjson.dumps(self.payload(request))
        self._inflight += 1
        try:
            headers = await self.auth_headers()
            path = f"{self.model_path}:streamGenerateContent"
            async with self._http.open_stream(path, payload, headers=headers, params={"alt": "sse"}) as response:
                async for chunk in self._relay(response, request):
                    yield chunk
        finally:
            self._inflight -= 1

    async def _relay(self, response: UpstreamStream, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        translator = _StreamTranslator(self.name, self.model, request.prompt_text)
        async for _event, data in iter_sse(response.lines()):
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise UpstreamProtocolError(f"target {self.name}: the upstream sent an invalid stream event")
            if "error" in parsed:
                raise self._stream_error(data)
            for chunk in translator.feed(parsed):
                yield chunk
        for chunk in translator.close():
            yield chunk

    def _stream_error(self, data: str) -> HybridRouterError:
        code = _status_body(data.encode()).get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
        return google_error(self.name, status, data.encode(), {}, self._secrets())
