"""The Anthropic backend against the Anthropic emulator (and a few raw handlers), over loopback.

What every backend shares (error statuses, filter stops, cut streams, timeouts)
is in ``test_contract.py``; here is the translation that is Anthropic's own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response

from router.backends.anthropic import AnthropicBackend
from router.chat import ChatChunk, ChatRequest
from router.config import AnthropicTargetConfig
from router.errors import (
    BackendBusy,
    BackendError,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamProtocolError,
    UpstreamRateLimited,
)
from tests.emulators.anthropic_server import EmulatorState, create_app
from tests.support.loopback import Handler, handler_app, serving

KEY = "sk-ant-api03-secret-0123456789abcdef"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def config(base_url: str, **extra: Any) -> AnthropicTargetConfig:
    values = {"type": "anthropic", "model": "claude-sonnet-4-6", "base_url": base_url, "api_key_env": "AK", **extra}
    return AnthropicTargetConfig.model_validate(values)


@asynccontextmanager
async def emulated(
    *script: dict[str, Any], key: str = KEY, emulator_key: str = KEY, **extra: Any
) -> AsyncIterator[tuple[AnthropicBackend, EmulatorState]]:
    """A started AnthropicBackend talking to an Anthropic emulator with ``script`` queued."""
    state = EmulatorState(api_key=emulator_key)
    state.script.add(*script)
    async with serving(create_app(state)) as url:
        backend = AnthropicBackend("claude", config(url, **extra), environ={"AK": key} if key else {})
        await backend.start()
        try:
            yield backend, state
        finally:
            await backend.aclose()


@asynccontextmanager
async def raw(handler: Handler) -> AsyncIterator[AnthropicBackend]:
    async with serving(handler_app(handler)) as url:
        backend = AnthropicBackend("claude", config(url), environ={"AK": KEY})
        await backend.start()
        try:
            yield backend
        finally:
            await backend.aclose()


def req(content: str = "hello", **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": content}], **extra})


def sent(state: EmulatorState, index: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = state.requests[index]["body"]
    return body


async def collect(backend: AnthropicBackend, request: ChatRequest) -> list[ChatChunk]:
    return [chunk async for chunk in backend.stream(request)]


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_plain_text_with_key_version_and_default_max_tokens() -> None:
    async with emulated() as (backend, state):
        result = await backend.complete(req("hello there"))

    body = result.body
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Echo: hello there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == "claude-sonnet-4-6"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (2, 3)
    headers = state.requests[0]["headers"]
    assert state.requests[0]["path"] == "/v1/messages"
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert sent(state) == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hello there"}],
    }


async def test_max_tokens_from_the_request_and_length_finish() -> None:
    async with emulated(default_max_tokens=50) as (backend, state):
        result = await backend.complete(req("one two three four five", max_tokens=3))
    assert sent(state)["max_tokens"] == 3
    assert result.body["choices"][0]["finish_reason"] == "length"
    assert result.body["choices"][0]["message"]["content"] == "Echo: one two "


async def test_multi_turn_conversation() -> None:
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ]
    async with emulated() as (backend, state):
        result = await backend.complete(ChatRequest.model_validate({"messages": messages}))
    assert sent(state)["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello Ada."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ]
    assert result.body["choices"][0]["message"]["content"] == "Echo: What is my name?"


async def test_empty_assistant_turns_are_left_out() -> None:
    messages = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "two"},
    ]
    async with emulated() as (backend, state):
        await backend.complete(ChatRequest.model_validate({"messages": messages}))
    assert sent(state)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}
    ]


async def test_system_and_developer_messages_become_the_top_level_system() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "hi"},
    ]
    async with emulated() as (backend, state):
        await backend.complete(ChatRequest.model_validate({"messages": messages}))
    body = sent(state)
    assert body["system"] == "Be brief.\n\nAnswer in French."
    assert [m["role"] for m in body["messages"]] == ["user"]


async def test_stream_with_usage_from_message_start_and_message_delta() -> None:
    async with emulated() as (backend, state):
        chunks = await collect(backend, req("one two three"))

    assert sent(state)["stream"] is True
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text_of(chunks) == "Echo: one two three"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


async def test_tool_call_round_trip() -> None:
    call = {"name": "get_weather", "input": {"city": "Paris"}, "id": "toolu_01"}
    async with emulated({"tool_calls": [call], "content": ""}, {"content": "It is sunny."}) as (backend, state):
        first = await backend.complete(req("Weather in Paris?", tools=[WEATHER_TOOL], tool_choice="required"))
        message = first.body["choices"][0]["message"]
        follow_up = ChatRequest.model_validate(
            {
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    message,
                    {"role": "tool", "tool_call_id": "toolu_01", "content": '{"sky": "sunny"}'},
                ],
                "tools": [WEATHER_TOOL],
            }
        )
        second = await backend.complete(follow_up)

    assert first.body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]
    asked = sent(state, 0)
    assert asked["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
            "description": "Weather for a city",
        }
    ]
    assert asked["tool_choice"] == {"type": "any"}
    assert sent(state, 1)["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": '{"sky": "sunny"}'}]},
    ]  # fmt: skip
    assert second.body["choices"][0]["message"]["content"] == "It is sunny."


async def test_parallel_tool_results_share_one_user_turn() -> None:
    calls = [
        {"id": "toolu_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "toolu_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
    ]
    messages = [
        {"role": "user", "content": "Oslo and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "toolu_a", "content": "cold"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "warm"},
        {"role": "user", "content": "Thanks"},
    ]
    async with emulated() as (backend, state):
        await backend.complete(ChatRequest.model_validate({"messages": messages, "tools": [WEATHER_TOOL]}))
    turns = sent(state)["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert [b["type"] for b in turns[1]["content"]] == ["text", "tool_use", "tool_use"]
    assert [b.get("tool_use_id", b.get("text")) for b in turns[2]["content"]] == ["toolu_a", "toolu_b", "Thanks"]


async def test_streamed_tool_call_arrives_in_openai_deltas() -> None:
    call = {"name": "get_weather", "input": {"city": "Paris"}, "id": "toolu_9"}
    async with emulated({"tool_calls": [call], "content": ""}) as (backend, _):
        chunks = await collect(backend, req("Weather?", tools=[WEATHER_TOOL]))
    deltas = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert deltas[0] == {
        "index": 0,
        "id": "toolu_9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == {"city": "Paris"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, {"type": "auto"}),
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
    ],
)
async def test_tool_choice_mapping(choice: object, parallel: bool | None, expected: dict[str, Any]) -> None:
    extra: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if choice is not None:
        extra["tool_choice"] = choice
    if parallel is not None:
        extra["parallel_tool_calls"] = parallel
    backend = AnthropicBackend("claude", config("http://127.0.0.1:9"), environ={"AK": KEY})
    assert backend.payload(req(**extra), stream=False)["tool_choice"] == expected


async def test_stop_sequence_is_sent_and_the_text_stops_before_it() -> None:
    async with emulated({"content": "one two three four"}) as (backend, state):
        result = await backend.complete(req(stop=["three"]))
    assert sent(state)["stop_sequences"] == ["three"]
    assert result.body["choices"][0]["message"]["content"] == "one two "
    assert result.body["choices"][0]["finish_reason"] == "stop"


async def test_sampling_parameters_follow_the_api_version() -> None:
    async with emulated() as (backend, state):
        await backend.complete(req(temperature=0.2, top_p=0.9, top_k=5))
    assert (sent(state)["temperature"], sent(state)["top_k"]) == (0.2, 5)
    assert "top_p" not in sent(state)  # Claude 4.5+ refuses temperature and top_p together

    async with emulated() as (backend, state):
        await backend.complete(req(top_p=0.9))
    assert sent(state)["top_p"] == 0.9

    async with emulated(anthropic_version="2026-10-21") as (backend, state):
        result = await backend.complete(req(temperature=0.2, top_p=0.9))
    assert state.requests[0]["headers"]["anthropic-version"] == "2026-10-21"
    assert not {"temperature", "top_p", "top_k"} & set(sent(state))
    assert result.body["choices"][0]["message"]["content"] == "Echo: hello"


async def test_user_becomes_metadata_user_id() -> None:
    backend = AnthropicBackend("claude", config("http://127.0.0.1:9"), environ={"AK": KEY})
    assert backend.payload(req(user="user-42"), stream=False)["metadata"] == {"user_id": "user-42"}


async def test_images_become_image_blocks() -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    async with emulated() as (backend, state):
        await backend.complete(ChatRequest.model_validate({"messages": [{"role": "user", "content": content}]}))
    assert sent(state)["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    assert backend.capabilities.images is True


async def test_unsupported_image_type_is_refused_before_any_call() -> None:
    bad = [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]
    async with emulated() as (backend, state):
        with pytest.raises(InvalidRequest, match="JPEG, PNG, GIF or WebP"):
            await backend.complete(ChatRequest.model_validate({"messages": [{"role": "user", "content": bad}]}))
    assert state.requests == []


async def test_json_schema_goes_to_output_config_and_json_object_is_refused() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    backend = AnthropicBackend("claude", config("http://127.0.0.1:9"), environ={"AK": KEY})
    assert backend.payload(req(response_format=fmt), stream=False)["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }
    with pytest.raises(InvalidRequest, match="no JSON-object mode") as caught:
        backend.payload(req(response_format={"type": "json_object"}), stream=False)
    assert caught.value.param == "response_format"


def test_json_schema_capability_is_opt_in() -> None:
    default = AnthropicBackend("claude", config("http://127.0.0.1:9"), environ={})
    opted = AnthropicBackend("claude", config("http://127.0.0.1:9", supports={"json_schema": True}), environ={})
    assert (default.capabilities.json_schema, opted.capabilities.json_schema) == (False, True)
    assert default.capabilities.tools is True


async def test_wrong_key_is_an_auth_error_that_never_shows_the_key() -> None:
    wrong = "sk-ant-api03-wrong-key-abcdefghijkl"
    async with emulated(key=wrong) as (backend, state):
        with pytest.raises(UpstreamAuthError) as caught:
            await backend.complete(req())
        with pytest.raises(UpstreamAuthError) as streamed:
            await collect(backend, req())
    assert state.requests[0]["headers"]["x-api-key"] == wrong
    for exc in (caught.value, streamed.value):
        assert wrong not in str(exc) and KEY not in str(exc)
        assert "rejected the gateway's credentials" in exc.message


async def test_readiness_names_the_missing_key() -> None:
    async with emulated(key="") as (backend, _):
        state = backend.readiness()
    assert (state.ready, state.reason) == (False, "no API key: AK is not set")
    backend = AnthropicBackend("claude", config("http://127.0.0.1:9"), environ={"AK": KEY})
    assert backend.readiness().reason == "not started"
    await backend.start()
    assert backend.readiness().ready is True
    await backend.aclose()


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"type": "message"}', b"[1]", b'{"type": "error"}'])
async def test_malformed_upstream_body_is_a_protocol_error(body: bytes) -> None:
    async def handler(request: Request) -> Response:
        return Response(body, media_type="application/json")

    async with raw(handler) as backend:
        with pytest.raises(UpstreamProtocolError):
            await backend.complete(req())


async def test_stream_closed_before_message_stop_is_a_protocol_error() -> None:
    start = {
        "type": "message_start",
        "message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 1, "output_tokens": 1}},
    }
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}
    events = (
        f"event: message_start\ndata: {json.dumps(start)}\n\nevent: content_block_delta\ndata: {json.dumps(delta)}\n\n"
    )

    async def handler(request: Request) -> Response:
        return Response(events, media_type="text/event-stream")

    async with raw(handler) as backend:
        with pytest.raises(UpstreamProtocolError, match="before message_stop"):
            await collect(backend, req())


@pytest.mark.parametrize(
    ("error_type", "error"),
    [("overloaded_error", BackendBusy), ("rate_limit_error", UpstreamRateLimited), ("api_error", BackendError)],
)
async def test_error_event_mid_stream_is_raised(error_type: str, error: type[Exception]) -> None:
    received: list[ChatChunk] = []
    behaviour = {"content": "a b c", "error_event_after": 1, "error_type": error_type, "error": "upstream trouble"}
    async with emulated(behaviour) as (backend, _):
        with pytest.raises(error, match="upstream trouble") as caught:
            async for chunk in backend.stream(req()):
                received.append(chunk)
    assert type(caught.value) is error
    assert text_of(received) == "a "


async def test_cached_prompt_tokens_count_as_prompt_tokens() -> None:
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 5, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 100, "output_tokens": 2},
    }  # fmt: skip

    async def handler(request: Request) -> Response:
        return Response(json.dumps(message), media_type="application/json")

    async with raw(handler) as backend:
        result = await backend.complete(req())
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (115, 2)
    assert result.body["id"] == "chatcmpl-msg_1"


async def test_legacy_function_role_is_refused() -> None:
    backend = AnthropicBackend("claude", config("http://127.0.0.1:9"), environ={"AK": KEY})
    request = ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}, {"role": "function", "name": "f", "content": "1"}]}
    )
    with pytest.raises(InvalidRequest, match="role 'function'"):
        backend.payload(request, stream=False)
