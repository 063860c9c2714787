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
* A blocked prompt (``promptFeedback.blockReason``) raises
  :class:`ContentFiltered`; a safety stop follows the common output rules
  (an error before any output, ``finish_reason: content_filter`` after some).
* Usage: ``promptTokenCount``; ``candidatesTokenCount`` plus
  ``thoughtsTokenCount`` (thinking is billed as output).
* Errors are ``google.rpc.Status`` bodies: ``API_KEY_INVALID`` (a 400) is an auth
  failure, and ``RetryInfo.retryDelay`` stands in for a missing ``Retry-After``.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Iterable, Mapping
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
)
from router.backends._output import StreamOutput, answer, tool_call
from router.backends._relay import SseEvent, decode_event
from router.backends.base import capabilities_for
from router.backends.http import ErrorReader, error_for_status, parse_retry_after, upstream_message
from router.backends.http_backend import Exchange, SseBackend
from router.chat import ChatChunk, ChatRequest, ChatResult, FinishReason, Message, Usage
from router.config import GeminiTargetConfig, VertexTargetConfig
from router.errors import ContentFiltered, HybridRouterError, InvalidRequest, UpstreamAuthError, UpstreamProtocolError

__all__ = ["GoogleBackend", "GoogleStream", "completion_from_response", "generate_content_body", "google_error"]

_SAFETY_STOPS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
     "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"}
)  # fmt: skip
_AUTH_REASONS = frozenset(
    {"API_KEY_INVALID", "API_KEY_EXPIRED", "ACCESS_TOKEN_EXPIRED", "ACCESS_TOKEN_TYPE_UNSUPPORTED"}
)
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


class GoogleBackend(SseBackend):
    """``generateContent`` over our pooled HTTP client; subclasses say where and with what credentials."""

    def __init__(self, name: str, config: GeminiTargetConfig | VertexTargetConfig, base_url: str) -> None:
        self.config = config
        capabilities = capabilities_for(config.supports, context_window=config.context_window)
        super().__init__(name, config, model=config.model, base_url=base_url, capabilities=capabilities)

    @property
    @abc.abstractmethod
    def model_path(self) -> str:
        """The model's URL path, e.g. ``/v1beta/models/gemini-2.5-flash``; methods follow a ``:``."""

    @abc.abstractmethod
    async def auth_headers(self) -> Mapping[str, str]:
        """The credentials for one request."""

    def payload(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        """The body sent upstream for ``request``, the same streaming or not."""
        return generate_content_body(request)

    async def exchange(self, request: ChatRequest, *, stream: bool) -> Exchange:
        body = orjson.dumps(self.payload(request))
        if stream:
            path = f"{self.model_path}:streamGenerateContent"
            return Exchange(path, body, await self.auth_headers(), {"alt": "sse"})
        return Exchange(f"{self.model_path}:generateContent", body, await self.auth_headers())

    def read_answer(self, body: Any, request: ChatRequest) -> ChatResult:
        return completion_from_response(body, model=self.model, prompt_text=request.prompt_text)

    def translator(self, request: ChatRequest) -> GoogleStream:
        return GoogleStream(self.model, request.prompt_text, self.read_error)

    def read_error(self, status: int, headers: Mapping[str, str], body: bytes) -> HybridRouterError:
        return google_error(status, headers, body)


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


def google_error(status: int, headers: Mapping[str, str], body: bytes) -> HybridRouterError:
    """Our error for a Google error answer (HTTP status and google.rpc.Status body)."""
    error = _status_body(body)
    details = error.get("details")
    details = details if isinstance(details, list) else []
    if any(isinstance(d, dict) and d.get("reason") in _AUTH_REASONS for d in details):
        return UpstreamAuthError(f"upstream returned {status}: the upstream rejected the gateway's credentials")
    if parse_retry_after(headers) is None and (delay := _retry_delay(details)) is not None:
        headers = {"retry-after": delay}
    message, code = upstream_message(body)
    code = str(error.get("status") or code or "") or None
    return error_for_status(status, message, headers=headers, code=code)


# --- request: OpenAI -> Google ----------------------------------------------------------------


def generate_content_body(request: ChatRequest) -> dict[str, Any]:
    """The ``generateContent`` body for ``request`` (the model is in the URL)."""
    body: dict[str, Any] = {"contents": _contents(request.messages)}
    if system := "\n\n".join(system_texts(request.messages)):
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if request.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(tool) for tool in function_tools(request.tools)]}]
        if (choice := tool_choice(request.tool_choice)) is not None:
            body["toolConfig"] = {"functionCallingConfig": _calling_config(choice)}
    if config := _generation_config(request):
        body["generationConfig"] = config
    return body


def _contents(messages: list[Message]) -> list[dict[str, Any]]:
    turns = list(conversation(messages))
    # A function response names the function; OpenAI's tool message only names the call.
    names = {call.id: call.name for index, message in turns for call in tool_calls(message, index)}
    contents = (_content(index, message, names) for index, message in turns)
    return [{"role": role, "parts": content} for role, content in merge_turns(contents)]


