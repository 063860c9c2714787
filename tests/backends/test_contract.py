"""The backend contract, run over every adapter against its emulator, and over the scripted fake.

Each case states one promise of :class:`router.backends.base.Backend` (or of
the output rules in :mod:`router.backends._output`) in terms every provider
shares; ``tests/backends/contract.py`` declares, per backend, what applies to
it and how its upstream says each thing. A drift between adapters shows up
here as a red test.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response

from router.backends.base import Backend
from router.chat import ChatChunk, ChatRequest
from router.errors import (
    ContentFiltered,
    HybridRouterError,
    InvalidRequest,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from tests.backends.contract import TARGETS, ContractTarget, ErrorCase
from tests.support.loopback import handler_app, serving
from tests.support.processes import free_port


@pytest.fixture(params=TARGETS, ids=repr)
def target(request: pytest.FixtureRequest) -> ContractTarget:
    target: ContractTarget = request.param
    return target


def requires(target: ContractTarget, feature: str) -> None:
    if not getattr(target.supports, feature):
        pytest.skip(f"{target.name} does not declare {feature}")


def req(content: str = "hello", **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": content}], **extra})


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def finishes(chunks: list[ChatChunk]) -> list[str]:
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]


async def stream_until_error(backend: Backend, request: ChatRequest) -> tuple[list[ChatChunk], BaseException]:
    received: list[ChatChunk] = []
    with pytest.raises(HybridRouterError) as caught:
        async for chunk in backend.stream(request):
            received.append(chunk)
    return received, caught.value


async def eventually(check: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Wait until ``check()`` holds: an upstream notices a closed connection a little later."""
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)


# --- answers -------------------------------------------------------------------------------------


async def test_a_completion_is_one_openai_answer(target: ContractTarget) -> None:
    async with target.running() as up:
        up.script({"content": "Hello contract world"})
        result = await up.backend.complete(req())
    choice = result.body["choices"][0]
    assert (choice["message"]["role"], choice["message"]["content"]) == ("assistant", "Hello contract world")
    assert choice["finish_reason"] == "stop"
    assert result.body["object"] == "chat.completion"
    usage = result.body["usage"]
    assert usage == result.usage.to_openai()
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


