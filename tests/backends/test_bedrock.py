"""The Bedrock backend against the Bedrock emulator, which verifies every SigV4 signature with botocore.

What every backend shares (error types, filter stops, cut streams, timeouts)
is in ``test_contract.py``; here is what is Bedrock's own.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from botocore.credentials import CredentialResolver, Credentials, EnvProvider, RefreshableCredentials
from botocore.session import Session
from starlette.requests import Request
from starlette.responses import Response

from router.backends._eventstream import EVENT_STREAM, iter_events, require_botocore
from router.backends.bedrock import BedrockBackend, converse_body
from router.chat import ChatChunk, ChatRequest
from router.config import BedrockTargetConfig
from router.errors import (
    BackendError,
    ConfigError,
    ContentFiltered,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamProtocolError,
    UpstreamRateLimited,
)
from tests.emulators.bedrock_server import (
    TEST_ACCESS_KEY,
    TEST_SECRET_KEY,
    BedrockBehaviour,
    BedrockEmulatorState,
    create_app,
    event_frame,
)
from tests.support.loopback import handler_app, serving

MODEL_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"
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


class StaticSession:
    """A credential source with fixed keys (botocore.session.Session's one method)."""

    def __init__(self, credentials: Any) -> None:
        self.credentials = credentials

    def get_credentials(self) -> Any:
        return self.credentials


def keys(secret: str = TEST_SECRET_KEY, token: str | None = None) -> StaticSession:
    return StaticSession(Credentials(TEST_ACCESS_KEY, secret, token))


def config(url: str | None, **extra: object) -> BedrockTargetConfig:
    values: dict[str, object] = {"type": "bedrock", "region": "us-east-1", "model_id": MODEL_ID, **extra}
    if url:
        values["endpoint_url"] = url
    return BedrockTargetConfig.model_validate(values)


@asynccontextmanager
async def bedrock(
    state: BedrockEmulatorState | None = None, *, session: Any = None, **extra: object
) -> AsyncIterator[tuple[BedrockBackend, BedrockEmulatorState]]:
    """A started BedrockBackend talking to an emulator on loopback."""
    state = state or BedrockEmulatorState()
    async with serving(create_app(state)) as url:
        backend = BedrockBackend("bedrock", config(url, **extra), session=session or keys())
        await backend.start()
        try:
            yield backend, state
        finally:
            await backend.aclose()


def req(content: str = "hello", **extra: object) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": content}], **extra})


async def collect(backend: BedrockBackend, request: ChatRequest) -> list[ChatChunk]:
    return [chunk async for chunk in backend.stream(request)]


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_plain_text_is_signed_sent_to_the_encoded_path_and_translated() -> None:
    async with bedrock() as (backend, state):
        result = await backend.complete(req("hello there"))

    seen = state.requests[0]
    assert seen["path"] == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert seen["headers"]["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={TEST_ACCESS_KEY}/")
    assert "/us-east-1/bedrock/aws4_request" in seen["headers"]["authorization"]
    assert seen["body"] == {"messages": [{"role": "user", "content": [{"text": "hello there"}]}]}
    body = result.body
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL_ID
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Echo: hello there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (2, 3)
    assert body["usage"]["total_tokens"] == 5


async def test_system_prompts_multi_turn_and_sampling_settings() -> None:
    request = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": "Hello Ada."},
                {"role": "developer", "content": "Answer in English."},
                {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
                {"role": "user", "content": "Just the name."},
            ],
            "temperature": 1.5,
            "top_p": 0.9,
            "max_tokens": 50,
            "seed": 7,
        }
    )
    async with bedrock() as (backend, state):
        result = await backend.complete(request)

    sent = state.requests[0]["body"]
    assert sent["system"] == [{"text": "Be brief."}, {"text": "Answer in English."}]
    assert sent["messages"] == [
        {"role": "user", "content": [{"text": "My name is Ada."}]},
        {"role": "assistant", "content": [{"text": "Hello Ada."}]},
        {"role": "user", "content": [{"text": "What is my name?"}, {"text": "Just the name."}]},
    ]
    # Converse takes temperatures up to 1 where OpenAI takes up to 2.
    assert sent["inferenceConfig"] == {"maxTokens": 50, "temperature": 1.0, "topP": 0.9}
    assert result.body["choices"][0]["message"]["content"] == "Echo: What is my name? Just the name."


