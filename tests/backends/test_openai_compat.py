"""The OpenAI-compatible backend against hand-written upstreams on loopback.

What every backend shares (error statuses, timeouts, redirects, cancellation)
is in ``test_contract.py``; here is what is this adapter's own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from router.backends.openai_compat import OpenAIBackend
from router.chat import ChatRequest
from router.config import OpenAITargetConfig
from router.errors import (
    BackendError,
    ContentFiltered,
    UpstreamProtocolError,
)
from tests.support.loopback import Handler, handler_app, serving

KEY = "sk-live-abcdefghijklmnopqrstuvwxyz"


def config(base_url: str, **extra: object) -> OpenAITargetConfig:
    return OpenAITargetConfig.model_validate(
        {"type": "openai", "base_url": base_url + "/v1", "model": "gpt-4o-mini", "api_key_env": "K", **extra}
    )


@asynccontextmanager
async def upstream(handler: Handler, *, key: str | None = KEY, **extra: object) -> AsyncIterator[OpenAIBackend]:
    """An OpenAIBackend, started, talking to ``handler`` served on loopback."""
    async with serving(handler_app(handler)) as url:
        backend = OpenAIBackend("cloud", config(url, **extra), environ={"K": key} if key else {})
        await backend.start()
        try:
            yield backend
        finally:
            await backend.aclose()


def respond(status: int = 200, body: object = None, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: Request) -> Response:
        if isinstance(body, bytes):
            return Response(body, status_code=status, headers=headers)
        if isinstance(body, str):
            return Response(body, status_code=status, headers=headers, media_type="text/html")
        return JSONResponse(body, status_code=status, headers=headers)

    return handler


def req(**extra: object) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": "hello"}], **extra})


def completion(content: str = "hi") -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def sse(*events: object, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(content: str | None = None, finish: str | None = None, usage: object = None) -> dict[str, object]:
    choices = [] if usage else [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]
    out: dict[str, object] = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": choices,
    }
    if usage:
        out["usage"] = usage
    return out


def recording(seen: list[tuple[Request, bytes]], reply: Handler) -> Handler:
    async def handler(request: Request) -> Response:
        seen.append((request, await request.body()))
        return await reply(request)

    return handler


async def test_sends_the_key_the_model_and_only_openai_fields() -> None:
    seen: list[tuple[Request, bytes]] = []
    async with upstream(recording(seen, respond(200, completion()))) as backend:
        result = await backend.complete(
            req(model="cloud", top_k=5, reasoning_effort="low", custom_thing=1, temperature=0.1)
        )

    assert result.body["choices"][0]["message"]["content"] == "hi"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (5, 2)
    request, raw = seen[0]
    assert request.url.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(raw) == {"messages": [{"role": "user", "content": "hello"}], "model": "gpt-4o-mini",
                               "temperature": 0.1, "reasoning_effort": "low"}  # fmt: skip


async def test_forward_unknown_fields_passes_extras_for_vllm() -> None:
    seen: list[tuple[Request, bytes]] = []
    async with upstream(recording(seen, respond(200, completion())), forward_unknown_fields=True) as backend:
        await backend.complete(req(top_k=5, repetition_penalty=1.1))
    sent = json.loads(seen[0][1])
    assert sent["top_k"] == 5
    assert sent["repetition_penalty"] == 1.1


async def test_readiness_follows_the_key() -> None:
    async with upstream(respond(200, completion()), key=None) as no_key:
        assert no_key.readiness().ready is False
        assert no_key.readiness().reason == "no API key: K is not set"
    async with upstream(respond(200, completion()), key=None, api_key_env=None) as keyless:
        assert keyless.readiness().ready is True


async def test_an_error_body_that_is_not_json_is_quoted() -> None:
    async with upstream(respond(503, "<html>overloaded</html>", {"retry-after": "2"})) as backend:
        for call in ("complete", "stream"):
            with pytest.raises(BackendError) as caught:
                if call == "complete":
                    await backend.complete(req())
                else:
                    async for _ in backend.stream(req()):
                        pass
            assert type(caught.value) is BackendError
            assert caught.value.message == "target cloud: upstream returned 503: <html>overloaded</html>"
            assert caught.value.retry_after == 2.0


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"choices": []}', b"[1]"])
async def test_malformed_upstream_body_is_a_protocol_error(body: bytes) -> None:
    async with upstream(respond(200, body)) as backend:
        with pytest.raises(UpstreamProtocolError):
            await backend.complete(req())


async def test_stream_relays_chunks_as_they_came_and_ends_with_upstream_usage() -> None:
    seen: list[tuple[Request, bytes]] = []
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    events = sse(chunk("Hel"), chunk("lo"), chunk(finish="stop"), chunk(usage=usage))
    async with upstream(recording(seen, respond(200, events, {"content-type": "text/event-stream"}))) as backend:
        chunks = [c async for c in backend.stream(req())]

    sent = json.loads(seen[0][1])
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    # This upstream sent no role chunk: one is made, with the upstream's id, just before the first output.
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1:-1] == [chunk("Hel"), chunk("lo"), chunk(finish="stop")]
    assert {c["id"] for c in chunks} == {"c1"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == usage


async def test_the_upstreams_own_role_chunk_is_held_until_output_and_sent_once() -> None:
    role = chunk()
    role["choices"] = [
        {"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None}, "finish_reason": None}
    ]
    async with upstream(respond(200, sse(role, chunk("Hi"), chunk(finish="stop")))) as backend:
        chunks = [c async for c in backend.stream(req())]
    assert chunks[:3] == [role, chunk("Hi"), chunk(finish="stop")]


async def test_stream_without_usage_estimates_it() -> None:
    async with upstream(respond(200, sse(chunk("a"), chunk("b"), chunk(finish="stop")))) as backend:
        chunks = [c async for c in backend.stream(req())]
    # One token an output chunk; the prompt at four characters a token.
    assert chunks[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


async def test_stream_closed_cleanly_before_done_is_a_protocol_error() -> None:
    async with upstream(respond(200, sse(chunk("a"), done=False))) as backend:
        with pytest.raises(UpstreamProtocolError, match="before \\[DONE\\]"):
            async for _ in backend.stream(req()):
                pass


async def test_a_content_filter_stop_before_any_output_is_content_filtered() -> None:
    async with upstream(respond(200, sse(chunk(finish="content_filter")))) as backend:
        received = []
        with pytest.raises(ContentFiltered, match=r"withheld the answer \(finish_reason content_filter\)"):
            async for c in backend.stream(req()):
                received.append(c)
    assert received == []


async def test_error_event_inside_a_stream_is_raised() -> None:
    body = sse(chunk("a"), done=False) + b'data: {"error": {"message": "overloaded"}}\n\n'
    async with upstream(respond(200, body)) as backend:
        with pytest.raises(BackendError, match="overloaded"):
            async for _ in backend.stream(req()):
                pass


async def test_stream_is_relayed_as_it_arrives_not_buffered() -> None:
    """The first chunk reaches us while the upstream is still holding back the rest."""
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield sse(chunk("0"), done=False)
            await release.wait()
            yield sse(chunk("1"))

        return StreamingResponse(body(), media_type="text/event-stream")

    async with upstream(slow) as backend:
        stream = backend.stream(req())
        role = await asyncio.wait_for(anext(stream), timeout=2)
        first = await asyncio.wait_for(anext(stream), timeout=2)
        assert role["choices"][0]["delta"]["role"] == "assistant"
        assert first["choices"][0]["delta"]["content"] == "0"
        release.set()
        rest = [c async for c in stream]
    assert rest[0]["choices"][0]["delta"]["content"] == "1"
