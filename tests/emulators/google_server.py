"""A Google Gemini API and Vertex AI emulator, with an OAuth token endpoint, scriptable per test.

It follows Google's documented wire format, as ``google-genai`` and
``google-auth`` read it:

* Gemini: ``POST /{v1,v1beta,v1alpha}/models/{model}:generateContent`` and
  ``:streamGenerateContent``, the key in ``x-goog-api-key`` or ``?key=``. A
  missing key is 403 PERMISSION_DENIED; a wrong one 400 INVALID_ARGUMENT with
  an ``ErrorInfo`` detail of reason ``API_KEY_INVALID``.
* Vertex AI: ``POST /{v1,v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{model}:...``
  with ``Authorization: Bearer`` and a token this emulator issued; else 401
  UNAUTHENTICATED.
* ``POST /token``: an OAuth 2.0 token endpoint for service-account JWT grants
  (the JWT's signature is checked when the emulator knows the public key) and
  refresh-token grants; answers ``{"access_token", "expires_in", "token_type"}``.
* Validation like the API's: unknown fields are a 400 ``Unknown name "x"``,
  roles are ``user`` and ``model`` only, and a turn of function responses must
  answer every function call of the model turn before it.
* Errors are ``google.rpc.Status`` bodies: ``{"error": {"code", "message", "status", "details"}}``.
* ``alt=sse`` streams are ``data: <json>`` events separated by ``\\r\\n\\r\\n``;
  without it the stream is one JSON array, written piece by piece.
* A stop sequence cuts the text and still reports ``finishReason: STOP``;
  ``maxOutputTokens`` (one word is one token) cuts it with ``MAX_TOKENS``.

By default it answers ``"Echo: <last user text>"``. Tests script it with
:class:`GoogleBehaviour`, and the token endpoint with :class:`TokenBehaviour`
(over HTTP: items with ``"endpoint": "token"``); see
:mod:`tests.emulators.scripting` for the fields every emulator has. E.g.:

    {"content": "Hi there", "chunks": ["Hi", " there"]}
    {"tool_calls": [{"name": "f", "args": {"x": 1}, "thought_signature": "c2ln"}]}
    {"block_reason": "SAFETY"}                      the prompt is blocked (promptFeedback)
    {"finish_reason": "SAFETY", "content": ""}      the answer is withheld
    {"status": 429, "error": "Resource exhausted", "retry_delay": "7s", "headers": {...}}
    {"error_event_after": 1, "status": 503}         an error object inside the stream
    {"cut_after": 2}                                drop the connection after 2 events
    {"malformed": true}                             a body that is not the documented JSON
    {"delay_s": 0.5, "chunk_delay_s": 0.1}
    {"endpoint": "token", "status": 400}            the token endpoint refuses (invalid_grant)
    {"endpoint": "token", "expires_in": 10}         a token that expires soon

``GET /_emulator/tokens`` returns the token grants it received. Run it alone
with ``python -m tests.emulators.google_server --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.emulators import scripting
from tests.emulators.scripting import Behaviour, Script, control_routes, crash, cut_at_stop

__all__ = ["EmulatorState", "GoogleBehaviour", "ServiceAccount", "TokenBehaviour", "create_app"]

GEMINI_PATH = re.compile(r"/(?P<version>v1|v1beta|v1alpha)/models/(?P<model>[^/:]+):(?P<method>\w+)")
VERTEX_PATH = re.compile(
    r"/(?P<version>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/google/models/(?P<model>[^/:]+):(?P<method>\w+)"
)
METHODS = ("generateContent", "streamGenerateContent")
KNOWN_FIELDS = frozenset(
    {"contents", "systemInstruction", "system_instruction", "tools", "toolConfig", "tool_config", "safetySettings",
     "safety_settings", "generationConfig", "generation_config", "cachedContent", "cached_content", "labels"}
)  # fmt: skip
GENERATION_FIELDS = frozenset(
    {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
     "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty",
     "frequencyPenalty", "responseLogprobs", "logprobs", "thinkingConfig", "mediaResolution", "speechConfig"}
)  # fmt: skip
STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}  # fmt: skip
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True, kw_only=True)
class GoogleBehaviour(Behaviour):
    tool_calls: list[dict[str, Any]] | None = None
    """``{"name", "args", "id"?, "thought_signature"?}`` each, answered as ``functionCall`` parts."""
    block_reason: str | None = None
    """Block the prompt (``promptFeedback.blockReason``)."""
    finish_reason: str = "STOP"
    retry_delay: str | None = None
    """A ``RetryInfo`` detail on an error status, e.g. ``"7s"``."""
    error_event_after: int | None = None
    """Send an error object (with ``status``, 503 by default) after this many events, then end the stream."""


@dataclass(frozen=True, kw_only=True)
class TokenBehaviour:
    """How the token endpoint answers one grant."""

    status: int | None = None
    """Refuse the grant (``invalid_grant``) with this status."""
    error: str = "Invalid JWT Signature."
    expires_in: int = 3599
    endpoint: str = "token"

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> TokenBehaviour:
        return scripting.parse_fields(cls, raw)


@dataclass(frozen=True)
class ServiceAccount:
    """A service account whose JWT grants the token endpoint accepts when given ``public_pem``."""

    private_pem: str
    public_pem: str

    @classmethod
    def generate(cls) -> ServiceAccount:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(private.decode(), public.decode())

    def write(self, folder: Path, token_uri: str, project: str = "proj-1") -> Path:
        """Its JSON key file, as google-auth reads it, in ``folder``."""
        info = {
            "type": "service_account",
            "project_id": project,
            "private_key_id": "key-1",
            "private_key": self.private_pem,
            "client_email": f"router@{project}.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "token_uri": token_uri,
        }
        path = folder / "sa.json"
        path.write_text(json.dumps(info))
        return path


class EmulatorState(scripting.EmulatorState[GoogleBehaviour]):
    def __init__(self, api_key: str | None = None, public_key: str | None = None) -> None:
        super().__init__(GoogleBehaviour)
        self.api_key = api_key
        # PEM public key (or certificate) of the service account whose JWTs the token endpoint accepts.
        self.public_key = public_key
        self.tokens: set[str] = set()
        self.token_script = Script(TokenBehaviour)
        self.grants: list[dict[str, Any]] = []

    def queue(self, items: Sequence[GoogleBehaviour | TokenBehaviour | Mapping[str, Any]]) -> None:
        """Queue model and token-endpoint behaviours; as data, the latter say ``"endpoint": "token"``."""
        tokens, models = [], []
        for item in items:
            if isinstance(item, TokenBehaviour) or (isinstance(item, Mapping) and item.get("endpoint") == "token"):
                tokens.append(self.token_script.typed(item))
            else:
                models.append(self.script.typed(item))
        self.token_script.add(*tokens)
        self.script.add(*models)

    def reset(self) -> None:
        super().reset()
        self.token_script.clear()
        self.grants.clear()


class _Refusal(Exception):
    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, details or []


def _error(
    status: int, message: str, *, details: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
) -> Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": STATUS_NAMES.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _check_key(state: EmulatorState, request: Request) -> None:
    if state.api_key is None:
        return
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if not key:
        raise _Refusal(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
        )
    if key != state.api_key:
        info = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }
        raise _Refusal(400, "API key not valid. Please pass a valid API key.", [info])


def _check_token(state: EmulatorState, request: Request) -> None:
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    if token not in state.tokens:
        raise _Refusal(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
            "or other valid authentication credential.",
        )


def _parts(content: Any) -> list[dict[str, Any]]:
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise _Refusal(400, "Invalid JSON payload received.")
    for name in body:
        if name not in KNOWN_FIELDS:
            raise _Refusal(400, f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.')
    config = body.get("generationConfig") or {}
    for name in config:
        if name not in GENERATION_FIELDS:
            raise _Refusal(
                400,
                f"Invalid JSON payload received. Unknown name \"{name}\" at 'generation_config': Cannot find field.",
            )
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _Refusal(400, "* GenerateContentRequest.contents: contents is not specified")
    for index, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role", "user") not in ("user", "model"):
            raise _Refusal(400, "Please use a valid role: user, model.")
        calls = sum(1 for p in _parts(content) if "functionCall" in p)
        if calls:
            answer = contents[index + 1] if index + 1 < len(contents) else None
            if answer is not None and sum(1 for p in _parts(answer) if "functionResponse" in p) != calls:
                raise _Refusal(
                    400,
                    "Please ensure that the number of function response parts is equal to the number of "
                    "function call parts of the function call turn.",
                )


def _text(content: Any) -> str:
    return " ".join(str(p["text"]) for p in _parts(content) if isinstance(p.get("text"), str))


def _answer(body: dict[str, Any], behaviour: GoogleBehaviour) -> tuple[list[str], str]:
    """The text pieces and the finish reason."""
    last_user = next((c for c in reversed(body["contents"]) if c.get("role", "user") == "user"), {})
    config = body.get("generationConfig") or {}
    pieces, _ = cut_at_stop(behaviour.pieces(f"Echo: {_text(last_user)}"), config.get("stopSequences") or [])
    limit = config.get("maxOutputTokens")
    if isinstance(limit, int) and len(pieces) > limit:
        return pieces[:limit], "MAX_TOKENS"
    return pieces, behaviour.finish_reason


def _usage(body: dict[str, Any], output: int | None) -> dict[str, Any]:
    prompt = max(
        1, sum(len(_text(c).split()) for c in body["contents"]) + len(_text(body.get("systemInstruction")).split())
    )
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if output is not None:
        usage.update(candidatesTokenCount=output, totalTokenCount=prompt + output)
    else:
        usage["totalTokenCount"] = prompt
    return usage


def _call_parts(behaviour: GoogleBehaviour) -> list[dict[str, Any]]:
    parts = []
    for call in behaviour.tool_calls or []:
        part: dict[str, Any] = {"functionCall": {"name": call["name"], "args": call.get("args", {})}}
        if call.get("id"):
            part["functionCall"]["id"] = call["id"]
        if call.get("thought_signature"):
            part["thoughtSignature"] = call["thought_signature"]
        parts.append(part)
    return parts


def _response(
    model: str, response_id: str, parts: list[dict[str, Any]], finish: str | None, usage: dict[str, Any]
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    if finish == "SAFETY":
        candidate["content"] = {"role": "model"}
        candidate["safetyRatings"] = [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
        ]
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": response_id}


def _blocked(body: dict[str, Any], model: str, reason: str) -> dict[str, Any]:
    ratings = [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}]
    return {
        "promptFeedback": {"blockReason": reason, "safetyRatings": ratings},
        "usageMetadata": _usage(body, None),
        "modelVersion": model,
        "responseId": uuid.uuid4().hex[:20],
    }


def _events(body: dict[str, Any], model: str, behaviour: GoogleBehaviour) -> list[dict[str, Any]]:
    """The stream's events; their concatenated parts are the whole answer."""
    if behaviour.block_reason:
        return [_blocked(body, model, behaviour.block_reason)]
    pieces, finish = _answer(body, behaviour)
    response_id = uuid.uuid4().hex[:20]
    calls = _call_parts(behaviour)
    output = max(1, len(pieces) + len(calls))
    events = [_response(model, response_id, [{"text": p}], None, _usage(body, None)) for p in pieces]
    last = _response(model, response_id, calls, finish, _usage(body, output))
    if events and not calls and finish != "SAFETY":
        events[-1] = _response(model, response_id, [{"text": pieces[-1]}], finish, _usage(body, output))
        return events
    return [*events, last]