async def test_stop_sequence_is_sent_and_reported_as_stop() -> None:
    async with bedrock() as (backend, state):
        state.script.add({"content": "one two three four"}, {"content": "one two three four"})
        result = await backend.complete(req(stop=["three"]))
        chunks = await collect(backend, req(stop="three"))

    assert state.requests[0]["body"]["inferenceConfig"] == {"stopSequences": ["three"]}
    assert result.body["choices"][0]["message"]["content"] == "one two "
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert text_of(chunks) == "one two "
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_max_tokens_is_finish_reason_length() -> None:
    async with bedrock() as (backend, state):
        state.script.add({"content": "a b c d e"})
        result = await backend.complete(req(max_completion_tokens=2))
    assert result.body["choices"][0]["message"]["content"] == "a b "
    assert result.body["choices"][0]["finish_reason"] == "length"


async def test_stream_relays_text_and_ends_with_usage() -> None:
    async with bedrock() as (backend, state):
        state.script.add({"chunks": ["Hel", "lo", " world"]})
        chunks = await collect(backend, req("one two three"))

    assert state.requests[0]["path"].endswith("%3A0/converse-stream")
    assert state.requests[0]["headers"]["accept"] == EVENT_STREAM
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["Hel", "lo", " world"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize("behaviour", [{"split": 3}, {"split": 50}, {"coalesce": True}])
async def test_frames_split_across_reads_or_coalesced_decode_the_same(behaviour: dict[str, object]) -> None:
    async with bedrock() as (backend, state):
        state.script.add({"content": "alpha beta gamma", **behaviour})
        chunks = await collect(backend, req())
    assert text_of(chunks) == "alpha beta gamma"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_decoder_yields_each_frame_whatever_the_split_point() -> None:
    frames = [
        event_frame("messageStart", {"role": "assistant"}),
        event_frame("contentBlockDelta", {"delta": {"text": "Hi"}, "contentBlockIndex": 0}),
        event_frame("messageStop", {"stopReason": "end_turn"}),
    ]
    stream = b"".join(frames)

    async def pieces(*cuts: int) -> AsyncIterator[bytes]:
        bounds = [0, *cuts, len(stream)]
        for start, end in itertools.pairwise(bounds):
            yield stream[start:end]

    for cut in range(1, len(stream)):
        events = [e async for e in iter_events(pieces(cut))]
        assert [e.name for e in events] == ["messageStart", "contentBlockDelta", "messageStop"]
        assert json.loads(events[1].payload)["delta"] == {"text": "Hi"}
    byte_by_byte = [e async for e in iter_events(pieces(*range(1, len(stream))))]
    assert len(byte_by_byte) == 3


async def test_decoder_rejects_a_truncated_final_frame() -> None:
    frame = event_frame("messageStart", {"role": "assistant"})

    async def pieces() -> AsyncIterator[bytes]:
        yield frame + frame[:10]

    with pytest.raises(UpstreamProtocolError, match="inside an event-stream frame"):
        [e async for e in iter_events(pieces())]


async def test_tool_call_round_trip() -> None:
    call = {"id": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}
    async with bedrock() as (backend, state):
        state.script.add({"tool_calls": [call]})
        first = await backend.complete(req("Weather in Paris?", tools=TOOLS, tool_choice="auto"))
        message = first.body["choices"][0]["message"]
        follow_up = req(
            "Weather in Paris?",
            tools=TOOLS,
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                message,
                {"role": "tool", "tool_call_id": "tooluse_1", "content": '{"temp_c": 21}'},
                {"role": "user", "content": "And in words?"},
            ],
        )
        state.script.add({"content": "It is 21 degrees."})
        second = await backend.complete(follow_up)

    assert first.body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]
    assert state.requests[0]["body"]["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "inputSchema": {"json": TOOLS[0]["function"]["parameters"]},
                }
            }
        ],
        "toolChoice": {"auto": {}},
    }
    assert state.requests[1]["body"]["messages"][1:] == [
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}]},
        {"role": "user", "content": [
            {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": '{"temp_c": 21}'}]}},
            {"text": "And in words?"},
        ]},
    ]  # fmt: skip
    assert second.body["choices"][0]["message"]["content"] == "It is 21 degrees."


