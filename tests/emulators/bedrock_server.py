"""An AWS Bedrock Runtime emulator (Converse and ConverseStream), scriptable per test.

It follows the documented wire format, as the official SDK (boto3) reads it:

* ``POST /model/{modelId}/converse`` and ``/converse-stream``, the model id
  percent-encoded in the path (``:`` as ``%3A``);
* every request must carry a valid SigV4 signature for service ``bedrock``,
  **verified with botocore** against the test credentials: the emulator
  recomputes the signature over the received method, raw path, signed headers
  and body, and answers 403 ``InvalidSignatureException`` (or
  ``UnrecognizedClientException`` for an unknown key) when it differs;
* bodies are validated against botocore's service model for
  ``bedrock-runtime`` (unknown fields, wrong types) and Converse's own rules
  (alternating roles, first turn ``user``, no blank text, ``toolConfig``
  whenever tool blocks appear): 400 ``ValidationException``;
* errors carry ``x-amzn-ErrorType`` and a ``{"message"}`` body;
* streams are AWS event-stream frames, written here by hand because botocore
  only decodes them: prelude (total length, headers length, CRC32), typed
  headers, JSON payload with a random ``p`` padding field, message CRC32.

By default it answers ``"Echo: <last user text>"``. Tests script it with
:class:`BedrockBehaviour` (see :mod:`tests.emulators.scripting` for the
fields every emulator has), e.g.:

    {"content": "Hi", "chunks": ["H", "i"]}             a specific answer
    {"tool_calls": [{"id": "t1", "name": "f", "input": {...}}]}
    {"status": 429, "error_type": "ThrottlingException", "error": "...", "headers": {"retry-after": "3"}}
    {"exception": {"type": "throttlingException", "message": "...", "after": 1}}   in-stream exception
    {"cut_after": 2}                                    drop the stream after 2 text deltas
    {"malformed": true}                                 a non-JSON answer / a frame with a bad CRC
    {"split": 5}                                        write frames 5 bytes at a time
    {"coalesce": true}                                  write the whole stream at once
    {"stop_reason": "guardrail_intervened"}             override the stop reason
    {"delay_s": 0.5, "chunk_delay_s": 0.1}

Run alone: ``python -m tests.emulators.bedrock_server --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import datetime as dt
import hmac
import itertools
import json
import random
import re
import string
import struct
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.session import get_session
from botocore.validate import ParamValidator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.emulators import scripting
from tests.emulators.scripting import Behaviour, control_routes, cut_at_stop, parse_fields

__all__ = [
    "TEST_ACCESS_KEY",
    "TEST_REGION",
    "TEST_SECRET_KEY",
    "BedrockBehaviour",
    "BedrockEmulatorState",
    "StreamException",
    "create_app",
    "encode_message",
    "event_frame",
    "validate_converse",
]

TEST_ACCESS_KEY = "AKIAEMULATORTESTKEY0"
TEST_SECRET_KEY = "emulatorSecretKey/0123456789abcdefghijKLM"
TEST_REGION = "us-east-1"
SERVICE = "bedrock"
EVENT_STREAM = "application/vnd.amazon.eventstream"

_STATUS = {
    "AccessDeniedException": 403, "ExpiredTokenException": 403, "IncompleteSignatureException": 403,
    "InternalServerException": 500, "InvalidSignatureException": 403, "MissingAuthenticationTokenException": 403,
    "ModelErrorException": 424, "ModelNotReadyException": 429, "ModelTimeoutException": 408,
    "ResourceNotFoundException": 404, "ServiceUnavailableException": 503, "ThrottlingException": 429,
    "UnrecognizedClientException": 403, "ValidationException": 400,
}  # fmt: skip
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r" ?SignedHeaders=(?P<signed>[^,]+), ?Signature=(?P<signature>[0-9a-f]{64})"
)
_MAX_SKEW = dt.timedelta(minutes=15)


# --- event-stream encoding ------------------------------------------------------------------------


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message with string-typed headers (type 7), CRCs included."""
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += struct.pack("!B", len(raw_name)) + raw_name + struct.pack("!BH", 7, len(raw_value)) + raw_value
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def _padding() -> str:
    # Bedrock pads events to a random length so that sizes leak nothing.
    return "".join(random.choices(string.ascii_letters + string.digits, k=random.randint(1, 40)))


