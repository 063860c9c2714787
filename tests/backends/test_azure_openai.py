"""The Azure OpenAI backend against the Azure OpenAI emulator on loopback.

What every backend shares (error statuses, filter stops, cut streams, timeouts)
is in ``test_contract.py``; here is what is Azure's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from starlette.requests import Request
from starlette.responses import Response

from router.backends.azure_openai import AzureOpenAIBackend, require_azure
from router.chat import ChatChunk, ChatRequest
from router.config import AzureOpenAITargetConfig
from router.errors import (
    ConfigError,
    ContentFiltered,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamProtocolError,
)
from tests.emulators.azure_openai_server import (
    TEST_API_KEY,
    TEST_DEPLOYMENT,
    TEST_TOKEN,
    AzureBehaviour,
    AzureEmulatorState,
    create_app,
)
from tests.support.loopback import handler_app, serving

KEY_ENV = {"AZURE_OPENAI_API_KEY": TEST_API_KEY}
SCOPE = "https://cognitiveservices.azure.com/.default"
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


class FakeCredential:
    """An Entra ID credential that hands out ``tokens`` in turn and records each call."""

    def __init__(self, *tokens: str, lifetime_s: int = 3600, fail: bool = False) -> None:
        self.tokens = list(tokens) or [TEST_TOKEN]
        self.lifetime_s = lifetime_s
        self.fail = fail
        self.calls: list[tuple[tuple[str, ...], int]] = []
        self.now = 1_000_000.0

    def clock(self) -> float:
        return self.now

    def get_token(self, *scopes: str) -> AccessToken:
        self.calls.append((scopes, threading.get_ident()))
        if self.fail:
            raise RuntimeError(f"no managed identity; token would be {TEST_TOKEN}")
        token = self.tokens[min(len(self.calls), len(self.tokens)) - 1]
        return AccessToken(token, int(self.now) + self.lifetime_s)


def config(url: str, **extra: object) -> AzureOpenAITargetConfig:
    return AzureOpenAITargetConfig.model_validate(
        {"type": "azure_openai", "endpoint": url, "deployment": TEST_DEPLOYMENT, **extra}
    )


@asynccontextmanager
async def azure(
    state: AzureEmulatorState | None = None,
    *,
    environ: dict[str, str] | None = None,
    credential: FakeCredential | None = None,
    **extra: object,
) -> AsyncIterator[tuple[AzureOpenAIBackend, AzureEmulatorState]]:
    """A started AzureOpenAIBackend talking to an emulator on loopback."""
    state = state or AzureEmulatorState()
    async with serving(create_app(state)) as url:
        if credential is not None:
            extra.setdefault("auth", "entra_id")
        backend = AzureOpenAIBackend(
            "azure",
            config(url, **extra),
            environ=KEY_ENV if environ is None else environ,
            credential=credential,
            clock=credential.clock if credential else time.time,
        )
        await backend.start()
        try:
            yield backend, state
        finally:
            await backend.aclose()


def req(content: str = "hello", **extra: object) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": content}], **extra})


async def collect(backend: AzureOpenAIBackend, request: ChatRequest) -> list[ChatChunk]:
    return [chunk async for chunk in backend.stream(request)]


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_plain_text_goes_to_the_deployment_url_with_api_version_and_key() -> None:
    async with azure() as (backend, state):
        result = await backend.complete(req("hello there", model="azure", top_k=3))

    seen = state.requests[0]
    assert seen["deployment"] == TEST_DEPLOYMENT
    assert seen["query"] == {"api-version": "2024-10-21"}
    assert seen["headers"]["api-key"] == TEST_API_KEY
    assert "authorization" not in seen["headers"]
    # Azure ignores the body's model, and rejects fields OpenAI does not document (top_k).
    assert seen["body"] == {"messages": [{"role": "user", "content": "hello there"}], "model": TEST_DEPLOYMENT}
    body = result.body
    assert body["choices"][0]["message"]["content"] == "Echo: hello there"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == "gpt-4o-2024-08-06"
    assert "prompt_filter_results" not in body
    assert "content_filter_results" not in body["choices"][0]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (11, 3)


async def test_system_prompt_multi_turn_and_sampling_pass_through() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    async with azure(api_version="2025-01-01-preview") as (backend, state):
        result = await backend.complete(req(messages=messages, temperature=0.3, top_p=0.5, max_tokens=20, seed=1))
    sent = state.requests[0]
    assert sent["query"]["api-version"] == "2025-01-01-preview"
    assert sent["body"]["messages"] == messages
    assert (sent["body"]["temperature"], sent["body"]["top_p"], sent["body"]["max_tokens"]) == (0.3, 0.5, 20)
    assert result.body["choices"][0]["message"]["content"] == "Echo: What is my name?"


async def test_stop_sequence_and_json_mode_pass_through() -> None:
    async with azure() as (backend, state):
        state.script.add({"content": "one two three four"})
        result = await backend.complete(req(stop=["three"], response_format={"type": "json_object"}))
    assert state.requests[0]["body"]["stop"] == ["three"]
    assert state.requests[0]["body"]["response_format"] == {"type": "json_object"}
    assert result.body["choices"][0]["message"]["content"] == "one two "
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert backend.capabilities.json_schema is True


async def test_stream_skips_the_prompt_filter_chunk_and_ends_with_usage() -> None:
    async with azure() as (backend, state):
        state.script.add({"chunks": ["Hel", "lo"], "annotations": True})
        chunks = await collect(backend, req("one two"))

    sent = state.requests[0]["body"]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert all(c["choices"] for c in chunks[:-1])
    assert all("delta" in c["choices"][0] and "content_filter_results" not in c["choices"][0] for c in chunks[:-1])
    assert text_of(chunks) == "Hello"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    assert chunks[-1]["model"] == "gpt-4o-2024-08-06"


async def test_tool_call_round_trip() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    async with azure() as (backend, state):
        state.script.add({"tool_calls": [call]})
        first = await backend.complete(req("Weather?", tools=TOOLS, tool_choice="auto"))
        message = first.body["choices"][0]["message"]
        history = [
            {"role": "user", "content": "Weather?"},
            message,
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
        ]
        state.script.add({"tool_calls": [call]})
        streamed = await collect(backend, req(messages=history, tools=TOOLS))

    assert first.body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"] == [call]
    assert state.requests[0]["body"]["tools"] == TOOLS
    assert state.requests[0]["body"]["tool_choice"] == "auto"
    assert state.requests[1]["body"]["messages"][1]["tool_calls"] == [call]
    assert state.requests[1]["body"]["messages"][2] == history[2]
    deltas = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in streamed
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert deltas[0]["id"] == "call_1"
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"city":"Paris"}'
    assert streamed[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_prompt_filter_error_names_the_categories() -> None:
    async with azure() as (backend, state):
        state.script.add({"content_filter": "prompt"})
        with pytest.raises(ContentFiltered) as caught:
            await backend.complete(req())
    assert caught.value.message == (
        "target azure: upstream returned 400: Azure OpenAI's content filter blocked the prompt (violence: medium)"
    )
    assert caught.value.status_code == 400
    assert caught.value.code == "content_filter"


async def test_a_filtered_answer_after_some_output_keeps_it_without_annotations() -> None:
    async with azure() as (backend, state):
        filtered = AzureBehaviour(content="a b c d", content_filter="completion", filter_after=2)
        state.script.add(filtered, filtered)
        result = await backend.complete(req())
        chunks = await collect(backend, req())
    choice = result.body["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("a b ", "content_filter")
    assert "content_filter_results" not in choice
    assert text_of(chunks) == "a b "
    assert chunks[-2]["choices"][0]["finish_reason"] == "content_filter"
    assert all("content_filter_results" not in c["choices"][0] for c in chunks[:-1])


async def test_wrong_key_is_an_auth_error_that_leaks_nothing() -> None:
    async with azure(environ={"AZURE_OPENAI_API_KEY": "wrong-key-0123456789"}) as (backend, state):
        with pytest.raises(UpstreamAuthError) as caught:
            await backend.complete(req())
        state.script.add({"status": 400, "error": "key wrong-key-0123456789 is not valid here"})
        with pytest.raises(UpstreamAuthError):
            await collect(backend, req())
    assert "wrong-key-0123456789" not in caught.value.message
    assert (
        caught.value.message == "target azure: upstream returned 401: the upstream rejected the gateway's credentials"
    )


async def test_unknown_deployment_is_a_bad_request() -> None:
    async with azure(deployment="no-such-deployment") as (backend, _):
        with pytest.raises(UpstreamBadRequest, match="deployment for this resource does not exist"):
            await backend.complete(req())


@pytest.mark.parametrize("behaviour", [{"malformed": True}, {"content": "x", "status": 200}])
async def test_malformed_upstream_body_is_a_protocol_error(behaviour: dict[str, Any]) -> None:
    async with azure() as (backend, state):
        state.script.add(behaviour)
        with pytest.raises(UpstreamProtocolError):
            await backend.complete(req())


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"choices": []}', b'{"choices": [1]}', b"[1]"])
async def test_malformed_answer_shapes_are_protocol_errors(body: bytes) -> None:
    async def handler(request: Request) -> Response:
        return Response(body, media_type="application/json")

    async with serving(handler_app(handler)) as url:
        backend = AzureOpenAIBackend("azure", config(url), environ=KEY_ENV)
        await backend.start()
        with pytest.raises(UpstreamProtocolError):
            await backend.complete(req())
        await backend.aclose()


async def test_malformed_stream_events_are_protocol_errors() -> None:
    async def handler(request: Request) -> Response:
        return Response(b'data: {"choices": [1]}\n\ndata: [DONE]\n\n', media_type="text/event-stream")

    async with serving(handler_app(handler)) as url:
        backend = AzureOpenAIBackend("azure", config(url), environ=KEY_ENV)
        await backend.start()
        with pytest.raises(UpstreamProtocolError, match="malformed choices"):
            await collect(backend, req())
        await backend.aclose()


async def test_readiness_follows_the_key_env_var() -> None:
    async with azure(environ={}) as (no_key, _):
        assert no_key.readiness().ready is False
        assert no_key.readiness().reason == "no API key: AZURE_OPENAI_API_KEY is not set"
    async with azure(environ={"MY_KEY": TEST_API_KEY}, api_key_env="MY_KEY") as (custom, _):
        assert custom.readiness().ready is True
        await custom.complete(req())
    unstarted = AzureOpenAIBackend("azure", config("http://127.0.0.1:9"), environ=KEY_ENV)
    assert unstarted.readiness().reason == "not started"


async def test_entra_token_is_fetched_off_the_loop_cached_and_sent_as_bearer() -> None:
    credential = FakeCredential()
    loop_thread = threading.get_ident()
    async with azure(AzureEmulatorState(api_key=None), environ={}, credential=credential) as (backend, state):
        assert backend.readiness().ready
        await backend.complete(req())
        await collect(backend, req())
        await backend.complete(req())

    assert [scopes for scopes, _ in credential.calls] == [(SCOPE,)]
    assert credential.calls[0][1] != loop_thread
    assert all(seen["headers"]["authorization"] == f"Bearer {TEST_TOKEN}" for seen in state.requests)
    assert all("api-key" not in seen["headers"] for seen in state.requests)


async def test_entra_token_is_refreshed_near_expiry_and_after_a_401() -> None:
    credential = FakeCredential(TEST_TOKEN, "stale-token-abcdef", TEST_TOKEN, lifetime_s=3600)
    async with azure(AzureEmulatorState(api_key=None), environ={}, credential=credential) as (backend, state):
        await backend.complete(req())
        credential.now += 3600 - 200  # inside the five-minute refresh margin
        with pytest.raises(UpstreamAuthError) as caught:
            await backend.complete(req())
        await backend.complete(req())

    assert len(credential.calls) == 3
    assert [seen["headers"]["authorization"][7:] for seen in state.requests] == [
        TEST_TOKEN,
        "stale-token-abcdef",
        TEST_TOKEN,
    ]
    assert "stale-token-abcdef" not in caught.value.message


async def test_entra_failure_is_an_auth_error_and_makes_the_target_not_ready_for_a_while() -> None:
    credential = FakeCredential(fail=True)
    async with azure(AzureEmulatorState(api_key=None), environ={}, credential=credential) as (backend, state):
        with pytest.raises(UpstreamAuthError) as caught:
            await backend.complete(req())
        assert backend.readiness().reason == "no Microsoft Entra ID token: RuntimeError"
        credential.now += 31
        assert backend.readiness().ready
        credential.fail = False
        await backend.complete(req())
    assert caught.value.message == "target azure: could not get a Microsoft Entra ID token (RuntimeError)"
    assert len(state.requests) == 1


async def test_default_entra_credential_comes_from_azure_identity() -> None:
    backend = AzureOpenAIBackend("azure", config("http://127.0.0.1:9", auth="entra_id"), environ={})
    await backend.start()
    assert backend.readiness().ready
    await backend.aclose()
    assert type(backend._credential).__name__ == "DefaultAzureCredential"


def test_missing_azure_identity_fails_start_up_with_an_install_hint() -> None:
    with pytest.raises(ConfigError, match=r"pip install 'hybrid-router\[azure\]'"):
        require_azure("azure.no_such_module", target="azure")
