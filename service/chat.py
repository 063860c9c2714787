"""``POST /v1/chat/completions`` and ``POST /v1/route``.

The request path, in order: authenticate, read the body under the size
limit, validate it, check the limits, decide the target (features plus
policies), then answer in one piece or as a stream. Every exit, success or
failure, is counted, timed and logged once, with the request id.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from router.backends.base import Backend
from router.chat import ChatChunk, ChatRequest, Usage
from router.errors import HybridRouterError, InvalidRequest, PayloadTooLarge, UpstreamProtocolError, UpstreamTimeout
from router.router import Decision
from service.gateway import Gateway
from service.settings import LimitSettings
from service.streaming import DONE, ClientGone, EventStreamResponse, cancel_on_disconnect, sse_event

__all__ = ["chat_completions", "dry_run_route"]

log = logging.getLogger("hybrid_router.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_for(request: Request) -> str:
    incoming = request.headers.get("x-request-id")
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit}.")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise InvalidRequest("The client disconnected while sending the body.") from exc
    return b"".join(chunks)


def parse_chat_request(body: bytes) -> ChatRequest:
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON chat completion request.")
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(part) for part in first["loc"])
        if first["type"] == "json_invalid":
            raise InvalidRequest(f"The body is not valid JSON: {first['msg']}") from None
        if first["type"] == "model_type":
            raise InvalidRequest("The body must be a JSON object.") from None
        count = len(exc.errors())
        more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
        raise InvalidRequest(f"Invalid value for '{loc}': {first['msg']}{more}", param=loc or None) from None


def check_limits(chat: ChatRequest, limits: LimitSettings) -> None:
    if len(chat.messages) > limits.max_messages:
        raise InvalidRequest(
            f"Too many messages: {len(chat.messages)}; the limit is {limits.max_messages}.", param="messages"
        )
    if len(chat.prompt_text) > limits.max_prompt_chars:
        raise InvalidRequest(
            f"The prompt has {len(chat.prompt_text)} characters; the limit is {limits.max_prompt_chars}.",
            param="messages",
            code="prompt_too_long",
        )


def route_headers(decision: Decision, request_id: str) -> dict[str, str]:
    headers = {"x-request-id": request_id, "x-route-decision-ms": f"{decision.decision_ms:.3f}"}
    if decision.target is not None:
        headers["x-route-target"] = decision.target
    # Header values must be latin-1; reasons are ASCII by construction but user-given names may not be.
    headers["x-route-reason"] = decision.reason.encode("ascii", "replace").decode()[:200]
    return headers


@dataclass
class _Outcome:
    """What one request did, for the metrics and the access log."""

    started: float = field(default_factory=time.perf_counter)
    target: str = "none"
    decided_by: str = "none"
    reason: str = ""
    status: int = 200
    stream: bool = False
    usage: Usage | None = None
    first_token_s: float | None = None
    error: str | None = None


async def chat_completions(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    outcome = _Outcome()
    request.state.request_id = request_id = request_id_for(request)
    chat: ChatRequest | None = None
    streaming = False
    gateway.metrics.in_flight.inc()
    try:
        chat = await _parse(request, gateway)
        outcome.stream = chat.stream
        backend = await _decide(request, gateway, chat, outcome, request_id)
        if not chat.stream:
            return await _complete(request, gateway, backend, chat, outcome)
        response = await _stream(request, gateway, backend, chat, outcome)
        streaming = True
        return response
    except HybridRouterError as exc:
        outcome.status, outcome.error = exc.status_code, exc.code
        _record_failure(gateway, outcome, exc)
        raise
    except ClientGone:
        outcome.status, outcome.error = 499, "client_closed_request"
        return Response(status_code=499)
    except Exception as exc:
        outcome.status, outcome.error = 500, type(exc).__name__
        raise
    finally:
        # A stream is finished (counted, logged) by its response once it ends.
        if not streaming:
            _finish(gateway, outcome, request_id, chat)


async def _parse(request: Request, gateway: Gateway) -> ChatRequest:
    gateway.auth.check(request.headers.get("authorization"))
    limits = gateway.settings.limits
    chat = parse_chat_request(await read_body(request, limits.max_body_bytes))
    check_limits(chat, limits)
    return chat


async def _decide(request: Request, gateway: Gateway, chat: ChatRequest, outcome: _Outcome, request_id: str) -> Backend:
    decision = await gateway.router.decide(chat)
    gateway.metrics.decision.observe(decision.decision_ms / 1000)
    request.state.route_headers = route_headers(decision, request_id)
    outcome.decided_by, outcome.reason = decision.decided_by, decision.reason
    if decision.error is not None:
        raise decision.error
    assert decision.target is not None
    outcome.target = decision.target
    return gateway.router.backend_for(decision)


def _record_failure(gateway: Gateway, outcome: _Outcome, exc: HybridRouterError) -> None:
    if outcome.target != "none":
        gateway.metrics.upstream_errors.labels(outcome.target, exc.code or "error").inc()


async def _complete(
    request: Request, gateway: Gateway, backend: Backend, chat: ChatRequest, outcome: _Outcome
) -> Response:
    timeout = gateway.settings.limits.request_timeout_s
    called = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            result = await cancel_on_disconnect(backend.complete(chat), request.receive)
    except TimeoutError:
        raise UpstreamTimeout(f"The request did not finish within the {timeout:g} s deadline.") from None
    outcome.usage = result.usage
    if result.first_token_s is not None:
        outcome.first_token_s = called - outcome.started + result.first_token_s
    return Response(orjson.dumps(result.body), media_type="application/json", headers=request.state.route_headers)


async def _stream(
    request: Request, gateway: Gateway, backend: Backend, chat: ChatRequest, outcome: _Outcome
) -> Response:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + gateway.settings.limits.request_timeout_s
    chunks = backend.stream(chat)
    try:
        # Wait for the first chunk before sending headers: a target that fails
        # straight away gets a proper HTTP status instead of a 200 stream.
        async with asyncio.timeout_at(deadline):
            first = await cancel_on_disconnect(anext(chunks), request.receive)
    except StopAsyncIteration:
        raise UpstreamProtocolError(f"target {outcome.target} ended the stream without output") from None
    except TimeoutError:
        await chunks.aclose()
        raise UpstreamTimeout("The request produced no output before its deadline.") from None
    except BaseException:
        await chunks.aclose()
        raise
    request_id = request.state.request_id
    events = _events(gateway, chunks, first, chat, outcome, deadline, request_id)
    return EventStreamResponse(
        events, request.state.route_headers, on_close=lambda: _finish(gateway, outcome, request_id, chat)
    )


async def _events(
    gateway: Gateway,
    chunks: AsyncGenerator[ChatChunk, None],
    first: ChatChunk,
    chat: ChatRequest,
    outcome: _Outcome,
    deadline: float,
    request_id: str,
) -> AsyncIterator[bytes]:
    include_usage = chat.include_usage
    try:
        chunk: ChatChunk | None = first
        while chunk is not None:
            if chunk.get("usage") and not chunk.get("choices"):
                outcome.usage = Usage.from_openai(chunk["usage"])
                if include_usage:
                    yield sse_event(chunk)
            else:
                if outcome.first_token_s is None and _has_output(chunk):
                    outcome.first_token_s = time.perf_counter() - outcome.started
                yield sse_event(chunk)
            async with asyncio.timeout_at(deadline):
                chunk = await anext(chunks, None)
    except TimeoutError:
        error: HybridRouterError = UpstreamTimeout("The stream did not finish within its deadline.")
        outcome.status, outcome.error = error.status_code, error.code
        yield sse_event(error.to_openai())
    except HybridRouterError as exc:
        outcome.status, outcome.error = exc.status_code, exc.code
        _record_failure(gateway, outcome, exc)
        yield sse_event(exc.to_openai())
    except asyncio.CancelledError:
        outcome.status, outcome.error = 499, "client_closed_request"
        raise
    except Exception as exc:
        log.error("stream failed", exc_info=exc, extra={"request_id": request_id})
        outcome.status, outcome.error = 500, type(exc).__name__
        yield sse_event(HybridRouterError(f"The stream failed; see request id {request_id}.").to_openai())
    finally:
        await chunks.aclose()
    yield DONE


def _has_output(chunk: ChatChunk) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls"):
            return True
    return False


def _finish(gateway: Gateway, outcome: _Outcome, request_id: str, chat: ChatRequest | None) -> None:
    elapsed = time.perf_counter() - outcome.started
    metrics = gateway.metrics
    metrics.in_flight.dec()
    metrics.requests.labels(outcome.target, outcome.decided_by, str(outcome.status)).inc()
    if outcome.target != "none":
        metrics.latency.labels(outcome.target, "true" if outcome.stream else "false").observe(elapsed)
        if outcome.status == 200:
            gateway.router.observe_latency(outcome.target, (outcome.first_token_s or elapsed) * 1000)
    if outcome.first_token_s is not None:
        metrics.ttft.labels(outcome.target).observe(outcome.first_token_s)
        if outcome.usage and outcome.usage.completion_tokens > 1 and elapsed > outcome.first_token_s:
            rate = (outcome.usage.completion_tokens - 1) / (elapsed - outcome.first_token_s)
            metrics.decode_rate.labels(outcome.target).observe(rate)
    if outcome.usage is not None and outcome.target != "none":
        profile = gateway.router.profiles[outcome.target]
        metrics.record_usage(
            outcome.target, outcome.usage, price_input=profile.price_input, price_output=profile.price_output
        )
    fields: dict[str, Any] = {
        "request_id": request_id,
        "target": outcome.target,
        "reason": outcome.reason,
        "decided_by": outcome.decided_by,
        "status": outcome.status,
        "stream": outcome.stream,
        "latency_ms": round(elapsed * 1000, 2),
    }
    if outcome.first_token_s is not None:
        fields["ttft_ms"] = round(outcome.first_token_s * 1000, 2)
    if outcome.usage is not None:
        fields["tokens_in"], fields["tokens_out"] = outcome.usage.prompt_tokens, outcome.usage.completion_tokens
    if outcome.error:
        fields["error"] = outcome.error
    if chat is not None and gateway.settings.logging.log_prompts:
        fields["prompt"] = chat.prompt_text
    log.info("chat completion", extra=fields)


async def dry_run_route(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    request.state.request_id = request_id = request_id_for(request)
    chat = await _parse(request, gateway)
    decision = await gateway.router.decide(chat)
    body = decision.to_dict()
    body["request_id"] = request_id
    return Response(orjson.dumps(body), media_type="application/json", headers={"x-request-id": request_id})