async def test_streamed_tool_call_arrives_as_openai_deltas() -> None:
    call = {"id": "tooluse_9", "name": "get_weather", "input": {"city": "Oslo", "units": "metric"}}
    async with bedrock() as (backend, state):
        state.script.add({"content": "Let me check.", "tool_calls": [call]})
        chunks = await collect(backend, req("Weather?", tools=TOOLS))

    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls[0] == {
        "index": 0,
        "id": "tooluse_9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == call["input"]
    assert text_of(chunks) == "Let me check."
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"tool": {"name": "get_weather"}}),
        (None, None),
    ],
)
def test_tool_choice_mapping(tool_choice: object, expected: object) -> None:
    body = converse_body(req(tools=TOOLS, tool_choice=tool_choice))
    assert body["toolConfig"].get("toolChoice") == expected


def test_tool_choice_none_leaves_the_tools_out_unless_the_history_needs_them() -> None:
    assert "toolConfig" not in converse_body(req(tools=TOOLS, tool_choice="none"))
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]  # fmt: skip
    body = converse_body(req(tools=TOOLS, tool_choice="none", messages=history))
    assert "toolChoice" not in body["toolConfig"]
    with pytest.raises(InvalidRequest, match="needs the tool definitions"):
        converse_body(req(messages=history))


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]}, "messages.1.tool_calls"),
        ({"tools": [{"type": "web_search"}]}, "tools.0"),
    ],
)  # fmt: skip
def test_requests_converse_cannot_express_are_refused_clearly(extra: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        converse_body(req(**extra))
    assert caught.value.param == param


def test_capabilities_never_claim_json_mode_and_images_are_opt_in() -> None:
    plain = BedrockBackend("b", config(None), session=keys())
    assert (plain.capabilities.tools, plain.capabilities.json_schema, plain.capabilities.images) == (True, False, False)
    opted = BedrockBackend(
        "b", config(None, supports={"images": True, "json_schema": True, "tools": False}), session=keys()
    )
    assert (opted.capabilities.tools, opted.capabilities.json_schema, opted.capabilities.images) == (False, False, True)


async def test_data_url_images_become_image_blocks() -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
    ]
    async with bedrock(supports={"images": True}) as (backend, state):
        await backend.complete(req(messages=[{"role": "user", "content": content}]))
    blocks = state.requests[0]["body"]["messages"][0]["content"]
    assert blocks[1] == {"image": {"format": "png", "source": {"bytes": png}}}


async def test_wrong_secret_is_rejected_by_the_signature_check_and_never_leaks() -> None:
    wrong = "wrongSecretKey/0123456789abcdefghijKLMNOP"
    async with bedrock(session=keys(secret=wrong)) as (backend, _):
        assert backend.readiness().ready
        with pytest.raises(UpstreamAuthError) as caught:
            await backend.complete(req())
        with pytest.raises(UpstreamAuthError):
            await collect(backend, req())
    assert "InvalidSignatureException" in caught.value.message
    assert wrong not in caught.value.message
    assert TEST_SECRET_KEY not in caught.value.message


async def test_stream_exceptions_quoting_the_secret_are_scrubbed() -> None:
    leaky = f"signature material {TEST_SECRET_KEY} rejected"
    async with bedrock() as (backend, state):
        state.script.add({"content": "a b", "exception": {"type": "modelStreamErrorException", "message": leaky}})
        with pytest.raises(BackendError) as stream_error:
            await collect(backend, req())
    assert TEST_SECRET_KEY not in stream_error.value.message
    assert "signature material *** rejected" in stream_error.value.message


