"""The OpenAI-compatible backend against scripted upstreams (httpx.MockTransport)."""

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
    ContextLengthExceeded,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from tests.support.loopback import Handler, handler_app, serving
from tests.support.processes import free_port

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


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "retry_after"),
    [
        (400, {"error": {"message": "bad temperature", "code": None}}, {}, UpstreamBadRequest, None),
        (400, {"error": {"message": "This model's maximum context length is 8192 tokens", "code": "context_length_exceeded"}}, {}, ContextLengthExceeded, None),
        (400, {"error": {"message": "filtered", "code": "content_filter"}}, {}, ContentFiltered, None),
        (401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}, {}, UpstreamAuthError, None),
        (403, {"error": {"message": "region not supported"}}, {}, UpstreamAuthError, None),
        (404, {"error": {"message": "model not found"}}, {}, UpstreamBadRequest, None),
        (429, {"error": {"message": "slow down"}}, {"retry-after": "12"}, UpstreamRateLimited, 12.0),
        (429, {"error": {"message": "slow down"}}, {"retry-after-ms": "1500"}, UpstreamRateLimited, 1.5),
        (429, {"error": {"message": "slow down"}}, {}, UpstreamRateLimited, 1.0),
        (500, {"error": {"message": "boom"}}, {}, BackendError, None),
        (503, "<html>overloaded</html>", {"retry-after": "2"}, BackendError, 2.0),
        (504, {"error": {"message": "gateway timeout"}}, {}, UpstreamTimeout, None),
    ],
)  # fmt: skip
async def test_error_statuses_map_onto_our_tree(
    status: int, body: object, headers: dict[str, str], error: type[Exception], retry_after: float | None
) -> None:
    async with upstream(respond(status, body, headers)) as backend:
        for call in ("complete", "stream"):
            with pytest.raises(error) as caught:
                if call == "complete":
                    await backend.complete(req())
                else:
                    async for _ in backend.stream(req()):
                        pass
            assert type(caught.value) is error
            assert KEY not in caught.value.message
            assert f"upstream returned {status}" in caught.value.message
            assert caught.value.retry_after == retry_after


async def test_nothing_listening_is_a_connect_error() -> None:
    backend = OpenAIBackend("cloud", config(f"http://127.0.0.1:{free_port()}"), environ={"K": KEY})
    await backend.start()
    with pytest.raises(UpstreamConnectError) as caught:
        await backend.complete(req())
    await backend.aclose()
    assert caught.value.message == "target cloud: cannot connect to the upstream"


async def test_slow_first_byte_is_a_timeout() -> None:
    async def slow(request: Request) -> Response:
        await asyncio.sleep(2)
        return JSONResponse(completion())

    timeouts = {"connect_s": 1, "first_byte_s": 0.2, "idle_s": 0.2, "total_s": 5}
    async with upstream(slow, timeouts=timeouts) as backend:
        with pytest.raises(UpstreamTimeout):
            await backend.complete(req())
        with pytest.raises(UpstreamTimeout):
            async for _ in backend.stream(req()):
                pass


async def test_stream_idle_gap_is_a_timeout() -> None:
    async def stalls(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield sse(chunk("a"), done=False)
            await asyncio.sleep(2)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    timeouts = {"connect_s": 1, "first_byte_s": 1, "idle_s": 0.2, "total_s": 5}
    async with upstream(stalls, timeouts=timeouts) as backend:
        received = []
        with pytest.raises(UpstreamTimeout):
            async for c in backend.stream(req()):
                received.append(c)
    assert len(received) == 1


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"choices": []}', b"[1]"])
async def test_malformed_upstream_body_is_a_protocol_error(body: bytes) -> None:
    async with upstream(respond(200, body)) as backend:
        with pytest.raises(UpstreamProtocolError):
            await backend.complete(req())


async def test_stream_relays_chunks_and_ends_with_upstream_usage() -> None:
    seen: list[tuple[Request, bytes]] = []
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    events = sse(chunk("Hel"), chunk("lo"), chunk(finish="stop"), chunk(usage=usage))
    async with upstream(recording(seen, respond(200, events, {"content-type": "text/event-stream"}))) as backend:
        chunks = [c async for c in backend.stream(req())]

    sent = json.loads(seen[0][1])
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-1]] == ["Hel", "lo", None]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == usage


async def test_stream_without_usage_estimates_it() -> None:
    async with upstream(respond(200, sse(chunk("a"), chunk("b"), chunk(finish="stop")))) as backend:
        chunks = [c async for c in backend.stream(req())]
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_stream_cut_before_done_is_a_protocol_error() -> None:
    async def cut(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield sse(chunk("a"), done=False)
            raise ConnectionResetError("upstream crashed")

        return StreamingResponse(body(), media_type="text/event-stream")

    async with upstream(cut) as backend:
        received = []
        with pytest.raises(UpstreamProtocolError):
            async for c in backend.stream(req()):
                received.append(c)
    assert len(received) == 1


async def test_stream_closed_cleanly_before_done_is_a_protocol_error() -> None:
    async with upstream(respond(200, sse(chunk("a"), done=False))) as backend:
        with pytest.raises(UpstreamProtocolError, match="before \\[DONE\\]"):
            async for _ in backend.stream(req()):
                pass


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
        first = await asyncio.wait_for(anext(stream), timeout=2)
        assert first["choices"][0]["delta"]["content"] == "0"
        release.set()
        rest = [c async for c in stream]
    assert rest[0]["choices"][0]["delta"]["content"] == "1"