def event_frame(event_type: str, payload: Mapping[str, Any]) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, json.dumps({**payload, "p": _padding()}).encode())


def exception_frame(exception_type: str, message: str) -> bytes:
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return encode_message(headers, json.dumps({"message": message}).encode())


# --- request checks -------------------------------------------------------------------------------


class Rejection(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def verify_sigv4(
    method: str,
    raw_path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    credentials: Mapping[str, str],
    tokens: Mapping[str, str],
    region: str,
    now: dt.datetime,
) -> None:
    """Raise :class:`Rejection` unless the request is signed as AWS would require."""
    match = _AUTH.fullmatch(headers.get("authorization", ""))
    if "authorization" not in headers:
        raise Rejection("MissingAuthenticationTokenException", "Missing Authentication Token")
    if match is None:
        raise Rejection(
            "IncompleteSignatureException", "Authorization header requires Credential, SignedHeaders and Signature."
        )
    key = match["key"]
    if key not in credentials:
        raise Rejection("UnrecognizedClientException", "The security token included in the request is invalid.")
    if match["service"] != SERVICE:
        raise Rejection("InvalidSignatureException", f"Credential should be scoped to correct service: '{SERVICE}'. ")
    if match["region"] != region:
        raise Rejection(
            "InvalidSignatureException", f"Credential should be scoped to a valid region, not '{match['region']}'. "
        )
    if tokens.get(key) is not None and headers.get("x-amz-security-token") != tokens[key]:
        raise Rejection("UnrecognizedClientException", "The security token included in the request is invalid.")
    stamp = headers.get("x-amz-date", "")
    try:
        when = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise Rejection("IncompleteSignatureException", "Missing or invalid X-Amz-Date.") from None
    if abs(now - when) > _MAX_SKEW or stamp[:8] != match["date"]:
        raise Rejection("InvalidSignatureException", "Signature expired or not yet current.")
    signed = match["signed"].split(";")
    if "host" not in signed or any(name not in headers for name in signed):
        raise Rejection("InvalidSignatureException", "The request signature must cover host and every signed header.")
    url = f"http://{headers['host']}{raw_path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers={name: headers[name] for name in signed})
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(key, credentials[key], tokens.get(key)), SERVICE, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, match["signature"]):
        raise Rejection(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        )


def validate_converse(model_id: str, body: Mapping[str, Any], *, stream: bool = False) -> list[str]:
    """Problems with a Converse body: botocore's service model, then Converse's own rules."""
    model = get_session().get_service_model("bedrock-runtime")
    shape = model.operation_model("ConverseStream" if stream else "Converse").input_shape
    report = ParamValidator().validate({"modelId": model_id, **body}, shape)
    if report.has_errors():
        return [report.generate_report()]
    return _conversation_rules(body)


def _conversation_rules(body: Mapping[str, Any]) -> list[str]:
    problems = []
    messages = body.get("messages", [])
    if not messages or messages[0]["role"] != "user":
        problems.append("A conversation must start with a user message.")
    for index, (before, after) in enumerate(itertools.pairwise(messages)):
        if before["role"] == after["role"]:
            problems.append(f"A conversation must alternate between user and assistant roles (messages.{index + 1}).")
    seen_tool_uses: set[str] = set()
    for index, message in enumerate(messages):
        for block in message["content"]:
            if "text" in block and not block["text"].strip():
                problems.append(f"The text field in the ContentBlock object at messages.{index} is blank.")
            if ("toolUse" in block or "toolResult" in block) and "toolConfig" not in body:
                problems.append(
                    "The toolConfig field must be defined when using toolUse and toolResult content blocks."
                )
            if "toolUse" in block:
                seen_tool_uses.add(block["toolUse"]["toolUseId"])
            if "toolResult" in block and block["toolResult"]["toolUseId"] not in seen_tool_uses:
                problems.append(f"messages.{index}: toolResult references an unknown toolUseId.")
    return problems