async def test_a_stream_opens_with_the_role_and_ends_with_one_usage_chunk(target: ContractTarget) -> None:
    async with target.running() as up:
        up.script({"content": "Hello contract world"})
        chunks = [chunk async for chunk in up.backend.stream(req())]
    first = chunks[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and not first.get("content")
    assert text_of(chunks) == "Hello contract world"
    assert finishes(chunks) == ["stop"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage_chunks = [c for c in chunks if not c["choices"]]
    assert usage_chunks == [chunks[-1]]
    usage = chunks[-1]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


async def test_a_cloud_backend_has_no_token_counter(target: ContractTarget) -> None:
    requires(target, "http")
    async with target.running() as up:
        assert up.backend.token_counter is None


# --- slots: closing early, cancellation ----------------------------------------------------------


async def test_closing_a_stream_early_frees_the_slot_and_the_upstream(target: ContractTarget) -> None:
    async with target.running() as up:
        up.script({"content": "a b c d e f g h", "chunk_delay_s": 0.2})
        stream = up.backend.stream(req())
        received = [await anext(stream), await anext(stream)]
        assert up.backend.stats()[target.inflight] == 1.0
        assert up.open_streams() == 1
        await stream.aclose()
        assert up.backend.stats()[target.inflight] == 0.0
        await eventually(lambda: up.open_streams() == 0)
    assert text_of(received).strip() == "a"


async def test_cancelling_a_stream_frees_the_slot_and_the_upstream(target: ContractTarget) -> None:
    got_one = asyncio.Event()

    async def consume(backend: Backend) -> None:
        async for _ in backend.stream(req()):
            got_one.set()

    async with target.running() as up:
        up.script({"content": "a b c d e f g h", "chunk_delay_s": 0.3})
        task = asyncio.create_task(consume(up.backend))
        await asyncio.wait_for(got_one.wait(), timeout=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert up.backend.stats()[target.inflight] == 0.0
        await eventually(lambda: up.open_streams() == 0)


async def test_cancelling_a_completion_frees_the_slot(target: ContractTarget) -> None:
    requires(target, "gauges_completions")
    async with target.running() as up:
        up.script({"delay_s": 1.0})
        task = asyncio.create_task(up.backend.complete(req()))
        await eventually(lambda: up.backend.stats()[target.inflight] == 1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert up.backend.stats()[target.inflight] == 0.0


# --- content-filter stops ------------------------------------------------------------------------


async def test_a_filter_stop_before_any_output_is_content_filtered(target: ContractTarget) -> None:
    requires(target, "filter_errors")
    async with target.running() as up:
        up.script(target.filter_stop(""), target.filter_stop(""))
        with pytest.raises(ContentFiltered) as whole:
            await up.backend.complete(req())
        received, streamed = await stream_until_error(up.backend, req())
        assert up.backend.stats()[target.inflight] == 0.0
    assert received == []
    assert isinstance(streamed, ContentFiltered)
    for error in (whole.value, streamed):
        assert error.message.startswith(f"target {target.name}: ")
        assert target.filter_why in error.message
        assert error.status_code == 400 and error.code == "content_filter"


async def test_a_filter_stop_after_output_ends_the_answer_with_content_filter(target: ContractTarget) -> None:
    async with target.running() as up:
        up.script(target.filter_stop("Sure, here is"), target.filter_stop("Sure, here is"))
        if target.supports.partial_answers:
            result = await up.backend.complete(req())
            assert result.body["choices"][0]["finish_reason"] == "content_filter"
            assert result.body["choices"][0]["message"]["content"] == "Sure, here is"
        else:
            with pytest.raises(ContentFiltered):
                await up.backend.complete(req())
        chunks = [chunk async for chunk in up.backend.stream(req())]
    assert text_of(chunks) == "Sure, here is"
    assert finishes(chunks) == ["content_filter"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


# --- errors --------------------------------------------------------------------------------------


ERROR_CASES = [pytest.param(t, case, id=f"{t.name}-{case.name}") for t in TARGETS for case in t.errors]


@pytest.mark.parametrize(("target", "case"), ERROR_CASES)
async def test_upstream_errors_map_onto_the_tree(target: ContractTarget, case: ErrorCase) -> None:
    async with target.running() as up:
        up.script(case.behaviour, case.behaviour)
        with pytest.raises(HybridRouterError) as whole:
            await up.backend.complete(req())
        received, streamed = await stream_until_error(up.backend, req())
        assert up.backend.stats()[target.inflight] == 0.0
    assert received == []
    for error in (whole.value, streamed):
        assert type(error) is case.error
        assert error.retry_after == case.retry_after
        assert error.message.startswith(f"target {target.name}: ")
        assert not error.message.startswith(f"target {target.name}: target ")
        if "status" in case.behaviour:
            assert f"upstream returned {case.behaviour['status']}" in error.message


async def test_no_error_shows_a_credential(target: ContractTarget) -> None:
    if target.secret is None:
        pytest.skip(f"{target.name} sends no credential")
    async with target.running() as up:
        up.script(target.leak(), target.leak())
        with pytest.raises(HybridRouterError) as whole:
            await up.backend.complete(req())
        _, streamed = await stream_until_error(up.backend, req())
    for error in (whole.value, streamed):
        assert target.secret not in str(error)
        assert "***" in error.message


async def test_a_request_the_provider_cannot_express_is_refused_naming_the_target_once(target: ContractTarget) -> None:
    requires(target, "translates")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    # A tool call whose arguments are not JSON: no provider can send it on, and OpenAI's own API refuses it too.
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
    ]
    request = ChatRequest.model_validate({"messages": messages, "tools": tools})
    async with target.running() as up:
        with pytest.raises(InvalidRequest) as caught:
            await up.backend.complete(request)
        assert up.requests() == []
    assert caught.value.message.startswith(f"target {target.name}: ")
    assert caught.value.message.count("target ") == 1
    assert caught.value.param == "messages.1.tool_calls"


async def test_a_stream_cut_mid_way_raises_after_what_arrived(target: ContractTarget) -> None:
    async with target.running() as up:
        up.script({"content": "a b c d e", "cut_after": 2})
        received, error = await stream_until_error(up.backend, req())
        assert up.backend.stats()[target.inflight] == 0.0
    assert isinstance(error, UpstreamProtocolError)
    assert text_of(received).strip() == "a b"


async def test_a_malformed_answer_is_a_protocol_error(target: ContractTarget) -> None:
    requires(target, "http")
    async with target.running() as up:
        up.script({"malformed": True}, {"malformed": True})
        with pytest.raises(UpstreamProtocolError):
            await up.backend.complete(req())
        _, streamed = await stream_until_error(up.backend, req())
    assert isinstance(streamed, UpstreamProtocolError)


# --- readiness -----------------------------------------------------------------------------------


async def test_readiness_follows_the_lifecycle(target: ContractTarget) -> None:
    requires(target, "http")
    async with target.running() as up:
        assert up.backend.readiness().ready is True
        await up.backend.aclose()
        assert up.backend.readiness().ready is False
        await up.backend.aclose()  # twice is safe


# --- timeouts ------------------------------------------------------------------------------------


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose listen queue is full, so a connect hangs until the client gives up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_connect_that_hangs_times_out_after_connect_s(target: ContractTarget) -> None:
    requires(target, "http")
    timeouts = {"connect_s": 0.3, "first_byte_s": 10, "idle_s": 10, "total_s": 20}
    with unanswered_port() as port:
        async with target.running(timeouts=timeouts, url=f"http://127.0.0.1:{port}") as up:
            async with asyncio.timeout(5):
                with pytest.raises(UpstreamTimeout, match="connecting"):
                    await up.backend.complete(req())
                _, streamed = await stream_until_error(up.backend, req())
    assert isinstance(streamed, UpstreamTimeout)


async def test_nothing_listening_is_a_connect_error(target: ContractTarget) -> None:
    requires(target, "http")
    async with target.running(url=f"http://127.0.0.1:{free_port()}") as up:
        with pytest.raises(UpstreamConnectError) as caught:
            await up.backend.complete(req())
        _, streamed = await stream_until_error(up.backend, req())
    assert caught.value.message == f"target {target.name}: cannot connect to the upstream"
    assert isinstance(streamed, UpstreamConnectError)


async def test_the_first_byte_deadline_cuts_a_silent_stream_but_not_a_long_completion(target: ContractTarget) -> None:
    requires(target, "http")
    timeouts = {"connect_s": 1, "first_byte_s": 0.3, "idle_s": 5, "total_s": 5}
    async with target.running(timeouts=timeouts) as up:
        up.script({"content": "worth the wait", "delay_s": 0.8}, {"delay_s": 0.8})
        result = await up.backend.complete(req())
        received, error = await stream_until_error(up.backend, req())
    assert result.body["choices"][0]["message"]["content"] == "worth the wait"
    assert received == []
    assert isinstance(error, UpstreamTimeout)
    assert "first_byte_s" in error.message


async def test_the_total_deadline_bounds_a_completion(target: ContractTarget) -> None:
    requires(target, "http")
    timeouts = {"connect_s": 1, "first_byte_s": 5, "idle_s": 5, "total_s": 0.3}
    async with target.running(timeouts=timeouts) as up:
        up.script({"delay_s": 0.8})
        with pytest.raises(UpstreamTimeout, match="total_s"):
            await up.backend.complete(req())
        assert up.backend.stats()[target.inflight] == 0.0


async def test_a_gap_between_chunks_longer_than_idle_s_is_a_timeout(target: ContractTarget) -> None:
    requires(target, "http")
    timeouts = {"connect_s": 1, "first_byte_s": 3, "idle_s": 0.3, "total_s": 10}
    async with target.running(timeouts=timeouts) as up:
        up.script({"content": "a b c", "chunk_delay_s": 0.8})
        _, error = await stream_until_error(up.backend, req())
        assert up.backend.stats()[target.inflight] == 0.0
    assert isinstance(error, UpstreamTimeout)
    assert "idle_s" in error.message


# --- redirects -----------------------------------------------------------------------------------


@asynccontextmanager
async def elsewhere(seen: list[dict[str, str]]) -> AsyncIterator[str]:
    """Another host, recording the headers of every request that reaches it."""

    async def handler(request: Request) -> Response:
        seen.append(dict(request.headers))
        return Response("{}", media_type="application/json")

    async with serving(handler_app(handler)) as url:
        yield url


async def test_a_redirect_is_an_error_and_the_credentials_stay_with_the_configured_host(
    target: ContractTarget,
) -> None:
    requires(target, "http")
    seen: list[dict[str, str]] = []
    async with elsewhere(seen) as thief, target.running() as up:
        redirect = {"redirect_to": f"{thief}/collect?token=abc"}
        up.script(redirect, redirect)
        with pytest.raises(UpstreamProtocolError) as whole:
            await up.backend.complete(req())
        _, streamed = await stream_until_error(up.backend, req())
    assert seen == []
    for error in (whole.value, streamed):
        assert isinstance(error, UpstreamProtocolError)
        assert "upstream returned 307, a redirect to" in error.message
        assert "redirects are not followed" in error.message
        assert "token=abc" not in error.message