def _whole(body: dict[str, Any], model: str, behaviour: GoogleBehaviour) -> dict[str, Any]:
    """The non-streaming answer: every event's parts in one response."""
    events = _events(body, model, behaviour)
    if "promptFeedback" in events[0]:
        return events[0]
    parts: list[dict[str, Any]] = []
    for event in events:
        parts.extend(_parts(event["candidates"][0]["content"]))
    text = "".join(p["text"] for p in parts if "text" in p)
    merged = ([{"text": text}] if text else []) + [p for p in parts if "text" not in p]
    last = events[-1]
    return _response(model, last["responseId"], merged, last["candidates"][0]["finishReason"], last["usageMetadata"])


async def _sse(events: list[dict[str, Any]], behaviour: GoogleBehaviour) -> AsyncIterator[bytes]:
    for sent, event in enumerate(events):
        if behaviour.cut_after is not None and sent >= behaviour.cut_after:
            await crash()
        if behaviour.error_event_after is not None and sent >= behaviour.error_event_after:
            status = behaviour.status or 503
            error = {"code": status, "message": behaviour.error, "status": STATUS_NAMES.get(status, "UNKNOWN")}
            yield b"data: " + json.dumps({"error": error}).encode() + b"\r\n\r\n"
            return
        if behaviour.chunk_delay_s:
            await asyncio.sleep(behaviour.chunk_delay_s)
        yield b"data: " + json.dumps(event).encode() + b"\r\n\r\n"