# --- answers --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StreamException:
    """A modelled exception sent inside the event stream."""

    type: str
    message: str = "emulated failure"
    after: int = 0
    """Text deltas sent before it."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> StreamException:
        return parse_fields(cls, raw)


@dataclass(frozen=True, kw_only=True)
class BedrockBehaviour(Behaviour):
    tool_calls: list[dict[str, Any]] | None = None
    """``{"id", "name", "input"}`` each, answered as ``toolUse`` blocks."""
    stop_reason: str | None = None
    """Overrides the stop reason (``guardrail_intervened``)."""
    error_type: str | None = None
    """Answer with this error type (``ThrottlingException``), with ``status`` or the type's own."""
    exception: StreamException | None = None
    split: int | None = None
    """Write frames this many bytes at a time."""
    coalesce: bool = False
    """Write the whole stream at once."""
    usage: dict[str, int] | None = None

    nested: ClassVar[Mapping[str, Any]] = {"exception": StreamException}


class BedrockEmulatorState(scripting.EmulatorState[BedrockBehaviour]):
    def __init__(
        self,
        credentials: Mapping[str, str] | None = None,
        *,
        tokens: Mapping[str, str] | None = None,
        region: str = TEST_REGION,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        super().__init__(BedrockBehaviour)
        self.credentials = dict(credentials or {TEST_ACCESS_KEY: TEST_SECRET_KEY})
        self.tokens = dict(tokens or {})
        self.region = region
        self.clock = clock


def _error(
    error_type: str, message: str, headers: Mapping[str, str] | None = None, status: int | None = None
) -> Response:
    return JSONResponse(
        {"message": message},
        status_code=status or _STATUS.get(error_type, 400),
        headers={
            "x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "x-amzn-RequestId": str(uuid.uuid4()),
            **(headers or {}),
        },
    )


def _texts(blocks: Iterable[Mapping[str, Any]]) -> str:
    return " ".join(str(block["text"]) for block in blocks if "text" in block)


def _last_user_text(body: Mapping[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message["role"] == "user" and (text := _texts(message["content"])):
            return text
    return ""


def _input_tokens(body: Mapping[str, Any]) -> int:
    words = _texts(body.get("system", [])).split()
    for message in body.get("messages", []):
        words += _texts(message["content"]).split()
    return max(1, len(words))


class _Answer:
    """What to answer, after stop sequences and maxTokens have had their say."""

    def __init__(self, body: Mapping[str, Any], behaviour: BedrockBehaviour) -> None:
        self.tool_calls: list[dict[str, Any]] = behaviour.tool_calls or []
        self.stop_reason = "tool_use" if self.tool_calls else "end_turn"
        config = body.get("inferenceConfig", {})
        chunks, stop = cut_at_stop(behaviour.pieces(f"Echo: {_last_user_text(body)}"), config.get("stopSequences", []))
        if stop is not None:
            self.stop_reason = "stop_sequence"
        if (limit := config.get("maxTokens")) is not None and len(chunks) > limit:
            chunks, self.stop_reason, self.tool_calls = chunks[:limit], "max_tokens", []
        self.chunks = chunks if not self.tool_calls or behaviour.content else []
        self.stop_reason = behaviour.stop_reason or self.stop_reason
        self.usage = dict(behaviour.usage or {})
        self.usage.setdefault("inputTokens", _input_tokens(body))
        self.usage.setdefault("outputTokens", len(self.chunks) + 5 * len(self.tool_calls))
        self.usage.setdefault("totalTokens", self.usage["inputTokens"] + self.usage["outputTokens"])

    def converse(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"text": "".join(self.chunks)}] if self.chunks else []
        content += [
            {"toolUse": {"toolUseId": c["id"], "name": c["name"], "input": c["input"]}} for c in self.tool_calls
        ]
        return {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": self.stop_reason,
            "usage": self.usage,
            "metrics": {"latencyMs": 42},
        }

    def frames(self, behaviour: BedrockBehaviour) -> list[bytes]:
        frames = [event_frame("messageStart", {"role": "assistant"})]
        exception = behaviour.exception
        for index, chunk in enumerate(self.chunks):
            if exception and exception.after == index:
                return [*frames, exception_frame(exception.type, exception.message)]
            frames.append(event_frame("contentBlockDelta", {"delta": {"text": chunk}, "contentBlockIndex": 0}))
        if self.chunks:
            frames.append(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
        for offset, call in enumerate(self.tool_calls, start=1 if self.chunks else 0):
            start = {"toolUse": {"toolUseId": call["id"], "name": call["name"]}}
            frames.append(event_frame("contentBlockStart", {"start": start, "contentBlockIndex": offset}))
            arguments = json.dumps(call["input"])
            for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                delta = {"delta": {"toolUse": {"input": piece}}, "contentBlockIndex": offset}
                frames.append(event_frame("contentBlockDelta", delta))
            frames.append(event_frame("contentBlockStop", {"contentBlockIndex": offset}))
        if exception:
            return [*frames, exception_frame(exception.type, exception.message)]
        frames.append(event_frame("messageStop", {"stopReason": self.stop_reason}))
        frames.append(event_frame("metadata", {"usage": self.usage, "metrics": {"latencyMs": 42}}))
        return frames


async def _write(frames: list[bytes], behaviour: BedrockBehaviour) -> AsyncIterator[bytes]:
    if behaviour.coalesce:
        yield b"".join(frames)
        return
    split = behaviour.split
    for index, frame in enumerate(frames):
        if behaviour.cut_after is not None and index > behaviour.cut_after:
            # Dropping the connection mid-stream is what a crashed upstream looks like. A pause
            # first, so the client has read what was sent (aiohttp drops unread data on a reset).
            await asyncio.sleep(0.1)
            raise ConnectionResetError("emulated upstream crash")
        if behaviour.chunk_delay_s:
            await asyncio.sleep(behaviour.chunk_delay_s)
        if behaviour.malformed and index == 1:
            frame = frame[:-5] + bytes([frame[-5] ^ 0xFF]) + frame[-4:]
        if not split:
            yield frame
            continue
        for start in range(0, len(frame), split):
            yield frame[start : start + split]
            # A pause makes each piece its own network read.
            await asyncio.sleep(0.001)


def create_app(state: BedrockEmulatorState | None = None) -> Starlette:
    state = state or BedrockEmulatorState()

    async def invoke(request: Request) -> Response:
        raw_path = request.scope["raw_path"].decode("latin-1")
        parts = raw_path.split("/")
        if len(parts) != 4 or parts[1] != "model" or parts[3] not in ("converse", "converse-stream"):
            return _error("UnknownOperationException", "Unknown operation", status=404)
        model_id, stream = unquote(parts[2]), parts[3] == "converse-stream"
        body_bytes = await request.body()
        headers = {key.lower(): value for key, value in request.headers.items()}
        record: dict[str, Any] = {"path": raw_path, "model_id": model_id, "stream": stream, "headers": headers}
        state.requests.append(record)
        try:
            verify_sigv4(
                request.method, raw_path, request.scope["query_string"].decode(), headers, body_bytes,
                credentials=state.credentials, tokens=state.tokens, region=state.region, now=state.clock(),
            )  # fmt: skip
            body = json.loads(body_bytes)
        except Rejection as rejection:
            return _error(rejection.error_type, rejection.message)
        except json.JSONDecodeError:
            return _error("ValidationException", "Malformed input request, please reformat your input and try again.")
        record["body"] = body
        if problems := validate_converse(model_id, body, stream=stream):
            return _error("ValidationException", "; ".join(problems))
        return await _answer(state, state.script.next(), body, stream)

    app = Starlette(
        routes=[
            *control_routes(state),
            Route("/model/{rest:path}", invoke, methods=["POST"]),
        ]
    )
    app.state.emulator = state
    return app


async def _answer(
    state: BedrockEmulatorState, behaviour: BedrockBehaviour, body: Mapping[str, Any], stream: bool
) -> Response:
    if (early := await behaviour.before_answering()) is not None:
        return early
    if behaviour.status is not None or behaviour.error_type is not None:
        error_type = behaviour.error_type if behaviour.error_type is not None else "InternalServerException"
        return _error(error_type, behaviour.error, behaviour.headers, behaviour.status)
    answer = _Answer(body, behaviour)
    request_id = {"x-amzn-RequestId": str(uuid.uuid4())}
    if not stream:
        if behaviour.malformed:
            return Response(b"<html>502 Bad Gateway</html>", media_type="application/json", headers=request_id)
        return JSONResponse(answer.converse(), headers=request_id)
    frames = state.tracked(_write(answer.frames(behaviour), behaviour))
    return StreamingResponse(frames, media_type=EVENT_STREAM, headers=request_id)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--region", default=TEST_REGION)
    parser.add_argument("--access-key", default=TEST_ACCESS_KEY)
    parser.add_argument("--secret-key", default=TEST_SECRET_KEY)
    args = parser.parse_args()
    state = BedrockEmulatorState({args.access_key: args.secret_key}, region=args.region)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
