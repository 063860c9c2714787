"""The OpenAI-compatible backend against scripted upstreams (httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

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

KEY = "sk-live-abcdefghijklmnopqrstuvwxyz"
Handler = Callable[[httpx.Request], httpx.Response]


def config(**extra: object) -> OpenAITargetConfig:
    return OpenAITargetConfig.model_validate(
        {"type": "openai", "base_url": "http://upstream.test/v1", "model": "gpt-4o-mini", "api_key_env": "K", **extra}
    )


async def started(handler: Handler, *, key: str | None = KEY, **extra: object) -> OpenAIBackend:
    backend = OpenAIBackend(
        "cloud", config(**extra), transport=httpx.MockTransport(handler), environ={"K": key} if key else {}
    )
    await backend.start()
    return backend


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


async def test_sends_the_key_the_model_and_only_openai_fields() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion())

    backend = await started(handler)
    result = await backend.complete(
        req(model="cloud", top_k=5, reasoning_effort="low", custom_thing=1, temperature=0.1)
    )

    assert result.body["choices"][0]["message"]["content"] == "hi"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (5, 2)
    request = seen[0]
    assert request.url == "http://upstream.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = json.loads(request.content)
    assert body == {"messages": [{"role": "user", "content": "hello"}], "model": "gpt-4o-mini",
                    "temperature": 0.1, "reasoning_effort": "low"}  # fmt: skip


async def test_forward_unknown_fields_passes_extras_for_vllm() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=completion())

    backend = await started(handler, forward_unknown_fields=True)
    await backend.complete(req(top_k=5, repetition_penalty=1.1))
    assert seen[0]["top_k"] == 5
    assert seen[0]["repetition_penalty"] == 1.1


async def test_without_key_env_it_is_not_ready_and_with_no_env_configured_it_is() -> None:
    no_key = await started(lambda r: httpx.Response(200), key=None)
    keyless = OpenAIBackend(
        "local", config(api_key_env=None), transport=httpx.MockTransport(lambda r: httpx.Response(200))
    )
    await keyless.start()

    assert no_key.readiness().ready is False
    assert no_key.readiness().reason == "no API key: K is not set"
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
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    backend = await started(handler)
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


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (httpx.ConnectError("refused"), UpstreamConnectError),
        (httpx.ConnectTimeout("slow connect"), UpstreamTimeout),
        (httpx.ReadTimeout("slow read"), UpstreamTimeout),
        (httpx.RemoteProtocolError("peer closed"), UpstreamProtocolError),
        (httpx.ReadError("reset"), UpstreamProtocolError),
        (httpx.UnsupportedProtocol("nope"), BackendError),
    ],
)
async def test_transport_errors_map_onto_our_tree(exc: Exception, error: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    backend = await started(handler)
    with pytest.raises(error) as caught:
        await backend.complete(req())
    assert caught.value.__cause__ is exc


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"choices": []}', b"[1]"])
async def test_malformed_upstream_body_is_a_protocol_error(body: bytes) -> None:
    backend = await started(lambda r: httpx.Response(200, content=body))
    with pytest.raises(UpstreamProtocolError):
        await backend.complete(req())


async def test_stream_relays_chunks_and_ends_with_upstream_usage() -> None:
    seen: list[dict[str, object]] = []
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        body = sse(chunk("Hel"), chunk("lo"), chunk(finish="stop"), chunk(usage=usage))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    backend = await started(handler)
    chunks = [c async for c in backend.stream(req())]

    assert seen[0]["stream"] is True
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-1]] == ["Hel", "lo", None]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == usage


async def test_stream_without_usage_estimates_it() -> None:
    body = sse(chunk("a"), chunk("b"), chunk(finish="stop"))
    backend = await started(lambda r: httpx.Response(200, content=body))
    chunks = [c async for c in backend.stream(req())]
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_stream_cut_before_done_is_a_protocol_error() -> None:
    backend = await started(lambda r: httpx.Response(200, content=sse(chunk("a"), done=False)))
    received = []
    with pytest.raises(UpstreamProtocolError, match="before \\[DONE\\]"):
        async for c in backend.stream(req()):
            received.append(c)
    assert len(received) == 1


async def test_error_event_inside_a_stream_is_raised() -> None:
    body = sse(chunk("a")).replace(b"data: [DONE]\n\n", b"") + b'data: {"error": {"message": "overloaded"}}\n\n'
    backend = await started(lambda r: httpx.Response(200, content=body))
    with pytest.raises(BackendError, match="overloaded"):
        async for _ in backend.stream(req()):
            pass


async def test_stream_is_relayed_as_it_arrives_not_buffered() -> None:
    """The first chunk reaches us while the upstream is still producing the rest."""
    produced: list[int] = []

    class Upstream(httpx.AsyncByteStream):
        async def __aiter__(self) -> Iterator[bytes]:  # type: ignore[override]
            for i in range(3):
                produced.append(i)
                yield b"data: " + json.dumps(chunk(str(i))).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

    backend = await started(lambda r: httpx.Response(200, stream=Upstream()))
    stream = backend.stream(req())
    first = await anext(stream)
    assert first["choices"][0]["delta"]["content"] == "0"
    assert produced == [0]
    await stream.aclose()