async def _json_array(events: list[dict[str, Any]], behaviour: GoogleBehaviour) -> AsyncIterator[bytes]:
    for sent, event in enumerate(events):
        if behaviour.cut_after is not None and sent >= behaviour.cut_after:
            await crash()
        yield (b"[" if sent == 0 else b",\r\n") + json.dumps(event, indent=2).encode()
    yield b"]"


def create_app(state: EmulatorState | None = None) -> Starlette:
    state = state or EmulatorState()

    async def model_call(request: Request) -> Response:
        path = request.url.path
        gemini, vertex = GEMINI_PATH.fullmatch(path), VERTEX_PATH.fullmatch(path)
        match = gemini or vertex
        if match is None or match["method"] not in METHODS:
            return _error(404, f"Method not found: {path}")
        raw = await request.body()
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = None
        state.requests.append(
            {"path": path, "query": dict(request.query_params), "headers": dict(request.headers), "body": body}
        )
        try:
            if gemini:
                _check_key(state, request)
            else:
                _check_token(state, request)
            _validate(body)
        except _Refusal as refusal:
            return _error(refusal.status, refusal.message, details=refusal.details)
        return await _answer_call(state, state.script.next(), body, match["model"], match["method"], request)

    async def token(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        state.grants.append({k: str(v) for k, v in form.items()})
        behaviour = state.token_script.next()
        if behaviour.status is not None or not _grant_ok(state, form, str(request.url)):
            body = {"error": "invalid_grant", "error_description": behaviour.error}
            return JSONResponse(body, status_code=behaviour.status or 400)
        access = f"ya29.emulated-{uuid.uuid4().hex}"
        state.tokens.add(access)
        return JSONResponse({"access_token": access, "expires_in": behaviour.expires_in, "token_type": "Bearer"})

    async def grants(request: Request) -> Response:
        return JSONResponse(state.grants)

    app = Starlette(
        routes=[
            Route("/token", token, methods=["POST"]),
            Route("/_emulator/tokens", grants),
            *control_routes(state),
            Route("/{path:path}", model_call, methods=["POST"]),
        ]
    )
    app.state.emulator = state
    return app


def _grant_ok(state: EmulatorState, form: dict[str, Any], token_uri: str) -> bool:
    if form.get("grant_type") == "refresh_token":
        return bool(form.get("refresh_token"))
    if form.get("grant_type") != JWT_GRANT or not form.get("assertion"):
        return False
    if state.public_key is None:
        return True
    from google.auth import exceptions, jwt

    try:
        # google-auth addresses its JWTs to Google's token endpoint, wherever token_uri points.
        audience = [token_uri, "https://oauth2.googleapis.com/token"]
        claims = jwt.decode(str(form["assertion"]), certs=state.public_key, audience=audience)
    except (exceptions.GoogleAuthError, ValueError):
        return False
    return "https://www.googleapis.com/auth/cloud-platform" in str(claims.get("scope", "")).split()


async def _answer_call(
    state: EmulatorState, behaviour: GoogleBehaviour, body: dict[str, Any], model: str, method: str, request: Request
) -> Response:
    if (early := await behaviour.before_answering()) is not None:
        return early
    if behaviour.status is not None and behaviour.error_event_after is None:
        details = []
        if behaviour.retry_delay:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": behaviour.retry_delay})
        return _error(behaviour.status, behaviour.error, details=details, headers=behaviour.headers)
    if behaviour.malformed:
        if method == "streamGenerateContent":
            return StreamingResponse(_malformed_stream(), media_type="text/event-stream")
        return Response(b"<html>502 Bad Gateway</html>", media_type="application/json")
    if method == "generateContent":
        return JSONResponse(_whole(body, model, behaviour))
    events = _events(body, model, behaviour)
    if request.query_params.get("alt") == "sse":
        return StreamingResponse(state.tracked(_sse(events, behaviour)), media_type="text/event-stream")
    return StreamingResponse(state.tracked(_json_array(events, behaviour)), media_type="application/json")


async def _malformed_stream() -> AsyncIterator[bytes]:
    yield b"data: <html>502 Bad Gateway</html>\r\n\r\n"


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", help="the Gemini API key to accept")
    parser.add_argument("--public-key-file", help="PEM public key of the service account whose JWT grants to accept")
    args = parser.parse_args()
    public_key = open(args.public_key_file).read() if args.public_key_file else None  # noqa: SIM115
    state = EmulatorState(api_key=args.api_key, public_key=public_key)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