async def test_session_token_is_signed_and_sent() -> None:
    state = BedrockEmulatorState(tokens={TEST_ACCESS_KEY: "session-token-abcdef123456"})
    async with bedrock(state, session=keys(token="session-token-abcdef123456")) as (backend, _):
        await backend.complete(req())
    assert state.requests[0]["headers"]["x-amz-security-token"] == "session-token-abcdef123456"
    async with bedrock(BedrockEmulatorState(tokens={TEST_ACCESS_KEY: "other-token-000000"})) as (backend, _):
        with pytest.raises(UpstreamAuthError, match="UnrecognizedClientException"):
            await backend.complete(req())


async def test_refreshable_credentials_refresh_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    refreshed_in: list[int] = []

    def refresh() -> dict[str, str]:
        refreshed_in.append(threading.get_ident())
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        return {"access_key": "AKIAREFRESHED0000001", "secret_key": "refreshedSecret/0123456789abcdefghij",
                "token": "", "expiry_time": later.isoformat()}  # fmt: skip

    expired = {"access_key": TEST_ACCESS_KEY, "secret_key": TEST_SECRET_KEY, "token": "",
               "expiry_time": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()}  # fmt: skip
    credentials = RefreshableCredentials.create_from_metadata(expired, refresh, "test")
    state = BedrockEmulatorState({"AKIAREFRESHED0000001": "refreshedSecret/0123456789abcdefghij"})
    async with bedrock(state, session=StaticSession(credentials)) as (backend, _):
        await backend.complete(req())
        await backend.complete(req())
    assert len(refreshed_in) == 1
    assert refreshed_in[0] != loop_thread
    assert "AKIAREFRESHED0000001/" in state.requests[0]["headers"]["authorization"]


async def test_failing_refresh_is_an_auth_error() -> None:
    def refresh() -> dict[str, str]:
        raise RuntimeError("sts unreachable")

    expired = {"access_key": TEST_ACCESS_KEY, "secret_key": TEST_SECRET_KEY, "token": "",
               "expiry_time": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()}  # fmt: skip
    credentials = RefreshableCredentials.create_from_metadata(expired, refresh, "test")
    async with bedrock(session=StaticSession(credentials)) as (backend, _):
        with pytest.raises(UpstreamAuthError, match="could not refresh the AWS credentials"):
            await backend.complete(req())


def session_with_env(environ: dict[str, str]) -> Session:
    """A real botocore session whose credential chain reads only ``environ``."""
    session = Session()
    session.register_component("credential_provider", CredentialResolver([EnvProvider(environ=environ)]))
    return session


async def test_readiness_follows_the_botocore_credential_chain() -> None:
    empty = BedrockBackend("bedrock", config("http://127.0.0.1:9"), session=session_with_env({}))
    assert empty.readiness().reason == "not started"
    await empty.start()
    state = empty.readiness()
    await empty.aclose()
    assert state.ready is False
    assert state.reason.startswith("no AWS credentials: botocore's chain found none")

    env = {"AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY}
    async with bedrock(session=session_with_env(env)) as (backend, _):
        assert backend.readiness().ready
        result = await backend.complete(req())
    assert result.body["choices"][0]["message"]["content"] == "Echo: hello"


async def test_an_unknown_profile_makes_the_target_not_ready() -> None:
    backend = BedrockBackend("bedrock", config("http://127.0.0.1:9", profile="no-such-profile-4f1c2a"))
    await backend.start()
    state = backend.readiness()
    await backend.aclose()
    assert state.ready is False
    assert state.reason == "no AWS credentials: ProfileNotFound while reading the credential chain"


def test_default_endpoint_is_the_regional_runtime_host() -> None:
    backend = BedrockBackend("b", config(None, region="eu-west-3"), session=keys())
    assert backend._http.base_url == "https://bedrock-runtime.eu-west-3.amazonaws.com"


def test_missing_botocore_fails_start_up_with_an_install_hint() -> None:
    with pytest.raises(ConfigError, match=r"pip install 'hybrid-router\[bedrock\]'"):
        require_botocore("botocore.no_such_module")


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"output": {"message": {}}, "stopReason": "end_turn"}', b"[1]"])
async def test_malformed_answer_is_a_protocol_error(body: bytes) -> None:
    async def handler(request: Request) -> Response:
        return Response(body, media_type="application/json")

    async with serving(handler_app(handler)) as url:
        backend = BedrockBackend("bedrock", config(url), session=keys())
        await backend.start()
        with pytest.raises(UpstreamProtocolError):
            await backend.complete(req())
        await backend.aclose()


