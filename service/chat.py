"""``POST /v1/chat/completions`` and ``POST /v1/route``.

The request path, in order: authenticate, read the body under the size
limit, validate it, check the limits, decide the target (features plus
policies), then answer in one piece or as a stream. Every exit, success or
failure, is counted, timed and logged once, with the request id.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from router.backends.base import Backend
from router.backends.cascade import CascadeBackend, CascadeOutcome
from router.chat import ChatChunk, ChatRequest, ChatResult, Usage
from router.errors import (
    HybridRouterError,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from router.features import Features
from router.policies.distilled import DISTILLED_ROUTE, DistilledRoute
from router.policies.latency import DEADLINE_MS
from router.resilience.failover import FailoverBackend
from router.router import Decision, ShadowReport
from router.sessions import SESSION_ID
from router.tasks import tag_task
from service.auth import DEFAULT_TENANT
from service.capture import Answer, AnswerCollector
from service.clients import Client
from service.gateway import Gateway, Runtime
from service.settings import LimitSettings
from service.spend import Admission
from service.streaming import DONE, ClientGone, EventStreamResponse, cancel_on_disconnect, sse_event

__all__ = ["chat_completions", "chat_openapi", "check_limits", "dry_run_route", "parse_chat_request", "read_body"]

log = logging.getLogger("hybrid_router.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_for(request: Request) -> str:
    incoming = request.headers.get("x-request-id")
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The whole body, at most ``limit`` bytes, arrived within ``timeout_s`` (a client trickling it gets 408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit}.")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:g} s.") from None
    except ClientDisconnect as exc:
        raise InvalidRequest("The client disconnected while sending the body.") from exc
    return b"".join(chunks)


def _hold(request: Request) -> Runtime:
    """The live config, held for this request alone until it ends (``_finish``): a reload meanwhile swaps in
    a new one beside it, so the request never sees two configs and its targets stay open."""
    live: Gateway = request.app.state.gateway
    return live.hold()


def parse_chat_request(body: bytes) -> ChatRequest:
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON chat completion request.")
    try:
        chat = ChatRequest.model_validate_json(body)
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
    # JSON allows any number, but the request is re-encoded for upstreams (and for /v1/route's answer) by
    # 64-bit encoders: refuse here what would otherwise fail there, in any field, known or not.
    bad = _unencodable_number(chat, "")
    if bad is not None:
        raise InvalidRequest(
            f"Invalid value for '{bad}': numbers must be finite and integers must fit in 64 bits.", param=bad
        )
    return chat


_JSON_INTS = range(-(2**63), 2**64)  # what orjson, and the upstreams' JSON parsers, can carry


def _unencodable_number(value: object, path: str) -> str | None:
    """The path of the first huge integer, NaN or infinity in ``value``; None when there is none."""
    items: Iterable[tuple[object, object]]
    if isinstance(value, BaseModel):
        fields = ((name, getattr(value, name)) for name in type(value).model_fields)
        items = itertools.chain(fields, (value.model_extra or {}).items())
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int):
        return None if value in _JSON_INTS else path
    elif isinstance(value, float):
        return None if math.isfinite(value) else path
    else:
        return None
    for key, item in items:
        found = _unencodable_number(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def check_limits(chat: ChatRequest, limits: LimitSettings) -> None:
    for name in ("max_tokens", "max_completion_tokens"):
        asked: int | None = getattr(chat, name)
        if asked is not None and asked > limits.max_tokens_ceiling:
            raise InvalidRequest(
                f"'{name}' is {asked}; the limit is {limits.max_tokens_ceiling}.",
                param=name,
                code="max_tokens_too_large",
            )
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


def chat_openapi(limits: LimitSettings) -> dict[str, Any]:
    """``openapi_extra`` for both chat routes: :class:`ChatRequest`'s JSON schema as the body.

    The routes read the raw body (one parse, our own error messages), so
    FastAPI cannot infer it. The schema carries the configured limits and
    what the validators check, so that generated clients and fuzzers send
    what the gateway accepts.
    """
    schema = _inline_refs(ChatRequest.model_json_schema())
    props: dict[str, Any] = schema.get("properties", {})
    messages = props.get("messages", {})
    messages["maxItems"] = limits.max_messages
    for name in ("max_tokens", "max_completion_tokens"):
        _branch(props.get(name), "integer")["maximum"] = limits.max_tokens_ceiling
    # Message._parts_have_a_type and ChatRequest._stops_not_empty, in schema form.
    content = messages.get("items", {}).get("properties", {}).get("content")
    _branch(_branch(content, "array").get("items"), "object").update(
        required=["type"], properties={"type": {"type": "string"}}
    )
    _branch(props.get("stop"), "string")["minLength"] = 1
    _branch(_branch(props.get("stop"), "array").get("items"), "string")["minLength"] = 1
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _branch(node: object, kind: str) -> dict[str, Any]:
    """The part of ``node`` (a schema, or an ``anyOf`` of them) of JSON type ``kind``; a scratch dict if none,
    so that a field whose type changed loses a refinement rather than breaking the app."""
    if isinstance(node, dict):
        for option in [node, *node.get("anyOf", ())]:
            if isinstance(option, dict) and option.get("type") == kind:
                return option
    return {}


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its ``$defs`` inlined (ChatRequest's are not recursive), so it stands alone."""
    defs = schema.pop("$defs", {})

    def resolve(node: object) -> object:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved = resolve(schema)
    assert isinstance(resolved, dict)
    return resolved


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
    cascade: CascadeOutcome | None = None
    # "cloud->edge (upstream_rate_limited)" when a fallback target answered or was last tried.
    fallback: str | None = None
    # The decision's features, for the capture of cloud answers (service/capture.py).
    features: Features | None = None
    tenant: str = DEFAULT_TENANT
    # Spend control's record of this request (its rate counts and budget hold), settled in _finish.
    admission: Admission | None = None
    # Characters of answer relayed so far: a stream cut before its usage is charged on them.
    relayed_chars: int = 0