def _content(index: int, message: Message, names: Mapping[str, str]) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "user":
        return "user", [_user_part(part, index) for part in parts(message, index)]
    if message.role == "assistant":
        return "model", _model_parts(message, index)
    name = names.get(str(message.tool_call_id))
    if name is None:
        raise InvalidRequest(
            f"tool message {message.tool_call_id!r} answers no earlier tool call", param=f"messages.{index}"
        )
    return "user", [{"functionResponse": {"name": name, "response": _tool_response(message.text())}}]


def _user_part(part: Text | Image, index: int) -> dict[str, Any]:
    if isinstance(part, Text):
        return {"text": part.text}
    image = data_url(part.url)
    if image is None:
        raise InvalidRequest("images must be base64 data: URLs", param=f"messages.{index}.content")
    return {"inlineData": {"mimeType": image.mime, "data": image.data}}


def _model_parts(message: Message, index: int) -> list[dict[str, Any]]:
    text = message.text()
    out: list[dict[str, Any]] = [{"text": text}] if text else []
    for call in tool_calls(message, index):
        part: dict[str, Any] = {"functionCall": {"name": call.name, "args": call.arguments}}
        signature = ((call.raw.get("extra_content") or {}).get("google") or {}).get("thought_signature")
        if signature:
            part["thoughtSignature"] = signature
        out.append(part)
    return out


def _tool_response(text: str) -> dict[str, Any]:
    """A JSON-object tool result as itself; any other text wrapped (``response`` must be an object)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {"result": text}


def _declaration(tool: FunctionTool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description:
        out["description"] = tool.description
    if tool.parameters:
        out["parametersJsonSchema"] = tool.parameters
    return out


def _calling_config(choice: ToolChoice) -> dict[str, Any]:
    config: dict[str, Any] = {"mode": _TOOL_MODES[choice.mode]}
    if choice.name is not None:
        config["allowedFunctionNames"] = [choice.name]
    return config


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
        if (schema := json_schema(request.response_format)) is not None:
            config["responseJsonSchema"] = schema
    return config


# --- answer: Google -> OpenAI -----------------------------------------------------------------


def _check_prompt(body: Mapping[str, Any]) -> None:
    feedback = body.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        raise ContentFiltered(f"the upstream blocked the prompt ({feedback['blockReason']})")


def _usage(meta: object) -> Usage | None:
    if not isinstance(meta, dict) or not isinstance(meta.get("promptTokenCount"), int):
        return None
    output = sum(v for k in ("candidatesTokenCount", "thoughtsTokenCount") if isinstance(v := meta.get(k), int))
    return Usage(meta["promptTokenCount"], output)


def _tool_call(part: Mapping[str, Any]) -> dict[str, Any]:
    call = part["functionCall"]
    call_id = str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}")
    out = tool_call(call_id, str(call.get("name", "")), call.get("args") or {})
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


def _finish(reason: object, *, calls: bool) -> FinishReason:
    if reason in _SAFETY_STOPS:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if calls else "stop"


def _first_candidate(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    candidates = body.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    return None


def _completion_id(body: Mapping[str, Any]) -> str | None:
    return f"chatcmpl-{body['responseId']}" if body.get("responseId") else None


def completion_from_response(body: Any, *, model: str, prompt_text: str) -> ChatResult:
    """A ``chat.completion`` for a ``GenerateContentResponse`` body."""
    if not isinstance(body, dict):
        raise UpstreamProtocolError("the upstream answer is not a JSON object")
    _check_prompt(body)
    candidate = _first_candidate(body)
    if candidate is None:
        raise UpstreamProtocolError("the upstream answer has no candidates")
    text, calls = _read_parts(candidate)
    reason = candidate.get("finishReason")
    return answer(
        model=str(body.get("modelVersion") or model),
        text=text,
        tool_calls=calls,
        finish=_finish(reason, calls=bool(calls)),
        why=f"finishReason {reason}",
        usage=_usage(body.get("usageMetadata")),
        prompt_text=prompt_text,
        completion_id=_completion_id(body),
    )


class GoogleStream:
    """Turns ``GenerateContentResponse`` stream events into OpenAI chunks."""

    def __init__(self, model: str, prompt_text: str, read_error: ErrorReader) -> None:
        self._out = StreamOutput(model, prompt_text=prompt_text)
        self._read_error = read_error
        self._calls = 0

    def feed(self, event: SseEvent) -> list[ChatChunk]:
        body = decode_event(event.data)
        if "error" in body:
            code = _status_body(event.data.encode()).get("code")
            raise self._read_error(
                code if isinstance(code, int) and 400 <= code < 600 else 502, {}, event.data.encode()
            )
        _check_prompt(body)
        self._out.usage(_usage(body.get("usageMetadata")))
        candidate = _first_candidate(body)
        if candidate is None or self._out.finished:
            return []
        self._out.begin(_completion_id(body), str(body.get("modelVersion") or ""))
        text, calls = _read_parts(candidate)
        chunks = self._out.delta({"content": text}) if text else []
        for call in calls:
            chunks += self._out.delta({"tool_calls": [{"index": self._calls, **call}]})
            self._calls += 1
        if reason := candidate.get("finishReason"):
            chunks += self._out.finish(_finish(reason, calls=bool(self._calls)), why=f"finishReason {reason}")
        return chunks

    def close(self) -> list[ChatChunk]:
        if not self._out.finished:
            raise UpstreamProtocolError("the upstream closed the stream before its last event")
        return self._out.close()
