"""The Vertex AI backend against the Google emulator, with real google-auth service-account tokens.

What every backend shares (error statuses, filter stops, cut streams, timeouts)
is in ``test_contract.py``; the translation is Gemini's (``test_gemini.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from router.backends.vertex import GoogleAuthTokens, VertexBackend, vertex_base_url
from router.chat import ChatChunk, ChatRequest
from router.config import VertexTargetConfig
from router.errors import (
    ConfigError,
    ContentFiltered,
    UpstreamAuthError,
)
from tests.backends.contract import StaticTokens
from tests.emulators.google_server import EmulatorState, GoogleBehaviour, ServiceAccount, TokenBehaviour, create_app
from tests.support.loopback import serving

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
PATH = "/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.5-flash"


@pytest.fixture(scope="module")
def account() -> ServiceAccount:
    return ServiceAccount.generate()


def config(base_url: str, **extra: Any) -> VertexTargetConfig:
    values = {"type": "vertex", "project": "proj-1", "region": "us-central1", "model": "gemini-2.5-flash",
              "base_url": base_url, **extra}  # fmt: skip
    return VertexTargetConfig.model_validate(values)


@asynccontextmanager
async def emulated(
    account: ServiceAccount, folder: Path, *script: GoogleBehaviour | TokenBehaviour
) -> AsyncIterator[tuple[VertexBackend, EmulatorState]]:
    """A started VertexBackend whose google-auth service account gets its tokens from the emulator."""
    state = EmulatorState(public_key=account.public_pem)
    state.queue(script)
    async with serving(create_app(state)) as url:
        credentials = account.write(folder, f"{url}/token")
        backend = VertexBackend("vertex", config(url, credentials_file=str(credentials)))
        await backend.start()
        try:
            yield backend, state
        finally:
            await backend.aclose()


def req(content: str = "hello", **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": content}], **extra})


def sent(state: EmulatorState, index: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = state.requests[index]["body"]
    return body


async def collect(backend: VertexBackend, request: ChatRequest) -> list[ChatChunk]:
    return [chunk async for chunk in backend.stream(request)]


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_plain_text_with_a_service_account_token(account: ServiceAccount, tmp_path: Path) -> None:
    async with emulated(account, tmp_path) as (backend, state):
        assert backend.readiness().ready is True
        result = await backend.complete(req("hello there"))

    seen = state.requests[0]
    assert seen["path"] == f"{PATH}:generateContent"
    assert seen["headers"]["authorization"].removeprefix("Bearer ") in state.tokens
    assert sent(state) == {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}
    assert result.body["choices"][0]["message"]["content"] == "Echo: hello there"
    assert result.body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    [grant] = state.grants
    assert grant["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"


async def test_token_is_cached_until_it_expires(account: ServiceAccount, tmp_path: Path) -> None:
    async with emulated(account, tmp_path) as (backend, state):
        await backend.complete(req())
        await backend.complete(req())
        assert len(state.grants) == 1
    # A token inside google-auth's refresh margin (3m45s) is fetched again for the next call.
    short = TokenBehaviour(expires_in=10)
    async with emulated(account, tmp_path, short, short) as (backend, state):
        await backend.complete(req())
        await backend.complete(req())
        assert len(state.grants) == 2
        tokens = {r["headers"]["authorization"] for r in state.requests}
    assert len(tokens) == 2


async def test_multi_turn_and_system_prompt(account: ServiceAccount, tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "Name?"},
    ]
    async with emulated(account, tmp_path) as (backend, state):
        result = await backend.complete(ChatRequest.model_validate({"messages": messages}))
    assert sent(state)["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in sent(state)["contents"]] == ["user", "model", "user"]
    assert result.body["choices"][0]["message"]["content"] == "Echo: Name?"


async def test_stream_with_usage(account: ServiceAccount, tmp_path: Path) -> None:
    async with emulated(account, tmp_path) as (backend, state):
        chunks = await collect(backend, req("one two three"))
    assert state.requests[0]["path"] == f"{PATH}:streamGenerateContent"
    assert state.requests[0]["query"] == {"alt": "sse"}
    assert text_of(chunks) == "Echo: one two three"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


async def test_tool_call_round_trip(account: ServiceAccount, tmp_path: Path) -> None:
    call = {"name": "get_weather", "args": {"city": "Paris"}}
    async with emulated(
        account, tmp_path, GoogleBehaviour(tool_calls=[call], content=""), GoogleBehaviour(content="Sunny.")
    ) as (
        backend,
        state,
    ):
        first = await backend.complete(req("Weather?", tools=[WEATHER_TOOL]))
        message = first.body["choices"][0]["message"]
        tool_answer = {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "sunny"}
        history = [{"role": "user", "content": "Weather?"}, message, tool_answer]
        second = await backend.complete(ChatRequest.model_validate({"messages": history, "tools": [WEATHER_TOOL]}))
    assert first.body["choices"][0]["finish_reason"] == "tool_calls"
    assert sent(state, 1)["contents"][2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}],
    }
    assert second.body["choices"][0]["message"]["content"] == "Sunny."


async def test_stop_sequence(account: ServiceAccount, tmp_path: Path) -> None:
    async with emulated(account, tmp_path, GoogleBehaviour(content="one two three")) as (backend, state):
        result = await backend.complete(req(stop=["two"]))
    assert sent(state)["generationConfig"] == {"stopSequences": ["two"]}
    assert (result.body["choices"][0]["message"]["content"], result.body["choices"][0]["finish_reason"]) == (
        "one ",
        "stop",
    )


async def test_token_the_upstream_rejects_is_an_auth_error_without_the_token(tmp_path: Path) -> None:
    state = EmulatorState()
    async with serving(create_app(state)) as url:
        backend = VertexBackend("vertex", config(url), tokens=StaticTokens("ya29.revoked-token-0123456789"))
        await backend.start()
        with pytest.raises(UpstreamAuthError) as caught:
            await backend.complete(req())
        await backend.aclose()
    assert "upstream returned 401" in caught.value.message
    assert "ya29.revoked" not in str(caught.value)
    assert state.requests[0]["headers"]["authorization"] == "Bearer ya29.revoked-token-0123456789"


async def test_token_endpoint_refusal_is_an_auth_error(account: ServiceAccount, tmp_path: Path) -> None:
    refusal = TokenBehaviour(status=400, error="Invalid JWT Signature.")
    async with emulated(account, tmp_path, refusal) as (backend, state):
        with pytest.raises(UpstreamAuthError, match="could not obtain a Google access token"):
            await backend.complete(req())
    assert state.requests == []


async def test_jwt_signed_by_another_key_is_refused(tmp_path: Path, account: ServiceAccount) -> None:
    state = EmulatorState(public_key=ServiceAccount.generate().public_pem)
    async with serving(create_app(state)) as url:
        credentials = account.write(tmp_path, f"{url}/token")
        backend = VertexBackend("vertex", config(url, credentials_file=str(credentials)))
        await backend.start()
        with pytest.raises(UpstreamAuthError):
            await backend.complete(req())
        await backend.aclose()


async def test_missing_credentials_make_the_target_not_ready(tmp_path: Path) -> None:
    backend = VertexBackend("vertex", config("http://127.0.0.1:9", credentials_file=str(tmp_path / "absent.json")))
    assert backend.readiness().ready is False
    await backend.start()
    state = backend.readiness()
    await backend.aclose()
    assert state.ready is False
    assert "absent.json" in state.reason


async def test_unreadable_credentials_file_names_the_problem(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "service_account"}')
    tokens = GoogleAuthTokens(str(broken))
    with pytest.raises(ConfigError, match="broken.json"):
        await tokens.load()
    assert tokens.loaded is False


async def test_safety_block_is_content_filtered(account: ServiceAccount, tmp_path: Path) -> None:
    async with emulated(account, tmp_path, GoogleBehaviour(block_reason="PROHIBITED_CONTENT")) as (backend, _):
        with pytest.raises(ContentFiltered, match="PROHIBITED_CONTENT"):
            await backend.complete(req())


def test_endpoint_follows_the_region_and_the_override() -> None:
    regional = VertexTargetConfig(type="vertex", project="p", region="europe-west4", model="m")
    global_ = VertexTargetConfig(type="vertex", project="p", region="global", model="m")
    assert vertex_base_url(regional) == "https://europe-west4-aiplatform.googleapis.com"
    assert vertex_base_url(global_) == "https://aiplatform.googleapis.com"
    assert vertex_base_url(config("http://127.0.0.1:9")) == "http://127.0.0.1:9/"
    backend = VertexBackend("v", global_, tokens=StaticTokens("t"))
    assert backend.model_path == "/v1/projects/p/locations/global/publishers/google/models/m"
