"""The Gemini backend against the Google emulator (and a few raw handlers), over loopback.

What every backend shares (error statuses, filter stops, cut streams, timeouts)
is in ``test_contract.py``; here is the translation that is Google's own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response

from router.backends.gemini import GeminiBackend
from router.chat import ChatChunk, ChatRequest
from router.config import GeminiTargetConfig
from router.errors import (
    BackendError,
    ContentFiltered,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamProtocolError,
    UpstreamRateLimited,
)
from tests.emulators.google_server import EmulatorState, create_app
from tests.support.loopback import Handler, handler_app, serving

KEY = "AIzaSy-secret-gemini-key-0123456789"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def config(base_url: str, **extra: Any) -> GeminiTargetConfig:
    values = {"type": "gemini", "model": "gemini-2.5-flash", "base_url": base_url, "api_key_env": "GK", **extra}
    return GeminiTargetConfig.model_validate(values)


@asynccontextmanager
async def emulated(
    *script: dict[str, Any], key: str = KEY, **extra: Any
) -> AsyncIterator[tuple[GeminiBackend, EmulatorState]]:
    """A started GeminiBackend talking to the Google emulator with ``script`` queued."""
    state = EmulatorState(api_key=KEY)
    state.script.add(*script)
    async with serving(create_app(state)) as url:
        backend = GeminiBackend("gemini", config(url, **extra), environ={"GK": key})
        await backend.start()
        try:
            yield backend, state
        finally:
            await backend.aclose()


@asynccontextmanager
async def raw(handler: Handler) -> AsyncIterator[GeminiBackend]:
    async with serving(handler_app(handler)) as url:
        backend = GeminiBackend("gemini", config(url), environ={"GK": KEY})
        await backend.start()
        try:
            yield backend
        finally:
            await backend.aclose()


def offline() -> GeminiBackend:
    return GeminiBackend("gemini", config("http://127.0.0.1:9"), environ={"GK": KEY})


def req(content: str = "hello", **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": content}], **extra})


def sent(state: EmulatorState, index: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = state.requests[index]["body"]
    return body


async def collect(backend: GeminiBackend, request: ChatRequest) -> list[ChatChunk]:
    return [chunk async for chunk in backend.stream(request)]


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_plain_text_with_the_key_in_a_header() -> None:
    async with emulated() as (backend, state):
        result = await backend.complete(req("hello there"))

    seen = state.requests[0]
    assert seen["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert seen["headers"]["x-goog-api-key"] == KEY
    assert seen["query"] == {}
    assert sent(state) == {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}
    body = result.body
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Echo: hello there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == "gemini-2.5-flash"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


async def test_multi_turn_maps_assistant_to_model() -> None:
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    async with emulated() as (backend, state):
        result = await backend.complete(ChatRequest.model_validate({"messages": messages}))
    assert sent(state)["contents"] == [
        {"role": "user", "parts": [{"text": "My name is Ada."}]},
        {"role": "model", "parts": [{"text": "Hello Ada."}]},
        {"role": "user", "parts": [{"text": "What is my name?"}]},
    ]
    assert result.body["choices"][0]["message"]["content"] == "Echo: What is my name?"


async def test_system_prompt_becomes_system_instruction() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    async with emulated() as (backend, state):
        await backend.complete(ChatRequest.model_validate({"messages": messages}))
    assert sent(state)["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in sent(state)["contents"]] == ["user"]


async def test_generation_config_carries_the_sampling_options() -> None:
    request = req(temperature=0.3, top_p=0.8, top_k=20, max_completion_tokens=64, seed=7,
                  presence_penalty=0.5, frequency_penalty=0.25, stop=["END", "STOP"])  # fmt: skip
    assert offline().payload(request)["generationConfig"] == {
        "temperature": 0.3,
        "topP": 0.8,
        "topK": 20,
        "maxOutputTokens": 64,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": 0.25,
        "stopSequences": ["END", "STOP"],
    }


async def test_stream_with_usage_over_sse() -> None:
    async with emulated() as (backend, state):
        chunks = await collect(backend, req("one two three"))

    seen = state.requests[0]
    assert seen["path"] == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert seen["query"] == {"alt": "sse"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text_of(chunks) == "Echo: one two three"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}


async def test_tool_call_round_trip_keeps_the_thought_signature() -> None:
    call = {"name": "get_weather", "args": {"city": "Paris"}, "thought_signature": "c2lnLTE="}
    async with emulated({"tool_calls": [call], "content": ""}, {"content": "It is sunny."}) as (backend, state):
        first = await backend.complete(req("Weather in Paris?", tools=[WEATHER_TOOL], tool_choice="required"))
        message = first.body["choices"][0]["message"]
        follow_up = ChatRequest.model_validate(
            {
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    message,
                    {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": '{"sky": "sunny"}'},
                ],
                "tools": [WEATHER_TOOL],
            }
        )
        second = await backend.complete(follow_up)

    assert first.body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] is None
    [tool_call] = message["tool_calls"]
    assert tool_call["id"].startswith("call_")
    assert tool_call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert tool_call["extra_content"] == {"google": {"thought_signature": "c2lnLTE="}}
    asked = sent(state, 0)
    assert asked["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
                }
            ]
        }
    ]
    assert asked["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert sent(state, 1)["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnLTE="}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "sunny"}}}]},
    ]  # fmt: skip
    assert second.body["choices"][0]["message"]["content"] == "It is sunny."


async def test_parallel_function_responses_share_one_user_turn() -> None:
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    messages = [
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_a", "content": "cold"},
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
    ]
    async with emulated() as (backend, state):
        await backend.complete(ChatRequest.model_validate({"messages": messages, "tools": [WEATHER_TOOL]}))
    contents = sent(state)["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"result": "cold"}}},
        {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}},
    ]


async def test_tool_result_for_an_unknown_call_is_refused() -> None:
    messages = [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_zz", "content": "1"}]
    with pytest.raises(InvalidRequest, match="answers no earlier tool call"):
        offline().payload(ChatRequest.model_validate({"messages": messages}))


async def test_streamed_function_calls_become_tool_call_deltas() -> None:
    calls = [
        {"name": "get_weather", "args": {"city": "Oslo"}},
        {"name": "get_weather", "args": {"city": "Rome"}, "id": "fc-2"},
    ]
    async with emulated({"tool_calls": calls, "content": ""}) as (backend, _):
        chunks = await collect(backend, req("Weather?", tools=[WEATHER_TOOL]))
    deltas = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert [d["index"] for d in deltas] == [0, 1]
    assert deltas[1]["id"] == "fc-2"
    assert [json.loads(d["function"]["arguments"]) for d in deltas] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_tool_choice_mapping(choice: object, expected: dict[str, Any]) -> None:
    body = offline().payload(req(tools=[WEATHER_TOOL], tool_choice=choice))
    assert body["toolConfig"] == {"functionCallingConfig": expected}


async def test_stop_sequence_reports_stop() -> None:
    async with emulated({"content": "one two three four"}) as (backend, state):
        result = await backend.complete(req(stop="three"))
        chunks = await collect(backend, req(stop="three"))
    assert sent(state)["generationConfig"] == {"stopSequences": ["three"]}
    assert result.body["choices"][0]["message"]["content"] == "one two "
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_max_tokens_finish_is_length() -> None:
    async with emulated() as (backend, _):
        result = await backend.complete(req("a b c d e f", max_tokens=2))
    assert result.body["choices"][0]["finish_reason"] == "length"


def test_json_modes() -> None:
    schema = {"type": "object", "properties": {"a": {"type": ["integer", "null"]}}, "additionalProperties": False}
    as_object = offline().payload(req(response_format={"type": "json_object"}))["generationConfig"]
    as_schema = offline().payload(
        req(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    )["generationConfig"]
    assert as_object == {"responseMimeType": "application/json"}
    assert as_schema == {"responseMimeType": "application/json", "responseJsonSchema": schema}
    assert offline().capabilities.json_schema is True


def test_images_become_inline_data_and_remote_urls_are_refused() -> None:
    content = [
        {"type": "text", "text": "What?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    body = offline().payload(ChatRequest.model_validate({"messages": [{"role": "user", "content": content}]}))
    assert body["contents"][0]["parts"] == [
        {"text": "What?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
    ]
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(InvalidRequest, match="data: URLs"):
        offline().payload(ChatRequest.model_validate({"messages": [{"role": "user", "content": remote}]}))


@pytest.mark.parametrize(("key", "status"), [("AIzaSy-wrong-key-abcdefghijklmnop", 400), ("", 403)])
async def test_wrong_or_missing_key_is_an_auth_error_without_the_key(key: str, status: int) -> None:
    async with emulated(key=key) as (backend, _):
        with pytest.raises(UpstreamAuthError) as caught:
            await backend.complete(req())
        with pytest.raises(UpstreamAuthError) as streamed:
            await collect(backend, req())
    for exc in (caught.value, streamed.value):
        assert f"upstream returned {status}" in exc.message
        assert KEY not in str(exc)
        assert not key or key not in str(exc)


async def test_readiness_names_the_missing_key() -> None:
    backend = GeminiBackend("gemini", config("http://127.0.0.1:9"), environ={})
    assert (backend.readiness().ready, backend.readiness().reason) == (False, "no API key: GK is not set")
    ready = offline()
    assert ready.readiness().reason == "not started"
    await ready.start()
    assert ready.readiness().ready is True
    await ready.aclose()


async def test_blocked_prompt_is_content_filtered_before_any_chunk() -> None:
    blocked = {"block_reason": "SAFETY"}
    async with emulated(blocked, blocked) as (backend, _):
        with pytest.raises(ContentFiltered, match="blocked the prompt"):
            await backend.complete(req())
        received: list[ChatChunk] = []
        with pytest.raises(ContentFiltered):
            async for chunk in backend.stream(req()):
                received.append(chunk)
    assert received == []


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"candidates": []}', b"[1]", b'{"candidates": [1]}'])
async def test_malformed_upstream_body_is_a_protocol_error(body: bytes) -> None:
    async def handler(request: Request) -> Response:
        return Response(body, media_type="application/json")

    async with raw(handler) as backend:
        with pytest.raises(UpstreamProtocolError):
            await backend.complete(req())


async def test_stream_closed_before_the_last_event_is_a_protocol_error() -> None:
    event = {"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "index": 0}]}

    async def handler(request: Request) -> Response:
        return Response(f"data: {json.dumps(event)}\r\n\r\n", media_type="text/event-stream")

    async with raw(handler) as backend:
        with pytest.raises(UpstreamProtocolError, match="before its last event"):
            await collect(backend, req())


@pytest.mark.parametrize(("status", "error"), [(503, BackendError), (429, UpstreamRateLimited)])
async def test_error_object_mid_stream_is_raised(status: int, error: type[Exception]) -> None:
    received: list[ChatChunk] = []
    behaviour = {"content": "a b c", "error_event_after": 1, "status": status, "error": "upstream trouble"}
    async with emulated(behaviour) as (backend, _):
        with pytest.raises(error, match="upstream trouble") as caught:
            async for chunk in backend.stream(req()):
                received.append(chunk)
    assert type(caught.value) is error
    assert text_of(received) == "a "


async def test_thought_parts_are_left_out_and_thinking_tokens_are_output() -> None:
    answer = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "pondering", "thought": True}, {"text": "42"}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1, "thoughtsTokenCount": 30, "totalTokenCount": 40},
        "modelVersion": "gemini-2.5-pro", "responseId": "abc",
    }  # fmt: skip

    async def handler(request: Request) -> Response:
        return Response(json.dumps(answer), media_type="application/json")

    async with raw(handler) as backend:
        result = await backend.complete(req())
    assert result.body["choices"][0]["message"]["content"] == "42"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (9, 31)
    assert (result.body["id"], result.body["model"]) == ("chatcmpl-abc", "gemini-2.5-pro")


def test_model_names_with_a_models_prefix_and_other_api_versions() -> None:
    backend = GeminiBackend("g", config("http://x", model="models/gemini-2.0-flash", api_version="v1"), environ={})
    assert backend.model_path == "/v1/models/gemini-2.0-flash"