async def chat_completions(request: Request) -> Response:
    gateway = _hold(request)
    outcome = _Outcome()
    request.state.request_id = request_id = request_id_for(request)
    chat: ChatRequest | None = None
    streaming = False
    gateway.metrics.in_flight.inc()
    try:
        chat, client = await _parse(request, gateway)
        outcome.stream, outcome.tenant = chat.stream, client.tenant
        outcome.admission = gateway.spend.begin(client, chat)
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


async def _parse(request: Request, gateway: Runtime) -> tuple[ChatRequest, Client]:
    client = await gateway.clients.identify(request.headers.get("authorization"))
    limits = gateway.settings.limits
    chat = parse_chat_request(await read_body(request, limits.max_body_bytes, gateway.settings.server.body_timeout_s))
    check_limits(chat, limits)
    session = request.headers.get("x-session-id")
    if session and _REQUEST_ID.fullmatch(session):
        chat.memo[SESSION_ID] = session
    tag_task(chat, request.headers.get("x-task"))
    deadline = request.headers.get("x-deadline-ms")
    if deadline is not None:
        chat.memo[DEADLINE_MS] = _deadline_ms(deadline)
    return chat, client


def _deadline_ms(value: str) -> int:
    """The ``x-deadline-ms`` header: whole milliseconds, 1 to 3,600,000."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 3_600_000:
        raise InvalidRequest("The x-deadline-ms header must be whole milliseconds between 1 and 3600000.",
                             param="x-deadline-ms")  # fmt: skip
    return int(text)


async def _decide(request: Request, gateway: Runtime, chat: ChatRequest, outcome: _Outcome, request_id: str) -> Backend:
    router = gateway.router
    first = await router.decide(chat)
    gateway.metrics.decision.observe(first.decision_ms / 1000)
    decision = first
    if first.error is None and outcome.admission is not None:
        # Rate limits and budgets, now that the target (and so the price) is known; a limit that spills
        # to the edge routes the request again without the priced targets.
        decision = await gateway.spend.admit(
            outcome.admission, chat, first, lambda rule_out: router.redecide(chat, first, rule_out)
        )
    request.state.route_headers = route_headers(decision, request_id)
    outcome.decided_by, outcome.reason = decision.decided_by, decision.reason
    outcome.features = decision.features
    if decision.error is not None:
        raise decision.error
    assert decision.target is not None
    outcome.target = decision.target
    if decision.fallback_from is not None:
        _note_fallback(request, gateway, outcome, decision.fallback_from, decision.target, decision.fallback_reason)
    return gateway.router.backend_for(decision)


def _record_failure(gateway: Runtime, outcome: _Outcome, exc: HybridRouterError) -> None:
    if outcome.target != "none":
        gateway.metrics.upstream_errors.labels(outcome.target, exc.code or "error").inc()


async def _complete(
    request: Request, gateway: Runtime, backend: Backend, chat: ChatRequest, outcome: _Outcome
) -> Response:
    timeout = gateway.settings.limits.request_timeout_s
    called = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            result = await cancel_on_disconnect(backend.complete(chat), request.receive)
    except TimeoutError:
        raise UpstreamTimeout(f"The request did not finish within the {timeout:g} s deadline.") from None
    finally:
        _note_cascade(request, gateway, backend, outcome)
        _note_failover(request, gateway, backend, outcome)
    outcome.usage = result.usage
    _capture(gateway, chat, outcome, Answer.from_completion(result.body))
    if result.first_token_s is not None:
        outcome.first_token_s = called - outcome.started + result.first_token_s
    return Response(orjson.dumps(result.body), media_type="application/json", headers=request.state.route_headers)


async def _stream(
    request: Request, gateway: Runtime, backend: Backend, chat: ChatRequest, outcome: _Outcome
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
    finally:
        _note_cascade(request, gateway, backend, outcome)
        _note_failover(request, gateway, backend, outcome)
    request_id = request.state.request_id
    events = _events(gateway, chunks, first, chat, outcome, deadline, request_id)
    return EventStreamResponse(
        events, request.state.route_headers, on_close=lambda: _finish(gateway, outcome, request_id, chat)
    )


async def _events(
    gateway: Runtime,
    chunks: AsyncGenerator[ChatChunk, None],
    first: ChatChunk,
    chat: ChatRequest,
    outcome: _Outcome,
    deadline: float,
    request_id: str,
) -> AsyncIterator[bytes]:
    include_usage = chat.include_usage
    # The answer as relayed, for capture; only while capture is on (it copies every piece).
    collector = AnswerCollector() if gateway.capturer is not None else None
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
                if collector is not None:
                    collector.feed(chunk)
                outcome.relayed_chars += _text_length(chunk)
                yield sse_event(chunk)
            async with asyncio.timeout_at(deadline):
                chunk = await anext(chunks, None)
        if collector is not None:
            _capture(gateway, chat, outcome, collector.answer())
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


def _note_cascade(request: Request, gateway: Runtime, backend: Backend, outcome: _Outcome) -> None:
    """Once a cascade has decided: the target that answers, the ``x-route-cascade`` header, the metrics."""
    if not isinstance(backend, CascadeBackend) or backend.outcome is None or outcome.cascade is not None:
        return
    cascade = outcome.cascade = backend.outcome
    outcome.target = cascade.target
    headers = request.state.route_headers
    headers["x-route-target"] = cascade.target
    headers["x-route-cascade"] = cascade.describe().encode("ascii", "replace").decode()[:200]
    profile = gateway.router.profiles[cascade.first]
    gateway.metrics.record_cascade(cascade, price_input=profile.price_input, price_output=profile.price_output,
                                   tenant=outcome.tenant)  # fmt: skip


def _note_failover(request: Request, gateway: Runtime, backend: Backend, outcome: _Outcome) -> None:
    """Once a fallback chain has answered or failed: the target that did, the ``x-route-fallback`` headers,
    the metric. Called once, after the answer or the first chunk (or the failure)."""
    if not isinstance(backend, FailoverBackend):
        return
    record = backend.record
    if record.served_by is not None:
        outcome.target = record.served_by
    elif record.failed:
        outcome.target = record.failed[-1].target  # the error the client gets is this target's
    if record.fell_back:
        request.state.route_headers["x-route-target"] = outcome.target
        _note_fallback(request, gateway, outcome, record.first, outcome.target, record.reason)


def _note_fallback(request: Request, gateway: Runtime, outcome: _Outcome, source: str, to: str, reason: str) -> None:
    """``x-route-fallback`` and its reason, the access log's note, the metric. Before any call, the router
    falls back for a required target that cannot serve; after a failed call, the fallback chain does."""
    headers = request.state.route_headers
    headers["x-route-fallback"] = f"{source}->{to}"
    headers["x-route-fallback-reason"] = reason
    note = f"{source}->{to} ({reason})"
    outcome.fallback = note if outcome.fallback is None else f"{outcome.fallback}; {note}"
    gateway.metrics.fallbacks.labels(source, to, reason).inc()


def _capture(gateway: Runtime, chat: ChatRequest, outcome: _Outcome, answer: Answer) -> None:
    """Offer a finished answer to distill.capture (it decides, stores in the background and never raises),
    and to the policies that check answers in shadow (``distilled``: off the client's path)."""
    if gateway.router.shadows_answers and answer.finish_reason == "stop" and answer.text is not None:
        escalated = outcome.cascade is not None and outcome.cascade.escalated
        gateway.router.observe_answer(chat, outcome.target, answer.text, escalated=escalated,
                                      report=_shadow_report(gateway, chat, outcome.tenant))  # fmt: skip
    if gateway.capturer is not None:
        gateway.capturer.consider(chat, answer, target=outcome.target, features=outcome.features,
                                  tenant=outcome.tenant)  # fmt: skip


def _shadow_report(gateway: Runtime, chat: ChatRequest, tenant: str) -> ShadowReport:
    route = chat.memo.get(DISTILLED_ROUTE)
    label = route.route if isinstance(route, DistilledRoute) else "none"

    def report(target: str, outcome: str, result: ChatResult | None) -> None:
        gateway.metrics.distill_shadow.labels(label, outcome).inc()
        if result is not None:
            # A shadow answer is paid for like any other.
            profile = gateway.router.profiles[target]
            gateway.metrics.record_usage(target, result.usage, price_input=profile.price_input,
                                         price_output=profile.price_output, tenant=tenant)  # fmt: skip

    return report


def _text_length(chunk: ChatChunk) -> int:
    size = 0
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if isinstance(content, str):
            size += len(content)
        for call in delta.get("tool_calls") or ():
            arguments = (call.get("function") or {}).get("arguments")
            size += len(arguments) if isinstance(arguments, str) else 0
    return size


def _charges(gateway: Runtime, outcome: _Outcome) -> dict[str, Usage]:
    """Usage per target the request used: the answering target's, and a cascade's first target's when it
    escalated. A stream cut before its usage arrived is charged on what was relayed (4 characters a token,
    the prompt as the classifier counted it)."""
    charges: dict[str, Usage] = {}
    if outcome.target in gateway.router.profiles:
        usage = outcome.usage
        if usage is None and outcome.relayed_chars:
            prompt = outcome.features.prompt_tokens if outcome.features else 0
            usage = Usage(prompt, max(1, outcome.relayed_chars // 4))
        if usage is not None:
            charges[outcome.target] = usage
    cascade = outcome.cascade
    if cascade is not None and cascade.escalated:
        first = charges.get(cascade.first, Usage())
        charges[cascade.first] = Usage(first.prompt_tokens + cascade.first_usage.prompt_tokens,
                                       first.completion_tokens + cascade.first_usage.completion_tokens)  # fmt: skip
    return charges


def _has_output(chunk: ChatChunk) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls"):
            return True
    return False


def _finish(gateway: Runtime, outcome: _Outcome, request_id: str, chat: ChatRequest | None) -> None:
    # First, so that no failure below skips it; nothing is closed before this function returns.
    gateway.release()
    elapsed = time.perf_counter() - outcome.started
    metrics = gateway.metrics
    metrics.in_flight.dec()
    metrics.requests.labels(outcome.target, outcome.decided_by, str(outcome.status), outcome.tenant).inc()
    if outcome.admission is not None:
        gateway.spend.settle(outcome.admission, _charges(gateway, outcome))
    if outcome.target != "none":
        metrics.latency.labels(outcome.target, "true" if outcome.stream else "false").observe(elapsed)
        if outcome.status == 200:
            # An escalated answer's own latency, without the first target's wasted seconds.
            wasted = outcome.cascade.first_seconds if outcome.cascade and outcome.cascade.escalated else 0.0
            gateway.router.observe_latency(outcome.target, ((outcome.first_token_s or elapsed) - wasted) * 1000)
            if outcome.first_token_s is not None and outcome.usage is not None:
                gateway.router.observe_timing(
                    outcome.target, ttft_ms=(outcome.first_token_s - wasted) * 1000, total_ms=(elapsed - wasted) * 1000,
                    completion_tokens=outcome.usage.completion_tokens,
                )  # fmt: skip
        if chat is not None:
            gateway.router.observe_outcome(chat, outcome.target, outcome.status == 200)
    if outcome.first_token_s is not None:
        metrics.ttft.labels(outcome.target).observe(outcome.first_token_s)
        # A cascade's kept answer is streamed from a buffer, all at once: no decode rate to see.
        replayed = outcome.stream and outcome.cascade is not None and not outcome.cascade.escalated
        if outcome.usage and outcome.usage.completion_tokens > 1 and elapsed > outcome.first_token_s and not replayed:
            rate = (outcome.usage.completion_tokens - 1) / (elapsed - outcome.first_token_s)
            metrics.decode_rate.labels(outcome.target).observe(rate)
    if outcome.usage is not None and outcome.target != "none":
        profile = gateway.router.profiles[outcome.target]
        metrics.record_usage(outcome.target, outcome.usage, price_input=profile.price_input,
                             price_output=profile.price_output, tenant=outcome.tenant)  # fmt: skip
    fields: dict[str, Any] = {
        "request_id": request_id,
        "tenant": outcome.tenant,
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
    if outcome.cascade is not None:
        fields["cascade"] = outcome.cascade.describe()
    if outcome.fallback is not None:
        fields["fallback"] = outcome.fallback
    if outcome.admission is not None and outcome.admission.edge_only is not None:
        fields["limit"] = outcome.admission.edge_only
    if chat is not None and gateway.settings.logging.log_prompts:
        fields["prompt"] = chat.prompt_text
    log.info("chat completion", extra=fields)


async def dry_run_route(request: Request) -> Response:
    gateway = _hold(request)
    request.state.request_id = request_id = request_id_for(request)
    try:
        chat, client = await _parse(request, gateway)
        # The key's allowed targets shape the answer; rate limits and budgets are not spent on a dry run.
        gateway.spend.begin(client, chat)
        decision = await gateway.router.decide(chat)
    finally:
        gateway.release()
    body = decision.to_dict()
    body["request_id"] = request_id
    return Response(orjson.dumps(body), media_type="application/json", headers={"x-request-id": request_id})