async def test_malformed_answer_from_the_emulator_is_a_protocol_error() -> None:
    async with bedrock() as (backend, state):
        state.script.add({"malformed": True}, {"malformed": True})
        with pytest.raises(UpstreamProtocolError, match="invalid JSON"):
            await backend.complete(req())
        with pytest.raises(UpstreamProtocolError, match="corrupt event-stream frame"):
            await collect(backend, req())


async def test_stream_closed_cleanly_before_message_stop_is_a_protocol_error() -> None:
    async def handler(request: Request) -> Response:
        frames = event_frame("messageStart", {"role": "assistant"}) + event_frame(
            "contentBlockDelta", {"delta": {"text": "partial"}, "contentBlockIndex": 0}
        )
        return Response(frames, media_type=EVENT_STREAM)

    async with serving(handler_app(handler)) as url:
        backend = BedrockBackend("bedrock", config(url), session=keys())
        await backend.start()
        with pytest.raises(UpstreamProtocolError, match="before messageStop"):
            await collect(backend, req())
        await backend.aclose()


@pytest.mark.parametrize(
    ("exception", "error"),
    [
        ("throttlingException", UpstreamRateLimited),
        ("modelStreamErrorException", BackendError),
        ("internalServerException", BackendError),
        ("validationException", UpstreamBadRequest),
    ],
)
async def test_exception_events_inside_the_stream_are_raised(exception: str, error: type[Exception]) -> None:
    async with bedrock() as (backend, state):
        state.script.add({"content": "a b c", "exception": {"type": exception, "message": "went wrong", "after": 1}})
        received: list[ChatChunk] = []
        with pytest.raises(error) as caught:
            async for chunk in backend.stream(req()):
                received.append(chunk)
    assert type(caught.value) is error
    assert exception in caught.value.message
    assert text_of(received) == "a "


@pytest.mark.parametrize("reason", ["guardrail_intervened", "content_filtered"])
async def test_guardrail_and_content_filter_stops_follow_the_output_rules(reason: str) -> None:
    withheld = BedrockBehaviour(content="", stop_reason=reason)
    partial = BedrockBehaviour(content="Sorry, I cannot help.", stop_reason=reason)
    async with bedrock() as (backend, state):
        state.script.add(withheld, withheld, partial, partial)
        with pytest.raises(ContentFiltered, match=reason):
            await backend.complete(req())
        with pytest.raises(ContentFiltered):
            await collect(backend, req())
        result = await backend.complete(req())
        chunks = await collect(backend, req())
    assert result.body["choices"][0]["finish_reason"] == "content_filter"
    assert result.body["choices"][0]["message"]["content"] == "Sorry, I cannot help."
    assert text_of(chunks) == "Sorry, I cannot help."
    assert chunks[-2]["choices"][0]["finish_reason"] == "content_filter"


async def test_stream_is_relayed_as_it_arrives() -> None:
    async with bedrock() as (backend, state):
        state.script.add({"content": "a b c", "chunk_delay_s": 0.1})
        stream = backend.stream(req())
        first = await asyncio.wait_for(anext(stream), timeout=2)
        assert first["choices"][0]["delta"]["role"] == "assistant"
        assert backend.stats()["inflight"] == 1.0
        rest = [c async for c in stream]
    assert text_of(rest) == "a b c"
    assert backend.stats()["inflight"] == 0.0
